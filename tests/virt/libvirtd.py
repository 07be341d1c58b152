"""A real libvirtd for tests, private to the test session (reusable by other stages: import ``start_libvirtd``).

PID 1 is not systemd on the CI host, so the daemon is started directly, in a private mount namespace
(``unshare -m``) with tmpfs over its run/state/cache directories and a copy of /etc/libvirt bind-mounted over the
real one, so nothing it writes reaches the host.  Its sockets live in a temporary directory outside the namespace;
clients connect with ``qemu:///system?socket=<dir>/libvirt-sock``.  Starts in well under a second; the first
domain definition waits for QEMU's capability probe (several seconds, once per session).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Iterator

import pytest

SCRIPT = """set -e
for d in /run/libvirt /var/run/libvirt /var/lib/libvirt /var/cache/libvirt; do
  mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
done
cp -a /etc/libvirt/. "$WORK/etc/" 2>/dev/null || true
rm -f "$WORK"/etc/hooks/qemu
mount --bind "$WORK/etc" /etc/libvirt
exec libvirtd -f "$WORK/libvirtd.conf" -p "$WORK/libvirtd.pid"
"""

CONF = """unix_sock_dir = "{sock}"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:{work}/libvirtd.log"
"""


@dataclass(frozen=True)
class Daemon:
    uri: str
    work: str
    pid: int


def unusable_reason() -> str:
    if shutil.which("libvirtd") is None:
        return "libvirtd is not installed (apt-get install libvirt-daemon-system)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if os.geteuid() != 0:
        return "a private libvirtd needs root (mount namespace)"
    return ""


def start_libvirtd(timeout: float = 10.0) -> Daemon:
    work = tempfile.mkdtemp(prefix="vgpuctl-libvirtd-")
    sock = os.path.join(work, "sock")
    os.makedirs(os.path.join(work, "etc"))
    os.makedirs(sock)
    with open(os.path.join(work, "libvirtd.conf"), "w") as f:
        f.write(CONF.format(sock=sock, work=work))
    log = open(os.path.join(work, "stdout.log"), "w")
    proc = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", SCRIPT],
        env={**os.environ, "WORK": work},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    path = os.path.join(sock, "libvirt-sock")
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            with open(os.path.join(work, "stdout.log")) as f:
                tail = f.read()[-2000:]
            stop_libvirtd(Daemon("", work, proc.pid))
            raise RuntimeError(f"libvirtd did not start: {tail}")
        time.sleep(0.02)
    return Daemon(f"qemu:///system?socket={path}", work, proc.pid)


def stop_libvirtd(d: Daemon) -> None:
    try:
        os.kill(d.pid, 15)
        for _ in range(100):
            pid, _status = os.waitpid(d.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.05)
        else:
            os.kill(d.pid, 9)
            os.waitpid(d.pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
    shutil.rmtree(d.work, ignore_errors=True)


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Daemon]:
    reason = unusable_reason()
    if reason:
        pytest.skip(reason)
    d = start_libvirtd()
    yield d
    stop_libvirtd(d)
