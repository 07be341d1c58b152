"""Small builders for the reconcile tests: inventories and desired states as values."""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple

from vgpuctl.model import Instance, Parent, VgpuType, sorted_inventory
from vgpuctl.spec import DesiredInstance, DesiredState, Mark, derive_uuid
from vgpuctl.state import ORIGIN_APPLY, Owned, State

PARENTS = {"mtty": ("mtty-1", "mtty-2"), "0000:3b:00.0": ("nvidia-230", "nvidia-231")}
NAMES = {
    "mtty-1": "Single port serial",
    "mtty-2": "Dual port serial",
    "nvidia-230": "GRID T4-1Q",
    "nvidia-231": "GRID T4-2Q",
}


def inventory(instances: Iterable[Tuple[str, str, str]] = (), parents: Sequence[str] = tuple(PARENTS)):
    ps = [Parent(name=p) for p in parents]
    ts = [VgpuType(parent=p, type_id=t, name=NAMES[t], available=8) for p in parents for t in PARENTS[p]]
    insts = [Instance(uuid=u, parent=p, type_id=t) for u, p, t in instances]
    return sorted_inventory(ps, ts, insts)


def state(owned: Iterable[Tuple[str, str, str]] = (), origin: str = ORIGIN_APPLY) -> State:
    """Ownership records as ``apply`` leaves them (``origin``: who made the devices)."""
    return State(owned={u: Owned(u, p, t, origin=origin) for u, p, t in owned})


def want(
    name: str, type_: str, parent: Optional[str] = "mtty", uuid: Optional[str] = None, domain: Optional[str] = None
) -> DesiredInstance:
    return DesiredInstance(
        name=name,
        uuid=uuid or derive_uuid(name),
        type=type_,
        parent=parent,
        domain=domain,
        uuid_derived=uuid is None,
        mark=Mark("test.yaml", 1),
    )


def desired(*items: DesiredInstance) -> DesiredState:
    return DesiredState(instances=tuple(items))
