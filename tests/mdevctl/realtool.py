"""Debian's real mdevctl against the simulated host: every call runs in its own private mount namespace
(``unshare -m``) where the simulated ``ROOT/sys`` is bind-mounted over ``/sys`` and ``ROOT/etc/mdevctl.d`` over
``/etc/mdevctl.d`` (mdevctl 1.2 has no root option), so mdevctl and vgpuctl (``--root ROOT``) see one host and one
set of definitions, and the machine's own ``/etc`` is never touched.  The approach of bench/list_vs_mdevctl.py."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]


def unusable_reason() -> str:
    if shutil.which("mdevctl") is None:
        return "mdevctl is not installed (apt-get install mdevctl)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if os.geteuid() != 0:
        return "a private mount namespace needs root"
    return ""


class Mdevctl:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.etc = self.root / "etc" / "mdevctl.d"
        for d in ("scripts.d/callouts", "scripts.d/notifiers"):
            (self.etc / d).mkdir(parents=True, exist_ok=True)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        script = (
            f"mount --bind {shlex.quote(str(self.root / 'sys'))} /sys && "
            f'mount --bind {shlex.quote(str(self.etc))} /etc/mdevctl.d && exec mdevctl "$@"'
        )
        r = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check:
            assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
        return r

    def defined(self) -> Dict[str, dict]:
        """``mdevctl list --defined --dumpjson`` as uuid -> {parent, mdev_type, start, attrs}."""
        out = self.run("list", "--defined", "--dumpjson").stdout.strip()
        found: Dict[str, dict] = {}
        for entry in json.loads(out) if out else []:
            for parent, devs in entry.items():
                for dev in devs:
                    for uuid, d in dev.items():
                        found[uuid] = dict(d, parent=parent)
        return found

    def active(self) -> List[str]:
        return sorted(line.split()[0] for line in self.run("list").stdout.splitlines() if line.strip())


def vgpuctl(root, *args, check=None, env=None) -> subprocess.CompletedProcess:
    e = dict(os.environ, VGPUCTL_ROOT=str(root), VGPUCTL_LIBVIRT_URI="none", VGPUCTL_NVML="off", **(env or {}))
    r = subprocess.run(VGPUCTL + list(args), capture_output=True, text=True, env=e, timeout=120)
    if check is not None:
        assert r.returncode == check, (args, r.returncode, r.stdout, r.stderr)
    return r


def listed(root, *args) -> Dict[str, dict]:
    return {r["uuid"]: r for r in json.loads(vgpuctl(root, "list", "--json", *args, check=0).stdout)}


def tree(root: Path) -> Dict[str, bytes]:
    """Every file under ROOT/etc and ROOT/var with its bytes: what 'nothing changed' compares."""
    out: Dict[str, bytes] = {}
    for top in ("etc", "var"):
        for dirpath, _, files in os.walk(Path(root) / top):
            for f in files:
                p = os.path.join(dirpath, f)
                out[p] = b"<link>" + os.readlink(p).encode() if os.path.islink(p) else open(p, "rb").read()
    return out
