"""The backends' rules, as data the pure core asks (placement, plan, spec, apply, templates): no I/O here.

A backend is more than its sysfs reads and writes: the kind of device it makes obeys rules that the planner and the
placement engine must predict.  They live here, one frozen value per backend kind and one per kind of physical GPU,
so that the core asks "is an instance of this backend named by its parent?" instead of testing
``BackendKind.NVIDIA_VF`` itself.  A new backend declares its ``BackendRules`` (``Backend.rules``) and, where its GPUs
follow rules none of the ``GpuRules`` below describe, a new ``GpuRules`` value; nothing outside ``host/`` changes.

``BackendRules`` (per ``BackendKind``, what every instance of the backend obeys):

- ``named_by_parent``: an instance is known by its parent's address, not a uuid (NVIDIA vendor VFIO: the VF is the
  vGPU), so a desired instance there cannot carry a uuid and the placement engine cannot choose such a parent for
  one that is named by uuid;
- ``one_per_parent``: a parent holds at most one instance (one vGPU per VF);
- ``typed_offers_own_type``: a parent with an instance lists only that instance's type; reset, it offers its GPU's
  table again, so re-typing is destroy + create and the planner predicts the offers after a destroy
  (``offers_after_destroy``);
- ``mode_mixing``: the GPU's type-mixing rule depends on its heterogeneous mode, which only NVML reports
  (``MixMode``); a mode nobody reported is predicted as ``unknown_mode``.

``GpuRules`` (per physical GPU, chosen from its parents by ``gpu_rules``; ``placement.GpuState.rules``):

- ``counted``: the vendor's capacity rules apply (``max_instance``, framebuffer, type mixing); False: only the
  host's ``available_instances`` decides (any non-NVIDIA parent);
- ``one_per_parent``: each parent is a VF that holds one vGPU, and the GPU-wide count and mixing rule decide for
  the free VFs (NVIDIA SR-IOV: the A16's mdev-on-VF and vendor VFIO);
- ``modes``: whether heterogeneous modes apply at all (False: always homogeneous);
- ``mix_rule``: the homogeneous mixing rule in words, for messages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Set

from ..model import BackendKind, Inventory, Parent, Vendor, VgpuType


class GpuKind(str, Enum):
    TIME_SLICED = "time-sliced"  #: NVIDIA vGPUs on the physical function
    SRIOV = "sriov"  #: NVIDIA vGPUs on SR-IOV VFs, one per VF
    OTHER = "other"  #: any other vendor: the host's available_instances decide

    def __str__(self) -> str:
        return self.value


class MixMode(str, Enum):
    """How types may share one physical GPU (NVIDIA)."""

    HOMOGENEOUS = "homogeneous"  #: one type per GPU (before vGPU 17, and the default)
    EQUAL_SIZE = "equal-size"  #: heterogeneous: several types of one framebuffer size
    MIXED_SIZE = "mixed-size"  #: heterogeneous: any types that fit the framebuffer

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GpuRules:
    """The capacity rules of one kind of physical GPU (see the module docstring)."""

    kind: GpuKind
    counted: bool
    one_per_parent: bool
    modes: bool
    mix_rule: str = ""


TIME_SLICED = GpuRules(
    GpuKind.TIME_SLICED,
    counted=True,
    one_per_parent=False,
    modes=True,
    mix_rule="NVIDIA time-sliced GPUs run one type at a time",
)
SRIOV = GpuRules(
    GpuKind.SRIOV,
    counted=True,
    one_per_parent=True,
    modes=True,
    mix_rule="NVIDIA GPUs run one vGPU type at a time unless heterogeneous mode is on",
)
OTHER = GpuRules(GpuKind.OTHER, counted=False, one_per_parent=False, modes=False)
GPU_RULES: Dict[GpuKind, GpuRules] = {r.kind: r for r in (TIME_SLICED, SRIOV, OTHER)}
#: in equal-size heterogeneous mode the rule is the mode's, whatever the GPU's kind
EQUAL_SIZE_RULE = "in equal-size heterogeneous mode an NVIDIA GPU runs types of one framebuffer size at a time"


@dataclass(frozen=True)
class BackendRules:
    """What every instance of one backend kind obeys (see the module docstring)."""

    kind: BackendKind
    named_by_parent: bool = False
    one_per_parent: bool = False
    typed_offers_own_type: bool = False
    mode_mixing: bool = False
    unknown_mode: MixMode = MixMode.HOMOGENEOUS


MDEV_RULES = BackendRules(BackendKind.MDEV)
NVIDIA_VF_RULES = BackendRules(
    BackendKind.NVIDIA_VF,
    named_by_parent=True,
    one_per_parent=True,
    typed_offers_own_type=True,
    mode_mixing=True,
    unknown_mode=MixMode.MIXED_SIZE,
)
_BY_KIND: Dict[BackendKind, BackendRules] = {r.kind: r for r in (MDEV_RULES, NVIDIA_VF_RULES)}


def backend_rules(kind: BackendKind) -> BackendRules:
    """The rules of backend ``kind`` (a kind without a declaration has none of the special rules)."""
    return _BY_KIND.get(kind) or BackendRules(kind)


def named_by_parent(kind: BackendKind) -> bool:
    """Whether an instance of backend ``kind`` is known by its parent's address (no uuid)."""
    return backend_rules(kind).named_by_parent


