"""``vgpuctl parents``, ``types`` and ``list``: read-only views of the host."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from ..host import TypeScope

from ..errors import VgpuctlError
from ..lifecycle import Lifecycle
from ..model import Instance, Inventory, Vendor
from ._common import UNKNOWN, build_lifecycle, info, json_option, libvirt_unreachable, render, settings
from .records import (
    INSTANCE_COLUMNS,
    definition_record,
    NVML_INSTANCE_COLUMNS,
    PARENT_COLUMNS,
    TYPE_COLUMNS,
    instance_record,
    parent_record,
    type_record,
)

parent_option = click.option("--parent", "-p", metavar="PARENT", help="Only this parent (PCI address or name).")


@click.command()
@json_option
def parents(as_json: bool) -> None:
    """Devices that can host vGPUs, with vendor, NUMA node and driver."""
    host = build_lifecycle(settings()).host
    inv = host.inventory()
    inv, _, gpus = _nvml(inv, vgpus=False)
    recs = [parent_record(p, inv, gpu_name=gpus[p.gpu].name if p.gpu in gpus else None) for p in inv.parents]
    render(recs, PARENT_COLUMNS, as_json=as_json, empty="no vGPU-capable parent devices found")
    for line in host.hints():
        info(line)


@click.command()
@parent_option
@json_option
def types(parent: Optional[str], as_json: bool) -> None:
    """vGPU types per parent, with parsed capacity (framebuffer, heads, max and available instances)."""
    host = build_lifecycle(settings()).host
    inv = host.inventory()
    only = host.resolve_parent(parent, inv) if parent else None
    inv, _, _ = _nvml(inv, vgpus=False)
    recs = [type_record(t) for t in inv.types if only is None or t.parent == only]
    render(recs, TYPE_COLUMNS, as_json=as_json, empty="no vGPU types found")


@click.command("list")
@parent_option
@click.option(
    "--defined",
    "-d",
    is_flag=True,
    help="Also show mdevctl's definitions that have no device yet (as 'mdevctl list --defined' does).",
)
@json_option
def list_instances(parent: Optional[str], defined: bool, as_json: bool) -> None:
    """Existing vGPU instances, who owns them, who defines them (vgpuctl's desired state, mdevctl, the hook), who uses
    them, and libvirt's node device for each."""
    from ..coexist import definers
    from ..host import mdevctl

    s = settings()
    lc = build_lifecycle(s)
    inv, state = lc.read(types=TypeScope.USED)
    only = lc.host.resolve_parent(parent, inv) if parent else None
    shown = [i for i in inv.instances if only is None or i.parent == only]
    defs = mdevctl.read_checked(lc.host.paths, inv)
    by_uuid = defs.by_uuid()
    dormant = [
        d
        for d in by_uuid.values()
        if defined and inv.instance(d.uuid) is None and (only is None or d.parent.lower() == only.lower())
    ]
    down: List[VgpuctlError] = []
    users = lc.users(shown, unreachable=down)  # the one read of libvirt, when it is enabled
    if down:  # processes holding a device are still known; the domains are not
        why = libvirt_unreachable(down[0])
        doms = {i.uuid: {"domains": UNKNOWN, "running": UNKNOWN, "libvirt_error": why} for i in shown}
    else:
        doms = _domains(lc, shown)
    names = _desired_names(lc, inv)
    hook = _hook(lc)
    nodedevs = _nodedevs(s) if (shown or dormant) and not down else None  # unknown too when libvirt is down
    inv, details, gpus = _nvml(inv, vgpus=True)

    def extra(uuid: str) -> Dict[str, Any]:
        dev = nodedevs.get(uuid) if nodedevs is not None else None
        return {
            "defined_by": definers(uuid, defs=by_uuid, desired=names, hook=hook),
            "nodedev": dev.name if dev is not None else None,
            "nodedev_known": None if nodedevs is None else dev is not None,
        }

    recs = [
        instance_record(
            i,
            inv,
            owned=i.uuid in state.owned,
            used_by=users.get(i.uuid, ()),
            nvml=details.get(i.uuid),
            **doms.get(i.uuid, {}),
            **extra(i.uuid),
        )
        for i in shown
    ]
    recs += [definition_record(d, owned=d.uuid in state.owned, **extra(d.uuid)) for d in dormant]
    recs.sort(key=lambda r: (r["parent"], r["uuid"]))
    columns = INSTANCE_COLUMNS + (NVML_INSTANCE_COLUMNS if any(g.vgpu_host for g in gpus.values()) else [])
    if nodedevs:
        columns = columns + [("NODEDEV", "nodedev")]
    render(recs, columns, as_json=as_json, empty="no vGPU instances" + (" or mdevctl definitions" if defined else ""))


def _desired_names(lc: Lifecycle, inv: Inventory) -> Optional[Dict[str, str]]:
    """uuid -> desired instance name; None (and one line why) when the desired state cannot be read."""
    from ..errors import ConfigError
    from ..spec import bind, load, spec_files

    if not spec_files(lc.host.paths.config_dir):
        return {}
    try:
        desired = bind(load(lc.host.paths.config_dir), inv)
    except ConfigError as e:
        info(f"who vgpuctl's desired state defines is unknown: {e}")
        return None
    return {d.uuid: d.name for d in desired.instances}


def _hook(lc: Lifecycle) -> Tuple[str, ...]:
    from ..hook import HookRecords

    return tuple(HookRecords(lc.host.paths).all())


def _nodedevs(s: Any) -> Optional[Dict[str, Any]]:
    """uuid -> libvirt's node device (one bounded read); None without libvirt, or (with one line why) when libvirt
    could not say."""
    if s.connect == "none":
        return None
    from ..errors import LibvirtError
    from ..virt.conn import mdev_nodedevs

    try:
        return mdev_nodedevs(s.connect)
    except LibvirtError as e:
        info(f"libvirt's node devices are unknown: {e}")
        return None


def _nvml(inv: Inventory, *, vgpus: bool) -> Tuple[Inventory, Dict[str, Any], Dict[str, Any]]:
    """NVML's details where the host has NVIDIA GPUs (pynvml is not even imported otherwise)."""
    if settings().nvml == "off" or not any(p.vendor is Vendor.NVIDIA and p.pci for p in inv.parents):
        return inv, {}, {}
    from ._common import enrich_inventory

    return enrich_inventory(settings(), inv, vgpus=vgpus)


def _domains(lc: Lifecycle, shown: Sequence[Instance]) -> Dict[str, Dict[str, Any]]:
    """Per instance, the domains referencing it and whether one runs with it, from the snapshot the libvirt usage
    check just read (this command's one observation of libvirt); empty when libvirt is disabled."""
    from ._common import domain_snapshot

    if settings().connect == "none" or not shown:
        return {}
    from ..virt.domxml import Snapshot

    snap = domain_snapshot(settings()) or Snapshot("")
    out: Dict[str, Dict[str, Any]] = {}
    for i in shown:
        uses = snap.uses(i.uuid)
        out[i.uuid] = {"domains": [u.domain for u in uses], "running": any(not u.stale for u in uses)}
    return out
