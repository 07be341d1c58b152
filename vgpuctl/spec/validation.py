"""The desired state against the host's inventory: what a type name means on a parent, the identity a vendor-VFIO
instance gets (its VF: ``bind``), what the desired state cannot mean there (``vf_issues``) and the checks
``validate`` raises ``ConfigError`` for.  Pure: the inventory is passed in."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Collection, Dict, List, Optional, Sequence, Tuple

from ..errors import AmbiguousType, ConfigError, UnknownType
from ..host.rules import named_by_parent, named_parents_of_gpu, parent_named
from ..model import Inventory, Parent, find_type
from .schema import DesiredInstance, DesiredState


def _type_id_on(inventory: Inventory, parent: str, wanted: str) -> Optional[str]:
    """The type id ``wanted`` names on ``parent``, or None if it names no one type there (``ambiguity`` tells an
    ambiguous name from one not offered)."""
    try:
        return find_type(inventory, parent, wanted).type_id
    except (UnknownType, AmbiguousType):  # does not resolve to one type there
        return None


def ambiguity(inventory: Inventory, parent: str, d: DesiredInstance) -> Optional[AmbiguousType]:
    """The ``AmbiguousType`` ``model.find_type`` raises for ``d``'s type (or a type of its profile) on ``parent``,
    or None: why ``desired_type`` found nothing where the parent does offer the name, twice."""
    try:
        if d.profile_def is not None:
            d.profile_def.type_on(inventory, parent)
        else:
            find_type(inventory, parent, d.type)
    except AmbiguousType as e:
        return e
    except UnknownType:
        pass
    return None


def no_type_reason(inventory: Inventory, parent: str, d: DesiredInstance) -> str:
    """Why ``desired_type`` is None for ``d`` on ``parent``, in words: the name is ambiguous there, or not offered."""
    amb = ambiguity(inventory, parent, d)
    return str(amb) if amb is not None else f"{parent} does not offer type {d.type}"


def desired_type(inventory: Inventory, parent: str, d: DesiredInstance) -> Optional[str]:
    """The type id desired instance ``d`` gets on ``parent``: its type, or what its service profile resolves to
    there; None if ``parent`` offers neither.  A vendor-VFIO VF that holds a vGPU offers only that vGPU's type, so
    there the GPU's other VFs also say what the name means (re-typing a VF: destroy, then create)."""
    tid = _type_on(inventory, parent, d)
    if tid is None:
        p = vf_parent(inventory, parent)
        if p is not None and inventory.instance(p.name) is not None:
            for q in sorted(inventory.parents, key=lambda q: q.name):
                if q.backend is p.backend and q.gpu == p.gpu and q.name != p.name:
                    tid = _type_on(inventory, q.name, d)
                    if tid is not None:
                        break
    return tid


def _type_on(inventory: Inventory, parent: str, d: DesiredInstance) -> Optional[str]:
    if d.profile_def is not None:
        try:
            t = d.profile_def.type_on(inventory, parent)
        except AmbiguousType:
            return None
        return t.type_id if t is not None else None
    return _type_id_on(inventory, parent, d.type)


def host_parent(inventory: Inventory, name: str) -> Optional[str]:
    """The registered parent ``name`` refers to (case-insensitively), or None."""
    p = inventory.find_parent(name)
    return p.name if p is not None else None


# --- vendor-VFIO instances: named by their VF -------------------------------------------------------------------
def vf_parent(inventory: Inventory, name: Optional[str]) -> Optional[Parent]:
    """The NVIDIA vendor-VFIO parent (an SR-IOV VF with ``nvidia/``) ``name`` refers to, or None."""
    return parent_named(inventory, name)


def _vf_gpu(inventory: Inventory, name: str) -> List[Parent]:
    """The vendor-VFIO VFs of physical GPU ``name`` when ``name`` is such a GPU (and not itself a parent), in address
    order; else empty."""
    if host_parent(inventory, name) is not None:
        return []
    return named_parents_of_gpu(inventory, name)


def bind(desired: DesiredState, inventory: Inventory) -> DesiredState:
    """``desired`` with the identities the host gives: an instance pinned to an NVIDIA vendor-VFIO VF is the vGPU on
    that VF, so its ``uuid`` becomes the VF's address (as ``Instance.uuid`` there is).  Instances ``vf_issues``
    reports are left as written (an explicit uuid, a VF an earlier instance already pins).  Pure; instances on a
    parent that is not registered keep their uuid until it is."""
    out: List[DesiredInstance] = []
    taken: set = set()
    changed = False
    for d in desired.instances:
        p = vf_parent(inventory, d.parent)
        if p is not None and d.uuid_derived and p.name not in taken:
            taken.add(p.name)
            d = replace(d, uuid=p.name)
            changed = True
        out.append(d)
    return replace(desired, instances=tuple(out)) if changed else desired


def vf_issues(desired: DesiredState, inventory: Inventory) -> Dict[str, Tuple[str, str]]:
    """Instance name -> (key, problem) for what the desired state cannot mean on this host's vendor-VFIO parents:
    an explicit ``uuid`` on an instance pinned to a VF (the VF's address is its name), a ``parent`` that is the
    physical GPU of vendor-VFIO VFs (pin one VF: which VF a vGPU is on is its identity, so vgpuctl does not choose
    it behind the operator's back).  A second instance pinned to one VF is not here: the plan blocks it
    ``no-capacity`` (one vGPU per VF) and ``validate`` refuses it."""
    out: Dict[str, Tuple[str, str]] = {}
    pins: Dict[str, DesiredInstance] = {}
    for d in desired.instances:
        if d.parent is None:
            continue
        p = vf_parent(inventory, d.parent)
        if p is not None:
            if not d.uuid_derived:
                out[d.name] = (
                    "uuid",
                    f"a vGPU on NVIDIA vendor-VFIO VF {p.name} is named by the VF's address, "
                    "not a uuid: drop 'uuid' (the instance is the VF given as 'parent')",
                )
            else:
                pins.setdefault(p.name, d)
    for d in desired.instances:
        if d.parent is None or d.name in out:
            continue
        vfs = _vf_gpu(inventory, d.parent)
        if vfs:
            out[d.name] = (
                "parent",
                f"{d.parent} is an NVIDIA GPU whose vGPUs live on its SR-IOV VFs and are named "
                f"by the VF: pin one VF as 'parent' ({suggest_vf(inventory, vfs, d, pins)})",
            )
    return out


