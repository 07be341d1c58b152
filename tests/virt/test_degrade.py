"""Read-only commands when libvirt is unreachable: what sysfs knows, libvirt's part unknown, one line why.

Three ways libvirt is unreachable, each against real things:

* the default URI (``qemu:///system``) with no libvirtd on this machine (where one runs, a socket path that has
  no daemon stands in for it);
* a private real libvirtd (``tests/virt/libvirtd.py``) stopped between two commands;
* a "libvirtd" that accepts connections and never answers (a unix socket in this test): ``--libvirt-timeout``
  bounds the wait and the commands degrade the same way.

Commands run as an operator runs them, ``vgpuctl`` in a subprocess, with NVML off so that stderr holds only the
libvirt line.  What needs libvirt for its safety (destroy, attach, detach, apply's destroys and attaches) still
refuses with exit 12 and changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from .libvirtd import start_libvirtd, stop_libvirtd, unusable_reason

pytestmark = pytest.mark.sim

VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]
T4A, T4B = "0000:3b:00.0", "0000:d8:00.0"
U_OWNED = "cccccccc-0000-4000-8000-000000000001"  # made by apply: desired, domain web1
U_GONE = "cccccccc-0000-4000-8000-000000000002"  # made by apply, then dropped from the desired state
U_HAND = "cccccccc-0000-4000-8000-000000000003"  # made by 'vgpuctl create' (never apply's to destroy)
U_NEW = "cccccccc-0000-4000-8000-000000000004"  # desired later, pinned: apply may create it without libvirt
DEFAULT_SOCKETS = (
    "/run/libvirt/libvirt-sock",
    "/run/libvirt/libvirt-sock-ro",
    "/run/libvirt/virtqemud-sock",
    "/run/libvirt/virtqemud-sock-ro",
)


def desired(*, gone: bool, new: bool = False, tenant: bool = False) -> str:
    text = f"""version: 1
instances:
  web:
    uuid: "{U_OWNED}"
    type: T4-2Q
    parent: "{T4A}"
    domain: web1
"""
    if gone:
        text += f"""  old:
    uuid: "{U_GONE}"
    type: T4-2Q
    parent: "{T4A}"
"""
    if new:
        text += f"""  new:
    uuid: "{U_NEW}"
    type: T4-2Q
    parent: "{T4A}"
"""
    if tenant:
        text += """  acme:
    type: T4-2Q
    placement: {tenant: acme}
"""
    return text


def configure(sim, text: str) -> None:
    d = sim.root / "etc" / "vgpuctl"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vgpuctl.yaml").write_text(text)


def vgpuctl(sim, *args, uri=None, timeout=120, **env):
    """``uri`` None: the default URI (VGPUCTL_LIBVIRT_URI unset)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("VGPUCTL_")}
    e.update({"VGPUCTL_ROOT": str(sim.root), "VGPUCTL_NVML": "off", "VGPUCTL_LOCK_TIMEOUT": "10", **env})
    if uri is not None:
        e["VGPUCTL_LIBVIRT_URI"] = uri
    return subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=e, timeout=timeout)


def host_now(sim):
    return sorted(sim.instances()), sim.paths.state_file.read_bytes() if sim.paths.state_file.exists() else b""


def one_libvirt_line(p, *also: str) -> str:
    """stderr is the one libvirt line (plus the command's own notes ``also``), naming the cause and the fix."""
    lines = [ln for ln in p.stderr.splitlines() if not any(ln.startswith("vgpuctl: " + a) for a in also)]
    assert len(lines) == 1, p.stderr
    line = lines[0]
    assert line.startswith("vgpuctl: libvirt not used: cannot connect to libvirt at "), line
    assert "libvirtd" in line and "--connect none" in line  # the fix
    return line


@pytest.fixture
def t4(sim_factory):
    """A t4x2 host: U_OWNED and U_GONE made by apply (libvirt off), U_HAND by hand; U_GONE then undesired."""
    sim = sim_factory("t4x2")
    configure(sim, desired(gone=True).replace("    domain: web1\n", ""))
    assert vgpuctl(sim, "apply", uri="none").returncode == 0
    assert vgpuctl(sim, "create", "-p", T4B, "-t", "T4-4Q", "-u", U_HAND, uri="none").returncode == 0
    configure(sim, desired(gone=False))
    return sim


def no_daemon_uri(tmp_path) -> "str | None":
    """None (the true default URI) when no libvirtd listens at the default sockets here, else a dead socket path."""
    if not any(os.path.exists(p) for p in DEFAULT_SOCKETS):
        return None
    return f"qemu:///system?socket={tmp_path}/no-daemon/libvirt-sock"


