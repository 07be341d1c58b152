"""NVIDIA vGPU plugin parameters (nvidia/vgpu_params): validation, the simulator's driver semantics, create --param,
the desired state (params: and service profiles), plan/apply, and the libvirt hook at prepare; on the l40s and h200
simulators (vendor VFIO) and the t4x2 one (NVIDIA mdev)."""

from __future__ import annotations

import errno
import io
import json

import pytest
from click.testing import CliRunner

from vgpuctl import vgpu_params
from vgpuctl.cli import cli
from vgpuctl.errors import ConfigError, InvalidInput
from vgpuctl.vgpu_params import ParamsError

pytestmark = pytest.mark.sim
GPU, VF0, VF1 = "0000:41:00.0", "0000:41:00.4", "0000:41:00.5"
Q8 = "nvidia-1107"  # L40S-8Q
DOM_UUID = "6695eb01-f6a4-8304-79aa-97f2502e10ff"


@pytest.fixture
def host(sim_pool):
    return sim_pool.fresh("l40s")


def run(sim, *args):
    return CliRunner().invoke(
        cli, ["--root", str(sim.root), "--connect", "none", "--nvml", "off", "--lock-timeout", "2", *args]
    )


def ok(sim, *args):
    r = run(sim, *args)
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


def params_file(sim, vf):
    return sim.paths.pci_devices / vf / "nvidia" / "vgpu_params"


def read(sim, vf):
    return params_file(sim, vf).read_text().strip()


def write_config(sim, text, name="vgpuctl.yaml"):
    p = sim.root / "etc" / "vgpuctl" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def typed(sim):
    return sorted(vf for vf in (VF0, VF1, "0000:41:00.6") if sim.vgpu_type(vf))


# --- validation (pure) ------------------------------------------------------------------------------------------
def test_validate_known_keys_and_canonical_order():
    assert vgpu_params.parse_option(["frame_rate_limiter=0", "disable_vnc=1"]) == (
        ("disable_vnc", "1"),
        ("frame_rate_limiter", "0"),
    )
    assert (
        vgpu_params.render((("disable_vnc", "1"), ("frame_rate_limiter", "0"))) == "disable_vnc=1, frame_rate_limiter=0"
    )


@pytest.mark.parametrize(
    "given, needle",
    [
        (["bogus=1"], "unknown vGPU parameter 'bogus'; NVIDIA documents: disable_vnc, enable_debugging"),
        (["disable_vnc=2"], "disable_vnc='2' is not valid"),
        (["disable_vnc"], "expected KEY=VALUE"),
        (["disable_vnc=1\nenable_uvm=1"], "newline"),
        (["frame_rate_limiter=99999"], "is not valid"),
        (["disable_vnc=1", "disable_vnc=0"], "given twice"),
    ],
)
def test_validate_refuses_with_one_line(given, needle):
    with pytest.raises(ParamsError) as ei:
        vgpu_params.parse_option(given)
    assert needle in str(ei.value) and "\n" not in str(ei.value)
    assert ei.value.exit_code == InvalidInput.exit_code


def test_validate_refuses_over_the_length(monkeypatch):
    monkeypatch.setattr(vgpu_params, "MAX_TEXT", 20)
    with pytest.raises(ParamsError, match="longer than 20 bytes"):
        vgpu_params.parse_option(["frame_rate_limiter=0", "disable_vnc=1"])


def test_parse_text_tolerates_the_driver_forms():
    assert vgpu_params.parse_text("") == ()
    assert vgpu_params.parse_text("frame_rate_limiter=0, disable_vnc=1\n") == (
        ("disable_vnc", "1"),
        ("frame_rate_limiter", "0"),
    )
    assert vgpu_params.parse_text(None) is None


# --- the simulator's driver semantics ----------------------------------------------------------------------------
def test_sim_adds_on_write_clears_on_space_and_refuses_under_a_running_vm(host):
    host.set_vgpu_type(VF0, 1107)
    f = params_file(host, VF0)
    f.write_text("frame_rate_limiter=0")
    f.write_text("disable_vnc=1, frame_rate_limiter=1")
    assert read(host, VF0) == "frame_rate_limiter=1, disable_vnc=1"  # added to, a name given again replaced
    with pytest.raises(OSError) as ei:
        f.write_text("no_such=1")
    assert ei.value.errno == errno.EINVAL and read(host, VF0) == "frame_rate_limiter=1, disable_vnc=1"
    with host.hold_vf(VF0):
        with pytest.raises(OSError) as ei:
            f.write_text(" ")
        assert ei.value.errno == errno.EBUSY
    f.write_text(" ")
    assert read(host, VF0) == ""
    f.write_text("enable_uvm=1")
    host.set_vgpu_type(VF0, 0)  # the vGPU is gone: its parameters with it
    assert read(host, VF0) == ""


