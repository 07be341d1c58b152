"""``vgpuctl place`` and ``vgpuctl defrag --plan``: ask the placement engine, print its answer, change nothing."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from ..errors import LibvirtConnectError, LibvirtUnavailable, NoPlacement
from ..model import Inventory
from ..paths import HostPaths
from ..placement import Consumer, Decision, DefragPlan, Request, Usage, Verdict, place as place_request, plan_defrag
from ..policy import NumaMode, Policy, load_policy, policy_path
from ._common import (Settings, build_host, info, json_option, libvirt_down, libvirt_unreachable, record, render,
                      settings, table)

if TYPE_CHECKING:  # libvirt's side; imported when a domain is first read
    from ..virt.domxml import DomainInfo, DomainXml, Snapshot

PLACEMENT_SCHEMA = "vgpuctl.placement/v1"
VERDICT_SCHEMA = "vgpuctl.placement-verdict/v1"
MOVE_SCHEMA = "vgpuctl.defrag-move/v1"
DEFRAG_SCHEMA = "vgpuctl.defrag-plan/v1"

VERDICT_COLUMNS = [
    ("RANK", "rank"),
    ("GPU", "gpu"),
    ("PARENT", "parent"),
    ("TYPE", "type_id"),
    ("RULE", "rule"),
    ("NUMA", "numa_node"),
    ("USED%", "used_pct"),
    ("VERDICT", "verdict"),
    ("DETAIL", "detail"),
]
MOVE_COLUMNS = [
    ("UUID", "uuid"),
    ("TYPE", "type_id"),
    ("DOMAIN", "domain"),
    ("FROM", "from_parent"),
    ("TO", "to_parent"),
    ("TO_GPU", "to_gpu"),
]

policy_option = click.option(
    "--policy",
    "policy_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Placement policy (default: ROOT/etc/vgpuctl/policy.yaml; built-in default if absent).",
)


def load_settings_policy(s: Settings, policy_file: Optional[str]) -> Policy:
    if policy_file:
        return load_policy(policy_file, missing_ok=False, follow=True)
    return load_policy(policy_path(s.paths.config_dir), missing_ok=True)


# --- what libvirt and NVML say: one read per command ----------------------------------------------------------------
_SNAPSHOT_KEY = "vgpuctl.placement.snapshot"


def domain_snapshot(s: Settings, *, strict: bool = False) -> Optional["Snapshot"]:
    """Every domain at ``--connect``, read once per command (kept in the click context); None with ``none``.

    When libvirt is unreachable (down, silent past ``--libvirt-timeout``, libvirt-python missing) this is None as
    well, after ONE line on stderr per command (``libvirt_down()`` then says why), so that read-only views go on
    with what sysfs knows; ``strict`` raises that error instead (exit 12), for a change that needs the domains."""
    if s.connect == "none":
        return None
    ctx = click.get_current_context(silent=True)
    cache: Dict[str, Any] = ctx.meta.setdefault(_SNAPSHOT_KEY, {}) if ctx is not None else {}
    if s.connect not in cache:
        from ..virt.conn import DomainUsers  # libvirt itself: only now

        try:
            cache[s.connect] = DomainUsers(s.connect, timeout=s.libvirt_timeout).read()
        except (LibvirtConnectError, LibvirtUnavailable) as e:
            cache[s.connect] = e
    got = cache[s.connect]
    if isinstance(got, Exception):
        if strict:
            raise got
        libvirt_unreachable(got)
        return None
    return got


def require_domains(s: Settings, *, tenant: Optional[str], domain: Optional[str], groups: Sequence[str] = ()) -> None:
    """A placement that creates something counts the other VMs' tenants (quotas) and groups (anti-affinity), and
    takes a domain's labels and NUMA nodes from libvirt: with a tenant, a domain or a group it refuses (exit 12)
    when libvirt is unreachable.  Without them no domain can change the answer, and the create goes on."""
    if tenant or domain or groups:
        domain_snapshot(s, strict=True)


def _preferred(d: "DomainInfo") -> List["DomainXml"]:
    """A domain's definitions, the one that describes it now first: the running XML, else the persistent one."""
    order = (d.live, d.config) if d.running else (d.config, d.live)
    return [x for x in order if x is not None]


