"""The host model: parents, vGPU types and instances, as frozen values.

Backends (``vgpuctl.host.*``) read the host into these; placement, planning and rendering are pure functions over
them.  The model does not say how an instance is made: the kernel's mdev interface (identity = UUID) and NVIDIA's
per-VF interface (identity = the VF's PCI address) both produce the same three records, told apart by ``backend``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, FrozenSet, Iterable, Optional, Tuple

from .errors import AmbiguousType, UnknownType


class BackendKind(str, Enum):
    MDEV = "mdev"  #: kernel mdev core: sys/class/mdev_bus, identity is a UUID
    NVIDIA_VF = "nvidia-vf"  #: NVIDIA vendor VFIO: sys/bus/pci/devices/<VF>/nvidia/current_vgpu_type

    def __str__(self) -> str:
        return self.value


class Vendor(str, Enum):
    NVIDIA = "nvidia"
    INTEL = "intel"
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


PCI_VENDORS = {"0x10de": Vendor.NVIDIA, "0x8086": Vendor.INTEL}


class SchedulerPolicy(str, Enum):
    """NVIDIA's vGPU time-slice scheduler policies (``nvidia-smi vgpu -ss``): the one spelling of the desired
    state's ``scheduler.policy``, a profile's ``scheduler``, ``vgpuctl sched set --policy`` and NVML's numbers
    (``nvml.POLICIES``)."""

    BEST_EFFORT = "best-effort"
    EQUAL_SHARE = "equal-share"
    FIXED_SHARE = "fixed-share"

    def __str__(self) -> str:
        return self.value


#: names an operator gives: desired instances and service profiles (1-64 of A-Z a-z 0-9 _ . -, not starting with
#: . or -)
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
PCI_ADDR_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$"
)
DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:+-]{0,127}$")


@dataclass(frozen=True)
class Parent:
    """A device that can host vGPUs: a PCI function (GPU, SR-IOV VF) or a virtual parent such as ``mtty``."""

    name: str  #: canonical name: lowercase full PCI address, or the device name
    backend: BackendKind = BackendKind.MDEV
    pci: bool = False  #: a PCI function (else a virtual device)
    vendor_id: Optional[str] = None  #: "0x10de"
    device_id: Optional[str] = None  #: "0x1eb8"
    numa_node: Optional[int] = None  #: None where sysfs has none or says -1
    driver: Optional[str] = None  #: bound driver's name
    physical_gpu: Optional[str] = None  #: the physical function a VF belongs to; the parent itself otherwise
    is_vf: bool = False

    @property
    def vendor(self) -> Vendor:
        return PCI_VENDORS.get(self.vendor_id or "", Vendor.OTHER)

    @property
    def gpu(self) -> str:
        """The physical GPU this parent is part of: what type-mixing and per-GPU counting group by."""
        return self.physical_gpu or self.name


@dataclass(frozen=True)
class VgpuType:
    """One vGPU type offered on one parent, with its description parsed where the vendor has a format."""

    parent: str
    type_id: str  #: "nvidia-222", "i915-GVTg_V5_4", "mtty-1"
    name: Optional[str] = None  #: "GRID T4-2Q"
    device_api: Optional[str] = None  #: "vfio-pci"
    available: int = 0  #: available_instances as the host reports it now
    description: str = ""  #: raw description text ("" where the type has none)
    framebuffer_mib: Optional[int] = None
    num_heads: Optional[int] = None
    max_resolution: Optional[str] = None
    max_instance: Optional[int] = None
    frl_config: Optional[int] = None
    weight: Optional[int] = None  #: Intel GVT-g time-slice weight
    series: Optional[str] = None  #: NVIDIA series letter: Q, B, A or C
    #: every field the description parser recognised, as text, in description order
    fields: Tuple[Tuple[str, str], ...] = ()

    @property
    def profile(self) -> Optional[str]:
        """The profile part of the name: ``T4-2Q`` for ``GRID T4-2Q`` / ``NVIDIA T4-2Q``."""
        if not self.name:
            return None
        return self.name.split()[-1]


@dataclass(frozen=True)
class Instance:
    """One existing vGPU: an mdev (identity: UUID) or a typed NVIDIA VF (identity: the VF's PCI address)."""

    uuid: str
    parent: str
    type_id: str
    backend: BackendKind = BackendKind.MDEV
    iommu_group: Optional[int] = None
    driver: Optional[str] = None


@dataclass(frozen=True)
class Inventory:
    """Everything one read of the host found.  Sorted: parents by name, types by (parent, id), instances by uuid."""

    parents: Tuple[Parent, ...] = ()
    types: Tuple[VgpuType, ...] = ()
    instances: Tuple[Instance, ...] = ()
    _by_parent: Dict[str, Parent] = field(default_factory=dict, compare=False, repr=False)
    #: tables derived from this inventory (indexes, placement's per-GPU states), filled on first use; never copied
    #: by ``dataclasses.replace`` (init=False), so a changed inventory never sees another one's tables
    _memo: Dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_parent", {p.name: p for p in self.parents})

    def parent(self, name: str) -> Optional[Parent]:
        return self._by_parent.get(name)

    def types_on(self, parent: str) -> Tuple[VgpuType, ...]:
        return tuple(t for t in self.types if t.parent == parent)

    def type_on(self, parent: str, type_id: str) -> Optional[VgpuType]:
        index = self._memo.get("type_on")
        if index is None:
            index = {}
            for t in self.types:
                index.setdefault((t.parent, t.type_id), t)
            self._memo["type_on"] = index
        return index.get((parent, type_id))

    def instances_on(self, parent: str) -> Tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.parent == parent)

    def instance(self, uuid: str) -> Optional[Instance]:
        index = self._memo.get("instance")
        if index is None:
            index = self._memo["instance"] = {}
            for i in self.instances:
                index.setdefault(i.uuid, i)
        return index.get(uuid)

    def find_parent(self, name: Optional[str]) -> Optional[Parent]:
        """The registered parent ``name`` refers to, case-insensitively (``0000:3B:00.0`` is ``0000:3b:00.0``), or
        None."""
        if name is None:
            return None
        index = self._memo.get("parent_lower")
        if index is None:
            index = self._memo["parent_lower"] = {}
            for p in self.parents:
                index.setdefault(p.name.lower(), p)
        return index.get(name.lower())

    def gpu_of(self, parent: str) -> str:
        """The physical GPU of parent ``parent`` (what per-GPU rules and NVML group by); ``parent`` itself when it
        is not registered."""
        p = self._by_parent.get(parent)
        return p.gpu if p is not None else parent

    def gpu_of_instance(self, uuid: str) -> Optional[str]:
        """The physical GPU instance ``uuid`` is on; None when there is no such instance or its parent is gone."""
        i = self.instance(uuid)
        p = self._by_parent.get(i.parent) if i is not None else None
        return p.gpu if p is not None else None

    def instances_on_gpu(self, gpu: str) -> Tuple[Instance, ...]:
        """The instances on registered parents of physical GPU ``gpu`` (its VFs, or the GPU itself)."""
        return tuple(i for i in self.instances if i.parent in self._by_parent and self._by_parent[i.parent].gpu == gpu)

    def used_parents(self) -> FrozenSet[str]:
        """The parents that hold at least one instance."""
        return frozenset(i.parent for i in self.instances)


