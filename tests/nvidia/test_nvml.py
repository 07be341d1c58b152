"""NVML enrichment, scheduler and heterogeneous-mode commands end to end, against the h200 simulator and the fake
NVML (tests/nvidia/fake_nvml.py) that serves the same host through the real pynvml wrappers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vgpuctl.cli import cli as group
from vgpuctl.errors import GpuBusy, InvalidInput, NotVgpuHost, NvmlError

from .fake_nvml import FakeNvml

pytestmark = pytest.mark.sim
GPU, MIG = "0000:4a:00.0", "0000:ca:00.0"


def run(sim, *args):
    r = CliRunner().invoke(group, ["--root", str(sim.root), "--connect", "none", "--lock-timeout", "2", *args])
    return r


def ok(sim, *args):
    r = run(sim, *args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


@pytest.fixture
def nvml(host, monkeypatch):
    return FakeNvml(host).install(monkeypatch)


def test_types_and_parents_take_nvml_values(host, nvml):
    recs = json.loads(ok(host, "types", "--parent", "0000:4a:00.4", "--json").stdout)
    t = next(r for r in recs if r["name"] == "NVIDIA H200X-8C")
    assert (t["framebuffer_mib"], t["max_instance"], t["type_class"], t["series"]) == (8192, 16, "Compute", "C")
    parents = json.loads(ok(host, "parents", "--json").stdout)
    assert {p["gpu_name"] for p in parents} == {"NVIDIA H200"}


def test_list_enriched_per_instance(host, nvml):
    a = ok(host, "create", "-p", GPU, "-t", "H200X-8C").stdout.strip()
    b = ok(host, "create", "-p", GPU, "-t", "H200X-8C").stdout.strip()
    nvml.start_vm(a, "c0ffee00-0000-4000-8000-000000000001")
    recs = {r["uuid"]: r for r in json.loads(ok(host, "list", "--json").stdout)}
    ra = recs[a]
    assert ra["vm_id"] == "c0ffee00-0000-4000-8000-000000000001"  # bytes from GetVmID, decoded
    assert ra["fb_used_mib"] == 5 * 1024  # > 32 bits in bytes: read as unsigned 64-bit
    assert (ra["sm_util"], ra["mem_util"]) == (42, 17)
    assert ra["nvml_id"] is not None
    assert recs[b]["vm_id"] is None and recs[b]["nvml_id"] is None  # no VM runs it: NVML does not list it
    text = ok(host, "list").stdout
    assert "FB_USED" in text.splitlines()[0]


def test_wrapper_fb_usage_bug_is_real(host, nvml):
    """The plain pynvml wrapper passes a c_uint: the C API (and the fake) refuse that; vgpuctl's call works."""
    import pynvml

    a = ok(host, "create", "-p", GPU, "-t", "H200X-8C").stdout.strip()
    nvml.start_vm(a, "vm")
    pynvml.nvmlInit()
    (v,) = pynvml.nvmlDeviceGetActiveVgpus(pynvml.nvmlDeviceGetHandleByPciBusId(GPU))
    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlVgpuInstanceGetFbUsage(v)


def test_mig_instance_gets_gpu_instance(host, nvml):
    r = run(host, "create", "-p", MIG, "-t", "H200X-1-18C")  # MIG mode, no GPU instance yet: nothing offers it
    assert r.exit_code != 0 and host.creatable("0000:ca:00.4") == []
    host.create_gpu_instance(MIG, "2g.35gb")
    host.create_gpu_instance(MIG, "1g.18gb")
    a = ok(host, "create", "-p", MIG, "-t", "H200X-1-18C").stdout.strip()
    nvml.start_vm(a, "vm-mig")
    (r,) = json.loads(ok(host, "list", "--json").stdout)
    assert r["type_name"] == "NVIDIA H200X-1-18C" and r["vm_id"] == "vm-mig"
    assert (host.nvidia_dir(a) / "gpu_instance_id").read_text().strip() == "2"  # the 1g.18gb one, not the 2g


def test_nvml_reads_and_changes_mig_through_the_real_wrappers(host, nvml):
    from vgpuctl.nvml import Nvml

    with Nvml() as nv:
        off = nv.mig(GPU)
        assert (off.supported, off.current, off.profiles, off.instances) == (True, False, (), ())
        nv.set_mig_mode(GPU, True)
        st = nv.mig(GPU)
        assert st.current and [p.name for p in st.profiles] == [
            "1g.18gb",
            "2g.35gb",
            "3g.71gb",
            "4g.71gb",
            "7g.141gb",
            "1g.35gb",
        ]  # NVML's profile-index order
        p3 = st.profile("3g.71gb")
        assert (p3.id, p3.slices, p3.count, p3.size, p3.placements) == (9, 3, 2, 4, (0, 4))
        nv.create_gpu_instance(GPU, p3, 4)
        with pytest.raises(NvmlError, match="not enough room"):  # overlaps the first
            nv.create_gpu_instance(GPU, st.profile("3g.71gb"), 4)
        nv.create_gpu_instance(GPU, st.profile("4g.71gb"), 0)
        assert [(g.profile, g.start, g.size) for g in nv.mig(GPU).instances] == [("3g.71gb", 4, 4), ("4g.71gb", 0, 4)]
        with pytest.raises(GpuBusy):  # turning MIG off with GPU instances left
            nv.set_mig_mode(GPU, False)
        for g in nv.mig(GPU).instances:
            nv.destroy_gpu_instance(GPU, g.id)
        host.add_gpu_process(GPU, 4242, "cuda-app")
        assert nv.mig(GPU).processes == ("process 4242 (cuda-app)",)
        with pytest.raises(GpuBusy):
            nv.set_mig_mode(GPU, False)
    assert nvml.mig_calls[:3] == [f"mig {GPU} 1", f"create {GPU} 3g.71gb 4", f"create {GPU} 3g.71gb 4"]
    host.reboot()  # MIG mode and GPU instances do not survive it
    with Nvml() as nv:
        assert not nv.mig(GPU).current and nv.mig(MIG).current and nv.mig(MIG).instances == ()


