"""The desired state never destroys what ``vgpuctl create`` made, until an apply has claimed it (export, apply)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.sim
VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]


def test_create_made_devices_survive_apply_until_claimed(sim_factory):
    sim = sim_factory("mtty")
    env = dict(os.environ, VGPUCTL_ROOT=str(sim.root), VGPUCTL_LIBVIRT_URI="none")

    def run(*args):
        p = subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=env, timeout=60)
        assert p.returncode == 0, p.stderr
        return p.stdout

    u = run("create", "-p", "mtty", "-t", "mtty-1").strip()
    cfg = sim.paths.config_dir / "vgpuctl.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("version: 1\ninstances: {}\n")
    # an empty desired state: the hand-made device is not apply's to destroy
    assert json.loads(run("plan", "--json"))["actions"] == []
    run("apply")
    assert sim.instances() == [u]
    # adopt it: export, apply (claims it), then drop it from the desired state -> destroyed
    cfg.write_text(run("export"))
    doc = json.loads(run("apply", "--json"))
    assert doc["changed"] is False and doc["converged"] is True
    assert json.loads(sim.paths.state_file.read_text())["owned"][0]["origin"] == "apply"
    cfg.write_text("version: 1\ninstances: {}\n")
    assert [(a["op"], a["uuid"]) for a in json.loads(run("plan", "--json"))["actions"]] == [("destroy", u)]
    run("apply")
    assert sim.instances() == []
