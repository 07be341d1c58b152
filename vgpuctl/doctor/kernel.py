"""Checks of the kernel side: the VFIO modules, the mdev core, registered parents and IOMMU groups."""

from __future__ import annotations

from typing import List

from ..model import BackendKind
from . import Context, Result, check, listdir, read

VFIO_MODULES = ("vfio", "vfio_iommu_type1")
IOMMU_FIX = (
    "enable VT-d / AMD-Vi in the firmware and boot with intel_iommu=on iommu=pt on the kernel command line "
    "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot)"
)


def module_loaded(ctx: Context, name: str) -> bool:
    """``sys/module/<name>`` exists and, where it says, is ``live`` (not coming or going)."""
    d = ctx.sys("module", name)
    if not d.is_dir():
        return False
    state = read(d / "initstate")
    return state is None or state == "live"


def vendor_vfio_only(ctx: Context) -> bool:
    """Every vGPU-capable device of the host is an NVIDIA vendor-VFIO VF: no mdev is needed."""
    parents = ctx.inventory().parents
    return bool(parents) and all(p.backend is BackendKind.NVIDIA_VF for p in parents)


@check(
    "vfio-modules",
    "the VFIO modules vfio and vfio_iommu_type1 are loaded (sys/module/...)",
    "modprobe -a vfio vfio_iommu_type1, and list them in /etc/modules-load.d/vfio.conf",
)
def vfio_modules(ctx: Context) -> Result:
    missing = [m for m in VFIO_MODULES if not module_loaded(ctx, m)]
    if missing:
        return Result.fail(
            "vfio-modules",
            f"not loaded: {', '.join(missing)} (no {ctx.sys('module', missing[0])})",
            f"modprobe -a {' '.join(missing)}, and list them in /etc/modules-load.d/vfio.conf",
        )
    return Result.ok("vfio-modules", f"{', '.join(VFIO_MODULES)} loaded")


@check(
    "mdev-bus",
    "the mdev core is loaded where vGPUs are mdevs: sys/module/mdev, sys/class/mdev_bus, sys/bus/mdev",
    "modprobe mdev (the vendor's mdev driver, e.g. nvidia-vgpu-vfio, loads it)",
)
def mdev_bus(ctx: Context) -> Result:
    have = {
        "sys/module/mdev": module_loaded(ctx, "mdev"),
        "sys/class/mdev_bus": ctx.paths.mdev_bus.is_dir(),
        "sys/bus/mdev": ctx.paths.mdev_devices.parent.is_dir(),
    }
    missing = [k for k, v in have.items() if not v]
    if not missing:
        n = len(listdir(ctx.paths.mdev_bus))
        return Result.ok("mdev-bus", f"mdev core loaded; {n} parent(s) in sys/class/mdev_bus")
    if vendor_vfio_only(ctx):
        return Result.na(
            "mdev-bus", "not loaded, and not needed: every vGPU-capable device is an NVIDIA vendor-VFIO VF"
        )
    return Result.fail(
        "mdev-bus",
        f"the mdev core is not loaded: no {', '.join(missing)}",
        "modprobe mdev (the vendor's mdev driver, e.g. nvidia-vgpu-vfio, loads it)",
    )


@check(
    "parents",
    "some device can host vGPUs: an mdev parent or an NVIDIA vendor-VFIO VF",
    "load the vendor driver (NVIDIA vGPU manager, kvmgt for Intel GVT-g)",
)
def parents(ctx: Context) -> Result:
    inv = ctx.inventory()
    mdev = [p.name for p in inv.parents if p.backend is BackendKind.MDEV]
    vfs = [p.name for p in inv.parents if p.backend is BackendKind.NVIDIA_VF]
    if not mdev and not vfs:
        return Result.fail(
            "parents",
            "no device can host vGPUs: sys/class/mdev_bus is empty and no PCI device has an nvidia/ vGPU directory",
            "load the vendor driver that registers them (the NVIDIA vGPU manager, kvmgt for GVT-g)",
        )
    seen: List[str] = []
    if mdev:
        names = ", ".join(mdev[:4]) + (f" and {len(mdev) - 4} more" if len(mdev) > 4 else "")
        seen.append(f"{len(mdev)} mdev parent(s): {names}")
    if vfs:
        seen.append(f"{len(vfs)} NVIDIA vendor-VFIO VF(s)")
    return Result.ok("parents", "; ".join(seen))


@check(
    "iommu",
    "IOMMU groups exist where they are needed: SR-IOV VFs passed through as PCI devices need a hardware "
    "IOMMU; mdev instances do not",
    IOMMU_FIX,
)
def iommu(ctx: Context) -> Result:
    groups = listdir(ctx.sys("kernel", "iommu_groups"))
    inv = ctx.inventory()
    pci_groups = [
        g for g in groups if any(not _is_uuid(d) for d in listdir(ctx.sys("kernel", "iommu_groups", g, "devices")))
    ]
    vfs = [p.name for p in inv.parents if p.backend is BackendKind.NVIDIA_VF]
    ungrouped = [v for v in vfs if not (ctx.paths.pci_devices / v / "iommu_group").exists()]
    if ungrouped:
        return Result.fail(
            "iommu",
            f"{len(ungrouped)} of {len(vfs)} vendor-VFIO VFs have no IOMMU group (e.g. "
            f"{ungrouped[0]}): no hardware IOMMU, and a VF passed through to a VM needs one",
            IOMMU_FIX,
        )
    if vfs:
        return Result.ok(
            "iommu", f"hardware IOMMU on: {len(pci_groups)} PCI IOMMU group(s); every vendor-VFIO VF has its own"
        )
    if pci_groups:
        return Result.ok(
            "iommu", f"hardware IOMMU on: {len(pci_groups)} PCI IOMMU group(s) (mdev instances do not need one)"
        )
    return Result.ok("iommu", "no hardware IOMMU groups; not needed: mdev instances get IOMMU groups of their own")


def _is_uuid(name: str) -> bool:
    from ..model import canonical_uuid

    return canonical_uuid(name) is not None