def test_place_instances_backtracks_and_refuses_overlap():
    from vgpuctl.nvml import MigProfile, place_instances

    h200 = [
        MigProfile("1g.18gb", 19, 1, 18432, 7, 1, (0, 1, 2, 3, 4, 5, 6)),
        MigProfile("3g.71gb", 9, 3, 72704, 2, 4, (0, 4)),
        MigProfile("4g.71gb", 5, 4, 72704, 1, 4, (0,)),
        MigProfile("7g.141gb", 0, 7, 144384, 1, 8, (0,)),
    ]
    assert place_instances(h200, ["3g.71gb", "4g.71gb"]) == [("3g.71gb", 4), ("4g.71gb", 0)] or sorted(
        place_instances(h200, ["3g.71gb", "4g.71gb"])
    ) == [("3g.71gb", 4), ("4g.71gb", 0)]
    assert place_instances(h200, ["7g.141gb", "1g.18gb"]) is None
    assert place_instances(h200, ["1g.18gb"] * 8) is None  # 7 placements
    assert place_instances(h200, ["1g.18gb"], taken=[(0, 4)]) == [("1g.18gb", 4)]


def test_sched_show_and_set(host, nvml):
    (r,) = json.loads(ok(host, "sched", "show", GPU, "--json").stdout)
    assert (r["schema"], r["policy"], r["vgpu_host"]) == ("vgpuctl.scheduler/v1", "best-effort", True)
    assert r["supported"] == ["best-effort", "equal-share", "fixed-share"] and r["timeslice_range_ms"] == "1..30"
    (r,) = json.loads(ok(host, "sched", "set", GPU, "--policy", "fixed-share", "--timeslice", "4", "--json").stdout)
    assert (r["policy"], r["timeslice_ms"]) == ("fixed-share", 4.0)
    assert len(json.loads(ok(host, "sched", "show", "--json").stdout)) == 2


@pytest.mark.parametrize("args", [["--timeslice", "100"], ["--timeslice", "0.5"]])
def test_sched_set_range_checked(host, nvml, args):
    r = run(host, "sched", "set", GPU, "--policy", "equal-share", *args)
    assert r.exit_code == InvalidInput.exit_code and "range" in r.stderr


def test_sched_set_refused_while_vgpu_runs(host, nvml):
    a = ok(host, "create", "-p", GPU, "-t", "H200X-8C").stdout.strip()
    nvml.start_vm(a, "vm")
    before = dict(nvml.sched)
    r = run(host, "sched", "set", GPU, "--policy", "equal-share")
    assert r.exit_code == GpuBusy.exit_code and isinstance(r.exception, SystemExit)
    assert nvml.sched == before and "nvmlDeviceSetVgpuSchedulerState" not in nvml.calls
    with host.hold_vf(a):  # a VM holding the VF, even if NVML does not list it yet
        nvml.vms.clear()
        assert run(host, "sched", "set", GPU, "--policy", "equal-share").exit_code == GpuBusy.exit_code


def test_hetero_show_set_and_its_effect(host, nvml):
    (r,) = json.loads(ok(host, "hetero", "show", GPU, "--json").stdout)
    assert r["heterogeneous"] is False
    ok(host, "create", "-p", GPU, "-t", "H200X-8C")
    assert run(host, "create", "-p", GPU, "-t", "H200X-4C").exit_code == 4  # equal-size rule
    assert run(host, "hetero", "set", GPU, "on").exit_code == GpuBusy.exit_code  # GPU hosts a vGPU
    host.reboot()
    ok(host, "hetero", "set", GPU, "on")
    assert json.loads(ok(host, "hetero", "show", GPU, "--json").stdout)[0]["heterogeneous"] is True
    ok(host, "create", "-p", GPU, "-t", "H200X-8C")
    ok(host, "create", "-p", GPU, "-t", "H200X-4C")  # mixed sizes now


def test_not_a_vgpu_host(host, monkeypatch):
    FakeNvml(host, virt_mode=0).install(monkeypatch)
    r = run(host, "sched", "show", GPU)
    assert r.exit_code == NotVgpuHost.exit_code and "not a vGPU host" in r.stderr
    r = ok(host, "sched", "show", "--json")
    assert [x["vgpu_host"] for x in json.loads(r.stdout)] == [False, False]
    r = ok(host, "list", "--json")
    assert r.stderr.count("\n") == 1 and "not in vGPU host mode" in r.stderr


def test_function_missing_degrades_with_one_line(host, monkeypatch):
    FakeNvml(host, missing={"nvmlDeviceGetSupportedVgpus"}).install(monkeypatch)
    r = ok(host, "types", "--json")
    assert r.stderr.count("\n") == 1 and "NVML error 13" in r.stderr
    assert json.loads(r.stdout)  # sysfs data still there


def test_version_mismatch_degrades_field(host, monkeypatch):
    import pynvml

    FakeNvml(host).install(monkeypatch)
    monkeypatch.setattr(pynvml, "VgpuHeterogeneousMode_v1", 0x2000008)  # a pynvml newer than the driver
    r = run(host, "hetero", "show", GPU)
    assert r.exit_code == NvmlError.exit_code and "25" in r.stderr
