"""mdevctl and libvirt's node devices on the real mdev core (mtty), beside vgpuctl.

* Debian's mdevctl with its udev rule (its path fixed: Debian 12's rule calls /usr/sbin/mdevctl, the binary is
  /usr/bin/mdevctl) and systemd-udevd running: an ``--auto`` definition comes back after ``rmmod``/``insmod``, and
  vgpuctl's service, converging at the same moment, neither races it nor fights it.
* ``virsh nodedev-define`` / ``nodedev-start`` of an mdev with libvirt 9.0: vgpuctl sees the device as libvirt's
  node device (``mdev_<uuid>_<parent>``) and as mdevctl-defined.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import guestlib as g

RULE = Path("/usr/lib/udev/rules.d/60-mdevctl.rules")
LOCAL_RULE = Path("/etc/udev/rules.d/60-mdevctl.rules")
DEFS = Path("/etc/mdevctl.d")
CFG = Path("/etc/vgpuctl/vgpuctl.yaml")


def mdevctl(*args, check=True):
    r = subprocess.run(["mdevctl", *args], capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


def vgpuctl(*args, uri="none", check=0):
    r = subprocess.run(["vgpuctl", "--connect", uri, *args], capture_output=True, text=True, timeout=120)
    if check is not None:
        assert r.returncode == check, (args, r.returncode, r.stdout, r.stderr)
    return r


def listed(*args, uri="none"):
    return {x["uuid"]: x for x in json.loads(vgpuctl("list", "--json", *args, uri=uri).stdout)}


def udevadm(*args):
    subprocess.run(["udevadm", *args], check=False, capture_output=True, timeout=60)


@pytest.fixture
def mdevctl_udev(libvirtd):
    """systemd-udevd running (the libvirtd fixture starts it) with mdevctl's rule, path fixed, in /etc/udev; every
    mdevctl definition and the local rule are removed at the end."""
    assert RULE.exists(), "mdevctl is not installed on the host"
    text = RULE.read_text()
    assert "/usr/sbin/mdevctl" in text or shutil.which("mdevctl") in text
    LOCAL_RULE.parent.mkdir(parents=True, exist_ok=True)
    LOCAL_RULE.write_text(text.replace("/usr/sbin/mdevctl", shutil.which("mdevctl")))
    udevadm("control", "--reload")
    try:
        yield
    finally:
        for p in DEFS.glob("*/*"):
            if p.parent.name != "scripts.d" and p.is_file():
                p.unlink()
        LOCAL_RULE.unlink()
        udevadm("control", "--reload")
        udevadm("settle", "--timeout=30")


def test_mdevctl_autostart_after_reload_and_the_service_does_not_race_it(mdevctl_udev, tmp_path):
    ua, ub = "6e2d8e4f-1c80-4d8f-9a2b-4d3e2f1a0b01", "6e2d8e4f-1c80-4d8f-9a2b-4d3e2f1a0b02"
    mdevctl("define", "-u", ua, "-p", "mtty", "-t", "mtty-1", "--auto")
    mdevctl("start", "-u", ua)
    # vgpuctl wants ua too (double-managed: it must leave it to mdevctl) and ub alone
    CFG.parent.mkdir(parents=True, exist_ok=True)
    CFG.write_text(
        f"version: 1\ninstances:\n  a: {{uuid: {ua}, type: mtty-1, parent: mtty}}\n"
        f"  b: {{uuid: {ub}, type: mtty-2, parent: mtty}}\n"
    )
    log = open(tmp_path / "service.log", "w")
    svc = subprocess.Popen(
        ["vgpuctl", "-v", "service", "--watch", "udev", "--resync-interval", "600"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, VGPUCTL_LIBVIRT_URI="none"),
    )
    try:
        g.wait_until(lambda: g.mdev_ready(ub), 60, what="the service's first converge")
        rec = listed()
        assert rec[ua]["defined_by"] == ["vgpuctl:a", "mdevctl:auto"] and not rec[ua]["owned"]
        assert rec[ub]["defined_by"] == ["vgpuctl:b"] and rec[ub]["owned"]
        for _ in range(2):  # two reloads: mdevctl's rule and the service both react every time
            g.rmmod("mtty")
            assert not g.mdev_exists(ua) and not g.mdev_exists(ub)
            t0 = time.monotonic()
            g.insmod("mtty")
            g.wait_until(lambda: g.mdev_ready(ua) and g.mdev_ready(ub), 60, what="both devices back")
            print(
                f"driver reload -> mdevctl's ...{ua[-2:]} and vgpuctl's ...{ub[-2:]} back in "
                f"{time.monotonic() - t0:.2f} s (udevd, mdevctl's rule, the service)"
            )
            udevadm("settle", "--timeout=30")
            time.sleep(1.0)
            assert sorted(g.list_mdevs()) == sorted([ua, ub])
            assert (g.mdev_type_of(ua), g.mdev_type_of(ub)) == ("mtty-1", "mtty-2")
        plan = json.loads(vgpuctl("plan", "--json").stdout)
        assert [(a["op"], a["uuid"], a["blocked"]) for a in plan["actions"]] == [("manage", ua, "foreign-managed")]
        assert not listed()[ua]["owned"]  # mdevctl made it, every time
    finally:
        svc.send_signal(signal.SIGTERM)
        try:
            svc.wait(30)
        finally:
            log.close()
            CFG.unlink()
    text = (tmp_path / "service.log").read_text()
    assert svc.returncode == 0, text[-3000:]
    assert f"+ create {ua}" not in text and "failed" not in text and "Traceback" not in text, text[-3000:]
    vgpuctl("destroy", ub)
    vgpuctl("destroy", "--foreign", "--undefine", ua)
    assert not DEFS.joinpath("mtty", ua).exists()


def test_virsh_nodedev_define_is_seen_as_libvirt_and_mdevctl_defined(libvirtd, tmp_path):
    from vgpuctl.virt import nodedev_name

    parents = g.virsh("nodedev-list", "--cap", "mdev_types", uri=libvirtd).stdout.split()
    print("libvirt parents with mdev_types:", parents)
    parent = next((p for p in parents if "mtty" in p), None)
    assert parent is not None, f"libvirt lists no mtty parent: {parents}"
    u = "7f3e9f50-2d91-4e90-8b3c-5e4f3a2b1c01"
    xml = tmp_path / "mdev.xml"
    xml.write_text(
        f"<device><parent>{parent}</parent><capability type='mdev'><type id='mtty-1'/>"
        f"<uuid>{u}</uuid></capability></device>"
    )
    g.virsh("nodedev-define", str(xml), uri=libvirtd)
    prefix = "mdev_" + u.replace("-", "_")
    names = g.virsh("nodedev-list", "--cap", "mdev", "--all", uri=libvirtd).stdout.split()
    name = next((n for n in names if n.startswith(prefix)), None)
    assert name is not None, f"libvirt lists no node device for {u}: {names}"
    print("libvirt named it", name, "; vgpuctl.virt.nodedev_name:", nodedev_name(u, "mtty"))
    try:
        defined = listed("--defined", uri=libvirtd)
        assert defined[u]["defined_by"] == ["mdevctl:manual"] and not defined[u]["active"]
        g.virsh("nodedev-start", name, uri=libvirtd)
        g.wait_until(lambda: g.mdev_ready(u), 30, what="nodedev-start to create the mdev")
        rec = listed(uri=libvirtd)[u]
        print("vgpuctl list:", {k: rec[k] for k in ("uuid", "parent", "type_id", "defined_by", "nodedev")})
        assert rec["nodedev"] == name
        assert rec["defined_by"] == ["mdevctl:manual"] and rec["nodedev_known"] is True
        r = vgpuctl("destroy", "--foreign", u, uri=libvirtd, check=None)
        assert r.returncode == 7 and "mdevctl" in r.stderr and g.mdev_exists(u)
        table = vgpuctl("list", uri=libvirtd).stdout
        assert name in table and "mdevctl:manual" in table
        g.virsh("nodedev-autostart", name, uri=libvirtd)
        assert listed(uri=libvirtd)[u]["defined_by"] == ["mdevctl:auto"]
    finally:
        g.virsh("nodedev-destroy", name, uri=libvirtd, check=False)
        g.virsh("nodedev-undefine", name, uri=libvirtd, check=False)
    assert not g.mdev_exists(u) and not any(DEFS.glob(f"*/{u}"))
