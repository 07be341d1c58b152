"""Fixtures for ``vgpuctl doctor``: one simulated host per profile (module-wide), reset before each test."""
from __future__ import annotations

import os
import shutil

import pytest

from simhost import FUSE_SKIP_REASON, fuse_usable


def _reset(sim):
    """As after a boot with an IOMMU, every module loaded and every VF enabled; no vgpuctl files; the vGPU
    manager's units installed and enabled again."""
    from vgpuctl.sim.daemon import install_vgpu_manager_units, UNIT_DIR, WANTS_DIR
    from vgpuctl.sim.profile import load_profile

    sim.set_iommu(True)  # a reboot, too
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


def _sim(profile, tmp_path_factory):
    if not fuse_usable():
        pytest.skip(FUSE_SKIP_REASON)
    from vgpuctl.sim import SimHost

    sim = SimHost(profile, tmp_path_factory.mktemp(profile)).start()
    return sim


@pytest.fixture(scope="module")
def _t4x2(tmp_path_factory):
    sim = _sim("t4x2", tmp_path_factory)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def _h200(tmp_path_factory):
    sim = _sim("h200", tmp_path_factory)
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def _a16(tmp_path_factory):
    sim = _sim("a16", tmp_path_factory)
    yield sim
    sim.stop()


@pytest.fixture
def t4x2(_t4x2):
    _reset(_t4x2)
    return _t4x2


@pytest.fixture
def h200(_h200):
    _reset(_h200)
    return _h200


@pytest.fixture
def a16(_a16):
    _reset(_a16)
    return _a16


def results(sim, *names, connect="none", **kw):
    """The doctor's results for ``names`` on ``sim`` (in-process, so a fake NVML installed by a test is used)."""
    from vgpuctl.doctor import Context, run_checks

    return run_checks(Context(paths=sim.paths, connect=connect, **kw), list(names))


def one(sim, name, **kw):
    (r,) = results(sim, name, **kw)
    return r


def statuses(sim, name, **kw):
    return [str(r.status) for r in results(sim, name, **kw)]
