"""vgpuctl itself on the real kernel: the CLI against true mdev sysfs, a real libvirtd and a running QEMU.

The same commands the simulated-host tests run (tests/cli/test_core.py), with the root at ``/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import guestlib as g

pytestmark = pytest.mark.realkernel


def vgpuctl(*args, uri="none", timeout=120):
    env = dict(os.environ, VGPUCTL_LIBVIRT_URI=uri, VGPUCTL_LOCK_TIMEOUT="30")
    return subprocess.run(["vgpuctl", *args], capture_output=True, text=True, env=env, timeout=timeout)


def ok(*args, **kw):
    p = vgpuctl(*args, **kw)
    assert p.returncode == 0, (args, p.returncode, p.stderr)
    return p.stdout


def refused(code, *args, **kw):
    p = vgpuctl(*args, **kw)
    assert p.returncode == code, (args, p.returncode, p.stderr)
    assert p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p.stderr


def test_inventory_and_errors_on_the_sample_drivers():
    parents = {r["parent"]: r for r in json.loads(ok("parents", "--json"))}
    assert {"mtty", "mdpy", "mbochs"} <= set(parents)
    assert parents["mtty"]["pci"] is False and parents["mtty"]["gpu"] == "mtty"
    types = {(r["parent"], r["type_id"]): r for r in json.loads(ok("types", "--json"))}
    assert types[("mtty", "mtty-1")]["available"] == 24 and types[("mtty", "mtty-2")]["available"] == 12
    assert types[("mtty", "mtty-1")]["description"] == ""  # mtty has no description file
    # uppercase uuid accepted, stored lowercase; a duplicate on any parent is exit 5
    u = "8e1b1a7c-4f0e-4c2a-9d7e-2b6f9c0a1b2c"
    ok("create", "-p", "MTTY", "-t", "mtty-2", "-u", u.upper())
    assert g.mdev_exists(u) and g.available("mtty", "mtty-1") == 22  # the shared pool counts down together
    refused(5, "create", "-p", "mdpy", "-t", "mdpy-vga", "-u", u)
    refused(2, "create", "-p", "../mtty", "-t", "mtty-1")
    refused(3, "create", "-p", "mtty", "-t", "mtty-9")
    # mdpy counts in the mdev core: once its 4 are taken the kernel has no more (exit 4, nothing written)
    for _ in range(4):
        ok("create", "-p", "mdpy", "-t", "mdpy-vga")
    before = g.list_mdevs()
    refused(4, "create", "-p", "mdpy", "-t", "mdpy-vga")
    assert g.list_mdevs() == before
    recs = json.loads(ok("list", "--json"))
    assert len(recs) == 5 and all(r["owned"] for r in recs)
    for r in recs:
        ok("destroy", r["uuid"])
    assert g.list_mdevs() == []


def test_a_running_vm_keeps_its_device(libvirtd, domains):
    """create -> a real QEMU domain holds it -> list shows it in use -> destroy refuses (and does not hang) ->
    the domain stops -> its definition still references it (refused) -> --force -> gone."""
    uuid = ok("create", "-p", "mtty", "-t", "mtty-1").strip()
    dom = domains.run(uuid)
    (rec,) = [r for r in json.loads(ok("list", "--json", uri=libvirtd)) if r["uuid"] == uuid]
    assert rec["domains"] == [dom.name] and rec["running"] is True
    assert any(f"pid {dom.pid} " in who for who in rec["used_by"]), rec["used_by"]
    t0 = time.monotonic()
    msg = refused(6, "destroy", uuid, uri=libvirtd)
    assert time.monotonic() - t0 < 60 and str(dom.pid) in msg  # checked before writing remove, which would block
    refused(6, "destroy", "--force", uuid, uri=libvirtd)  # --force never overrides a running holder
    assert g.mdev_exists(uuid) and dom.state() == "running"
    dom.destroy()
    g.wait_until(lambda: not g.mdev_holders(uuid), 30, what="QEMU to let go")
    refused(6, "destroy", uuid, uri=libvirtd)  # the shut-off domain's definition still references it
    ok("destroy", "--force", uuid, uri=libvirtd)
    assert not g.mdev_exists(uuid)


def test_live_attach_and_a_detach_the_guest_ignores(libvirtd, domains):
    """Hot-plug through vgpuctl; a guest with no OS never acknowledges the unplug, so QEMU keeps the device after
    'detach' returns: vgpuctl must then refuse to destroy it rather than block on remove."""
    first = ok("create", "-p", "mtty", "-t", "mtty-1").strip()
    dom = domains.run(first)
    out = json.loads(ok("attach", dom.name, "-p", "mtty", "-t", "mtty-1", "--live", "--json", uri=libvirtd))
    second = out["uuid"]
    g.wait_until(lambda: g.mdev_holders(second), 60, what="QEMU to open the hot-plugged device")
    assert second in g.live_mdevs(dom)
    ok("detach", dom.name, "--uuid", second, "--live", uri=libvirtd, timeout=180)
    if g.mdev_holders(second):
        refused(6, "destroy", second, uri=libvirtd)
    dom.destroy()
    g.wait_until(lambda: not g.mdev_holders(second), 30, what="QEMU to let go")
    ok("destroy", "--force", second, uri=libvirtd)
    assert not g.mdev_exists(second)


def test_service_rebuilds_after_a_driver_reload(tmp_path):
    """The reconciling service, driven by real uevents, brings the declared mtty devices back after
    ``rmmod mtty`` / ``insmod mtty.ko``, with the same uuids."""
    cfg = Path("/etc/vgpuctl/vgpuctl.yaml")
    cfg.parent.mkdir(parents=True, exist_ok=True)
    u1, u2 = "5d1c7d3e-0b7f-4c7e-8f1a-3c2d1e0f9a01", "5d1c7d3e-0b7f-4c7e-8f1a-3c2d1e0f9a02"
    cfg.write_text(
        "version: 1\ninstances:\n"
        f"  a: {{uuid: {u1}, type: mtty-1, parent: mtty}}\n"
        f"  b: {{uuid: {u2}, type: mtty-2, parent: mtty}}\n"
    )
    env = dict(os.environ, VGPUCTL_LIBVIRT_URI="none")
    log = open(tmp_path / "service.log", "w")
    svc = subprocess.Popen(
        ["vgpuctl", "-v", "service", "--watch", "udev", "--resync-interval", "600"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        g.wait_until(lambda: g.mdev_ready(u1) and g.mdev_ready(u2), 60, what="the service's first converge")
        g.rmmod("mtty")
        assert not g.mdev_exists(u1)
        t0 = time.monotonic()
        g.insmod("mtty")
        g.wait_until(lambda: g.mdev_ready(u1) and g.mdev_ready(u2), 60, what="the devices to come back")
        print(f"driver reload -> both devices back in {time.monotonic() - t0:.2f} s (service, kernel uevents)")
        assert (g.mdev_type_of(u1), g.mdev_type_of(u2)) == ("mtty-1", "mtty-2")
    finally:
        svc.send_signal(signal.SIGTERM)
        try:
            svc.wait(30)
        finally:
            log.close()
            cfg.unlink()
    assert svc.returncode == 0, (tmp_path / "service.log").read_text()[-3000:]
    for u in (u1, u2):
        ok("destroy", u)
