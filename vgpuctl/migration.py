"""Live-migration pre-flight: can this host take a domain's vGPUs, and where would they land?  Pure: no I/O.

The domain XML comes from the source host; vgpuctl's metadata in it names each vGPU's type (id, and the name the
source host gave it).  For each vGPU the answer is one of:

* ``fits``: this host offers the same type (same id and, where the source recorded it, the same name) and the
  placement policy puts it on ``parent``; the uuid is kept when it is free here.
* ``no-capacity``: the type is offered, but no GPU can take one more now (full, type-mix, quota, ...): exit 4.
* ``incompatible``: this host cannot run it whatever is freed: no such type, another type behind the same id (a
  different vGPU manager), another NVIDIA board family (H100/H200/H800 do not migrate between each other), a
  different NVIDIA driver version than the source's, or a vGPU the XML does not describe: exit 15.

Several vGPUs of one domain are placed one after the other, each seeing the ones before it.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from dataclasses import dataclass
from enum import Enum
from typing import List, Optional, Sequence, Tuple

from .errors import AmbiguousType, UnknownType
from .model import BackendKind, Inventory, VgpuType
from .placement import Request, Usage, apply as place_apply, place
from .policy import Policy
from .virt.domxml import DomainXml


class Fit(str, Enum):
    FITS = "fits"
    NO_CAPACITY = "no-capacity"
    INCOMPATIBLE = "incompatible"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class VgpuFit:
    """The answer for one vGPU of the domain."""

    uuid: str  #: the source's identity (mdev uuid, or a VF address)
    type_id: Optional[str]
    type_name: Optional[str]  #: as the source recorded it, else this host's name for the type
    fit: Fit
    reason: str = ""
    parent: Optional[str] = None  #: where it would land here
    gpu: Optional[str] = None
    target_uuid: Optional[str] = None  #: the uuid it would have here (the same one when free)

    @property
    def keeps_uuid(self) -> bool:
        return self.target_uuid is not None and self.target_uuid == self.uuid


@dataclass(frozen=True)
class SourceFacts:
    """What the operator (or the fleet check) knows about the source host that the XML does not say."""

    driver_version: Optional[str] = None  #: the source's NVIDIA vGPU manager version


@dataclass(frozen=True)
class TargetFacts:
    """This host's NVIDIA facts, read through NVML (None: not known)."""

    driver_version: Optional[str] = None


#: NVIDIA does not migrate vGPUs between these boards of one generation (vGPU software user guide, "Migration support")
_NO_CROSS_MIGRATION = (frozenset({"H100", "H200", "H800"}),)
_BOARD_RE = re.compile(r"(?:^|\s)([A-Z]+[0-9]+[A-Z]*)(?:-|\s|$)")


def board_of(type_name: Optional[str]) -> Optional[str]:
    """The board in an NVIDIA type name: ``H200`` for ``NVIDIA H200-1-18C``, ``T4`` for ``GRID T4-2Q``."""
    if not type_name:
        return None
    m = _BOARD_RE.search(type_name.split()[-1] if " " in type_name else type_name)
    return m.group(1) if m else None


def _board_rule(source_name: Optional[str], target_name: Optional[str]) -> Optional[str]:
    a, b = board_of(source_name), board_of(target_name)
    if not a or not b or a == b:
        return None
    for family in _NO_CROSS_MIGRATION:
        if a in family and b in family:
            return (
                f"the source's vGPU type is for the {a}, this host's for the {b}: NVIDIA does not migrate vGPUs "
                f"between {', '.join(sorted(family))} boards"
            )
    return f"the source's vGPU type is for the {a}, this host's for the {b}"


def _offers(inventory: Inventory, type_id: str) -> List[VgpuType]:
    return [t for t in inventory.types if t.type_id == type_id]


def _fresh_uuid(inventory: Inventory, taken: Sequence[str]) -> str:
    while True:
        u = str(uuidlib.uuid4())
        if inventory.instance(u) is None and u not in taken:
            return u


