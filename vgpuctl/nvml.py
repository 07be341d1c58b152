"""NVML access (``nvidia-ml-py``, ``import pynvml``): vGPU details sysfs does not have, and the GPU-wide controls
(time-slice scheduler, heterogeneous mode).

``pynvml`` is imported only when an ``Nvml`` is opened, and only callers that have an NVIDIA parent open one, so
commands on other hosts never load it.  Everything that fails is turned into ``NvmlUnavailable`` (for enrichment:
the caller prints its ``reason`` once and goes on with sysfs data) or a typed ``NvmlError`` (for commands that need
NVML).  ``enrich`` is a pure function from an inventory and what NVML said to an enriched inventory.

Known pitfalls handled here: ``nvmlVgpuInstanceGetFbUsage`` is declared with a 32-bit ``c_uint`` in the Python wrapper
while the C API writes an ``unsigned long long`` (we call the function pointer with a ``c_ulonglong``);
``nvmlVgpuInstanceGetVmID`` returns ``(bytes, int)`` (the wrapper's str conversion does not reach into the tuple).

About 770 lines: what NVML says (data), the one ``Nvml`` binding (MIG included), the settings (``converge_mig``)
and the pure enrichment.  The enrichment (``gather``/``enrich``) and ``place_instances`` are the parts to move out.
"""

from __future__ import annotations

import calendar
import ctypes
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import InvalidInput, NotVgpuHost, NvmlError
from .model import BackendKind, Instance, Inventory, SchedulerPolicy, Vendor, sorted_inventory

HOST_VGPU = 3  #: NVML_GPU_VIRTUALIZATION_MODE_HOST_VGPU
VIRT_MODES = {0: "none (bare metal)", 1: "pass-through", 2: "vGPU guest", 3: "vGPU host", 4: "vSGA host"}
#: NVML_VGPU_SCHEDULER_POLICY_* by ``model.SchedulerPolicy`` value
POLICIES = {
    SchedulerPolicy.BEST_EFFORT.value: 1,
    SchedulerPolicy.EQUAL_SHARE.value: 2,
    SchedulerPolicy.FIXED_SHARE.value: 3,
}
POLICY_NAMES = {v: k for k, v in POLICIES.items()}

#: Why NVML cannot help, by NVML error number (what an operator should read).
REASONS = {
    12: "libnvidia-ml.so.1 not found (no NVIDIA driver user space on this host)",
    9: "the NVIDIA kernel driver is not loaded",
    3: "not supported by this GPU or driver",
    13: "the driver's NVML lacks a function this needs (driver older than nvidia-ml-py)",
    25: "NVML struct version mismatch (nvidia-ml-py newer than the driver)",
    4: "no permission (run as root)",
    18: "the NVIDIA kernel module and libnvidia-ml are different releases (driver upgraded without reloading it)",
    19: "the GPU is in use (vGPUs or processes on it)",
    23: "not enough room on the GPU (the placement overlaps GPU instances, or no slices are left)",
    2: "invalid argument (a profile or placement the GPU does not have)",
}


class NvmlUnavailable(Exception):
    """NVML cannot be used (for this host or GPU); ``reason`` is one line for people, ``code`` the NVML error."""

    def __init__(self, reason: str, code: Optional[int] = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def reason_for(code: Optional[int], where: str = "") -> str:
    """One line for people: ``NVML error 9 in nvmlInit: the NVIDIA kernel driver is not loaded``; a code vgpuctl
    has no words for is said once (``NVML error 99 in x``), not twice."""
    at = f" in {where}" if where else ""
    head = f"NVML error {code}{at}" if code is not None else f"NVML error{at} (no error code)"
    text = REASONS.get(code) if code is not None else None
    return f"{head}: {text}" if text else head


# --- what NVML says ------------------------------------------------------------------------------------------------
#: ``nvmlVgpuLicenseInfo_t.currentState`` (NVML_GRID_LICENSE_STATE_*), as vgpuctl spells it.
LICENSE_STATES = {
    0: "unknown",
    1: "uninitialized",
    2: "unlicensed-unrestricted",
    3: "unlicensed-restricted",
    4: "unlicensed",
    5: "licensed",
}
#: ``nvmlVgpuLicenseExpiry_t.status`` (NVML_GRID_LICENSE_EXPIRY_*; pynvml spells these constants as 1-tuples).
EXPIRY_NOT_AVAILABLE, EXPIRY_INVALID, EXPIRY_VALID, EXPIRY_NOT_APPLICABLE, EXPIRY_PERMANENT = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class License:
    """A vGPU's license as NVML reports it (``nvmlVgpuInstanceGetLicenseInfo_v2``).  ``licensed`` is None and
    ``state`` "unknown" where NVML cannot tell (no VM runs the vGPU, the driver lacks the call, NVML is not usable);
    ``expiry`` is a Unix time (the driver's date read as UTC) only where NVML says the expiry is valid,
    ``permanent`` where it says the license does not expire."""

    licensed: Optional[bool] = None
    state: str = "unknown"
    expiry: Optional[int] = None
    permanent: bool = False

    @property
    def known(self) -> bool:
        return self.licensed is not None

    @property
    def expiry_text(self) -> Optional[str]:
        if self.permanent:
            return "permanent"
        if self.expiry is None:
            return None
        import time

        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expiry))


