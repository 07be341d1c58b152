"""Fixtures every test area shares: a static sysfs tree (``tree``) and simulated hosts (``sim_factory``).

Tests marked ``sim`` need the FUSE simulated host and are skipped, with the reason, where it cannot run.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from simhost import FUSE_SKIP_REASON, fuse_usable  # noqa: E402
from treebuild import Tree  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if fuse_usable():
        return
    skip = pytest.mark.skip(reason=FUSE_SKIP_REASON)
    for item in items:
        if "sim" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


@pytest.fixture
def sim_factory(tmp_path):
    """Start simulators under tmp_path (``sim_factory("t4x2")``); every one started is stopped at teardown."""
    if not fuse_usable():
        pytest.skip(FUSE_SKIP_REASON)
    from vgpuctl.sim import SimHost

    started = []

    def make(profile: str, name: str = "root") -> SimHost:
        sim = SimHost(profile, tmp_path / name).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
