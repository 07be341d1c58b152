"""Placement: which parent gets the next vGPU, and why every other GPU did not.

Everything here is a pure function of an ``Inventory`` (what the host reports), a ``Policy`` (what the operator
allows), a ``Request`` and a ``Usage`` (who uses which instance, from libvirt).  Equal inputs give equal decisions.

Rules the engine always honours, per physical GPU (``Parent.gpu``):

* **NVIDIA, time-sliced on the physical function** (mdev parents that are not VFs): one type per GPU, and at most the
  type's ``max_instance`` instances.  With heterogeneous mode reported for the GPU (``Usage.modes``), equal-size mode
  allows several types of one framebuffer size, mixed-size mode any types that fit the GPU's framebuffer.
* **NVIDIA, SR-IOV** (types on VFs, A16/A100/Ada class, and NVIDIA's vendor VFIO): one vGPU per VF; the count of a
  type and the type-mixing rule are per physical GPU, over all its VFs.
* **Other vendors** (GVT-g, samples): the host's ``available_instances``, trusted as is.

The host's ``available_instances`` is always an upper bound too: a GPU the host calls full is full.

``apply``/``release`` update an inventory as the host would after a create or remove, so that sequences of decisions
can be simulated (property tests, the churn benchmark, ``defrag --plan``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from .errors import AmbiguousType, UnknownType
from .model import Instance, Inventory, Parent, VgpuType, type_label, type_names
from .host.rules import EQUAL_SIZE_RULE, GPU_RULES, GpuKind, GpuRules, MixMode, gpu_rules
from .policy import GpuRule, NumaMode, Policy, Strategy

_UNBOUNDED = 1 << 30


class Refusal(str, Enum):
    """Why a GPU cannot take a request, in the order the engine checks."""

    NOT_OFFERED = "not-offered"  #: the GPU has no such type (another model)
    RESERVED = "reserved"  #: the policy reserves the GPU (for other tenants)
    NOT_ALLOWED = "not-allowed"  #: the policy does not allow this type or series here
    QUOTA = "quota"  #: the tenant's instance or framebuffer quota would be exceeded
    NUMA = "numa"  #: NUMA affinity required, and the GPU is on another node
    ANTI_AFFINITY = "anti-affinity"  #: a member of the domain's anti-affinity group is on this GPU
    TYPE_MIX = "type-mix"  #: the GPU holds another type, which its mixing rule forbids next to this one
    FULL = "full"  #: no room left for this type

    def __str__(self) -> str:
        return self.value


# The GPU kinds, mixing modes and their rules are the backends' (``vgpuctl.host.rules``); re-exported here.


# --- inputs --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Consumer:
    """Who uses one instance: the domain, its tenant label and its anti-affinity labels (from its metadata)."""

    domain: Optional[str] = None
    tenant: Optional[str] = None
    groups: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    """What the host's sysfs does not say: who uses each instance, and GPUs with heterogeneous mode enabled."""

    consumers: Tuple[Tuple[str, Consumer], ...] = ()  #: (instance uuid, consumer), sorted by uuid
    modes: Tuple[Tuple[str, MixMode], ...] = ()  #: (physical GPU, mode) where it is not homogeneous
    _consumers: Dict[str, Consumer] = field(default_factory=dict, compare=False, repr=False)
    _modes: Dict[str, MixMode] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "consumers", tuple(sorted(self.consumers, key=lambda kv: kv[0])))
        object.__setattr__(self, "modes", tuple(sorted(self.modes, key=lambda kv: kv[0])))
        object.__setattr__(self, "_consumers", dict(self.consumers))
        object.__setattr__(self, "_modes", dict(self.modes))

    @classmethod
    def of(
        cls, consumers: Optional[Mapping[str, Consumer]] = None, *, modes: Optional[Mapping[str, MixMode]] = None
    ) -> "Usage":
        return cls(consumers=tuple((consumers or {}).items()), modes=tuple((modes or {}).items()))

    def consumer(self, uuid: str) -> Optional[Consumer]:
        return self._consumers.get(uuid)

    def mode(self, gpu: str) -> MixMode:
        return self._modes.get(gpu, MixMode.HOMOGENEOUS)

    def with_consumer(self, uuid: str, consumer: Consumer) -> "Usage":
        d = dict(self._consumers)
        d[uuid] = consumer
        return Usage(consumers=tuple(d.items()), modes=self.modes)

    def without(self, uuid: str) -> "Usage":
        return Usage(consumers=tuple((u, c) for u, c in self.consumers if u != uuid), modes=self.modes)


@dataclass(frozen=True)
class Request:
    """One vGPU to place.  ``numa_nodes``, ``tenant`` and ``groups`` come from the domain (numatune, metadata)."""

    type: str  #: type id (nvidia-222) or profile name (T4-2Q, GRID T4-2Q), case-insensitive
    domain: Optional[str] = None
    tenant: Optional[str] = None
    numa_nodes: Tuple[int, ...] = ()
    numa: Optional[NumaMode] = None  #: overrides the policy's NUMA mode
    groups: Tuple[str, ...] = ()  #: anti-affinity group labels besides the policy's domain globs
    #: a service profile resolved per GPU model (``vgpuctl.profiles``): any of these type ids will do, each GPU
    #: offering one of them; ``type`` is then only the profile's name, for messages.  None: resolve ``type``.
    any_of: Optional[Tuple[str, ...]] = None


