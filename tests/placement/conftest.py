import os
import shutil

import pytest


def _fuse_usable() -> bool:
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError):
        return False
    return os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def pytest_collection_modifyitems(config, items):
    if _fuse_usable():
        return
    skip = pytest.mark.skip(reason="needs root, /dev/fuse, fusermount3 and mfusepy (libfuse3)")
    for item in items:
        if "sim" in item.keywords and "placement" in str(item.fspath):
            item.add_marker(skip)
