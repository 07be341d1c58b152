#!/usr/bin/env python3
"""Benchmarks of the desired state on the simulated host (one run, ratios printed).  Needs root and FUSE.

1. Converge 128 instances from empty: ``vgpuctl apply`` against the raw floor (one Python loop writing 128 uuids
   into ``create``) and against 128 ``mdevctl start`` processes (mdevctl has no root option: it runs under
   ``unshare -m`` with the simulated ROOT/sys bind-mounted over /sys and a tmpfs over /etc/mdevctl.d).
2. ``vgpuctl check`` on the converged 128-instance host against ``vgpuctl list`` (medians of 5 runs).
3. The service's reaction time: the parent unregistered and registered again -> all 128 instances back.
   The simulator sends no uevents, so the service runs with ``--watch poll --poll-interval 0.05``; on a real host
   it reacts to the kernel's ``change MDEV_STATE=registered`` uevent instead (see docs/service.md).

    sudo .venv/bin/python bench/converge.py [N]
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from vgpuctl.sim import SimHost

HERE = Path(__file__).resolve().parent
VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]
N = int(sys.argv[1]) if len(sys.argv) > 1 else 128


def env_for(root: Path) -> dict:
    return dict(os.environ, VGPUCTL_ROOT=str(root), VGPUCTL_LIBVIRT_URI="none")


def timed(cmd, env, check=True) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if check and r.returncode != 0:
        raise SystemExit(f"{cmd}: rc {r.returncode}: {r.stderr}")
    return dt


def clear(sim: SimHost) -> None:
    for u in sim.instances():
        sim.remove(u)
    state = sim.root / "var" / "lib" / "vgpuctl" / "state.json"
    if state.exists():
        state.unlink()


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="vgpuctl-bench-"))
    root = tmp / "root"
    uuids = [str(uuid.UUID(int=i + 1)) for i in range(N)]
    cfg = root / "etc" / "vgpuctl" / "vgpuctl.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        "version: 1\ninstances:\n"
        + "".join(f"  i{i:03d}: {{type: mtty-1, parent: mtty, uuid: {u}}}\n" for i, u in enumerate(uuids))
    )
    env = env_for(root)
    with SimHost(HERE / "mtty256.yaml", root) as sim:
        create = sim.type_dir("mtty", "mtty-1") / "create"
        # 1a. raw floor
        t0 = time.perf_counter()
        for u in uuids:
            fd = os.open(create, os.O_WRONLY)
            os.write(fd, u.encode())
            os.close(fd)
        raw = time.perf_counter() - t0
        assert len(sim.instances()) == N
        clear(sim)
        # 1b. vgpuctl apply (a whole process: start-up, read, plan, 128 journalled creates, verify)
        apply_s = timed(VGPUCTL + ["apply"], env)
        assert len(sim.instances()) == N
        # 2. check vs list on the converged host
        check_s = statistics.median(timed(VGPUCTL + ["check"], env) for _ in range(5))
        list_s = statistics.median(timed(VGPUCTL + ["list"], env) for _ in range(5))
        # 3. service reaction time after the parent re-registers
        log = open(tmp / "service.log", "w")
        svc = subprocess.Popen(
            VGPUCTL + ["service", "--watch", "poll", "--poll-interval", "0.05"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(1.5)
        sim.unregister("mtty")
        time.sleep(1.0)
        t0 = time.perf_counter()
        sim.register("mtty")
        while len(sim.instances()) < N and time.perf_counter() - t0 < 60:
            time.sleep(0.005)
        react = time.perf_counter() - t0
        svc.terminate()
        svc.wait(10)
        clear(sim)
        # 1c. mdevctl start, 128 processes, in a mount namespace that shows the simulated sysfs as /sys
        mdevctl = shutil.which("mdevctl")
        mdev_s = None
        if mdevctl and shutil.which("unshare"):
            script = (
                f"set -e; mount --bind {root}/sys /sys; mount -t tmpfs tmpfs /etc/mdevctl.d; "
                "mkdir -p /etc/mdevctl.d/scripts.d/callouts /etc/mdevctl.d/scripts.d/notifiers; "
                "t0=$(date +%s.%N); "
                f"for u in {' '.join(uuids)}; do {mdevctl} start -p mtty -t mtty-1 -u $u; done; "
                't1=$(date +%s.%N); echo "$t0 $t1"'
            )
            r = subprocess.run(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True
            )
            if r.returncode == 0 and len(sim.instances()) == N:
                a, b = map(float, r.stdout.split()[-2:])
                mdev_s = b - a
            else:
                print(f"mdevctl run failed (rc {r.returncode}): {r.stderr.strip()[:300]}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)

    print(f"converge {N} instances from empty (simulated host, mtty-1):")
    print(f"  raw loop writing create        {raw * 1e3:8.1f} ms  ({raw / N * 1e3:.2f} ms/instance)")
    print(f"  vgpuctl apply (one process)    {apply_s * 1e3:8.1f} ms  = {apply_s / raw:.1f}x raw")
    if mdev_s is not None:
        print(
            f"  {N} x mdevctl start             {mdev_s * 1e3:8.1f} ms  = {mdev_s / raw:.1f}x raw, "
            f"{mdev_s / apply_s:.1f}x vgpuctl apply"
        )
    print(f"converged {N}-instance host (median of 5):")
    print(f"  vgpuctl check                  {check_s * 1e3:8.1f} ms")
    print(f"  vgpuctl list                   {list_s * 1e3:8.1f} ms  check/list = {check_s / list_s:.2f}")
    print("service reaction (parent re-registered -> all instances back, --watch poll 0.05 s):")
    print(f"  {N} instances back after       {react * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
