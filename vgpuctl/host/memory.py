"""In-process backends over the simulator's machine model (``vgpuctl.sim.machine.Machine``): no sysfs, no FUSE, no root.

``MemoryMdevBackend`` and ``MemoryVfBackend`` implement ``Backend`` against a ``Machine``'s state the way
``MdevBackend`` and ``NvidiaVfBackend`` implement it against the sysfs tree the FUSE layer renders from that same
state: the same ``Parent``/``VgpuType``/``Instance`` values (``tests/core/test_memory_backend.py`` compares the two
reads for every shipped profile), the machine's own rules and refusals (capacity, type mixing, one vGPU per VF, the
``fail_next`` rules), the same errnos turned into the same typed errors (the mapping functions are the sysfs
backends'), and the same in-use behaviour: a ``remove`` of an mdev whose ``dev/vfio/<group>`` a process holds open
waits up to the machine's ``remove_block_seconds`` and then fails with EBUSY, a VF that is held refuses a type.

What stays real: the state file, the locks and the ``dev/vfio`` group files live under a ``HostPaths`` root (a
temporary directory in tests), and holders are found by the ordinary ``/proc`` scan.  So ``Lifecycle``,
``Reconciler`` and the journal's crash recovery run unchanged over ``memory_host(...)``, in milliseconds.

Not modelled here (use the FUSE host): ``vgpu_params`` files, mdevctl, the CLI's process boundary, uevents.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Dict, List, Optional, Set, Tuple

from ..describe import typed_fields
from ..errors import HostIOError, ParentGone, UnknownInstance
from ..model import PCI_ADDR_RE, BackendKind, Instance, Parent, VgpuType
from ..paths import HostPaths
from . import mdev as _mdev
from . import nvidia_vf as _vf
from .base import Backend, TypeScope, WatchSpec
from .holders import find_holders, open_by
from .rules import MDEV_RULES, NVIDIA_VF_RULES

if TYPE_CHECKING:
    from ..sim.machine import Function, Machine

POLL_SECONDS = 0.01


class _MachineBackend(Backend):
    def __init__(self, machine: "Machine", paths: HostPaths) -> None:
        self.m = machine
        self.paths = paths

    def _held(self, group: Optional[int]) -> List[int]:
        """Pids holding ``group``'s file open (the machine creates it under ``paths.dev_vfio``)."""
        gf = self.m.group_file(group) if group is not None else None
        if not gf:
            return []
        return sorted({pid for pids in open_by({os.path.abspath(gf), os.path.realpath(gf)}).values() for pid in pids})

    def _write(self, path: str, op: "object") -> None:
        """One write the machine judges, as the FUSE layer does it: a pending ``fail_next`` rule first."""
        from ..sim.machine import SimError

        try:
            with self.m.lock:
                self.m.take_failure(path)
            op()  # type: ignore[operator]
        except SimError as e:
            raise OSError(e.errno, os.strerror(e.errno or errno.EIO), path) from None

    def watch(self) -> WatchSpec:
        """No uevents; the machine's event counter as the polled signature."""
        return WatchSpec(
            name=f"memory-{self.kind}", uevent=lambda subsystem, props: False, signature=lambda: self.m.event_seq
        )


def _parent(fn: "Function", backend: BackendKind) -> Parent:
    md = fn.model
    pci = md.kind == "pci"
    return Parent(
        name=fn.name,
        backend=backend,
        pci=bool(PCI_ADDR_RE.fullmatch(fn.name)),
        vendor_id=str(md.vendor) if pci else None,
        device_id=str(md.device) if pci else None,
        numa_node=fn.numa_node if pci and fn.numa_node is not None and fn.numa_node >= 0 else None,
        driver=md.driver if pci and md.driver else None,
        physical_gpu=fn.physfn if pci else None,
        is_vf=pci and fn.physfn is not None,
    )