def check_read_only_views(sim, uri, cause: str) -> None:
    """Every read-only command: exit code of the command, sysfs data, libvirt's part unknown, one line why."""
    # list: instances and process holders are known; the domains are not
    with sim.hold(U_HAND):
        p = vgpuctl(sim, "list", "--json", uri=uri)
        assert p.returncode == 0, p.stderr
        assert cause in one_libvirt_line(p)
        recs = {r["uuid"]: r for r in json.loads(p.stdout)}
        assert sorted(recs) == [U_OWNED, U_GONE, U_HAND]
        for r in recs.values():
            assert (r["domains"], r["running"]) == (None, None)
            assert cause in r["libvirt_error"]
        assert recs[U_OWNED]["owned"] is True and recs[U_HAND]["type_name"] == "GRID T4-4Q"
        assert recs[U_HAND]["used_by"] and recs[U_OWNED]["used_by"] == []  # QEMU-like holder seen in /proc
    p = vgpuctl(sim, "list", uri=uri)
    assert p.returncode == 0
    one_libvirt_line(p)
    head, *rows = p.stdout.splitlines()
    at = head.index("DOMAINS")
    assert len(rows) == 3
    for row in rows:
        assert row[at:].split()[:2] == ["?", "?"], row  # DOMAINS, RUNNING

    # parents, types, export never needed libvirt: same output as with libvirt off, and no line
    for args in (["parents", "--json"], ["types", "--json"], ["export"]):
        p, off = vgpuctl(sim, *args, uri=uri), vgpuctl(sim, *args, uri="none")
        assert (p.returncode, p.stdout, p.stderr) == (0, off.stdout, off.stderr), args

    # status: every slot, the domain of each instance unknown
    p = vgpuctl(sim, "status", "--json", uri=uri)
    assert p.returncode == 0
    one_libvirt_line(p)
    recs = json.loads(p.stdout)
    held = [i for r in recs if r["schema"] == "vgpuctl.status-gpu/v1" for i in r["instances"]]
    assert sorted(i["uuid"] for i in held) == [U_OWNED, U_GONE, U_HAND]
    assert all(i["domain"] is None for i in held) and all(cause in r["libvirt_error"] for r in recs)
    p = vgpuctl(sim, "status", uri=uri)
    assert p.returncode == 0
    assert [ln.split()[-1] for ln in p.stdout.splitlines() if U_HAND in ln] == ["?"]

    # place --explain: every GPU's verdict (no other VM's tenant or groups known)
    p = vgpuctl(sim, "place", "--type", "T4-2Q", "--explain", "--json", uri=uri)
    assert p.returncode == 0, p.stderr
    one_libvirt_line(p, "T4-2Q -> ")
    decision, *verdicts = json.loads(p.stdout)
    assert decision["placed"] and decision["parent"] == T4A and cause in decision["libvirt_error"]
    assert sorted(v["gpu"] for v in verdicts) == [T4A, T4B]
    p = vgpuctl(sim, "place", "--type", "T4-2Q", "--explain", uri=uri)
    assert p.returncode == 0 and T4A in p.stdout
    assert vgpuctl(sim, "defrag", "--plan", uri=uri).returncode == 0

    # profiles: where each could go, from sysfs and the policy
    (sim.root / "etc" / "vgpuctl" / "profiles.yaml").write_text(
        "version: 1\nprofiles:\n  small:\n    series: Q\n    framebuffer: 2G\n"
    )
    p = vgpuctl(sim, "profiles", "--json", uri=uri)
    assert p.returncode == 0, p.stderr
    one_libvirt_line(p)
    (rec,) = json.loads(p.stdout)
    assert rec["profile"] == "small" and rec["next_parent"] == T4A and cause in rec["libvirt_error"]

    # sched show / hetero show ask NVML only: exactly what they say with libvirt off
    for args in (["sched", "show"], ["hetero", "show"]):
        p, off = vgpuctl(sim, *args, uri=uri, VGPUCTL_NVML="auto"), vgpuctl(sim, *args, uri="none", VGPUCTL_NVML="auto")
        assert (p.returncode, p.stdout, p.stderr) == (off.returncode, off.stdout, off.stderr), args

    # plan: the owned, undesired U_GONE would be destroyed, but a domain might reference it: blocked, and so is
    # the attach to web1; the rest is planned as usual
    p = vgpuctl(sim, "plan", "--json", uri=uri)
    assert p.returncode == 0, p.stderr
    one_libvirt_line(p)
    doc = json.loads(p.stdout)
    assert cause in doc["libvirt_error"] and doc["converged"] is False
    assert [(a["op"], a["uuid"], a["blocked"]) for a in doc["actions"]] == [
        ("destroy", U_GONE, "libvirt-unreachable"),
        ("attach", U_OWNED, "libvirt-unreachable"),
    ]
    p = vgpuctl(sim, "plan", uri=uri)
    assert p.returncode == 0
    assert [ln.split()[:2] for ln in p.stdout.splitlines()] == [["-", "destroy"], ["~", "attach"]]
    assert all("[blocked: libvirt-unreachable: libvirt unreachable" in ln for ln in p.stdout.splitlines())

    # check: the destroy is a difference it can judge (13); the attach alone is not (0, converged unknown)
    p = vgpuctl(sim, "check", uri=uri)
    assert p.returncode == 13
    one_libvirt_line(p, "error: the host does not match the desired state")
    configure(sim, desired(gone=True))
    p = vgpuctl(sim, "check", "--json", uri=uri)
    assert p.returncode == 0, p.stderr
    one_libvirt_line(p)
    doc = json.loads(p.stdout)
    assert doc["converged"] is None and [a["op"] for a in doc["actions"]] == ["attach"]
    configure(sim, desired(gone=False))


