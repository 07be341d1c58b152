"""doctor's libvirt and qemu checks against real libvirt: a private libvirtd with QEMU (ok), the test driver (reachable,
no QEMU), no socket, and a socket that accepts and never answers (bounded: a fail line, never a hang)."""

from __future__ import annotations

import socket
import time

import pytest

from vgpuctl.doctor import Context, Status, run_checks
from vgpuctl.paths import HostPaths


def doctor(tmp_path, uri, timeout=5.0):
    return {
        r.check: r
        for r in run_checks(
            Context(paths=HostPaths.from_root(tmp_path), connect=uri, timeout=timeout), ["libvirt", "qemu"]
        )
    }


@pytest.mark.libvirtd
def test_real_libvirtd_with_qemu(libvirtd, tmp_path):
    r = doctor(tmp_path, libvirtd.uri, timeout=60)  # the first domain-capabilities read probes QEMU (seconds)
    assert r["libvirt"].status is Status.OK and "libvirt 9." in r["libvirt"].seen
    assert r["qemu"].status is Status.OK and "qemu-system-x86_64" in r["qemu"].seen


def test_reachable_but_no_qemu(tmp_path):
    r = doctor(tmp_path, "test:///default")
    assert r["libvirt"].status is Status.OK
    assert r["qemu"].status is Status.FAIL and "qemu-system-x86" in r["qemu"].fix


def test_no_libvirtd(tmp_path):
    r = doctor(tmp_path, f"qemu:///system?socket={tmp_path}/nothing-here")
    assert r["libvirt"].status is Status.FAIL and "No such file" in r["libvirt"].seen
    assert "systemctl enable --now libvirtd" in r["libvirt"].fix
    assert r["qemu"].status is Status.NA


def test_libvirtd_that_never_answers_is_bounded(tmp_path):
    path = str(tmp_path / "silent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)  # connections complete in the backlog; nothing ever reads or answers
    try:
        t0 = time.monotonic()
        r = doctor(tmp_path, f"qemu:///system?socket={path}", timeout=1.0)
        took = time.monotonic() - t0
    finally:
        srv.close()
    assert r["libvirt"].status is Status.FAIL and "no answer within 1 s" in r["libvirt"].seen
    assert r["libvirt"].fix == "systemctl restart libvirtd"
    assert took < 30, took  # bounded: one timeout, not libvirt's own wait for ever


def test_libvirt_off(tmp_path):
    r = doctor(tmp_path, "none")
    assert r["libvirt"].status is Status.NA and r["qemu"].status is Status.NA