# --- outputs -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """One physical GPU's answer to a request: feasible (with its rank) or refused (with the reason)."""

    gpu: str
    rule: str  #: the policy rule that covers the GPU
    reason: Optional[Refusal]  #: None: the GPU can take it
    detail: str = ""
    parent: Optional[str] = None  #: where the instance would go on this GPU
    type_id: Optional[str] = None  #: the matching type on this GPU
    rank: Optional[int] = None  #: 1 is the choice; None for refused GPUs
    numa_node: Optional[int] = None
    fullness: float = 0.0  #: share of the GPU in use before the placement, 0..1
    loss: float = 0.0  #: capacity the placement takes from the allowed profiles, in whole GPUs' worth

    @property
    def feasible(self) -> bool:
        return self.reason is None


class Decision:
    """The answer to one request: the chosen GPU (``placed``, ``parent``, ``type_id``, ``strategy``) and, for
    ``--explain``, one ``Verdict`` per physical GPU (feasible GPUs by rank, then refused GPUs by name).

    ``place`` ranks the GPUs; the verdicts (every GPU's rank or refusal with its sentence) are written out only when
    something reads ``verdicts``, ``chosen`` or ``refusals()``.  Equal decisions compare equal either way."""

    __slots__ = ("request", "strategy", "_verdicts", "_make", "_winner")

    def __init__(
        self,
        request: Request,
        verdicts: Optional[Tuple[Verdict, ...]] = None,
        strategy: Optional[Strategy] = None,
        *,
        _make: Optional[Callable[[], Tuple[Verdict, ...]]] = None,
        _winner: Optional[Tuple[str, str, str]] = None,
    ) -> None:
        self.request = request
        self.strategy = strategy  #: the chosen GPU's strategy
        self._verdicts = verdicts
        self._make = _make
        if _make is None:
            c = verdicts[0] if verdicts and verdicts[0].feasible else None
            _winner = (c.gpu, c.parent, c.type_id) if c is not None else None  # type: ignore[assignment]
        self._winner = _winner  #: (gpu, parent, type id) of the choice, known without writing the verdicts

    @property
    def verdicts(self) -> Tuple[Verdict, ...]:
        """Feasible GPUs by rank, then refused GPUs by name."""
        if self._verdicts is None:
            self._verdicts = self._make()  # type: ignore[misc]
            self._make = None
        return self._verdicts

    @property
    def chosen(self) -> Optional[Verdict]:
        return self.verdicts[0] if self._winner is not None else None

    @property
    def placed(self) -> bool:
        return self._winner is not None

    @property
    def parent(self) -> Optional[str]:
        return self._winner[1] if self._winner else None

    @property
    def gpu(self) -> Optional[str]:
        return self._winner[0] if self._winner else None

    @property
    def type_id(self) -> Optional[str]:
        return self._winner[2] if self._winner else None

    def refusals(self) -> Tuple[Tuple[str, str, str], ...]:
        """(gpu, reason, detail) for every refused GPU, by GPU name."""
        return tuple((v.gpu, str(v.reason), v.detail) for v in self.verdicts if v.reason is not None)

    def _key(self) -> tuple:
        return (self.request, self.verdicts, self.strategy)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Decision) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Decision(request={self.request!r}, verdicts={self.verdicts!r}, strategy={self.strategy!r})"


# --- type names ----------------------------------------------------------------------------------------------------
def _identity(t: VgpuType) -> str:
    return (t.profile or t.type_id).lower()


_label = type_label


def resolve_type(inventory: Inventory, name: str) -> Tuple[VgpuType, ...]:
    """Every offer on the host of the type ``name`` names: by id first, else by full or profile name.

    Case-insensitive.  One name may be offered by many parents (every T4 offers T4-2Q); it is ambiguous when it names
    different profiles, or two types on one parent.  Raises ``UnknownType`` or ``AmbiguousType``.
    """
    key = name.strip().lower()
    by_id = [t for t in inventory.types if t.type_id.lower() == key]
    matches = by_id or [t for t in inventory.types if key in type_names(t)]
    if not matches:
        known = sorted({t.profile or t.type_id for t in inventory.types})
        raise UnknownType(name, None, known)
    identities = {_identity(t) for t in matches}
    per_parent: Dict[str, set] = {}
    for t in matches:
        per_parent.setdefault(t.parent, set()).add(t.type_id)
    if len(identities) > 1 or any(len(ids) > 1 for ids in per_parent.values()):
        raise AmbiguousType(name, sorted({_label(t) for t in matches}))
    return tuple(matches)


# --- per-GPU state -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Offer:
    """One type on one physical GPU, over all its parents."""

    vtype: VgpuType  #: the type as the first parent offering it reports it
    free_parents: Tuple[str, ...]  #: parents that can take one now (host says available; a VF must be unused)
    host_available: int  #: what the host says can still be created on this GPU

    @property
    def type_id(self) -> str:
        return self.vtype.type_id


