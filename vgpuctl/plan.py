"""The planner: what must change on the host to reach the desired state.  Pure: no I/O, no clock, no randomness.

``plan(inventory, state, desired, ...)`` compares what the host has (``Inventory``), what vgpuctl owns (``State``)
and what the files ask for (``DesiredState``), and returns a ``Plan``: actions in the order ``apply`` runs them
(detaches first, so a device can move between domains, then destroys, to free capacity, then GPU-wide settings
(heterogeneous mode, then the vGPU scheduler), then creates in file order, then attaches).  An action that must not or cannot run now carries a ``Block`` with the reason; it stays in the plan,
so a plan is empty only when the host matches.

The safety rules live here, in one place the property tests check:

- only instances in ``state.owned`` are ever destroyed (a foreign device in the way blocks the create instead);
- an instance someone uses (``users``: processes, libvirt domains) is never destroyed: its destroy is blocked;
- a parent that is not registered yet blocks its instances with ``PARENT_MISSING``, which the service retries;
- an instance pinned to an NVIDIA vendor-VFIO VF is the vGPU on that VF (``spec.bind``: its id is the VF's
  address); one the desired state cannot mean there (``spec.vf_issues``: an explicit uuid, a second pin of one VF,
  the physical GPU as parent, placement landing on a VF) is blocked ``config`` and changes nothing;
- what the libvirt hook created for a running domain (``on_demand``) is the hook's to destroy and detach, not the
  plan's;
- only attachments vgpuctl made (recorded in the domain's vgpuctl metadata) are ever detached, and only from a
  desired instance whose ``domain`` no longer names that domain; an instance dropped from the desired state keeps
  its domain, and its destroy stays blocked while the domain references it;
- a pinned create is predicted with the placement engine's per-GPU rules (``placement.apply`` on the inventory after
  the plan's destroys and the creates before it): one the GPU cannot take is blocked ``no-capacity`` or ``type-mix``;
- an instance mdevctl defines (``foreign``: uuid -> its ``host.mdevctl.Definition``) is never destroyed, re-typed or
  created against that definition: a desired instance with an auto-start definition is *double-managed* and gets
  one blocked ``manage`` action (``foreign-managed``, with the fix); one with a manual definition of another type or
  parent is blocked the same way; an owned instance the plan would destroy is blocked instead;
- a GPU-wide setting (``gpus:``) is changed only from what NVML reported (``gpus``: ``GpuObservation`` per GPU); it
  is blocked ``nvml`` where NVML could not say, and ``in-use`` while a vGPU runs on that GPU (heterogeneous mode:
  while the GPU hosts any vGPU at all), the rule ``vgpuctl sched set``/``hetero set`` enforce.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Callable, Collection, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from .host.rules import named_by_parent, offers_after_destroy, predicted_modes
from .model import Instance, Inventory, Vendor
from .spec import (
    AttachMode,
    DesiredGpu,
    DesiredInstance,
    DesiredState,
    bind,
    desired_type,
    host_parent,
    no_type_reason,
    vf_issues,
)
from .state import ORIGIN_APPLY, State


class Op(str, Enum):
    CREATE = "create"
    DESTROY = "destroy"
    ATTACH = "attach"
    DETACH = "detach"
    SCHED = "sched"  #: set a GPU's vGPU scheduler (NVML)
    HETERO = "hetero"  #: set a GPU's heterogeneous vGPU mode (NVML)
    SRIOV = "sriov"  #: enable a GPU's SR-IOV VFs (sriov_numvfs, or sriov-manage)
    MIG = "mig"  #: set a GPU's MIG mode and GPU instances (NVML)
    MANAGE = "manage"  #: take over an instance another manager (mdevctl) also defines: never runnable, always blocked
    PARAMS = "params"  #: set an existing vGPU's NVIDIA plugin parameters (nvidia/vgpu_params)

    def __str__(self) -> str:
        return self.value

    @property
    def sign(self) -> str:
        return {"create": "+", "destroy": "-"}.get(self.value, "~")

    @property
    def gpu_setting(self) -> bool:
        return self in (Op.SCHED, Op.HETERO, Op.SRIOV, Op.MIG)

    @property
    def shapes_gpu(self) -> bool:
        """Whether it changes which parents and types the GPU offers (the host is read again after it)."""
        return self in (Op.SRIOV, Op.MIG)


class Block(str, Enum):
    IN_USE = "in-use"  #: a process or domain uses the device: it is never removed
    FOREIGN = "foreign"  #: a device vgpuctl does not own has the desired uuid but another type or parent
    PARENT_MISSING = "parent-missing"  #: the parent is not registered (driver loading): retried with backoff
    TYPE_UNKNOWN = "type-unknown"  #: the parent does not offer the type
    NO_PLACEMENT = "no-placement"  #: the placement engine found no parent, or is not available
    LIBVIRT = "libvirt"  #: attaching needs libvirt, which is not configured
    LIBVIRT_DOWN = "libvirt-unreachable"  #: libvirt is configured but could not be read: retried
    DEPENDS = "depends"  #: waits for another blocked action of the same instance
    NO_CAPACITY = "no-capacity"  #: the pinned parent's GPU has no room left for the type (after the plan's changes)
    TYPE_MIX = "type-mix"  #: the pinned parent's GPU holds (or will hold) a type its mixing rule forbids next to it
    NVML = "nvml"  #: a GPU-wide setting cannot be read through NVML (no library, driver loading, not a vGPU host)
    UNSUPPORTED = "unsupported"  #: the GPU does not support the desired setting (policy, time-slice range)
    CONFIG = "config"  #: the desired state cannot mean anything on this host as written (vendor-VFIO naming)
    FOREIGN_MANAGED = "foreign-managed"  #: mdevctl defines the instance too: vgpuctl never fights it

    def __str__(self) -> str:
        return self.value

    @property
    def retryable(self) -> bool:
        """Whether time alone may clear it (the service retries these with backoff)."""
        return self in (
            Block.PARENT_MISSING,
            Block.NO_PLACEMENT,
            Block.IN_USE,
            Block.DEPENDS,
            Block.LIBVIRT_DOWN,
            Block.NVML,
        )


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
    #: a GPU-wide setting's desired value (``DesiredScheduler`` or the heterogeneous bool); ``parent`` is the GPU,
    #: ``type_id`` the value as text, ``current`` what NVML reports now, ``uuid`` empty.  A ``params`` action's and
    #: a create's: the vGPU parameters to write (``vgpu_params.Params``; a create's None: none managed)
    value: Any = None
    current: str = ""

    @property
    def blocked(self) -> bool:
        return self.block is not None

    def line(self) -> str:
        """``+ create UUID TYPE on PARENT (name)`` and friends; blocked ones end with ``[blocked: why]``."""
        if self.op is Op.ATTACH:
            text = f"~ attach {self.uuid} to {self.domain} ({self.mode})"
        elif self.op is Op.DETACH:
            text = f"~ detach {self.uuid} from {self.domain} ({self.mode})"
        elif self.op.gpu_setting:
            text = f"~ {self.op} GPU {self.parent} {self.current or '?'} -> {self.type_id}"
        elif self.op is Op.PARAMS:
            text = f"~ params {self.uuid} {self.current or '?'} -> {_params_text(self.value)}"
        else:
            text = f"{self.op.sign} {self.op} {self.uuid} {self.type_id} on {self.parent or '?'}"
            if self.op is Op.CREATE and self.value is not None:
                text += f" with params {_params_text(self.value)}"
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
class GpuObservation:
    """What NVML says about one physical GPU's settings, read by the caller for the planner."""

    gpu: str
    policy: Optional[str] = None  #: best-effort, equal-share, fixed-share (``nvml.Scheduler.policy``)
    timeslice_us: Optional[int] = None  #: None: the driver's default
    supported: Tuple[str, ...] = ()  #: policies the GPU supports (empty: not known)
    min_timeslice_us: Optional[int] = None
    max_timeslice_us: Optional[int] = None
    heterogeneous: Optional[bool] = None
    running: Tuple[str, ...] = ()  #: what runs on the GPU now: NVML's active vGPUs, instances a process holds
    unavailable: Optional[str] = None  #: why NVML cannot tell (one line); the other fields are then unset
    mig: Any = None  #: ``nvml.MigState`` (None: not read)
    #: SR-IOV from sysfs (not NVML): (sriov_numvfs, sriov_totalvfs), or None where the GPU has no SR-IOV
    sriov: Optional[Tuple[int, int]] = None
    #: vGPU type id -> name as NVML knows it (``nvmlVgpuTypeGetName``): a typed VF's type when no sibling VF lists it
    #: any more (a full GPU, a used-up GPU instance profile)
    type_names: Tuple[Tuple[int, str], ...] = ()

    def scheduler_text(self) -> str:
        if self.policy is None:
            return "?"
        return self.policy + (f" {self.timeslice_us / 1000:g}ms" if self.timeslice_us else "")


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