UNKNOWN_LICENSE = License()


def license_of(info: Any) -> License:
    """A ``License`` from pynvml's ``c_nvmlVgpuLicenseInfo_t``."""
    state = LICENSE_STATES.get(int(info.currentState), "unknown")
    licensed = bool(info.isLicensed)
    if state == "unknown" and not licensed:
        return UNKNOWN_LICENSE
    ex = info.licenseExpiry
    expiry = None
    if int(ex.status) == EXPIRY_VALID:
        try:
            expiry = calendar.timegm(
                (int(ex.year), int(ex.month), int(ex.day), int(ex.hour), int(ex.min), int(ex.sec), 0, 0, 0)
            )
        except (OverflowError, ValueError):
            expiry = None
    return License(
        licensed=licensed,
        state=state if state != "unknown" else ("licensed" if licensed else "unlicensed"),
        expiry=expiry,
        permanent=int(ex.status) == EXPIRY_PERMANENT,
    )


@dataclass(frozen=True)
class TypeInfo:
    number: int
    name: Optional[str] = None
    framebuffer_mib: Optional[int] = None
    max_instances: Optional[int] = None
    type_class: Optional[str] = None


@dataclass(frozen=True)
class VgpuInfo:
    nvml_id: int
    number: int  #: vGPU type id
    vm_id: Optional[str] = None
    fb_used_mib: Optional[int] = None
    placement_id: Optional[int] = None
    gpu_instance_id: Optional[int] = None
    mdev_uuid: Optional[str] = None
    sm_util: Optional[int] = None
    mem_util: Optional[int] = None
    enc_util: Optional[int] = None
    dec_util: Optional[int] = None
    license: License = field(default_factory=lambda: UNKNOWN_LICENSE)


@dataclass(frozen=True)
class GpuInfo:
    pci: str  #: canonical PF address, as vgpuctl spells it
    name: Optional[str] = None
    uuid: Optional[str] = None
    virt_mode: Optional[int] = None
    types: Tuple[TypeInfo, ...] = ()
    vgpus: Tuple[VgpuInfo, ...] = ()

    @property
    def vgpu_host(self) -> bool:
        return self.virt_mode == HOST_VGPU

    def type(self, number: int) -> Optional[TypeInfo]:
        return next((t for t in self.types if t.number == number), None)


@dataclass(frozen=True)
class MigProfile:
    """A GPU instance profile as NVML reports it (``nvmlDeviceGetGpuInstanceProfileInfo`` and its possible
    placements): ``name`` without NVML's ``MIG `` prefix (``1g.18gb``)."""

    name: str
    id: int
    slices: int
    memory_mib: int
    count: int  #: instances of it the GPU can hold
    size: int = 0  #: memory slices one instance spans
    placements: Tuple[int, ...] = ()  #: where one may start


@dataclass(frozen=True)
class GpuInstance:
    id: int
    profile: str  #: the profile's name
    start: int
    size: int


@dataclass(frozen=True)
class MigState:
    """A GPU's MIG mode, profiles (known only in MIG mode) and GPU instances; ``processes`` run on the GPU."""

    gpu: str
    supported: bool
    current: bool = False
    pending: bool = False
    profiles: Tuple[MigProfile, ...] = ()
    instances: Tuple[GpuInstance, ...] = ()
    processes: Tuple[str, ...] = ()

    def profile(self, name: str) -> Optional[MigProfile]:
        return next((p for p in self.profiles if p.name == name), None)