def gpu_rules(parents: Sequence[Parent]) -> GpuRules:
    """The rules of the physical GPU ``parents`` belong to: vendor rules for NVIDIA, one vGPU per parent where the
    parents are VFs (mdev on a VF) or the backend makes one per parent; the host's figures for anything else."""
    if not parents or parents[0].vendor is not Vendor.NVIDIA:
        return OTHER
    if any(p.is_vf or backend_rules(p.backend).one_per_parent for p in parents):
        return SRIOV
    return TIME_SLICED


# --- questions the core asks about an inventory (pure) -------------------------------------------------------------
def parent_named(inventory: Inventory, name: Optional[str]) -> Optional[Parent]:
    """The parent ``name`` refers to (case-insensitively) when its instances are named by it, or None."""
    p = inventory.find_parent(name)
    return p if p is not None and named_by_parent(p.backend) else None


def named_parents_of_gpu(inventory: Inventory, gpu: str) -> List[Parent]:
    """The parents of physical GPU ``gpu`` (case-insensitive) whose instances are named by them, in address order."""
    low = gpu.lower()
    return sorted(
        (p for p in inventory.parents if named_by_parent(p.backend) and p.gpu.lower() == low), key=lambda p: p.name
    )


def mode_gpus(inventory: Inventory, parents: Optional[Iterable[str]] = None) -> Set[str]:
    """Physical GPUs whose mixing rule depends on their heterogeneous mode (``BackendRules.mode_mixing``); with
    ``parents`` (names, case-insensitive), only the GPUs of those."""
    by_name = {p.name.lower(): p for p in inventory.parents if backend_rules(p.backend).mode_mixing}
    if parents is None:
        return {p.gpu for p in by_name.values()}
    return {by_name[n.lower()].gpu for n in parents if n and n.lower() in by_name}


def predicted_modes(
    inventory: Inventory, heterogeneous: Mapping[str, bool], known: Optional[Mapping[str, MixMode]] = None
) -> Dict[str, MixMode]:
    """``known`` completed for the GPUs whose mixing depends on their mode: mixed-size or equal-size where
    ``heterogeneous`` (NVML: GPU -> enabled) says, else what ``known`` has, else the backend's ``unknown_mode``."""
    modes = dict(known or {})
    unknown = {
        p.gpu: backend_rules(p.backend).unknown_mode for p in inventory.parents if backend_rules(p.backend).mode_mixing
    }
    for gpu, default in unknown.items():
        if gpu in heterogeneous:
            modes[gpu] = MixMode.MIXED_SIZE if heterogeneous[gpu] else MixMode.EQUAL_SIZE
        else:
            modes.setdefault(gpu, default)
    return modes


def offers_after_destroy(inventory: Inventory, freed: Collection[str]) -> Inventory:
    """``inventory`` where each parent whose instance a plan destroys, of a backend whose typed parents list only
    their own type (``typed_offers_own_type``), also lists what its GPU's free parents offer: reset, it offers the
    GPU's table again, so re-typing it is predicted.  ``placement.release`` then recounts them by the GPU's rules."""
    extra: List[VgpuType] = []
    used = {i.parent for i in inventory.instances}
    for uuid in freed:
        inst = inventory.instance(uuid)
        p = inventory.parent(inst.parent) if inst is not None else None
        if inst is None or p is None or not backend_rules(p.backend).typed_offers_own_type:
            continue
        have = {t.type_id for t in inventory.types_on(p.name)}
        for q in inventory.parents:
            if q.gpu != p.gpu or q.name in used or q.backend is not p.backend:
                continue
            for t in inventory.types_on(q.name):
                if t.type_id not in have:
                    have.add(t.type_id)
                    extra.append(replace(t, parent=p.name))
    if not extra:
        return inventory
    types = tuple(sorted(inventory.types + tuple(extra), key=lambda t: (t.parent, t.type_id)))
    return replace(inventory, types=types)