# --- create --param ------------------------------------------------------------------------------------------------
def test_create_param_writes_before_any_vm(host):
    vf = ok(
        host, "create", "-p", GPU, "-t", "L40S-8Q", "--param", "frame_rate_limiter=0", "--param", "disable_vnc=1"
    ).stdout.strip()
    assert vf == VF0 and vgpu_params.parse_text(read(host, VF0)) == (("disable_vnc", "1"), ("frame_rate_limiter", "0"))


@pytest.mark.parametrize("param", ["bogus=1", "disable_vnc=yes", "frame_rate_limiter", "disable_vnc=1\n"])
def test_create_bad_param_changes_nothing(host, param):
    r = run(host, "create", "-p", GPU, "-t", "L40S-8Q", "--param", param)
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert typed(host) == [] and not host.paths.state_file.exists()


def test_create_param_failure_rolls_the_vgpu_back(host):
    host.fail_next(f"{VF0}/nvidia/vgpu_params", "EIO")
    r = run(host, "create", "-p", GPU, "-t", "L40S-8Q", "--param", "disable_vnc=1")
    assert r.exit_code == 9 and "vgpu_params" in r.stderr
    assert typed(host) == []
    state = json.loads(host.paths.state_file.read_text())
    assert state["owned"] == [] and state["pending"] == []


def test_create_param_on_a_non_nvidia_parent_is_refused(sim_factory):
    sim = sim_factory("mtty")
    r = run(sim, "create", "-p", "mtty", "-t", "mtty-1", "--param", "disable_vnc=1")
    assert r.exit_code == 2 and "not an NVIDIA GPU" in r.stderr
    assert sim.instances() == []


def test_create_param_on_nvidia_mdev(sim_factory):
    sim = sim_factory("t4x2")
    u = ok(sim, "create", "-p", "0000:3b:00.0", "-t", "T4-4Q", "--param", "enable_uvm=1").stdout.strip()
    assert (sim.paths.mdev_devices / u / "nvidia" / "vgpu_params").read_text().strip() == "enable_uvm=1"


# --- desired state, plan, apply ------------------------------------------------------------------------------------
SPEC = """\
version: 1
instances:
  a:
    type: L40S-8Q
    parent: "{vf}"
    params: {params}
"""


def test_apply_writes_at_create_then_changes_and_clears(host):
    write_config(host, SPEC.format(vf=VF0, params="{frame_rate_limiter: 0, disable_vnc: true}"))
    out = ok(host, "plan").stdout
    assert "with params disable_vnc=1, frame_rate_limiter=0" in out
    ok(host, "apply")
    assert vgpu_params.parse_text(read(host, VF0)) == (("disable_vnc", "1"), ("frame_rate_limiter", "0"))
    assert ok(host, "check").exit_code == 0
    # a change drops a key: the set is cleared, then written whole
    write_config(host, SPEC.format(vf=VF0, params="{enable_uvm: 1}"))
    line = ok(host, "plan").stdout
    assert f"~ params {VF0} disable_vnc=1, frame_rate_limiter=0 -> enable_uvm=1" in line
    assert "takes effect at the next VM start" in line
    ok(host, "apply")
    assert read(host, VF0) == "enable_uvm=1"
    write_config(host, SPEC.format(vf=VF0, params="{}"))  # the empty set clears all
    assert "-> (none)" in ok(host, "plan").stdout
    ok(host, "apply")
    assert read(host, VF0) == ""
    assert ok(host, "check").exit_code == 0


def test_no_params_key_leaves_the_file_alone(host):
    write_config(host, SPEC.replace("    params: {params}\n", "").format(vf=VF0))
    ok(host, "apply")
    params_file(host, VF0).write_text("enable_debugging=1")  # set by hand: not vgpuctl's to manage
    assert ok(host, "plan").stdout.strip().endswith("no changes") or "params" not in ok(host, "plan").stdout
    assert ok(host, "check").exit_code == 0