def place_instances(
    profiles: Sequence[MigProfile], wanted: Sequence[str], taken: Sequence[Tuple[int, int]] = ()
) -> Optional[List[Tuple[str, int]]]:
    """Placements ``(profile, start)`` for ``wanted`` (profile names) that overlap neither each other nor ``taken``
    (``(start, size)`` of instances that stay), with at most the GPU's compute slices; None if there are none.
    Larger instances are placed first, each at its lowest free start, backtracking when a later one does not fit
    (``[3g.71gb, 4g.71gb]`` on Hopper: the 4g only fits at 0, so the 3g goes to 4).  Pure."""
    by_name = {p.name: p for p in profiles}
    order = sorted(wanted, key=lambda n: (-by_name[n].size, n))
    used = {s for start, size in taken for s in range(start, start + size)}
    out: List[Tuple[str, int]] = []

    def go(k: int, used: set) -> bool:
        if k == len(order):
            return True
        p = by_name[order[k]]
        for start in p.placements:
            span = set(range(start, start + p.size))
            if not span & used:
                out.append((p.name, start))
                if go(k + 1, used | span):
                    return True
                out.pop()
        return False

    return list(out) if go(0, used) else None


@dataclass(frozen=True)
class Scheduler:
    gpu: str
    policy: str  #: best-effort, equal-share, fixed-share or unknown
    arr_mode: int
    timeslice_us: Optional[int]
    supported: Tuple[str, ...]
    min_timeslice_us: Optional[int]
    max_timeslice_us: Optional[int]
    heterogeneous: Optional[bool] = None


def _s(v: Any) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v).rstrip("\0").strip() or None


def canonical_bus_id(bus: str) -> str:
    """NVML's ``00000000:4A:00.0`` as vgpuctl spells it: ``0000:4a:00.0``."""
    domain, rest = bus.split(":", 1) if bus.count(":") == 2 else ("0", bus)
    return f"{int(domain, 16):04x}:{rest.lower()}"