def suggest_vf(inventory: Inventory, vfs: Sequence[Parent], d: DesiredInstance, pinned: Collection[str]) -> str:
    """Words naming the lowest VF of ``vfs`` that is free, offers ``d``'s type and no desired instance pins."""
    used = inventory.used_parents() | set(pinned)
    for p in vfs:
        if p.name not in used and desired_type(inventory, p.name, d) is not None:
            return f'the lowest free VF offering {d.type} is "{p.name}"'
    return f"none of its VFs {vfs[0].name}..{vfs[-1].name} is free and offers {d.type} now"


def validate(desired: DesiredState, inventory: Inventory) -> None:
    """Raise ``ConfigError`` for what the host proves wrong: a type no registered parent offers (or a name that
    means two types on a parent), more instances pinned to a parent than the type's ``max_instance`` allows, what
    ``vf_issues`` finds.  A parent that is not registered (yet) is not an error: its instances wait.  While no
    parent at all is registered nothing is checked."""
    if not inventory.parents:
        return
    issues = vf_issues(desired, inventory)
    for d in desired.instances:
        if d.name in issues:
            k, problem = issues[d.name]
            raise ConfigError(d.mark.path, problem, line=d.line_of(k), key=f"instances.{d.name}.{k}")
    _check_vf_pins(desired, inventory)
    pinned: Counter = Counter()
    #: GPUs whose VFs and types the desired state itself changes (SR-IOV, MIG): their types are judged after that
    shaped = {g.gpu for g in desired.gpus if g.mig is not None or g.sriov is not None}
    for d in desired.instances:
        pv = inventory.parent(d.parent) if d.parent is not None else None
        if pv is not None and pv.gpu in shaped:
            continue
        if d.parent is None:
            _check_placed(desired, inventory, d)
        else:
            _check_pinned(inventory, d, pinned)


def _check_vf_pins(desired: DesiredState, inventory: Inventory) -> None:
    """One desired instance per vendor-VFIO VF."""
    vf_pins: Dict[str, DesiredInstance] = {}
    for d in desired.instances:
        p = vf_parent(inventory, d.parent)
        if p is None:
            continue
        first = vf_pins.setdefault(p.name, d)
        if first is not d:
            raise ConfigError(
                d.mark.path,
                f"VF {p.name} holds one vGPU and instance {first.name} ({first.mark.path}:"
                f"{first.mark.line}) already pins it",
                line=d.line_of("parent"),
                key=f"instances.{d.name}.parent",
            )


def _check_placed(desired: DesiredState, inventory: Inventory, d: DesiredInstance) -> None:
    """A placed instance: some parent offers its type, and not only vendor-VFIO VFs (a vGPU there is named by
    its VF, so it must be pinned)."""
    offering = [p for p in inventory.parents if desired_type(inventory, p.name, d)]
    vfs = sorted((p for p in offering if named_by_parent(p.backend)), key=lambda p: p.name)
    if offering and len(vfs) == len(offering):
        pins = [x.parent for x in desired.instances if x.parent is not None]
        raise ConfigError(
            d.mark.path,
            f"only NVIDIA vendor-VFIO VFs offer type {d.type}, and a vGPU there is named by its "
            f"VF: give this instance a 'parent' VF instead of 'placement' "
            f"({suggest_vf(inventory, vfs, d, pins)})",
            line=d.line_of("placement"),
            key=f"instances.{d.name}.placement",
        )
    if not offering:
        amb = next((a for a in (ambiguity(inventory, p.name, d) for p in inventory.parents) if a), None)
        problem = str(amb) if amb is not None else f"no registered parent offers type {d.type} (see 'vgpuctl types')"
        raise ConfigError(d.mark.path, problem, line=d.line_of("type"), key=f"instances.{d.name}.type")


def _check_pinned(inventory: Inventory, d: DesiredInstance, pinned: Counter) -> None:
    """A pinned instance: its parent (where registered) offers its type, with room for every instance pinned
    there (``pinned`` counts them across calls)."""
    assert d.parent is not None
    parent = host_parent(inventory, d.parent)
    if parent is None:
        return
    tid = desired_type(inventory, parent, d)
    if tid is None:
        amb = ambiguity(inventory, parent, d)
        offered = ", ".join(t.type_id for t in inventory.types_on(parent)) or "none"
        problem = (
            str(amb) if amb is not None else f"parent {parent} does not offer type {d.type} (it offers: {offered})"
        )
        raise ConfigError(d.mark.path, problem, line=d.line_of("type"), key=f"instances.{d.name}.type")
    pinned[(parent, tid)] += 1
    vt = inventory.type_on(parent, tid)
    limit = vt.max_instance if vt is not None else None
    if limit is not None and pinned[(parent, tid)] > limit:
        raise ConfigError(
            d.mark.path,
            f"{pinned[(parent, tid)]} instances of {tid} pinned to {parent}, which holds at most {limit}",
            line=d.line_of("parent"),
            key=f"instances.{d.name}.parent",
        )
