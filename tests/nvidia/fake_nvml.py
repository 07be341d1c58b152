"""A fake NVML at the ctypes-function boundary of ``pynvml``: the real pynvml Python wrappers run, and every C function
they look up (``_nvmlGetFunctionPointer``) is served by this class from a running simulator (``vgpuctl.sim``) and
its profile, so NVML and sysfs tell one story: the same GPUs, types and typed VFs.

Test-only.  ``FakeNvml(sim).install(monkeypatch)``; ``start_vm(vf, vm_id)`` makes a typed VF an active vGPU (NVML
lists only vGPUs a VM runs); ``missing`` names C functions the "driver" lacks (-> NVML error 13).
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any, Callable, Dict, Iterable, List, Optional

import pynvml

from vgpuctl.sim.profile import load_profile

OK, INVALID, NOT_SUPPORTED, NOT_FOUND, INSUFFICIENT, IN_USE, NO_RESOURCES, VERSION = 0, 2, 3, 6, 7, 19, 23, 25
HANDLE_BASE = 0x1000
GI_HANDLE_BASE = 0x100000  #: a GPU instance handle: base + device index * 1000 + the instance's id
#: what a refused write to the simulator's MIG controls means in NVML's words (the driver's answer)
MIG_ERRORS = {
    errno.EBUSY: IN_USE,
    errno.ENOSPC: NO_RESOURCES,
    errno.EINVAL: INVALID,
    errno.EOPNOTSUPP: NOT_SUPPORTED,
    errno.ENOENT: NOT_FOUND,
}


def _obj(arg: Any) -> Any:
    return getattr(arg, "_obj", arg)  # byref(x) -> x


def _set_handle(arg: Any, value: int) -> None:
    ctypes.cast(ctypes.pointer(_obj(arg)), ctypes.POINTER(ctypes.c_void_p))[0] = value


def _handle(h: Any) -> int:
    return ctypes.cast(h, ctypes.c_void_p).value or 0


def _int(v: Any) -> int:
    return int(getattr(v, "value", v))


class FakeNvml:
    def __init__(
        self, sim: Any, *, virt_mode: int = 3, missing: Iterable[str] = (), init_error: Optional[int] = None
    ) -> None:
        self.sim = sim
        prof = load_profile(sim.profile)
        self.devices = [d for d in prof.devices if d.model.vgpu == "vendor-vfio"]
        #: the release of this "libnvidia-ml": the profile's driver, as the package that installed both ships it
        self.driver_version = next((d.model.driver_version for d in prof.devices if d.model.driver_version), "")
        #: an NVML error number nvmlInit returns (18: the kernel module is another release than the library)
        self.init_error = init_error
        self.virt_mode = virt_mode
        self.missing = set(missing)
        self.vms: Dict[str, str] = {}  #: VF -> VM id (an active vGPU)
        self.fb_used = 5 * 1024**3  #: bytes each active vGPU uses (more than 32 bits can hold)
        self.sched: Dict[int, Dict[str, int]] = {i: {"policy": 1, "timeslice": 0} for i in range(len(self.devices))}
        self.calls: List[str] = []
        #: VF -> (isLicensed, currentState, expiry status, (year, month, day, hour, min, sec)); default: licensed,
        #: permanent (a VF not listed here)
        self.licenses: Dict[str, tuple] = {}
        #: struct versions this "driver" knows (a newer pynvml sending another one gets error 25)
        self.hetero_version = pynvml.VgpuHeterogeneousMode_v1
        self.placement_version = pynvml.VgpuPlacementId_v1
        #: every MIG-changing call, in order (nvmlDeviceSetMigMode, nvmlDeviceCreateGpuInstance*, ...Destroy)
        self.mig_calls: List[str] = []

    # --- wiring ---------------------------------------------------------------------------------------------------
    def install(self, monkeypatch: Any) -> "FakeNvml":
        monkeypatch.setattr(pynvml, "nvmlLib", None)
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})

        def load() -> None:
            pynvml.nvmlLib = self

        def lookup(name: str) -> Callable[..., int]:
            if pynvml.nvmlLib is None:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
            fn = getattr(self, name, None)
            if fn is None or name in self.missing:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            self.calls.append(name)
            return fn

        monkeypatch.setattr(pynvml, "_LoadNvmlLibrary", load)
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", lookup)
        return self

    def start_vm(self, vf: str, vm_id: str) -> None:
        self.vms[vf] = vm_id

    def set_license(
        self,
        vf: str,
        *,
        licensed: bool,
        state: int,
        expiry: Optional[tuple] = None,
        expiry_status: Optional[int] = None,
    ) -> None:
        """What nvmlVgpuInstanceGetLicenseInfo_v2 reports for the vGPU on ``vf`` (NVML_GRID_LICENSE_STATE_* and
        NVML_GRID_LICENSE_EXPIRY_*: 2 valid, 4 permanent, 0 not available)."""
        status = expiry_status if expiry_status is not None else (2 if expiry else 0)
        self.licenses[vf] = (int(licensed), state, status, expiry or (0, 0, 0, 0, 0, 0))

    # --- the host as the simulator shows it -------------------------------------------------------------------------
    def _dev(self, h: Any) -> int:
        return _handle(h) - HANDLE_BASE

    def _vfs(self, idx: int) -> List[str]:
        pf = self.devices[idx].name
        base = self.sim.paths.pci_devices / pf
        return sorted(p.resolve().name for p in base.glob("virtfn*"))

    def _types(self, idx: int) -> list:
        d = self.devices[idx]
        mig = self._mig_on(idx) if d.model.mig_profiles else False
        return [t for t in d.model.types if (t.mig_slices is not None) == mig]

    def _type(self, number: int) -> Any:
        for d in self.devices:
            for t in d.model.types:
                if int(t.id) == number:
                    return t
        return None

    def _active(self, idx: int) -> List[int]:
        out = []
        for k, vf in enumerate(self._vfs(idx)):
            if vf in self.vms and self.sim.vgpu_type(vf):
                out.append(idx * 1000 + k + 1)
        return out

    def _vgpu(self, v: int) -> str:
        idx, k = divmod(_int(v), 1000)
        return self._vfs(idx)[k - 1]

    def _nv_attr(self, vf: str, name: str) -> str:
        return (self.sim.nvidia_dir(vf) / name).read_text().strip()

    # --- C functions ----------------------------------------------------------------------------------------------
    def nvmlInitWithFlags(self, flags: Any) -> int:
        return self.init_error or OK

    def nvmlSystemGetDriverVersion(self, buf: Any, size: Any) -> int:
        buf.value = self.driver_version.encode()
        return OK

    def nvmlShutdown(self) -> int:
        return OK

    def nvmlDeviceGetCount_v2(self, count: Any) -> int:
        _obj(count).value = len(self.devices)
        return OK

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, dev: Any) -> int:
        _set_handle(dev, HANDLE_BASE + _int(index))
        return OK

    def nvmlDeviceGetHandleByPciBusId_v2(self, bus: Any, dev: Any) -> int:
        text = bus.value.decode().lower()
        for i, d in enumerate(self.devices):
            if text.endswith(d.name[5:]):
                _set_handle(dev, HANDLE_BASE + i)
                return OK
        return NOT_FOUND

    def nvmlDeviceGetPciInfo_v3(self, h: Any, info: Any) -> int:
        d = self.devices[self._dev(h)]
        _obj(info).busId = ("0000" + d.name).upper().encode()
        return OK

    def nvmlDeviceGetName(self, h: Any, buf: Any, size: Any) -> int:
        buf.value = b"NVIDIA " + self.devices[self._dev(h)].model.key.upper().encode()
        return OK

    def nvmlDeviceGetUUID(self, h: Any, buf: Any, size: Any) -> int:
        buf.value = f"GPU-fake-{self._dev(h):04d}".encode()
        return OK

    def nvmlDeviceGetVirtualizationMode(self, h: Any, mode: Any) -> int:
        _obj(mode).value = self.virt_mode
        return OK

    def _array(self, values: List[int], count: Any, arr: Any) -> int:
        c = _obj(count)
        if arr is None:
            c.value = len(values)
            return INSUFFICIENT if values else OK
        for i, v in enumerate(values):
            arr[i] = v
        c.value = len(values)
        return OK

    def nvmlDeviceGetSupportedVgpus(self, h: Any, count: Any, arr: Any) -> int:
        return self._array([int(t.id) for t in self._types(self._dev(h))], count, arr)

    def nvmlDeviceGetActiveVgpus(self, h: Any, count: Any, arr: Any) -> int:
        return self._array(self._active(self._dev(h)), count, arr)

    def nvmlVgpuTypeGetName(self, n: Any, buf: Any, size: Any) -> int:
        t = self._type(_int(n))
        if t is None:
            return INVALID
        buf.value = t.name.encode()
        return OK

    def nvmlVgpuTypeGetClass(self, n: Any, buf: Any, size: Any) -> int:
        buf.value = b"Compute" if self._type(_int(n)).name.endswith("C") else b"Quadro"
        return OK

    def nvmlVgpuTypeGetFramebufferSize(self, n: Any, fb: Any) -> int:
        _obj(fb).value = self._type(_int(n)).framebuffer * 1024 * 1024
        return OK

    def nvmlVgpuTypeGetMaxInstances(self, h: Any, n: Any, out: Any) -> int:
        _obj(out).value = self._type(_int(n)).max_instance
        return OK

    def nvmlVgpuInstanceGetType(self, v: Any, out: Any) -> int:
        _obj(out).value = self.sim.vgpu_type(self._vgpu(v))
        return OK

    def nvmlVgpuInstanceGetVmID(self, v: Any, buf: Any, size: Any, kind: Any) -> int:
        _obj(buf).value = self.vms[self._vgpu(v)].encode()
        _obj(kind).value = 1  # NVML_VGPU_VM_ID_UUID
        return OK

    def nvmlVgpuInstanceGetFbUsage(self, v: Any, out: Any) -> int:
        o = _obj(out)
        if not isinstance(o, ctypes.c_ulonglong):  # the C API writes 64 bits: a 32-bit target is a caller bug
            return INVALID
        o.value = self.fb_used
        return OK

    def nvmlVgpuInstanceGetPlacementId(self, v: Any, out: Any) -> int:
        o = _obj(out)
        if o.version != self.placement_version:
            return VERSION
        o.placementId = int(self._nv_attr(self._vgpu(v), "placement_id"))
        return OK

    def nvmlVgpuInstanceGetGpuInstanceId(self, v: Any, out: Any) -> int:
        gi = int(self._nv_attr(self._vgpu(v), "gpu_instance_id"))
        if gi < 0:
            return NOT_SUPPORTED
        _obj(out).value = gi
        return OK

    # --- MIG: the simulator's control files are the GPU's state (sim.machine: mig, gpu_instances, gpu_processes) ----
    def _ctl_lines(self, name: str) -> List[List[str]]:
        return [ln.split() for ln in (self.sim.control_dir / name).read_text().splitlines() if ln.strip()]

    def _mig_on(self, idx: int) -> bool:
        pf = self.devices[idx].name
        return any(f[0] == pf and f[1] == "1" for f in self._ctl_lines("mig"))

    def _gis(self, idx: int) -> List[tuple]:
        """(id, profile name, start, size) of the device's GPU instances."""
        pf = self.devices[idx].name
        return [(int(f[1]), f[2], int(f[3]), int(f[4])) for f in self._ctl_lines("gpu_instances") if f[0] == pf]

    def _profile(
        self, idx: int, *, index: Optional[int] = None, pid: Optional[int] = None, name: Optional[str] = None
    ) -> Any:
        for p in self.devices[idx].model.mig_profiles:
            if (index is not None and p.index == index) or (pid is not None and p.id == pid) or p.name == name:
                return p
        return None

    def _mig_write(self, name: str, text: str) -> int:
        try:
            self.sim.control(name, text)
        except OSError as e:
            return MIG_ERRORS.get(e.errno or 0, INVALID)
        return OK

    def _gi_handle(self, idx: int, gid: int) -> int:
        return GI_HANDLE_BASE + idx * 1000 + gid

    def _gi_of(self, gi: Any) -> tuple:
        idx, gid = divmod(_handle(gi) - GI_HANDLE_BASE, 1000)
        return idx, gid

    def nvmlDeviceGetMigMode(self, h: Any, current: Any, pending: Any) -> int:
        idx = self._dev(h)
        if not self.devices[idx].model.mig_profiles:
            return NOT_SUPPORTED  # a GPU without MIG (L40S)
        mig = int(self._mig_on(idx))
        _obj(current).value, _obj(pending).value = mig, mig
        return OK

    def nvmlDeviceSetMigMode(self, h: Any, mode: Any, status: Any) -> int:
        idx = self._dev(h)
        self.mig_calls.append(f"mig {self.devices[idx].name} {_int(mode)}")
        ret = self._mig_write("mig", f"{self.devices[idx].name} {_int(mode)}")
        _obj(status).value = ret
        return ret

    def nvmlDeviceGetComputeRunningProcesses_v3(self, h: Any, count: Any, arr: Any) -> int:
        pf = self.devices[self._dev(h)].name
        procs = [int(f[1]) for f in self._ctl_lines("gpu_processes") if f[0] == pf]
        c = _obj(count)
        if arr is None or c.value < len(procs):
            c.value = len(procs)
            return INSUFFICIENT if procs else OK
        for i, pid in enumerate(procs):
            arr[i].pid, arr[i].usedGpuMemory = pid, 1 << 30
        c.value = len(procs)
        return OK

    def nvmlSystemGetProcessName(self, pid: Any, buf: Any, size: Any) -> int:
        for f in self._ctl_lines("gpu_processes"):
            if int(f[1]) == _int(pid):
                buf.value = f[2].encode()
                return OK
        return NOT_FOUND

    def nvmlDeviceGetGpuInstanceProfileInfoV(self, h: Any, profile: Any, out: Any) -> int:
        idx = self._dev(h)
        p = self._profile(idx, index=_int(profile))
        if p is None or not self._mig_on(idx):
            return NOT_SUPPORTED
        o = _obj(out)
        o.id, o.sliceCount, o.instanceCount, o.memorySizeMB = p.id, p.slices, len(p.placements), p.memory
        o.name = f"MIG {p.name}".encode()
        return OK

    def nvmlDeviceGetGpuInstancePossiblePlacements_v2(self, h: Any, pid: Any, arr: Any, count: Any) -> int:
        p = self._profile(self._dev(h), pid=_int(pid))
        if p is None:
            return INVALID
        c = _obj(count)
        if arr is None:
            c.value = len(p.placements)
            return OK
        for i, start in enumerate(p.placements):
            arr[i].start, arr[i].size = start, p.size
        c.value = len(p.placements)
        return OK

    def _create_gi(self, h: Any, pid: Any, start: Optional[int], size: Optional[int], out: Any) -> int:
        idx = self._dev(h)
        p = self._profile(idx, pid=_int(pid))
        pf = self.devices[idx].name
        self.mig_calls.append(f"create {pf} {p.name if p else _int(pid)}" + ("" if start is None else f" {start}"))
        if p is None or (size is not None and size != p.size):
            return INVALID
        if not self._mig_on(idx):
            return NOT_SUPPORTED
        before = {g[0] for g in self._gis(idx)}
        ret = self._mig_write("gpu_instances", f"{pf} create {p.name}" + ("" if start is None else f" {start}"))
        if ret != OK:
            return ret
        (gid,) = [g[0] for g in self._gis(idx) if g[0] not in before]
        _set_handle(out, self._gi_handle(idx, gid))
        return OK

    def nvmlDeviceCreateGpuInstance(self, h: Any, pid: Any, out: Any) -> int:
        return self._create_gi(h, pid, None, None, out)

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, h: Any, pid: Any, placement: Any, out: Any) -> int:
        pl = _obj(placement)
        return self._create_gi(h, pid, int(pl.start), int(pl.size), out)

    def nvmlDeviceGetGpuInstances(self, h: Any, profile_id: Any, arr: Any, count: Any) -> int:
        idx = self._dev(h)
        p = self._profile(idx, pid=_int(profile_id))
        if p is None:
            return INVALID
        mine = [g for g in self._gis(idx) if g[1] == p.name]
        for i, g in enumerate(mine):
            arr[i] = ctypes.cast(ctypes.c_void_p(self._gi_handle(idx, g[0])), type(arr[i]))
        _obj(count).value = len(mine)
        return OK

    def nvmlDeviceGetGpuInstanceById(self, h: Any, gid: Any, out: Any) -> int:
        idx = self._dev(h)
        if not any(g[0] == _int(gid) for g in self._gis(idx)):
            return NOT_FOUND
        _set_handle(out, self._gi_handle(idx, _int(gid)))
        return OK

    def nvmlGpuInstanceGetInfo(self, gi: Any, out: Any) -> int:
        idx, gid = self._gi_of(gi)
        g = next((g for g in self._gis(idx) if g[0] == gid), None)
        if g is None:
            return INVALID
        o = _obj(out)
        o.id, o.profileId = gid, self._profile(idx, name=g[1]).id
        o.placement.start, o.placement.size = g[2], g[3]
        return OK

    def nvmlGpuInstanceDestroy(self, gi: Any) -> int:
        idx, gid = self._gi_of(gi)
        self.mig_calls.append(f"destroy {self.devices[idx].name} {gid}")
        return self._mig_write("gpu_instances", f"{self.devices[idx].name} destroy {gid}")

    def nvmlVgpuInstanceGetLicenseInfo_v2(self, v: Any, out: Any) -> int:
        lic, o = self.licenses.get(self._vgpu(v), (1, 5, 4, (0, 0, 0, 0, 0, 0))), _obj(out)
        o.isLicensed, o.currentState = lic[0], lic[1]
        e = o.licenseExpiry
        e.status = lic[2]
        e.year, e.month, e.day, e.hour, e.min, e.sec = lic[3]
        return OK

    def nvmlVgpuInstanceGetMdevUUID(self, v: Any, buf: Any, size: Any) -> int:
        return NOT_SUPPORTED  # vendor VFIO: no mdev

    def nvmlDeviceGetVgpuUtilization(self, h: Any, ts: Any, vtype: Any, count: Any, arr: Any) -> int:
        active = self._active(self._dev(h))
        c = _obj(count)
        if arr is None:
            c.value = len(active)
            return INSUFFICIENT if active else OK
        for i, v in enumerate(active):
            arr[i].vgpuInstance = v
            arr[i].smUtil.uiVal, arr[i].memUtil.uiVal, arr[i].encUtil.uiVal, arr[i].decUtil.uiVal = 42, 17, 0, 0
        c.value = len(active)
        return OK

    def nvmlDeviceGetVgpuSchedulerState(self, h: Any, out: Any) -> int:
        st, o = self.sched[self._dev(h)], _obj(out)
        o.schedulerPolicy, o.arrMode = st["policy"], 0
        o.schedulerParams.vgpuSchedData.timeslice = st["timeslice"]
        return OK

    def nvmlDeviceGetVgpuSchedulerCapabilities(self, h: Any, out: Any) -> int:
        o = _obj(out)
        o.supportedSchedulers[0], o.supportedSchedulers[1], o.supportedSchedulers[2] = 1, 2, 3
        o.minTimeslice, o.maxTimeslice = 1000, 30000  # microseconds: 1..30 ms
        return OK

    def nvmlDeviceSetVgpuSchedulerState(self, h: Any, state: Any) -> int:
        idx = self._dev(h)
        if self._active(idx):
            return IN_USE
        s = _obj(state)
        self.sched[idx] = {"policy": s.schedulerPolicy, "timeslice": s.schedulerParams.vgpuSchedData.timeslice}
        return OK

    def nvmlDeviceGetVgpuHeterogeneousMode(self, h: Any, out: Any) -> int:
        o = _obj(out)
        if o.version != self.hetero_version:
            return VERSION
        pf = self.devices[self._dev(h)].name
        lines = (self.sim.control_dir / "heterogeneous").read_text().split("\n")
        o.mode = next(int(ln.split()[1]) for ln in lines if ln.startswith(pf))
        return OK

    def nvmlDeviceSetVgpuHeterogeneousMode(self, h: Any, mode: Any) -> int:
        o = _obj(mode)
        if o.version != self.hetero_version:
            return VERSION
        try:
            self.sim.set_heterogeneous(self.devices[self._dev(h)].name, bool(o.mode))
        except OSError:
            return IN_USE
        return OK
