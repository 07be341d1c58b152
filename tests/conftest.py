"""Fixtures every test area shares: a static sysfs tree (``tree``) and simulated hosts.

Simulated hosts come two ways:

* ``sim_pool`` (session): ``sim_pool.fresh("t4x2")`` is a simulator started once per session (per profile and
  ``key``) and reset before it is handed out by ``simhost.reset_sim``: as after a boot with an IOMMU, no vGPUs, no injected
  failures, no vgpuctl config, state or run files.  Test modules build their per-test fixture on it (``sim``,
  ``host``...), so a module no longer starts and resets its own copy.  Use a ``key`` for a host a module sets up
  once and only reads (``tests/virt/test_placement_usage.py``) or that needs more than ``reset_sim`` (doctor).
* ``sim_factory`` (per test): ``sim_factory("t4x2")`` starts a private simulator under the test's tmp_path and stops
  it at teardown, for tests of the simulator's own start/stop or of state a reset cannot undo.

Tests marked ``sim`` need the FUSE simulated host and are skipped, with the reason, where it cannot run; both
fixtures skip the same way.  Shared helpers (``simhost``, ``treebuild``, ``golden``) are imported as top-level
modules from this directory (the path is put on ``sys.path`` here).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from simhost import FUSE_SKIP_REASON, SimPool, fuse_usable  # noqa: E402
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


@pytest.fixture(scope="session")
def sim_pool(tmp_path_factory):
    pool = SimPool(tmp_path_factory)
    yield pool
    pool.stop_all()
