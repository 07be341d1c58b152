"""Which processes hold a device's VFIO group open.

QEMU opens ``/dev/vfio/<group>`` for every assigned device; on current kernels a write to an mdev's ``remove`` then
blocks until QEMU lets go.  So before removing, vgpuctl looks for that path among every process's open files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Collection, Dict, Iterable, List, Set

from ..paths import HostPaths


@dataclass(frozen=True)
class Holder:
    pid: int
    comm: str
    path: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.comm})"


def group_path(paths: HostPaths, group: int) -> str:
    return os.fspath(paths.dev_vfio / str(group))


def open_by(targets: Collection[str], proc: "os.PathLike[str] | str" = "/proc") -> Dict[str, List[int]]:
    """Map each of ``targets`` (paths as ``readlink`` of a ``/proc/<pid>/fd/<n>`` names them) that some process has
    open to the pids holding it, each pid once per target, in ``proc`` order: one scan of the process table.

    The one ``/proc/*/fd`` scan of the package: vgpuctl's holder checks (``find_holders``), the simulator's held
    ``remove`` (``vgpuctl.sim.fs``) and the in-memory backend use it.  ``tests/realkernel/guestlib.py`` keeps its own
    on purpose: what it pins on a real kernel must not depend on the code under test."""
    wanted = set(targets)
    found: Dict[str, List[int]] = {}
    if not wanted:
        return found
    proc = os.fspath(proc)
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        fd_dir = os.path.join(proc, entry.name, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        seen: Set[str] = set()
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target in wanted and target not in seen:
                seen.add(target)
                found.setdefault(target, []).append(int(entry.name))
    return found


def find_holders(paths: HostPaths, groups: Iterable[int]) -> Dict[int, List[Holder]]:
    """Map each group in ``groups`` that some process holds open to its holders (one scan of the process table)."""
    wanted = {group_path(paths, g): g for g in groups}
    proc = os.fspath(paths.proc)
    return {
        wanted[target]: [Holder(pid, _comm(proc, str(pid)), target) for pid in pids]
        for target, pids in open_by(wanted, proc).items()
    }


def _comm(proc: str, pid: str) -> str:
    try:
        with open(os.path.join(proc, pid, "comm")) as f:
            return f.read().strip()
    except OSError:
        return "?"
