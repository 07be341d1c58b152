#!/usr/bin/env python3
"""Benchmark: ``vgpuctl list --json`` against ``mdevctl list --dumpjson`` on a simulated 8-GPU host.

Builds a simulated host of eight T4-class GPUs with 16 instances each (128 mdevs), then times, with hyperfine, in
one private mount namespace where the simulated ``sys`` is bind-mounted over ``/sys`` (Debian's mdevctl 1.2 has no
root option):

* ``python -c pass``            the bare interpreter (the floor for any Python CLI)
* ``vgpuctl --version``         vgpuctl's start-up cost (click and the lazy command table)
* ``vgpuctl list --json``       the full inventory: 8 parents, their types, 128 instances, owners, holder scan
* ``mdevctl list --dumpjson``   mdevctl's listing of the same devices (Rust, no holder scan)

and the same two listings of a plain directory copy of the simulated ``sys`` (symlinks kept, no FUSE: each tool's
own cost, not the simulator's), against ``python -c 'import click'`` (the floor for a click CLI in Python):

* ``python -c 'import click'``
* ``vgpuctl list --json (plain)``  and  ``mdevctl list --dumpjson (plain)``

and prints the mean times and ratios measured in this one run.  Needs root, /dev/fuse, hyperfine and mdevctl
(``scripts/setup.sh`` installs them).  Usage: ``.venv/bin/python bench/list_vs_mdevctl.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

GPUS = [f"0000:{bus:02x}:00.0" for bus in (0x1A, 0x1B, 0x3B, 0x3C, 0x88, 0x89, 0xD8, 0xD9)]
PER_GPU = 16
TYPE = "nvidia-222"  # T4-1B: 16 per GPU

PROFILE = """\
version: 1
summary: eight NVIDIA T4 GPUs (benchmark host; models from t4x2)
include: [t4x2]
devices:
{devices}
"""


def _copy_attr(src: str, dst: str) -> None:
    """One attribute of the plain copy; a write-only one (``create``, ``remove``) becomes an empty file."""
    try:
        shutil.copy2(src, dst)
    except PermissionError:
        open(dst, "wb").close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    for tool in ("hyperfine", "mdevctl", "unshare"):
        if not shutil.which(tool):
            print(f"bench: {tool} not found (run scripts/setup.sh)", file=sys.stderr)
            return 2

    from vgpuctl.sim import SimHost

    bindir = Path(sys.executable).parent
    vgpuctl = shutil.which("vgpuctl", path=str(bindir)) or "vgpuctl"
    with tempfile.TemporaryDirectory(prefix="vgpuctl-bench-") as tmp:
        profile = Path(tmp) / "t4x8.yaml"
        devices = "\n".join(f'  - {{pci: "{g}", model: t4, numa_node: {i // 4}}}' for i, g in enumerate(GPUS))
        profile.write_text(PROFILE.format(devices=devices))
        root = Path(tmp) / "root"
        with SimHost(str(profile), root) as sim:
            for g in GPUS:
                for _ in range(PER_GPU):
                    sim.create(g, TYPE, str(uuid.uuid4()))
            assert len(sim.instances()) == len(GPUS) * PER_GPU
            out = Path(tmp) / "hyperfine.json"
            plain = Path(tmp) / "plain"
            shutil.copytree(
                root / "sys",
                plain / "sys",
                symlinks=True,
                copy_function=_copy_attr,
                ignore=shutil.ignore_patterns(".vgpusim"),
            )
            env = f"VGPUCTL_ROOT={shlex.quote(str(root))} VGPUCTL_LIBVIRT_URI=none"
            plain_env = f"VGPUCTL_ROOT={shlex.quote(str(plain))} VGPUCTL_LIBVIRT_URI=none"
            cmds = {
                "python": f"{shlex.quote(sys.executable)} -c pass",
                "python -c 'import click'": f"{shlex.quote(sys.executable)} -c 'import click'",
                "vgpuctl --version": f"{vgpuctl} --version",
                "vgpuctl list --json": f"env {env} {vgpuctl} list --json",
                "mdevctl list --dumpjson": "mdevctl list --dumpjson",
                "vgpuctl list --json (plain)": f"env {plain_env} {vgpuctl} list --json",
            }
            hf = ["hyperfine", "-N", "--warmup", "3", "--runs", str(args.runs), "--export-json", str(out)]
            for name, cmd in cmds.items():
                hf += ["-n", name, cmd]
            # mdevctl has no root option: the plain copy is bind-mounted over /sys in a second namespace
            out2 = Path(tmp) / "hyperfine-plain.json"
            hf2 = [
                "hyperfine",
                "-N",
                "--warmup",
                "3",
                "--runs",
                str(args.runs),
                "--export-json",
                str(out2),
                "-n",
                "mdevctl list --dumpjson (plain)",
                "mdevctl list --dumpjson",
            ]
            script = f"mount --bind {shlex.quote(str(root / 'sys'))} /sys && exec {shlex.join(hf)} >&2"
            subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=True)
            script = f"mount --bind {shlex.quote(str(plain / 'sys'))} /sys && exec {shlex.join(hf2)} >&2"
            subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], check=True)
            cmds["mdevctl list --dumpjson (plain)"] = "mdevctl list --dumpjson"
            # both tools must have seen all 128 devices
            listed = subprocess.run(
                [
                    "unshare",
                    "-m",
                    "sh",
                    "-c",
                    f"mount --bind {shlex.quote(str(root / 'sys'))} /sys && mdevctl list --dumpjson",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            n_mdevctl = sum(len(v) for entry in json.loads(listed) for v in entry.values())
            n_vgpuctl = len(
                json.loads(
                    subprocess.run(
                        [vgpuctl, "--root", str(root), "--connect", "none", "list", "--json"],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
            )
            n_plain = len(
                json.loads(
                    subprocess.run(
                        [vgpuctl, "--root", str(plain), "--connect", "none", "list", "--json"],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                )
            )
        results = {r["command"]: r for r in json.loads(out.read_text())["results"]}
        results.update({r["command"]: r for r in json.loads(out2.read_text())["results"]})

    ms = {k: v["mean"] * 1000 for k, v in results.items()}
    sd = {k: v["stddev"] * 1000 for k, v in results.items()}
    print(
        f"\nsimulated host: {len(GPUS)} GPUs x {PER_GPU} instances; devices listed: vgpuctl {n_vgpuctl}, "
        f"mdevctl {n_mdevctl}"
    )
    for k in cmds:
        print(f"  {k:26s} {ms[k]:8.1f} ms ± {sd[k]:.1f}")
    print(f"plain directory copy (no FUSE): vgpuctl listed {n_plain}")
    CLICK = "python -c 'import click'"
    print(f"ratio vgpuctl list / mdevctl list:      {ms['vgpuctl list --json'] / ms['mdevctl list --dumpjson']:.2f}")
    print(
        f"plain copy: vgpuctl list / python -c 'import click': "
        f"{ms['vgpuctl list --json (plain)'] / ms[CLICK]:.2f}"
        f"   vgpuctl list / mdevctl list: "
        f"{ms['vgpuctl list --json (plain)'] / ms['mdevctl list --dumpjson (plain)']:.2f}"
    )
    print(f"click's import: {ms[CLICK] - ms['python']:.1f} ms over the bare interpreter")
    print(f"ratio vgpuctl --version / bare python:  {ms['vgpuctl --version'] / ms['python']:.2f}")
    work = ms["vgpuctl list --json"] - ms["vgpuctl --version"]
    print(f"vgpuctl list beyond start-up: {work:.1f} ms ({work / (len(GPUS) * PER_GPU):.2f} ms per instance)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
