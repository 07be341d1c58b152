"""The planner: what must change on the host to reach the desired state.  Pure: no I/O, no clock, no randomness.

``plan(inventory, state, desired, ...)`` compares what the host has (``Inventory``), what vgpuctl owns (``State``)
and what the files ask for (``DesiredState``), and returns a ``Plan``: actions in the order ``apply`` runs them
(detaches first, so a device can move between domains, then destroys, to free capacity, then creates in file order,
then attaches).  An action that must not or cannot run now carries a ``Block`` with the reason; it stays in the plan,
so a plan is empty only when the host matches.

The safety rules live here, in one place the property tests check:

- only instances in ``state.owned`` are ever destroyed (a foreign device in the way blocks the create instead);
- an instance someone uses (``users``: processes, libvirt domains) is never destroyed: its destroy is blocked;
- a parent that is not registered yet blocks its instances with ``PARENT_MISSING``, which the service retries;
- what the libvirt hook created for a running domain (``on_demand``) is the hook's to destroy, not the plan's;
- only attachments vgpuctl made (recorded in the domain's vgpuctl metadata) are ever detached, and only from a
  desired instance whose ``domain`` no longer names that domain; an instance dropped from the desired state keeps
  its domain, and its destroy stays blocked while the domain references it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from .model import Instance, Inventory
from .spec import AttachMode, DesiredInstance, DesiredState, desired_type, host_parent
from .state import ORIGIN_APPLY, State


class Op(str, Enum):
    CREATE = "create"
    DESTROY = "destroy"
    ATTACH = "attach"
    DETACH = "detach"

    def __str__(self) -> str:
        return self.value

    @property
    def sign(self) -> str:
        return {"create": "+", "destroy": "-", "attach": "~", "detach": "~"}[self.value]


class Block(str, Enum):
    IN_USE = "in-use"  #: a process or domain uses the device: it is never removed
    FOREIGN = "foreign"  #: a device vgpuctl does not own has the desired uuid but another type or parent
    PARENT_MISSING = "parent-missing"  #: the parent is not registered (driver loading): retried with backoff
    TYPE_UNKNOWN = "type-unknown"  #: the parent does not offer the type
    NO_PLACEMENT = "no-placement"  #: the placement engine found no parent, or is not available
    LIBVIRT = "libvirt"  #: attaching needs libvirt, which is not configured
    LIBVIRT_DOWN = "libvirt-unreachable"  #: libvirt is configured but could not be read: retried
    DEPENDS = "depends"  #: waits for another blocked action of the same instance

    def __str__(self) -> str:
        return self.value

    @property
    def retryable(self) -> bool:
        """Whether time alone may clear it (the service retries these with backoff)."""
        return self in (Block.PARENT_MISSING, Block.NO_PLACEMENT, Block.IN_USE, Block.DEPENDS, Block.LIBVIRT_DOWN)


@dataclass(frozen=True)
class Action:
    op: Op
    uuid: str
    parent: Optional[str]
    type_id: str  #: the resolved type id; the type as written where it did not resolve
    name: Optional[str] = None  #: desired instance name (None for an instance only the state file knows)
    domain: Optional[str] = None
    mode: Optional[AttachMode] = None
    why: str = ""
    block: Optional[Block] = None
    detail: str = ""  #: what blocks it, for people

    @property
    def blocked(self) -> bool:
        return self.block is not None

    def line(self) -> str:
        """``+ create UUID TYPE on PARENT (name)`` and friends; blocked ones end with ``[blocked: why]``."""
        if self.op is Op.ATTACH:
            text = f"~ attach {self.uuid} to {self.domain} ({self.mode})"
        elif self.op is Op.DETACH:
            text = f"~ detach {self.uuid} from {self.domain} ({self.mode})"
        else:
            text = f"{self.op.sign} {self.op} {self.uuid} {self.type_id} on {self.parent or '?'}"
        extras = [x for x in (self.name, self.why) if x]
        if extras:
            text += f" ({'; '.join(extras)})"
        if self.block is not None:
            text += f" [blocked: {self.block}: {self.detail}]"
        return text


@dataclass(frozen=True)
class Plan:
    actions: Tuple[Action, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.actions

    @property
    def runnable(self) -> Tuple[Action, ...]:
        return tuple(a for a in self.actions if a.block is None)

    @property
    def blocked(self) -> Tuple[Action, ...]:
        return tuple(a for a in self.actions if a.block is not None)


#: A placement engine: called as ``placer(inventory, to_place, creates, destroys)`` with the desired instances that
#: need a parent, the plan's runnable creates so far as (uuid, parent, type id) and the uuids it destroys; returns
#: instance name -> parent, or a ``PlacementFailure`` saying why none.  Pure, like the planner.
Placer = Callable[
    [Inventory, Sequence[DesiredInstance], Sequence[Tuple[str, str, str]], Sequence[str]],
    Mapping[str, "str | PlacementFailure"],
]


@dataclass(frozen=True)
class PlacementFailure:
    reason: str


@dataclass(frozen=True)
class DomainAttachment:
    """One libvirt domain referencing one instance, as the attachment source read it."""

    domain: str
    running: bool = False
    live: bool = False  #: the running domain's XML references the device
    config: bool = False  #: the persistent definition references it
    recorded_live: bool = False  #: vgpuctl's metadata in the running XML records it (as the host has it)
    recorded_config: bool = False  #: vgpuctl's metadata in the persistent definition records it

    @property
    def recorded(self) -> bool:
        """vgpuctl attached it: its metadata in either definition names the device."""
        return self.recorded_live or self.recorded_config

    def satisfies(self, mode: AttachMode) -> bool:
        """Whether every definition ``mode`` asks for has the device and vgpuctl's record of it."""
        live_ok = self.live and self.recorded_live
        config_ok = self.config and self.recorded_config
        if mode is AttachMode.LIVE:
            return live_ok
        if mode is AttachMode.CONFIG:
            return config_ok
        return live_ok and config_ok

    @property
    def present(self) -> Optional[AttachMode]:
        """The definitions a detach must clean (device or record), as a mode; None when neither."""
        live = self.live or self.recorded_live
        config = self.config or self.recorded_config
        if live and config:
            return AttachMode.BOTH
        if live:
            return AttachMode.LIVE
        return AttachMode.CONFIG if config else None


