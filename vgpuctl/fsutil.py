"""vgpuctl's file toolkit: one bounded, kind-checked read, one file lock and one atomic write.

Every file vgpuctl reads or writes goes through here, so the rules hold everywhere (docs/security.md):

* **Kind first.** A path is ``lstat``-ed before it is opened: anything but a regular file (a directory, a FIFO, a
  device, a socket) is refused without opening it, so a FIFO planted as ``state.json`` cannot hang a command and
  ``--policy /dev/zero`` cannot read forever.  The open itself uses ``O_NONBLOCK`` and the kind is checked again on
  the descriptor (``fstat``), which closes the race between the two.
* **No symlinks in vgpuctl's own directories.** ``follow=False`` (the default) opens with ``O_NOFOLLOW``: a planted
  symlink (or a symlink loop) is refused, never followed.  Only a file the user names on the command line
  (``--config``, ``--policy``, ``export -o``) is opened with ``follow=True``.
* **Not world-writable.** A file any user could have written is refused (``chmod`` fixes it).
* **Bounded.** A read takes at most ``limit`` bytes; a larger file is refused, not truncated.
* **Refuse, never skip.** Every problem is a typed error naming the file (``StateError`` or ``ConfigError``,
  exit 8); only "does not exist" may mean "nothing there", and only where the caller says so.

Nothing here creates a directory above vgpuctl's own: ``ensure_dir`` makes only the last component, so a command
refused on a root that does not exist leaves nothing behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from typing import Callable, Optional

from .errors import LockTimeout, StateError, VgpuctlError

#: Bounds on what one file may hold: desired-state, policy and profile files; vgpuctl's own JSON records.
CONFIG_LIMIT = 1 << 20  # 1 MiB of YAML is some 20,000 instances
RECORD_LIMIT = 16 << 20

ErrorFactory = Callable[[str, str], VgpuctlError]


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_mode(path: str, st: os.stat_result, error: ErrorFactory) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise error(path, f"is {_kind(st.st_mode)}, not a regular file; move it aside")
    if st.st_mode & stat.S_IWOTH:
        raise error(path, f"is world-writable; fix with: chmod o-w {path}")


def open_regular(
    path: "os.PathLike[str] | str", *, error: ErrorFactory = StateError, follow: bool = False
) -> Optional[int]:
    """A read-only descriptor of the regular file ``path``, or None if it does not exist; refuses a symlink
    (unless ``follow``), any other kind of file, and a world-writable one, with ``error(path, problem)``."""
    p = os.fspath(path)
    try:
        st = os.stat(p) if follow else os.lstat(p)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(p, _why(e)) from None
    if stat.S_ISLNK(st.st_mode):
        raise error(
            p, "is a symlink; vgpuctl does not follow symlinks in its own directories: replace it with the file"
        )
    _check_mode(p, st, error)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(p, _why(e)) from None
    try:
        _check_mode(p, os.fstat(fd), error)  # it may have been swapped since the lstat
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bytes(
    path: "os.PathLike[str] | str",
    *,
    limit: int = RECORD_LIMIT,
    error: ErrorFactory = StateError,
    follow: bool = False,
    missing_ok: bool = True,
) -> Optional[bytes]:
    """The content of the regular file ``path`` (at most ``limit`` bytes), or None if it does not exist and
    ``missing_ok``; every other problem is ``error(path, problem)``."""
    p = os.fspath(path)
    fd = open_regular(p, error=error, follow=follow)
    if fd is None:
        if missing_ok:
            return None
        raise error(p, "no such file")
    try:
        chunks = []
        size = 0
        while size <= limit:
            try:
                chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            except OSError as e:
                raise error(p, _why(e)) from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise error(p, f"is larger than {limit} bytes; vgpuctl refuses to read it")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(
    path: "os.PathLike[str] | str",
    *,
    limit: int = RECORD_LIMIT,
    error: ErrorFactory = StateError,
    follow: bool = False,
    missing_ok: bool = True,
) -> Optional[str]:
    """``read_bytes`` decoded as UTF-8 (anything else is refused)."""
    raw = read_bytes(path, limit=limit, error=error, follow=follow, missing_ok=missing_ok)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(os.fspath(path), f"is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _why(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "is a symlink (or a symlink loop); vgpuctl does not follow symlinks in its own directories"
    if e.errno == errno.ENOTDIR:
        return "a directory on its path is not a directory"
    if e.errno == errno.EISDIR:
        return "is a directory, not a regular file; move it aside"
    return f"cannot read: {os.strerror(e.errno or 0)}"


# --- directories ---------------------------------------------------------------------------------------------------
def ensure_dir(path: "os.PathLike[str] | str", *, mode: int = 0o755, error: ErrorFactory = StateError) -> None:
    """Make sure ``path`` is a real directory (not a symlink, not world-writable), creating only its last
    component: a parent that does not exist is an error, so nothing is built under a root that is not there."""
    p = os.fspath(path)
    try:
        os.mkdir(p, mode)
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise error(p, f"cannot be created: {os.path.dirname(p)} does not exist (is --root right?)") from None
    except OSError as e:
        raise error(p, f"cannot be created: {os.strerror(e.errno or 0)}") from None
    try:
        st = os.lstat(p)
    except OSError as e:
        raise error(p, _why(e)) from None
    if stat.S_ISLNK(st.st_mode):
        raise error(
            p, "is a symlink; vgpuctl does not follow symlinks in its own directories: replace it with a directory"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise error(p, f"is {_kind(st.st_mode)}, not a directory; move it aside")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise error(p, f"is world-writable; fix with: chmod o-w {p}")


def ensure_dirs(
    path: "os.PathLike[str] | str",
    *,
    below: "os.PathLike[str] | str",
    mode: int = 0o755,
    error: ErrorFactory = StateError,
) -> None:
    """``ensure_dir`` for every component of ``path`` under the existing directory ``below`` (the host root)."""
    base = os.fspath(below)
    rel = os.path.relpath(os.fspath(path), base)
    if rel.startswith(".."):
        raise ValueError(f"{path} is not below {base}")
    if not os.path.isdir(base):
        raise error(base, "is not a directory (is --root right?)")
    cur = base
    for part in [] if rel == "." else rel.split(os.sep):
        cur = os.path.join(cur, part)
        ensure_dir(cur, mode=mode, error=error)


# --- the one file lock ---------------------------------------------------------------------------------------------
class FileLock:
    """An exclusive ``flock`` on ``path``, waited for up to ``timeout`` seconds (then ``LockTimeout``).

    The lock file is opened with ``O_NOFOLLOW`` (a planted symlink is refused, never followed or created through)
    and must be a regular file.  Its directory is made (``ensure_dirs``) only below ``root``, which must exist;
    without ``root`` only the last component is made."""

    POLL = 0.02

    def __init__(
        self,
        path: "os.PathLike[str] | str",
        timeout: float,
        *,
        mode: int = 0o600,
        root: "os.PathLike[str] | str | None" = None,
    ) -> None:
        self.path = path
        self.timeout = timeout
        self.mode = mode
        self.root = root
        self._fd = -1

    def __enter__(self) -> "FileLock":
        p = os.fspath(self.path)
        if self.root is not None:
            ensure_dirs(os.path.dirname(p), below=self.root)
        else:
            ensure_dir(os.path.dirname(p))
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(p, flags, self.mode)
        except OSError as e:
            raise StateError(p, "cannot be used as a lock: " + _why(e).replace("cannot read: ", "")) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise StateError(p, f"is {_kind(st.st_mode)}, not a regular file; move it aside")
        except BaseException:
            os.close(fd)
            raise
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    os.close(fd)
                    if e.errno in (errno.EAGAIN, errno.EACCES):
                        raise LockTimeout(p, self.timeout) from None
                    raise StateError(p, f"cannot be locked: {os.strerror(e.errno or 0)}") from None
                time.sleep(self.POLL)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


# --- the one atomic write ------------------------------------------------------------------------------------------
def write_atomic(
    path: "os.PathLike[str] | str", data: "bytes | str", *, mode: int = 0o644, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content, never a part: a temporary
    file in the same directory (created ``O_EXCL``, never through a symlink), written, fsynced, renamed over
    ``path``; with ``durable`` the directory is fsynced too, so the rename survives a power cut.  A ``path`` that
    is a directory or a symlink is refused (``StateError``) before anything is written."""
    p = os.fspath(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StateError(p, _why(e)) from None
    else:
        if not stat.S_ISREG(st.st_mode):
            raise StateError(p, f"is {_kind(st.st_mode)}, not a regular file; move it aside")
    try:
        replace_atomic(p, raw, mode=mode, durable=durable)
    except OSError as e:
        raise StateError(p, f"cannot be written: {os.strerror(e.errno or 0)}") from None


def replace_atomic(path: "os.PathLike[str] | str", data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """``write_atomic``'s mechanism without its checks and typed errors, for files that are not vgpuctl's own
    (mdevctl's definitions), whose callers report the host's ``OSError`` themselves: a temporary file beside
    ``path`` (``O_EXCL``), written, fsynced, renamed over ``path``; with ``durable`` the directory fsynced too.
    The temporary file is removed on any failure."""
    import tempfile  # only writers pay for it

    p = os.fspath(path)
    directory = os.path.dirname(p) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(p)}.", dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, p)
        if durable:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