def _with_params(a: Action, params: Any, inventory: Inventory) -> Action:
    """A create that also writes the vGPU parameters; blocked ``config`` where the parent is not NVIDIA's."""
    if params is None or a.op is not Op.CREATE:
        return a
    p = inventory.parent(a.parent or "")
    if a.block is None and p is not None and p.vendor is not Vendor.NVIDIA:
        return replace(
            a,
            value=params,
            block=Block.CONFIG,
            detail=f"{p.name} is not an NVIDIA GPU: its vGPUs have no nvidia/vgpu_params; drop 'params'",
        )
    return replace(a, value=params)


def _params_text(params: Any) -> str:
    from .vgpu_params import text_of

    return text_of(params)


#: why a params change does not touch a running VM: what NVIDIA's user guide says about vgpu_params
PARAMS_WHY = "takes effect at the next VM start"

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
    desired = bind(desired, inventory)
    return tuple(i for i, _ in _unwanted(inventory, state, desired.by_uuid(), vf_issues(desired, inventory), on_demand))


def _unwanted(
    inventory: Inventory,
    state: State,
    want: Mapping[str, DesiredInstance],
    issues: Collection[str],
    on_demand: Collection[str],
) -> List[Tuple[Instance, Optional[DesiredInstance]]]:
    """Owned instances that are not wanted, or not as they are, each with its desired instance (None: undeclared);
    ``want``: the bound desired state by uuid.  What ``destroy_candidates`` returns and ``plan`` destroys unless in use."""
    out = []
    for inst in inventory.instances:
        d = want.get(inst.uuid)
        if not _manages(inst, d, state, on_demand) or (d is not None and d.name in issues):
            continue
        if d is None or not _matches(inst, d, inventory):
            out.append((inst, d))
    return out


