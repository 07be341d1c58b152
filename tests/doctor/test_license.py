"""The vgpu-license check: running unlicensed vGPUs are a warning, licensed ones ok, unknown (no VM, NVML not
usable) n/a; the fake NVML over the h200 simulator, and the real pynvml of this machine (no libnvidia-ml)."""

from __future__ import annotations

import pytest

from vgpuctl.doctor import Status
from vgpuctl.lifecycle import Lifecycle
from vgpuctl.host import Host

from nvidia.fake_nvml import FakeNvml

from .conftest import results

pytestmark = pytest.mark.sim
GPU = "0000:4a:00.0"


@pytest.fixture
def vgpus(h200):
    h200.reboot()
    lc = Lifecycle(Host(h200.paths), lock_timeout=2)
    made = [lc.create(parent=GPU, type_id="H200X-8C").uuid for _ in range(3)]
    yield made
    h200.reboot()


def test_unlicensed_running_vgpu_is_a_warning(h200, vgpus, monkeypatch):
    a, b, c = vgpus
    nvml = FakeNvml(h200).install(monkeypatch)
    nvml.start_vm(a, "vm-a")
    nvml.start_vm(b, "vm-b")
    nvml.set_license(a, licensed=True, state=5, expiry=(2027, 1, 31, 0, 0, 0))
    nvml.set_license(b, licensed=False, state=4)
    got = {r.subject: r for r in results(h200, "vgpu-license", timeout=120)}
    assert got[a].status is Status.OK and "licensed until 2027-01-31T00:00:00Z" in got[a].seen
    assert got[b].status is Status.WARN and "running unlicensed: unlicensed (VM vm-b)" in got[b].seen
    assert "configuration token" in got[b].fix
    assert c not in got  # no VM runs it: NVML does not list it


def test_no_running_vgpu_or_no_nvml_is_not_applicable(h200, vgpus, monkeypatch):
    FakeNvml(h200).install(monkeypatch)
    (r,) = results(h200, "vgpu-license", timeout=120)
    assert r.status is Status.NA and "no running vGPU" in r.seen


def test_real_pynvml_without_the_library_is_unknown(h200, vgpus):
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        pytest.skip("this machine has libnvidia-ml")
    except OSError:
        pass
    (r,) = results(h200, "vgpu-license", timeout=120)
    assert r.status is Status.NA and "license state unknown: NVML not usable" in r.seen and "error 12" in r.seen