class Nvml:
    """An open NVML session: ``with Nvml() as nv: nv.gpu("0000:4a:00.0")``."""

    def __init__(self) -> None:
        self.nv: Any = None

    def __enter__(self) -> "Nvml":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        try:
            import pynvml  # nvidia-ml-py; optional extra 'nvidia'
        except ImportError:
            raise NvmlUnavailable(
                "the Python package nvidia-ml-py is not installed (pip install 'vgpuctl[nvidia]')"
            ) from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(reason_for(e.value, "nvmlInit"), e.value) from None
        self.nv = pynvml

    def close(self) -> None:
        if self.nv is not None:
            try:
                self.nv.nvmlShutdown()
            except self.nv.NVMLError:
                pass
            self.nv = None

    def driver_version(self) -> Optional[str]:
        """The driver release NVML's library reports (``nvmlSystemGetDriverVersion``), e.g. ``550.90.05``."""
        return _s(self._call("nvmlSystemGetDriverVersion"))

    # --- devices ---------------------------------------------------------------------------------------------------
    def _call(self, fn: str, *args: Any, where: str = "") -> Any:
        try:
            return getattr(self.nv, fn)(*args)
        except self.nv.NVMLError as e:
            raise NvmlUnavailable(reason_for(e.value, where or fn), e.value) from None

    def _opt(self, fn: str, *args: Any) -> Any:
        """An optional detail: None where NVML cannot give it (not supported, no data, missing in the driver)."""
        try:
            return getattr(self.nv, fn)(*args)
        except self.nv.NVMLError:
            return None

    def all_gpus(self) -> List[str]:
        """Every GPU NVML sees, as canonical PCI addresses."""
        out = []
        for i in range(self._call("nvmlDeviceGetCount")):
            bus = _s(self._call("nvmlDeviceGetPciInfo", self._call("nvmlDeviceGetHandleByIndex", i)).busId) or ""
            out.append(canonical_bus_id(bus))
        return sorted(out)

    def handle(self, pci: str) -> Any:
        return self._call("nvmlDeviceGetHandleByPciBusId", pci, where=f"looking up GPU {pci}")

    def gpu(self, pci: str, *, types: bool = True, vgpus: bool = True) -> GpuInfo:
        h = self.handle(pci)
        mode = self._call("nvmlDeviceGetVirtualizationMode", h)
        info = GpuInfo(
            pci=pci,
            name=_s(self._opt("nvmlDeviceGetName", h)),
            uuid=_s(self._opt("nvmlDeviceGetUUID", h)),
            virt_mode=mode,
        )
        if mode != HOST_VGPU:
            return info
        out_types: List[TypeInfo] = []
        if types:
            for n in self._call("nvmlDeviceGetSupportedVgpus", h):
                n = int(n)
                fb = self._opt("nvmlVgpuTypeGetFramebufferSize", n)
                out_types.append(
                    TypeInfo(
                        number=n,
                        name=_s(self._opt("nvmlVgpuTypeGetName", n)),
                        framebuffer_mib=int(fb) // (1024 * 1024) if fb is not None else None,
                        max_instances=self._opt("nvmlVgpuTypeGetMaxInstances", h, n),
                        type_class=_s(self._opt("nvmlVgpuTypeGetClass", n)),
                    )
                )
        out_vgpus: List[VgpuInfo] = []
        if vgpus:
            util = self._utilization(h)
            for v in self._call("nvmlDeviceGetActiveVgpus", h):
                v = int(v)
                vm = self._opt("nvmlVgpuInstanceGetVmID", v)
                out_vgpus.append(
                    VgpuInfo(
                        nvml_id=v,
                        number=int(self._call("nvmlVgpuInstanceGetType", v)),
                        vm_id=_s(vm[0]) if vm else None,
                        fb_used_mib=self._fb_usage(v),
                        placement_id=self._opt("nvmlVgpuInstanceGetPlacementId", v),
                        gpu_instance_id=self._opt("nvmlVgpuInstanceGetGpuInstanceId", v),
                        mdev_uuid=_s(self._opt("nvmlVgpuInstanceGetMdevUUID", v)),
                        license=self._license(v),
                        **util.get(v, {}),
                    )
                )
        return replace(info, types=tuple(out_types), vgpus=tuple(out_vgpus))

    def type_names(self, pci: str) -> Tuple[Tuple[int, str], ...]:
        """(type id, name) of the vGPU types the GPU supports now (empty where NVML cannot say)."""
        ids = self._opt("nvmlDeviceGetSupportedVgpus", self.handle(pci)) or []
        out = []
        for n in ids:
            name = _s(self._opt("nvmlVgpuTypeGetName", int(n)))
            if name:
                out.append((int(n), name))
        return tuple(out)

    def _fb_usage(self, vgpu: int) -> Optional[int]:
        """Framebuffer in use, MiB.  The wrapper passes a c_uint for the C API's unsigned long long: call the
        function pointer ourselves with the right type."""
        try:
            fn = self.nv._nvmlGetFunctionPointer("nvmlVgpuInstanceGetFbUsage")
            used = ctypes.c_ulonglong(0)
            ret = fn(self.nv._nvmlVgpuInstance_t(vgpu), ctypes.byref(used))
            self.nv._nvmlCheckReturn(ret)
        except self.nv.NVMLError:
            return None
        return used.value // (1024 * 1024)

    def _license(self, vgpu: int) -> License:
        """The vGPU's license; unknown where NVML cannot tell (old driver: error 13; not supported: error 3)."""
        info = self._opt("nvmlVgpuInstanceGetLicenseInfo_v2", vgpu)
        return UNKNOWN_LICENSE if info is None else license_of(info)

    def _utilization(self, h: Any) -> Dict[int, Dict[str, int]]:
        samples = self._opt("nvmlDeviceGetVgpuUtilization", h, 0) or []
        out: Dict[int, Dict[str, int]] = {}
        for s in samples:  # the latest sample per instance; values are percentages (unsigned ints)
            out[int(s.vgpuInstance)] = {
                "sm_util": int(s.smUtil.uiVal),
                "mem_util": int(s.memUtil.uiVal),
                "enc_util": int(s.encUtil.uiVal),
                "dec_util": int(s.decUtil.uiVal),
            }
        return out

    # --- MIG ---------------------------------------------------------------------------------------------------------
    def mig(self, pci: str) -> MigState:
        """MIG mode, the GPU instance profiles and instances (read only).  ``supported`` is False where NVML says
        the GPU has no MIG (NOT_SUPPORTED); other failures raise ``NvmlUnavailable``."""
        h = self.handle(pci)
        try:
            current, pending = self.nv.nvmlDeviceGetMigMode(h)
        except self.nv.NVMLError as e:
            if e.value == self.nv.NVML_ERROR_NOT_SUPPORTED:
                return MigState(pci, supported=False)
            raise NvmlUnavailable(reason_for(e.value, "nvmlDeviceGetMigMode"), e.value) from None
        state = MigState(
            pci, supported=True, current=bool(current), pending=bool(pending), processes=tuple(self.processes(pci))
        )
        if not current:
            return state
        profiles: List[MigProfile] = []
        instances: List[GpuInstance] = []
        for index in range(int(getattr(self.nv, "NVML_GPU_INSTANCE_PROFILE_COUNT", 0))):
            info = self._opt("nvmlDeviceGetGpuInstanceProfileInfo", h, index)
            if info is None:  # the v2 struct may be newer than the driver: ask with v1 (no name there)
                info = self._opt("nvmlDeviceGetGpuInstanceProfileInfo", h, index, 1)
            if info is None:
                continue
            name = (_s(getattr(info, "name", b"")) or "").replace("MIG ", "", 1)
            placements = self._placements(h, int(info.id))
            prof = MigProfile(
                name=name or f"profile-{int(info.id)}",
                id=int(info.id),
                slices=int(info.sliceCount),
                memory_mib=int(info.memorySizeMB),
                count=int(info.instanceCount),
                size=placements[0][1] if placements else 0,
                placements=tuple(st for st, _ in placements),
            )
            profiles.append(prof)
            count = max(1, prof.count)
            arr = (self.nv.c_nvmlGpuInstance_t * count)()
            n = ctypes.c_uint(0)
            self._call("nvmlDeviceGetGpuInstances", h, prof.id, arr, ctypes.byref(n))
            for k in range(n.value):
                gi = self._call("nvmlGpuInstanceGetInfo", arr[k])
                instances.append(GpuInstance(int(gi.id), prof.name, int(gi.placement.start), int(gi.placement.size)))
        return replace(state, profiles=tuple(profiles), instances=tuple(sorted(instances, key=lambda g: g.id)))

    def _placements(self, h: Any, profile_id: int) -> List[Tuple[int, int]]:
        try:
            n = ctypes.c_uint(0)
            self.nv.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, None, ctypes.byref(n))
            arr = (self.nv.c_nvmlGpuInstancePlacement_t * max(1, n.value))()
            self.nv.nvmlDeviceGetGpuInstancePossiblePlacements(h, profile_id, arr, ctypes.byref(n))
        except self.nv.NVMLError:
            return []
        return [(int(arr[k].start), int(arr[k].size)) for k in range(n.value)]

    def processes(self, pci: str) -> List[str]:
        """The compute processes NVML lists on the GPU, as ``process PID (name)``."""
        procs = self._opt("nvmlDeviceGetComputeRunningProcesses", self.handle(pci)) or []
        out = []
        for p in procs:
            name = _s(self._opt("nvmlSystemGetProcessName", p.pid))
            out.append(f"process {p.pid}" + (f" ({name})" if name else ""))
        return out

    def set_mig_mode(self, pci: str, on: bool) -> None:
        """Turn MIG mode on or off (the driver resets the GPU: refused while it has vGPUs or processes)."""
        from .errors import GpuBusy

        h = self.handle(pci)
        try:
            status = self.nv.nvmlDeviceSetMigMode(h, 1 if on else 0)
        except self.nv.NVMLError as e:
            if e.value == self.nv.NVML_ERROR_IN_USE:
                raise GpuBusy(pci, "MIG mode", ["the GPU is in use (NVML: IN_USE)"]) from None
            raise NvmlError(
                f"NVML refused MIG mode {'on' if on else 'off'} on GPU {pci}: {reason_for(e.value)}", e.value
            ) from None
        current, _pending = self._call("nvmlDeviceGetMigMode", h)
        if status or bool(current) != on:
            raise NvmlError(
                f"MIG mode {'on' if on else 'off'} on GPU {pci} is pending, not active "
                f"(activation status {status}): the GPU needs a reset",
                status or None,
            )

    def create_gpu_instance(self, pci: str, profile: MigProfile, start: int) -> None:
        h = self.handle(pci)
        pl = self.nv.c_nvmlGpuInstancePlacement_t()
        pl.start, pl.size = start, profile.size
        try:
            self.nv.nvmlDeviceCreateGpuInstanceWithPlacement(h, profile.id, ctypes.byref(pl))
        except self.nv.NVMLError as e:
            raise NvmlError(
                f"NVML refused GPU instance {profile.name} at {start} on GPU {pci}: {reason_for(e.value)}", e.value
            ) from None

    def destroy_gpu_instance(self, pci: str, gi: int) -> None:
        from .errors import GpuBusy

        h = self.handle(pci)
        try:
            self.nv.nvmlGpuInstanceDestroy(self.nv.nvmlDeviceGetGpuInstanceById(h, gi))
        except self.nv.NVMLError as e:
            if e.value == self.nv.NVML_ERROR_IN_USE:
                raise GpuBusy(pci, f"GPU instance {gi}", ["a vGPU uses it"]) from None
            raise NvmlError(
                f"NVML refused to destroy GPU instance {gi} on GPU {pci}: {reason_for(e.value)}", e.value
            ) from None

    # --- GPU-wide controls -----------------------------------------------------------------------------------------
    def host_handle(self, pci: str) -> Any:
        """The handle of a GPU in vGPU host mode, or ``NotVgpuHost``."""
        h = self.handle(pci)
        mode = self._call("nvmlDeviceGetVirtualizationMode", h)
        if mode != HOST_VGPU:
            raise NotVgpuHost(pci, mode, VIRT_MODES.get(mode, "unknown"))
        return h

    def scheduler(self, pci: str) -> Scheduler:
        h = self.host_handle(pci)
        st = self._call("nvmlDeviceGetVgpuSchedulerState", h)
        caps = self._opt("nvmlDeviceGetVgpuSchedulerCapabilities", h)
        hetero = self._opt("nvmlDeviceGetVgpuHeterogeneousMode", h)
        params = st.schedulerParams
        ts = params.vgpuSchedDataWithARR.timeslice if st.arrMode else params.vgpuSchedData.timeslice
        return Scheduler(
            gpu=pci,
            policy=POLICY_NAMES.get(int(st.schedulerPolicy), "unknown"),
            arr_mode=int(st.arrMode),
            timeslice_us=int(ts) or None,
            supported=tuple(POLICY_NAMES[p] for p in (caps.supportedSchedulers if caps else ()) if p in POLICY_NAMES),
            min_timeslice_us=int(caps.minTimeslice) if caps else None,
            max_timeslice_us=int(caps.maxTimeslice) if caps else None,
            heterogeneous=None if hetero is None else bool(hetero),
        )

    def active_vgpus(self, pci: str) -> List[int]:
        return [int(v) for v in self._call("nvmlDeviceGetActiveVgpus", self.host_handle(pci))]

    def set_scheduler(self, pci: str, policy: str, timeslice_ms: Optional[float]) -> None:
        """Set the policy (and the time slice, in ms) after checking both against the GPU's capabilities."""
        h = self.host_handle(pci)
        caps = self._call("nvmlDeviceGetVgpuSchedulerCapabilities", h)
        supported = [POLICY_NAMES[p] for p in caps.supportedSchedulers if p in POLICY_NAMES]
        if policy not in supported:
            raise InvalidInput(f"GPU {pci} does not support the {policy} scheduler; it supports {', '.join(supported)}")
        us = None
        if timeslice_ms is not None:
            if policy == "best-effort":
                raise InvalidInput("best-effort has no time slice; drop --timeslice")
            us = int(round(timeslice_ms * 1000))
            lo, hi = int(caps.minTimeslice), int(caps.maxTimeslice)
            if not lo <= us <= hi:
                raise InvalidInput(
                    f"time slice {timeslice_ms:g} ms is outside GPU {pci}'s range {lo / 1000:g}..{hi / 1000:g} ms"
                )
        state = self.nv.c_nvmlVgpuSchedulerSetState_t()
        state.schedulerPolicy = POLICIES[policy]
        state.enableARRMode = 0
        state.schedulerParams.vgpuSchedData.timeslice = us or 0
        try:
            self.nv.nvmlDeviceSetVgpuSchedulerState(h, state)
        except self.nv.NVMLError as e:
            raise NvmlError(f"NVML refused the scheduler change on GPU {pci}: {reason_for(e.value)}", e.value) from None

    def heterogeneous(self, pci: str) -> bool:
        return bool(self._call("nvmlDeviceGetVgpuHeterogeneousMode", self.host_handle(pci)))

    def set_heterogeneous(self, pci: str, on: bool) -> None:
        h = self.host_handle(pci)
        try:
            self.nv.nvmlDeviceSetVgpuHeterogeneousMode(h, 1 if on else 0)
        except self.nv.NVMLError as e:
            raise NvmlError(f"NVML refused heterogeneous mode on GPU {pci}: {reason_for(e.value)}", e.value) from None


