"""Small, careful primitives for reading and writing sysfs attributes.

Reads return ``None`` for a missing attribute rather than raising, because sysfs trees differ by driver and kernel.
Writes go through ``os.open``/``os.write``/``os.close`` so that an error the kernel reports at write (or, through a
buffered layer, at flush) reaches the caller as an ``OSError`` with its errno; nothing is buffered here.
"""

from __future__ import annotations

import errno
import os
from typing import Optional


def read_attr(path: "os.PathLike[str] | str") -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
        return None
    except OSError as e:  # e.g. ENODEV from an attribute of a device going away
        if e.errno in (errno.ENODEV, errno.ENXIO, errno.EIO):
            return None
        raise


def read_int(path: "os.PathLike[str] | str") -> Optional[int]:
    text = read_attr(path)
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def link_name(path: "os.PathLike[str] | str") -> Optional[str]:
    """Last component of a symlink's target (``driver`` -> ``vfio_mdev``), or None."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def listdir(path: "os.PathLike[str] | str") -> list:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_attr(path: "os.PathLike[str] | str", text: str) -> None:
    """Write ``text`` to a sysfs attribute in one ``write``; raise ``OSError`` with the kernel's errno."""
    data = text.encode()
    fd = os.open(path, os.O_WRONLY)
    try:
        n = os.write(fd, data)
        if n != len(data):
            raise OSError(errno.EIO, f"short write to {path}: {n} of {len(data)} bytes")
    finally:
        os.close(fd)  # sysfs reports nothing at close, but a FUSE or buffered layer may: let it raise