def consumers_from(snap: "Snapshot", inventory: Inventory) -> Dict[str, Consumer]:
    """Instance uuid -> the domain that uses it (its live or persistent XML references it, or vgpuctl's metadata
    records it), with the tenant and group labels of that domain's vgpuctl metadata.  A running domain first, then by
    name, when several reference one instance.  Pure."""
    known = {i.uuid for i in inventory.instances}
    out: Dict[str, Consumer] = {}
    for d in sorted(snap.domains, key=lambda d: (not d.running, d.name)):
        xs = _preferred(d)
        idents = {i for x in xs for i in (*x.devices, *(m.uuid for m in x.managed))}
        tenant = next((x.tenant for x in xs if x.tenant), None)
        groups = tuple(dict.fromkeys(g for x in xs for g in x.groups))
        for ident in sorted(idents & known):
            out.setdefault(ident, Consumer(domain=d.name, tenant=tenant, groups=groups))
    return out


def build_usage(s: Settings, inventory: Inventory) -> Usage:
    """Who uses each instance (domain, tenant label, anti-affinity labels) and heterogeneous-mode GPUs.

    Consumers come from the domains at ``--connect`` (read once per command; none with ``--connect none``), modes from
    NVML (``commands.nvidia.mix_modes``; none, with one line on stderr, when NVML cannot say)."""
    from .nvidia import mix_modes

    snap = domain_snapshot(s)
    consumers = consumers_from(snap, inventory) if snap is not None else {}
    return Usage.of(consumers, modes=mix_modes(s, inventory))


def usage_provider(s: Settings, *, read: Optional[Callable[[], "Snapshot"]] = None) -> Callable[[Inventory], Usage]:
    """For the reconciler's placer (``apply.policy_placer``): inventory -> ``Usage``, reading the domains afresh on
    every call (once per plan; the service plans many times in one process).  No domains with ``--connect none``.

    ``read``: where the domains come from (the reconciler passes its ``AttachmentSource.users.read``, so that inside
    a plan's session the attachments and the placement usage share one read of libvirt); a read of its own if None."""

    def usage(inventory: Inventory) -> Usage:
        consumers: Dict[str, Consumer] = {}
        if s.connect != "none":
            from ..virt.conn import DomainUsers

            try:
                snap = read() if read is not None else DomainUsers(s.connect, timeout=s.libvirt_timeout).read()
            except (LibvirtConnectError, LibvirtUnavailable):
                snap = None  # the plan places without libvirt only what no domain can change (``plan.needs_domains``)
            consumers = consumers_from(snap, inventory) if snap is not None else {}
        from .nvidia import mix_modes

        return Usage.of(consumers, modes=mix_modes(s, inventory))

    return usage


@dataclass(frozen=True)
class DomainFacts:
    """What placement takes from a domain's XML: its tenant and group labels and its NUMA nodes."""

    name: str
    found: bool
    tenant: Optional[str] = None
    groups: Tuple[str, ...] = ()
    numa_nodes: Tuple[int, ...] = ()
    numa_from: Tuple[str, ...] = ()  #: "numatune", "vcpupin"
    notes: Tuple[str, ...] = ()


def cpu_nodes(paths: HostPaths) -> Optional[Dict[int, int]]:
    """Host CPU -> NUMA node, from ``ROOT/sys/devices/system/node/node*/cpulist``; None when there are none."""
    from ..virt.domxml import parse_cpuset

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