class NvmlSettings:
    """GPU-wide settings for the reconciler (``apply.GpuSettings``): observe them for the planner, set them for
    ``apply`` with the checks ``vgpuctl sched set``/``hetero set`` make.  pynvml is loaded only when called."""

    def observe(self, gpus: Sequence[str]) -> Dict[str, Any]:
        """``plan.GpuObservation`` per GPU; where NVML cannot tell, one with ``unavailable`` set (never raises)."""
        from .plan import GpuObservation

        out: Dict[str, Any] = {}
        try:
            with Nvml() as nv:
                for pci in gpus:
                    try:
                        sc = nv.scheduler(pci)
                        running = tuple(f"NVML vGPU {v}" for v in nv.active_vgpus(pci))
                    except NvmlUnavailable as e:
                        out[pci] = GpuObservation(pci, unavailable=f"GPU {pci}: {e.reason}")
                        continue
                    except NvmlError as e:  # not in vGPU host mode
                        out[pci] = GpuObservation(pci, unavailable=str(e))
                        continue
                    try:
                        mig: Optional[MigState] = nv.mig(pci)
                    except NvmlUnavailable:
                        mig = None
                    out[pci] = GpuObservation(
                        pci,
                        policy=sc.policy,
                        timeslice_us=sc.timeslice_us,
                        supported=sc.supported,
                        min_timeslice_us=sc.min_timeslice_us,
                        max_timeslice_us=sc.max_timeslice_us,
                        heterogeneous=sc.heterogeneous,
                        running=running,
                        mig=mig,
                        type_names=nv.type_names(pci),
                    )
        except NvmlUnavailable as e:
            return {pci: GpuObservation(pci, unavailable=f"NVML not usable: {e.reason}") for pci in gpus}
        return out

    def set_scheduler(self, gpu: str, policy: str, timeslice_ms: Optional[float]) -> None:
        required(_set_checked, gpu, "vGPU scheduler", lambda nv: nv.set_scheduler(gpu, policy, timeslice_ms))

    def set_heterogeneous(self, gpu: str, on: bool) -> None:
        required(_set_checked, gpu, "heterogeneous mode", lambda nv: nv.set_heterogeneous(gpu, on))

    def set_mig(self, gpu: str, want: Any) -> None:
        """Converge ``gpu``'s MIG mode and GPU instances to ``want`` (``gpuwide.DesiredMig``)."""
        required(converge_mig, gpu, want)


