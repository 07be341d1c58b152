"""The systemd unit passes systemd-analyze verify (skipped where systemd-analyze is not installed)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "vgpuctl.service"


def test_unit_has_what_the_service_needs():
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "Before=libvirt-guests.service",
        "ExecReload=",
        "After=libvirtd.service virtqemud.service",
        "ExecStart=/usr/bin/vgpuctl service",
    ):
        assert line in text
    assert "nvidia-vgpu-mgr.service" in text and "nvidia-sriov.service" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path):
    vgpuctl = Path(sys.executable).parent / "vgpuctl"
    if not vgpuctl.exists():
        pytest.skip("vgpuctl entry point not installed next to the interpreter")
    unit = tmp_path / "vgpuctl.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/vgpuctl", str(vgpuctl)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "vgpuctl.service" not in r.stderr, r.stderr
