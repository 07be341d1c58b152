#!/usr/bin/env python3
"""The simulator's cost per inventory: FUSE requests (by operation) and wall time that one reader causes.

Serves the simulator in this process with a counting ``SimFS`` (the daemon's own class, every operation counted
before it runs) and runs, each against a converged 128-instance mtty host and a t4x2 host with 8 vGPUs:
``vgpuctl list --json``, ``vgpuctl check`` and ``mdevctl list --dumpjson`` (under ``unshare -m`` with the simulated
sys over /sys).  Prints the requests each one caused (the first time, and per run after that) and its median wall time, against the same command on a plain
directory copy of the same tree (no FUSE: the floor the simulator can approach).  Needs root and /dev/fuse.

    sudo .venv/bin/python bench/sim_roundtrips.py [--runs N]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import mfusepy

from vgpuctl.sim import fs as simfs
from vgpuctl.sim.daemon import _dirs
from vgpuctl.sim.machine import CONTROL_DIR, Dir, File, Link, Machine
from vgpuctl.sim.profile import load_profile

HERE = Path(__file__).resolve().parent
VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]
OPS = (
    "getattr",
    "readlink",
    "readdir",
    "open",
    "read",
    "write",
    "truncate",
    "opendir",
    "releasedir",
    "release",
    "access",
    "statfs",
)


class CountingFS(simfs.SimFS):
    counts: "collections.Counter[str]" = collections.Counter()


def _counted(name):
    base = getattr(simfs.SimFS, name, None)
    if base is None or getattr(base, "libfuse_ignore", False):
        return None

    def op(self, *args, **kwargs):
        self.counts[name] += 1
        return base(self, *args, **kwargs)

    op.__name__ = name
    return op


for _name in OPS:
    _f = _counted(_name)
    if _f is not None:
        setattr(CountingFS, _name, _f)


def serve(machine: Machine, mnt: Path) -> threading.Thread:
    fs = CountingFS(machine)
    th = threading.Thread(
        target=lambda: mfusepy.FUSE(
            fs,
            str(mnt),
            raw_fi=True,
            foreground=True,
            allow_other=True,
            fsname="vgpusim",
            subtype="vgpusim",
            max_threads=simfs.MAX_THREADS,
        ),
        daemon=True,
    )
    th.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if (mnt / CONTROL_DIR / "pid").read_text().strip():
                return th
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"simulator did not mount {mnt}")


def plain_copy(machine: Machine, dest: Path) -> None:
    for path, node in sorted(machine.tree.items()):
        if path == "/" or path.startswith(f"/{CONTROL_DIR}"):
            continue
        p = dest / path.lstrip("/")
        if isinstance(node, Dir):
            p.mkdir(parents=True, exist_ok=True)
        elif isinstance(node, File):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(node.content if node.mode & 0o444 else b"")
        else:
            assert isinstance(node, Link)
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(node.target, p)


def run(cmd, env) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"{cmd}: rc {r.returncode}: {r.stderr.strip()[-300:]}")
    return dt


def mdevctl_cmd(root: Path):
    return ["unshare", "-m", "sh", "-c", f"mount --bind {root}/sys /sys && exec mdevctl list --dumpjson"]


def host(profile, root: Path, instances, config: str, runs: int) -> None:
    prof = load_profile(profile)
    _dirs(root, prof)
    (root / "etc" / "vgpuctl").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "vgpuctl" / "vgpuctl.yaml").write_text(config)
    machine = Machine(prof, dev_vfio=str(root / "dev" / "vfio"), pid=os.getpid())
    for parent, type_id, u in instances:
        machine.create(parent, type_id, u.encode())
    mnt = root / "sys"
    serve(machine, mnt)
    plain = root.parent / (root.name + "-plain")
    _dirs(plain)
    plain_copy(machine, plain / "sys")
    shutil.copytree(root / "etc" / "vgpuctl", plain / "etc" / "vgpuctl", dirs_exist_ok=True)
    shutil.copytree(root / "dev" / "vfio", plain / "dev" / "vfio", dirs_exist_ok=True)
    cmds = [
        ("vgpuctl list --json", lambda r: VGPUCTL + ["list", "--json"]),
        ("vgpuctl check", lambda r: VGPUCTL + ["check"]),
    ]
    if shutil.which("mdevctl") and shutil.which("unshare"):
        cmds.append(("mdevctl list --dumpjson", mdevctl_cmd))
    print(f"{prof.name}, {len(instances)} instances; median of {runs} runs (FUSE requests per run)")
    try:
        for label, make in cmds:
            CountingFS.counts.clear()
            env = dict(os.environ, VGPUCTL_ROOT=str(root), VGPUCTL_LIBVIRT_URI="none")
            run(make(root), env)  # the first run after the host came up
            counts = dict(CountingFS.counts)
            CountingFS.counts.clear()
            fuse_t = [run(make(root), env) for _ in range(runs)]
            again = sum(CountingFS.counts.values()) / runs
            penv = dict(env, VGPUCTL_ROOT=str(plain))
            plain_t = [run(make(plain), penv) for _ in range(runs)]
            f, p = statistics.median(fuse_t), statistics.median(plain_t)
            total = sum(counts.values())
            mix = " ".join(f"{k}={v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
            print(f"  {label:26s} {total:6d} requests the first time ({mix}), {again:.0f} per run after")
            print(f"  {'':26s} FUSE {f * 1000:7.1f} ms, plain copy {p * 1000:7.1f} ms: FUSE / plain = {f / p:.2f}x")
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vgpuctl-simrt-"))
    try:
        uu = [str(uuid.UUID(int=i + 1)) for i in range(128)]
        cfg = "version: 1\ninstances:\n" + "".join(
            f"  i{i:03d}: {{type: mtty-1, parent: mtty, uuid: {u}}}\n" for i, u in enumerate(uu)
        )
        host(HERE / "mtty256.yaml", tmp / "mtty", [("mtty", "mtty-1", u) for u in uu], cfg, args.runs)
        t4 = [str(uuid.UUID(int=0x1000 + i)) for i in range(8)]
        inst = [("0000:3b:00.0" if i < 4 else "0000:d8:00.0", "nvidia-231", u) for i, u in enumerate(t4)]
        cfg = "version: 1\ninstances:\n" + "".join(
            f"  v{i}: {{type: nvidia-231, parent: '{p}', uuid: {u}}}\n" for i, (p, _, u) in enumerate(inst)
        )
        host("t4x2", tmp / "t4x2", inst, cfg, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