Users = Mapping[str, Sequence[str]]
#: uuid -> the domains whose live or persistent XML references it (or whose vgpuctl metadata records it)
Attachments = Mapping[str, FrozenSet[DomainAttachment]]


def _matches(inst: Instance, d: DesiredInstance, inventory: Inventory) -> bool:
    """Whether the existing ``inst`` already is ``d``: the right type, and the pinned parent if one is pinned."""
    if d.parent is not None and host_parent(inventory, d.parent) != inst.parent:
        return False
    return desired_type(inventory, inst.parent, d) == inst.type_id


def _manages(inst: Instance, d: Optional[DesiredInstance], state: State, on_demand: Collection[str]) -> bool:
    """Whether the desired state may destroy or re-type ``inst``: only a device vgpuctl owns, and, where the desired
    state does not declare it, only one that apply itself made (not one from ``vgpuctl create`` or the hook)."""
    owned = state.owned.get(inst.uuid)
    if owned is None:
        return False
    if d is not None:
        return True  # declared: the desired state says what it must be
    return owned.origin == ORIGIN_APPLY and inst.uuid not in on_demand


def destroy_candidates(
    inventory: Inventory, state: State, desired: DesiredState, on_demand: Collection[str] = ()
) -> Tuple[Instance, ...]:
    """Owned instances the plan would destroy if nobody used them: whose in-use check is worth its cost."""
    want = desired.by_uuid()
    out = []
    for inst in inventory.instances:
        d = want.get(inst.uuid)
        if not _manages(inst, d, state, on_demand):
            continue
        if d is None or not _matches(inst, d, inventory):
            out.append(inst)
    return tuple(out)


