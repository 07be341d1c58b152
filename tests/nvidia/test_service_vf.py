"""The service on a vendor-VFIO host (the l40s simulator): a VF's vGPU lost without any mdev change (a driver
reload, ``sriov-manage``) starts a pass within a poll interval, because the NVIDIA per-VF backend declares what
it depends on (``Backend.watch``), not only the mdev directories."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.sim
VF0 = "0000:41:00.4"


@pytest.fixture
def l40s(tmp_path):
    from vgpuctl.sim import SimHost

    sim = SimHost("l40s", tmp_path / "root").start()
    yield sim
    sim.stop()


def test_service_retypes_a_vf_after_its_vgpu_is_lost(l40s, tmp_path):
    cfg = l40s.root / "etc" / "vgpuctl" / "vgpuctl.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'version: 1\ninstances:\n  a: {{type: L40S-8Q, parent: "{VF0}"}}\n')
    env = dict(os.environ, VGPUCTL_ROOT=str(l40s.root), VGPUCTL_LIBVIRT_URI="none", VGPUCTL_NVML="off")
    log = open(tmp_path / "service.log", "w+")
    # a resync far beyond the test's waits: only the watch can start the second pass
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vgpuctl.cli",
            "-vv",
            "service",
            "--watch",
            "poll",
            "--poll-interval",
            "0.05",
            "--resync-interval",
            "3600",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )

    def typed(timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if l40s.vgpu_type(VF0):
                return True
            time.sleep(0.02)
        return False

    try:
        assert typed(60), open(tmp_path / "service.log").read()
        end = time.monotonic() + 60
        while "converged" not in open(tmp_path / "service.log").read() and time.monotonic() < end:
            time.sleep(0.05)
        # its own change has been polled (a pass for it began; -vv logs why each pass runs), so the reboot below is
        # a change the watch sees, not one it takes as its starting point
        end = time.monotonic() + 60
        while "converging (sysfs changed)" not in open(tmp_path / "service.log").read():
            assert time.monotonic() < end, open(tmp_path / "service.log").read()
            time.sleep(0.05)
        l40s.reboot()  # the VF's vGPU is gone; sys/class/mdev_bus and sys/bus/mdev/devices do not change
        assert l40s.vgpu_type(VF0) == 0
        assert typed(90), open(tmp_path / "service.log").read()
    finally:
        proc.terminate()
        proc.wait(10)