def facts_of(info: "DomainInfo", cpus: Optional[Dict[int, int]], node_dir: str) -> DomainFacts:
    """``DomainFacts`` from one domain: NUMA nodes are ``<numatune><memory nodeset>`` together with the nodes of
    the host CPUs its vCPUs are pinned to (``cpus``: CPU -> node; None: unknown, then only numatune counts).  Pure."""
    xs = _preferred(info)
    x = xs[0] if xs else None
    if x is None:
        return DomainFacts(info.name, found=True)
    nodes = set(x.memory_nodes)
    sources = ["numatune"] if x.memory_nodes else []
    notes: List[str] = []
    if x.vcpu_cpus:
        if cpus is None:
            notes.append(f"vCPU pinning of {info.name!r} not used: no cpulist files under {node_dir}; "
                         + ("only <numatune> counts" if x.memory_nodes else "no NUMA affinity"))
        else:
            pinned = {cpus[c] for c in x.vcpu_cpus if c in cpus}
            if pinned:
                nodes |= pinned
                sources.append("vcpupin")
            unknown = [c for c in x.vcpu_cpus if c not in cpus]
            if unknown:
                notes.append(f"vCPU pinning of {info.name!r}: CPU(s) {','.join(map(str, unknown))} are on no "
                             f"NUMA node under {node_dir}")
    tenant = next((y.tenant for y in xs if y.tenant), None)
    groups = tuple(dict.fromkeys(g for y in xs for g in y.groups))
    return DomainFacts(info.name, found=True, tenant=tenant, groups=groups, numa_nodes=tuple(sorted(nodes)),
                       numa_from=tuple(sources), notes=tuple(notes))


def domain_facts(s: Settings, domain: Optional[str]) -> Optional[DomainFacts]:
    """The facts of ``domain`` at ``--connect`` (None without a domain or with ``--connect none``).  A domain libvirt
    does not know is not an error (it may be defined later): its facts are empty, with a note."""
    if not domain:
        return None
    snap = domain_snapshot(s)
    if snap is None:
        return None
    info = next((d for d in snap.domains if d.name == domain), None)
    if info is None:
        return DomainFacts(domain, found=False, notes=(f"no domain {domain!r} at {snap.uri}: no tenant, groups or "
                                                       "NUMA nodes from it",))
    needs_cpus = any(x.vcpu_cpus for x in _preferred(info))
    return facts_of(info, cpu_nodes(s.paths) if needs_cpus else None, str(s.paths.numa_nodes))


def complete_request(s: Settings, request: Request) -> Tuple[Request, Optional[DomainFacts]]:
    """``request`` with what its domain's XML says: the tenant (unless given), its group labels (added), its NUMA
    nodes (unless given: ``--numa-node`` overrides)."""
    facts = domain_facts(s, request.domain)
    if facts is None:
        return request, None
    return replace(
        request,
        tenant=request.tenant if request.tenant is not None else facts.tenant,
        groups=tuple(dict.fromkeys((*request.groups, *facts.groups))),
        numa_nodes=request.numa_nodes or facts.numa_nodes,
    ), facts


def placement_for(
    s: Settings,
    inventory: Inventory,
    request: Request,
    *,
    policy_file: Optional[str] = None,
) -> Decision:
    """The decision for ``request`` under the configured policy; what ``create`` without ``--parent`` uses too."""
    policy = load_settings_policy(s, policy_file)
    request, _ = complete_request(s, request)
    return place_request(inventory, policy, request, usage=build_usage(s, inventory))


def placer_for(
    s: Settings,
    type_name: str,
    *,
    tenant: Optional[str] = None,
    domain: Optional[str] = None,
    policy_file: Optional[str] = None,
) -> Callable[[Inventory], str]:
    """For ``create`` without ``--parent``: a function from the inventory (read under the lock) to the chosen parent."""
    policy = load_settings_policy(s, policy_file)  # read before the lock: a bad file fails fast
    require_domains(s, tenant=tenant, domain=domain)
    request, _ = complete_request(s, Request(type=type_name, tenant=tenant, domain=domain))

    def choose(inventory: Inventory) -> str:
        d = place_request(inventory, policy, request, usage=build_usage(s, inventory))
        if d.parent is None:
            raise NoPlacement(type_name, d.refusals())
        return d.parent

    return choose


