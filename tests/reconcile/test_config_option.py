"""``plan``/``apply``/``check --config FILE``: a desired state read from files outside etc/vgpuctl, through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vgpuctl.spec import derive_uuid

pytestmark = pytest.mark.sim
VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]

ONE = "version: 1\ninstances:\n  a:\n    type: mtty-1\n    parent: mtty\n"
TWO = "version: 1\ninstances:\n  b:\n    type: mtty-1\n    parent: mtty\n"


@pytest.fixture
def host(sim_factory, tmp_path):
    sim = sim_factory("mtty")
    env = dict(os.environ, VGPUCTL_ROOT=str(sim.root), VGPUCTL_LIBVIRT_URI="none")

    def run(*args, rc=0):
        p = subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == rc, (p.returncode, p.stdout, p.stderr)
        return p

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    return sim, run, outside


def snapshot(sim):
    state = sim.paths.state_file
    return sim.instances(), state.read_bytes() if state.exists() else None


def test_plan_apply_check_a_file_outside_etc(host):
    sim, run, outside = host
    f = outside / "want.yaml"
    f.write_text(ONE)
    # the config dir asks for nothing: without --config, nothing to do
    assert json.loads(run("plan", "--json").stdout)["actions"] == []
    before = snapshot(sim)
    doc = json.loads(run("plan", "--config", str(f), "--json").stdout)
    assert [(a["op"], a["uuid"], a["name"]) for a in doc["actions"]] == [("create", derive_uuid("a"), "a")]
    assert doc["changed"] is True and doc["after"] == [
        {"uuid": derive_uuid("a"), "parent": "mtty", "type_id": "mtty-1"}
    ]
    assert snapshot(sim) == before  # plan changes nothing
    assert not (sim.paths.config_dir / "vgpuctl.yaml").exists()
    assert "+ create" in run("check", "--config", str(f), rc=13).stdout
    doc = json.loads(run("apply", "--config", str(f), "--json").stdout)
    assert doc["changed"] is True and doc["converged"] is True
    assert sim.instances() == [derive_uuid("a")]
    run("check", "--config", str(f))
    assert json.loads(run("plan", "--config", str(f), "--json").stdout)["actions"] == []
    # the installed (empty) desired state is still what the default reads: apply's device is dropped there
    assert [a["op"] for a in json.loads(run("plan", "--json").stdout)["actions"]] == ["destroy"]


def test_two_configs_merge_in_order(host):
    sim, run, outside = host
    (outside / "one.yaml").write_text(ONE)
    (outside / "two.yaml").write_text(TWO)
    # an installed file is not read when --config is given
    cfg = sim.paths.config_dir / "vgpuctl.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("version: 1\ninstances:\n  c:\n    type: mtty-2\n    parent: mtty\n")
    doc = json.loads(
        run("plan", "--config", str(outside / "two.yaml"), "--config", str(outside / "one.yaml"), "--json").stdout
    )
    assert sorted((a["op"], a["name"]) for a in doc["actions"]) == [("create", "a"), ("create", "b")]
    run("apply", "--config", str(outside / "one.yaml"), "--config", str(outside / "two.yaml"))
    assert sim.instances() == sorted([derive_uuid("a"), derive_uuid("b")])
    run("check", "--config", str(outside / "one.yaml"), "--config", str(outside / "two.yaml"))
    # the same name in two files is an error naming both
    (outside / "dup.yaml").write_text(ONE)
    p = run("plan", "--config", str(outside / "one.yaml"), "--config", str(outside / "dup.yaml"), rc=8)
    assert f"{outside / 'dup.yaml'}:3" in p.stderr and f"already defined at {outside / 'one.yaml'}:3" in p.stderr


def test_broken_config_is_exit_8_with_file_and_line(host):
    sim, run, outside = host
    bad = outside / "bad.yaml"
    bad.write_text("version: 1\ninstances:\n  a:\n    type: mtty-1\n    parent: mtty\n    colour: blue\n")
    before = snapshot(sim)
    for cmd in ("plan", "apply", "check"):
        p = run(cmd, "--config", str(bad), rc=8)
        assert f"{bad}:6" in p.stderr and "colour" in p.stderr, p.stderr
    p = run("plan", "--config", str(outside / "missing.yaml"), rc=8)
    assert f"{outside / 'missing.yaml'}" in p.stderr and "no such file" in p.stderr
    assert snapshot(sim) == before
