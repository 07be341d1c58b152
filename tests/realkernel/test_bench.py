"""Benchmark pass on the real kernel (prints ratios; asserts only that every contender got every device back).

Issue 18's real-kernel table, in one run with systemd-udevd running (started here unless one runs; no libvirtd):

* converge 24 mtty instances from empty: one ``vgpuctl apply`` process against 24 ``mdevctl start`` processes and
  against a raw in-process loop writing ``create``;
* after ``rmmod mtty; insmod mtty.ko`` with 8 and with 24 desired instances: ``vgpuctl service --watch udev``
  against mdevctl's udev autostart (its rule's path fixed to the installed binary, as test_mdevctl.py does) and
  against a minimal resident pyudev listener that re-creates a known uuid list.  Times run from the start of insmod
  until every device has its ``mdev_type`` link; each is the median of ``REPS`` reloads.

The guest's CPU is slow (QEMU/TCG: a process start costs about 45x the host's), so compare only the ratios printed
here, within this run.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import guestlib as g

pytestmark = pytest.mark.realkernel

REPS = 3
RULE = Path("/usr/lib/udev/rules.d/60-mdevctl.rules")
LOCAL_RULE = Path("/etc/udev/rules.d/60-mdevctl.rules")
DEFS = Path("/etc/mdevctl.d")
CFG = Path("/etc/vgpuctl/vgpuctl.yaml")
ENV = dict(os.environ, VGPUCTL_LIBVIRT_URI="none")

LISTENER = r"""
import os, sys
import pyudev
parent, type_id, uuids = sys.argv[1], sys.argv[2], sys.argv[3:]
create = f"/sys/class/mdev_bus/{parent}/mdev_supported_types/{type_id}/create"
mon = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
mon.start()
print("ready", flush=True)
for dev in iter(mon.poll, None):
    if dev.action == "change" and dev.sys_name == parent and dev.properties.get("MDEV_STATE") == "registered":
        for u in uuids:
            try:
                fd = os.open(create, os.O_WRONLY)
                try:
                    os.write(fd, u.encode())
                finally:
                    os.close(fd)
            except OSError as e:
                print(u, e, flush=True)
"""


def uuids(n):
    return [f"0b3e7a10-0000-4000-8000-{i:012x}" for i in range(1, n + 1)]


def all_ready(us):
    return all(g.mdev_ready(u) for u in us)


def wait_ready(us, t0, what):
    g.wait_until(lambda: all_ready(us), 60, interval=0.01, what=what)
    return time.monotonic() - t0


def clear():
    for u in g.list_mdevs():
        g.remove_mdev(u)


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert r.returncode == 0, (cmd, r.returncode, r.stdout[-2000:], r.stderr[-2000:])


def write_config(us):
    CFG.parent.mkdir(parents=True, exist_ok=True)
    CFG.write_text(
        "version: 1\ninstances:\n"
        + "".join(f"  b{i:02d}: {{uuid: {u}, type: mtty-1, parent: mtty}}\n" for i, u in enumerate(us))
    )


def reload_mtty(us, what):
    """rmmod (every device goes), then insmod; seconds from insmod's start until all of ``us`` are back."""
    g.rmmod("mtty")
    assert not any(g.mdev_exists(u) for u in us)
    t0 = time.monotonic()
    g.insmod("mtty")
    return wait_ready(us, t0, what)


def resident(cmd, log, ready):
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        g.wait_until(lambda: proc.poll() is not None or ready(), 120, what=f"{cmd[0]} ready")
    except BaseException:
        stop(proc)
        raise
    assert proc.poll() is None, f"{cmd} exited {proc.returncode}"
    return proc


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(120)  # a loaded TCG guest: the service's shutdown can take long (test_mdevctl.py checks it)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def converge_24():
    us = uuids(24)
    out = {}
    t0 = time.monotonic()
    for u in us:
        assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", u) == 0
    out["raw"] = wait_ready(us, t0, "raw loop")
    clear()
    write_config(us)
    try:
        t0 = time.monotonic()
        run(["vgpuctl", "--connect", "none", "apply"])
        out["apply"] = wait_ready(us, t0, "vgpuctl apply")
        CFG.write_text("version: 1\ninstances: {}\n")
        run(["vgpuctl", "--connect", "none", "apply"])
    finally:
        CFG.unlink()
    clear()
    t0 = time.monotonic()
    for u in us:
        run(["mdevctl", "start", "-u", u, "-p", "mtty", "-t", "mtty-1"])
    out["mdevctl"] = wait_ready(us, t0, "mdevctl start")
    clear()
    return out


