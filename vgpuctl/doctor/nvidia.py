"""Checks of the NVIDIA side: the vGPU manager on each GPU (types, vendor-VFIO VFs, SR-IOV), its daemons, NVML."""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, List, Optional

from ..model import BackendKind
from . import Context, Result, Timeout, bounded, check, link_name, listdir, read, read_int

SRIOV_MANAGE = "/usr/lib/nvidia/sriov-manage"
MANAGER_FIX = "install the NVIDIA vGPU manager for Linux KVM that supports this GPU, then reboot"
#: the vGPU manager's daemons; ``True``: every release has it (nvidia-vgpud is not in every one)
DAEMONS = (("nvidia-vgpu-mgr.service", True), ("nvidia-vgpud.service", False))


def nvidia_gpus(ctx: Context) -> List[str]:
    """Physical NVIDIA display/3D controllers in sysfs (PCI functions that are not VFs), sorted."""

    def make() -> List[str]:
        out = []
        for d in listdir(ctx.paths.pci_devices):
            f = ctx.paths.pci_devices / d
            if read(f / "vendor") != "0x10de" or not (read(f / "class") or "").startswith("0x03"):
                continue
            if os.path.lexists(f / "physfn"):
                continue
            out.append(d)
        return out

    return ctx.fact("nvidia-gpus", make)


def _mdev_types(ctx: Context, parent: str) -> List[str]:
    """The type names (ids where a type has no name) one mdev parent offers, in id order (the GPU's other VFs offer
    the same)."""
    base = ctx.paths.mdev_bus / parent / "mdev_supported_types"
    return [read(base / t / "name") or t for t in sorted(listdir(base), key=_id_order)]


def _id_order(type_id: str) -> "tuple[str, int]":
    """nvidia-222 before nvidia-1000: by the id's text, then its number."""
    head, _, num = type_id.rpartition("-")
    return (head, int(num)) if num.isdigit() else (type_id, -1)


@check(
    "vgpu-manager",
    "each NVIDIA GPU offers vGPUs: mdev types on the GPU or its VFs, or vendor-VFIO VFs with "
    "nvidia/; a GPU that needs SR-IOV VFs has them enabled (sriov_numvfs)",
    f"{SRIOV_MANAGE} -e <GPU> (after every boot); or install the NVIDIA vGPU manager for the GPU",
)
def vgpu_manager(ctx: Context) -> List[Result]:
    gpus = nvidia_gpus(ctx)
    if not gpus:
        return [Result.na("vgpu-manager", "no NVIDIA GPU on this host")]
    inv = ctx.inventory()
    out = []
    for gpu in gpus:
        f = ctx.paths.pci_devices / gpu
        driver = link_name(f / "driver")
        on_gpu = [p for p in inv.parents if p.gpu == gpu]
        mdev = [p.name for p in on_gpu if p.backend is BackendKind.MDEV]
        vfio = [p.name for p in on_gpu if p.backend is BackendKind.NVIDIA_VF]
        types = _mdev_types(ctx, mdev[0]) if mdev else []
        total = read_int(f / "sriov_totalvfs") or 0
        enabled = read_int(f / "sriov_numvfs") or 0
        if driver != "nvidia":
            out.append(
                Result.fail("vgpu-manager", f"bound to {driver or 'no driver'}, not to nvidia", MANAGER_FIX, gpu)
            )
        elif total and not enabled:
            out.append(
                Result.fail(
                    "vgpu-manager",
                    f"SR-IOV VFs disabled (sriov_numvfs 0 of {total}): this GPU hosts vGPUs on its VFs",
                    f"{SRIOV_MANAGE} -e {gpu} (needed after every boot)",
                    gpu,
                )
            )
        elif vfio:
            out.append(
                Result.ok(
                    "vgpu-manager",
                    f"vendor VFIO: {len(vfio)} VF(s) with nvidia/ ({enabled} of {total} VFs enabled)",
                    gpu,
                )
            )
        elif mdev and types:
            where = "on the GPU" if mdev == [gpu] else f"on each of {len(mdev)} VF(s) ({enabled} of {total} enabled)"
            out.append(Result.ok("vgpu-manager", f"mdev: {len(types)} type(s) {where}, e.g. {types[0]}", gpu))
        else:
            out.append(
                Result.fail(
                    "vgpu-manager",
                    "no vGPU types on this GPU: the vGPU manager is not loaded or does not support it",
                    MANAGER_FIX,
                    gpu,
                )
            )
    return out


