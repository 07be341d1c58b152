"""``vgpuctl status``: a picture of every physical GPU, as a pure function of the inventory, the policy and who
uses what.

Per GPU, a row of *slots*:

* NVIDIA time-sliced (a T4): one slot per framebuffer unit, the smallest framebuffer of the GPU's types (1 GiB on a
  T4, so 16 slots); an instance covers as many slots as its framebuffer;
* NVIDIA SR-IOV (an A16): one slot per VF, one vGPU per VF;
* other vendors (GVT-g, samples): one slot per instance plus what the host says is still available.

Each slot is ``used`` (by an instance: its type and domain), ``free`` (any allowed type fits), ``restricted`` (free,
but only for the type the GPU already holds: the type-mixing rule) or ``blocked`` (free, but nothing fits any more:
the held type is at its maximum and the mixing rule forbids the others).  Then the capacity left per allowed type
(the placement engine's ``headroom``) and the framebuffer that is free but unusable for the GPU's largest allowed
profile: the host's fragmentation, what ``vgpuctl defrag --plan`` can win back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .model import Inventory, Vendor, VgpuType
from .host.rules import GPU_RULES
from .placement import GpuKind, GpuState, Usage, gpu_states, headroom, rule_for
from .policy import Policy

USED, FREE, RESTRICTED, BLOCKED = "used", "free", "restricted", "blocked"
GLYPH = {FREE: ".", RESTRICTED: "-", BLOCKED: "x"}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
MAX_OTHER_SLOTS = 64  #: other vendors: show at most this many slots (GVT-g and samples can report hundreds)

GPU_SCHEMA = "vgpuctl.status-gpu/v1"
HOST_SCHEMA = "vgpuctl.status-host/v1"


@dataclass(frozen=True)
class Slot:
    state: str  #: used, free, restricted or blocked
    uuid: Optional[str] = None  #: the instance (used slots)
    label: Optional[str] = None  #: its letter in the picture
    parent: Optional[str] = None  #: the VF (SR-IOV slots) or the instance's parent


@dataclass(frozen=True)
class Holder:
    label: str
    uuid: str
    parent: str
    type_id: str
    profile: Optional[str]  #: "T4-4Q"
    domain: Optional[str]
    slots: int
    defined_by: Tuple[str, ...] = ()  #: who defines it (``coexist.definers``): vgpuctl:<name>, mdevctl:auto, hook
    license: Optional[str] = None  #: NVIDIA: licensed, unlicensed, ... or unknown (NVML); None elsewhere
    license_expiry: Optional[str] = None  #: ISO time, "permanent" or None


@dataclass(frozen=True)
class Capacity:
    type_id: str
    profile: Optional[str]
    framebuffer_mib: Optional[int]
    left: int


@dataclass(frozen=True)
class GpuStatus:
    gpu: str
    kind: GpuKind
    mode: str
    model: Optional[str]
    numa_node: Optional[int]
    rule: str
    slot_unit: str  #: what one slot is: "1024 MiB", "VF", "instance"
    slots: Tuple[Slot, ...]
    holders: Tuple[Holder, ...]
    capacity: Tuple[Capacity, ...]  #: allowed types offered here, with how many more fit now
    hidden_slots: int = 0  #: other vendors: free slots beyond MAX_OTHER_SLOTS
    total_mib: Optional[int] = None
    used_mib: Optional[int] = None
    free_mib: Optional[int] = None
    largest: Optional[str] = None  #: the largest allowed profile here
    largest_left: int = 0
    unusable_mib: Optional[int] = None  #: free framebuffer the largest allowed profile cannot use

    def count(self, state: str) -> int:
        return sum(1 for s in self.slots if s.state == state) + (self.hidden_slots if state == FREE else 0)


@dataclass(frozen=True)
class HostStatus:
    gpus: Tuple[GpuStatus, ...]

    @property
    def free_mib(self) -> int:
        return sum(g.free_mib or 0 for g in self.gpus if g.unusable_mib is not None)

    @property
    def unusable_mib(self) -> int:
        return sum(g.unusable_mib or 0 for g in self.gpus)

    @property
    def fragmentation(self) -> float:
        """Share of the free framebuffer that the GPUs' largest allowed profiles cannot use: 0 (none) to 1."""
        return round(self.unusable_mib / self.free_mib, 4) if self.free_mib else 0.0


