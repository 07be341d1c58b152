"""The core commands as an operator runs them: ``vgpuctl`` in a subprocess against the simulated host.

Every refusal is checked for its exit code, a one-line message on stderr, nothing on stdout, and an unchanged host
and state file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgpuctl.errors import EXIT_CODES

pytestmark = pytest.mark.sim

T4 = "0000:3b:00.0"
T4B = "0000:d8:00.0"
U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
U2 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"
VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]


@pytest.fixture
def sim(sim_pool):
    """The session's t4x2 simulator, reset to an empty host with no vgpuctl files before each test."""
    return sim_pool.fresh("t4x2")


def run(sim, *args, env=None, timeout=60):
    e = dict(os.environ, VGPUCTL_ROOT=str(sim.root), VGPUCTL_LIBVIRT_URI="none", VGPUCTL_LOCK_TIMEOUT="10")
    e.update(env or {})
    return subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=e, timeout=timeout)


def ok(sim, *args, **kw):
    p = run(sim, *args, **kw)
    assert p.returncode == 0, p.stderr
    return p


def snapshot(sim):
    """What a refused command must leave untouched: devices, capacity, vgpuctl's state file."""
    avail = {}
    for parent in sorted(os.listdir(sim.paths.mdev_bus)):
        for t in sorted(os.listdir(sim.parent_dir(parent) / "mdev_supported_types")):
            avail[(parent, t)] = sim.available(parent, t)
    empty = {"schema": "vgpuctl.state/v1", "owned": [], "pending": []}
    try:
        state = json.loads(sim.paths.state_file.read_text())
    except FileNotFoundError:
        state = empty  # no file and an empty one mean the same
    except ValueError:
        state = sim.paths.state_file.read_bytes()  # a corrupt file must stay byte for byte
    return sim.instances(), avail, state


def refused(sim, code, *args):
    before = snapshot(sim)
    p = run(sim, *args)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vgpuctl: error: "), p.stderr
    assert snapshot(sim) == before
    return lines[0]


# --- inventory ------------------------------------------------------------------------------------------------------
def test_parents_table_and_json(sim):
    p = ok(sim, "parents")
    header, *rows = p.stdout.splitlines()
    assert header.split()[:3] == ["PARENT", "BACKEND", "VENDOR"]
    assert [r.split()[0] for r in rows] == [T4, T4B]
    recs = json.loads(ok(sim, "parents", "--json").stdout)
    assert {r["schema"] for r in recs} == {"vgpuctl.parent/v1"}
    assert [(r["parent"], r["vendor_id"], r["device_id"], r["numa_node"], r["driver"]) for r in recs] == [
        (T4, "0x10de", "0x1eb8", 0, "nvidia"),
        (T4B, "0x10de", "0x1eb8", 1, "nvidia"),
    ]


def test_types_parsed_from_descriptions(sim):
    recs = json.loads(ok(sim, "types", "--parent", "0000:3B:00.0", "--json").stdout)
    assert {r["parent"] for r in recs} == {T4}
    q2 = next(r for r in recs if r["name"].endswith("T4-2Q"))
    assert (q2["framebuffer_mib"], q2["max_instance"], q2["available"], q2["series"], q2["num_heads"]) == (
        2048,
        8,
        8,
        "Q",
        4,
    )
    assert {r["series"] for r in recs} >= {"Q", "B", "A", "C"}


def test_json_from_environment(sim):
    p = ok(sim, "list", env={"VGPUCTL_JSON": "1"})
    assert json.loads(p.stdout) == []


# --- create / list / destroy ----------------------------------------------------------------------------------------
def test_create_list_destroy_round_trip(sim):
    u = ok(sim, "create", "--parent", T4, "--type", "T4-2Q").stdout.strip()
    assert sim.instances() == [u]
    assert sim.available(T4, "nvidia-231") == 7
    (rec,) = json.loads(ok(sim, "list", "--json").stdout)
    assert (rec["schema"], rec["uuid"], rec["parent"], rec["type_id"], rec["owned"], rec["used_by"]) == (
        "vgpuctl.instance/v1",
        u,
        T4,
        "nvidia-231",
        True,
        [],
    )
    assert rec["iommu_group"] == sim.group_of(u)
    state = json.loads(sim.paths.state_file.read_text())
    assert [o["uuid"] for o in state["owned"]] == [u] and state["pending"] == []
    assert ok(sim, "destroy", u).stdout == ""
    assert sim.instances() == []
    assert json.loads(sim.paths.state_file.read_text())["owned"] == []