def check(
    dx: DomainXml,
    inventory: Inventory,
    policy: Policy,
    *,
    usage: Optional[Usage] = None,
    source: SourceFacts = SourceFacts(),
    target: TargetFacts = TargetFacts(),
    new_uuid: Optional[Sequence[str]] = None,
) -> Tuple[VgpuFit, ...]:
    """The answer for every vGPU the domain's hostdevs reference, in XML order.  ``new_uuid``: the uuids to give
    vGPUs whose own uuid is taken here, in order (tests); else fresh random ones."""
    usage = usage or Usage()
    fresh = list(new_uuid or ())
    out: List[VgpuFit] = []
    inv = inventory
    taken: List[str] = []
    for ident in dx.devices:
        m = dx.managed_entry(ident)
        if m is None or not m.type_id:
            out.append(
                VgpuFit(
                    ident,
                    None,
                    None,
                    Fit.INCOMPATIBLE,
                    "the domain XML does not say which type this vGPU is (no vgpuctl metadata for it): "
                    "attach it with vgpuctl on the source, or re-attach it there with vgpuctl attach",
                )
            )
            continue
        offers = _offers(inv, m.type_id)
        if not offers:
            known = sorted({t.profile or t.type_id for t in inv.types})
            out.append(
                VgpuFit(
                    ident,
                    m.type_id,
                    m.type_name or None,
                    Fit.INCOMPATIBLE,
                    f"this host offers no type {m.type_id}"
                    + (f" ({m.type_name})" if m.type_name else "")
                    + (f"; it offers {', '.join(known)}" if known else "; it has no vGPU types at all"),
                )
            )
            continue
        here_name = offers[0].name
        if m.type_name and here_name and m.type_name != here_name:
            rule = _board_rule(m.type_name, here_name)
            out.append(
                VgpuFit(
                    ident,
                    m.type_id,
                    m.type_name,
                    Fit.INCOMPATIBLE,
                    rule
                    or (
                        f"type {m.type_id} is {m.type_name!r} on the source and {here_name!r} here: "
                        "the vGPU managers differ (NVIDIA's type ids are per driver version)"
                    ),
                )
            )
            continue
        nvidia = any(
            inv.parent(t.parent) is not None and str(inv.parent(t.parent).vendor) == "nvidia"  # type: ignore[union-attr]
            for t in offers
        )
        if (
            nvidia
            and source.driver_version
            and target.driver_version
            and source.driver_version != target.driver_version
        ):
            out.append(
                VgpuFit(
                    ident,
                    m.type_id,
                    m.type_name or here_name,
                    Fit.INCOMPATIBLE,
                    f"NVIDIA migrates vGPUs only between equal vGPU manager versions: the source runs "
                    f"{source.driver_version}, this host {target.driver_version}",
                )
            )
            continue
        if m.backend != str(BackendKind.MDEV):
            # A per-VF vGPU is named by its VF: on this host it is another PCI address, which the domain XML would
            # have to be rewritten to; the hook does that only for mdev uuids.
            out.append(
                VgpuFit(
                    ident,
                    m.type_id,
                    m.type_name or here_name,
                    Fit.INCOMPATIBLE,
                    "a per-VF (vendor VFIO) vGPU is named by its VF's PCI address: vgpuctl migrates mdev "
                    "vGPUs only (the destination XML would need another VF address)",
                )
            )
            continue
        try:
            d = place(
                inv,
                policy,
                Request(type=m.type_id, domain=dx.name, tenant=dx.tenant, groups=dx.groups, numa_nodes=dx.memory_nodes),
                usage=usage,
            )
        except (UnknownType, AmbiguousType) as e:  # cannot happen for an offered id; kept one line if it does
            out.append(VgpuFit(ident, m.type_id, m.type_name or here_name, Fit.INCOMPATIBLE, str(e)))
            continue
        if not d.placed or d.parent is None:
            why = (
                "; ".join(
                    f"{gpu}: {reason}" + (f" ({detail})" if detail else "") for gpu, reason, detail in d.refusals()
                )
                or "no GPU offers it"
            )
            out.append(VgpuFit(ident, m.type_id, m.type_name or here_name, Fit.NO_CAPACITY, why))
            continue
        target_uuid = (
            ident
            if inv.instance(ident) is None and ident not in taken
            else (fresh.pop(0) if fresh else _fresh_uuid(inv, taken))
        )
        taken.append(target_uuid)
        inv = place_apply(inv, parent=d.parent, type_id=d.type_id or m.type_id, uuid=target_uuid, usage=usage)
        out.append(
            VgpuFit(
                ident,
                m.type_id,
                m.type_name or here_name,
                Fit.FITS,
                "" if target_uuid == ident else f"uuid {ident} is taken here: it gets {target_uuid}",
                parent=d.parent,
                gpu=d.gpu,
                target_uuid=target_uuid,
            )
        )
    return tuple(out)


def verdict(fits: Sequence[VgpuFit]) -> Fit:
    """The domain's answer: incompatible if any vGPU is, else no-capacity if any is, else fits."""
    kinds = {f.fit for f in fits}
    for k in (Fit.INCOMPATIBLE, Fit.NO_CAPACITY):
        if k in kinds:
            return k
    return Fit.FITS