class MemoryMdevBackend(_MachineBackend):
    """The kernel mdev core of a ``Machine``: its registered parents, their types and mdevs."""

    kind = BackendKind.MDEV
    rules = MDEV_RULES

    def read(self, *, types: TypeScope = TypeScope.ALL) -> Tuple[List[Parent], List[VgpuType], List[Instance]]:
        with self.m.lock:
            fns = sorted(self.m.parents(), key=lambda f: f.name)
            parents = [_parent(fn, self.kind) for fn in fns]
            names = {fn.name for fn in fns}
            instances = [
                self._instance(i)
                for i in sorted(self.m.instances.values(), key=lambda i: i.uuid)
                if not i.removing and i.parent in names
            ]
            vtypes: List[VgpuType] = []
            if types is TypeScope.ALL:
                for fn in fns:
                    vtypes += [self._type(fn.name, t.id) for t in fn.model.types]
            elif types is TypeScope.USED:
                for parent, type_id in sorted({(i.parent, i.type_id) for i in instances}):
                    vtypes.append(self._type(parent, type_id))
        return parents, vtypes, instances

    def _type(self, parent: str, type_id: str) -> VgpuType:
        t = self.m.type_spec(parent, type_id)
        name = t.name.strip() if t.name is not None else None
        description = (t.description or "").strip()
        return VgpuType(
            parent=parent,
            type_id=type_id,
            name=name,
            device_api=t.device_api.strip(),
            available=self.m.available(parent, type_id),
            description=description,
            **typed_fields(description, name),  # type: ignore[arg-type]
        )

    def _instance(self, inst: "object") -> Instance:
        i = inst  # a sim.machine.Instance
        return Instance(
            uuid=i.uuid,  # type: ignore[attr-defined]
            parent=i.parent,  # type: ignore[attr-defined]
            type_id=i.type_id,  # type: ignore[attr-defined]
            backend=self.kind,  # type: ignore[attr-defined]
            iommu_group=i.group,  # type: ignore[attr-defined]
            driver=self.m.functions[i.parent].model.mdev_driver,  # type: ignore[attr-defined]
        )

    def _type_path(self, parent: str, type_id: str) -> Optional[str]:
        """The tree path of ``create`` (None where the parent or type is not there: the write finds no file)."""
        fn = self.m.functions.get(parent)
        if (
            fn is None
            or not (fn.is_parent and fn.registered and fn.present)
            or all(t.id != type_id for t in fn.model.types)
        ):
            return None
        return f"{fn.devpath}/mdev_supported_types/{type_id}/create"

    def write_create(self, *, parent: str, type_id: str, uuid: str) -> None:
        path = self._type_path(parent, type_id)
        shown = os.fspath(self.paths.mdev_bus / parent / "mdev_supported_types" / type_id / "create")
        try:
            if path is None:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)
            self._write(path, lambda: self.m.create(parent, type_id, uuid.encode()))
        except OSError as e:
            raise _mdev._create_error(e, path=shown, parent=parent, type_id=type_id, uuid=uuid) from None

    def create(self, *, parent: str, type_id: str, uuid: str) -> Instance:
        self.write_create(parent=parent, type_id=type_id, uuid=uuid)
        inst = self.m.instances.get(uuid)
        if inst is None or inst.parent != parent or inst.removing:
            path = self.paths.mdev_bus / parent / "mdev_supported_types" / type_id / "create"
            raise HostIOError(os.fspath(path), errno.EIO, action=f"create {uuid} reported success but no device via")
        return self._instance(inst)

    def write_remove(self, instance: Instance) -> None:
        shown = os.fspath(self.paths.mdev_devices / instance.uuid / "remove")
        inst = self.m.instances.get(instance.uuid)
        if inst is None or inst.removing:
            raise UnknownInstance(instance.uuid)
        path = f"{self.m.functions[inst.parent].devpath}/{inst.uuid}/remove"
        try:
            self._write(path, lambda: self._remove(instance.uuid))
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise ParentGone(instance.parent) from None
            raise HostIOError(shown, e.errno or errno.EIO) from None

    def _remove(self, uuid: str) -> None:
        """As the FUSE layer's held ``remove``: off the bus at once, gone once nobody holds its group, EBUSY after
        ``remove_block_seconds``."""
        from ..sim.machine import SimError

        m = self.m
        inst = m.begin_remove(uuid, b"1")
        if inst is None:
            return
        deadline = time.monotonic() + m.remove_block_seconds
        try:
            while True:
                held = self._held(inst.group)
                if not held:
                    break
                if m.instances.get(uuid) is not inst:
                    return
                if time.monotonic() >= deadline:
                    raise SimError(errno.EBUSY, f"held by pid {', '.join(map(str, held))}")
                time.sleep(POLL_SECONDS)
        except BaseException:
            m.abort_remove(inst)
            raise
        m.finish_remove(inst)

    def remove(self, instance: Instance) -> None:
        self.write_remove(instance)
        inst = self.m.instances.get(instance.uuid)
        if inst is not None and not inst.removing:
            raise HostIOError(
                os.fspath(self.paths.mdev_devices / instance.uuid / "remove"),
                errno.EIO,
                action=f"remove {instance.uuid} left the device in place:",
            )

    def present(self, ids: Collection[str]) -> Set[str]:
        with self.m.lock:
            return {i for i in ids if i in self.m.instances and not self.m.instances[i].removing}

    def exists(self, ident: str) -> bool:
        inst = self.m.instances.get(ident)
        return inst is not None and not inst.removing


