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
from typing import List, Optional, Tuple

from ..describe import typed_fields
from ..errors import AlreadyExists, BadUuid, HostIOError, NoCapacity, ParentGone, UnknownInstance
from ..model import PCI_ADDR_RE, BackendKind, Instance, Parent, VgpuType
from ..paths import HostPaths
from .sysfs import link_name, listdir, read_attr, read_int, write_attr


class MdevBackend:
    kind = BackendKind.MDEV

    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths

    # --- inventory -------------------------------------------------------------------------------------------------
    def read(self) -> Tuple[List[Parent], List[VgpuType], List[Instance]]:
        parents: List[Parent] = []
        types: List[VgpuType] = []
        for name in listdir(self.paths.mdev_bus):
            parent = self._read_parent(name)
            if parent is None:  # unregistered while we looked
                continue
            parents.append(parent)
            types += self._read_types(name)
        instances = [i for i in (self._read_instance(u) for u in listdir(self.paths.mdev_devices)) if i]
        return parents, types, instances

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

    def _read_types(self, parent: str) -> List[VgpuType]:
        base = self.paths.mdev_bus / parent / "mdev_supported_types"
        out = []
        for type_id in listdir(base):
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
        link = self.paths.mdev_devices / uuid
        real = os.path.realpath(link)
        type_link = os.path.join(real, "mdev_type")
        type_real = os.path.realpath(type_link)
        if not os.path.isdir(real) or not os.path.isdir(type_real):
            return None
        group = link_name(os.path.join(real, "iommu_group"))
        return Instance(
            uuid=uuid,
            parent=os.path.basename(os.path.dirname(real)),
            type_id=os.path.basename(type_real),
            backend=self.kind,
            iommu_group=int(group) if group and group.isdigit() else None,
            driver=link_name(os.path.join(real, "driver")),
        )

    # --- lifecycle -------------------------------------------------------------------------------------------------
    def create(self, *, parent: str, type_id: str, uuid: str) -> Instance:
        path = self.paths.mdev_bus / parent / "mdev_supported_types" / type_id / "create"
        try:
            write_attr(path, uuid)
        except OSError as e:
            raise _create_error(e, path=os.fspath(path), parent=parent, type_id=type_id, uuid=uuid) from None
        inst = self._read_instance(uuid)
        if inst is None or inst.parent != parent:
            raise HostIOError(os.fspath(path), errno.EIO, action=f"create {uuid} reported success but no device via")
        return inst

    def remove(self, instance: Instance) -> None:
        path = self.paths.mdev_devices / instance.uuid / "remove"
        try:
            write_attr(path, "1")
        except FileNotFoundError:
            raise UnknownInstance(instance.uuid) from None
        except OSError as e:
            if e.errno == errno.ENODEV:
                raise ParentGone(instance.parent) from None
            raise HostIOError(os.fspath(path), e.errno or errno.EIO) from None
        if os.path.lexists(self.paths.mdev_devices / instance.uuid):
            raise HostIOError(os.fspath(path), errno.EIO, action=f"remove {instance.uuid} left the device in place:")


def _create_error(e: OSError, *, path: str, parent: str, type_id: str, uuid: str) -> Exception:
    code = e.errno or errno.EIO
    if code == errno.EINVAL:
        return BadUuid(uuid)
    if code == errno.EEXIST:
        return AlreadyExists(uuid)
    if code in (errno.ENOSPC, errno.EUSERS):
        return NoCapacity(type_id, parent, detail=f"the kernel said {errno.errorcode[code]}")
    if code in (errno.ENODEV, errno.ENOENT, errno.ENOTDIR):
        return ParentGone(parent)
    return HostIOError(path, code)