def canonical_uuid(value: str) -> Optional[str]:
    """Lowercase UUID, or None if ``value`` is not one (the kernel accepts uppercase and stores lowercase)."""
    if not isinstance(value, str) or not UUID_RE.fullmatch(value):
        return None
    return value.lower()


def canonical_instance_id(value: str) -> Optional[str]:
    """An instance's identity in canonical form: a UUID (mdev) lowercased, or a PCI address (an NVIDIA VF's vGPU)
    with its domain and lowercased; None for anything else."""
    u = canonical_uuid(value)
    if u is not None:
        return u
    if isinstance(value, str) and PCI_ADDR_RE.fullmatch(value):
        return canonical_parent_name(value)
    return None


def canonical_parent_name(value: str) -> Optional[str]:
    """Canonical parent name, or None if ``value`` could reach outside sysfs or is not a name at all.

    PCI addresses get their domain and are lowercased (``3B:00.0`` -> ``0000:3b:00.0``); other names are kept as
    given and matched case-insensitively against the host by the caller.
    """
    if not isinstance(value, str) or "/" in value or "\0" in value or value in (".", ".."):
        return None
    m = PCI_ADDR_RE.fullmatch(value)
    if m:
        domain = m.group("domain") or "0000"
        return f"{domain}:{m.group('bus')}:{m.group('slot')}.{m.group('fn')}".lower()
    if ".." in value or not DEVICE_NAME_RE.fullmatch(value):
        return None
    return value


def sorted_inventory(parents: Iterable[Parent], types: Iterable[VgpuType], instances: Iterable[Instance]) -> Inventory:
    return Inventory(
        parents=tuple(sorted(parents, key=lambda p: p.name)),
        types=tuple(sorted(types, key=lambda t: (t.parent, t.type_id))),
        instances=tuple(sorted(instances, key=lambda i: (i.parent, i.uuid))),
    )


# --- type names: the one resolver -----------------------------------------------------------------------------------
def type_names(t: VgpuType) -> FrozenSet[str]:
    """Every name that means ``t``, lowercase: its id, its full name (``GRID T4-2Q``) and its profile (``T4-2Q``)."""
    names = {t.type_id.lower()}
    if t.name:
        names.add(t.name.strip().lower())
    if t.profile:
        names.add(t.profile.lower())
    return frozenset(names)


def type_label(t: VgpuType) -> str:
    return f"{t.type_id} ({t.name})" if t.name else t.type_id


def find_type(inventory: "Inventory", parent: str, name: str) -> VgpuType:
    """The type ``name`` names on ``parent``: its exact id, else the one type whose id, name or profile it is
    (case-insensitively).  ``UnknownType`` (exit 3) if none; ``AmbiguousType`` (exit 2) if it names two types
    there: the same rule as ``placement.resolve_type`` across the host, so ``--parent`` changes nothing about it."""
    offered = inventory.types_on(parent)
    for t in offered:
        if t.type_id == name:
            return t
    key = name.strip().lower()
    matches = [t for t in offered if key in type_names(t)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousType(name, sorted(type_label(t) for t in matches))
    raise UnknownType(name, parent, [t.type_id for t in offered])
