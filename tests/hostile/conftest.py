"""Shared pieces of the hostile-input campaign (issue 19): a small static host, an in-process CLI, a byte-exact
snapshot of everything under a root, and the contract every refusal must keep.

The contract: a documented exit status of 2 or more (2..14 when the campaign began; 15/16 came later), stdout empty, exactly one stderr line starting ``vgpuctl: error:``, no
traceback (the in-process run ends in ``SystemExit``, never another exception), and the host (every file, link and
mode under the root) byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from click.testing import CliRunner

from vgpuctl.errors import EXIT_CODES

T4 = "0000:3b:00.0"
U1 = "11111111-2222-3333-4444-555555555555"
NV = "num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=5120x2880, max_instance=8"

SPEC_OK = f"""version: 1
instances:
  keep:
    uuid: {U1}
    type: nvidia-231
    parent: "{T4}"
"""


def build_host(tree) -> Path:
    """One T4 with a T4-2Q instance and two offered types, plus mtty; vgpuctl's directories exist."""
    gpu = tree.pci_parent(T4, numa="0")
    tree.mdev_type(gpu, "nvidia-231", available=7, name="GRID T4-2Q", description=NV)
    tree.mdev_type(gpu, "nvidia-233", available=0, name="GRID T4-8Q", description=NV.replace("2048M", "8192M"))
    tree.instance(gpu, "nvidia-231", U1)
    mtty = tree.virtual_parent("mtty")
    tree.mdev_type(mtty, "mtty-1", available=24, name="Single port serial")
    root = Path(tree.root)
    for d in ("etc/vgpuctl/conf.d", "var/lib/vgpuctl", "run/vgpuctl"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for lock in ("lock", "virt.lock", "profiles.lock"):  # as a first locked command leaves them
        (root / "run/vgpuctl" / lock).touch(mode=0o644)
    return root


@pytest.fixture
def host(tree) -> Path:
    return build_host(tree)


def snapshot(root: Path) -> Dict[str, Tuple]:
    """Every entry under ``root``: kind, mode, and content digest or link target.  Never opens a FIFO or device."""
    out: Dict[str, Tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            try:
                st = os.lstat(p)
            except OSError as e:
                out[rel] = ("error", e.errno)
                continue
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                try:
                    with open(p, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                except OSError as e:
                    digest = f"unreadable {e.errno}"
                out[rel] = ("file", mode, digest)
            else:
                out[rel] = (stat.S_IFMT(st.st_mode), mode)
    return out


class Run:
    def __init__(self, result) -> None:
        self.code = result.exit_code
        self.stdout = result.stdout
        self.stderr = result.stderr
        self.exception = result.exception


def invoke(root: Optional[Path], *args: str, env: Optional[Dict[str, str]] = None, input: Optional[str] = None) -> Run:
    """``vgpuctl [--root ROOT] --connect none --nvml off ARGS`` in process; exceptions are kept, not raised."""
    from vgpuctl.cli import cli

    head = ["--root", str(root)] if root is not None else []
    full_env = {"VGPUCTL_LOCK_TIMEOUT": "1"}
    full_env.update(env or {})
    result = CliRunner().invoke(
        cli, [*head, "--connect", "none", "--nvml", "off", *args], env=full_env, input=input, catch_exceptions=True
    )
    return Run(result)


def assert_refused(run: Run, *, code: Optional[int] = None) -> str:
    """The contract of a refusal; returns the one error line."""
    exc = run.exception
    assert exc is None or isinstance(exc, SystemExit), f"traceback: {exc!r}\n{run.stderr}"
    assert run.code >= 2 and run.code in EXIT_CODES, (run.code, run.stderr)  # documented, and not a bug (1)
    if code is not None:
        assert run.code == code, (run.code, run.stderr)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vgpuctl: error: "), run.stderr
    assert "Traceback" not in run.stderr
    assert run.stdout == "", run.stdout
    return lines[0]


def refused(root: Path, *args: str, code: Optional[int] = None, **kw) -> str:
    """Run a command that must be refused, and check the contract, host unchanged included."""
    before = snapshot(root)
    line = assert_refused(invoke(root, *args, **kw), code=code)
    assert snapshot(root) == before, "a refused command changed the host"
    return line