@dataclass(frozen=True)
class GpuState:
    gpu: str
    kind: GpuKind
    mode: MixMode
    parents: Tuple[Parent, ...]
    offers: Tuple[Offer, ...]
    counts: Tuple[Tuple[str, int], ...]  #: instances per type id on this GPU
    used_fb: int  #: MiB held by its instances (where the types say)
    total_fb: Optional[int]  #: MiB, the largest framebuffer x max_instance among its types
    fb_of: Tuple[Tuple[str, Optional[int]], ...]  #: framebuffer per type id seen on the GPU
    occupied: FrozenSet[str]  #: parents that hold an instance
    #: what is derived from this state alone (counts, fullness, headroom, the policy rule, loss), filled on first use
    _memo: Dict[Any, Any] = field(default_factory=dict, init=False, compare=False, repr=False)

    @property
    def rules(self) -> GpuRules:
        """The capacity rules of this GPU's kind (``vgpuctl.host.rules``)."""
        return GPU_RULES[self.kind]

    @property
    def numa_node(self) -> Optional[int]:
        m = self._memo
        if "numa" not in m:
            m["numa"] = next((p.numa_node for p in self.parents if p.numa_node is not None), None)
        return m["numa"]

    def count_map(self) -> Dict[str, int]:
        """{type id: instances} on this GPU (shared: do not change it)."""
        m = self._memo.get("counts")
        if m is None:
            m = self._memo["counts"] = dict(self.counts)
        return m

    @property
    def vendor_id(self) -> Optional[str]:
        return self.parents[0].vendor_id if self.parents else None

    @property
    def device_id(self) -> Optional[str]:
        return self.parents[0].device_id if self.parents else None

    @property
    def model(self) -> Optional[str]:
        """``T4`` from ``GRID T4-2Q``: what a policy's ``model`` glob matches."""
        for o in self.offers:
            if o.vtype.profile and "-" in o.vtype.profile:
                return o.vtype.profile.split("-")[0]
        return None

    @property
    def instances(self) -> int:
        return sum(c for _, c in self.counts)

    def offer(self, type_id: str) -> Optional[Offer]:
        by_id = self._memo.get("offers")
        if by_id is None:
            by_id = self._memo["offers"] = {o.type_id: o for o in self.offers}
        return by_id.get(type_id)

    def fullness(self) -> float:
        f = self._memo.get("fullness")
        if f is None:
            f = self._memo["fullness"] = self._fullness()
        return f

    def _fullness(self) -> float:
        n = self.instances
        if n == 0:
            return 0.0
        fb = dict(self.fb_of)
        rules = self.rules
        if rules.counted and self.total_fb and all(fb.get(t) for t, _ in self.counts):
            return min(1.0, self.used_fb / self.total_fb)
        if rules.one_per_parent:
            return len(self.occupied) / len(self.parents)
        room = max((o.host_available for o in self.offers), default=0)
        return n / (n + room)


def gpu_kind(parents: Sequence[Parent]) -> GpuKind:
    """The kind of the GPU ``parents`` belong to, as its backends' rules say (``vgpuctl.host.rules.gpu_rules``)."""
    return gpu_rules(parents).kind


def gpu_states(inventory: Inventory, usage: Optional[Usage] = None) -> Tuple[GpuState, ...]:
    """One state per physical GPU, sorted by GPU name.  Computed once per inventory and set of GPU modes (the
    inventory keeps it; ``apply``/``release`` hand it on with only the changed GPU recomputed)."""
    usage = usage or Usage()
    key = ("gpu_states", usage.modes)
    states = inventory._memo.get(key)
    if states is None:
        states = inventory._memo[key] = _all_gpu_states(inventory, usage)
    return states


def _all_gpu_states(inventory: Inventory, usage: Usage) -> Tuple[GpuState, ...]:
    by_gpu: Dict[str, List[Parent]] = {}
    for p in inventory.parents:
        by_gpu.setdefault(p.gpu, []).append(p)
    types_by_parent: Dict[str, List[VgpuType]] = {}
    for t in inventory.types:
        types_by_parent.setdefault(t.parent, []).append(t)
    inst_by_parent: Dict[str, List[Instance]] = {}
    for i in inventory.instances:
        inst_by_parent.setdefault(i.parent, []).append(i)
    return tuple(
        _gpu_state(gpu, tuple(by_gpu[gpu]), types_by_parent, inst_by_parent, usage.mode(gpu)) for gpu in sorted(by_gpu)
    )