def verdict_record(v: Verdict, inv: Inventory) -> Dict[str, Any]:
    t = inv.type_on(v.parent, v.type_id) if v.parent and v.type_id else None
    return record(
        VERDICT_SCHEMA,
        gpu=v.gpu,
        rank=v.rank,
        chosen=v.rank == 1,
        parent=v.parent,
        type_id=v.type_id,
        type_name=t.name if t else None,
        rule=v.rule,
        numa_node=v.numa_node,
        used_pct=round(100 * v.fullness),
        verdict="ok" if v.reason is None else str(v.reason),
        reason=None if v.reason is None else str(v.reason),
        detail=v.detail,
        loss=v.loss,
    )


def decision_record(d: Decision, inv: Inventory, *, numa_from: Sequence[str] = ()) -> Dict[str, Any]:
    c = d.chosen
    t = inv.type_on(c.parent, c.type_id) if c and c.parent and c.type_id else None
    return record(
        PLACEMENT_SCHEMA,
        placed=c is not None,
        type=d.request.type,
        type_id=c.type_id if c else None,
        type_name=t.name if t else None,
        parent=c.parent if c else None,
        gpu=c.gpu if c else None,
        rule=c.rule if c else None,
        strategy=str(d.strategy) if d.strategy else None,
        domain=d.request.domain,
        tenant=d.request.tenant,
        numa_nodes=list(d.request.numa_nodes),
        numa_from=list(numa_from),
        refusals=[{"gpu": g, "reason": r, "detail": x} for g, r, x in d.refusals()],
    )


@click.command()
@click.option("--type", "-t", "type_name", required=True, multiple=True, metavar="TYPE",
              help="Type id (nvidia-231) or name (T4-2Q); repeat to ask about several types in one call (each gets "
                   "its own records; exit 4 if any has no placement).")
@click.option("--domain", "-d", metavar="DOMAIN",
              help="The domain the vGPU is for: anti-affinity groups; with libvirt, its tenant and NUMA nodes too.")
@click.option("--tenant", metavar="TENANT",
              help="Tenant label for quotas and reserved GPUs (default: the domain's, from its vgpuctl metadata).")
@click.option(
    "--numa-node",
    "numa_nodes",
    type=click.IntRange(min=0),
    multiple=True,
    metavar="N",
    help="NUMA node(s) for the vGPU; repeat for several (default: the domain's numatune and vCPU pinning).",
)
@click.option(
    "--numa",
    "numa_mode",
    type=click.Choice([m.value for m in NumaMode]),
    help="Override the policy's NUMA mode: prefer, require or ignore.",
)
@click.option("--group", "groups", multiple=True, metavar="GROUP", help="Anti-affinity group label of the domain.")
@policy_option
@click.option("--explain", is_flag=True, help="Show every GPU's verdict: rank, or why it cannot take the type.")
@json_option
def place(
    type_name: Tuple[str, ...],  # named so: its variable stays VGPUCTL_PLACE_TYPE_NAME (whitespace separates several)
    domain: Optional[str],
    tenant: Optional[str],
    numa_nodes: Tuple[int, ...],
    numa_mode: Optional[str],
    groups: Tuple[str, ...],
    policy_file: Optional[str],
    explain: bool,
    as_json: bool,
) -> None:
    """Say which parent would get a vGPU of TYPE, and why; creates nothing."""
    s = settings()
    inv = build_host(s).inventory()
    policy = load_settings_policy(s, policy_file)
    usage = build_usage(s, inv)
    recs: List[Dict[str, Any]] = []
    unplaced: List[Decision] = []
    for n, one in enumerate(dict.fromkeys(type_name)):
        req = Request(
            type=one,
            domain=domain,
            tenant=tenant,
            numa_nodes=tuple(sorted(set(numa_nodes))),
            numa=NumaMode(numa_mode) if numa_mode else None,
            groups=tuple(groups),
        )
        req, facts = complete_request(s, req)
        numa_from: Tuple[str, ...] = ("--numa-node",) if numa_nodes else (facts.numa_from if facts else ())
        d = place_request(inv, policy, req, usage=usage)  # req is complete
        if n == 0:  # the domain's facts are the same for every type: say them once
            if explain and facts is not None:
                info(f"domain {facts.name}: tenant {facts.tenant or '-'}, groups {','.join(facts.groups) or '-'}, "
                     f"NUMA nodes {','.join(map(str, req.numa_nodes)) or '-'} "
                     f"(from {' and '.join(numa_from) or 'nothing'})")
            for note in facts.notes if facts is not None and (explain or not facts.found) else ():
                info(note)
        if as_json:
            recs.append(decision_record(d, inv, numa_from=numa_from))
            if explain:
                recs += [verdict_record(v, inv) for v in d.verdicts]
        elif explain:
            click.echo(table([verdict_record(v, inv) for v in d.verdicts], VERDICT_COLUMNS))
        if not d.placed:
            unplaced.append(d)
            continue
        c = d.chosen
        assert c is not None
        if not as_json and not explain:
            click.echo(c.parent)
        info(f"{one} -> {c.parent} ({c.type_id} on GPU {c.gpu}, rule {c.rule}, {d.strategy})")
    if as_json:
        down = libvirt_down()
        if down:  # the decisions count no other VM's tenant or groups, and know no domain's labels
            recs = [dict(r, libvirt_error=down) for r in recs]
        render(recs, [], as_json=True)
    if unplaced:
        raise NoPlacement(unplaced[0].request.type, unplaced[0].refusals())