def converge_mig(nv: Nvml, gpu: str, want: Any) -> None:
    """MIG mode, then GPU instances by profile and placement, with the checks first: refused (``GpuBusy``) while the
    GPU has vGPUs or processes (NVML's or a process's); a profile the GPU lacks, or instances that overlap, are
    ``InvalidInput`` before any instance is touched (MIG mode turned on for the check is turned off again).  A
    failure half-way destroys the instances this call made and re-creates those it destroyed."""
    from .errors import GpuBusy
    from .gpuwide import check_profiles, mig_change

    st = nv.mig(gpu)
    busy = [f"NVML vGPU {v}" for v in nv.active_vgpus(gpu)] + list(st.processes)
    if busy:
        raise GpuBusy(gpu, "MIG configuration", busy)
    if not st.supported:
        raise InvalidInput(f"GPU {gpu} has no MIG mode")
    switched = False
    if want.mode and not st.current:
        nv.set_mig_mode(gpu, True)
        switched = True
        st = nv.mig(gpu)
        problem = check_profiles(want, st)
        if problem is not None:
            nv.set_mig_mode(gpu, False)
            raise InvalidInput(problem + " (MIG mode was turned off again)")
    change = mig_change(want, st)
    if change.problem is not None:
        raise InvalidInput(change.problem)
    gone = [g for g in st.instances if g.id in change.destroy]
    made: List[Tuple[str, int]] = []
    try:
        for g in gone:
            nv.destroy_gpu_instance(gpu, g.id)
        for name, start in change.create:
            prof = st.profile(name)
            assert prof is not None
            nv.create_gpu_instance(gpu, prof, start)
            made.append((name, start))
        if change.mode is False:
            nv.set_mig_mode(gpu, False)
    except (NvmlError, NvmlUnavailable):
        _undo_mig(nv, gpu, st, made, gone, switched)
        raise