def needs_domains(d: DesiredInstance) -> bool:
    """Whether placing ``d`` depends on libvirt: its domain's labels, or other VMs' tenants (quotas) and groups
    (anti-affinity).  Without a domain and a tenant no domain can change the answer."""
    return bool(d.domain or (d.placement is not None and d.placement.tenant))


def unjudged(a: "Action") -> bool:
    """An attach that waits for libvirt says nothing about the host: whether the domain has the device is unknown
    (``check`` does not count it as a difference)."""
    return a.op is Op.ATTACH and a.block is Block.LIBVIRT_DOWN


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
    gpus: Optional[Mapping[str, GpuObservation]] = None,
    modes: Optional[Mapping[str, Any]] = None,
    foreign: Optional[Mapping[str, Any]] = None,
    params: Optional[Mapping[str, Any]] = None,
) -> Plan:
    """The actions that take ``inventory`` to ``desired``.  ``users``: who uses which instance (uuid -> holders);
    ``attachments``: uuid -> the domains that reference it (``DomainAttachment``), or None when libvirt is not
    configured (``libvirt_error``: or configured but unreadable, and why: then every destroy, every placement that
    needs the domains (``needs_domains``) and every attach is blocked ``libvirt-unreachable``); ``placer``: the placement engine, or None
    (then only instances with a parent can be placed); ``on_demand``: instances the libvirt hook made for a running
    domain, which the desired state neither destroys nor reports unless it declares them; ``gpus``: NVML's view of
    the GPUs the desired state's ``gpus:`` names and of vendor-VFIO GPUs with pinned instances (None: not read);
    their heterogeneous mode decides a vendor-VFIO GPU's mixing rule (one NVML did not report is predicted
    mixed-size, the most permissive rule, so that only the host refuses); ``modes``: physical GPU -> the placement
    engine's ``MixMode`` for any other GPU that is not homogeneous; ``foreign``: uuid -> mdevctl's definition of it
    (``host.mdevctl.Definition``: ``parent``, ``type_id``, ``auto``, ``label``, ``path``); ``params``: uuid -> the NVIDIA vGPU
    parameters the instance has now (``vgpu_params.Params``; None: it has no ``vgpu_params``), for the existing
    instances whose desired state sets parameters (one missing here is not compared)."""
    users = users or {}
    foreign = foreign or {}
    inventory = _named(inventory, gpus or {})
    desired = bind(desired, inventory)  # an instance pinned to a vendor-VFIO VF is named by the VF
    issues = vf_issues(desired, inventory)  #: instances the desired state cannot mean here: left alone, blocked
    want = desired.by_uuid()
    destroys: List[Action] = []
    creates: List[Action] = []
    attaches: List[Action] = []
    detaches: List[Action] = []
    blocked_uuids: Dict[str, str] = {}  #: uuid -> why its create must wait

    # 1. owned instances that are not wanted, or not as they are: destroy unless in use
    for inst, d in _unwanted(inventory, state, want, issues, on_demand):
        why = "not in the desired state" if d is None else "desired with another type or parent"
        who = list(users.get(inst.uuid, ()))
        fd = foreign.get(inst.uuid)
        if fd is not None:
            blocked_uuids[inst.uuid] = f"mdevctl defines the device ({fd.label})"
            if d is not None and fd.auto:
                continue  # double-managed: reported once, by its manage action
            destroys.append(
                Action(
                    Op.DESTROY,
                    inst.uuid,
                    inst.parent,
                    inst.type_id,
                    d.name if d else None,
                    why=why,
                    block=Block.FOREIGN_MANAGED,
                    detail=_foreign_detail(fd, inst.uuid, d.name if d else None),
                )
            )
        elif who:
            destroys.append(
                Action(
                    Op.DESTROY,
                    inst.uuid,
                    inst.parent,
                    inst.type_id,
                    d.name if d else None,
                    why=why,
                    block=Block.IN_USE,
                    detail="in use by " + ", ".join(who),
                )
            )
            blocked_uuids[inst.uuid] = f"the old device is in use by {', '.join(who)}"
        elif libvirt_error:  # a domain definition might reference it: never removed unseen
            destroys.append(
                Action(
                    Op.DESTROY,
                    inst.uuid,
                    inst.parent,
                    inst.type_id,
                    d.name if d else None,
                    why=why,
                    block=Block.LIBVIRT_DOWN,
                    detail=f"{libvirt_error}: a domain might reference it",
                )
            )
            blocked_uuids[inst.uuid] = "the old device cannot be destroyed while libvirt is unreachable"
        else:
            destroys.append(Action(Op.DESTROY, inst.uuid, inst.parent, inst.type_id, d.name if d else None, why=why))

    # 2. GPU-wide settings (before the creates: heterogeneous mode needs a GPU without vGPUs)
    freed = {a.uuid for a in destroys if a.block is None}
    settings: List[Action] = []
    for g in desired.gpus:
        settings += _gpu_actions(g, (gpus or {}).get(g.gpu), inventory, freed, observed=gpus is not None)
    shaping = {a.parent for a in settings if a.op.shapes_gpu and a.block is None}
    hetero_to = {
        a.parent: bool(a.value) for a in settings if a.op is Op.HETERO and a.block is None and a.parent is not None
    }

    # 3. desired instances that do not exist as wanted: create (pinned first, then placed)
    hetero_seen = {g: o.heterogeneous for g, o in (gpus or {}).items() if o.heterogeneous is not None}
    fit = _CapacityModel(inventory, freed, modes or {}, {**hetero_seen, **hetero_to})
    to_place: List[DesiredInstance] = []
    for d in desired.instances:
        if d.name in issues:
            creates.append(_blocked_create(d, d.parent, d.type, Block.CONFIG, issues[d.name][1]))
            continue
        inst = inventory.instance(d.uuid)
        fd = foreign.get(d.uuid)
        if fd is not None and (fd.auto or not _defines_as(fd, d, inventory)):
            where = inst.parent if inst is not None else fd.parent
            creates.append(
                Action(
                    Op.MANAGE,
                    d.uuid,
                    where,
                    inst.type_id if inst is not None else (fd.type_id or d.type),
                    d.name,
                    why="desired",
                    block=Block.FOREIGN_MANAGED,
                    detail=_foreign_detail(fd, d.uuid, d.name),
                )
            )
            continue
        if inst is not None and _matches(inst, d, inventory):
            continue
        if inst is not None and inst.uuid not in freed:
            if d.uuid in blocked_uuids:
                creates.append(_blocked_create(d, inst.parent, d.type, Block.DEPENDS, blocked_uuids[d.uuid]))
            else:
                creates.append(
                    _blocked_create(
                        d,
                        inst.parent,
                        d.type,
                        Block.FOREIGN,
                        f"a device vgpuctl does not own has this uuid ({inst.type_id} on {inst.parent})",
                    )
                )
            continue
        if d.parent is None:
            if libvirt_error and needs_domains(d):
                creates.append(
                    _blocked_create(
                        d,
                        None,
                        d.type,
                        Block.LIBVIRT_DOWN,
                        f"{libvirt_error}: placing it counts the domains' tenants and groups",
                    )
                )
                continue
            to_place.append(d)
            continue
        parent = host_parent(inventory, d.parent)
        if parent is None:
            creates.append(
                _blocked_create(d, d.parent, d.type, Block.PARENT_MISSING, f"parent {d.parent} is not registered (yet)")
            )
            continue
        tid = desired_type(inventory, parent, d)
        if tid is None:
            creates.append(_blocked_create(d, parent, d.type, Block.TYPE_UNKNOWN, no_type_reason(inventory, parent, d)))
            continue
        refused = fit.take(d.uuid, parent, tid)
        if refused is not None:
            creates.append(_blocked_create(d, parent, tid, refused[0], refused[1]))
            continue
        creates.append(Action(Op.CREATE, d.uuid, parent, tid, d.name, why="desired"))

    if to_place:
        if placer is None:
            for d in to_place:
                creates.append(
                    _blocked_create(
                        d,
                        None,
                        d.type,
                        Block.NO_PLACEMENT,
                        "no placement engine is installed: give this instance a parent",
                    )
                )
        elif not inventory.parents:
            for d in to_place:
                creates.append(_blocked_create(d, None, d.type, Block.PARENT_MISSING, "no parent is registered (yet)"))
        else:
            pinned = [(a.uuid, a.parent or "", a.type_id) for a in creates if a.block is None]
            placed = placer(inventory, to_place, pinned, sorted(freed))
            for d in to_place:
                where = placed.get(d.name)
                vf = inventory.parent(where) if isinstance(where, str) else None
                if vf is not None and named_by_parent(vf.backend):
                    creates.append(
                        _blocked_create(
                            d,
                            None,
                            d.type,
                            Block.CONFIG,
                            f"placement chose NVIDIA vendor-VFIO VF {where}, and a vGPU there is named by its VF, not by "
                            f'a uuid: pin it instead of placing it (parent: "{where}")',
                        )
                    )
                    continue
                if isinstance(where, str):
                    tid = desired_type(inventory, where, d)
                    if tid is not None:
                        creates.append(Action(Op.CREATE, d.uuid, where, tid, d.name, why="placed"))
                        continue
                    where = PlacementFailure(f"placement chose {where}, which does not offer {d.type}")
                reason = where.reason if isinstance(where, PlacementFailure) else "no parent fits"
                creates.append(_blocked_create(d, None, d.type, Block.NO_PLACEMENT, reason))

    # a create the GPU cannot take before its VFs or GPU instances exist waits for them (apply reads the host again
    # after such a change and runs what then fits; the service retries)
    if shaping:
        waits = (Block.TYPE_UNKNOWN, Block.PARENT_MISSING, Block.NO_CAPACITY, Block.TYPE_MIX)
        for k, a in enumerate(creates):
            p = inventory.parent(a.parent or "")
            if a.op is Op.CREATE and a.block in waits and p is not None and p.gpu in shaping:
                creates[k] = replace(
                    a, block=Block.DEPENDS, detail=f"waits for the GPU-wide change of GPU {p.gpu} ({a.detail})"
                )

    # 4. vGPU parameters: a create writes them before anything can start the VM; an existing vGPU gets them
    #    unless a VM runs it (then the libvirt hook writes them at the next start)
    creates = [_with_params(a, want[a.uuid].wanted_params, inventory) if a.uuid in want else a for a in creates]
    created = {a.uuid for a in creates}
    changes: List[Action] = []
    for d in desired.instances:
        wanted = d.wanted_params
        inst = inventory.instance(d.uuid)
        if wanted is None or inst is None or d.uuid in created or d.uuid in freed or params is None:
            continue
        if d.uuid not in params:
            continue
        now = params[d.uuid]
        if now == wanted:
            continue
        if now is None:
            changes.append(
                Action(
                    Op.PARAMS,
                    d.uuid,
                    inst.parent,
                    inst.type_id,
                    d.name,
                    why=PARAMS_WHY,
                    block=Block.CONFIG,
                    value=wanted,
                    current="?",
                    detail=f"{d.uuid} has no nvidia/vgpu_params (not an NVIDIA vGPU): drop 'params'",
                )
            )
            continue
        who = list(users.get(d.uuid, ()))
        changes.append(
            Action(
                Op.PARAMS,
                d.uuid,
                inst.parent,
                inst.type_id,
                d.name,
                why=PARAMS_WHY,
                value=wanted,
                current=_params_text(now),
                block=Block.IN_USE if who else None,
                detail=("a VM runs it (" + ", ".join(who) + "): the libvirt hook writes them at its next start")
                if who
                else "",
            )
        )
    creates += changes

    # 5. attachments: detach what vgpuctl attached to a domain the instance no longer names, then attach
    creates_by_uuid = {a.uuid: a for a in creates if a.op is Op.CREATE}
    for d in desired.instances:
        create = creates_by_uuid.get(d.uuid)
        inst = inventory.instance(d.uuid)
        parent = create.parent if create is not None else (inst.parent if inst else None)
        type_id = create.type_id if create is not None else (inst.type_id if inst else d.type)
        current = sorted(
            attachments.get(d.uuid, frozenset()) if attachments is not None else (), key=lambda a: a.domain
        )
        # the hook's attachments (an instance it made for a running domain, e.g. one exported into the desired
        # state) are the hook's, like the hook's destroys: never detached here, and an attach elsewhere waits
        ours = d.uuid not in on_demand
        for att in current:
            mode = att.present
            if att.domain != d.domain and att.recorded and ours and mode is not None:
                why = f"desired in domain {d.domain}" if d.domain else "no domain desired"
                detaches.append(Action(Op.DETACH, d.uuid, parent, type_id, d.name, att.domain, mode, why=why))
        if d.domain is None:
            continue
        if attachments is None:
            attaches.append(
                Action(
                    Op.ATTACH,
                    d.uuid,
                    parent,
                    type_id,
                    d.name,
                    d.domain,
                    d.attach,
                    why="desired",
                    block=Block.LIBVIRT_DOWN if libvirt_error else Block.LIBVIRT,
                    detail=libvirt_error or "libvirt not configured",
                )
            )
            continue
        here = next((a for a in current if a.domain == d.domain), None)
        if here is not None and here.satisfies(d.attach) and create is None:
            continue
        foreign = [
            a.domain for a in current if a.domain != d.domain and (not a.recorded or not ours) and (a.live or a.config)
        ]
        if create is not None and create.block is not None:
            attaches.append(
                Action(
                    Op.ATTACH,
                    d.uuid,
                    parent,
                    type_id,
                    d.name,
                    d.domain,
                    d.attach,
                    why="desired",
                    block=Block.DEPENDS,
                    detail="the device cannot be created yet",
                )
            )
        elif foreign:
            attaches.append(
                Action(
                    Op.ATTACH,
                    d.uuid,
                    parent,
                    type_id,
                    d.name,
                    d.domain,
                    d.attach,
                    why="desired",
                    block=Block.IN_USE,
                    detail="referenced by "
                    + ", ".join(f"domain {n!r}" for n in foreign)
                    + ", which vgpuctl did not attach it to",
                )
            )
        else:
            attaches.append(Action(Op.ATTACH, d.uuid, parent, type_id, d.name, d.domain, d.attach, why="desired"))

    destroys.sort(key=lambda a: a.uuid)
    return Plan(actions=tuple(detaches + destroys + settings + creates + attaches))


