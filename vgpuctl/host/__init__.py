"""Host access: everything vgpuctl reads from or writes to sysfs goes through here.

``Host`` is the one object the rest of the package talks to.  It holds a ``HostPaths`` and a list of backends, one per
way a host makes vGPUs (the kernel's mdev core today; NVIDIA's per-VF interface fits beside it), merges their
inventories into one ``Inventory`` and routes create/remove to the backend that owns the parent.

``base.Backend`` declares everything ``Host`` calls (identity, exists, busy, hints, SR-IOV state, what to watch),
with defaults for a backend that lacks a notion; ``rules.py`` holds the rules the pure core asks about a backend's
instances and GPUs (named by the VF, one per VF, mixing modes), so no module outside ``host/`` tests a backend kind.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set

from ..errors import BadParentName, UnknownParent
from ..model import BackendKind, Instance, Inventory, canonical_parent_name, sorted_inventory
from ..paths import HostPaths
from .base import Backend, TypeScope, WatchSpec
from .holders import Holder, find_holders
from .mdev import MdevBackend
from .nvidia_vf import NvidiaVfBackend


class Host:
    def __init__(self, paths: HostPaths, backends: Optional[Sequence[Backend]] = None) -> None:
        self.paths = paths
        self.backends: List[Backend] = (
            list(backends) if backends is not None else [MdevBackend(paths), NvidiaVfBackend(paths)]
        )

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

    def write_create(self, *, parent: str, type_id: str, uuid: str, inventory: Inventory) -> None:
        """The create's write only (see ``Backend.write_create``); ``present`` verifies a batch of them at once."""
        p = inventory.parent(parent)
        if p is None:
            raise UnknownParent(parent, [x.name for x in inventory.parents])
        self.backend(p.backend).write_create(parent=parent, type_id=type_id, uuid=uuid)

    def write_remove(self, instance: Instance) -> None:
        self.backend(instance.backend).write_remove(instance)

    def present(self, ids: Dict[BackendKind, Set[str]]) -> Set[str]:
        """Which of the identities (per backend kind) exist now: one look per backend."""
        out: Set[str] = set()
        for kind, wanted in ids.items():
            if wanted:
                try:
                    out |= self.backend(kind).present(wanted)
                except KeyError:
                    pass
        return out

    def backend_of(self, parent: str, inventory: Inventory) -> Backend:
        p = inventory.parent(parent)
        if p is None:
            raise UnknownParent(parent, [x.name for x in inventory.parents])
        return self.backend(p.backend)

    def identity(self, *, parent: str, requested: Optional[str], inventory: Inventory) -> str:
        """The identity the next instance on ``parent`` gets: for mdev ``requested`` (a canonical UUID) or a fresh
        random UUID; other backends decide themselves (an NVIDIA VF's address)."""
        return self.backend_of(parent, inventory).identity(parent=parent, requested=requested)

    def exists(self, uuid: str, kind: BackendKind = BackendKind.MDEV) -> bool:
        """Whether the instance ``uuid`` of backend ``kind`` is on the host now (one cheap look, no full read)."""
        try:
            b = self.backend(kind)
        except KeyError:
            return False
        return b.exists(uuid)

    def busy(self, parent: str, inventory: Inventory) -> List[str]:
        """Who holds ``parent`` itself open (an NVIDIA VF passed to a VM); empty where a backend has no such notion."""
        return list(self.backend_of(parent, inventory).busy(parent))

    def hints(self) -> List[str]:
        """Why devices one may expect are missing (an NVIDIA GPU without SR-IOV VFs), one line each."""
        return [line for b in self.backends for line in b.hints()]

    def sriov_disabled(self) -> List[str]:
        """NVIDIA GPUs that could host vendor-VFIO vGPUs but have no SR-IOV VFs enabled; empty where no backend has
        such a notion."""
        return [gpu for b in self.backends for gpu in b.sriov_disabled()]

    def watches(self) -> List[WatchSpec]:
        """What the service follows: each backend's ``WatchSpec``."""
        return [b.watch() for b in self.backends]

    def holders(self, instances: Sequence[Instance]) -> Dict[str, List[Holder]]:
        """Processes holding each instance's VFIO group open, keyed by instance uuid (only held ones appear)."""
        groups = {i.iommu_group: i.uuid for i in instances if i.iommu_group is not None}
        return {groups[g]: h for g, h in find_holders(self.paths, groups).items()}


__all__ = ["Host", "Holder", "Backend", "MdevBackend", "NvidiaVfBackend", "TypeScope", "WatchSpec"]
