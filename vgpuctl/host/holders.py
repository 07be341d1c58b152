"""Which processes hold a device's VFIO group open.

QEMU opens ``/dev/vfio/<group>`` for every assigned device; on current kernels a write to an mdev's ``remove`` then
blocks until QEMU lets go.  So before removing, vgpuctl looks for that path among every process's open files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Set

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


def find_holders(paths: HostPaths, groups: Iterable[int]) -> Dict[int, List[Holder]]:
    """Map each group in ``groups`` that some process holds open to its holders (one scan of the process table)."""
    wanted = {group_path(paths, g): g for g in groups}
    found: Dict[int, List[Holder]] = {}
    if not wanted:
        return found
    proc = os.fspath(paths.proc)
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        fd_dir = os.path.join(proc, entry.name, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to read
            continue
        seen: Set[int] = set()
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            g = wanted.get(target)
            if g is not None and g not in seen:
                seen.add(g)
                found.setdefault(g, []).append(Holder(int(entry.name), _comm(proc, entry.name), target))
    return found


def _comm(proc: str, pid: str) -> str:
    try:
        with open(os.path.join(proc, pid, "comm")) as f:
            return f.read().strip()
    except OSError:
        return "?"
