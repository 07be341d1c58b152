"""pip users' packages: `python -m build` makes an sdist and, from it, a wheel that carries everything vgpuctl
needs at run time (templates, simulator profiles), and whose console scripts run from a plain install."""

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("build", reason="the 'build' package comes with vgpuctl[test]")


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # Isolated build, as pip does it: the wheel is built from the unpacked sdist, so a file missing from the
    # sdist is missing from the wheel too.
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(REPO)], check=True, capture_output=True, timeout=600
    )
    return out


def test_sdist_carries_the_sources_docs_and_packaging(dists):
    (sdist,) = dists.glob("vgpuctl-*.tar.gz")
    names = {n.split("/", 1)[1] for n in tarfile.open(sdist).getnames() if "/" in n}
    for need in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "vgpuctl/cli.py",
        "vgpuctl/data/templates/mdev-hostdev.xml.j2",
        "docs/packaging.md",
        "examples/vgpuctl.yaml",
        "systemd/vgpuctl.service",
        "libvirt/hooks/qemu.d/vgpuctl",
    ):
        assert need in names, need


def test_wheel_has_package_data_and_runs(dists, tmp_path):
    (wheel,) = dists.glob("vgpuctl-*-py3-none-any.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(n.startswith("vgpuctl/data/templates/") and n.endswith(".xml.j2") for n in names)
    assert "vgpuctl/sim/profiles/t4x2.yaml" in names
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry).decode()
    assert "vgpuctl = vgpuctl.cli:main" in scripts and "vgpuctl-sim = vgpuctl.sim.cli:main" in scripts
    # A plain install of the wheel (its dependency click comes from this venv) runs the CLI.
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from vgpuctl.cli import main; sys.argv[0] = 'vgpuctl'; main()",
            "--version",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "0.1.0" in run.stdout
    found = subprocess.run(
        [sys.executable, "-c", "import vgpuctl; print(vgpuctl.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert found.startswith(str(target)), found
