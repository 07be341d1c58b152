"""Degradation against the real pynvml on this machine: no libnvidia-ml here, so nvmlInit fails with error 12."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vgpuctl.errors import NvmlError

VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]


def have_libnvidia_ml() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(have_libnvidia_ml(), reason="this machine has libnvidia-ml")


def run(root, *args, **env):
    e = dict(os.environ, VGPUCTL_ROOT=str(root), VGPUCTL_LIBVIRT_URI="none", **env)
    e.pop("VGPUCTL_NVML", None) if "VGPUCTL_NVML" not in env else None
    return subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=e, timeout=60)


def test_nvml_open_says_library_missing():
    from vgpuctl.nvml import Nvml, NvmlUnavailable

    with pytest.raises(NvmlUnavailable) as ei:
        Nvml().open()
    assert ei.value.code == 12 and "libnvidia-ml.so.1" in ei.value.reason


def test_sched_needs_nvml(tmp_path):
    p = run(tmp_path, "sched", "show")
    assert p.returncode == NvmlError.exit_code and p.stdout == ""
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "error 12" in p.stderr


@pytest.mark.sim
def test_inventory_degrades_to_sysfs_with_one_line(tmp_path):
    from vgpuctl.sim import SimHost

    with SimHost("l40s", tmp_path / "h") as sim:
        sim.set_vgpu_type("0000:41:00.4", 1105)
        p = run(sim.root, "list", "--json")
        assert p.returncode == 0
        assert p.stderr.count("\n") == 1 and "NVML error 12" in p.stderr
        (r,) = json.loads(p.stdout)
        assert (r["uuid"], r["type_name"], r["vm_id"]) == ("0000:41:00.4", "NVIDIA L40S-4Q", None)
        p = run(sim.root, "list", VGPUCTL_NVML="off")
        assert p.returncode == 0 and p.stderr == ""


def test_non_nvidia_host_never_imports_pynvml(tmp_path):
    from vgpuctl.sim import materialize

    materialize("gvtg", tmp_path)
    code = (
        "import sys; from vgpuctl.cli import main; sys.argv=['vgpuctl','list']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'pynvml' not in sys.modules, 'pynvml imported'\nprint('clean')"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, VGPUCTL_ROOT=str(tmp_path), VGPUCTL_LIBVIRT_URI="none"),
    )
    assert "clean" in p.stdout, p.stderr
    assert p.stderr == "" or "NVML" not in p.stderr
