"""The NVML part of ``scripts/device-probe.sh``: what NVML says about the driver and each GPU, read only.

``python -m vgpuctl.probe`` prints the driver version (NVML's and ``/sys/module/nvidia/version``), and per GPU its
name, UUID, PCI bus id, virtualization mode, MIG mode and, in MIG mode, its GPU instance profiles and the GPU
instances that exist.  It calls only NVML's Get/query functions (``READ_ONLY_PREFIXES``; ``probe`` refuses any
other name), so it can never change a setting, and every failure is one line, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, List, Optional, Tuple

#: the only NVML functions the probe calls: queries (and init/shutdown)
READ_ONLY_PREFIXES = ("nvmlInit", "nvmlShutdown", "nvmlSystemGet", "nvmlDeviceGet", "nvmlGpuInstanceGet")
VIRT_MODES = {0: "none (bare metal)", 1: "pass-through", 2: "vGPU guest", 3: "vGPU host", 4: "vSGA host"}


def _text(v: Any) -> Any:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def probe(nv: Any, *, sys_version: Optional[str], out: Callable[[str], None] = print) -> None:
    """Print what NVML (the ``pynvml`` module ``nv``) says; ``sys_version``: /sys/module/nvidia/version."""

    def q(fn: str, *args: Any) -> Tuple[Any, Optional[str]]:
        if not fn.startswith(READ_ONLY_PREFIXES):
            raise AssertionError(f"the probe is read only: {fn} is not a query")
        try:
            return getattr(nv, fn)(*args), None
        except nv.NVMLError as e:
            return None, f"NVML error {getattr(e, 'value', '?')}: {e}"
        except Exception as e:  # a wrapper the driver's NVML does not match
            return None, f"{type(e).__name__}: {e}"

    _, err = q("nvmlInit")
    if err:
        out(f"nvmlInit: {err}")
        return
    try:
        drv, err = q("nvmlSystemGetDriverVersion")
        out(f"driver (NVML): {_text(drv) if drv else err}")
        out(f"driver (/sys/module/nvidia/version): {sys_version or 'absent'}")
        if drv and sys_version:
            out(
                "driver versions agree"
                if _text(drv) == sys_version
                else "driver versions DIFFER (NVML's user space and the kernel module)"
            )
        count, err = q("nvmlDeviceGetCount")
        out(f"GPUs: {count if count is not None else err}")
        for i in range(count or 0):
            _gpu(nv, q, i, out)
    finally:
        q("nvmlShutdown")


def _gpu(nv: Any, q: Callable[..., Tuple[Any, Optional[str]]], i: int, out: Callable[[str], None]) -> None:
    h, err = q("nvmlDeviceGetHandleByIndex", i)
    if err:
        out(f"- GPU {i}: {err}")
        return
    name, _ = q("nvmlDeviceGetName", h)
    uuid, _ = q("nvmlDeviceGetUUID", h)
    pci, perr = q("nvmlDeviceGetPciInfo", h)
    out(f"- GPU {i}: {_text(name)}  {_text(uuid)}  {_text(pci.busId) if pci is not None else perr}")
    mode, err = q("nvmlDeviceGetVirtualizationMode", h)
    out(
        f"  virtualization mode: {mode} ({VIRT_MODES.get(mode, '?')})"
        if err is None
        else f"  virtualization mode: {err}"
    )
    mig, err = q("nvmlDeviceGetMigMode", h)
    if err:
        out(f"  MIG mode: {err}")
        return
    current, pending = mig
    out(f"  MIG mode: current {'on' if current else 'off'}, pending {'on' if pending else 'off'}")
    if not current:
        return
    for p in range(int(getattr(nv, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0))):
        info, err = q("nvmlDeviceGetGpuInstanceProfileInfo", h, p)
        if err:  # the v2 struct the wrapper sends may be newer than the driver: ask with v1
            info, err = q("nvmlDeviceGetGpuInstanceProfileInfo", h, p, 1)
        if err:
            continue
        label = _text(getattr(info, "name", b"")) or f"profile index {p}"
        out(
            f"  GPU instance profile {info.id}: {label}: {info.sliceCount} slice(s), {info.memorySizeMB} MiB, "
            f"at most {info.instanceCount}"
        )
        arr = (nv.c_nvmlGpuInstance_t * max(1, int(info.instanceCount)))()
        n = nv.c_uint(0)
        _, err = q("nvmlDeviceGetGpuInstances", h, info.id, arr, nv.byref(n))
        if err:
            out(f"    instances: {err}")
            continue
        for k in range(n.value):
            gi, err = q("nvmlGpuInstanceGetInfo", arr[k])
            out(
                f"    GPU instance {gi.id}: placement start {gi.placement.start}, size {gi.placement.size}"
                if gi is not None
                else f"    GPU instance: {err}"
            )


def main(argv: Optional[List[str]] = None) -> int:
    try:
        import pynvml
    except ImportError as e:
        print(f"pynvml not importable: {e} (pip install 'vgpuctl[nvidia]')")
        return 0
    try:
        with open("/sys/module/nvidia/version") as f:
            sys_version: Optional[str] = f.read().strip()
    except OSError:
        sys_version = None
    probe(pynvml, sys_version=sys_version)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
