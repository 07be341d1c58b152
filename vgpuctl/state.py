"""vgpuctl's own records: which instances it created (ownership) and what it was in the middle of (intents).

The state file ``var/lib/vgpuctl/state.json`` is written atomically (temp file in the same directory, fsync, rename,
fsync of the directory), so a reader sees the old or the new file, never half of one.  Every mutating command holds
the exclusive lock ``run/vgpuctl/lock`` from its first check to its last write.

Before each host write, the command records its intent (``pending``); after it, the outcome.  A run killed between
the two leaves the intent behind, and the next locked command settles it against the host with ``recover``: a create
whose device exists is adopted as owned, one whose device does not is dropped; a removal whose device is gone drops
the ownership record.  So a crash at any point never leaves a device that vgpuctl made but does not know.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, Optional, Tuple

from .configfile import parse_json
from .fsutil import read_text
from .errors import StateError
from .fsutil import FileLock, ensure_dirs, write_atomic
from .paths import HostPaths

SCHEMA = "vgpuctl.state/v1"
LIBVIRT_OPS = ("attach", "detach")  #: intents that change a domain, not a device
SETTING_OPS = ("sched", "hetero", "params", "mig", "sriov")  #: intents that change a setting (NVML, vgpu_params, VFs)
#: intents that change another manager's files (mdevctl's definition), not a device: ``undefine`` removes
#: ``etc/mdevctl.d/<parent>/<uuid>``; finishing or dropping it needs no device, so recovery only drops the intent
MDEVCTL_OPS = ("undefine",)

#: Who made (or claimed) an owned device.  ``apply`` (the desired state and its service) destroys only devices of
#: origin ``apply``: a device made by ``vgpuctl create``/``attach`` or by the libvirt hook is never removed because a
#: desired-state file does not list it.  ``apply`` claims a device that its desired state declares.
ORIGIN_CREATE = "create"
ORIGIN_APPLY = "apply"
ORIGIN_HOOK = "hook"
ORIGINS = (ORIGIN_CREATE, ORIGIN_APPLY, ORIGIN_HOOK)


@dataclass(frozen=True)
class Owned:
    uuid: str
    parent: str
    type_id: str
    backend: str = "mdev"
    created_at: float = 0.0
    origin: str = ORIGIN_CREATE


@dataclass(frozen=True)
class Intent:
    op: str  #: "create" or "remove"; "attach" or "detach" (a libvirt change: never about ownership)
    uuid: str
    parent: str
    type_id: str
    backend: str = "mdev"
    origin: str = ORIGIN_CREATE  #: the origin a create records


@dataclass(frozen=True)
class State:
    owned: Dict[str, Owned] = field(default_factory=dict)
    pending: Tuple[Intent, ...] = ()

    def with_intent(self, intent: Intent) -> "State":
        return replace(self, pending=self.pending + (intent,))

    def settle(self, intent: Intent, *, exists: bool, now: Optional[float] = None) -> "State":
        """The state once ``intent`` is over and the device ``exists`` (or not) on the host.

        An attach or detach intent only leaves the journal: ownership is about devices, and the next plan redoes
        whatever part of an interrupted (idempotent) attach or detach is missing."""
        owned = dict(self.owned)
        if intent.op in LIBVIRT_OPS or intent.op in SETTING_OPS or intent.op in MDEVCTL_OPS:
            pass  # idempotent: the next plan (or the same command again) redoes what is missing
        elif exists:
            prev = owned.get(intent.uuid)
            owned[intent.uuid] = prev or Owned(
                intent.uuid,
                intent.parent,
                intent.type_id,
                intent.backend,
                now if now is not None else time.time(),
                intent.origin,
            )
        else:
            owned.pop(intent.uuid, None)
        return State(owned=owned, pending=tuple(p for p in self.pending if p != intent))

    def claim(self, uuids: Iterable[str], origin: str = ORIGIN_APPLY) -> "State":
        """The state with the owned devices among ``uuids`` recorded as of ``origin`` (apply adopting what its
        desired state declares)."""
        owned = dict(self.owned)
        for u in uuids:
            o = owned.get(u)
            if o is not None and o.origin != origin:
                owned[u] = replace(o, origin=origin)
        return replace(self, owned=owned)

    def recover(self, existing: Iterable[str]) -> "State":
        """Settle every intent a crashed run left, against the uuids that exist on the host now."""
        present = set(existing)
        state = self
        for intent in self.pending:
            state = state.settle(intent, exists=intent.uuid in present)
        return state

    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "owned": [vars(o) for o in sorted(self.owned.values(), key=lambda o: o.uuid)],
            "pending": [vars(p) for p in self.pending],
        }


def _corrupt(path: str, problem: str) -> StateError:
    problem = problem[3:] if problem.startswith("is ") else problem
    return StateError(
        path, f"is corrupt ({problem}); move it aside and run 'vgpuctl export' or re-adopt devices with --foreign"
    )


class StateStore:
    def __init__(self, paths: HostPaths) -> None:
        self.paths = paths
        self.path = paths.state_file

    def load(self) -> State:
        path = os.fspath(self.path)
        text = read_text(path, error=StateError)  # a regular file, no symlink, not world-writable, bounded, UTF-8
        if text is None:
            return State()
        doc = parse_json(text, path, error=_corrupt)  # strict: no NaN, no duplicate keys, no runaway nesting
        try:
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                raise ValueError(f"schema is not {SCHEMA}")
            owned = {o["uuid"]: Owned(**o) for o in doc["owned"]}
            pending = tuple(Intent(**p) for p in doc["pending"])
            bad = [x.origin for x in list(owned.values()) + list(pending) if x.origin not in ORIGINS]
            if bad:
                raise ValueError(f"unknown origin {bad[0]!r}")
        except (ValueError, KeyError, TypeError) as e:
            raise _corrupt(path, str(e)) from None
        return State(owned=owned, pending=pending)

    def save(self, state: State) -> None:
        ensure_dirs(os.path.dirname(os.fspath(self.path)), below=self.paths.root)
        data = (json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n").encode()
        write_atomic(self.path, data, mode=0o644, durable=True)


class HostLock(FileLock):
    """Exclusive ``flock`` on ``run/vgpuctl/lock``; waits up to ``timeout`` seconds, then raises ``LockTimeout``.

    Refuses a lock file that is a symlink or not a regular file, and creates ``run/vgpuctl`` only under a root
    that exists (``fsutil.FileLock``)."""

    def __init__(self, paths: HostPaths, timeout: float = 30.0) -> None:
        super().__init__(paths.lock_file, timeout, mode=0o644, root=paths.root)