def _systemd_running(ctx: Context) -> bool:
    """systemd manages this root right now (sd_booted(3): /run/systemd/system exists), so units can be asked."""
    return ctx.root_is_slash and os.path.isdir("/run/systemd/system")


def unit_state(ctx: Context, unit: str) -> "tuple[Optional[str], str]":
    """(state, how): ``active``/``inactive``/``failed``... from a running systemd, else ``enabled``/``disabled``/
    ``masked``... of the unit files under the root (``systemctl --root``); ``not-found``; None where there is no
    systemctl (or it did not answer)."""
    if shutil.which("systemctl") is None:
        return None, "no systemctl on this host"
    if _systemd_running(ctx):
        c = ctx.run(["systemctl", "show", "--property=LoadState,ActiveState", "--", unit])
        if c.rc != 0:
            return None, c.err or "systemctl show failed"
        props = dict(line.split("=", 1) for line in c.out.splitlines() if "=" in line)
        if props.get("LoadState") == "not-found":
            return "not-found", "systemd"
        return props.get("ActiveState") or None, "systemd"
    c = ctx.run(["systemctl", f"--root={ctx.paths.root}", "is-enabled", "--", unit])
    if c.rc is None:
        return None, c.err
    if c.out:
        return c.out.split()[0], "unit files"
    if "No such file" in c.err or "not found" in c.err:
        return "not-found", "unit files"
    return None, c.err or f"systemctl is-enabled exited {c.rc}"


@check(
    "nvidia-daemons",
    "nvidia-vgpu-mgr (and nvidia-vgpud, where the release has it) is active; without a running "
    "systemd, its unit is enabled under the root",
    "systemctl enable --now nvidia-vgpu-mgr.service",
)
def nvidia_daemons(ctx: Context) -> List[Result]:
    if not nvidia_gpus(ctx):
        return [Result.na("nvidia-daemons", "no NVIDIA GPU on this host")]
    out = []
    for unit, required in DAEMONS:
        state, how = unit_state(ctx, unit)
        fix = f"systemctl enable --now {unit}"
        if state is None:
            out.append(Result.na("nvidia-daemons", f"cannot tell: {how}", unit))
        elif state == "not-found":
            if required:
                out.append(Result.fail("nvidia-daemons", "not installed", MANAGER_FIX, unit))
            else:
                out.append(Result.na("nvidia-daemons", "not installed (not every vGPU manager release has it)", unit))
        elif how == "systemd":
            if state == "active":
                out.append(Result.ok("nvidia-daemons", "active", unit))
            else:
                out.append(
                    (Result.fail if required else Result.warn)("nvidia-daemons", f"{state}, not active", fix, unit)
                )
        elif state in ("enabled", "enabled-runtime", "static", "alias", "indirect", "generated"):
            out.append(
                Result.ok(
                    "nvidia-daemons",
                    f"{state} (systemd is not running for {ctx.paths.root}: whether it runs now is unknown)",
                    unit,
                )
            )
        else:
            out.append(
                (Result.fail if required else Result.warn)(
                    "nvidia-daemons", f"{state}: it will not start at boot", fix, unit
                )
            )
    return out


