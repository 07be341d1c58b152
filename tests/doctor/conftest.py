"""Fixtures for ``vgpuctl doctor``: the session's simulated hosts (tests/conftest.py ``sim_pool``, key "doctor"),
reset before each test with the vGPU manager's units installed."""

from __future__ import annotations

import os
import shutil

import pytest

from simhost import reset_sim


def _reset(sim):
    """As after a boot with an IOMMU, every module loaded and every VF enabled; no vgpuctl files; the vGPU
    manager's units installed and enabled again."""
    from vgpuctl.sim.daemon import install_vgpu_manager_units, UNIT_DIR, WANTS_DIR
    from vgpuctl.sim.profile import load_profile

    reset_sim(sim)
    for sub in ("etc", "var", "run/vgpuctl", "usr", "lib"):
        p = sim.root / sub
        if os.path.islink(p) or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)
    (sim.root / "etc").mkdir()
    (sim.root / "var").mkdir()
    install_vgpu_manager_units(sim.root, load_profile(sim.profile))
    assert not (sim.root / UNIT_DIR).exists() or (sim.root / WANTS_DIR).exists()


@pytest.fixture
def t4x2(sim_pool):
    return sim_pool.fresh("t4x2", "doctor", reset=_reset)


@pytest.fixture
def h200(sim_pool):
    return sim_pool.fresh("h200", "doctor", reset=_reset)


@pytest.fixture
def a16(sim_pool):
    return sim_pool.fresh("a16", "doctor", reset=_reset)


def results(sim, *names, connect="none", **kw):
    """The doctor's results for ``names`` on ``sim`` (in-process, so a fake NVML installed by a test is used)."""
    from vgpuctl.doctor import Context, run_checks

    return run_checks(Context(paths=sim.paths, connect=connect, **kw), list(names))


def one(sim, name, **kw):
    (r,) = results(sim, name, **kw)
    return r


def statuses(sim, name, **kw):
    return [str(r.status) for r in results(sim, name, **kw)]
