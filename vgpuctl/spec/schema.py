"""The desired state as data: ``DesiredState`` of ``DesiredInstance``s and ``DesiredGpu``s, the constants of the
schema and the derived instance uuid.  Pure: no file, no host."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Optional, Tuple

from ..configfile import VERSION
from ..model import SchedulerPolicy

MAIN_FILE = "vgpuctl.yaml"
DROPIN_DIR = "conf.d"
SPEC_VERSION = VERSION
#: uuid5 namespace of derived instance uuids.  Never change it: derived uuids must stay the same across releases.
UUID_NAMESPACE = uuidlib.UUID("6f0b3f63-3a51-4d8e-9d0c-7e1b5a2c9a40")

#: the vGPU scheduler policies NVML knows (``model.SchedulerPolicy``)
SCHED_POLICIES = tuple(p.value for p in SchedulerPolicy)


class AttachMode(str, Enum):
    LIVE = "live"  #: hot-plug into the running domain only
    CONFIG = "config"  #: the persistent definition only (takes effect at the next start)
    BOTH = "both"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Mark:
    """Where something was written: file and 1-based line."""

    path: str
    line: Optional[int] = None


@dataclass(frozen=True)
class PlacementRequest:
    tenant: Optional[str] = None
    numa_node: Optional[int] = None  #: only parents on this NUMA node (or without NUMA information)


def _line_of(key_lines: Tuple[Tuple[str, int], ...], key: str, default: Optional[int]) -> Optional[int]:
    """The line ``key`` was written on, for errors found after parsing; the entry's own line if not recorded."""
    return next((line for k, line in key_lines if k == key), default)


@dataclass(frozen=True)
class DesiredInstance:
    name: str
    uuid: str  #: canonical lowercase; derived from the name when the file gives none
    type: str  #: as written: an id or a name, resolved per parent with ``model.find_type``
    parent: Optional[str] = None  #: canonical parent name, or None when placed
    placement: Optional[PlacementRequest] = None
    domain: Optional[str] = None
    attach: AttachMode = AttachMode.CONFIG
    uuid_derived: bool = False
    mark: Mark = Mark("<none>")
    #: line of each key, for errors found later (validation against the host)
    key_lines: Tuple[Tuple[str, int], ...] = ()
    #: the service profile's name (``type`` is then "profile NAME"); ``load`` binds ``profile_def`` to it
    profile: Optional[str] = None
    profile_def: Any = field(default=None, compare=False, repr=False)  #: a ``vgpuctl.profiles.Profile``
    #: NVIDIA vGPU plugin parameters as written (``vgpu_params.Params``); None: not given here
    params: Optional[Tuple[Tuple[str, str], ...]] = None

    def line_of(self, key: str) -> Optional[int]:
        return _line_of(self.key_lines, key, self.mark.line)

    @property
    def wanted_params(self) -> Optional[Tuple[Tuple[str, str], ...]]:
        """The parameters the vGPU should have: the instance's own ``params``, else its profile's; None when
        neither says (then vgpuctl leaves ``vgpu_params`` alone)."""
        if self.params is not None:
            return self.params
        return getattr(self.profile_def, "params", None)


@dataclass(frozen=True)
class DesiredScheduler:
    """A GPU's vGPU time-slice scheduler as the desired state asks for it."""

    policy: str  #: one of ``SCHED_POLICIES``
    timeslice_ms: Optional[float] = None  #: None: leave the time slice as the driver has it (not for best-effort)

    def text(self) -> str:
        return self.policy + (f" {self.timeslice_ms:g}ms" if self.timeslice_ms is not None else "")


@dataclass(frozen=True)
class DesiredGpu:
    """GPU-wide settings of one physical GPU (``gpus:``); a setting left out is not managed."""

    gpu: str  #: canonical PCI address of the physical GPU
    scheduler: Optional[DesiredScheduler] = None
    heterogeneous: Optional[bool] = None
    mig: Optional[Any] = None  #: ``gpuwide.DesiredMig``
    sriov: Optional[Any] = None  #: ``gpuwide.DesiredSriov``
    mark: Mark = Mark("<none>")
    key_lines: Tuple[Tuple[str, int], ...] = ()

    def line_of(self, key: str) -> Optional[int]:
        return _line_of(self.key_lines, key, self.mark.line)


@dataclass(frozen=True)
class DesiredState:
    instances: Tuple[DesiredInstance, ...] = ()
    files: Tuple[str, ...] = ()  #: the files read, in merge order
    gpus: Tuple[DesiredGpu, ...] = ()  #: GPU-wide settings, in file order

    def by_uuid(self) -> Dict[str, DesiredInstance]:
        return {d.uuid: d for d in self.instances}


def derive_uuid(name: str) -> str:
    """The stable uuid of an instance the file gives no uuid for."""
    return str(uuidlib.uuid5(UUID_NAMESPACE, "vgpuctl-instance:" + name))