def _gpu_state(
    gpu: str,
    parents: Tuple[Parent, ...],
    types_by_parent: Mapping[str, List[VgpuType]],
    inst_by_parent: Mapping[str, List[Instance]],
    mode: MixMode,
) -> GpuState:
    rules = gpu_rules(parents)
    occupied = frozenset(p.name for p in parents if inst_by_parent.get(p.name))
    offers: Dict[str, Tuple[VgpuType, List[str], int]] = {}
    fb_of: Dict[str, Optional[int]] = {}
    total_fb: Optional[int] = None
    for p in parents:
        for t in types_by_parent.get(p.name, ()):
            fb_of.setdefault(t.type_id, t.framebuffer_mib)
            if t.framebuffer_mib and t.max_instance:
                total_fb = max(total_fb or 0, t.framebuffer_mib * t.max_instance)
            first, free, avail = offers.get(t.type_id, (t, [], 0))
            usable = t.available > 0 and not (rules.one_per_parent and p.name in occupied)
            if usable:
                free.append(p.name)
                avail += 1 if rules.one_per_parent else t.available
            offers[t.type_id] = (first, free, avail)
    counts: Dict[str, int] = {}
    for p in parents:
        for i in inst_by_parent.get(p.name, ()):
            counts[i.type_id] = counts.get(i.type_id, 0) + 1
    used_fb = sum((fb_of.get(tid) or 0) * n for tid, n in counts.items())
    return GpuState(
        gpu=gpu,
        kind=rules.kind,
        mode=mode if rules.modes else MixMode.HOMOGENEOUS,
        parents=parents,
        offers=tuple(
            Offer(vtype=v, free_parents=tuple(f), host_available=a) for _, (v, f, a) in sorted(offers.items())
        ),
        counts=tuple(sorted(counts.items())),
        used_fb=used_fb,
        total_fb=total_fb,
        fb_of=tuple(sorted(fb_of.items())),
        occupied=occupied,
    )


def _mix_conflict(g: GpuState, type_id: str, counts: Mapping[str, int]) -> Optional[str]:
    """The other type on ``g`` whose presence forbids ``type_id`` there, or None."""
    if not g.rules.counted or g.mode is MixMode.MIXED_SIZE:
        return None
    fb = dict(g.fb_of)
    for other, n in sorted(counts.items()):
        if n <= 0 or other == type_id:
            continue
        if g.mode is MixMode.HOMOGENEOUS or fb.get(other) != fb.get(type_id):
            return other
    return None


