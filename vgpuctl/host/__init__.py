"""Host access: everything vgpuctl reads from or writes to sysfs goes through here.

``Host`` is the one object the rest of the package talks to.  It holds a ``HostPaths`` and a list of backends, one per
way a host makes vGPUs (the kernel's mdev core today; NVIDIA's per-VF interface fits beside it), merges their
inventories into one ``Inventory`` and routes create/remove to the backend that owns the parent.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from ..errors import BadParentName, UnknownParent
from ..model import BackendKind, Instance, Inventory, canonical_parent_name, sorted_inventory
from ..paths import HostPaths
from .base import Backend, TypeScope
from .holders import Holder, find_holders
from .mdev import MdevBackend


class Host:
    def __init__(self, paths: HostPaths, backends: Optional[Sequence[Backend]] = None) -> None:
        self.paths = paths
        self.backends: List[Backend] = list(backends) if backends is not None else [MdevBackend(paths)]

    @classmethod
    def at(cls, root: str = "/") -> "Host":
        return cls(HostPaths.from_root(root))

    def backend(self, kind: BackendKind) -> Backend:
        for b in self.backends:
            if b.kind == kind:
                return b
        raise KeyError(kind)

    def inventory(self, *, types: TypeScope = TypeScope.ALL) -> Inventory:
        """Everything the backends see; ``types`` limits which type tables are read (see ``TypeScope``)."""
        parents, vtypes, instances = [], [], []
        for b in self.backends:
            p, t, i = b.read(types=types)
            parents += p
            vtypes += t
            instances += i
        return sorted_inventory(parents, vtypes, instances)

    def resolve_parent(self, name: str, inventory: Inventory) -> str:
        """The canonical name of the registered parent ``name`` refers to (case-insensitive), or a typed error."""
        canon = canonical_parent_name(name)
        if canon is None:
            raise BadParentName(name)
        by_lower: Dict[str, str] = {p.name.lower(): p.name for p in inventory.parents}
        found = by_lower.get(canon.lower())
        if found is None:
            raise UnknownParent(canon, [p.name for p in inventory.parents])
        return found

    def create(self, *, parent: str, type_id: str, uuid: str, inventory: Inventory) -> Instance:
        p = inventory.parent(parent)
        if p is None:
            raise UnknownParent(parent, [x.name for x in inventory.parents])
        return self.backend(p.backend).create(parent=parent, type_id=type_id, uuid=uuid)

    def remove(self, instance: Instance) -> None:
        self.backend(instance.backend).remove(instance)

    def holders(self, instances: Sequence[Instance]) -> Dict[str, List[Holder]]:
        """Processes holding each instance's VFIO group open, keyed by instance uuid (only held ones appear)."""
        groups = {i.iommu_group: i.uuid for i in instances if i.iommu_group is not None}
        return {groups[g]: h for g, h in find_holders(self.paths, groups).items()}


__all__ = ["Host", "Holder", "Backend", "MdevBackend", "TypeScope"]
