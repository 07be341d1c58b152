"""Debian's real mdevctl and vgpuctl on one simulated host: define/start/list -d/undefine/modify interleaved with
vgpuctl list, adopt, plan, apply, destroy --foreign/--undefine and the service.  Nothing is fought, lost or
duplicated."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from .realtool import VGPUCTL, Mdevctl, listed, tree, unusable_reason, vgpuctl

pytestmark = [pytest.mark.sim, pytest.mark.skipif(bool(unusable_reason()), reason=unusable_reason() or "-")]

UA = "aaaaaaaa-0000-4000-8000-000000000001"
UB = "bbbbbbbb-0000-4000-8000-000000000002"
UC = "cccccccc-0000-4000-8000-000000000003"


@pytest.fixture
def host(sim_factory):
    return sim_factory("mtty")


@pytest.fixture
def md(host):
    return Mdevctl(host.root)


def configure(root, text, name="vgpuctl.yaml"):
    p = root / "etc" / "vgpuctl" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


def wait_for(pred, timeout=15.0, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def test_vgpuctl_reads_what_real_mdevctl_writes(host, md):
    md.run("define", "-u", UA, "-p", "mtty", "-t", "mtty-1", "--auto")
    md.run("define", "-u", UB, "-p", "mtty", "-t", "mtty-2")
    md.run("modify", "-u", UB, "--addattr=foo", "--value=bar")
    md.run("start", "-u", UA)
    truth = md.defined()
    seen = listed(host.root, "--defined")
    assert set(seen) == set(truth) == {UA, UB}
    for u, d in truth.items():
        r = seen[u]
        assert (r["parent"], r["type_id"], r["defined_by"]) == (d["parent"], d["mdev_type"], [f"mdevctl:{d['start']}"])
    assert seen[UA]["active"] and not seen[UB]["active"] and not seen[UA]["owned"]
    assert set(listed(host.root)) == {UA}  # without --defined: devices only, as 'mdevctl list'
    md.run("modify", "-u", UB, "--auto")
    assert listed(host.root, "--defined")[UB]["defined_by"] == ["mdevctl:auto"]
    md.run("undefine", "-u", UB)
    assert set(listed(host.root, "--defined")) == {UA}
    table = vgpuctl(host.root, "list", check=0).stdout
    assert "DEFINED_BY" in table and "mdevctl:auto" in table


def test_destroy_foreign_refuses_an_mdevctl_device_unless_undefine(host, md):
    md.run("define", "-u", UA, "-p", "mtty", "-t", "mtty-1", "--auto")
    md.run("start", "-u", UA)
    before = tree(host.root)
    r = vgpuctl(host.root, "destroy", "--foreign", UA)
    assert r.returncode == 7 and "mdevctl will bring it back at boot" in r.stderr and "--undefine" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert UA in host.instances() and tree(host.root) == before and set(md.defined()) == {UA}
    out = json.loads(vgpuctl(host.root, "destroy", "--foreign", "--undefine", "--json", UA, check=0).stdout)
    assert out["destroyed"] and out["undefined"].endswith(UA)
    assert UA not in host.instances() and md.defined() == {} and md.active() == []
    # the boot mdevctl's udev rule runs: nothing comes back
    host.reboot()
    md.run("start-parent-mdevs", "mtty", check=False)
    assert host.instances() == []
    state = json.loads((host.root / "var/lib/vgpuctl/state.json").read_text())
    assert state["pending"] == [] and state["owned"] == []


def test_destroy_undefine_of_a_definition_without_device(host, md):
    md.run("define", "-u", UB, "-p", "mtty", "-t", "mtty-1", "--auto")
    assert vgpuctl(host.root, "destroy", "--foreign", UB).returncode == 3  # no device, and no --undefine
    vgpuctl(host.root, "destroy", "--undefine", UB, check=0)
    assert md.defined() == {}


def test_adopt_moves_an_mdevctl_host_to_vgpuctl(host, md):
    for u, t in ((UA, "mtty-1"), (UB, "mtty-2")):
        md.run("define", "-u", u, "-p", "mtty", "-t", t, "--auto")
        md.run("start", "-u", u)
    md.run("start", "-u", UC, "-p", "mtty", "-t", "mtty-1")  # transient: mdevctl does not keep it
    # adopt without --undefine: desired now, but double-managed and reported
    vgpuctl(host.root, "adopt", "--from-mdevctl", check=0)
    plan = json.loads(vgpuctl(host.root, "plan", "--json", check=0).stdout)
    assert sorted((a["op"], a["uuid"], a["blocked"]) for a in plan["actions"]) == [
        ("manage", UA, "foreign-managed"),
        ("manage", UB, "foreign-managed"),
    ]
    assert vgpuctl(host.root, "check").returncode == 13
    r = vgpuctl(host.root, "apply")
    assert r.returncode == 13 and set(host.instances()) == {UA, UB, UC}
    assert set(md.defined()) == {UA, UB}
    assert listed(host.root)[UA]["defined_by"] == ["vgpuctl:mdevctl-aaaaaaaa", "mdevctl:auto"]
    # the second adopt retires mdevctl's definitions: vgpuctl alone keeps them, nothing else changes
    out = json.loads(vgpuctl(host.root, "adopt", "--from-mdevctl", "--undefine", "--json", check=0).stdout)
    assert {(a["uuid"], a["new"], bool(a["undefined"])) for a in out} == {(UA, False, True), (UB, False, True)}
    assert md.defined() == {}
    plan = json.loads(vgpuctl(host.root, "plan", "--json", check=0).stdout)
    assert plan["actions"] == [] and plan["converged"]
    vgpuctl(host.root, "check", check=0)
    assert set(host.instances()) == {UA, UB, UC} and md.active() == sorted([UA, UB, UC])
    rec = listed(host.root)
    assert rec[UA]["owned"] and rec[UA]["defined_by"] == ["vgpuctl:mdevctl-aaaaaaaa"] and not rec[UC]["owned"]
    doc = (host.root / "etc/vgpuctl/conf.d/mdevctl.yaml").read_text()
    assert doc.count("uuid:") == 2  # adopting twice duplicated nothing
    # vgpuctl keeps them across a reboot now, mdevctl's boot start finds nothing to do
    host.reboot()
    md.run("start-parent-mdevs", "mtty", check=False)
    assert host.instances() == []
    vgpuctl(host.root, "apply", check=0)
    assert set(host.instances()) == {UA, UB}
    # and re-types them when the desired state says so
    text = doc.replace('"mtty-2"', '"mtty-1"')
    configure(host.root, text, "conf.d/mdevctl.yaml")
    vgpuctl(host.root, "apply", check=0)
    assert listed(host.root)[UB]["type_id"] == "mtty-1"


def test_adopt_refuses_bad_definitions_and_changes_nothing(host, md):
    md.run("define", "-u", UA, "-p", "mtty", "-t", "mtty-1", "--auto")
    md.run("start", "-u", UA)
    md.run("define", "-u", UB, "-p", "mtty", "-t", "mtty-1", "--auto")
    md.run("modify", "-u", UB, "--addattr=foo", "--value=bar")
    before = tree(host.root)
    r = vgpuctl(host.root, "adopt", "--from-mdevctl", "--undefine")
    assert r.returncode == 2 and UB in r.stderr and "attributes" in r.stderr
    assert tree(host.root) == before
    vgpuctl(host.root, "adopt", "--from-mdevctl", "--undefine", UA, check=0)  # the others can still be named
    assert set(md.defined()) == {UB}


def test_apply_and_service_never_fight_mdevctl(host, md, tmp_path):
    configure(
        host.root,
        f"version: 1\ninstances:\n  a: {{uuid: {UA}, type: mtty-1, parent: mtty}}\n"
        f"  b: {{uuid: {UB}, type: mtty-1, parent: mtty}}\n",
    )
    vgpuctl(host.root, "apply", check=0)
    assert set(host.instances()) == {UA, UB}
    md.run("define", "-u", UA, "--auto")  # mdevctl takes over the running device's definition
    assert md.defined()[UA]["mdev_type"] == "mtty-1"
    log = open(tmp_path / "service.log", "w+")
    env = dict(os.environ, VGPUCTL_ROOT=str(host.root), VGPUCTL_LIBVIRT_URI="none", VGPUCTL_NVML="off")
    svc = subprocess.Popen(
        VGPUCTL + ["service", "--watch", "poll", "--poll-interval", "0.05", "--resync-interval", "600"],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        assert wait_for(lambda: "foreign-managed" in open(log.name).read() or "blocked" in open(log.name).read())
        # mdevctl stops it: the service does not create it again over mdevctl's definition
        md.run("stop", "-u", UA)
        time.sleep(2.5)
        assert UA not in host.instances() and UB in host.instances()
        md.run("start", "-u", UA)  # mdevctl brings it back, once
        assert host.instances().count(UA) == 1
        # vgpuctl's own instance: a driver reload brings it back through the service, mdevctl's stays mdevctl's
        host.remove(UB)
        assert wait_for(lambda: UB in host.instances())
        # dropped from the desired state: mdevctl made UA again, so it is not vgpuctl's any more, and stays
        configure(host.root, f"version: 1\ninstances:\n  b: {{uuid: {UB}, type: mtty-1, parent: mtty}}\n")
        time.sleep(2.5)
        assert UA in host.instances() and not listed(host.root)[UA]["owned"]
        md.run("undefine", "-u", UA)
        time.sleep(2.5)
        assert UA in host.instances() and listed(host.root)[UA]["defined_by"] == []
        # mdevctl takes over vgpuctl's UB: double-managed, left alone; when mdevctl lets go, vgpuctl keeps it
        md.run("define", "-u", UB, "--auto")
        host.remove(UB)  # a driver reload: only mdevctl's boot start would bring it back, vgpuctl waits
        time.sleep(2.5)
        assert UB not in host.instances()
        md.run("undefine", "-u", UB)
        assert wait_for(lambda: UB in host.instances())
        # a device mdevctl starts that vgpuctl does not own is never touched
        md.run("define", "-u", UC, "-p", "mtty", "-t", "mtty-2", "--auto")
        md.run("start", "-u", UC)
        time.sleep(2.5)
        assert UC in host.instances() and svc.poll() is None
    finally:
        svc.terminate()
        svc.wait(15)
    assert sorted(host.instances()) == sorted([UA, UB, UC])
    text = open(log.name).read()
    assert "Traceback" not in text


@pytest.mark.parametrize("case", ["corrupt", "truncated", "unknown-type", "missing-parent", "symlink"])
def test_bad_mdevctl_files_warn_once_and_change_nothing(host, md, case, tmp_path):
    md.run("define", "-u", UA, "-p", "mtty", "-t", "mtty-1", "--auto")
    md.run("start", "-u", UA)
    path = md.etc / "mtty" / UB
    if case == "corrupt":
        path.write_bytes(b"\x7fELF\x00not json")
    elif case == "truncated":
        path.write_bytes((md.etc / "mtty" / UA).read_bytes()[:20])
    elif case == "unknown-type":
        path.write_text(json.dumps({"mdev_type": "mtty-9", "start": "auto", "attrs": []}))
    elif case == "missing-parent":
        path = md.etc / "0000:99:00.0" / UB
        path.parent.mkdir()
        path.write_text(json.dumps({"mdev_type": "nvidia-231", "start": "auto", "attrs": []}))
    else:
        (tmp_path / "target").write_text(json.dumps({"mdev_type": "mtty-1", "start": "auto", "attrs": []}))
        path.symlink_to(tmp_path / "target")
    configure(
        host.root,
        f"version: 1\ninstances:\n  a: {{uuid: {UA}, type: mtty-1, parent: mtty}}\n"
        f"  b: {{uuid: {UB}, type: mtty-1, parent: mtty}}\n",
    )
    before, devices = tree(host.root), host.instances()
    for args in (("list",), ("list", "--defined"), ("plan",), ("check",), ("apply",), ("status",)):
        r = vgpuctl(host.root, *args)
        warnings = [line for line in r.stderr.splitlines() if str(path) in line]
        assert len(warnings) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr
    # mdevctl itself is not so kind to some of these; vgpuctl changed nothing in any case
    assert tree(host.root) == before and host.instances() == devices
    r = vgpuctl(host.root, "adopt", "--from-mdevctl")
    assert r.returncode in (2,) and str(path) in r.stderr and tree(host.root) == before


def test_adopt_undefine_that_fails_half_way_puts_everything_back(host, md):
    import shutil as _sh

    if _sh.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    md.run("define", "-u", UA, "-p", "mtty", "-t", "mtty-1", "--auto")
    md.run("start", "-u", UA)
    # a second parent directory mdevctl cannot change either: the immutable flag makes its unlink fail (EPERM)
    other = md.etc / "mdpy"
    other.mkdir()
    (other / UB).write_text(json.dumps({"mdev_type": "mtty-1", "start": "auto", "attrs": []}, indent=2))
    devices = [UA]
    before = tree(host.root)
    r0 = subprocess.run(["chattr", "+i", str(other)], capture_output=True, text=True)
    if r0.returncode != 0:
        pytest.skip(f"the file system has no immutable flag: {r0.stderr.strip()}")
    try:
        r = vgpuctl(host.root, "adopt", "--from-mdevctl", "--undefine", UA, UB)
    finally:
        subprocess.run(["chattr", "-i", str(other)], check=True)
    # UB's parent is not registered here, so adopt refuses it before writing anything
    assert r.returncode == 2 and "not registered" in r.stderr and tree(host.root) == before
    # now one that passes every check but cannot be undefined: UA's own directory made immutable
    subprocess.run(["chattr", "+i", str(md.etc / "mtty")], check=True)
    try:
        r = vgpuctl(host.root, "adopt", "--from-mdevctl", "--undefine", UA)
    finally:
        subprocess.run(["chattr", "-i", str(md.etc / "mtty")], check=True)
    assert r.returncode == 9 and "remove mdevctl's definition" in r.stderr, r.stderr
    after = tree(host.root)
    state = json.loads(after.pop(str(host.root / "var/lib/vgpuctl/state.json")))
    assert state["pending"] == [] and state["owned"] == []  # intent settled, ownership claim undone
    assert after == before and host.instances() == devices  # the conf.d file is gone again, mdevctl's file kept


def test_adopt_refuses_a_definition_the_desired_state_means_otherwise(host, md):
    md.run("define", "-u", UA, "-p", "mtty", "-t", "mtty-1", "--auto")
    md.run("start", "-u", UA)
    configure(host.root, f"version: 1\ninstances:\n  a: {{uuid: {UA}, type: mtty-2, parent: mtty}}\n")
    before = tree(host.root)
    r = vgpuctl(host.root, "adopt", "--from-mdevctl", "--undefine")
    assert r.returncode == 2 and "make them agree" in r.stderr and tree(host.root) == before
    configure(host.root, f"version: 1\ninstances:\n  a: {{uuid: {UA}, type: mtty-1, parent: mtty}}\n")
    out = json.loads(vgpuctl(host.root, "adopt", "--from-mdevctl", "--undefine", "--json", check=0).stdout)
    assert [(a["name"], a["new"]) for a in out] == [("a", False)]
    assert not (host.root / "etc/vgpuctl/conf.d/mdevctl.yaml").exists() and md.defined() == {}
    assert json.loads(vgpuctl(host.root, "plan", "--json", check=0).stdout)["actions"] == []
