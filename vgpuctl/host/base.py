"""The interface every host backend implements."""
from __future__ import annotations

from enum import Enum
from typing import List, Protocol, Tuple

from ..model import BackendKind, Instance, Parent, VgpuType


class TypeScope(Enum):
    """How much of the type tables a read needs: reading every type costs several sysfs reads per type."""

    ALL = "all"  #: every type of every parent (types, placement, plan)
    USED = "used"  #: only the types that instances have (list)
    NONE = "none"


class Backend(Protocol):
    kind: BackendKind

    def read(self, *, types: TypeScope = TypeScope.ALL) -> Tuple[List[Parent], List[VgpuType], List[Instance]]:
        """One consistent-enough read of this backend's parents, types (as far as asked) and instances."""

    def create(self, *, parent: str, type_id: str, uuid: str) -> Instance:
        """Make one instance; raise a typed error for each way the host refuses.  Preconditions are the caller's."""

    def remove(self, instance: Instance) -> None:
        """Remove one instance and confirm it is gone.  The caller has checked that nothing holds it."""
