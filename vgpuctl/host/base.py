"""The interface every host backend implements (``Backend``), and what it hands the service (``WatchSpec``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Callable, Collection, Hashable, List, Mapping, Optional, Set, Tuple

from ..model import BackendKind, Instance, Parent, VgpuType

if TYPE_CHECKING:
    from .rules import BackendRules


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


class Backend:
    """The interface every host backend implements: one per way a host makes vGPUs (``MdevBackend``: the kernel's
    mdev core; ``NvidiaVfBackend``: NVIDIA's per-VF vendor VFIO; ``MemoryBackend``: either, over the simulator's
    in-memory machine).  ``Host`` merges their inventories and routes each call to the backend that owns the parent;
    it calls nothing a backend does not declare here.

    A subclass must implement ``read``, ``write_create``, ``write_remove``, ``present`` and ``watch``; ``create``,
    ``remove`` and the rest have defaults that fit a backend without the notion (no holders of a parent, no hints,
    a uuid identity).  ``rules`` (a ``vgpuctl.host.rules.BackendRules``) is what the pure core asks about the
    backend's instances: whether they are named by their parent, one per parent, re-typed by destroy + create, and
    whether the GPU's mixing depends on a heterogeneous mode.  A backend whose instances obey a rule the core does not
    know yet adds a field there (with a default that keeps the others as they are), not a ``BackendKind`` test in the
    core.
    """

    kind: BackendKind
    rules: "BackendRules"

    # --- inventory ----------------------------------------------------------------------------------------------
    def read(self, *, types: TypeScope = TypeScope.ALL) -> Tuple[List[Parent], List[VgpuType], List[Instance]]:
        """One consistent-enough read of this backend's parents, types (as far as asked) and instances."""
        raise NotImplementedError

    def present(self, ids: Collection[str]) -> Set[str]:
        """Which of ``ids`` (this backend's identities) are on the host now, in one look for the whole batch."""
        raise NotImplementedError

    def exists(self, ident: str) -> bool:
        """Whether the instance ``ident`` is on the host now (one cheap look, no full read)."""
        return ident in self.present([ident])

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def identity(self, *, parent: str, requested: Optional[str]) -> str:
        """The identity the next instance on ``parent`` gets: ``requested`` (a canonical UUID the caller checked) or
        a fresh random UUID.  A backend whose instances are named otherwise (an NVIDIA VF's address) overrides it
        and raises ``InvalidInput`` for a ``requested`` that cannot be."""
        if requested is not None:
            return requested
        import uuid as uuidlib  # only create pays for it

        return str(uuidlib.uuid4())

    def busy(self, parent: str) -> List[str]:
        """Who holds ``parent`` itself open, so that it must not get an instance (an NVIDIA VF passed to a VM), one
        description each; empty where the backend has no such notion."""
        return []

    def create(self, *, parent: str, type_id: str, uuid: str) -> Instance:
        """Make one instance; raise a typed error for each way the host refuses.  Preconditions are the caller's."""
        raise NotImplementedError

    def remove(self, instance: Instance) -> None:
        """Remove one instance and confirm it is gone.  The caller has checked that nothing holds it."""
        raise NotImplementedError

    def write_create(self, *, parent: str, type_id: str, uuid: str) -> object:
        """``create``'s host write alone (its own preconditions and typed errors), the new instance not read back:
        for a batch of writes that ``present`` verifies once."""
        raise NotImplementedError

    def write_remove(self, instance: Instance) -> None:
        """``remove``'s host write alone, not confirmed: for a batch that ``present`` verifies once."""
        raise NotImplementedError

    # --- for the operator and the service -----------------------------------------------------------------------
    def sriov_disabled(self) -> List[str]:
        """Physical GPUs that could host this backend's vGPUs on SR-IOV VFs but have none enabled (empty: none, or
        no such notion)."""
        return []

    def hints(self) -> List[str]:
        """Why devices one may expect are missing (a GPU without SR-IOV VFs), one line each, saying what to do."""
        return []

    def watch(self) -> WatchSpec:
        """What the service must follow so that a change of this backend's parents, types or instances starts a
        pass (kernel uevents, or a polled signature)."""
        raise NotImplementedError
