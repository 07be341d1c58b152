"""GPU-wide NVIDIA settings that shape what a GPU offers: MIG (mode and GPU instances) and SR-IOV (the VFs).

Desired state (``gpus: <addr>:``, docs/desired-state.md)::

    mig: {mode: on, instances: [3g.71gb, 4g.71gb]}   # MIG mode, and the GPU instances by profile name
    mig: {mode: off}
    sriov: {vfs: 16}                                 # or {enabled: true}: all of sriov_totalvfs; {enabled: false}: 0

The parsers here read those nodes with the desired-state parser's strict helpers (``configfile.NodeReader``); the
planning functions are pure: from what NVML (MIG) or sysfs (SR-IOV) reported to what must change, and what blocks
it.  Both settings change the GPU as a whole (a MIG mode change resets the GPU; disabling VFs removes every VF), so
the planner blocks them while the GPU holds vGPUs or runs processes, naming them.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

#: a GPU instance profile's name as NVML spells it without its ``MIG `` prefix: ``1g.18gb``, ``1g.18gb+me``
PROFILE_RE = re.compile(r"[1-9][0-9]*g\.[1-9][0-9]*gb(\+[a-z]+)*")
_MIG_KEYS = ("mode", "instances")
_SRIOV_KEYS = ("vfs", "enabled")


@dataclass(frozen=True)
class DesiredMig:
    mode: bool
    instances: Tuple[str, ...] = ()  #: GPU instance profile names (with mode on); a multiset

    def text(self) -> str:
        if not self.mode:
            return "off"
        return "on" + (f" [{', '.join(sorted(self.instances))}]" if self.instances else " []")


@dataclass(frozen=True)
class DesiredSriov:
    vfs: Optional[int] = None  #: how many VFs; None: all the GPU has (``sriov_totalvfs``)
    enabled: bool = True

    def wanted(self, total: Optional[int]) -> Optional[int]:
        if not self.enabled:
            return 0
        return self.vfs if self.vfs is not None else total


def parse_mig(r: Any, node: Any, key: str) -> DesiredMig:
    """``mig: {mode: on|off, instances: [...]}`` (``r``: a ``configfile.NodeReader``)."""
    f = r.mapping(node, key, _MIG_KEYS)
    if "mode" not in f:
        raise r.fail(node, f"{key}.mode", "is required: on or off")
    mnode = f["mode"][1]
    mode = r.scalar(mnode, f"{key}.mode")  # YAML 1.1 reads on/off as booleans; quoted "on"/"off" are text
    if isinstance(mode, str) and mode.lower() in ("on", "off"):
        mode = mode.lower() == "on"
    if not isinstance(mode, bool):
        raise r.fail(mnode, f"{key}.mode", "must be on or off")
    instances: List[str] = []
    if "instances" in f:
        inode = f["instances"][1]
        if not isinstance(inode, r.yaml.SequenceNode):
            raise r.fail(inode, f"{key}.instances", "must be a list of GPU instance profiles, e.g. [1g.18gb, 3g.71gb]")
        for item in inode.value:
            v = r.scalar(item, f"{key}.instances")
            text = str(v).strip() if isinstance(v, str) else ""
            if not PROFILE_RE.fullmatch(text):
                raise r.fail(
                    item,
                    f"{key}.instances",
                    f"{item.value!r} is not a GPU instance profile name (like 1g.18gb or 3g.71gb; "
                    "'nvidia-smi mig -lgip' lists the GPU's)",
                )
            instances.append(text)
        if instances and not mode:
            raise r.fail(inode, f"{key}.instances", "GPU instances need mode: on")
    return DesiredMig(mode=mode, instances=tuple(instances))


def parse_sriov(r: Any, node: Any, key: str) -> DesiredSriov:
    """``sriov: {vfs: N}`` or ``{enabled: true|false}``."""
    f = r.mapping(node, key, _SRIOV_KEYS)
    if not f:
        raise r.fail(node, key, "give vfs: N or enabled: true|false")
    enabled = r.boolean(f["enabled"][1], f"{key}.enabled") if "enabled" in f else True
    vfs = None
    if "vfs" in f:
        vfs = r.integer(f["vfs"][1], f"{key}.vfs", 1)
        if not enabled:
            raise r.fail(f["vfs"][1], f"{key}.vfs", "vfs with enabled: false; drop one of them")
    return DesiredSriov(vfs=vfs, enabled=enabled)


# --- planning (pure) --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MigChange:
    """What one GPU's MIG state needs: the mode (None: as it is), GPU instances to destroy (ids) and to create
    (profile, start).  ``problem``: why the desired state cannot be had on this GPU (unknown profile, overlap)."""

    mode: Optional[bool] = None
    destroy: Tuple[int, ...] = ()
    create: Tuple[Tuple[str, int], ...] = ()
    problem: Optional[str] = None
    profiles_known: bool = True  #: False: MIG mode is off, NVML lists profiles only in MIG mode

    @property
    def empty(self) -> bool:
        return self.mode is None and not self.destroy and not self.create and self.problem is None


def mig_change(want: DesiredMig, state: Any) -> MigChange:
    """From ``state`` (``nvml.MigState``) to ``want``.  GPU instances of a wanted profile that exist are kept;
    others are destroyed; the missing ones are placed around the kept ones (all anew if they do not fit)."""
    if not state.supported:
        return MigChange(problem=f"GPU {state.gpu} has no MIG mode (NVML: not supported)")
    if not want.mode:
        return MigChange(mode=False if state.current else None, destroy=tuple(g.id for g in state.instances))
    if not state.current:  # profiles are known once the mode is on: checked again then, before any instance
        return MigChange(mode=True, create=tuple((n, -1) for n in want.instances), profiles_known=False)
    return _instances_change(want, state)


def _instances_change(want: DesiredMig, state: Any) -> MigChange:
    from .nvml import place_instances

    known = {p.name for p in state.profiles}
    unknown = sorted({n for n in want.instances if n not in known})
    if unknown:
        return MigChange(
            problem=f"GPU {state.gpu} has no GPU instance profile {', '.join(unknown)} "
            f"(it has: {', '.join(p.name for p in state.profiles) or 'none'})"
        )
    need = Counter(want.instances)
    keep, destroy = [], []
    for g in sorted(state.instances, key=lambda g: g.id):
        if need[g.profile] > 0:
            need[g.profile] -= 1
            keep.append(g)
        else:
            destroy.append(g.id)
    missing = [n for n, c in need.items() for _ in range(c)]
    if not missing:
        return MigChange(destroy=tuple(destroy))
    placed = place_instances(state.profiles, missing, [(g.start, g.size) for g in keep])
    if placed is None:  # around the kept ones it does not fit: all anew
        placed = place_instances(state.profiles, list(want.instances))
        if placed is None:
            return MigChange(
                problem=f"GPU instances {', '.join(want.instances)} overlap on GPU {state.gpu}: "
                "no placement of them fits its memory slices and compute slices"
            )
        destroy = [g.id for g in state.instances]
    return MigChange(destroy=tuple(sorted(destroy)), create=tuple(placed))


def check_profiles(want: DesiredMig, state: Any) -> Optional[str]:
    """After MIG mode went on: why ``want``'s instances cannot be had (unknown profile, overlap), or None."""
    return _instances_change(want, state).problem


def mig_text(state: Any) -> str:
    """What the GPU has now, as ``DesiredMig.text`` spells the desired state."""
    if not state.supported:
        return "unsupported"
    if not state.current:
        return "off"
    return "on [" + ", ".join(sorted(g.profile for g in state.instances)) + "]"


def busy_of(running: Sequence[str], hosted: Sequence[str], processes: Sequence[str]) -> List[str]:
    """Everything that blocks a GPU-wide change, each once: NVML's running vGPUs, the instances the GPU hosts,
    the processes on it."""
    out: List[str] = []
    for x in list(running) + list(hosted) + list(processes):
        if x not in out:
            out.append(x)
    return out
