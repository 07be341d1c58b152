"""NVIDIA's vendor-VFIO backend (vGPU 17+ on kernel 6.8+, Ada/Hopper/Blackwell): one vGPU per SR-IOV VF, no mdev.

Layout (NVIDIA vGPU user guide for KVM, "vendor-specific VFIO framework"; the NVIDIA RFC patches)::

    sys/bus/pci/devices/<PF>/{virtfnN ->, sriov_totalvfs, sriov_numvfs, driver -> nvidia}
    sys/bus/pci/devices/<VF>/{physfn ->, iommu_group ->, driver ->}
    sys/bus/pci/devices/<VF>/nvidia/
        creatable_vgpu_types   "ID    : vGPU Name" header, then "%-5d : %s" lines; empty once the VF has a type
        current_vgpu_type      0 (none) or the type id; write an id to create the vGPU, 0 to destroy it
        vgpu_params, placement_id, gpu_instance_id

Model: every VF with a ``nvidia/`` directory is a ``Parent`` (``is_vf``, ``physical_gpu`` = its PF, so placement
groups VFs per GPU as for the A16's mdev-on-VF layout); a VF whose ``current_vgpu_type`` is not 0 is an ``Instance``
whose identity (``uuid``) is the VF's own PCI address.  Type ids are spelled ``nvidia-<id>`` as in the mdev world
(the number is the same vGPU type id), so specs and names carry over between the two paths.

Framebuffer from the name: NVIDIA profile names end in ``-<GB><series>`` (``L40S-4Q``: 4 GB; MIG-backed
``H200X-1-18C``: 1 compute slice, 18 GB).  For time-sliced types that number is the framebuffer in GiB exactly (the
mdev descriptions say ``framebuffer=4096M`` for ``-4Q``); for MIG-backed types it is the MIG profile's rounded
memory size (``1g.18gb``), a few percent above what the guest gets.  NVML's exact size replaces it when available.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Collection, Dict, List, Mapping, Optional, Set, Tuple

from ..describe import series_of
from ..errors import (
    AlreadyExists,
    DeviceInUse,
    HostIOError,
    NoCapacity,
    ParentGone,
    TypeConflict,
    UnknownInstance,
    UnknownType,
)
from ..model import BackendKind, Instance, Parent, VgpuType
from ..paths import HostPaths
from .base import Backend, TypeScope, WatchSpec
from .holders import find_holders
from .rules import NVIDIA_VF_RULES
from .sysfs import link_name, listdir, read_attr, read_int, write_attr

TYPE_PREFIX = "nvidia-"
SRIOV_MANAGE = "/usr/lib/nvidia/sriov-manage"
_LINE_RE = re.compile(r"^\s*(\d+)\s*:\s*(\S.*?)\s*$")
_PROFILE_RE = re.compile(r"-(?:(?P<slices>\d+)-)?(?P<gb>\d+)(?P<series>[QBAC])$")


def parse_creatable(text: str) -> List[Tuple[int, str]]:
    """``(id, name)`` pairs from ``creatable_vgpu_types``; the header and anything unrecognised is skipped."""
    out = []
    for line in text.splitlines():
        m = _LINE_RE.match(line)
        if m:
            out.append((int(m.group(1)), m.group(2)))
    return out


def type_id_of(number: int) -> str:
    return f"{TYPE_PREFIX}{number}"


def type_number(type_id: str) -> Optional[int]:
    """``nvidia-1414`` (or ``1414``) -> 1414; None for anything else."""
    text = type_id[len(TYPE_PREFIX) :] if type_id.startswith(TYPE_PREFIX) else type_id
    return int(text) if text.isdigit() else None


def name_fields(name: Optional[str]) -> Dict[str, object]:
    """Typed fields an NVIDIA type name encodes: series, nominal framebuffer, MIG compute slices (see module doc)."""
    out: Dict[str, object] = {"series": series_of(name)}
    if not name:
        return out
    m = _PROFILE_RE.search(name.strip().split()[-1])
    if not m:
        return out
    out["framebuffer_mib"] = int(m.group("gb")) * 1024
    fields = [("framebuffer", f"{m.group('gb')}G (from the name)")]
    if m.group("slices"):
        fields.append(("mig_slices", m.group("slices")))
    out["fields"] = tuple(fields)
    return out


class NvidiaVfBackend(Backend):
    kind = BackendKind.NVIDIA_VF
    rules = NVIDIA_VF_RULES

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    # --- inventory -------------------------------------------------------------------------------------------------
    def vfs(self) -> List[str]:
        """Every PCI function with a ``nvidia/`` vGPU directory (one stat per PCI function)."""
        base = self.paths.pci_devices
        return [d for d in listdir(base) if os.path.isfile(base / d / "nvidia" / "current_vgpu_type")]

    def read(self, *, types: TypeScope = TypeScope.ALL) -> Tuple[List[Parent], List[VgpuType], List[Instance]]:
        parents: List[Parent] = []
        instances: List[Instance] = []
        current: Dict[str, int] = {}
        for vf in self.vfs():
            p = self._read_parent(vf)
            if p is None:
                continue
            parents.append(p)
            n = read_int(self.paths.pci_devices / vf / "nvidia" / "current_vgpu_type")
            if n:
                current[vf] = n
                instances.append(self._instance(p, n))
        vtypes: List[VgpuType] = []
        if types is TypeScope.NONE:
            return parents, vtypes, instances
        names = _NameCache(self, parents)
        for p in parents:
            if types is TypeScope.ALL and p.name not in current:
                offered = parse_creatable(
                    read_attr(self.paths.pci_devices / p.name / "nvidia" / "creatable_vgpu_types") or ""
                )
                names.learn(p.gpu, offered)
                vtypes += [self._type(p.name, n, name, 1) for n, name in offered]
        for p in parents:
            if p.name in current:
                n = current[p.name]
                vtypes.append(self._type(p.name, n, names.name(p.gpu, n), 0))
        return parents, vtypes, instances

    def _read_parent(self, vf: str) -> Optional[Parent]:
        d = self.paths.pci_devices / vf
        physfn = link_name(d / "physfn")
        numa = read_int(d / "numa_node")
        vendor = read_attr(d / "vendor")
        if vendor is None:  # went away
            return None
        return Parent(
            name=vf,
            backend=self.kind,
            pci=True,
            vendor_id=vendor,
            device_id=read_attr(d / "device"),
            numa_node=None if numa is None or numa < 0 else numa,
            driver=link_name(d / "driver"),
            physical_gpu=physfn,
            is_vf=physfn is not None,
        )

    def _instance(self, p: Parent, number: int) -> Instance:
        group = link_name(self.paths.pci_devices / p.name / "iommu_group")
        return Instance(
            uuid=p.name,
            parent=p.name,
            type_id=type_id_of(number),
            backend=self.kind,
            iommu_group=int(group) if group and group.isdigit() else None,
            driver=p.driver,
        )

    def _type(self, vf: str, number: int, name: Optional[str], available: int) -> VgpuType:
        return VgpuType(
            parent=vf,
            type_id=type_id_of(number),
            name=name,
            device_api="vfio-pci",
            available=available,
            **name_fields(name),  # type: ignore[arg-type]
        )

    def details(self, vf: str) -> Dict[str, Optional[str]]:
        """The VF's other vGPU attributes, as text (None where absent)."""
        nv = self.paths.pci_devices / vf / "nvidia"
        return {k: read_attr(nv / k) for k in ("vgpu_params", "placement_id", "gpu_instance_id")}

    def sriov_disabled(self) -> List[str]:
        """NVIDIA PFs bound to the nvidia driver that can do SR-IOV but have no VFs enabled."""
        out = []
        base = self.paths.pci_devices
        for d in listdir(base):
            f = base / d
            if os.path.islink(f / "physfn") or read_attr(f / "vendor") != "0x10de":
                continue
            if link_name(f / "driver") != "nvidia" or not (read_int(f / "sriov_totalvfs") or 0):
                continue
            if not (read_int(f / "sriov_numvfs") or 0):
                out.append(d)
        return out

    # --- SR-IOV at boot (the desired state's ``gpus: <PF>: sriov:``) -------------------------------------------------
    def sriov(self, pf: str) -> Optional[Tuple[int, int]]:
        """``(sriov_numvfs, sriov_totalvfs)`` of a PF, or None where it has no SR-IOV."""
        f = self.paths.pci_devices / pf
        total = read_int(f / "sriov_totalvfs")
        if not total:
            return None
        return read_int(f / "sriov_numvfs") or 0, total

    def set_vfs(
        self, pf: str, n: int, *, expect_types: bool = True, timeout: float = 30.0, manage: Optional[str] = None
    ) -> None:
        """Make ``pf`` have ``n`` VFs: ``manage`` (NVIDIA's ``sriov-manage``, used for enabling all VFs of a GPU
        where it is installed and the host root is ``/``) or ``sriov_numvfs`` (0 first when another count is
        enabled: the PCI core refuses a change between two non-zero counts).  Success is what sysfs shows, not an
        exit status (``sriov-manage`` can exit 0 while failing): ``n`` VFs, each with NVIDIA's ``nvidia/`` vGPU
        directory, and (``expect_types``) at least one listing a creatable type, within ``timeout`` seconds.
        The caller has checked that no VF holds a vGPU."""
        import subprocess
        import time

        f = self.paths.pci_devices / pf
        now = self.sriov(pf)
        if now is None:
            raise HostIOError(str(f / "sriov_totalvfs"), errno.ENODEV, action=f"GPU {pf} has no SR-IOV: read")
        if now[0] == n:
            return
        tool = manage if manage is not None else SRIOV_MANAGE
        if (
            n == now[1]
            and n
            and self.paths.root == type(self.paths.root)("/")
            and os.access(tool, os.X_OK)
            and not now[0]
        ):
            try:
                r = subprocess.run([tool, "-e", pf], capture_output=True, text=True, timeout=timeout)
                if r.returncode:
                    raise HostIOError(
                        tool,
                        errno.EIO,
                        action=f"exit status {r.returncode} ({r.stderr.strip()[-200:]}):"
                        f" enabling the VFs of GPU {pf} with",
                    )
            except subprocess.TimeoutExpired:
                raise HostIOError(
                    tool, errno.ETIMEDOUT, action=f"{timeout:g}s passed: enabling the VFs of GPU {pf} with"
                ) from None
        else:
            try:
                if now[0] and n:
                    write_attr(f / "sriov_numvfs", "0")
                write_attr(f / "sriov_numvfs", str(n))
            except OSError as e:
                raise HostIOError(
                    str(f / "sriov_numvfs"), e.errno or errno.EIO, action=f"set {n} VFs on GPU {pf}: write"
                ) from None
        deadline = time.monotonic() + timeout
        while True:
            problem = self._vfs_problem(pf, n, expect_types)
            if problem is None:
                return
            if time.monotonic() >= deadline:
                raise HostIOError(
                    str(f / "sriov_numvfs"),
                    errno.EIO,
                    action=f"GPU {pf}: {problem} after {timeout:g}s: setting {n} VFs through",
                )
            time.sleep(0.2)

    def _vfs_problem(self, pf: str, n: int, expect_types: bool) -> Optional[str]:
        f = self.paths.pci_devices / pf
        vfs = [d for d in listdir(f) if d.startswith("virtfn")]
        if len(vfs) != n:
            return f"the GPU has {len(vfs)} VFs, not {n}"
        if not n:
            return None
        nv = [f / v / "nvidia" / "creatable_vgpu_types" for v in vfs]
        missing = [v for v, p in zip(vfs, nv) if not os.path.isfile(p)]
        if missing:
            return f"{len(missing)} VF(s) have no nvidia/ vGPU directory (the vGPU manager did not take them)"
        if expect_types and not any(parse_creatable(read_attr(p) or "") for p in nv):
            return "no VF offers a creatable vGPU type"
        return None

    def hints(self) -> List[str]:
        return [sriov_hint(pf) for pf in self.sriov_disabled()]

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def identity(self, *, parent: str, requested: Optional[str]) -> str:
        return vf_identity(parent, requested)

    def busy(self, parent: str) -> List[str]:
        """Who holds the VF's VFIO group open (a VM using the VF): such a VF must not be typed."""
        group = link_name(self.paths.pci_devices / parent / "iommu_group")
        if not group or not group.isdigit():
            return []
        return [str(h) for h in find_holders(self.paths, [int(group)]).get(int(group), [])]

    def exists(self, ident: str) -> bool:
        return bool(read_int(self.paths.pci_devices / ident / "nvidia" / "current_vgpu_type"))

    def create(self, *, parent: str, type_id: str, uuid: str) -> Instance:
        number = self.write_create(parent=parent, type_id=type_id, uuid=uuid)
        path = self.paths.pci_devices / parent / "nvidia" / "current_vgpu_type"
        if read_int(path) != number:
            raise HostIOError(os.fspath(path), errno.EIO, action=f"typing {parent} as {type_id} did not stick:")
        p = self._read_parent(parent)
        if p is None:
            raise ParentGone(parent)
        return self._instance(p, number)

    def write_create(self, *, parent: str, type_id: str, uuid: str) -> int:
        """Type the VF (its precondition checked: it is untyped); the type number written."""
        number = type_number(type_id)
        if number is None:
            raise UnknownType(type_id, parent)
        path = self.paths.pci_devices / parent / "nvidia" / "current_vgpu_type"
        now = read_int(path)
        if now is None:
            raise ParentGone(parent)
        if now:
            # Never re-type in place: a typed VF is an instance; it is reset to 0 by ``remove`` first.
            raise AlreadyExists(parent, parent)
        try:
            write_attr(path, str(number))
        except OSError as e:
            raise _create_error(e, path=os.fspath(path), parent=parent, type_id=type_id) from None
        return number

    def present(self, ids: Collection[str]) -> Set[str]:
        """Which of ``ids`` (VF addresses) are typed now."""
        return {i for i in ids if self.exists(i)}

    def watch(self) -> WatchSpec:
        """PCI uevents of NVIDIA functions: VFs added or removed (``sriov_numvfs``, ``sriov-manage``), a driver
        bound or unbound (a reload of nvidia.ko brings the VFs' ``nvidia/`` directories back), a change.  Polled:
        the PCI functions (one readdir) and each vendor-VFIO VF's ``current_vgpu_type``."""
        return WatchSpec(name="nvidia-vf", uevent=_nvidia_pci_uevent, signature=self._signature)

    def _signature(self) -> Tuple[Tuple[str, ...], Tuple[Tuple[str, Optional[str]], ...]]:
        """The PCI functions (VFs come and go with ``sriov_numvfs``) and each vendor-VFIO VF's type (a driver
        reload resets them): one readdir, one read per function with a ``nvidia/`` directory."""
        base = self.paths.pci_devices
        functions = tuple(listdir(base))
        typed = []
        for d in functions:
            t = read_attr(base / d / "nvidia" / "current_vgpu_type")
            if t is not None:
                typed.append((d, t))
        return functions, tuple(typed)

    def remove(self, instance: Instance) -> None:
        self.write_remove(instance)
        path = self.paths.pci_devices / instance.uuid / "nvidia" / "current_vgpu_type"
        if read_int(path):
            raise HostIOError(os.fspath(path), errno.EIO, action=f"reset of {instance.uuid} to 0 did not stick:")

    def write_remove(self, instance: Instance) -> None:
        path = self.paths.pci_devices / instance.uuid / "nvidia" / "current_vgpu_type"
        try:
            write_attr(path, "0")
        except OSError as e:
            raise _remove_error(e, path=os.fspath(path), instance=instance) from None


