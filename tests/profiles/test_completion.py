"""Shell completion: the scripts print, and the callbacks complete profiles and never fail without a host."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]


def complete(root, words, cword):
    env = dict(
        os.environ,
        VGPUCTL_ROOT=str(root),
        COMP_WORDS=words,
        COMP_CWORD=str(cword),
        _VGPUCTL_COMPLETE="bash_complete",
        VGPUCTL_LIBVIRT_URI="none",
    )
    r = subprocess.run(VGPUCTL, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return [line.split(",", 1)[1] for line in r.stdout.splitlines() if "," in line]


@pytest.mark.parametrize("shell,marker", [("bash", "complete -o"), ("zsh", "#compdef vgpuctl"), ("fish", "complete")])
def test_completion_scripts(shell, marker):
    r = subprocess.run(VGPUCTL + ["completion", shell], capture_output=True, text=True)
    assert r.returncode == 0 and marker in r.stdout and "_VGPUCTL_COMPLETE" in r.stdout


def test_callbacks(tmp_path):
    (tmp_path / "etc" / "vgpuctl").mkdir(parents=True)
    (tmp_path / "etc" / "vgpuctl" / "profiles.yaml").write_text(
        "version: 1\nprofiles:\n  gold: {type: T4-4Q}\n  silver: {type: T4-2Q}\n"
    )
    assert complete(tmp_path, "vgpuctl create --profile ", 3) == ["gold", "silver"]
    assert complete(tmp_path, "vgpuctl create --profile g", 3) == ["gold"]
    assert complete(tmp_path, "vgpuctl create --parent ", 3) == []  # no sysfs here: nothing, and no traceback
    assert complete(tmp_path, "vgpuctl attach ", 2) == []  # libvirt off
    assert "status" in complete(tmp_path, "vgpuctl st", 1)