def plan(
    inventory: Inventory,
    state: State,
    desired: DesiredState,
    *,
    users: Optional[Users] = None,
    attachments: Optional[Attachments] = None,
    placer: Optional[Placer] = None,
    libvirt_error: Optional[str] = None,
    on_demand: Collection[str] = (),
) -> Plan:
    """The actions that take ``inventory`` to ``desired``.  ``users``: who uses which instance (uuid -> holders);
    ``attachments``: uuid -> the domains that reference it (``DomainAttachment``), or None when libvirt is not
    configured (``libvirt_error``: or configured but unreadable, and why); ``placer``: the placement engine, or None
    (then only instances with a parent can be placed); ``on_demand``: instances the libvirt hook made for a running
    domain, which the desired state neither destroys nor reports unless it declares them."""
    users = users or {}
    want = desired.by_uuid()
    destroys: List[Action] = []
    creates: List[Action] = []
    attaches: List[Action] = []
    detaches: List[Action] = []
    blocked_uuids: Dict[str, str] = {}  #: uuid -> why its create must wait

    # 1. owned instances that are not wanted, or not as they are: destroy unless in use
    for inst in inventory.instances:
        d = want.get(inst.uuid)
        if not _manages(inst, d, state, on_demand):
            continue
        if d is not None and _matches(inst, d, inventory):
            continue
        why = "not in the desired state" if d is None else "desired with another type or parent"
        who = list(users.get(inst.uuid, ()))
        if who:
            destroys.append(
                Action(Op.DESTROY, inst.uuid, inst.parent, inst.type_id, d.name if d else None, why=why,
                       block=Block.IN_USE, detail="in use by " + ", ".join(who))
            )
            blocked_uuids[inst.uuid] = f"the old device is in use by {', '.join(who)}"
        else:
            destroys.append(Action(Op.DESTROY, inst.uuid, inst.parent, inst.type_id, d.name if d else None, why=why))

    # 2. desired instances that do not exist as wanted: create (pinned first, then placed)
    freed = {a.uuid for a in destroys if a.block is None}
    to_place: List[DesiredInstance] = []
    for d in desired.instances:
        inst = inventory.instance(d.uuid)
        if inst is not None and _matches(inst, d, inventory):
            continue
        if inst is not None and inst.uuid not in freed:
            if d.uuid in blocked_uuids:
                creates.append(_blocked_create(d, inst.parent, d.type, Block.DEPENDS, blocked_uuids[d.uuid]))
            else:
                creates.append(
                    _blocked_create(d, inst.parent, d.type, Block.FOREIGN,
                                    f"a device vgpuctl does not own has this uuid ({inst.type_id} on {inst.parent})")
                )
            continue
        if d.parent is None:
            to_place.append(d)
            continue
        parent = host_parent(inventory, d.parent)
        if parent is None:
            creates.append(_blocked_create(d, d.parent, d.type, Block.PARENT_MISSING,
                                           f"parent {d.parent} is not registered (yet)"))
            continue
        tid = desired_type(inventory, parent, d)
        if tid is None:
            creates.append(_blocked_create(d, parent, d.type, Block.TYPE_UNKNOWN,
                                           f"{parent} does not offer type {d.type}"))
            continue
        creates.append(Action(Op.CREATE, d.uuid, parent, tid, d.name, why="desired"))

    if to_place:
        if placer is None:
            for d in to_place:
                creates.append(_blocked_create(d, None, d.type, Block.NO_PLACEMENT,
                                               "no placement engine is installed: give this instance a parent"))
        elif not inventory.parents:
            for d in to_place:
                creates.append(_blocked_create(d, None, d.type, Block.PARENT_MISSING, "no parent is registered (yet)"))
        else:
            pinned = [(a.uuid, a.parent or "", a.type_id) for a in creates if a.block is None]
            placed = placer(inventory, to_place, pinned, sorted(freed))
            for d in to_place:
                where = placed.get(d.name)
                if isinstance(where, str):
                    tid = desired_type(inventory, where, d)
                    if tid is not None:
                        creates.append(Action(Op.CREATE, d.uuid, where, tid, d.name, why="placed"))
                        continue
                    where = PlacementFailure(f"placement chose {where}, which does not offer {d.type}")
                reason = where.reason if isinstance(where, PlacementFailure) else "no parent fits"
                creates.append(_blocked_create(d, None, d.type, Block.NO_PLACEMENT, reason))

    # 3. attachments: detach what vgpuctl attached to a domain the instance no longer names, then attach
    creates_by_uuid = {a.uuid: a for a in creates}
    for d in desired.instances:
        create = creates_by_uuid.get(d.uuid)
        inst = inventory.instance(d.uuid)
        parent = create.parent if create is not None else (inst.parent if inst else None)
        type_id = create.type_id if create is not None else (inst.type_id if inst else d.type)
        current = sorted(attachments.get(d.uuid, frozenset()) if attachments is not None else (),
                         key=lambda a: a.domain)
        for att in current:
            mode = att.present
            if att.domain != d.domain and att.recorded and mode is not None:
                why = f"desired in domain {d.domain}" if d.domain else "no domain desired"
                detaches.append(Action(Op.DETACH, d.uuid, parent, type_id, d.name, att.domain, mode, why=why))
        if d.domain is None:
            continue
        if attachments is None:
            attaches.append(Action(Op.ATTACH, d.uuid, parent, type_id, d.name, d.domain, d.attach, why="desired",
                                   block=Block.LIBVIRT_DOWN if libvirt_error else Block.LIBVIRT,
                                   detail=libvirt_error or "libvirt not configured"))
            continue
        here = next((a for a in current if a.domain == d.domain), None)
        if here is not None and here.satisfies(d.attach) and create is None:
            continue
        foreign = [a.domain for a in current if a.domain != d.domain and not a.recorded and (a.live or a.config)]
        if create is not None and create.block is not None:
            attaches.append(Action(Op.ATTACH, d.uuid, parent, type_id, d.name, d.domain, d.attach, why="desired",
                                   block=Block.DEPENDS, detail="the device cannot be created yet"))
        elif foreign:
            attaches.append(Action(Op.ATTACH, d.uuid, parent, type_id, d.name, d.domain, d.attach, why="desired",
                                   block=Block.IN_USE,
                                   detail="referenced by " + ", ".join(f"domain {n!r}" for n in foreign)
                                   + ", which vgpuctl did not attach it to"))
        else:
            attaches.append(Action(Op.ATTACH, d.uuid, parent, type_id, d.name, d.domain, d.attach, why="desired"))

    destroys.sort(key=lambda a: a.uuid)
    return Plan(actions=tuple(detaches + destroys + creates + attaches))


def _blocked_create(d: DesiredInstance, parent: Optional[str], type_id: str, block: Block, detail: str) -> Action:
    return Action(Op.CREATE, d.uuid, parent, type_id, d.name, why="desired", block=block, detail=detail)


def predicted(inventory: Inventory, p: Plan) -> Tuple[Tuple[str, str, str], ...]:
    """(uuid, parent, type) of the instances once the plan's runnable actions are done: the 'after' of a dry run."""
    gone = {a.uuid for a in p.runnable if a.op is Op.DESTROY}
    now = {(i.uuid, i.parent, i.type_id) for i in inventory.instances if i.uuid not in gone}
    now |= {(a.uuid, a.parent or "", a.type_id) for a in p.runnable if a.op is Op.CREATE}
    return tuple(sorted(now))
