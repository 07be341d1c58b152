"""MIG-backed vGPUs and SR-IOV at boot in the desired state (``gpus: <addr>: mig:`` / ``sriov:``), through the CLI
and the reconciler the service runs, against the h200 (and l40s) simulator and the fake NVML."""

from __future__ import annotations

import json

import pytest

from .fake_nvml import FakeNvml
from .test_nvml import GPU, MIG, ok, run

pytestmark = pytest.mark.sim
MVF0, MVF1 = "0000:ca:00.4", "0000:ca:00.5"
VF0 = "0000:4a:00.4"

MIG_DOC = f"""\
version: 1
gpus:
  "{MIG}":
    mig: {{mode: on, instances: [3g.71gb, 4g.71gb]}}
instances:
  big: {{type: H200X-4-71C, parent: "{MVF0}"}}
  mid: {{type: H200X-3-71C, parent: "{MVF1}"}}
"""


def configure(sim, text):
    p = sim.root / "etc" / "vgpuctl" / "vgpuctl.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.fixture
def nvml(host, monkeypatch):
    return FakeNvml(host).install(monkeypatch)


def service_pass(sim):
    """One pass of what the service runs (``Reconciler.apply`` without the CLI's up-front validation)."""
    from vgpuctl.commands._common import Settings
    from vgpuctl.commands.reconcile import build_reconciler

    rec = build_reconciler(Settings(root=str(sim.root), connect="none", lock_timeout=5))
    return rec.apply(rec.desired())


def test_mig_instances_then_the_vgpus_inside_them_in_one_apply(host, nvml):
    configure(host, MIG_DOC)
    lines = ok(host, "plan").stdout.splitlines()
    assert lines[0] == f"~ mig GPU {MIG} on [] -> on [3g.71gb, 4g.71gb] (desired (GPU-wide))"
    assert all("[blocked: depends: waits for the GPU-wide change of GPU " + MIG in ln for ln in lines[1:]), lines
    assert host.gpu_instances(MIG) == [] and nvml.mig_calls == []  # plan changes nothing
    r = run(host, "apply")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[1:] == [
        f"+ create {MVF0} nvidia-1418 on {MVF0} (big; desired)",
        f"+ create {MVF1} nvidia-1417 on {MVF1} (mid; desired)",
    ], r.stdout
    # placed by vgpuctl: the 4g fits only at 0, so the 3g goes to 4 (NVML's first free placement would fail)
    assert sorted((p, st) for _, p, st, _ in host.gpu_instances(MIG)) == [("3g.71gb", 4), ("4g.71gb", 0)]
    assert (host.vgpu_type(MVF0), host.vgpu_type(MVF1)) == (1418, 1417)
    assert ok(host, "plan").stdout == "" and run(host, "check").exit_code == 0
    doc = json.loads(host.paths.state_file.read_text())  # the MIG step is a setting: owns no device, leaves no intent
    assert sorted(o["uuid"] for o in doc["owned"]) == [MVF0, MVF1] and doc["pending"] == []


def test_after_a_reboot_the_service_recreates_gpu_instances_before_the_vgpus(host, nvml):
    configure(host, MIG_DOC)
    ok(host, "apply")
    host.reboot()  # MIG state reset: no GPU instances, no vGPUs
    assert host.gpu_instances(MIG) == [] and host.vgpu_type(MVF0) == 0
    nvml.mig_calls.clear()
    result = service_pass(host)
    assert result.converged, [s.action.line() for s in result.after.plan.actions]
    ops = [str(s.action.op) for s in result.steps]
    assert ops == ["mig", "create", "create"], ops
    assert [c.split()[0] for c in nvml.mig_calls] == ["create", "create"]
    assert (host.vgpu_type(MVF0), host.vgpu_type(MVF1)) == (1418, 1417)


def test_mig_mode_on_for_a_time_sliced_gpu_and_off_again(host, nvml):
    configure(host, f'version: 1\ngpus:\n  "{GPU}":\n    mig: {{mode: on, instances: [7g.141gb]}}\n')
    ok(host, "apply")
    assert host.mig_mode(GPU) and [g[1] for g in host.gpu_instances(GPU)] == ["7g.141gb"]
    assert [ln.split(":", 1)[1].strip() for ln in host.creatable(VF0)] == ["NVIDIA H200X-7-141C"]
    configure(host, f'version: 1\ngpus:\n  "{GPU}":\n    mig: {{mode: off}}\n')
    assert ok(host, "plan").stdout == f"~ mig GPU {GPU} on [7g.141gb] -> off (desired (GPU-wide))\n"
    ok(host, "apply")
    assert not host.mig_mode(GPU) and host.gpu_instances(GPU) == []