def check_changes_refused(sim, uri, cause: str) -> None:
    """What needs libvirt for its safety refuses with exit 12 and changes nothing; a safe create still works."""
    before = host_now(sim)
    for args in (
        ["destroy", U_GONE],
        ["destroy", U_HAND, "--foreign"],
        ["attach", "web1", "--uuid", U_OWNED, "--config"],
        ["detach", "web1"],
        ["create", "--type", "T4-2Q", "--tenant", "acme"],
    ):
        p = vgpuctl(sim, *args, uri=uri)
        assert p.returncode == 12, (args, p.stderr)
        assert p.stdout == "" and len(p.stderr.splitlines()) == 1 and cause in p.stderr, args
        assert host_now(sim) == before, args

    # apply: the pinned create of U_NEW is safe and done; the destroy, the attach and the tenant's placement wait
    configure(sim, desired(gone=False, new=True, tenant=True))
    p = vgpuctl(sim, "apply", "--json", uri=uri)
    assert p.returncode == 12, p.stderr
    doc = json.loads(p.stdout)
    assert cause in doc["libvirt_error"]
    assert sorted(
        (a["op"], a["uuid"] if a["op"] != "create" or a["blocked"] is None else "", a["outcome"])
        for a in doc["actions"]
    ) == [
        ("attach", U_OWNED, "blocked"),
        ("create", "", "blocked"),
        ("create", U_NEW, "done"),
        ("destroy", U_GONE, "blocked"),
    ]
    assert sorted(sim.instances()) == sorted([U_OWNED, U_GONE, U_HAND, U_NEW])

    # a create that needs no libvirt: pinned, or placed without tenant and domain
    p = vgpuctl(sim, "create", "-p", T4A, "-t", "T4-2Q", uri=uri)
    assert p.returncode == 0, p.stderr
    p = vgpuctl(sim, "create", "-t", "T4-2Q", "--json", uri=uri)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["parent"] == T4A
    assert len(sim.instances()) == 6


def test_default_uri_without_libvirtd(t4, tmp_path):
    uri = no_daemon_uri(tmp_path)
    cause = "Failed to connect socket"
    check_read_only_views(t4, uri, cause)
    check_changes_refused(t4, uri, cause)