def _undo_mig(
    nv: Nvml, gpu: str, before: MigState, made: Sequence[Tuple[str, int]], gone: Sequence[GpuInstance], switched: bool
) -> None:
    import logging

    log = logging.getLogger("vgpuctl.nvml")
    try:
        now = nv.mig(gpu)
        for g in now.instances:
            if (g.profile, g.start) in made:
                nv.destroy_gpu_instance(gpu, g.id)
        for g in gone:
            prof = before.profile(g.profile)
            if prof is not None:
                nv.create_gpu_instance(gpu, prof, g.start)
        if switched:
            nv.set_mig_mode(gpu, False)
    except (NvmlError, NvmlUnavailable) as e:
        log.warning("rolling back the MIG change on GPU %s failed: %s", gpu, e)


def _set_checked(nv: Nvml, gpu: str, setting: str, change: Any) -> None:
    """Refuse (``GpuBusy``) while NVML lists an active vGPU on ``gpu``, before trying; then change."""
    from .errors import GpuBusy

    running = [f"NVML vGPU {v}" for v in nv.active_vgpus(gpu)]
    if running:
        raise GpuBusy(gpu, setting, running)
    change(nv)


def required(fn: Any, *args: Any) -> Any:
    """Run ``fn(nvml, *args)`` in an NVML session for a command that cannot do without NVML (typed error)."""
    try:
        with Nvml() as nv:
            return fn(nv, *args)
    except NvmlUnavailable as e:
        raise NvmlError(f"NVML is needed here and not usable: {e.reason}", e.code) from None


