from __future__ import annotations

import os
import shutil

import pytest


def fuse_usable() -> bool:
    try:
        import mfusepy  # noqa: F401  (libfuse3 must load)
    except (ImportError, OSError):
        return False
    return os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def pytest_collection_modifyitems(config, items):
    if fuse_usable():
        return
    skip = pytest.mark.skip(reason="needs root, /dev/fuse, fusermount3 and mfusepy (libfuse3)")
    for item in items:
        if "sim" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def sim_factory(tmp_path):
    """Start simulators under tmp_path; every one started is stopped at teardown."""
    from vgpuctl.sim import SimHost

    started = []

    def make(profile: str, name: str = "root") -> SimHost:
        sim = SimHost(profile, tmp_path / name).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
