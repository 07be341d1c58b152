"""The simulated host for tests: whether this machine can run it (root, /dev/fuse, fusermount3, libfuse3 through
mfusepy), ``reset_sim`` and the session pool behind ``tests/conftest.py``'s ``sim_pool`` fixture."""

from __future__ import annotations

import os
import shutil
from typing import Callable, Dict, Optional, Tuple

import pytest

FUSE_SKIP_REASON = "needs root, /dev/fuse, fusermount3 and mfusepy (libfuse3) for the simulated host"


def fuse_usable() -> bool:
    try:
        import mfusepy  # noqa: F401  (libfuse3 must load)
    except (ImportError, OSError):
        return False
    return os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None


def reset_sim(sim) -> None:
    """As after a boot (with an IOMMU) of a host vgpuctl never ran on: no vGPUs, every parent registered, modules
    and VFs as the profile has them, no injected failures, the default remove block, and no ``etc/vgpuctl``,
    ``var/lib/vgpuctl`` or ``run/vgpuctl`` (config, state, locks, hook records)."""
    sim.clear_failures()
    sim.set_remove_block_seconds(10)
    sim.set_iommu(True)  # a reboot, with the IOMMU back on if a test turned it off
    for p in (sim.paths.config_dir, sim.paths.state_dir, sim.paths.run_dir):
        if os.path.islink(p) or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)


class SimPool:
    """Simulated hosts started on first use and kept for the session, one per (profile, key)."""

    def __init__(self, tmp_path_factory) -> None:
        self._tmp = tmp_path_factory
        self._sims: Dict[Tuple[str, str], object] = {}

    def get(self, profile: str, key: str = ""):
        """The running simulator for (profile, key), as the last user left it."""
        if not fuse_usable():
            pytest.skip(FUSE_SKIP_REASON)
        sim = self._sims.get((profile, key))
        if sim is None:
            from vgpuctl.sim import SimHost

            sim = SimHost(profile, self._tmp.mktemp(f"sim-{profile}{'-' + key if key else ''}") / "root").start()
            self._sims[(profile, key)] = sim
        return sim

    def fresh(self, profile: str, key: str = "", reset: Optional[Callable] = None):
        """The simulator for (profile, key), reset by ``reset_sim`` (or ``reset``, which replaces it)."""
        sim = self.get(profile, key)
        (reset or reset_sim)(sim)
        return sim

    def stop_all(self) -> None:
        for sim in self._sims.values():
            reset_sim(sim)  # no vGPU left (a remove still blocked on a holder would delay the daemon's exit)
            sim.stop()
        self._sims.clear()