def test_mig_change_blocked_while_the_gpu_holds_vgpus_or_processes(host, nvml):
    vf = ok(host, "create", "-p", VF0, "-t", "H200X-8C").stdout.strip()
    configure(host, f'version: 1\ngpus:\n  "{GPU}":\n    mig: {{mode: on}}\n')
    r = run(host, "plan")
    assert r.exit_code == 0
    assert f"[blocked: in-use: GPU-wide: the GPU holds vGPUs or processes: {vf}]" in r.stdout
    r = run(host, "apply")
    assert r.exit_code == 13 and not host.mig_mode(GPU) and nvml.mig_calls == []
    ok(host, "destroy", vf)
    host.add_gpu_process(GPU, 4242, "cuda-app")
    r = run(host, "apply")
    assert r.exit_code == 13 and "process 4242 (cuda-app)" in r.stdout and not host.mig_mode(GPU)


@pytest.mark.parametrize(
    "instances,problem",
    [
        ("[5g.99gb]", "has no GPU instance profile 5g.99gb"),
        ("[7g.141gb, 1g.18gb]", "overlap on GPU"),
        ("[1g.18gb, 1g.18gb, 1g.18gb, 1g.18gb, 1g.18gb, 1g.18gb, 1g.18gb, 1g.18gb]", "overlap on GPU"),
    ],
)
def test_bad_mig_profiles_are_exit_8_and_change_nothing(host, nvml, instances, problem):
    configure(host, f'version: 1\ngpus:\n  "{MIG}":\n    mig: {{mode: on, instances: {instances}}}\n')
    for cmd in ("plan", "apply"):
        r = run(host, cmd)
        assert r.exit_code == 8, (cmd, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and problem in r.stderr and f"gpus.{MIG}.mig" in r.stderr, r.stderr
    assert host.gpu_instances(MIG) == [] and nvml.mig_calls == []


def test_unknown_profile_on_a_gpu_whose_mig_mode_is_off_is_checked_once_on_and_rolled_back(host, nvml):
    configure(host, f'version: 1\ngpus:\n  "{GPU}":\n    mig: {{mode: on, instances: [5g.99gb]}}\n')
    r = run(host, "apply")
    assert r.exit_code == 13 and "has no GPU instance profile 5g.99gb" in r.stdout
    assert not host.mig_mode(GPU) and host.gpu_instances(GPU) == []  # MIG mode went off again
    assert nvml.mig_calls == [f"mig {GPU} 1", f"mig {GPU} 0"]


@pytest.mark.parametrize(
    "text,problem",
    [
        ("mig: {mode: on, instances: [big]}", "'big' is not a GPU instance profile name"),
        ("mig: {mode: off, instances: [1g.18gb]}", "GPU instances need mode: on"),
        ("mig: {mode: maybe}", "must be on or off"),
        ("mig: {instances: [1g.18gb]}", "mode: is required"),
        ("sriov: {vfs: 0}", "must be an integer >= 1"),
        ("sriov: {vfs: 4, enabled: false}", "drop one of them"),
    ],
)
def test_malformed_mig_and_sriov_are_config_errors(host, text, problem):
    configure(host, f'version: 1\ngpus:\n  "{GPU}":\n    {text}\n')
    r = run(host, "plan")
    assert r.exit_code == 8 and r.stderr.count("\n") == 1 and problem in r.stderr, r.stderr


def test_sriov_at_boot_enables_vfs_before_typing_them(host, nvml):
    host.set_numvfs(GPU, 0)  # as after a boot without sriov-manage
    configure(
        host,
        f'version: 1\ngpus:\n  "{GPU}":\n    sriov: {{enabled: true}}\n'
        f'instances:\n  a: {{type: H200X-8C, parent: "{VF0}"}}\n',
    )
    lines = ok(host, "plan").stdout.splitlines()
    assert lines[0] == f"~ sriov GPU {GPU} 0 VFs -> 32 VFs (desired (GPU-wide))"
    doc = json.loads(ok(host, "apply", "--json").stdout)
    assert doc["converged"] and [a["op"] for a in doc["actions"]][0] == "sriov"
    assert len(list((host.paths.pci_devices / GPU).glob("virtfn*"))) == 32 and host.vgpu_type(VF0) == 1402
    assert [o["uuid"] for o in json.loads(host.paths.state_file.read_text())["owned"]] == [VF0]
    host.set_vgpu_type(VF0, 0)
    host.set_numvfs(GPU, 0)
    assert service_pass(host).converged and host.vgpu_type(VF0) == 1402  # the service's pass does the same


def test_sriov_change_blocked_while_a_vf_holds_a_vgpu_and_too_many_vfs_is_exit_8(host, nvml):
    vf = ok(host, "create", "-p", VF0, "-t", "H200X-8C").stdout.strip()
    configure(host, f'version: 1\ngpus:\n  "{GPU}":\n    sriov: {{vfs: 8}}\n')
    r = run(host, "apply")
    assert r.exit_code == 13 and f"[blocked: in-use: its VFs hold vGPUs: {vf}]" in r.stdout
    assert len(list((host.paths.pci_devices / GPU).glob("virtfn*"))) == 32
    configure(host, f'version: 1\ngpus:\n  "{GPU}":\n    sriov: {{vfs: 99}}\n')
    r = run(host, "apply")
    assert r.exit_code == 8 and "has at most 32 VFs" in r.stderr and r.stderr.count("\n") == 1


def test_l40s_has_no_mig_mode(sim_factory, monkeypatch):
    sim = sim_factory("l40s")
    FakeNvml(sim).install(monkeypatch)
    configure(sim, 'version: 1\ngpus:\n  "0000:41:00.0":\n    mig: {mode: on}\n')
    r = run(sim, "apply")
    assert r.exit_code == 8 and "has no MIG mode" in r.stderr


def test_without_nvml_the_mig_change_waits_and_changes_nothing(host):
    """The real pynvml on this machine (no libnvidia-ml): blocked ``nvml`` with NVML's reason, exit 13."""
    configure(host, f'version: 1\ngpus:\n  "{MIG}":\n    mig: {{mode: on, instances: [1g.18gb]}}\n')
    r = run(host, "apply")
    assert r.exit_code == 13 and "[blocked: nvml: NVML not usable" in r.stdout, r.stdout
    assert host.gpu_instances(MIG) == []


def test_without_nvml_sriov_still_converges_from_sysfs(host):
    """SR-IOV needs no NVML: with the real pynvml and no NVIDIA library the VFs are enabled and typed."""
    host.set_numvfs(GPU, 0)
    configure(
        host,
        f'version: 1\ngpus:\n  "{GPU}":\n    sriov: {{vfs: 4}}\ninstances:\n  a: {{type: H200X-8C, parent: "{VF0}"}}\n',
    )
    r = run(host, "apply")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert len(list((host.paths.pci_devices / GPU).glob("virtfn*"))) == 4 and host.vgpu_type(VF0) == 1402


def test_every_reboot_loses_the_vfs_and_the_service_enables_them_before_typing(sim_factory, tmp_path):
    """A host whose GPU boots without VFs (profile ``numvfs: 0``, as without sriov-manage at boot)."""
    prof = tmp_path / "h200-novfs.yaml"
    prof.write_text(
        "version: 1\nsummary: an H200 whose VFs are off at boot\ninclude: [h200]\n"
        f'devices:\n  - {{pci: "{GPU}", model: h200, numvfs: 0}}\n'
    )
    sim = sim_factory(str(prof))
    assert sim.control_dir.joinpath("mig").exists() and not list((sim.paths.pci_devices / GPU).glob("virtfn*"))
    configure(
        sim,
        f'version: 1\ngpus:\n  "{GPU}":\n    sriov: {{enabled: true}}\n'
        f'instances:\n  a: {{type: H200X-8C, parent: "{VF0}"}}\n',
    )
    for _boot in range(2):
        result = service_pass(sim)
        assert [str(s.action.op) for s in result.steps] == ["sriov", "create"] and result.converged
        assert sim.vgpu_type(VF0) == 1402
        sim.reboot()
        assert not list((sim.paths.pci_devices / GPU).glob("virtfn*"))