class _CapacityModel:
    """The inventory as the plan changes it, with placement's per-GPU rules deciding whether a pinned create fits.
    Built lazily: a plan without pinned creates never loads the placement engine."""

    def __init__(
        self, inventory: Inventory, freed: Collection[str], modes: Mapping[str, Any], hetero: Mapping[str, bool]
    ) -> None:
        self.base = inventory
        self.freed = sorted(freed)
        self.modes = modes
        self.hetero = hetero  #: heterogeneous mode per GPU: NVML's, or what the plan sets before the creates
        self.inv: Optional[Inventory] = None
        self.usage: Any = None

    def _start(self) -> Inventory:
        from . import placement

        inv = self.base
        self.usage = placement.Usage.of(modes=predicted_modes(inv, self.hetero, self.modes))
        inv = offers_after_destroy(inv, self.freed)
        for uuid in self.freed:
            if inv.instance(uuid) is not None:
                inv = placement.release(inv, uuid, usage=self.usage)
        self.inv = inv
        return inv

    def take(self, uuid: str, parent: str, type_id: str) -> "Optional[Tuple[Block, str]]":
        """Record the create of ``uuid`` on ``parent``; or (block, why) when the GPU's rules refuse it."""
        from . import placement

        inv = self.inv if self.inv is not None else self._start()
        why = placement.refusal(inv, parent, type_id, usage=self.usage)
        if why is not None:
            reason, detail = why
            return (Block.TYPE_MIX if reason is placement.Refusal.TYPE_MIX else Block.NO_CAPACITY), detail
        self.inv = placement.apply(inv, parent=parent, type_id=type_id, uuid=uuid, usage=self.usage)
        return None


