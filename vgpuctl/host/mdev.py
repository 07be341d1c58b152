"""The kernel mdev backend: ``sys/class/mdev_bus`` parents, ``mdev_supported_types``, ``sys/bus/mdev/devices``.

Layout (Documentation/driver-api/vfio-mediated-device.rst)::

    sys/class/mdev_bus/<parent> -> ../../devices/.../<parent>
        mdev_supported_types/<type-id>/{name, description, device_api, available_instances, create, devices/}
    sys/bus/mdev/devices/<uuid> -> ../../../devices/.../<parent>/<uuid>
        {mdev_type ->, driver ->, iommu_group ->, remove}
"""

from __future__ import annotations

import errno
import os
from typing import Collection, List, Optional, Set, Tuple

from ..describe import typed_fields
from ..errors import AlreadyExists, CreateRefused, HostIOError, NoCapacity, ParentGone, UnknownInstance
from ..model import PCI_ADDR_RE, BackendKind, Instance, Parent, VgpuType
from ..paths import HostPaths
from .base import Backend, TypeScope, WatchSpec
from .rules import MDEV_RULES
from .sysfs import link_name, listdir, read_attr, read_int, write_attr


class MdevBackend(Backend):
    kind = BackendKind.MDEV
    rules = MDEV_RULES

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    # --- inventory -------------------------------------------------------------------------------------------------
    def read(self, *, types: TypeScope = TypeScope.ALL) -> Tuple[List[Parent], List[VgpuType], List[Instance]]:
        parents = [p for p in (self._read_parent(n) for n in listdir(self.paths.mdev_bus)) if p]
        instances = [i for i in (self._read_instance(u) for u in listdir(self.paths.mdev_devices)) if i]
        vtypes: List[VgpuType] = []
        if types is TypeScope.ALL:
            for p in parents:
                vtypes += self._read_types(p.name)
        elif types is TypeScope.USED:
            for parent, type_id in sorted({(i.parent, i.type_id) for i in instances}):
                vtypes += self._read_types(parent, only=type_id)
        return parents, vtypes, instances

    def _read_parent(self, name: str) -> Optional[Parent]:
        d = self.paths.mdev_bus / name
        if not d.exists():
            return None
        numa = read_int(d / "numa_node")
        physfn = d / "physfn"
        return Parent(
            name=name,
            backend=self.kind,
            pci=bool(PCI_ADDR_RE.fullmatch(name)),
            vendor_id=read_attr(d / "vendor"),
            device_id=read_attr(d / "device"),
            numa_node=None if numa is None or numa < 0 else numa,
            driver=link_name(d / "driver"),
            physical_gpu=link_name(physfn) if os.path.islink(physfn) else None,
            is_vf=os.path.islink(physfn),
        )

    def _read_types(self, parent: str, only: Optional[str] = None) -> List[VgpuType]:
        base = self.paths.mdev_bus / parent / "mdev_supported_types"
        out = []
        for type_id in [only] if only else listdir(base):
            d = base / type_id
            available = read_int(d / "available_instances")
            if available is None:  # the type vanished with its parent
                continue
            name = read_attr(d / "name")
            description = read_attr(d / "description") or ""
            out.append(
                VgpuType(
                    parent=parent,
                    type_id=type_id,
                    name=name,
                    device_api=read_attr(d / "device_api"),
                    available=available,
                    description=description,
                    **typed_fields(description, name),  # type: ignore[arg-type]
                )
            )
        return out

    def _read_instance(self, uuid: str) -> Optional[Instance]:
        # Plain readlinks, no realpath: under FUSE every resolved component is a round trip, and the kernel's links
        # already name what we need (…/<parent>/<uuid>, ../mdev_supported_types/<type>, …/iommu_groups/<n>).
        link = self.paths.mdev_devices / uuid
        try:
            parent = os.path.basename(os.path.dirname(os.readlink(link)))
            type_id = os.path.basename(os.readlink(link / "mdev_type"))
        except OSError:  # removed while we looked
            return None
        group = link_name(link / "iommu_group")
        return Instance(
            uuid=uuid,
            parent=parent,
            type_id=type_id,
            backend=self.kind,
            iommu_group=int(group) if group and group.isdigit() else None,
            driver=link_name(link / "driver"),
        )

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def create(self, *, parent: str, type_id: str, uuid: str) -> Instance:
        self.write_create(parent=parent, type_id=type_id, uuid=uuid)
        inst = self._read_instance(uuid)
        if inst is None or inst.parent != parent:
            path = self.paths.mdev_bus / parent / "mdev_supported_types" / type_id / "create"
            raise HostIOError(os.fspath(path), errno.EIO, action=f"create {uuid} reported success but no device via")
        return inst

    def write_create(self, *, parent: str, type_id: str, uuid: str) -> None:
        path = self.paths.mdev_bus / parent / "mdev_supported_types" / type_id / "create"
        try:
            write_attr(path, uuid)
        except OSError as e:
            raise _create_error(e, path=os.fspath(path), parent=parent, type_id=type_id, uuid=uuid) from None

    def remove(self, instance: Instance) -> None:
        self.write_remove(instance)
        if os.path.lexists(self.paths.mdev_devices / instance.uuid):
            raise HostIOError(
                os.fspath(self.paths.mdev_devices / instance.uuid / "remove"),
                errno.EIO,
                action=f"remove {instance.uuid} left the device in place:",
            )

    def write_remove(self, instance: Instance) -> None:
        path = self.paths.mdev_devices / instance.uuid / "remove"
        try:
            write_attr(path, "1")
        except FileNotFoundError:
            raise UnknownInstance(instance.uuid) from None
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise ParentGone(instance.parent) from None
            raise HostIOError(os.fspath(path), e.errno or errno.EIO) from None

    def present(self, ids: Collection[str]) -> Set[str]:
        """Which of ``ids`` exist now: one readdir of ``sys/bus/mdev/devices`` for a whole batch."""
        return set(ids).intersection(listdir(self.paths.mdev_devices))

    def exists(self, ident: str) -> bool:
        """One lstat of ``sys/bus/mdev/devices/<uuid>``."""
        return os.path.lexists(self.paths.mdev_devices / ident)

    def watch(self) -> WatchSpec:
        """mdev uevents (an instance added or removed) and a parent's ``MDEV_STATE`` change (registered or
        unregistered, e.g. by a driver reload); polled: the listings of ``mdev_bus`` and ``bus/mdev/devices``."""
        return WatchSpec(
            name="mdev",
            uevent=lambda subsystem, props: subsystem == "mdev" or "MDEV_STATE" in props,
            signature=lambda: (tuple(listdir(self.paths.mdev_bus)), tuple(listdir(self.paths.mdev_devices))),
        )


def _create_error(e: OSError, *, path: str, parent: str, type_id: str, uuid: str) -> Exception:
    code = e.errno or errno.EIO
    if code == errno.EINVAL:  # vgpuctl wrote a canonical uuid: the driver refuses the type, not the uuid
        return CreateRefused(path, type_id, parent)
    if code == errno.EEXIST:
        return AlreadyExists(uuid)
    if code in (errno.ENOSPC, errno.EUSERS):
        return NoCapacity(type_id, parent, detail=f"the kernel said {errno.errorcode[code]}")
    if code in (errno.ENODEV, errno.ENOENT, errno.ENOTDIR):
        return ParentGone(parent)
    return HostIOError(path, code)
