"""``vgpuctl parents``, ``types`` and ``list``: read-only views of the host."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import click

from ..host import TypeScope

from ..lifecycle import Lifecycle
from ..model import Instance, Inventory, Vendor
from ._common import build_lifecycle, info, json_option, render, settings
from .records import (
    INSTANCE_COLUMNS,
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
@json_option
def list_instances(parent: Optional[str], as_json: bool) -> None:
    """Existing vGPU instances, who owns them and who uses them."""
    lc = build_lifecycle(settings())
    inv, state = lc.read(types=TypeScope.USED)
    only = lc.host.resolve_parent(parent, inv) if parent else None
    shown = [i for i in inv.instances if only is None or i.parent == only]
    users = lc.users(shown)  # the one read of libvirt, when it is enabled
    doms = _domains(lc, shown)
    inv, details, gpus = _nvml(inv, vgpus=True)
    recs = [
        instance_record(i, inv, owned=i.uuid in state.owned, used_by=users.get(i.uuid, ()), nvml=details.get(i.uuid),
                        **doms.get(i.uuid, {}))
        for i in shown
    ]
    columns = INSTANCE_COLUMNS + (NVML_INSTANCE_COLUMNS if any(g.vgpu_host for g in gpus.values()) else [])
    render(recs, columns, as_json=as_json, empty="no vGPU instances")


def _nvml(inv: Inventory, *, vgpus: bool) -> Tuple[Inventory, Dict[str, Any], Dict[str, Any]]:
    """NVML's details where the host has NVIDIA GPUs (pynvml is not even imported otherwise)."""
    if settings().nvml == "off" or not any(p.vendor is Vendor.NVIDIA and p.pci for p in inv.parents):
        return inv, {}, {}
    from .nvidia import enrich_inventory

    return enrich_inventory(settings(), inv, vgpus=vgpus)


def _domains(lc: Lifecycle, shown: Sequence[Instance]) -> Dict[str, Dict[str, Any]]:
    """Per instance, the domains referencing it and whether one runs with it, from the snapshot the libvirt usage
    check just read (no second read); empty when libvirt is disabled."""
    if settings().connect == "none":
        return {}
    from ..virt import DomainUsers, Snapshot

    snap = next((c.last for c in lc.usage_checks if isinstance(c, DomainUsers) and c.last), None) or Snapshot("")
    out: Dict[str, Dict[str, Any]] = {}
    for i in shown:
        uses = snap.uses(i.uuid)
        out[i.uuid] = {"domains": [u.domain for u in uses], "running": any(not u.stale for u in uses)}
    return out