def _gpu_actions(
    g: DesiredGpu, obs: Optional[GpuObservation], inventory: Inventory, freed: Collection[str], *, observed: bool
) -> List[Action]:
    """The heterogeneous-mode and scheduler actions one ``gpus:`` entry needs (none when NVML reports them as
    desired)."""
    out: List[Action] = _shape_actions(g, obs, inventory, freed, observed=observed)
    wanted: List[Tuple[Op, Any, str]] = []
    if g.heterogeneous is not None:
        wanted.append((Op.HETERO, g.heterogeneous, "on" if g.heterogeneous else "off"))
    if g.scheduler is not None:
        wanted.append((Op.SCHED, g.scheduler, g.scheduler.text()))
    if obs is None or obs.unavailable is not None:
        why = (
            obs.unavailable
            if obs is not None and obs.unavailable
            else (f"NVML did not report GPU {g.gpu}" if observed else "the GPU's settings were not read (NVML)")
        )
        return out + [
            Action(op, "", g.gpu, text, why="desired", block=Block.NVML, detail=why, value=value)
            for op, value, text in wanted
        ]
    for op, value, text in wanted:
        if op is Op.HETERO:
            current = "?" if obs.heterogeneous is None else ("on" if obs.heterogeneous else "off")
            if obs.heterogeneous is value:
                continue
            hosted = [i.uuid for i in inventory.instances_on_gpu(g.gpu) if i.uuid not in freed]
            busy = list(obs.running) + [u for u in hosted if u not in obs.running]
            block, detail = (Block.IN_USE, "the GPU hosts vGPUs: " + ", ".join(busy)) if busy else (None, "")
            out.append(
                Action(op, "", g.gpu, text, why="desired", block=block, detail=detail, value=value, current=current)
            )
            continue
        want_us = None if value.timeslice_ms is None else int(round(value.timeslice_ms * 1000))
        if obs.policy == value.policy and (want_us is None or want_us == obs.timeslice_us):
            continue
        block, detail = None, ""
        if obs.supported and value.policy not in obs.supported:
            block, detail = Block.UNSUPPORTED, f"GPU supports {', '.join(obs.supported)}"
        elif (
            want_us is not None
            and obs.min_timeslice_us is not None
            and obs.max_timeslice_us is not None
            and not (obs.min_timeslice_us <= want_us <= obs.max_timeslice_us)
        ):
            block, detail = (
                Block.UNSUPPORTED,
                (
                    f"time slice outside the GPU's range "
                    f"{obs.min_timeslice_us / 1000:g}..{obs.max_timeslice_us / 1000:g} ms"
                ),
            )
        elif obs.running:
            block, detail = Block.IN_USE, "vGPUs run on it: " + ", ".join(obs.running)
        out.append(
            Action(
                op,
                "",
                g.gpu,
                text,
                why="desired",
                block=block,
                detail=detail,
                value=value,
                current=obs.scheduler_text(),
            )
        )
    return out


