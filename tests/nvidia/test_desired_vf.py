"""Desired instances on NVIDIA vendor-VFIO parents: named by their VF (no uuid), through the CLI against the l40s
simulator (``--connect none --nvml off``: NVML plays no part in naming)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vgpuctl.cli import cli

pytestmark = pytest.mark.sim
GPU, VF0, VF1 = "0000:41:00.0", "0000:41:00.4", "0000:41:00.5"
Q8, C8 = "nvidia-1107", "nvidia-1121"  # L40S-8Q, L40S-8C: one size, so they may share the GPU


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


def config_path(sim):
    p = sim.root / "etc" / "vgpuctl" / "vgpuctl.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def configure(sim, body):
    config_path(sim).write_text("version: 1\ninstances:\n" + body)


def one(name, type_, parent, extra=""):
    return f'  {name}:\n{extra}    type: {type_}\n    parent: "{parent}"\n'


def listed(sim):
    return {r["uuid"]: r["type_id"] for r in json.loads(ok(sim, "list", "--json").stdout)}


def owned(sim):
    return json.loads(sim.paths.state_file.read_text())["owned"]


def test_vf_instance_is_created_and_converges(host):
    configure(host, one("a", "L40S-8Q", VF0))
    (a,) = json.loads(ok(host, "plan", "--json").stdout)["actions"]
    assert (a["op"], a["uuid"], a["parent"], a["type_id"], a["blocked"]) == ("create", VF0, VF0, Q8, None)
    assert run(host, "check").exit_code == 13
    ok(host, "apply")
    assert listed(host) == {VF0: Q8}
    assert ok(host, "plan").stdout == "" and run(host, "check").exit_code == 0
    assert json.loads(ok(host, "apply", "--json").stdout)["changed"] is False
    assert VF0 in str(owned(host))


def test_changing_the_type_retypes_the_vf(host):
    configure(host, one("a", "L40S-8Q", VF0))
    ok(host, "apply")
    configure(host, one("a", "L40S-8C", VF0))
    assert ok(host, "plan").stdout == (
        f"- destroy {VF0} {Q8} on {VF0} (a; desired with another type or parent)\n"
        f"+ create {VF0} {C8} on {VF0} (a; desired)\n"
    )
    doc = json.loads(ok(host, "apply", "--json").stdout)
    assert [(x["op"], x["type_id"], x["outcome"]) for x in doc["actions"]] == [
        ("destroy", Q8, "done"),
        ("create", C8, "done"),
    ]
    assert doc["converged"] and listed(host) == {VF0: C8}
    assert run(host, "check").exit_code == 0


def test_dropping_it_destroys_it(host):
    configure(host, one("a", "L40S-8Q", VF0) + one("b", "L40S-8Q", VF1))
    ok(host, "apply")
    assert listed(host) == {VF0: Q8, VF1: Q8}
    configure(host, one("b", "L40S-8Q", VF1))
    assert ok(host, "plan").stdout == f"- destroy {VF0} {Q8} on {VF0} (not in the desired state)\n"
    ok(host, "apply")
    assert listed(host) == {VF1: Q8} and run(host, "check").exit_code == 0


def test_export_round_trip_adopts_a_hand_made_vf(host):
    assert ok(host, "create", "-p", VF1, "-t", "L40S-8Q").stdout.strip() == VF1  # origin create
    configure(host, "")
    assert ok(host, "plan").stdout == ""  # not apply's: a desired state without it keeps it
    text = ok(host, "export").stdout
    assert "uuid" not in text and f'parent: "{VF1}"' in text and "vgpu-0000-41-00.5:" in text
    config_path(host).write_text(text)
    assert ok(host, "plan").stdout == "" and run(host, "check").exit_code == 0
    ok(host, "apply")  # claims it: dropping it later destroys it
    assert ok(host, "export").stdout == text
    configure(host, "")
    assert ok(host, "plan").stdout == f"- destroy {VF1} {Q8} on {VF1} (not in the desired state)\n"


def test_foreign_vf_with_another_type_is_not_touched(host):
    ok(host, "create", "-p", VF0, "-t", "L40S-8C")
    host.paths.state_file.unlink()  # made by someone else
    configure(host, one("a", "L40S-8Q", VF0))
    r = ok(host, "plan")
    assert "destroy" not in r.stdout and "[blocked: foreign: " in r.stdout


def test_uuid_on_a_vf_instance_is_a_config_error(host):
    configure(host, one("a", "L40S-8Q", VF0, extra="    uuid: 0f4c1e9a-0000-4000-8000-000000000001\n"))
    for cmd in ("plan", "apply"):
        r = run(host, cmd)
        assert r.exit_code == 8
        assert (
            f"{config_path(host)}:4: instances.a.uuid: a vGPU on NVIDIA vendor-VFIO VF {VF0} is named by the "
            "VF's address" in r.stderr
        )
    assert listed(host) == {}
    r = run(host, "check")
    assert r.exit_code == 13 and "[blocked: config: " in r.stdout


def test_two_instances_on_one_vf_is_a_config_error(host):
    configure(host, one("a", "L40S-8Q", VF0) + one("b", "L40S-8Q", VF0))
    r = run(host, "plan")
    assert r.exit_code == 8 and ":8: instances.b.parent: VF 0000:41:00.4 holds one vGPU" in r.stderr


def test_physical_gpu_as_parent_names_the_vf_to_pin(host):
    ok(host, "create", "-p", VF0, "-t", "L40S-8Q")
    configure(host, one("a", "L40S-8Q", GPU))
    r = run(host, "plan")
    assert r.exit_code == 8
    assert f":5: instances.a.parent: {GPU} is an NVIDIA GPU whose vGPUs live on its SR-IOV VFs" in r.stderr
    assert f'the lowest free VF offering L40S-8Q is "{VF1}"' in r.stderr
    r = run(host, "check")
    assert r.exit_code == 13 and "[blocked: config: " in r.stdout


def test_placement_on_vendor_vfio_asks_for_a_vf(host):
    configure(host, "  a:\n    type: L40S-8Q\n    placement: {}\n")
    r = run(host, "plan")
    assert r.exit_code == 8 and ":5: instances.a.placement: only NVIDIA vendor-VFIO VFs offer type L40S-8Q" in r.stderr
    r = run(host, "check")
    assert r.exit_code == 13 and "[blocked: config: placement chose NVIDIA vendor-VFIO VF" in r.stdout