@check(
    "nvml",
    "NVML (libnvidia-ml) is usable, each GPU is in vGPU host mode, and its driver version equals "
    "sys/module/nvidia/version",
    "reboot (or reload the nvidia module) after a driver upgrade",
)
def nvml(ctx: Context) -> Result:
    from ..nvml import VIRT_MODES, Nvml, NvmlUnavailable

    gpus = nvidia_gpus(ctx)
    if not gpus:
        return Result.na("nvml", "no NVIDIA GPU on this host")
    if ctx.nvml == "off":
        return Result.na("nvml", "NVML is turned off (--nvml off)")
    module = read(ctx.sys("module", "nvidia", "version"))

    def ask() -> "tuple[Optional[str], dict]":
        with Nvml() as nv:
            version = nv.driver_version()
            modes: Dict[str, Any] = {}
            for gpu in gpus:
                try:
                    modes[gpu] = nv.gpu(gpu, types=False, vgpus=False).virt_mode
                except NvmlUnavailable as e:
                    modes[gpu] = e.reason
            return version, modes

    try:
        version, modes = bounded(ask, ctx.timeout, "NVML")
    except Timeout as e:
        return Result.fail("nvml", str(e), "check the nvidia driver (dmesg | grep -i nvrm); reboot if it is hung")
    except NvmlUnavailable as e:
        if e.code == 18:
            return Result.fail(
                "nvml",
                f"{e.reason} (sys/module/nvidia/version: {module or 'none'})",
                "reboot (or reload the nvidia module) so the kernel module and libnvidia-ml match",
            )
        if e.code is None:
            fix = "pip install 'vgpuctl[nvidia]'"
        elif e.code == 9:
            fix = "modprobe nvidia"
        else:
            fix = "install the NVIDIA vGPU manager's user space (libnvidia-ml.so.1)"
        return Result.warn(
            "nvml",
            f"not usable: {e.reason}; vgpuctl works from sysfs, but 'sched', 'hetero' and NVML details need it",
            fix,
        )
    if module is None:
        return Result.fail(
            "nvml",
            f"NVML says driver {version}, but sys/module/nvidia/version is missing (the nvidia module is not loaded)",
            "modprobe nvidia",
        )
    if version != module:
        return Result.fail(
            "nvml",
            f"NVML's library is driver {version}, the loaded kernel module {module} (sys/module/nvidia/version)",
            "reboot (or reload the nvidia module) so the kernel module and libnvidia-ml match",
        )
    bad = {g: m for g, m in modes.items() if m != 3}
    if bad:
        g, m = sorted(bad.items())[0]
        what = m if isinstance(m, str) else f"virtualization mode {m}: {VIRT_MODES.get(m, 'unknown')}"
        return Result.fail(
            "nvml",
            f"GPU {g} is not a vGPU host ({what})",
            "install and load the NVIDIA vGPU manager (not the data-centre driver) for this GPU",
        )
    return Result.ok("nvml", f"driver {version} (= sys/module/nvidia/version); {len(modes)} GPU(s) in vGPU host mode")


@check(
    "vgpu-license",
    "every running NVIDIA vGPU holds a license (NVML nvmlVgpuInstanceGetLicenseInfo_v2); an "
    "unlicensed one runs at full speed only for a grace period, then degrades",
    "license the guest: install the NVIDIA client configuration token in the VM and restart nvidia-gridd there",
)
def vgpu_license(ctx: Context) -> List[Result]:
    from ..nvml import NvmlUnavailable, enrich, gather, placements_of

    if not nvidia_gpus(ctx):
        return [Result.na("vgpu-license", "no NVIDIA GPU on this host")]
    if ctx.nvml == "off":
        return [Result.na("vgpu-license", "license state unknown: NVML is turned off (--nvml off)")]
    inv = ctx.inventory()
    if not inv.instances:
        return [Result.na("vgpu-license", "no vGPU instances")]

    def ask() -> dict:
        gpus, _notes = gather(inv)
        hosts = {g: v for g, v in gpus.items() if v.vgpu_host}
        return enrich(inv, hosts, placements_of(ctx.paths, inv))[1]

    try:
        details = bounded(ask, ctx.timeout, "NVML")
    except Timeout as e:
        return [Result.na("vgpu-license", f"license state unknown: {e}")]
    except NvmlUnavailable as e:
        return [Result.na("vgpu-license", f"license state unknown: NVML not usable ({e.reason})")]
    if not details:
        return [Result.na("vgpu-license", "no running vGPU (NVML reports licenses only for vGPUs a VM runs)")]
    out: List[Result] = []
    for uuid, v in sorted(details.items()):
        lic = v.license
        vm = f" (VM {v.vm_id})" if v.vm_id else ""
        if lic.licensed is None:
            out.append(Result.na("vgpu-license", f"license state unknown{vm}: NVML cannot tell", subject=uuid))
        elif lic.licensed:
            until = f" until {lic.expiry_text}" if lic.expiry_text else ""
            out.append(Result.ok("vgpu-license", f"{lic.state}{until}{vm}", subject=uuid))
        else:
            out.append(
                Result.warn(
                    "vgpu-license",
                    f"running unlicensed: {lic.state}{vm}",
                    "license the guest: install the NVIDIA client configuration token in the VM and "
                    "restart nvidia-gridd there",
                    subject=uuid,
                )
            )
    return out