def test_create_json_is_the_list_record(sim):
    """create --json names the type (from the inventory read under the lock), as list --json does."""
    rec = json.loads(ok(sim, "create", "-p", T4, "-t", "T4-2Q", "--uuid", U1, "--json").stdout)
    assert rec["type_name"] == "GRID T4-2Q"
    (listed,) = json.loads(ok(sim, "list", "--json").stdout)
    assert rec == listed
    ok(sim, "destroy", U1)


def test_uppercase_uuid_is_stored_lowercase(sim):
    p = ok(sim, "create", "-p", T4, "-t", "nvidia-231", "--uuid", U1.upper(), "--json")
    assert json.loads(p.stdout)["uuid"] == U1
    assert sim.instances() == [U1]
    ok(sim, "destroy", U1.upper())
    assert sim.instances() == []


@pytest.mark.parametrize("bad", ["not-a-uuid", U1[:-1], U1 + "0", U1.replace("-", "")])
def test_malformed_uuid(sim, bad):
    refused(sim, 2, "create", "-p", T4, "-t", "nvidia-231", "--uuid", bad)
    refused(sim, 2, "destroy", bad)


@pytest.mark.parametrize("bad", ["../0000:3b:00.0", "0000:3b:00.0/..", "..", "a/b", "/sys/class/mdev_bus/x"])
def test_parent_names_that_are_paths(sim, bad):
    msg = refused(sim, 2, "create", "-p", bad, "-t", "nvidia-231")
    assert "PCI address" in msg


def test_unknown_parent_and_type(sim):
    msg = refused(sim, 3, "create", "-p", "0000:99:00.0", "-t", "nvidia-231")
    assert T4 in msg  # names the parents that exist
    msg = refused(sim, 3, "create", "-p", T4, "-t", "nvidia-999")
    assert "nvidia-231" in msg  # names the types that exist there
    refused(sim, 3, "types", "--parent", "mtty")
    refused(sim, 3, "destroy", U1)


def test_zero_capacity(sim):
    ok(sim, "create", "-p", T4, "-t", "T4-8Q")
    ok(sim, "create", "-p", T4, "-t", "T4-8Q")
    msg = refused(sim, 4, "create", "-p", T4, "-t", "T4-8Q")
    assert "nvidia-233" in msg and T4 in msg
    # NVIDIA time-sliced: one type per GPU, so another type has no capacity there either
    refused(sim, 4, "create", "-p", T4, "-t", "T4-2Q")


def test_duplicate_uuid_on_any_parent(sim):
    ok(sim, "create", "-p", T4, "-t", "T4-2Q", "-u", U1)
    msg = refused(sim, 5, "create", "-p", T4B, "-t", "T4-2Q", "-u", U1)
    assert T4 in msg


def test_kernel_errnos_map_to_exit_codes(sim):
    """Errors that only the kernel can report (the check passed, the write failed) map to typed errors."""
    for err, code in [("ENODEV", 10), ("EEXIST", 5), ("ENOSPC", 4), ("EUSERS", 4), ("EINVAL", 9), ("EIO", 9)]:
        sim.fail_next("create", err)
        msg = refused(sim, code, "create", "-p", T4, "-t", "T4-2Q", "-u", U1)
        if err == "EIO":
            assert "EIO" in msg and "create" in msg  # the path and errno are in the message
        if err == "EINVAL":  # the uuid was checked by vgpuctl: the driver refused the type, the uuid is not to blame
            assert "not a UUID" not in msg and "refused" in msg and T4 in msg


def test_parent_disappears_between_check_and_write(sim):
    """The parent is unregistered after vgpuctl's checks: its write finds the type gone (ENOENT) -> exit 10."""
    sim.fail_next("create", "ENODEV")
    refused(sim, 10, "create", "-p", T4, "-t", "T4-2Q")
    sim.unregister(T4)
    try:
        refused(sim, 3, "create", "-p", T4, "-t", "T4-2Q")
    finally:
        sim.register(T4)


