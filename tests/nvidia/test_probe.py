"""scripts/device-probe.sh and its NVML part (vgpuctl.probe): read only, never crashing; against the fake NVML on
the h200 simulator, and for real on this machine (no NVIDIA: every NVML path degrades to one line)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .fake_nvml import FakeNvml

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "device-probe.sh"
WRITERS = ("Set", "Create", "Destroy", "Reset", "Clear", "Register")


@pytest.mark.sim
def test_probe_reads_driver_gpus_and_mig_without_changing_anything(host, monkeypatch):
    import pynvml

    from vgpuctl.probe import probe

    nvml = FakeNvml(host).install(monkeypatch)
    lines = []
    probe(pynvml, sys_version=nvml.driver_version, out=lines.append)
    text = "\n".join(lines)
    assert nvml.driver_version and f"driver (NVML): {nvml.driver_version}" in text and "driver versions agree" in text
    assert "GPUs: 2" in text
    assert "virtualization mode: 3 (vGPU host)" in text
    assert "MIG mode: current off, pending off" in text and "MIG mode: current on, pending on" in text
    for name in ("1g.18gb", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb"):
        assert f"MIG {name}" in text
    assert "GPU instance profile 0: MIG 7g.141gb: 7 slice(s)" in text
    assert not [c for c in nvml.calls if any(w in c for w in WRITERS)], nvml.calls
    lines.clear()
    probe(pynvml, sys_version="535.1", out=lines.append)
    assert "driver versions DIFFER" in "\n".join(lines)


@pytest.mark.sim
def test_probe_degrades_per_call(host, monkeypatch):
    """A driver without the MIG calls (error 13) or not in vGPU host mode: one line each, no traceback."""
    import pynvml

    from vgpuctl.probe import probe

    FakeNvml(host, virt_mode=0, missing={"nvmlDeviceGetMigMode", "nvmlSystemGetDriverVersion"}).install(monkeypatch)
    lines = []
    probe(pynvml, sys_version=None, out=lines.append)
    text = "\n".join(lines)
    assert "virtualization mode: 0 (none (bare metal))" in text
    assert "MIG mode: NVML error 13" in text and "driver (NVML): NVML error 13" in text


def test_probe_calls_only_queries_and_survives_a_gpu_it_cannot_open():
    from vgpuctl.probe import probe

    class Nv:
        class NVMLError(Exception):
            pass

        def nvmlInit(self):
            return None

        def nvmlSystemGetDriverVersion(self):
            return b"1"

        def nvmlDeviceGetCount(self):
            return 1

        def nvmlDeviceGetHandleByIndex(self, i):
            raise Nv.NVMLError("x")

        def nvmlShutdown(self):
            return None

    import vgpuctl.probe as mod

    assert all(
        p.startswith("nvml") and ("Get" in p or p in ("nvmlInit", "nvmlShutdown")) for p in mod.READ_ONLY_PREFIXES
    )
    out = []
    probe(Nv(), sys_version=None, out=out.append)  # a GPU NVML cannot open: one line
    assert out[-1].startswith("- GPU 0:")


def _run(root=None):
    env = dict(os.environ)
    env.pop("VGPUCTL_NVML", None)
    if root is not None:
        env["VGPUCTL_ROOT"] = str(root)
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300)


def test_script_never_writes():
    text = SCRIPT.read_text()
    for bad in (
        "nvmlDeviceSet",
        "SetMigMode",
        "sriov_numvfs",
        "sriov-manage",
        "> /sys",
        "nvidia-smi -mig",
        "nvidia-smi -r",
        "--reset",
    ):
        assert bad not in text


def test_script_runs_cleanly_on_this_machine(tmp_path):
    p = _run()
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "Traceback" not in out
    for section in (
        "=== host",
        "=== NVML (read-only queries)",
        "=== vgpuctl doctor",
        "=== vgpuctl parents",
        "=== vgpuctl sched show",
        "=== vgpuctl hetero show",
        "=== done (read only",
    ):
        assert section in out


@pytest.mark.sim
def test_script_on_a_simulated_h200_without_nvml(host, tmp_path):
    """vgpuctl's paths with the host's sysfs but no NVIDIA user space: parents from sysfs with one NVML line,
    sched/hetero show exit 14 with one line; the host is unchanged (no event)."""
    before = host.events()
    report = tmp_path / "probe.txt"
    env = dict(os.environ, VGPUCTL_ROOT=str(host.root))
    env.pop("VGPUCTL_NVML", None)
    p = subprocess.run(["bash", str(SCRIPT), str(report)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0
    out = report.read_text()
    assert "Traceback" not in out
    assert "0000:4a:00.4" in out  # a VF parent, from sysfs
    if "NVML error 12" in out:  # this machine has no libnvidia-ml (the usual case here)
        assert "nvmlInit: NVML error 12" in out
        assert out.count("[exit 14]") == 2
    assert host.events() == before