@pytest.fixture
def silent_libvirtd(tmp_path):
    """A unix socket that accepts every connection and never answers (a wedged libvirtd); its URI."""
    path = str(tmp_path / "wedged-sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)
    held = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"qemu:///system?socket={path}"
    stop.set()
    t.join()
    for c in held:
        c.close()
    srv.close()


def test_libvirtd_that_never_answers(t4, silent_libvirtd):
    """The bounded wait (``--libvirt-timeout`` / VGPUCTL_LIBVIRT_TIMEOUT) gives the same degradation, no hang."""
    cause = "no answer within 1 s"
    p = vgpuctl(t4, "--libvirt-timeout", "1", "list", "--json", uri=silent_libvirtd)
    assert p.returncode == 0 and cause in one_libvirt_line(p)
    assert {r["domains"] for r in json.loads(p.stdout)} == {None}
    env = {"VGPUCTL_LIBVIRT_TIMEOUT": "1"}
    for args in (["status"], ["place", "--type", "T4-2Q", "--explain"], ["plan"]):
        p = vgpuctl(t4, *args, uri=silent_libvirtd, **env)
        assert p.returncode == 0, (args, p.stderr)
        assert cause in one_libvirt_line(p, "T4-2Q -> ", "0 action(s) to run")
    before = host_now(t4)
    for args in (["destroy", U_GONE], ["attach", "web1", "--uuid", U_OWNED, "--config"]):
        p = vgpuctl(t4, *args, uri=silent_libvirtd, **env)
        assert p.returncode == 12 and cause in p.stderr, (args, p.stderr)
        assert host_now(t4) == before


def test_reachability_says_why(silent_libvirtd, tmp_path):
    """``virt.reachability`` (what ``vgpuctl doctor`` asks): never raises, says the kind and the reason."""
    from vgpuctl.virt import reachability

    r = reachability(f"qemu:///system?socket={tmp_path}/none", timeout=5)
    assert not r and r.kind == "libvirt-connect" and "Failed to connect socket" in r.reason
    r = reachability(silent_libvirtd, timeout=0.5)
    assert not r and r.kind == "libvirt-timeout" and "no answer within 0.5 s" in r.reason
    # the first worker still waits on the silent socket: a second call does not start another one
    r = reachability(silent_libvirtd, timeout=30)
    assert not r and r.kind == "libvirt-timeout" and "still waiting" in r.reason
    assert not reachability("none") and reachability("none").kind == "libvirt-off"


SKELETON = """<domain type='qemu'><name>{name}</name><memory>131072</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""


@pytest.mark.libvirtd
def test_private_libvirtd_stopped_between_commands(t4):
    reason = unusable_reason()
    if reason:
        pytest.skip(reason)
    from vgpuctl.virt import Virt, reachability

    d = start_libvirtd()
    try:
        with Virt.open(d.uri) as v:
            v.conn.defineXML(SKELETON.format(name="web1"))
        r = reachability(d.uri)
        assert r and r.hypervisor == "QEMU" and r.version
        p = vgpuctl(t4, "attach", "web1", "--uuid", U_OWNED, "--config", uri=d.uri)
        assert p.returncode == 0, p.stderr
        p = vgpuctl(t4, "list", "--json", uri=d.uri)
        assert p.returncode == 0 and p.stderr == ""
        recs = {r["uuid"]: r for r in json.loads(p.stdout)}
        assert recs[U_OWNED]["domains"] == ["web1"] and "libvirt_error" not in recs[U_OWNED]
        assert json.loads(vgpuctl(t4, "check", "--json", uri=d.uri).stdout)["actions"][0]["op"] == "destroy"
        # a change already connected when the daemon wedges: keepalive closes the connection, the call fails
        code = (
            "import os, signal, sys\nfrom vgpuctl.virt import Virt\nfrom vgpuctl.errors import LibvirtError\n"
            f"v = Virt.open({d.uri!r}, timeout=2)\nos.kill({d.pid}, signal.SIGSTOP)\n"
            "try:\n    v.snapshot()\nexcept LibvirtError as e:\n    print(e.exit_code, e)\n"
        )
        try:
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        finally:
            os.kill(d.pid, signal.SIGCONT)
        assert out.stdout.startswith("12 ") and "keepalive" in out.stdout, out.stderr
        # the real daemon wedged (SIGSTOP: the kernel still accepts connections, nothing answers): bounded, degraded
        os.kill(d.pid, signal.SIGSTOP)
        try:
            p = vgpuctl(t4, "--libvirt-timeout", "1", "list", "--json", uri=d.uri)
            assert p.returncode == 0 and "no answer within 1 s" in one_libvirt_line(p)
            assert {r["domains"] for r in json.loads(p.stdout)} == {None}
            p = vgpuctl(t4, "--libvirt-timeout", "1", "destroy", U_GONE, uri=d.uri)
            assert p.returncode == 12 and U_GONE in t4.instances()
        finally:
            os.kill(d.pid, signal.SIGCONT)
        p = vgpuctl(t4, "list", "--json", uri=d.uri)
        assert p.returncode == 0 and p.stderr == ""
        assert {r["uuid"]: r for r in json.loads(p.stdout)}[U_OWNED]["domains"] == ["web1"]
    finally:
        stop_libvirtd(d)
    assert not reachability(d.uri)
    cause = "Failed to connect socket"
    check_read_only_views(t4, d.uri, cause)
    check_changes_refused(t4, d.uri, cause)
