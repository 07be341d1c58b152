"""Profiles through the CLI on the simulated T4 and A16 hosts: the right type per model, tenant limits, profiles'
listing, and ``profile:`` in the desired state applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.sim

VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]
PROFILES = """\
version: 1
profiles:
  gold:
    series: Q
    framebuffer: 4G
    display: true
    limits: {per_tenant: 2}
  silver:
    type: [T4-2Q, A16-2Q]
"""


def run(root, *args, check=None):
    env = dict(os.environ, VGPUCTL_ROOT=str(root), VGPUCTL_LIBVIRT_URI="none")
    r = subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=env)
    if check is not None:
        assert r.returncode == check, (args, r.returncode, r.stdout, r.stderr)
    return r


def configure(root, name, text):
    p = root / "etc" / "vgpuctl" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.mark.parametrize("profile,gold,silver", [("t4x2", "T4-4Q", "T4-2Q"), ("a16", "A16-4Q", "A16-2Q")])
def test_profiles_resolve_per_model_and_limits_refuse(sim_factory, profile, gold, silver):
    sim = sim_factory(profile)
    configure(sim.root, "profiles.yaml", PROFILES)
    listed = {r["profile"]: r for r in json.loads(run(sim.root, "profiles", "--json", check=0).stdout)}
    assert listed["gold"]["type_names"] == [gold] and listed["silver"]["type_names"] == [silver]
    assert listed["gold"]["gpus_now"] and listed["gold"]["next_parent"]
    made = []
    for _ in range(2):
        rec = json.loads(run(sim.root, "create", "--profile", "gold", "--tenant", "acme", "--json", check=0).stdout)
        made.append(rec["uuid"])
        assert rec["type_name"] is None or rec["type_name"].endswith(gold)
    insts = {i["uuid"]: i for i in json.loads(run(sim.root, "list", "--json", check=0).stdout)}
    assert all(insts[u]["type_name"].endswith(gold) for u in made)
    r = run(sim.root, "create", "--profile", "gold", "--tenant", "acme", check=4)
    assert "acme already holds 2 of at most 2" in r.stderr and "profiles.yaml:3" in r.stderr
    run(sim.root, "create", "--profile", "gold", "--tenant", "other", check=0)  # the limit is per tenant
    run(sim.root, "create", "--profile", "gold", check=2)  # a limited profile needs a tenant
    run(sim.root, "create", "--profile", "nope", check=3)
    run(sim.root, "create", "--profile", "gold", "--type", gold, check=2)
    # destroying one frees the tenant's slot (assignments of vanished instances do not count)
    run(sim.root, "destroy", made[0], check=0)
    run(sim.root, "create", "--profile", "gold", "--tenant", "acme", check=0)
    s = json.loads(run(sim.root, "create", "--profile", "silver", "--json", check=0).stdout)
    assert insts.get(s["uuid"]) is None and s["type_id"]


def test_desired_state_profile_applies(sim_factory):
    sim = sim_factory("t4x2")
    configure(sim.root, "profiles.yaml", PROFILES)
    configure(
        sim.root,
        "vgpuctl.yaml",
        "version: 1\ninstances:\n"
        "  vdi-1: {profile: gold, placement: {tenant: acme}}\n"
        "  vdi-2: {profile: silver, parent: '0000:d8:00.0'}\n",
    )
    doc = json.loads(run(sim.root, "apply", "--json", check=0).stdout)
    assert doc["converged"] and {a["type_id"] for a in doc["actions"]} == {"nvidia-232", "nvidia-231"}
    run(sim.root, "check", check=0)
    configure(sim.root, "vgpuctl.yaml", "version: 1\ninstances:\n  x: {profile: platinum, parent: '0000:d8:00.0'}\n")
    r = run(sim.root, "plan", check=8)
    assert "vgpuctl.yaml:3: instances.x.profile: unknown profile 'platinum'" in r.stderr
