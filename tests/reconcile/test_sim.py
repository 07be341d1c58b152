"""The desired state on the simulated host, through the CLI: apply/plan/check/export, reboot, driver reload,
config edits, crash safety (kill -9 of apply at seeded random points), and the service under a real NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.sim

VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]

CONFIG = """\
version: 1
instances:
  a: {type: mtty-1, parent: mtty}
  b: {type: Dual port serial, parent: mtty}
  c: {type: mtty-1, parent: mtty, uuid: 83B8F4F2-509F-382F-3C1E-E6BFE0FA1001}
"""


def run(root, *args, check=None):
    env = dict(os.environ, VGPUCTL_ROOT=str(root), VGPUCTL_LIBVIRT_URI="none")
    r = subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=env)
    if check is not None:
        assert r.returncode == check, (args, r.returncode, r.stdout, r.stderr)
    return r


def configure(root: Path, text: str = CONFIG, name: str = "vgpuctl.yaml") -> None:
    p = root / "etc" / "vgpuctl" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


def desired_uuids(root) -> set:
    doc = json.loads(run(root, "plan", "--json", check=0).stdout)
    return {a["uuid"] for a in doc["actions"]} | {i["uuid"] for i in doc["before"]}


def wait_for(pred, timeout=60.0, step=0.05):
    # generous: a bound on a wait for an event, never a speed check (under two xdist workers on a loaded 2-core
    # machine a service pass after a simulated reboot took over 10 s)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


@pytest.fixture
def host(sim_factory):
    sim = sim_factory("mtty")
    configure(sim.root)
    return sim


def test_plan_apply_check_export(host):
    root = host.root
    assert run(root, "check").returncode == 13
    p = json.loads(run(root, "plan", "--json", check=0).stdout)
    assert p["changed"] and not p["converged"] and [a["op"] for a in p["actions"]] == ["create"] * 3
    assert host.instances() == []  # plan changes nothing
    a = json.loads(run(root, "apply", "--json", check=0).stdout)
    assert a["changed"] and a["converged"] and len(a["after"]) == 3
    assert {i["uuid"] for i in a["after"]} == {x["uuid"] for x in p["actions"]}
    assert "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001" in host.instances()
    assert run(root, "plan", check=0).stdout == ""
    again = json.loads(run(root, "apply", "--json", check=0).stdout)
    assert not again["changed"] and again["converged"]
    run(root, "check", check=0)
    # export round-trips: the exported file as the only config is converged too
    exported = run(root, "export", check=0).stdout
    configure(root, exported)
    run(root, "check", check=0)


def test_foreign_and_in_use_are_left_alone(host):
    root = host.root
    run(root, "apply", check=0)
    foreign = host.create("mtty", "mtty-1")
    configure(root, "version: 1\ninstances:\n  a: {type: mtty-1, parent: mtty}\n")
    a_uuid = json.loads(run(root, "plan", "--json").stdout)["before"]
    victims = [i["uuid"] for i in a_uuid if i["owned"] and i["uuid"] != foreign]
    b_or_c = [u for u in victims if u in host.instances()]
    with host.hold(b_or_c[0]):
        r = run(root, "apply", "--json")
        assert r.returncode == 13
        doc = json.loads(r.stdout)
        blocked = [x for x in doc["actions"] if x["blocked"]]
        assert [(x["op"], x["uuid"], x["blocked"]) for x in blocked] == [("destroy", b_or_c[0], "in-use")]
        assert b_or_c[0] in host.instances() and foreign in host.instances()
    run(root, "apply", check=0)
    assert foreign in host.instances() and b_or_c[0] not in host.instances()


def test_invalid_config_touches_nothing(host):
    configure(host.root, CONFIG + "  d: {type: mtty-9, parent: mtty}\n")
    r = run(host.root, "apply")
    assert r.returncode == 8 and "instances.d.type" in r.stderr and ":6:" in r.stderr
    assert host.instances() == []


def test_kill9_apply_at_random_points_never_leaks(host):
    """Kill apply at >= 100 seeded random moments; each next run converges and every device is known."""
    root = host.root
    rng = random.Random(20240611)
    configs = [
        CONFIG,
        "version: 1\ninstances:\n  x: {type: mtty-2, parent: mtty}\n  c: {type: mtty-2, parent: mtty,"
        " uuid: 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001}\n",
    ]
    from vgpuctl.commands._common import Settings
    from vgpuctl.commands.reconcile import build_reconciler

    settings = Settings(root=str(root), connect="none")

    def apply_in_child() -> int:
        """fork: the child runs a whole apply (already imported), the parent gets its pid."""
        pid = os.fork()
        if pid == 0:
            try:
                rec = build_reconciler(settings)
                rec.apply(rec.desired())
            finally:
                os._exit(0)
        return pid

    # how long one converge takes here, to spread the kills over it
    t0 = time.monotonic()
    os.waitpid(apply_in_child(), 0)
    span = max(time.monotonic() - t0, 0.01)
    for u in host.instances():
        host.remove(u)
    kills = n = 0
    while kills < 100 and n < 200:  # until 100 kills landed inside an apply (seeded, so the same every run)
        n += 1
        configure(root, configs[n % 2])
        pid = apply_in_child()
        time.sleep(rng.uniform(0.0, span * 0.8))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        kills += os.WIFSIGNALED(status)
        if n % 10 == 0 or kills >= 100:
            run(root, "apply", check=0)
            state = json.loads((root / "var" / "lib" / "vgpuctl" / "state.json").read_text())
            owned = {o["uuid"] for o in state["owned"]}
            assert state["pending"] == []
            assert set(host.instances()) == owned == set(desired_uuids(root))
    assert kills >= 100


def test_kill9_right_after_every_journal_write(host):
    """Deterministic: crash right after the k-th durable state save or the k-th sysfs write, for every k of a full
    converge (a batch journals all its intents in one save, then writes them back to back)."""
    from vgpuctl.apply import Reconciler
    from vgpuctl.lifecycle import Lifecycle
    from vgpuctl.host import Host
    from vgpuctl.paths import HostPaths

    class Crash(BaseException):
        pass

    root = host.root
    k = 0
    kinds = []
    while True:
        k += 1
        lc = Lifecycle(Host(HostPaths.from_root(root)))
        events = {"n": 0, "kinds": []}

        def after(kind, events=events, k=k):
            events["n"] += 1
            events["kinds"].append(kind)
            if events["n"] == k:
                raise Crash()

        def wrap(fn, kind):
            def inner(*a, **kw):
                out = fn(*a, **kw)
                after(kind)
                return out

            return inner

        lc.store.save = wrap(lc.store.save, "save")
        lc.host.write_create = wrap(lc.host.write_create, "write")
        lc.host.write_remove = wrap(lc.host.write_remove, "write")
        rec = Reconciler(lc)
        try:
            rec.apply(rec.desired())
            kinds = events["kinds"]
            break
        except Crash:
            pass
        # the next ordinary run settles and converges
        rec2 = Reconciler(Lifecycle(Host(HostPaths.from_root(root))))
        res = rec2.apply(rec2.desired())
        assert res.converged
        st = rec2.store.load()
        assert set(st.owned) == set(host.instances()) and st.pending == ()
        for u in host.instances():  # start over from empty
            host.remove(u)
        rec2.store.save(type(st)())
    # the batch's intents in one save, a crash point after each of the 3 creates, the outcome in one save
    assert kinds == ["save", "write", "write", "write", "save"] and k == len(kinds) + 1


def read_notify(sock, timeout):
    sock.settimeout(timeout)
    try:
        return sock.recv(4096).decode()
    except socket.timeout:
        return None


@pytest.fixture
def service(host, tmp_path):
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    env = dict(
        os.environ, VGPUCTL_ROOT=str(host.root), VGPUCTL_LIBVIRT_URI="none", NOTIFY_SOCKET=addr, WATCHDOG_USEC="400000"
    )
    log = open(tmp_path / "service.log", "w+")
    proc = subprocess.Popen(
        VGPUCTL + ["service", "--watch", "poll", "--poll-interval", "0.05"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    messages = []

    def until(pred, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = read_notify(sock, max(0.01, end - time.monotonic()))
            if m is None:
                break
            messages.append(m)
            if pred(m):
                return m
        return None

    proc.until, proc.messages, proc.logfile = until, messages, log
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    sock.close()


def test_service_ready_status_and_recreates_after_reboot_reload_and_edit(host, service):
    root = host.root
    assert service.until(lambda m: "READY=1" in m)
    ready = [m for m in service.messages if "READY=1" in m][0]
    assert "STATUS=3/3 desired instances present, converged" in ready
    uuids = set(host.instances())
    assert len(uuids) == 3
    assert service.until(lambda m: "WATCHDOG=1" in m, timeout=2)

    host.reboot()  # the simulator comes back empty
    assert wait_for(lambda: set(host.instances()) == uuids)

    host.unregister("mtty")
    assert wait_for(lambda: "waiting for parent mtty" in open(service.logfile.name).read())
    host.register("mtty")
    assert wait_for(lambda: set(host.instances()) == uuids)
    run(root, "check", check=0)

    configure(root, CONFIG + "  d: {type: mtty-2, parent: mtty}\n")
    assert wait_for(lambda: len(host.instances()) == 4)
    run(root, "check", check=0)

    configure(root, CONFIG + "  d: {type: nope, parent: mtty\n")  # broken: keeps the last good state
    time.sleep(0.3)
    assert len(host.instances()) == 4 and service.poll() is None

    service.send_signal(signal.SIGHUP)
    assert service.until(lambda m: "RELOADING=1" in m, timeout=5)
    service.send_signal(signal.SIGTERM)
    assert service.wait(10) == 0
    assert service.until(lambda m: "STOPPING=1" in m, timeout=2)
    text = open(service.logfile.name).read()
    assert "+ create" in text and "invalid configuration, keeping the previous desired state" in text


def test_service_never_waits_on_a_notify_socket_nobody_reads(host, tmp_path):
    """sd_notify is fire-and-forget: with $NOTIFY_SOCKET's queue full (a manager that does not read), the service
    drops the message instead of blocking in sendto, and keeps converging."""
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)  # never read: the queue holds net.unix.max_dgram_qlen datagrams, then fills
    env = dict(
        os.environ, VGPUCTL_ROOT=str(host.root), VGPUCTL_LIBVIRT_URI="none", NOTIFY_SOCKET=addr, WATCHDOG_USEC="100000"
    )  # WATCHDOG=1 every 50 ms
    log = open(tmp_path / "service.log", "w+")
    proc = subprocess.Popen(
        VGPUCTL + ["service", "--watch", "poll", "--poll-interval", "0.05"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        assert wait_for(lambda: len(host.instances()) == 3, timeout=30), open(log.name).read()
        time.sleep(2.0)  # far more datagrams than the queue holds
        configure(host.root, CONFIG + "  d: {type: mtty-2, parent: mtty}\n")
        assert wait_for(lambda: len(host.instances()) == 4, timeout=30), open(log.name).read()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
        sock.close()