def _named(inventory: Inventory, gpus: Mapping[str, GpuObservation]) -> Inventory:
    """The inventory with NVML's names for vendor-VFIO types sysfs could not name."""
    if not any(o.type_names for o in gpus.values()):
        return inventory
    from .host.nvidia_vf import name_fields, type_number

    types = []
    for t in inventory.types:
        p = inventory.parent(t.parent)
        names = dict(gpus[p.gpu].type_names) if t.name is None and p is not None and p.gpu in gpus else {}
        n = type_number(t.type_id)
        if n is not None and n in names:
            t = replace(t, name=names[n], **name_fields(names[n]))  # type: ignore[arg-type]
        types.append(t)
    return replace(inventory, types=tuple(types))


def _shape_actions(
    g: DesiredGpu, obs: Optional[GpuObservation], inventory: Inventory, freed: Collection[str], *, observed: bool
) -> List[Action]:
    """SR-IOV, then MIG: what shapes the GPU's VFs and types, planned before its other settings and the creates.
    Both are GPU-wide: blocked ``in-use`` while the GPU holds vGPUs (or, for MIG, runs processes), naming them."""
    from .gpuwide import busy_of, mig_change, mig_text

    out: List[Action] = []
    hosted = [
        i.uuid
        for i in inventory.instances
        if i.uuid not in freed and inventory.parent(i.parent) is not None and inventory.parent(i.parent).gpu == g.gpu  # type: ignore[union-attr]
    ]
    if g.sriov is not None:
        sr = obs.sriov if obs is not None else None
        want_n = g.sriov.wanted(sr[1] if sr else None)
        text = f"{want_n if want_n is not None else 'all'} VFs"
        if sr is None:
            out.append(
                Action(
                    Op.SRIOV,
                    "",
                    g.gpu,
                    text,
                    why="desired",
                    block=Block.CONFIG,
                    value=want_n,
                    detail=f"GPU {g.gpu} has no SR-IOV (no sriov_totalvfs in sysfs)",
                )
            )
        elif want_n is not None and want_n > sr[1]:
            out.append(
                Action(
                    Op.SRIOV,
                    "",
                    g.gpu,
                    text,
                    why="desired",
                    block=Block.CONFIG,
                    value=want_n,
                    current=f"{sr[0]} VFs",
                    detail=f"GPU {g.gpu} has at most {sr[1]} VFs (sriov_totalvfs)",
                )
            )
        elif want_n != sr[0]:
            busy = busy_of(obs.running if obs is not None else (), hosted, ())
            block, detail = (Block.IN_USE, "its VFs hold vGPUs: " + ", ".join(busy)) if busy and sr[0] else (None, "")
            # VFs of a GPU in MIG mode offer no type before its GPU instances exist
            mig_on = (g.mig is not None and g.mig.mode) or bool(
                obs is not None and obs.mig is not None and obs.mig.current
            )
            out.append(
                Action(
                    Op.SRIOV,
                    "",
                    g.gpu,
                    text,
                    why="desired (GPU-wide)",
                    block=block,
                    detail=detail,
                    value=(want_n, not mig_on),
                    current=f"{sr[0]} VFs",
                )
            )
    if g.mig is not None:
        if obs is None or obs.unavailable is not None or obs.mig is None:
            why = (
                obs.unavailable
                if obs is not None and obs.unavailable
                else (f"NVML did not report GPU {g.gpu}" if observed else "the GPU's MIG state was not read (NVML)")
            )
            out.append(
                Action(Op.MIG, "", g.gpu, g.mig.text(), why="desired", block=Block.NVML, detail=why, value=g.mig)
            )
            return out
        change = mig_change(g.mig, obs.mig)
        if change.empty:
            return out
        current = mig_text(obs.mig)
        if change.problem is not None:
            out.append(
                Action(
                    Op.MIG,
                    "",
                    g.gpu,
                    g.mig.text(),
                    why="desired",
                    block=Block.CONFIG,
                    detail=change.problem,
                    value=g.mig,
                    current=current,
                )
            )
            return out
        busy = busy_of(obs.running, hosted, obs.mig.processes)
        block, detail = (
            (Block.IN_USE, "GPU-wide: the GPU holds vGPUs or processes: " + ", ".join(busy)) if busy else (None, "")
        )
        out.append(
            Action(
                Op.MIG,
                "",
                g.gpu,
                g.mig.text(),
                why="desired (GPU-wide)",
                block=block,
                detail=detail,
                value=g.mig,
                current=current,
            )
        )
    return out


