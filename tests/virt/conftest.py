"""Fixtures for the libvirt integration: the test driver, the simulated host, golden files, a real libvirtd.

* ``uri``: ``test:///<abs>/tests/data/virt/testnode.xml``; every ``Virt.open(uri)`` is a fresh driver state.
* ``sim``: the session's mtty simulator (``sim_pool``; needs root, /dev/fuse, fusermount3; skipped otherwise) with the
  vGPUs the driver file's domains reference already created (owned by vgpuctl).
* ``golden(name, text)``: compare with tests/data/virt/golden/<name> (tests/golden.py: a missing file fails;
  ``VGPUCTL_REGEN_GOLDEN=1`` rewrites them all).
* ``libvirtd`` (tests marked ``libvirtd``): see ``tests/virt/libvirtd.py``.
"""

from __future__ import annotations

from golden import assert_golden
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("libvirt", reason="libvirt-python is not installed (pip install 'vgpuctl[libvirt]')")
pytest.importorskip("jinja2", reason="jinja2 is not installed (pip install 'vgpuctl[libvirt]')")

from .libvirtd import libvirtd  # noqa: E402,F401  (the session fixture)

DATA = Path(__file__).resolve().parents[1] / "data" / "virt"
GOLDEN = DATA / "golden"
DRIVER_FILE = DATA / "testnode.xml"

U_WEB = "aaaaaaaa-0000-4000-8000-000000000001"  # running domain web1 has it (live and config)
U_DB = "aaaaaaaa-0000-4000-8000-000000000002"  # shut-off domain db's definition has it
U_FREE = "aaaaaaaa-0000-4000-8000-000000000003"  # nobody references it
ODD_NAME = "we'b\"<1>&"


@pytest.fixture
def uri() -> str:
    return "test://" + str(DRIVER_FILE)


@pytest.fixture
def virt(uri):
    from vgpuctl.virt import Virt

    with Virt.open(uri) as v:
        yield v


@pytest.fixture
def sim(sim_pool):
    from vgpuctl.lifecycle import Lifecycle
    from vgpuctl.host import Host

    s = sim_pool.fresh("mtty")
    lc = Lifecycle(Host(s.paths), lock_timeout=2)
    for u in (U_WEB, U_DB, U_FREE):
        lc.create(parent="mtty", type_id="mtty-1", uuid=u)
    return s


def scrub(text: str) -> str:
    return text.replace(str(DRIVER_FILE), "<testnode.xml>")


@pytest.fixture
def golden():
    def check(name: str, text: str) -> None:
        assert_golden(GOLDEN / name, scrub(text))

    return check


@pytest.fixture
def cli(sim, uri):
    """Run ``vgpuctl --root <sim> --connect <uri> ARGS``; returns the click Result (stdout, stderr, exit_code)."""
    from vgpuctl.cli import cli as group

    def run(*args: str, connect: str = "", input: str = ""):
        runner = CliRunner()
        return runner.invoke(
            group,
            ["--root", str(sim.root), "--connect", connect or uri, "--lock-timeout", "2", *args],
            input=input or None,
            catch_exceptions=False,
        )

    return run