def _profile(t: Optional[VgpuType], type_id: str) -> str:
    return (t.profile if t is not None else None) or type_id


def host_status(
    inventory: Inventory,
    policy: Policy,
    *,
    domains: Optional[Mapping[str, str]] = None,
    usage: Optional[Usage] = None,
    defined_by: Optional[Mapping[str, Sequence[str]]] = None,
    licenses: Optional[Mapping[str, Any]] = None,
) -> HostStatus:
    """The status of every physical GPU; ``domains``: instance uuid -> the domain using it (from libvirt);
    ``defined_by``: instance uuid -> who defines it; ``licenses``: instance uuid -> its ``vgpuctl.nvml.License``
    (NVIDIA instances missing there are "unknown")."""
    domains = domains or {}
    defs = defined_by or {}
    lic = licenses or {}
    return HostStatus(tuple(_gpu(inventory, policy, g, domains, defs, lic) for g in gpu_states(inventory, usage)))


def _gpu(
    inv: Inventory,
    policy: Policy,
    g: GpuState,
    domains: Mapping[str, str],
    defs: Mapping[str, Sequence[str]] = {},
    licenses: Mapping[str, Any] = {},
) -> GpuStatus:
    _, rule = rule_for(policy, g)
    names = {p.name for p in g.parents}
    insts = sorted((i for i in inv.instances if i.parent in names), key=lambda i: (i.parent, i.uuid))
    fb = dict(g.fb_of)
    allowed = [o for o in g.offers if rule.allows(o.vtype)]
    capacity = tuple(
        Capacity(o.type_id, o.vtype.profile, o.vtype.framebuffer_mib, headroom(g, o.type_id)) for o in allowed
    )
    # how many more of the type(s) the GPU holds fit: what 'restricted' slots can still take
    held_room = max((c.left for c in capacity if dict(g.counts).get(c.type_id)), default=0)
    holders: List[Holder] = []
    slots: List[Slot] = []
    hidden = 0
    known_fb = g.rules.counted and bool(fb) and all(fb.values())
    if g.rules.one_per_parent:
        unit = "VF"
        by_parent = {i.parent: i for i in insts}
        for i in insts:
            holders.append(_holder(inv, i, len(holders), domains, 1, defs, licenses))
        label = {h.uuid: h.label for h in holders}
        free_vfs = [p.name for p in g.parents if p.name not in by_parent]
        restricted = set(free_vfs[:held_room]) if insts else set()
        for p in g.parents:
            i = by_parent.get(p.name)
            if i is not None:
                slots.append(Slot(USED, i.uuid, label[i.uuid], p.name))
            elif not insts:
                slots.append(Slot(FREE, parent=p.name))
            else:
                slots.append(Slot(RESTRICTED if p.name in restricted else BLOCKED, parent=p.name))
    elif known_fb and g.total_fb:
        size = min(v for v in fb.values() if v)
        unit = f"{size} MiB"
        cells = g.total_fb // size
        for i in insts:
            span = max(1, (fb.get(i.type_id) or size) // size)
            h = _holder(inv, i, len(holders), domains, span, defs, licenses)
            holders.append(h)
            slots += [Slot(USED, i.uuid, h.label, i.parent)] * span
        free = max(cells - len(slots), 0)
        if not insts:
            slots += [Slot(FREE)] * free
        else:
            held = [t for t, n in g.counts if n]
            per = max((fb.get(t) or size) // size for t in held)
            usable = min(free, held_room * per)
            slots += [Slot(RESTRICTED)] * usable + [Slot(BLOCKED)] * (free - usable)
    else:
        unit = "instance"
        for i in insts:
            h = _holder(inv, i, len(holders), domains, 1, defs, licenses)
            holders.append(h)
            slots.append(Slot(USED, i.uuid, h.label, i.parent))
        room = max((o.host_available for o in g.offers), default=0)
        shown = max(0, min(room, MAX_OTHER_SLOTS - len(slots)))
        hidden = room - shown
        slots += [Slot(FREE)] * shown
    status = GpuStatus(
        gpu=g.gpu,
        kind=g.kind,
        mode=str(g.mode),
        model=g.model,
        numa_node=g.numa_node,
        rule=rule.name,
        slot_unit=unit,
        slots=tuple(slots),
        holders=tuple(holders),
        capacity=capacity,
        hidden_slots=hidden,
    )
    if known_fb and g.total_fb:
        ranked = sorted(allowed, key=lambda o: (-(o.vtype.framebuffer_mib or 0), o.vtype.profile or o.type_id))
        largest = ranked[0] if ranked else None
        free_mib = max(g.total_fb - g.used_fb, 0)
        left = headroom(g, largest.type_id) if largest is not None else 0
        usable = left * (largest.vtype.framebuffer_mib or 0) if largest is not None else 0
        status = replace(
            status,
            total_mib=g.total_fb,
            used_mib=g.used_fb,
            free_mib=free_mib,
            largest=largest.vtype.profile or largest.type_id if largest is not None else None,
            largest_left=left,
            unusable_mib=max(free_mib - usable, 0),
        )
    return status


def _holder(
    inv: Inventory,
    i: Any,
    n: int,
    domains: Mapping[str, str],
    span: int,
    defs: Mapping[str, Sequence[str]],
    licenses: Mapping[str, Any],
) -> Holder:
    t = inv.type_on(i.parent, i.type_id)
    p = inv.parent(i.parent)
    lic = licenses.get(i.uuid)
    nvidia = p is not None and p.vendor is Vendor.NVIDIA
    return Holder(
        label=LETTERS[n % len(LETTERS)],
        uuid=i.uuid,
        parent=i.parent,
        type_id=i.type_id,
        profile=_profile(t, i.type_id),
        domain=domains.get(i.uuid),
        slots=span,
        defined_by=tuple(defs.get(i.uuid, ())),
        license=(lic.state if lic is not None else "unknown") if nvidia else None,
        license_expiry=lic.expiry_text if nvidia and lic is not None else None,
    )


# --- rendering ------------------------------------------------------------------------------------------------------
def records(status: HostStatus) -> List[Dict[str, Any]]:
    """``--json``: one record per GPU, then one for the host."""
    out: List[Dict[str, Any]] = []
    for g in status.gpus:
        out.append(
            {
                "schema": GPU_SCHEMA,
                "gpu": g.gpu,
                "model": g.model,
                "kind": str(g.kind),
                "mode": g.mode,
                "numa_node": g.numa_node,
                "rule": g.rule,
                "slot_unit": g.slot_unit,
                "picture": picture(g),
                "slots_used": g.count(USED),
                "slots_free": g.count(FREE),
                "slots_restricted": g.count(RESTRICTED),
                "slots_blocked": g.count(BLOCKED),
                "slots": [{"state": s.state, "label": s.label, "uuid": s.uuid, "parent": s.parent} for s in g.slots],
                "instances": [
                    {
                        "label": h.label,
                        "uuid": h.uuid,
                        "parent": h.parent,
                        "type_id": h.type_id,
                        "type_name": h.profile,
                        "domain": h.domain,
                        "slots": h.slots,
                        "defined_by": list(h.defined_by),
                        "license": h.license,
                        "license_expiry": h.license_expiry,
                    }
                    for h in g.holders
                ],
                "capacity": [
                    {"type_id": c.type_id, "type_name": c.profile, "framebuffer_mib": c.framebuffer_mib, "left": c.left}
                    for c in g.capacity
                ],
                "framebuffer_total_mib": g.total_mib,
                "framebuffer_used_mib": g.used_mib,
                "framebuffer_free_mib": g.free_mib,
                "largest_allowed": g.largest,
                "largest_allowed_left": g.largest_left if g.largest else None,
                "framebuffer_unusable_mib": g.unusable_mib,
            }
        )
    out.append(
        {
            "schema": HOST_SCHEMA,
            "gpus": len(status.gpus),
            "gpus_empty": sum(1 for g in status.gpus if not g.holders),
            "instances": sum(len(g.holders) for g in status.gpus),
            "framebuffer_free_mib": status.free_mib,
            "framebuffer_unusable_mib": status.unusable_mib,
            "fragmentation": status.fragmentation,
        }
    )
    return out


COLOURS = {USED: "cyan", FREE: "green", RESTRICTED: "yellow", BLOCKED: "red"}


def picture(g: GpuStatus, *, colour: bool = False) -> str:
    """The slots as one line of glyphs, a space every 8 (a letter per instance: ``AAAABBBB----xxxx``)."""
    out = []
    for n, s in enumerate(g.slots):
        if n and n % 8 == 0:
            out.append(" ")
        ch = s.label if s.state == USED else GLYPH[s.state]
        out.append(_style(ch or "?", COLOURS[s.state], colour))
    if g.hidden_slots:
        out.append(f" +{g.hidden_slots} free")
    return "".join(out)


def _style(text: str, fg: str, colour: bool) -> str:
    if not colour:
        return text
    import click

    return click.style(text, fg=fg, bold=fg == "cyan")


def render_text(status: HostStatus, *, colour: bool = False) -> str:
    lines = [
        "legend: A-Z used (see below)  . free  - free for the held type only (type mix)  x unusable (type mix, max)",
    ]
    for g in status.gpus:
        head = f"{g.gpu}  {g.model or '?'}  {g.kind}"
        if GPU_RULES[g.kind].modes:
            head += f", {g.mode}"
        head += f"  NUMA {g.numa_node if g.numa_node is not None else '-'}  rule {g.rule}"
        lines += ["", head, f"  slots  {picture(g, colour=colour)}  (1 slot = {g.slot_unit})"]
        answered = any(h.license not in (None, "unknown") for h in g.holders)  # NVML told this GPU's licenses
        for h in g.holders:
            extra = f"  {h.parent}" if GPU_RULES[g.kind].one_per_parent else ""
            if h.defined_by:
                extra += f"  defined by {','.join(h.defined_by)}"
            if h.license is not None and answered:
                extra += f"  license {h.license}" + (f" until {h.license_expiry}" if h.license_expiry else "")
            lines.append(f"  {h.label}  {h.uuid}  {h.profile:<8}  {h.domain or '-'}{extra}")
        left = ", ".join(f"{c.profile or c.type_id} {c.left}" for c in g.capacity if c.left) or "nothing"
        lines.append(f"  left   {left}")
        if g.unusable_mib is not None:
            lines.append(
                f"  fb     {g.used_mib}/{g.total_mib} MiB used, {g.free_mib} free, "
                f"{g.unusable_mib} unusable for {g.largest} ({g.largest_left} fit)"
            )
    lines += [
        "",
        f"host: {len(status.gpus)} GPUs ({sum(1 for g in status.gpus if not g.holders)} empty), "
        f"{sum(len(g.holders) for g in status.gpus)} instances; fragmentation "
        f"{round(100 * status.fragmentation)}% ({status.unusable_mib} of {status.free_mib} MiB free is unusable "
        "for the largest allowed profile)",
    ]
    return "\n".join(lines)


__all__ = ["GpuStatus", "HostStatus", "Slot", "host_status", "picture", "records", "render_text"]
