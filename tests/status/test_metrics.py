"""The service's Prometheus metrics on the simulated host: scraped over HTTP on 127.0.0.1 (a free port), values
matching ``list``/``status``; the node_exporter textfile is replaced atomically (readers never see a part)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from vgpuctl.errors import InvalidInput  # noqa: E402
from vgpuctl.metrics import parse_address  # noqa: E402

VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]
CONFIG = """\
version: 1
instances:
  a: {type: T4-4Q, parent: "0000:3b:00.0"}
  b: {type: T4-4Q, parent: "0000:3b:00.0"}
  c: {type: T4-2Q, parent: "0000:d8:00.0"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_parse_address():
    assert parse_address("9835") == ("127.0.0.1", 9835)
    assert parse_address("0.0.0.0:1") == ("0.0.0.0", 1)
    assert parse_address("[::1]:9835") == ("::1", 9835)
    with pytest.raises(InvalidInput):
        parse_address("localhost:http")


@pytest.mark.sim
def test_service_metrics_over_http_and_textfile(sim_factory, tmp_path):
    sim = sim_factory("t4x2")
    (sim.root / "etc" / "vgpuctl").mkdir(parents=True)
    (sim.root / "etc" / "vgpuctl" / "vgpuctl.yaml").write_text(CONFIG)
    port = free_port()
    prom = tmp_path / "textfile" / "vgpuctl.prom"
    prom.parent.mkdir()
    env = dict(os.environ, VGPUCTL_ROOT=str(sim.root), VGPUCTL_LIBVIRT_URI="none")
    log = open(tmp_path / "service.log", "w+")
    proc = subprocess.Popen(
        VGPUCTL
        + [
            "service",
            "--watch",
            "poll",
            "--poll-interval",
            "0.05",
            "--metrics-address",
            f"127.0.0.1:{port}",
            "--metrics-textfile",
            str(prom),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        body, end = "", time.monotonic() + 60
        while time.monotonic() < end:
            try:
                body = urllib.request.urlopen(url, timeout=2).read().decode()
                if "vgpuctl_reconcile_converged 1.0" in body:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        m = samples(body)
        assert m["vgpuctl_reconcile_converged"] == [({}, 1.0)], open(log.name).read()
        assert m["vgpuctl_reconcile_runs_total"][0][1] >= 1
        assert m["vgpuctl_reconcile_last_converge_timestamp_seconds"][0][1] > time.time() - 60
        assert "vgpuctl_reconcile_duration_seconds_count" in m

        def cli(*a):
            r = subprocess.run(VGPUCTL + list(a), capture_output=True, text=True, env=env)
            assert r.returncode == 0, r.stderr
            return json.loads(r.stdout)

        listed = cli("list", "--json")
        want = {}
        for i in listed:
            key = (i["parent"], i["type_id"])
            want[key] = want.get(key, 0) + 1
        have = {(lab["parent"], lab["type"]): v for lab, v in m["vgpuctl_instances"]}
        assert have == want and all(lab["state"] == "idle" for lab, _ in m["vgpuctl_instances"])
        assert m["vgpuctl_instances_in_use"] == [({}, 0.0)]
        status = cli("status", "--json")
        cap = {(lab["gpu"], lab["type"]): v for lab, v in m["vgpuctl_capacity_remaining"]}
        assert cap == {(g["gpu"], c["type_id"]): c["left"] for g in status[:-1] for c in g["capacity"]}
        unusable = {lab["gpu"]: v for lab, v in m["vgpuctl_gpu_framebuffer_unusable_bytes"]}
        assert unusable == {g["gpu"]: g["framebuffer_unusable_mib"] * 2**20 for g in status[:-1]}
        assert m["vgpuctl_fragmentation_ratio"] == [({}, status[-1]["fragmentation"])]
        assert not any(k.startswith("vgpuctl_vgpu_") for k in m)  # no NVML on the simulated host

        # the textfile: complete at every read while the service rewrites it (host changes cause passes)
        assert prom.exists()
        seen, stop, bad = set(), threading.Event(), []

        def reader():
            while not stop.is_set():
                try:
                    text = prom.read_text()
                    seen.add(os.stat(prom).st_ino)
                except FileNotFoundError:
                    bad.append("missing")
                    continue
                if not text.endswith("\n") or "vgpuctl_reconcile_runs_total" not in text:
                    bad.append(text[-80:])

        def rewritten(before: int) -> None:
            """Wait (bounded) until the service has replaced the textfile after a host change: a new inode."""
            end = time.monotonic() + 60
            while os.stat(prom).st_ino == before:
                assert time.monotonic() < end, f"the textfile was not rewritten: {open(log.name).read()}"
                time.sleep(0.02)

        t = threading.Thread(target=reader)
        t.start()
        try:
            for _ in range(3):
                ino = os.stat(prom).st_ino
                extra = sim.create("0000:d8:00.0", "nvidia-231")
                rewritten(ino)
                ino = os.stat(prom).st_ino
                sim.remove(extra)
                rewritten(ino)
        finally:
            stop.set()
            t.join()
        assert not bad
        assert len(seen) >= 2
        assert samples(prom.read_text())["vgpuctl_reconcile_runs_total"][0][1] >= 2
        assert not [p for p in prom.parent.iterdir() if p != prom]  # no temporary files left behind
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