def reload_listener(us, tmp_path):
    script = tmp_path / "listener.py"
    script.write_text(LISTENER)
    log_path = tmp_path / "listener.log"
    with open(log_path, "w") as log:
        proc = resident(
            [sys.executable, str(script), "mtty", "mtty-1", *us], log, lambda: "ready" in log_path.read_text()
        )
        try:
            times = [reload_mtty(us, "pyudev listener") for _ in range(REPS)]
        finally:
            stop(proc)
    clear()
    return statistics.median(times)


def reload_service(us, tmp_path):
    write_config(us)
    try:
        with open(tmp_path / "service.log", "w") as log:
            proc = resident(
                ["vgpuctl", "service", "--watch", "udev", "--resync-interval", "600"], log, lambda: all_ready(us)
            )
            try:
                times = []
                for _ in range(REPS):
                    times.append(reload_mtty(us, "vgpuctl service"))
                    time.sleep(0.5)  # let it finish its bookkeeping before the next reload
            finally:
                stop(proc)
        CFG.write_text("version: 1\ninstances: {}\n")  # vgpuctl destroys what it made (and forgets it)
        run(["vgpuctl", "--connect", "none", "apply"])
    finally:
        CFG.unlink()
    clear()
    return statistics.median(times)


def reload_mdevctl(us):
    assert RULE.exists(), "mdevctl is not installed on the host"
    LOCAL_RULE.parent.mkdir(parents=True, exist_ok=True)
    LOCAL_RULE.write_text(RULE.read_text().replace("/usr/sbin/mdevctl", shutil.which("mdevctl")))
    subprocess.run(["udevadm", "control", "--reload"], capture_output=True, timeout=60)
    try:
        for u in us:
            run(["mdevctl", "define", "-u", u, "-p", "mtty", "-t", "mtty-1", "--auto"])
        times = []
        for _ in range(REPS):
            times.append(reload_mtty(us, "mdevctl's udev autostart"))
            subprocess.run(["udevadm", "settle", "--timeout=30"], capture_output=True, timeout=60)
    finally:
        for u in us:
            subprocess.run(["mdevctl", "undefine", "-u", u], capture_output=True, timeout=60)
        LOCAL_RULE.unlink()
        subprocess.run(["udevadm", "control", "--reload"], capture_output=True, timeout=60)
        subprocess.run(["udevadm", "settle", "--timeout=30"], capture_output=True, timeout=60)
    clear()
    return statistics.median(times)


def udevd_running():
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "systemd-udevd":
                return True
        except OSError:
            pass
    return False


@pytest.fixture
def udevd():
    """systemd-udevd for mdevctl's rule: one already running, or one started here and stopped at the end (the
    libvirtd fixture starts its own later)."""
    if udevd_running():
        yield
        return
    proc = subprocess.Popen(
        ["/lib/systemd/systemd-udevd"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, SYSTEMD_IGNORE_CHROOT="1"),
    )
    try:
        g.wait_until(lambda: proc.poll() is not None or os.path.exists("/run/udev/control"), 60, what="udevd")
        assert proc.poll() is None, f"systemd-udevd exited {proc.returncode}"
        yield
    finally:
        stop(proc)


def test_benchmark_pass(udevd, tmp_path, capsys):
    t_start = time.monotonic()

    def say(line):
        with capsys.disabled():
            print(line, flush=True)

    say(f"\nreal-kernel benchmark pass (ratios within this run; the guest is QEMU/TCG; reloads: median of {REPS})")
    say("  (converging 24: raw loop, vgpuctl apply, mdevctl start...)")
    conv = converge_24()
    say("converge 24 mtty instances from empty:")
    say(f"  raw create loop, in-process   {conv['raw']:7.3f} s")
    say(f"  vgpuctl apply (one process)   {conv['apply']:7.3f} s = {conv['apply'] / conv['raw']:6.1f}x raw")
    say(
        f"  24 x mdevctl start            {conv['mdevctl']:7.3f} s = {conv['mdevctl'] / conv['raw']:6.1f}x raw;"
        f" apply / mdevctl start = {conv['apply'] / conv['mdevctl']:.2f}"
    )
    say("rmmod mtty; insmod mtty.ko -> all N back:")
    for n in (8, 24):
        us = uuids(n)
        say(f"  (N={n}: the pyudev listener...)")
        r = {"listener": reload_listener(us, tmp_path)}
        say(f"  (N={n}: vgpuctl service...)")
        r["service"] = reload_service(us, tmp_path)
        say(f"  (N={n}: mdevctl's udev rule...)")
        r["mdevctl"] = reload_mdevctl(us)
        say(
            f"  N={n:2d}: pyudev listener {r['listener']:6.3f} s, vgpuctl service {r['service']:6.3f} s"
            f" = {r['service'] / r['listener']:.2f}x the listener, mdevctl's udev rule {r['mdevctl']:6.3f} s"
            f" = {r['mdevctl'] / r['service']:.2f}x the service"
        )
    say(f"(benchmark pass: {time.monotonic() - t_start:.0f} s)")