class MemoryVfBackend(_MachineBackend):
    """NVIDIA vendor VFIO on a ``Machine``: every enabled VF with a ``nvidia/`` directory, typed or not."""

    kind = BackendKind.NVIDIA_VF
    rules = NVIDIA_VF_RULES

    def _vfs(self) -> List["Function"]:
        return sorted((f for f in self.m.functions.values() if f.vendor_vfio and f.present), key=lambda f: f.name)

    def read(self, *, types: TypeScope = TypeScope.ALL) -> Tuple[List[Parent], List[VgpuType], List[Instance]]:
        with self.m.lock:
            vfs = self._vfs()
            parents = [_parent(fn, self.kind) for fn in vfs]
            instances = [self._instance(fn) for fn in vfs if self.m.vf_type.get(fn.name)]
            vtypes: List[VgpuType] = []
            if types is TypeScope.NONE:
                return parents, vtypes, instances
            creatable = {fn.name: self.m.creatable(fn.name) for fn in vfs}  # empty for a typed VF
            names: Dict[str, Dict[int, str]] = {}
            for fn in vfs:
                for t in creatable[fn.name]:
                    names.setdefault(fn.gpu, {}).setdefault(int(t.id), (t.name or "").strip())
            for fn in vfs:
                if types is TypeScope.ALL and not self.m.vf_type.get(fn.name, 0):
                    vtypes += [self._type(fn.name, int(t.id), (t.name or "").strip(), 1) for t in creatable[fn.name]]
            for fn in vfs:
                n = self.m.vf_type.get(fn.name, 0)
                if n:
                    vtypes.append(self._type(fn.name, n, names.get(fn.gpu, {}).get(n), 0))
        return parents, vtypes, instances

    def _type(self, vf: str, number: int, name: Optional[str], available: int) -> VgpuType:
        return VgpuType(
            parent=vf,
            type_id=_vf.type_id_of(number),
            name=name,
            device_api="vfio-pci",
            available=available,
            **_vf.name_fields(name),  # type: ignore[arg-type]
        )

    def _instance(self, fn: "Function") -> Instance:
        return Instance(
            uuid=fn.name,
            parent=fn.name,
            type_id=_vf.type_id_of(self.m.vf_type[fn.name]),
            backend=self.kind,
            iommu_group=fn.group if self.m.iommu else None,
            driver=fn.model.driver or None,
        )

    def _fn(self, vf: str) -> "Optional[Function]":
        fn = self.m.functions.get(vf)
        return fn if fn is not None and fn.vendor_vfio and fn.present else None

    def _set(self, fn: "Function", number: int) -> None:
        """A write to the VF's ``current_vgpu_type``: refused with EBUSY while a process holds the VF open."""
        from ..sim.machine import SimError

        def op() -> None:
            held = self._held(fn.group)
            if held:
                raise SimError(errno.EBUSY, f"VF held by pid {', '.join(map(str, held))}")
            self.m.set_vgpu_type(fn.name, str(number).encode())

        self._write(f"{fn.devpath}/nvidia/current_vgpu_type", op)

    def identity(self, *, parent: str, requested: Optional[str]) -> str:
        return _vf.vf_identity(parent, requested)

    def busy(self, parent: str) -> List[str]:
        fn = self.m.functions.get(parent)
        if fn is None or fn.group is None or not self.m.iommu:
            return []
        return [str(h) for h in find_holders(self.paths, [fn.group]).get(fn.group, [])]

    def write_create(self, *, parent: str, type_id: str, uuid: str) -> int:
        number = _vf.type_number(type_id)
        if number is None:
            from ..errors import UnknownType

            raise UnknownType(type_id, parent)
        fn = self._fn(parent)
        if fn is None:
            raise ParentGone(parent)
        if self.m.vf_type.get(parent):
            from ..errors import AlreadyExists

            raise AlreadyExists(parent, parent)
        path = os.fspath(self.paths.pci_devices / parent / "nvidia" / "current_vgpu_type")
        try:
            self._set(fn, number)
        except OSError as e:
            raise _vf._create_error(e, path=path, parent=parent, type_id=type_id) from None
        return number

    def create(self, *, parent: str, type_id: str, uuid: str) -> Instance:
        number = self.write_create(parent=parent, type_id=type_id, uuid=uuid)
        fn = self._fn(parent)
        if fn is None:
            raise ParentGone(parent)
        if self.m.vf_type.get(parent) != number:
            path = self.paths.pci_devices / parent / "nvidia" / "current_vgpu_type"
            raise HostIOError(os.fspath(path), errno.EIO, action=f"typing {parent} as {type_id} did not stick:")
        return self._instance(fn)

    def write_remove(self, instance: Instance) -> None:
        fn = self._fn(instance.uuid)
        if fn is None:
            raise UnknownInstance(instance.uuid)
        try:
            self._set(fn, 0)
        except OSError as e:
            raise _vf._remove_error(
                e,
                path=os.fspath(self.paths.pci_devices / instance.uuid / "nvidia" / "current_vgpu_type"),
                instance=instance,
            ) from None

    def remove(self, instance: Instance) -> None:
        self.write_remove(instance)
        if self.m.vf_type.get(instance.uuid):
            path = self.paths.pci_devices / instance.uuid / "nvidia" / "current_vgpu_type"
            raise HostIOError(os.fspath(path), errno.EIO, action=f"reset of {instance.uuid} to 0 did not stick:")

    def present(self, ids: Collection[str]) -> Set[str]:
        return {i for i in ids if self.exists(i)}

    def exists(self, ident: str) -> bool:
        return self._fn(ident) is not None and bool(self.m.vf_type.get(ident))

    def sriov_disabled(self) -> List[str]:
        out = []
        for fn in sorted(self.m.functions.values(), key=lambda f: f.name):
            md = fn.model
            if fn.physfn is not None or md.kind != "pci" or md.vendor != "0x10de" or md.driver != "nvidia":
                continue
            if md.sriov and md.sriov.totalvfs and not fn.vfs:
                out.append(fn.name)
        return out

    def hints(self) -> List[str]:
        return [_vf.sriov_hint(pf) for pf in self.sriov_disabled()]


def memory_host(machine: "Machine", root: "os.PathLike[str] | str") -> "object":
    """A ``Host`` over ``machine`` in this process, its state, locks and ``dev/vfio`` under ``root``.  The machine
    must put its group files in ``root/dev/vfio`` (``machine_at``)."""
    from . import Host

    paths = HostPaths.from_root(os.fspath(root))
    if machine.dev_vfio is not None and os.path.abspath(machine.dev_vfio) != os.path.abspath(paths.dev_vfio):
        raise ValueError(f"the machine's dev_vfio {machine.dev_vfio} is not {paths.dev_vfio}")
    return Host(paths, [MemoryMdevBackend(machine, paths), MemoryVfBackend(machine, paths)])


def machine_at(profile: str, root: "os.PathLike[str] | str") -> "Machine":
    """A ``Machine`` for the shipped or given ``profile`` whose group files appear under ``root/dev/vfio``."""
    from ..sim.machine import Machine
    from ..sim.profile import load_profile

    dev_vfio = Path(os.fspath(root)) / "dev" / "vfio"
    dev_vfio.mkdir(parents=True, exist_ok=True)
    return Machine(load_profile(profile), dev_vfio=str(dev_vfio))