def _nvidia_pci_uevent(subsystem: str, props: Mapping[str, str]) -> bool:
    """A PCI uevent of an NVIDIA function (``PCI_ID`` 10DE:xxxx), or of one the nvidia driver binds or leaves."""
    if subsystem != "pci":
        return False
    return props.get("PCI_ID", "").upper().startswith("10DE:") or props.get("DRIVER") == "nvidia"


def vf_identity(parent: str, requested: Optional[str]) -> str:
    """A vendor-VFIO vGPU is known by its VF's address: ``requested`` may only repeat it."""
    if requested is not None and requested.lower() != parent:
        from ..errors import InvalidInput

        raise InvalidInput(
            f"a vGPU on NVIDIA VF {parent} is identified by the VF's address, not {requested!r}: "
            "omit --uuid (choose the VF with --parent, or give the GPU to let vgpuctl pick one)"
        )
    return parent


def sriov_hint(pf: str) -> str:
    return (
        f"GPU {pf} can do SR-IOV but has no VFs enabled, so it can host no vendor-VFIO vGPUs; "
        f"enable them with: {SRIOV_MANAGE} -e {pf} (needed after every boot)"
    )


def _remove_error(e: OSError, *, path: str, instance: Instance) -> Exception:
    if isinstance(e, FileNotFoundError):
        return UnknownInstance(instance.uuid)
    code = e.errno or errno.EIO
    if code == errno.EBUSY:
        return DeviceInUse(instance.uuid, ["the VF's VFIO device is open (the driver said EBUSY)"])
    if code in (errno.ENODEV, errno.ENOTDIR):
        return ParentGone(instance.parent)
    return HostIOError(path, code)


