"""The nvml check: the fake NVML (tests/nvidia/fake_nvml.py, the real pynvml wrappers over the h200 simulator) for
ok, a driver reloaded to another release, a library/module mismatch at init and a GPU not in vGPU host mode; the
real pynvml of this machine (no libnvidia-ml: error 12) for the degraded warning."""

from __future__ import annotations

import ctypes

import pytest

from vgpuctl.doctor import Status

from nvidia.fake_nvml import FakeNvml

from .conftest import one

pytestmark = pytest.mark.sim


def test_nvml_ok_when_library_and_module_agree(h200, monkeypatch):
    FakeNvml(h200).install(monkeypatch)
    r = one(h200, "nvml")
    assert r.status is Status.OK and "driver 550.90.05" in r.seen and "2 GPU(s) in vGPU host mode" in r.seen
    assert (h200.paths.sys / "module/nvidia/version").read_text() == "550.90.05\n"


def test_nvml_fails_when_the_module_is_another_release(h200, monkeypatch):
    FakeNvml(h200).install(monkeypatch)
    h200.reload_module("nvidia", "550.127.05")  # a driver upgrade, module reloaded, library still the old one
    r = one(h200, "nvml")
    assert r.status is Status.FAIL and "550.90.05" in r.seen and "550.127.05" in r.seen
    assert r.fix.startswith("reboot")


def test_nvml_init_mismatch_error(h200, monkeypatch):
    FakeNvml(h200, init_error=18).install(monkeypatch)
    r = one(h200, "nvml")
    assert r.status is Status.FAIL and "NVML error 18" in r.seen and "different releases" in r.seen


def test_nvml_gpu_not_a_vgpu_host(h200, monkeypatch):
    FakeNvml(h200, virt_mode=1).install(monkeypatch)
    r = one(h200, "nvml")
    assert r.status is Status.FAIL and "pass-through" in r.seen


def test_nvml_off(h200):
    assert one(h200, "nvml", nvml="off").status is Status.NA


def _have_libnvidia_ml() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_have_libnvidia_ml(), reason="this machine has libnvidia-ml")
@pytest.mark.parametrize("host", ["t4x2", "h200"])
def test_real_pynvml_without_library_warns(host, request):
    sim = request.getfixturevalue(host)
    r = one(sim, "nvml")
    assert r.status is Status.WARN and "NVML error 12" in r.seen and "libnvidia-ml.so.1" in r.fix