def test_plan_never_writes_under_a_running_vm_and_the_hook_does_at_prepare(host):
    from vgpuctl.hook import Hook
    from vgpuctl.host import Host
    from vgpuctl.lifecycle import Lifecycle, ProcessHolders

    write_config(host, SPEC.format(vf=VF0, params="{frame_rate_limiter: 0}"))
    ok(host, "apply")
    write_config(host, SPEC.format(vf=VF0, params="{disable_vnc: 1}"))
    with host.hold_vf(VF0):  # the VM runs
        out = ok(host, "plan").stdout
        assert "~ params" in out and "[blocked: in-use:" in out and "at its next start" in out
        r = run(host, "apply")
        assert r.exit_code == 13
        assert read(host, VF0) == "frame_rate_limiter=0"  # untouched under the running VM
    # the VM stopped; libvirt starts it again: the hook writes the parameters at prepare, before QEMU opens the VF
    xml = (
        f"<domain type='kvm'><name>guest</name><uuid>{DOM_UUID}</uuid><devices>"
        "<hostdev mode='subsystem' type='pci' managed='no'><source>"
        "<address domain='0x0000' bus='0x41' slot='0x00' function='0x4'/></source></hostdev>"
        "</devices></domain>"
    )
    h = Host(host.paths)
    err = io.StringIO()
    hook = Hook(Lifecycle(h, lock_timeout=1, usage_checks=[ProcessHolders(h)]), host.paths, err=err)
    assert hook.run(["qemu", "guest", "prepare", "begin", "-"], lambda: xml) == 0
    assert read(host, VF0) == "disable_vnc=1"
    assert f"vGPU parameters of {VF0}: frame_rate_limiter=0 -> disable_vnc=1" in err.getvalue()
    assert ok(host, "check").exit_code == 0


def test_service_profile_sets_the_tier_params(host):
    write_config(
        host,
        "version: 1\nprofiles:\n  gold:\n    type: L40S-8Q\n    params: {frame_rate_limiter: 0}\n",
        name="profiles.yaml",
    )
    write_config(
        host,
        f'version: 1\ninstances:\n  a: {{profile: gold, parent: "{VF0}"}}\n'
        f'  b: {{profile: gold, parent: "{VF1}", params: {{disable_vnc: 1}}}}\n',
    )
    ok(host, "apply")
    assert read(host, VF0) == "frame_rate_limiter=0"
    assert read(host, VF1) == "disable_vnc=1"  # the instance's own params replace the profile's
    u = ok(host, "create", "--profile", "gold", "-p", "0000:41:00.6").stdout.strip()
    assert read(host, u) == "frame_rate_limiter=0"


@pytest.mark.parametrize(
    "params, needle",
    [
        ("{bogus: 1}", "unknown vGPU parameter 'bogus'; NVIDIA documents:"),
        ("{disable_vnc: 7}", "disable_vnc='7' is not valid"),
        ("[disable_vnc]", "expected a mapping of vGPU parameter to value"),
        ('{disable_vnc: "1\\n"}', "newline"),
    ],
)
def test_bad_params_in_the_desired_state_are_config_errors(host, params, needle):
    write_config(host, SPEC.format(vf=VF0, params=params))
    r = run(host, "apply")
    assert r.exit_code == ConfigError.exit_code, r.stderr
    assert ":6: instances.a.params" in r.stderr and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert typed(host) == []


def test_bad_params_in_a_profile_are_config_errors(host):
    write_config(
        host, "version: 1\nprofiles:\n  gold:\n    type: L40S-8Q\n    params: {frl: 0}\n", name="profiles.yaml"
    )
    r = run(host, "create", "--profile", "gold", "-p", GPU)
    assert r.exit_code == ConfigError.exit_code and "profiles.gold.params.frl" in r.stderr
    assert typed(host) == []


def test_params_on_a_non_nvidia_instance_are_blocked(sim_pool):
    sim = sim_pool.fresh("mtty")
    write_config(sim, "version: 1\ninstances:\n  a: {type: mtty-1, parent: mtty, params: {disable_vnc: 1}}\n")
    r = run(sim, "apply")
    assert r.exit_code == 13
    assert "[blocked: config: mtty is not an NVIDIA GPU" in r.stdout and sim.instances() == []


def test_h200_mig_backed_vgpu_takes_params(sim_pool):
    h200 = sim_pool.fresh("h200")
    h200.create_gpu_instance("0000:ca:00.0", "1g.18gb")  # MIG-backed types exist only inside GPU instances
    vf = ok(h200, "create", "-p", "0000:ca:00.0", "-t", "H200X-1-18C", "--param", "enable_uvm=1").stdout.strip()
    assert (h200.paths.pci_devices / vf / "nvidia" / "vgpu_params").read_text().strip() == "enable_uvm=1"