def _defines_as(fd: Any, d: DesiredInstance, inventory: Inventory) -> bool:
    """Whether mdevctl's (manual) definition ``fd`` describes the instance the desired state asks for: same parent
    (where one is pinned) and the type the desired state resolves to on that parent."""
    if d.parent is not None and (host_parent(inventory, d.parent) or d.parent).lower() != fd.parent.lower():
        return False
    return (
        fd.type_id is not None
        and desired_type(inventory, host_parent(inventory, fd.parent) or fd.parent, d) == fd.type_id
    )


def _foreign_detail(fd: Any, uuid: str, name: Optional[str]) -> str:
    """Why an action over an mdevctl definition is blocked, and the two ways out."""
    boot = "starts it at boot" if fd.auto else "keeps a definition of it"
    keep = (
        f"'vgpuctl adopt --from-mdevctl --undefine {uuid}' (vgpuctl keeps it)"
        if name is not None
        else f"'vgpuctl destroy --foreign --undefine {uuid}' (neither keeps it)"
    )
    other = (
        f"remove instance {name} from the desired state (mdevctl keeps it)"
        if name is not None
        else f"'mdevctl undefine --uuid {uuid}' (vgpuctl decides)"
    )
    return f"mdevctl also defines it ({fd.label}, {fd.path}) and {boot}: let one tool manage it: {keep}, or {other}"


def _blocked_create(d: DesiredInstance, parent: Optional[str], type_id: str, block: Block, detail: str) -> Action:
    return Action(Op.CREATE, d.uuid, parent, type_id, d.name, why="desired", block=block, detail=detail)


def predicted(inventory: Inventory, p: Plan) -> Tuple[Tuple[str, str, str], ...]:
    """(uuid, parent, type) of the instances once the plan's runnable actions are done: the 'after' of a dry run."""
    gone = {a.uuid for a in p.runnable if a.op is Op.DESTROY}
    now = {(i.uuid, i.parent, i.type_id) for i in inventory.instances if i.uuid not in gone}
    now |= {(a.uuid, a.parent or "", a.type_id) for a in p.runnable if a.op is Op.CREATE}
    return tuple(sorted(now))
