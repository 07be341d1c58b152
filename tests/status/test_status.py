"""``vgpuctl status`` golden files (text and JSON) for a half-full simulated mixed host (two T4, four A16 GPUs), and
the picture's rules on in-memory hosts (domains, colour, fragmentation).

``VGPUCTL_REGEN_GOLDEN=1`` rewrites the golden files; a missing one fails (tests/golden.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from golden import assert_golden
from vgpuctl.model import Instance, sorted_inventory
from vgpuctl.policy import Policy, parse_policy
from vgpuctl.status import BLOCKED, RESTRICTED, USED, host_status, records, render_text

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "placement"))
from placement_hosts import a16_gpu, t4  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "status"
VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]

#: (uuid suffix, parent given to create, type)
HALF_FULL = [
    (1, "0000:3b:00.0", "T4-4Q"),
    (2, "0000:3b:00.0", "T4-4Q"),
    (3, "0000:d8:00.0", "T4-2Q"),
    (4, "0000:86:00.0", "A16-4Q"),
    (5, "0000:86:00.0", "A16-4Q"),
    (6, "0000:87:00.0", "A16-1Q"),
    (7, "0000:87:00.0", "A16-1Q"),
    (8, "0000:87:00.0", "A16-1Q"),
]


def golden(name: str, text: str) -> None:
    assert_golden(GOLDEN / name, text)


def run(root, *args):
    env = dict(os.environ, VGPUCTL_ROOT=str(root), VGPUCTL_LIBVIRT_URI="none", NO_COLOR="")
    r = subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=env)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout


@pytest.mark.sim
def test_golden_half_full_mixed_host(sim_factory):
    sim = sim_factory("mixed")
    for n, parent, vtype in HALF_FULL:
        run(sim.root, "create", "--parent", parent, "--type", vtype, "--uuid", f"5e5e5e5e-0000-4000-8000-{n:012d}")
    text = run(sim.root, "status")
    assert "\x1b[" not in text  # no colour when stdout is not a terminal
    golden("mixed-half-full.txt", text)
    doc = json.loads(run(sim.root, "status", "--json"))
    golden("mixed-half-full.json", json.dumps(doc, indent=2) + "\n")
    host = doc[-1]
    assert host["instances"] == len(HALF_FULL) and host["gpus"] == 6 and host["gpus_empty"] == 2
    listed = json.loads(run(sim.root, "list", "--json"))
    per_gpu = {g["gpu"]: {i["uuid"] for i in g["instances"]} for g in doc[:-1]}
    assert set().union(*per_gpu.values()) == {i["uuid"] for i in listed}


def _inv(instances=()):
    ps, ts = [], []
    for parts in (t4("0000:3b:00.0"), a16_gpu("0000:86:00.0", vfs=16)):
        ps += parts[0]
        ts += parts[1]
    return sorted_inventory(ps, ts, instances)


def test_slots_domains_and_fragmentation():
    u1, u2 = "11111111-0000-4000-8000-000000000001", "11111111-0000-4000-8000-000000000002"
    inv = _inv([Instance(u1, "0000:3b:00.0", "nvidia-231"), Instance(u2, "0000:86:00.4", "nvidia-703")])
    st = host_status(inv, Policy(), domains={u1: "web1"})
    t4g, a16 = st.gpus
    assert [s.state for s in t4g.slots].count(USED) == 2 and t4g.count(RESTRICTED) == 14
    assert t4g.holders[0].domain == "web1" and a16.holders[0].domain is None
    assert a16.count(USED) == 1 and a16.count(RESTRICTED) == 3 and a16.count(BLOCKED) == 12
    assert {c.profile: c.left for c in t4g.capacity}["T4-2Q"] == 7
    assert t4g.unusable_mib == 14336 and a16.unusable_mib == 12288
    assert st.fragmentation == 1.0
    text = render_text(st)
    assert "web1" in text and "\x1b[" not in text
    assert "\x1b[" in render_text(st, colour=True)
    # the policy allows only 2Q on the T4: the largest allowed profile is then T4-2Q, which 7 more fit
    policy = parse_policy("version: 1\ndefault: {types: [T4-2Q, A16-4Q]}\n")
    st = host_status(inv, policy)
    assert st.gpus[0].largest == "T4-2Q" and st.gpus[0].unusable_mib == 0
    assert [c.profile for c in st.gpus[0].capacity] == ["T4-2Q"]


def test_empty_host_records():
    st = host_status(_inv(), Policy())
    recs = records(st)
    assert [r["schema"] for r in recs] == ["vgpuctl.status-gpu/v1"] * 2 + ["vgpuctl.status-host/v1"]
    assert recs[0]["slots_free"] == 16 and recs[-1]["fragmentation"] == 0.0
