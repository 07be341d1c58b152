"""Flat JSON records (one per parent, type or instance) and the table columns that show them."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from ..model import Instance, Inventory, Parent, VgpuType
from ._common import record

PARENT_SCHEMA = "vgpuctl.parent/v1"
TYPE_SCHEMA = "vgpuctl.type/v1"
INSTANCE_SCHEMA = "vgpuctl.instance/v1"

PARENT_COLUMNS = [
    ("PARENT", "parent"),
    ("BACKEND", "backend"),
    ("VENDOR", "vendor_id"),
    ("DEVICE", "device_id"),
    ("NUMA", "numa_node"),
    ("DRIVER", "driver"),
    ("GPU", "gpu"),
    ("TYPES", "types"),
    ("INSTANCES", "instances"),
]
TYPE_COLUMNS = [
    ("PARENT", "parent"),
    ("TYPE", "type_id"),
    ("NAME", "name"),
    ("AVAIL", "available"),
    ("MAX", "max_instance"),
    ("FB_MIB", "framebuffer_mib"),
    ("HEADS", "num_heads"),
    ("RESOLUTION", "max_resolution"),
    ("SERIES", "series"),
    ("WEIGHT", "weight"),
    ("API", "device_api"),
]
INSTANCE_COLUMNS = [
    ("UUID", "uuid"),
    ("PARENT", "parent"),
    ("TYPE", "type_id"),
    ("NAME", "type_name"),
    ("GROUP", "iommu_group"),
    ("OWNED", "owned"),
    ("DEFINED_BY", "defined_by"),
    ("DOMAINS", "domains"),
    ("RUNNING", "running"),
    ("USED_BY", "used_by"),
]


#: Extra table columns shown when NVML answered (``list`` on an NVIDIA vGPU host).
NVML_INSTANCE_COLUMNS = [
    ("VM", "vm_id"),
    ("FB_USED", "fb_used_mib"),
    ("SM%", "sm_util"),
    ("MEM%", "mem_util"),
    ("LICENSE", "license"),
    ("LICENSE_EXPIRY", "license_expiry"),
]
NVML_INSTANCE_KEYS = ("nvml_id", "vm_id", "fb_used_mib", "sm_util", "mem_util", "enc_util", "dec_util")


def parent_record(p: Parent, inv: Inventory, gpu_name: Optional[str] = None) -> Dict[str, Any]:
    extra: Dict[str, Any] = {"gpu_name": gpu_name} if p.vendor_id == "0x10de" else {}
    return record(
        PARENT_SCHEMA,
        parent=p.name,
        backend=str(p.backend),
        pci=p.pci,
        vendor=str(p.vendor),
        vendor_id=p.vendor_id,
        device_id=p.device_id,
        numa_node=p.numa_node,
        driver=p.driver,
        gpu=p.gpu,
        is_vf=p.is_vf,
        types=len(inv.types_on(p.name)),
        instances=len(inv.instances_on(p.name)),
        **extra,
    )


def type_record(t: VgpuType) -> Dict[str, Any]:
    fields = {k: v for k, v in t.fields}
    return record(
        TYPE_SCHEMA,
        parent=t.parent,
        type_id=t.type_id,
        name=t.name,
        device_api=t.device_api,
        available=t.available,
        max_instance=t.max_instance,
        framebuffer_mib=t.framebuffer_mib,
        num_heads=t.num_heads,
        max_resolution=t.max_resolution,
        frl_config=t.frl_config,
        series=t.series,
        weight=t.weight,
        type_class=fields.get("class"),
        description=t.description,
        fields=fields,
    )


def instance_record(
    i: Instance,
    inv: Optional[Inventory] = None,
    *,
    owned: Optional[bool] = None,
    used_by: Sequence[str] = (),
    domains: Optional[Sequence[str]] = None,
    running: Optional[bool] = None,
    nvml: Optional[Any] = None,
    defined_by: Sequence[str] = (),
    nodedev: Optional[str] = None,
    nodedev_known: Optional[bool] = None,
    libvirt_error: Optional[str] = None,
) -> Dict[str, Any]:
    """``domains``: libvirt domains whose live or persistent XML references the instance, ``running``: whether one
    of them runs with it; both None when libvirt was not asked (``--connect none``) or could not be asked: then
    ``libvirt_error`` says why (the field is there only then).  ``defined_by``: who defines it
    (``coexist.definers``); ``nodedev``: libvirt's node device name, ``nodedev_known``: whether libvirt knows one
    (None: libvirt not asked or unreachable)."""
    t = inv.type_on(i.parent, i.type_id) if inv else None
    extra: Dict[str, Any] = {"libvirt_error": libvirt_error} if libvirt_error else {}
    return record(
        INSTANCE_SCHEMA,
        uuid=i.uuid,
        parent=i.parent,
        type_id=i.type_id,
        type_name=t.name if t else None,
        backend=str(i.backend),
        iommu_group=i.iommu_group,
        driver=i.driver,
        owned=owned,
        domains=list(domains) if isinstance(domains, (list, tuple)) else domains,  # None, a list, or UNKNOWN
        running=running,
        used_by=list(used_by),
        active=True,
        defined_by=list(defined_by),
        nodedev=nodedev,
        nodedev_known=nodedev_known,
        **_nvml_fields(i, inv, nvml),
        **extra,
    )


def definition_record(
    d: Any,
    *,
    owned: bool = False,
    defined_by: Sequence[str] = (),
    nodedev: Optional[str] = None,
    nodedev_known: Optional[bool] = None,
) -> Dict[str, Any]:
    """An mdevctl definition that has no device (``list --defined``): an instance record with ``active`` false."""
    return record(
        INSTANCE_SCHEMA,
        uuid=d.uuid,
        parent=d.parent,
        type_id=d.type_id,
        type_name=None,
        backend="mdev",
        iommu_group=None,
        driver=None,
        owned=owned,
        domains=None,
        running=None,
        used_by=[],
        active=False,
        defined_by=list(defined_by),
        nodedev=nodedev,
        nodedev_known=nodedev_known,
    )


def _nvml_fields(i: Instance, inv: Optional[Inventory], nvml: Optional[Any]) -> Dict[str, Any]:
    """NVML's per-instance details (a ``vgpuctl.nvml.VgpuInfo``), on NVIDIA instances only: null when unknown."""
    p = inv.parent(i.parent) if inv else None
    if nvml is None and (p is None or p.vendor_id != "0x10de"):
        return {}
    out = {k: getattr(nvml, k, None) for k in NVML_INSTANCE_KEYS}
    out.update(license_fields(getattr(nvml, "license", None)))
    return out


def license_fields(lic: Optional[Any]) -> Dict[str, Any]:
    """A vGPU's license (``vgpuctl.nvml.License``; None: NVML cannot tell) as record fields: ``license`` (licensed,
    unlicensed, unlicensed-restricted, ... or unknown), ``licensed`` (null when unknown), ``license_expiry`` (ISO
    time, ``permanent`` or null), ``license_expiry_seconds`` (Unix time or null)."""
    if lic is None:
        from ..nvml import UNKNOWN_LICENSE

        lic = UNKNOWN_LICENSE
    return {
        "license": lic.state,
        "licensed": lic.licensed,
        "license_expiry": lic.expiry_text,
        "license_expiry_seconds": lic.expiry,
    }
