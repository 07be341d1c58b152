"""Capacity of pinned instances predicted by ``plan`` on the simulated T4 host (time-sliced: one type per GPU)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.sim


def run(root, *args):
    env = dict(os.environ, VGPUCTL_ROOT=str(root), VGPUCTL_LIBVIRT_URI="none")
    return subprocess.run([sys.executable, "-m", "vgpuctl.cli", *args], capture_output=True, text=True, env=env)


def test_two_types_pinned_to_one_t4_block_at_plan_not_at_apply(sim_factory):
    sim = sim_factory("t4x2")
    p = sim.root / "etc" / "vgpuctl" / "vgpuctl.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("version: 1\ninstances:\n  a: {type: T4-2Q, parent: 3b:00.0}\n  b: {type: T4-1Q, parent: 3b:00.0}\n")
    r = run(sim.root, "plan", "--json")
    assert r.returncode == 0, r.stderr
    acts = json.loads(r.stdout)["actions"]
    assert [(a["name"], a["blocked"]) for a in acts] == [("a", None), ("b", "type-mix")]
    r = run(sim.root, "apply", "--json")
    assert r.returncode == 13
    doc = json.loads(r.stdout)
    assert [a["outcome"] for a in doc["actions"]] == ["done", "blocked"] and len(sim.instances()) == 1
