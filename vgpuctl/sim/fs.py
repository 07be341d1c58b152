"""The FUSE filesystem that serves a ``Machine``'s tree as sysfs does.

Files read as "text\\n", are opened with direct_io (no page cache, so every read sees the current state) and report
st_size 4096.  The kernel caches names (entries), attributes and symlink targets for ``CACHE_SECONDS``: what the
tree can change under them, it learns from the daemon before the write that changed it returns (every path gone,
and every symlink whose target changed, is invalidated; see ``machine.changed_paths``), so a reader never sees a
name, attribute or link the tree no longer has.  A new name is never cached negative (negative_timeout 0), and
directories are read afresh (no readdir cache).  Opening an attribute for an access it
lacks fails with EACCES even for root (kernfs does the same).  Writes go to the machine; a write's errno is what the
simulated kernel says.  A ``remove`` of an mdev whose ``dev/vfio/<group>`` some process holds open blocks, outside
the machine's lock, until the holder lets go or ``remove_block_seconds`` pass (then EBUSY).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import time
from typing import Any, Dict, Iterable, List

import mfusepy

from vgpuctl.host.holders import open_by
from vgpuctl.sim.machine import Dir, File, Link, Machine, SimError, changed_paths

log = logging.getLogger("vgpusim")

POLL_SECONDS = 0.05
MAX_THREADS = 256
#: how long the kernel may keep an entry or attribute: long, since the daemon invalidates what changes
CACHE_SECONDS = 3600.0
FUSE_CAP_CACHE_SYMLINKS = 1 << 23

_invalidate_path = mfusepy._libfuse.fuse_invalidate_path
_invalidate_path.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
_invalidate_path.restype = ctypes.c_int


def invalidate(paths: Iterable[str]) -> int:
    """Tell the kernel to forget what it cached of ``paths`` (attributes, symlink targets), from inside a request
    handler (libfuse's context names the filesystem).  Paths the kernel never looked up are skipped by libfuse.
    Returns how many it knew."""
    fuse = mfusepy._libfuse.fuse_get_context().contents.fuse
    known = 0
    for p in paths:
        if _invalidate_path(fuse, p.encode()) == 0:
            known += 1
    return known


def holders(path: str, proc: str = "/proc") -> List[int]:
    """Pids of processes with a file descriptor open on ``path`` (the package's one /proc scan)."""
    found = open_by({os.path.abspath(path), os.path.realpath(path)}, proc)
    return sorted({pid for pids in found.values() for pid in pids})


class SimFS(mfusepy.Operations):
    use_ns = True

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.started_ns = time.time_ns()

    # --- setup ------------------------------------------------------------------------------------------------
    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None and conn.capable & FUSE_CAP_CACHE_SYMLINKS:
            conn.want |= FUSE_CAP_CACHE_SYMLINKS
        if config is not None:
            config.entry_timeout = CACHE_SECONDS
            config.negative_timeout = 0.0
            config.attr_timeout = CACHE_SECONDS
            config.direct_io = 1
            config.kernel_cache = 0
            config.auto_cache = 0

    # --- lookup -----------------------------------------------------------------------------------------------
    def _node(self, path: str) -> object:
        node = self.m.tree.get(path)
        if node is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return node

    def getattr(self, path: str, fh: Any = None) -> Dict[str, Any]:
        node = self._node(path)
        t = self.started_ns
        st: Dict[str, Any] = {"st_uid": 0, "st_gid": 0, "st_atime": t, "st_mtime": t, "st_ctime": t}
        if isinstance(node, Dir):
            st.update(st_mode=stat.S_IFDIR | node.mode, st_nlink=2, st_size=0)
        elif isinstance(node, File):
            st.update(st_mode=stat.S_IFREG | node.mode, st_nlink=1, st_size=4096)
        else:
            assert isinstance(node, Link)
            st.update(st_mode=stat.S_IFLNK | 0o777, st_nlink=1, st_size=len(node.target))
        return st

    def readlink(self, path: str) -> str:
        node = self._node(path)
        if not isinstance(node, Link):
            raise mfusepy.FuseOSError(errno.EINVAL)
        return node.target

    def readdir(self, path: str, fh: Any) -> Iterable[str]:
        node = self._node(path)
        if not isinstance(node, Dir):
            raise mfusepy.FuseOSError(errno.ENOTDIR)
        return [".", ".."] + list(node.children)

    def statfs(self, path: str) -> Dict[str, Any]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    # --- files ------------------------------------------------------------------------------------------------
    def open(self, path: str, fi: Any) -> int:
        node = self._node(path)
        if isinstance(node, Dir):
            raise mfusepy.FuseOSError(errno.EISDIR)
        assert isinstance(node, File)
        acc = fi.flags & os.O_ACCMODE
        if acc in (os.O_RDONLY, os.O_RDWR) and not node.mode & 0o444:
            raise mfusepy.FuseOSError(errno.EACCES)
        if acc in (os.O_WRONLY, os.O_RDWR) and not node.mode & 0o222:
            raise mfusepy.FuseOSError(errno.EACCES)
        fi.direct_io = 1
        return 0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        node = self.m.tree.get(path)
        if not isinstance(node, File):
            raise mfusepy.FuseOSError(errno.ENODEV)  # the attribute went away under an open file
        return node.content[offset : offset + size]

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        node = self._node(path)
        if not isinstance(node, File) or not node.mode & 0o222:
            raise mfusepy.FuseOSError(errno.EACCES)
        return 0  # sysfs ignores O_TRUNC, so `echo x > attr` works

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        before = self.m.tree
        node = before.get(path)
        if not isinstance(node, File) or node.action is None:
            raise mfusepy.FuseOSError(errno.ENODEV)
        try:
            try:
                self._write(path, node.action, bytes(data))
            finally:  # outside the machine's lock: the kernel may wait for a reader we serve meanwhile
                invalidate(changed_paths(before, self.m.tree))
        except SimError as e:
            log.info("write %s %r -> %s", path, bytes(data), errno.errorcode.get(e.errno or 0, e.errno))
            raise mfusepy.FuseOSError(e.errno) from None
        except Exception:
            log.exception("write %s %r failed", path, bytes(data))
            raise mfusepy.FuseOSError(errno.EIO) from None
        log.info("write %s %r -> ok", path, bytes(data))
        return len(data)

    def _write(self, path: str, action: tuple, data: bytes) -> None:
        m = self.m
        kind = action[0]
        if kind == "ctl":
            self._control(action[1], data.decode("utf-8", "replace"))
            return
        with m.lock:
            m.take_failure(path)
        if kind == "create":
            m.create(action[1], action[2], data)
        elif kind == "remove":
            self._remove(action[1], data)
        elif kind == "vgpu_type":
            gf = m.group_file(m.functions[action[1]].group)  # type: ignore[arg-type]
            held = holders(gf) if gf else []
            if held:  # the driver refuses to change the type of a VF whose VFIO device is open
                raise SimError(errno.EBUSY, f"VF held by pid {', '.join(map(str, held))}")
            m.set_vgpu_type(action[1], data)
        elif kind == "vf_attr":
            if action[2] == "vgpu_params":
                gf = m.group_file(m.functions[action[1]].group)  # type: ignore[arg-type]
                held = holders(gf) if gf else []
                if held:  # a running VM has read them at its start: refused (an assumption)
                    raise SimError(errno.EBUSY, f"VF held by pid {', '.join(map(str, held))}")
            m.set_vf_attr(action[1], action[2], data)
        elif kind == "params":
            inst = m.instances.get(action[1])
            gf = m.group_file(inst.group) if inst is not None else None
            held = holders(gf) if gf else []
            if held:
                raise SimError(errno.EBUSY, f"mdev held by pid {', '.join(map(str, held))}")
            m.set_params(action[1], data)
        elif kind == "numvfs":
            m.set_numvfs(action[1], data)
        else:
            raise SimError(errno.EIO, f"unknown action {kind}")

    def _remove(self, uuid: str, data: bytes) -> None:
        m = self.m
        before = m.tree
        inst = m.begin_remove(uuid, data)
        if inst is None:
            return
        invalidate(changed_paths(before, m.tree))  # `remove` and the bus link are gone while it waits
        gf = m.group_file(inst.group)
        deadline = time.monotonic() + m.remove_block_seconds
        try:
            while gf is not None:
                held = holders(gf)
                if not held:
                    break
                if m.instances.get(uuid) is not inst:
                    return  # lost meanwhile (unregister, reboot)
                if time.monotonic() >= deadline:
                    log.info("remove %s: still held by %s after %gs", uuid, held, m.remove_block_seconds)
                    raise SimError(errno.EBUSY, f"held by pid {', '.join(map(str, held))}")
                time.sleep(POLL_SECONDS)
        except BaseException:
            m.abort_remove(inst)
            raise
        m.finish_remove(inst)

    def _control(self, name: str, text: str) -> None:
        m = self.m
        if name == "fail_next":
            for line in text.splitlines() or [""]:
                m.add_fail_rule(line)
        elif name == "unregister":
            m.unregister(text.strip())
        elif name == "register":
            m.register(text.strip())
        elif name == "reboot":
            m.reboot()
        elif name == "remove_block_seconds":
            m.set_remove_block_seconds(text)
        elif name == "heterogeneous":
            m.set_heterogeneous(text)
        elif name in ("mig", "gpu_instances", "gpu_processes"):
            {"mig": m.set_mig_mode, "gpu_instances": m.gpu_instance_control, "gpu_processes": m.gpu_process_control}[
                name
            ](text)
        elif name == "modules":
            m.module_control(text)
        elif name == "iommu":
            m.set_iommu(text)
        else:
            raise SimError(errno.EINVAL, name)


def serve(machine: Machine, mountpoint: str) -> None:
    """Mount and serve until unmounted or signalled (blocks)."""
    # A held `remove` keeps its worker thread; libfuse's default cap (10 workers) would let ten of them stall every
    # other operation, so allow many more.
    mfusepy.FUSE(
        SimFS(machine),
        mountpoint,
        raw_fi=True,
        foreground=True,
        allow_other=True,
        fsname="vgpusim",
        subtype="vgpusim",
        max_threads=MAX_THREADS,
    )