def move_record(m: Any, inv: Inventory) -> Dict[str, Any]:
    t = inv.type_on(m.from_parent, m.type_id)
    return record(
        MOVE_SCHEMA,
        uuid=m.uuid,
        type_id=m.type_id,
        type_name=t.name if t else None,
        domain=m.domain,
        from_parent=m.from_parent,
        from_gpu=m.from_gpu,
        to_parent=m.to_parent,
        to_gpu=m.to_gpu,
        restart_needed=True,
    )


def plan_record(p: DefragPlan, total_gpus: int) -> Dict[str, Any]:
    return record(
        DEFRAG_SCHEMA,
        moves=len(p.moves),
        freed=list(p.freed),
        free_gpus_before=p.before_free,
        free_gpus_after=p.before_free + len(p.freed),
        gpus=total_gpus,
    )


@click.command()
@click.option("--plan", "plan_only", is_flag=True, help="Print the moves (required: defrag never moves anything).")
@policy_option
@json_option
def defrag(plan_only: bool, policy_file: Optional[str], as_json: bool) -> None:
    """Plan the moves that would free the most whole GPUs; each move needs its VM restarted.  Prints only."""
    if not plan_only:
        raise click.UsageError("defrag only plans: pass --plan (moving a vGPU means restarting its VM; do that yourself)")
    s = settings()
    inv = build_host(s).inventory()
    policy = load_settings_policy(s, policy_file)
    p = plan_defrag(inv, policy, usage=build_usage(s, inv))
    total = len({x.gpu for x in inv.parents})
    if as_json:
        render([move_record(m, inv) for m in p.moves] + [plan_record(p, total)], [], as_json=True)
        return
    for m in p.moves:
        click.echo(_move_line(m, inv))
    if p.freed:
        info(
            f"{len(p.moves)} move(s) free {len(p.freed)} GPU(s): {', '.join(p.freed)} "
            f"({p.before_free} -> {p.before_free + len(p.freed)} of {total} GPUs free); "
            "each move needs its VM stopped, the vGPU re-created on the new parent, the VM started; nothing was moved"
        )
    else:
        info(f"no moves free a whole GPU ({p.before_free} of {total} GPUs are free)")


def _move_line(m: Any, inv: Inventory) -> str:
    t = inv.type_on(m.from_parent, m.type_id)
    name = (t.profile if t else None) or m.type_id
    who = f" (domain {m.domain})" if m.domain else ""
    return f"~ move {m.uuid} {name} {m.from_parent} -> {m.to_parent}{who}: restart needed"


__all__: Sequence[str] = ["place", "defrag", "placement_for", "placer_for", "build_usage", "complete_request",
                          "domain_snapshot", "require_domains", "domain_facts", "consumers_from", "usage_provider", "DomainFacts"]
