"""The desired state's ``gpus:`` (vGPU scheduler, heterogeneous mode) and pinned-capacity prediction, through the CLI
against the h200 simulator and the fake NVML."""

from __future__ import annotations

import json

import pytest

from .fake_nvml import NOT_SUPPORTED, FakeNvml
from .test_nvml import GPU, ok, run

pytestmark = pytest.mark.sim
VF0, VF1 = "0000:4a:00.4", "0000:4a:00.5"


def configure(sim, text):
    p = sim.root / "etc" / "vgpuctl" / "vgpuctl.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


MIG = "0000:ca:00.0"
SCHED = f"""\
version: 1
gpus:
  "{GPU}":
    scheduler: {{policy: equal-share, timeslice_ms: 2}}
"""
TWO = (
    SCHED
    + f"""\
  "{MIG}":
    scheduler: {{policy: fixed-share}}
"""
)


@pytest.fixture
def nvml(host, monkeypatch):
    return FakeNvml(host).install(monkeypatch)


def gpu_actions(doc):
    return [a for a in doc["actions"] if a["op"] in ("sched", "hetero")]


def test_plan_shows_the_scheduler_and_apply_converges_it(host, nvml):
    configure(host, SCHED)
    r = ok(host, "plan")
    assert r.stdout == f"~ sched GPU {GPU} best-effort -> equal-share 2ms (desired)\n"
    assert run(host, "check").exit_code == 13
    (a,) = gpu_actions(json.loads(ok(host, "plan", "--json").stdout))
    assert (a["parent"], a["type_id"], a["blocked"]) == (GPU, "equal-share 2ms", None)
    assert nvml.sched[0] == {"policy": 1, "timeslice": 0}  # plan changes nothing
    doc = json.loads(ok(host, "apply", "--json").stdout)
    assert doc["converged"] and [x["outcome"] for x in gpu_actions(doc)] == ["done"]
    assert nvml.sched[0] == {"policy": 2, "timeslice": 2000}
    assert ok(host, "plan").stdout == "" and run(host, "check").exit_code == 0
    assert json.loads(host.paths.state_file.read_text())["pending"] == []  # journalled, then settled


def test_scheduler_blocked_while_a_vgpu_runs(host, nvml):
    vf = ok(host, "create", "-p", VF0, "-t", "H200X-8C").stdout.strip()  # not running: no obstacle
    configure(host, SCHED.replace("equal-share, timeslice_ms: 2", "fixed-share"))
    ok(host, "apply")
    assert nvml.sched[0]["policy"] == 3
    nvml.start_vm(vf, "vm-1")
    configure(host, SCHED)
    r = run(host, "plan")
    assert r.exit_code == 0 and "[blocked: in-use: vGPUs run on it: NVML vGPU" in r.stdout
    nvml.calls.clear()
    assert run(host, "apply").exit_code == 13
    assert nvml.sched[0]["policy"] == 3 and "nvmlDeviceSetVgpuSchedulerState" not in nvml.calls
    nvml.vms.clear()
    with host.hold_vf(vf):  # a VM holding the VF open, before NVML lists it
        r = run(host, "plan")
        assert "[blocked: in-use: " in r.stdout and vf in r.stdout


def test_nvml_refusal_is_a_failed_action_and_the_rest_converges(host, nvml, monkeypatch):
    real = nvml.nvmlDeviceSetVgpuSchedulerState
    monkeypatch.setattr(
        nvml, "nvmlDeviceSetVgpuSchedulerState", lambda h, s: NOT_SUPPORTED if nvml._dev(h) == 0 else real(h, s)
    )
    configure(host, TWO)
    r = run(host, "apply", "--json")
    assert r.exit_code == 13, r.stderr
    doc = json.loads(r.stdout)
    assert [(x["parent"], x["outcome"]) for x in gpu_actions(doc)] == [(GPU, "failed"), (MIG, "done")]
    assert "NVML refused" in gpu_actions(doc)[0]["error"]
    assert nvml.sched[1]["policy"] == 3 and nvml.sched[0]["policy"] == 1
    assert [(x["op"], x["parent"]) for x in doc["remaining"]] == [("sched", GPU)]


def test_without_nvml_the_setting_is_blocked_with_one_reason(host, monkeypatch):
    FakeNvml(host, virt_mode=0).install(monkeypatch)
    configure(host, SCHED)
    r = run(host, "plan")
    assert r.exit_code == 0
    (line,) = r.stdout.splitlines()
    assert "[blocked: nvml: " in line and "not a vGPU host" in line
    assert run(host, "apply").exit_code == 13


def test_without_the_nvml_library_too(host):
    """The real pynvml (or none) on a machine without libnvidia-ml: blocked, not an error."""
    configure(host, SCHED)
    r = run(host, "plan")
    assert r.exit_code == 0 and "[blocked: nvml: NVML not usable: " in r.stdout


def test_heterogeneous_mode_needs_an_empty_gpu(host, nvml):
    configure(host, f'version: 1\ngpus:\n  "{GPU}": {{heterogeneous: true}}\n')
    vf = ok(host, "create", "-p", VF0, "-t", "H200X-8C").stdout.strip()
    r = run(host, "plan")
    assert f"~ hetero GPU {GPU} off -> on (desired) [blocked: in-use: the GPU hosts vGPUs: {vf}]" in r.stdout
    ok(host, "destroy", vf)
    assert ok(host, "plan").stdout == f"~ hetero GPU {GPU} off -> on (desired)\n"
    ok(host, "apply")
    assert json.loads(ok(host, "hetero", "show", GPU, "--json").stdout)[0]["heterogeneous"] is True
