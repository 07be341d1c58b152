"""The observation step: what the host's peers say, turned into the data the pure core takes.

A command or a reconciler pass reads libvirt once (``virt.conn.Libvirt.observed``: every domain, one snapshot) and
NVML once (``mix_modes``), and this module turns that into what ``placement.place``, ``plan.plan`` and
``status.host_status`` take as arguments: the placement ``Usage`` (who uses each instance, each GPU's mixing mode),
each domain's ``DomainFacts`` (tenant, groups, NUMA nodes), and a placement ``Request`` completed from its domain
(``complete_request``: the one rule for it, used by ``place``, ``create``, ``attach`` and ``apply`` alike).  Nothing
here writes; the readers (``cpu_nodes``, ``mix_modes``) read only when called, and the rest is pure.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from .host.rules import mode_gpus
from .model import Inventory
from .paths import HostPaths
from .virt.domxml import DomainFacts, Snapshot, consumers_from, facts_of, needs_cpus

if TYPE_CHECKING:
    from .placement import Request, Usage
    from .spec import DesiredInstance

log = logging.getLogger("vgpuctl.observe")


# --- readers -------------------------------------------------------------------------------------------------------
def cpu_nodes(paths: HostPaths) -> Optional[Dict[int, int]]:
    """Host CPU -> NUMA node, from ``ROOT/sys/devices/system/node/node*/cpulist``; None when there are none."""
    from .virt.domxml import parse_cpuset

    out: Dict[int, int] = {}
    try:
        entries = sorted(os.listdir(paths.numa_nodes))
    except OSError:
        return None
    for name in entries:
        if not (name.startswith("node") and name[4:].isdigit()):
            continue
        try:
            with open(paths.numa_nodes / name / "cpulist", encoding="ascii") as f:
                cpus = parse_cpuset(f.read().strip())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        for c in cpus:
            out.setdefault(c, int(name[4:]))
    return out or None


def mix_modes(inv: Inventory, nvml: str = "auto") -> Tuple[Dict[str, Any], Optional[str]]:
    """Per NVIDIA vendor-VFIO GPU, the placement engine's ``MixMode``: mixed-size where NVML reports heterogeneous
    mode, equal-size otherwise (vGPU 17+'s default); and, when NVML cannot say, the one-line note why (the modes are
    then empty and the engine stays strict).  ``nvml`` ``off``: NVML is not asked."""
    gpus = sorted(mode_gpus(inv))
    if not gpus or nvml == "off":
        return {}, None
    from .nvml import Nvml, NvmlUnavailable
    from .placement import MixMode

    out: Dict[str, Any] = {}
    try:
        with Nvml() as nv:
            for g in gpus:
                try:
                    out[g] = MixMode.MIXED_SIZE if nv.heterogeneous(g) else MixMode.EQUAL_SIZE
                except Exception:  # not a vGPU host, function missing: leave the GPU homogeneous
                    continue
    except NvmlUnavailable as e:
        return {}, f"NVML not used: {e.reason}; placement keeps one type per GPU on {len(gpus)} vendor-VFIO GPU(s)"
    return out, None


def nvml_details(
    inv: Inventory, paths: HostPaths, *, vgpus: bool
) -> Tuple[Inventory, Dict[str, Any], Dict[str, Any], Tuple[str, ...]]:
    """NVML's view for ``parents``/``types``/``list``/``status``: the inventory with NVML's details, per-instance
    details, per-GPU info, and the one-line notes saying what NVML could not tell (on any failure: the sysfs
    inventory, nothing else, and the note why)."""
    from .nvml import NvmlUnavailable, enrich, gather, placements_of

    try:
        gpus, notes = gather(inv, vgpus=vgpus)
    except NvmlUnavailable as e:
        return inv, {}, {}, (f"NVML not used: {e.reason}; showing sysfs data only",)
    said = ("NVML not used for " + "; ".join(notes) + "; showing sysfs data for them",) if notes else ()
    placements: Dict[str, int] = placements_of(paths, inv) if vgpus else {}
    hosts = {g: v for g, v in gpus.items() if v.vgpu_host}
    enriched, details = enrich(inv, hosts, placements)
    return enriched, details, gpus, said


# --- pure: observation -> the core's inputs ------------------------------------------------------------------------
def usage_of(snap: Optional[Snapshot], inventory: Inventory, modes: Optional[Dict[str, Any]] = None) -> "Usage":
    """The placement ``Usage``: the domain using each instance (with its tenant and groups) from ``snap`` (None:
    libvirt not asked or unreachable: nobody's), and each GPU's mixing mode."""
    from .placement import Usage

    return Usage.of(consumers_from(snap, inventory) if snap is not None else {}, modes=modes or {})


def domain_facts(
    snap: Optional[Snapshot], domain: Optional[str], cpus: Optional[Dict[int, int]], node_dir: str
) -> Optional[DomainFacts]:
    """The facts of ``domain`` in ``snap`` (None without a domain or a snapshot).  A domain libvirt does not know is
    not an error (it may be defined later): its facts are empty, with a note."""
    if not domain or snap is None:
        return None
    info = next((d for d in snap.domains if d.name == domain), None)
    if info is None:
        return DomainFacts(
            domain, found=False, notes=(f"no domain {domain!r} at {snap.uri}: no tenant, groups or NUMA nodes from it",)
        )
    return facts_of(info, cpus, node_dir)


def all_facts(snap: Optional[Snapshot], paths: HostPaths) -> Dict[str, DomainFacts]:
    """Every domain's facts (the CPU -> node map read once, and only when a domain pins its vCPUs)."""
    if snap is None:
        return {}
    cpus = cpu_nodes(paths) if any(needs_cpus(d) for d in snap.domains) else None
    return {d.name: facts_of(d, cpus, str(paths.numa_nodes)) for d in snap.domains}


def complete_request(request: "Request", facts: Optional[DomainFacts]) -> "Request":
    """``request`` with what its domain's XML says: the tenant (unless given), its group labels (added), its NUMA
    nodes (unless given).  The one rule, for the CLI's requests and the desired state's alike."""
    if facts is None:
        return request
    return replace(
        request,
        tenant=request.tenant if request.tenant is not None else facts.tenant,
        groups=tuple(dict.fromkeys((*request.groups, *facts.groups))),
        numa_nodes=request.numa_nodes or facts.numa_nodes,
    )


def desired_request(d: "DesiredInstance", inventory: Inventory, facts: Optional[DomainFacts]) -> "Request":
    """The placement ``Request`` for a desired instance without a parent: its ``placement:`` keys, then its domain's
    tenant, groups and NUMA nodes (``complete_request``), as ``vgpuctl place --domain`` asks."""
    from .placement import Request
    from .policy import NumaMode
    from .spec import PlacementRequest

    req = d.placement or PlacementRequest()
    request = Request(
        type=d.type,
        domain=d.domain,
        tenant=req.tenant,
        numa_nodes=(req.numa_node,) if req.numa_node is not None else (),
        numa=NumaMode.REQUIRE if req.numa_node is not None else None,
        any_of=d.profile_def.type_ids(inventory) if d.profile_def is not None else None,
    )
    return complete_request(request, facts)