# --- enrichment (pure) ---------------------------------------------------------------------------------------------
def nvidia_gpus(inventory: Inventory) -> List[str]:
    """The physical NVIDIA GPUs of the inventory's parents (what NVML is asked about)."""
    return sorted({p.gpu for p in inventory.parents if p.vendor is Vendor.NVIDIA and p.pci})


def gather(inventory: Inventory, *, vgpus: bool = True) -> Tuple[Dict[str, GpuInfo], List[str]]:
    """NVML's view of each NVIDIA GPU of ``inventory`` and the reasons where it has none (one short text each).
    Raises ``NvmlUnavailable`` when NVML cannot be used at all."""
    infos: Dict[str, GpuInfo] = {}
    notes: List[str] = []
    with Nvml() as nv:
        for pci in nvidia_gpus(inventory):
            try:
                info = nv.gpu(pci, vgpus=vgpus)
            except NvmlUnavailable as e:
                notes.append(f"GPU {pci}: {e.reason}")
                continue
            infos[pci] = info
            if not info.vgpu_host:
                notes.append(f"GPU {pci} is not in vGPU host mode ({VIRT_MODES.get(info.virt_mode or 0, '?')})")
    return infos, notes


def placements_of(paths: Any, inventory: Inventory) -> Dict[str, int]:
    """The vendor-VFIO instances' ``placement_id`` from sysfs (what ``enrich`` matches NVML's vGPUs by)."""
    from .host.nvidia_vf import NvidiaVfBackend

    backend = NvidiaVfBackend(paths)
    out: Dict[str, int] = {}
    for i in inventory.instances:
        if i.backend is BackendKind.NVIDIA_VF:
            pid = backend.details(i.uuid).get("placement_id")
            if pid is not None and pid.isdigit():
                out[i.uuid] = int(pid)
    return out


def enrich(
    inventory: Inventory, gpus: Mapping[str, GpuInfo], placements: Optional[Mapping[str, int]] = None
) -> Tuple[Inventory, Dict[str, VgpuInfo]]:
    """Types get NVML's name, exact framebuffer, max instances and class; instances are matched to NVML's active
    vGPUs (mdev: by mdev UUID; vendor VFIO: by type and the VF's ``placement_id`` from sysfs (``placements``), or
    the only candidate of that type on the GPU).  An instance NVML does not list (no VM runs it) gets no details."""
    from .host.nvidia_vf import type_number

    types = []
    for t in inventory.types:
        p = inventory.parent(t.parent)
        g = gpus.get(p.gpu) if p else None
        n = type_number(t.type_id)
        ti = g.type(n) if g and n is not None else None
        if ti is None:
            types.append(t)
            continue
        fields = tuple(kv for kv in t.fields if kv[0] != "class") + (
            (("class", ti.type_class),) if ti.type_class else ()
        )
        types.append(
            replace(
                t,
                name=ti.name or t.name,
                framebuffer_mib=ti.framebuffer_mib or t.framebuffer_mib,
                max_instance=ti.max_instances or t.max_instance,
                fields=fields,
            )
        )
    details: Dict[str, VgpuInfo] = {}
    for gpu, g in gpus.items():
        mine = list(inventory.instances_on_gpu(gpu))
        for v in g.vgpus:
            inst = _match(v, mine, details, placements or {})
            if inst is not None:
                details[inst.uuid] = v
    return sorted_inventory(inventory.parents, types, inventory.instances), details


def _match(
    v: VgpuInfo, candidates: Sequence[Instance], taken: Mapping[str, VgpuInfo], placements: Mapping[str, int]
) -> Optional[Instance]:
    from .host.nvidia_vf import type_id_of

    if v.mdev_uuid:
        hit = [i for i in candidates if i.uuid == v.mdev_uuid.lower()]
        if hit:
            return hit[0]
    same = [
        i
        for i in candidates
        if i.type_id == type_id_of(v.number) and i.uuid not in taken and i.backend is BackendKind.NVIDIA_VF
    ]
    if v.placement_id is not None:
        placed = [i for i in same if placements.get(i.uuid) == v.placement_id]
        if len(placed) == 1:
            return placed[0]
    return same[0] if len(same) == 1 else None