def _rule_room(g: GpuState, vtype: VgpuType, counts: Mapping[str, int], used_fb: int, free_vfs: int) -> int:
    """How many more of ``vtype`` the vendor's rules allow on ``g`` (ignoring what the host reports)."""
    if not g.rules.counted:
        return _UNBOUNDED
    if _mix_conflict(g, vtype.type_id, counts) is not None:
        return 0
    room = _UNBOUNDED
    if vtype.max_instance is not None:
        room = vtype.max_instance - counts.get(vtype.type_id, 0)
    if g.mode is not MixMode.HOMOGENEOUS and g.total_fb and vtype.framebuffer_mib:
        room = min(room, (g.total_fb - used_fb) // vtype.framebuffer_mib)
    if g.rules.one_per_parent:
        room = min(room, free_vfs)
    return max(room, 0)


def headroom(g: GpuState, type_id: str, *, added: Optional[str] = None) -> int:
    """How many more of ``type_id`` fit on ``g`` now, or after one more ``added`` (a type id) were placed there."""
    key = ("headroom", type_id, added)
    room = g._memo.get(key)
    if room is None:
        room = g._memo[key] = _headroom(g, type_id, added)
    return room


def _headroom(g: GpuState, type_id: str, added: Optional[str]) -> int:
    o = g.offer(type_id)
    if o is None:
        return 0
    counts = dict(g.counts)
    used = g.used_fb
    host = o.host_available
    free_vfs = len(g.parents) - len(g.occupied)
    if added is not None:
        counts[added] = counts.get(added, 0) + 1
        used += dict(g.fb_of).get(added) or 0
        if g.rules.one_per_parent:
            host -= 1  # one VF taken
            free_vfs -= 1
        elif added == type_id:
            host -= 1
    host = max(host, 0)
    if not g.rules.counted:
        return host
    return min(host, _rule_room(g, o.vtype, counts, used, free_vfs))


def mix_rule(g: GpuState) -> str:
    """The type-mixing rule of ``g``, in words (for messages that must name the rule, not only the symptom)."""
    if g.mode is MixMode.EQUAL_SIZE:
        return EQUAL_SIZE_RULE
    return g.rules.mix_rule or GPU_RULES[GpuKind.TIME_SLICED].mix_rule


def type_mix(
    inventory: Inventory, parent: str, type_id: str, *, usage: Optional[Usage] = None
) -> Optional[Tuple[str, str, str]]:
    """``(gpu, held type, rule)`` when the type-mixing rule is what keeps ``type_id`` off ``parent``; else None."""
    p = inventory.parent(parent)
    if p is None or inventory.type_on(parent, type_id) is None:
        return None
    g = _gpu_of_parent(inventory, p, usage)
    clash = _mix_conflict(g, type_id, dict(g.counts))
    if clash is None:
        return None
    held = g.offer(clash)
    return g.gpu, (held.vtype.profile or held.vtype.name if held else None) or clash, mix_rule(g)


def _gpu_of_parent(inventory: Inventory, p: Parent, usage: Optional[Usage]) -> GpuState:
    names = {q.name for q in inventory.parents if q.gpu == p.gpu}
    types_by_parent: Dict[str, List[VgpuType]] = {}
    for t in inventory.types:
        if t.parent in names:
            types_by_parent.setdefault(t.parent, []).append(t)
    inst_by_parent: Dict[str, List[Instance]] = {}
    for i in inventory.instances:
        if i.parent in names:
            inst_by_parent.setdefault(i.parent, []).append(i)
    parents = tuple(q for q in inventory.parents if q.name in names)
    return _gpu_state(p.gpu, parents, types_by_parent, inst_by_parent, (usage or Usage()).mode(p.gpu))


def refusal(
    inventory: Inventory, parent: str, type_id: str, *, usage: Optional[Usage] = None
) -> Optional[Tuple[Refusal, str]]:
    """Whether one more ``type_id`` fits on ``parent`` (a create pinned there, as the planner predicts it): None when
    it does, else (``TYPE_MIX`` or ``FULL``, why).  The same per-GPU rules as ``place``, without policy or NUMA."""
    p = inventory.parent(parent)
    vt = inventory.type_on(parent, type_id)
    if p is None or vt is None:
        return Refusal.NOT_OFFERED, f"{parent} offers no {type_id}"
    g = _gpu_of_parent(inventory, p, usage)
    label = vt.profile or vt.name or type_id
    counts = dict(g.counts)
    clash = _mix_conflict(g, type_id, counts)
    if clash is not None:
        held = g.offer(clash)
        other = (held.vtype.profile or held.vtype.name if held else None) or clash
        return Refusal.TYPE_MIX, f"GPU {g.gpu} holds {other}, which {label} cannot share it with ({g.mode})"
    if g.rules.one_per_parent and parent in g.occupied:
        return Refusal.FULL, f"VF {parent} already holds a vGPU (one per VF)"
    if vt.available <= 0 or headroom(g, type_id) <= 0:
        return Refusal.FULL, f"GPU {g.gpu} has no room for another {label} ({counts.get(type_id, 0)} of it there)"
    return None


# --- the decision --------------------------------------------------------------------------------------------------
def rule_for(policy: Policy, g: GpuState) -> Tuple[int, GpuRule]:
    """(tier, rule): the first rule of the policy that matches ``g``, else the default after all of them."""
    hit = g._memo.get("rule")
    if hit is None or hit[0] is not policy:
        hit = g._memo["rule"] = (policy, _rule_for(policy, g))
    return hit[1]


def _rule_for(policy: Policy, g: GpuState) -> Tuple[int, GpuRule]:
    addresses = [g.gpu] + [p.name for p in g.parents]
    for i, r in enumerate(policy.rules):
        if r.match.matches(
            addresses=addresses, vendor_id=g.vendor_id, device_id=g.device_id, numa_node=g.numa_node, model=g.model
        ):
            return i, r
    return len(policy.rules), policy.default


def place(inventory: Inventory, policy: Policy, request: Request, *, usage: Optional[Usage] = None) -> Decision:
    """Choose the parent for ``request``: a ``Decision`` with one verdict per physical GPU.

    Raises ``UnknownType``/``AmbiguousType`` for a type name that names nothing or more than one profile; a request
    no GPU can take is a ``Decision`` that is not ``placed`` (its ``refusals`` say why, per GPU).
    """
    return _decide(inventory, policy, request, usage or _NO_USAGE, only=None)


_NO_USAGE = Usage()


def wanted_type_ids(inventory: Inventory, name: str) -> FrozenSet[str]:
    """The type ids ``resolve_type`` finds for ``name``, remembered by the inventory (and handed on by ``apply`` and
    ``release``, which change counts, never names)."""
    names = inventory._memo.get("type_names")
    if names is None:
        names = inventory._memo["type_names"] = {}
    key = name.strip().lower()
    ids = names.get(key)
    if ids is None:
        ids = names[key] = frozenset(t.type_id for t in resolve_type(inventory, name))
    return ids


def _first_offer(g: GpuState, wanted: FrozenSet[str]) -> Optional[Offer]:
    key = ("first_offer", wanted)
    memo = g._memo
    if key in memo:
        return memo[key]
    o = memo[key] = next((o for o in g.offers if o.type_id in wanted), None)
    return o


def _mix_clash(g: GpuState, type_id: str) -> Optional[str]:
    key = ("mix", type_id)
    memo = g._memo
    if key in memo:
        return memo[key]
    c = memo[key] = _mix_conflict(g, type_id, g.count_map())
    return c


# A GPU's answer before it is written out as a Verdict: (state, rule, offer or None, refusal or None, detail args).
_Row = Tuple[GpuState, GpuRule, Optional[Offer], Optional[Refusal], tuple]


def _decide(
    inventory: Inventory,
    policy: Policy,
    request: Request,
    usage: Usage,
    *,
    only: Optional[FrozenSet[str]],
    gpus: Optional[Tuple[GpuState, ...]] = None,
) -> Decision:
    if request.any_of is not None:
        wanted_ids = frozenset(request.any_of)
    else:
        wanted_ids = wanted_type_ids(inventory, request.type)
    states = gpus if gpus is not None else gpu_states(inventory, usage)
    numa_mode = request.numa or policy.numa
    numa_nodes = request.numa_nodes if numa_mode is not NumaMode.IGNORE else ()
    tenant_count, tenant_fb = _tenant_usage(inventory, usage, request.tenant)
    quota = policy.quota(request.tenant)
    blockers = _anti_affinity_blockers(inventory, policy, request, usage)

    feasible: List[Tuple[tuple, _Row]] = []
    refused: List[_Row] = []
    for g in states:
        if only is not None and g.gpu not in only:
            continue
        tier, rule = rule_for(policy, g)
        offer = _first_offer(g, wanted_ids)
        if offer is None:
            refused.append((g, rule, None, Refusal.NOT_OFFERED, ()))
            continue
        vt = offer.vtype
        if not rule.admits_tenant(request.tenant):
            refused.append((g, rule, offer, Refusal.RESERVED, ()))
            continue
        if not rule.allows(vt):
            refused.append((g, rule, offer, Refusal.NOT_ALLOWED, ()))
            continue
        if quota is not None:
            if quota.max_instances is not None and tenant_count + 1 > quota.max_instances:
                refused.append((g, rule, offer, Refusal.QUOTA, (tenant_count, quota.max_instances, None)))
                continue
            fb = vt.framebuffer_mib or 0
            if quota.max_framebuffer_mib is not None and tenant_fb + fb > quota.max_framebuffer_mib:
                refused.append((g, rule, offer, Refusal.QUOTA, (tenant_fb, fb, quota.max_framebuffer_mib)))
                continue
        numa_rank = 0
        if numa_nodes:
            node = g.numa_node
            numa_rank = 1 if node is None else (0 if node in numa_nodes else 2)
            if numa_rank == 2 and numa_mode is NumaMode.REQUIRE:
                refused.append((g, rule, offer, Refusal.NUMA, ()))
                continue
        if g.gpu in blockers:
            refused.append((g, rule, offer, Refusal.ANTI_AFFINITY, blockers[g.gpu]))
            continue
        clash = _mix_clash(g, vt.type_id)
        if clash is not None:
            refused.append((g, rule, offer, Refusal.TYPE_MIX, (clash,)))
            continue
        room = headroom(g, vt.type_id)
        if room <= 0 or not offer.free_parents:
            refused.append((g, rule, offer, Refusal.FULL, ()))
            continue
        loss = _loss(g, rule, vt.type_id)
        fullness = g.fullness()
        strat = -fullness if rule.strategy is Strategy.PACK else fullness
        feasible.append(((numa_rank, tier, strat, loss, g.gpu), (g, rule, offer, None, (room, numa_rank, loss))))
    if not feasible:
        return Decision(request, strategy=None, _make=lambda: _verdicts(request, (), refused), _winner=None)
    feasible.sort(key=lambda x: x[0])
    g0, rule0, offer0, _, _ = feasible[0][1]
    winner = (g0.gpu, offer0.free_parents[0], offer0.type_id)  # type: ignore[union-attr]
    rows = [r for _, r in feasible]
    return Decision(request, strategy=rule0.strategy, _make=lambda: _verdicts(request, rows, refused), _winner=winner)


def _verdicts(request: Request, feasible: Sequence[_Row], refused: Sequence[_Row]) -> Tuple[Verdict, ...]:
    """The explanation: every GPU's verdict, feasible ones by rank, then refused ones by GPU name."""
    out = [_verdict(request, row, rank) for rank, row in enumerate(feasible, 1)]
    out += sorted((_verdict(request, row, None) for row in refused), key=lambda v: v.gpu)
    return tuple(out)


def _verdict(request: Request, row: _Row, rank: Optional[int]) -> Verdict:
    g, rule, offer, reason, args = row
    base: Dict[str, Any] = dict(gpu=g.gpu, rule=rule.name, numa_node=g.numa_node, fullness=g.fullness())
    if offer is None:
        return Verdict(reason=Refusal.NOT_OFFERED, detail=f"offers no {request.type}", **base)
    vt = offer.vtype
    base["type_id"] = vt.type_id
    label = vt.profile or vt.type_id
    if reason is None:
        room, numa_rank, loss = args
        detail = f"{rule.strategy}, {room} more {label} fit"
        if numa_rank == 1:
            detail += ", NUMA node unknown"
        elif numa_rank == 2:
            detail += f", remote NUMA node {g.numa_node}"
        return Verdict(reason=None, detail=detail, parent=offer.free_parents[0], rank=rank, loss=loss, **base)
    if reason is Refusal.RESERVED:
        detail = f"rule {rule.name} reserves it" + (f" for {', '.join(rule.reserved_for)}" if rule.reserved_for else "")
    elif reason is Refusal.NOT_ALLOWED:
        detail = f"rule {rule.name} does not allow {label}"
    elif reason is Refusal.QUOTA:
        held, fb, limit = args
        if limit is None:
            detail = f"tenant {request.tenant} has {held} of {fb} instances"
        else:
            detail = f"tenant {request.tenant} holds {held} MiB; +{fb} exceeds {limit} MiB"
    elif reason is Refusal.NUMA:
        detail = f"on NUMA node {g.numa_node}, domain needs {','.join(map(str, request.numa_nodes))}"
    elif reason is Refusal.ANTI_AFFINITY:
        group, other = args
        detail = f"{other} of group {group} is here"
    elif reason is Refusal.TYPE_MIX:
        held_offer = g.offer(args[0])
        detail = f"holds {(held_offer.vtype.profile if held_offer else None) or args[0]} ({g.mode})"
    else:
        detail = f"{label}: {g.count_map().get(vt.type_id, 0)} in use, none available"
    return Verdict(reason=reason, detail=detail, **base)


def _loss(g: GpuState, rule: GpuRule, type_id: str) -> float:
    """What placing one ``type_id`` on ``g`` costs the profiles the rule allows there: the sum over those profiles of
    the share of a full GPU of that profile that it removes.  Lower keeps more capacity for the other profiles."""
    key = ("loss", id(rule), type_id)
    hit = g._memo.get(key)
    if hit is None or hit[0] is not rule:
        hit = g._memo[key] = (rule, _compute_loss(g, rule, type_id))
    return hit[1]


def _compute_loss(g: GpuState, rule: GpuRule, type_id: str) -> float:
    total = 0.0
    for o in g.offers:
        if not rule.allows(o.vtype):
            continue
        before = headroom(g, o.type_id)
        if before <= 0:
            continue
        after = headroom(g, o.type_id, added=type_id)
        norm = o.vtype.max_instance or before
        total += (before - after) / norm
    return round(total, 9)


def _tenant_usage(inventory: Inventory, usage: Usage, tenant: Optional[str]) -> Tuple[int, int]:
    if tenant is None:
        return 0, 0
    n = fb = 0
    for i in inventory.instances:
        c = usage.consumer(i.uuid)
        if c is not None and c.tenant == tenant:
            n += 1
            t = inventory.type_on(i.parent, i.type_id)
            fb += (t.framebuffer_mib or 0) if t else 0
    return n, fb


def _anti_affinity_blockers(
    inventory: Inventory, policy: Policy, request: Request, usage: Usage
) -> Dict[str, Tuple[str, str]]:
    """{gpu: (group, other domain)} for GPUs that hold another member of one of the request's groups."""
    mine = set(policy.groups_of(request.domain, request.groups))
    if not mine:
        return {}
    out: Dict[str, Tuple[str, str]] = {}
    for i in inventory.instances:
        c = usage.consumer(i.uuid)
        if c is None or c.domain is None or c.domain == request.domain:
            continue
        shared = sorted(mine.intersection(policy.groups_of(c.domain, c.groups)))
        p = inventory.parent(i.parent)
        if shared and p is not None and p.gpu not in out:
            out[p.gpu] = (shared[0], c.domain)
    return out


# --- simulating the host -------------------------------------------------------------------------------------------
def apply(inventory: Inventory, *, parent: str, type_id: str, uuid: str, usage: Optional[Usage] = None) -> Inventory:
    """The inventory after creating ``uuid`` of ``type_id`` on ``parent``, with ``available`` counts updated as the
    vendor's rules say (NVIDIA) or by one (other vendors)."""
    p = inventory.parent(parent)
    if p is None or inventory.type_on(parent, type_id) is None:
        raise UnknownType(type_id, parent, [t.type_id for t in inventory.types_on(parent)])
    inst = Instance(uuid=uuid, parent=parent, type_id=type_id, backend=p.backend)
    instances = tuple(sorted(inventory.instances + (inst,), key=lambda i: (i.parent, i.uuid)))
    return _recount(inventory, instances, p.gpu, parent, type_id, -1, usage or Usage())


def release(inventory: Inventory, uuid: str, *, usage: Optional[Usage] = None) -> Inventory:
    """The inventory after removing instance ``uuid``."""
    inst = inventory.instance(uuid)
    if inst is None:
        from .errors import UnknownInstance

        raise UnknownInstance(uuid)
    p = inventory.parent(inst.parent)
    instances = tuple(i for i in inventory.instances if i.uuid != uuid)
    gpu = p.gpu if p is not None else inst.parent
    return _recount(inventory, instances, gpu, inst.parent, inst.type_id, +1, usage or Usage())


def _recount(
    inventory: Inventory,
    instances: Tuple[Instance, ...],
    gpu: str,
    parent: str,
    type_id: str,
    delta: int,
    usage: Usage,
) -> Inventory:
    parents = tuple(p for p in inventory.parents if p.gpu == gpu)
    names = {p.name for p in parents}
    rules = gpu_rules(parents)
    types_by_parent: Dict[str, List[VgpuType]] = {}
    for t in inventory.types:
        if t.parent in names:
            types_by_parent.setdefault(t.parent, []).append(t)
    inst_by_parent: Dict[str, List[Instance]] = {}
    for i in instances:
        if i.parent in names:
            inst_by_parent.setdefault(i.parent, []).append(i)
    after = _gpu_state(gpu, parents, types_by_parent, inst_by_parent, usage.mode(gpu))
    counts = dict(after.counts)
    free_vfs = len(parents) - len(after.occupied)
    new_types = []
    for t in inventory.types:
        if t.parent not in names:
            new_types.append(t)
            continue
        base = t.available + (delta if (t.parent == parent and t.type_id == type_id) else 0)
        if not rules.counted:
            avail = base
        elif rules.one_per_parent:  # one per VF; the GPU-wide count and mixing rule decide for the free VFs
            room = _rule_room(after, t, counts, after.used_fb, free_vfs)
            avail = 0 if t.parent in after.occupied else min(room, 1)
        else:  # time-sliced: recount from max_instance; without it, keep the host's figure less the change
            room = _rule_room(after, t, counts, after.used_fb, 0)
            avail = room if t.max_instance is not None else min(room, base)
        new_types.append(t if t.available == max(avail, 0) else replace(t, available=max(avail, 0)))
    out = Inventory(parents=inventory.parents, types=tuple(new_types), instances=instances)
    _hand_on(inventory, out, gpu, parents, names, inst_by_parent)
    return out


def _hand_on(
    before: Inventory,
    after: Inventory,
    gpu: str,
    parents: Tuple[Parent, ...],
    names: set,
    inst_by_parent: Mapping[str, List[Instance]],
) -> None:
    """Give ``after`` (``before`` with one instance more or less on ``gpu``) the tables ``before`` had: the type
    names (counts change, names do not) and the per-GPU states, every GPU's but ``gpu``'s kept as they are."""
    names_memo = before._memo.get("type_names")
    if names_memo is not None:
        after._memo["type_names"] = names_memo
    keyed = [(k, v) for k, v in before._memo.items() if isinstance(k, tuple) and k[0] == "gpu_states"]
    if not keyed:
        return
    types_by_parent: Dict[str, List[VgpuType]] = {}
    for t in after.types:
        if t.parent in names:
            types_by_parent.setdefault(t.parent, []).append(t)
    for key, states in keyed:
        mode = dict(key[1]).get(gpu, MixMode.HOMOGENEOUS)
        fresh = _gpu_state(gpu, parents, types_by_parent, inst_by_parent, mode)
        after._memo[key] = tuple(fresh if s.gpu == gpu else s for s in states)


# --- defragmentation -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Move:
    uuid: str
    type_id: str
    domain: Optional[str]
    from_parent: str
    from_gpu: str
    to_parent: str
    to_gpu: str


@dataclass(frozen=True)
class DefragPlan:
    moves: Tuple[Move, ...]
    freed: Tuple[str, ...]  #: physical GPUs the moves empty
    before_free: int  #: GPUs without instances before
    after: Optional[Inventory] = field(default=None, compare=False, repr=False)


def plan_defrag(inventory: Inventory, policy: Policy, *, usage: Optional[Usage] = None) -> DefragPlan:
    """Moves (instance -> another GPU, each needing its VM's restart) that empty the most whole GPUs, greedily:
    GPUs with the fewest instances are tried first; a GPU is emptied only if every instance on it fits elsewhere
    under the policy, on a GPU that is in use and is not being emptied.  Pure: nothing moves."""
    usage = usage or Usage()
    states = gpu_states(inventory, usage)
    before_free = sum(1 for g in states if g.instances == 0)
    order = sorted((g for g in states if g.instances), key=lambda g: (g.instances, g.used_fb, g.gpu))
    inv = inventory
    moves: List[Move] = []
    freed: List[str] = []
    receivers: set = set()
    for g in order:
        if g.gpu in receivers:
            continue
        trial = inv
        trial_moves: List[Move] = []
        for inst in sorted(
            (i for i in trial.instances if (trial.parent(i.parent) or Parent(i.parent)).gpu == g.gpu),
            key=lambda i: i.uuid,
        ):
            c = usage.consumer(inst.uuid) or Consumer()
            without = release(trial, inst.uuid, usage=usage)
            used = frozenset(
                s.gpu for s in gpu_states(without, usage) if s.instances and s.gpu != g.gpu and s.gpu not in freed
            )
            req = Request(type=inst.type_id, domain=c.domain, tenant=c.tenant, groups=c.groups)
            d = _decide(without, policy, req, usage, only=used)
            if not d.placed:
                trial_moves = []
                break
            trial = apply(without, parent=d.parent, type_id=d.type_id, uuid=inst.uuid, usage=usage)  # type: ignore[arg-type]
            trial_moves.append(
                Move(
                    uuid=inst.uuid,
                    type_id=inst.type_id,
                    domain=c.domain,
                    from_parent=inst.parent,
                    from_gpu=g.gpu,
                    to_parent=d.parent,  # type: ignore[arg-type]
                    to_gpu=d.gpu,  # type: ignore[arg-type]
                )
            )
        else:
            inv = trial
            moves += trial_moves
            freed.append(g.gpu)
            receivers.update(m.to_gpu for m in trial_moves)
    return DefragPlan(moves=tuple(moves), freed=tuple(freed), before_free=before_free, after=inv)


def occupancy(inventory: Inventory) -> Dict[str, Dict[str, int]]:
    """{gpu: {type id: instances}}: what the invariants (one type per GPU, max_instance) are checked against."""
    out: Dict[str, Dict[str, int]] = {}
    for i in inventory.instances:
        p = inventory.parent(i.parent)
        gpu = p.gpu if p else i.parent
        out.setdefault(gpu, {})
        out[gpu][i.type_id] = out[gpu].get(i.type_id, 0) + 1
    return out


__all__ = [
    "Consumer",
    "Decision",
    "DefragPlan",
    "GpuKind",
    "GpuState",
    "MixMode",
    "Move",
    "Offer",
    "Refusal",
    "Request",
    "Usage",
    "Verdict",
    "apply",
    "gpu_states",
    "headroom",
    "occupancy",
    "place",
    "plan_defrag",
    "refusal",
    "release",
    "resolve_type",
    "rule_for",
]