def _create_error(e: OSError, *, path: str, parent: str, type_id: str) -> Exception:
    code = e.errno or errno.EIO
    if code == errno.EBUSY:
        return DeviceInUse(parent, ["the VF is open (the driver said EBUSY)"])
    if code == errno.ENODEV:
        return UnknownType(type_id, parent)
    if code == errno.EINVAL:
        return TypeConflict(type_id, parent)
    if code == errno.ENOSPC:
        return NoCapacity(type_id, parent, detail="the GPU is full: the driver said ENOSPC")
    if code in (errno.ENOENT, errno.ENOTDIR):
        return ParentGone(parent)
    return HostIOError(path, code)


class _NameCache:
    """Type names per GPU, learnt from the VFs' creatable lists; a typed VF's list is empty, so the name of its type
    comes from a sibling VF that still offers it (read only when needed)."""

    def __init__(self, backend: NvidiaVfBackend, parents: List[Parent]) -> None:
        self.backend = backend
        self.known: Dict[str, Dict[int, str]] = {}
        self.unread: Dict[str, List[str]] = {}
        for p in parents:
            self.unread.setdefault(p.gpu, []).append(p.name)

    def learn(self, gpu: str, offered: List[Tuple[int, str]]) -> None:
        self.known.setdefault(gpu, {}).update(offered)

    def name(self, gpu: str, number: int) -> Optional[str]:
        known = self.known.setdefault(gpu, {})
        pending = self.unread.get(gpu, [])
        while number not in known and pending:
            vf = pending.pop(0)
            text = read_attr(self.backend.paths.pci_devices / vf / "nvidia" / "creatable_vgpu_types") or ""
            known.update(parse_creatable(text))
        return known.get(number)
