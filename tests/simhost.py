"""Whether this machine can run the FUSE simulated host (root, /dev/fuse, fusermount3, libfuse3 through mfusepy)."""
from __future__ import annotations

import os
import shutil

FUSE_SKIP_REASON = "needs root, /dev/fuse, fusermount3 and mfusepy (libfuse3) for the simulated host"


def fuse_usable() -> bool:
    try:
        import mfusepy  # noqa: F401  (libfuse3 must load)
    except (ImportError, OSError):
        return False
    return os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