def test_destroy_refuses_foreign_devices(sim):
    sim.create(T4, "nvidia-231", U1)  # made by someone else
    (rec,) = json.loads(ok(sim, "list", "--json").stdout)
    assert rec["owned"] is False
    refused(sim, 7, "destroy", U1)
    ok(sim, "destroy", "--foreign", U1)
    assert sim.instances() == []


def test_destroy_refuses_a_held_device(sim):
    u = ok(sim, "create", "-p", T4, "-t", "T4-2Q").stdout.strip()
    with sim.hold(u):
        (rec,) = json.loads(ok(sim, "list", "--json").stdout)
        assert rec["used_by"] == [f"pid {os.getpid()} ({Path('/proc/self/comm').read_text().strip()})"]
        # refused up front, not after a blocked remove: a write to any remove would consume this pending fault
        # (the simulator lists pending faults in its fail_next file), so no clock is needed to tell
        sim.fail_next("remove", "EIO")
        msg = refused(sim, 6, "destroy", u)
        assert f"pid {os.getpid()}" in msg
        refused(sim, 6, "destroy", "--foreign", u)
        assert (sim.control_dir / "fail_next").read_text() == "remove EIO\n"
        sim.clear_failures()
    ok(sim, "destroy", u)


@pytest.mark.parametrize("content, why", [("{not json", "corrupt"), ('{"schema": "x"}', "corrupt")])
def test_corrupt_state_file(sim, content, why):
    sim.paths.state_dir.mkdir(parents=True, exist_ok=True)
    sim.paths.state_file.write_text(content)
    msg = refused(sim, 8, "create", "-p", T4, "-t", "T4-2Q")
    assert why in msg and str(sim.paths.state_file) in msg
    refused(sim, 8, "list")


def test_world_writable_state_file(sim):
    ok(sim, "create", "-p", T4, "-t", "T4-2Q", "-u", U1)
    os.chmod(sim.paths.state_file, 0o666)
    try:
        assert "world-writable" in refused(sim, 8, "destroy", U1)
        refused(sim, 8, "create", "-p", T4, "-t", "T4-2Q", "-u", U2)
    finally:
        os.chmod(sim.paths.state_file, 0o644)


def test_interrupted_create_is_adopted_by_the_next_run(sim):
    """A run killed after its intent was journalled and the kernel made the device: the next run owns it."""
    sim.paths.state_dir.mkdir(parents=True, exist_ok=True)
    sim.paths.state_file.write_text(
        json.dumps(
            {
                "schema": "vgpuctl.state/v1",
                "owned": [],
                "pending": [
                    {"op": "create", "uuid": U1, "parent": T4, "type_id": "nvidia-231", "backend": "mdev"},
                    {"op": "create", "uuid": U2, "parent": T4, "type_id": "nvidia-231", "backend": "mdev"},
                ],
            }
        )
    )
    sim.create(T4, "nvidia-231", U1)  # U1 reached the kernel, U2 did not
    ok(sim, "destroy", U1)  # no --foreign needed: recovered as owned
    state = json.loads(sim.paths.state_file.read_text())
    assert state == {"schema": "vgpuctl.state/v1", "owned": [], "pending": []}


def test_racing_creates_for_the_last_slot(sim):
    """Two creates race for the last 8Q slot, several rounds: exactly one wins each time."""
    for _round in range(3):
        sim.reboot()
        ok(sim, "create", "-p", T4, "-t", "T4-8Q")
        e = dict(os.environ, VGPUCTL_ROOT=str(sim.root), VGPUCTL_LIBVIRT_URI="none")
        procs = [
            subprocess.Popen(
                VGPUCTL + ["create", "-p", T4, "-t", "T4-8Q"],
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        codes = sorted(p.wait(timeout=60) for p in procs)
        assert codes == [0, 4], [p.stderr.read() for p in procs]
        assert len(sim.instances()) == 2
        assert sim.available(T4, "nvidia-233") == 0


def test_exit_codes_are_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "exit-codes.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in doc
