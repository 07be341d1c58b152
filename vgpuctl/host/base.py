"""The interface every host backend implements."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Collection, Hashable, List, Mapping, Protocol, Set, Tuple

from ..model import BackendKind, Instance, Parent, VgpuType


class TypeScope(Enum):
    """How much of the type tables a read needs: reading every type costs several sysfs reads per type."""

    ALL = "all"  #: every type of every parent (types, placement, plan)
    USED = "used"  #: only the types that instances have (list)
    NONE = "none"


@dataclass(frozen=True)
class WatchSpec:
    """What a backend's capacity and instances depend on, for the service to watch.

    ``uevent(subsystem, properties)``: whether a kernel uevent concerns this backend (pyudev's ``Device.subsystem``
    and ``properties``).  ``signature()``: a cheap value that changes whenever such an event would have come (a few
    readdirs and reads), compared every poll interval where uevents are not available."""

    name: str
    uevent: Callable[[str, Mapping[str, str]], bool]
    signature: Callable[[], Hashable]


class Backend(Protocol):
    kind: BackendKind

    def read(self, *, types: TypeScope = TypeScope.ALL) -> Tuple[List[Parent], List[VgpuType], List[Instance]]:
        """One consistent-enough read of this backend's parents, types (as far as asked) and instances."""

    def create(self, *, parent: str, type_id: str, uuid: str) -> Instance:
        """Make one instance; raise a typed error for each way the host refuses.  Preconditions are the caller's."""

    def remove(self, instance: Instance) -> None:
        """Remove one instance and confirm it is gone.  The caller has checked that nothing holds it."""

    def write_create(self, *, parent: str, type_id: str, uuid: str) -> object:
        """``create``'s host write alone (its own preconditions and typed errors), the new instance not read back:
        for a batch of writes that ``present`` verifies once."""

    def write_remove(self, instance: Instance) -> None:
        """``remove``'s host write alone, not confirmed: for a batch that ``present`` verifies once."""

    def present(self, ids: Collection[str]) -> Set[str]:
        """Which of ``ids`` (this backend's identities) are on the host now, in one look for the whole batch."""

    def watch(self) -> WatchSpec:
        """What the service must follow so that a change of this backend's parents, types or instances starts a
        pass (kernel uevents, or a polled signature)."""
