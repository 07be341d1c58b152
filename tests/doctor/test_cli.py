"""``vgpuctl doctor`` as a command: lines and JSON, exit codes, bad input, and a host left byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from vgpuctl.errors import HostNotReady

from .test_checks import DESIRED, T4, _desired, _state

pytestmark = pytest.mark.sim
VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]


def run(sim, *args, connect="none"):
    env = dict(os.environ, VGPUCTL_ROOT=str(sim.root), VGPUCTL_LIBVIRT_URI=connect)
    env.pop("VGPUCTL_JSON", None)
    return subprocess.run(VGPUCTL + ["doctor", *args], capture_output=True, text=True, env=env, timeout=300)


def test_json_records_and_exit_zero_with_only_warnings(t4x2):
    p = run(t4x2, "--json")
    recs = json.loads(p.stdout)
    assert p.returncode == 0, p.stderr  # libvirt off, no NVML here (warn), no service (warn): nothing fails
    assert {r["schema"] for r in recs} == {"vgpuctl.doctor/v1"}
    assert set(recs[0]) == {"schema", "check", "status", "subject", "seen", "fix"}
    assert {r["status"] for r in recs} <= {"ok", "warn", "n/a"}
    by = {(r["check"], r["subject"]): r for r in recs}
    assert by[("vgpu-manager", T4)]["status"] == "ok" and by[("mdev-bus", None)]["fix"] is None


def test_text_lines_and_exit_16_when_a_check_fails(t4x2):
    t4x2.unload_module("vfio_iommu_type1")
    p = run(t4x2)
    assert p.returncode == HostNotReady.exit_code == 16
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["STATUS", "CHECK", "SUBJECT", "SEEN", "FIX"]
    fail = next(ln for ln in lines if ln.startswith("fail"))
    assert "vfio-modules" in fail and "modprobe -a vfio_iommu_type1" in fail
    assert p.stderr.strip().splitlines() == [
        "vgpuctl: error: 1 check(s) failed: vfio-modules; each line above says what to fix"
    ]


def test_check_option_and_bad_name(t4x2):
    p = run(t4x2, "--check", "iommu", "--check", "lock", "--json")
    assert p.returncode == 0 and [r["check"] for r in json.loads(p.stdout)] == ["iommu", "lock"]
    p = run(t4x2, "--check", "bogus")
    assert p.returncode == 2 and p.stdout == "" and "bogus" in p.stderr and "Traceback" not in p.stderr


def test_root_that_is_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    p = subprocess.run(VGPUCTL + ["--root", str(f), "doctor"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == "" and len(p.stderr.splitlines()) == 1 and "not a directory" in p.stderr


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\ninstances: [\n",
        "version: 7\n",
        "\x00\xff garbage",
        "version: 1\ninstances:\n  a: {type: T4-2Q, parent: ../../etc}\n",
    ],
)
def test_broken_desired_state_is_a_fail_line_not_a_traceback(t4x2, text):
    _desired(t4x2, text)
    p = run(t4x2, "--check", "desired-state")
    assert p.returncode == 16 and "Traceback" not in p.stderr
    (line,) = p.stdout.splitlines()[1:]
    assert line.startswith("fail") and "desired-state" in line


def _snapshot(root):
    """Every path under ROOT but sys (what the simulator serves), with the bytes, mode and link target of each."""
    out = {}
    for base, dirs, files in os.walk(root):
        if base == str(root):
            dirs[:] = [d for d in dirs if d != "sys"]
        for name in sorted(dirs + files):
            p = os.path.join(base, name)
            st = os.lstat(p)
            if os.path.islink(p):
                out[p] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                out[p] = ("file", st.st_mode, hashlib.sha256(open(p, "rb").read()).hexdigest())
            else:
                out[p] = ("dir", st.st_mode)
    return out


def test_doctor_changes_nothing(t4x2):
    _desired(t4x2, DESIRED)
    u = t4x2.create(T4, "nvidia-231")
    Intent = _state(t4x2)
    _state(t4x2, pending=(Intent("create", "aaaaaaaa-0000-4000-8000-000000000001", T4, "nvidia-231"),))
    before = _snapshot(t4x2.root)
    events = t4x2.events()
    for connect in ("none", f"qemu:///system?socket={t4x2.root}/none"):
        p = run(t4x2, connect=connect)
        assert p.returncode == 16 and "Traceback" not in p.stderr  # the journal warns; libvirt or service fails
    assert t4x2.events() == events  # no write reached sysfs (the simulator logs every one)
    assert _snapshot(t4x2.root) == before
    assert t4x2.instances() == [u]
