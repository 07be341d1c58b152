"""Real-kernel stage: everything here runs only inside the guest booted by ``tests/realkernel/run``.

On the host every test in this directory (and any test marked ``realkernel``) is skipped.  In the guest
``VGPUCTL_REALKERNEL=1`` is set, the sample parents mtty/mdpy/mbochs are loaded, and the fixtures below give tests a
clean mdev state, a real libvirtd and running QEMU domains holding mdevs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from . import guestlib as g

HERE = Path(__file__).resolve().parent
SKIP_REASON = "real-kernel test: runs only inside the QEMU guest (tests/realkernel/run)"
# tests/realkernel/migration needs the bookworm-backports flavour (kernel 6.12, QEMU 10): Debian 12's guest does not
# collect it (on the host it is collected and skipped like the rest of this directory)
collect_ignore = ["migration"] if g.IN_GUEST and g.FLAVOUR != "bookworm-backports" else []


def pytest_collection_modifyitems(config, items):
    for item in items:
        here = HERE in Path(str(item.path)).resolve().parents
        if here:
            item.add_marker(pytest.mark.realkernel)
        if not g.IN_GUEST and (here or item.get_closest_marker("realkernel")):
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))

    # Tests that need libvirtd run last: once the (session-wide) daemon is up, its udev-driven node-device
    # handling of every mdev event costs guest CPU that the raw-sysfs tests need not pay.
    def libvirt_last(item):
        return HERE in Path(str(item.path)).resolve().parents and "libvirtd" in getattr(item, "fixturenames", ())

    items.sort(key=libvirt_last)


@pytest.fixture(autouse=True)
def _realkernel_clean_state():
    """Every test starts and ends with the sample modules loaded and no mdev on any parent.

    Teardown runs after the domain fixtures have destroyed their domains; a device something still holds is
    reported, never written to (its ``remove`` would block the whole run).
    """
    if not g.IN_GUEST:
        yield
        return
    _reset_mdev_state("leftover from an earlier test")
    yield
    _reset_mdev_state("left behind by this test")


def _reset_mdev_state(what: str) -> None:
    for name in g.SAMPLE_MODULES:
        if not g.module_loaded(name):
            g.insmod(name)
    problems = []
    for uuid in g.list_mdevs():
        try:
            g.remove_mdev(uuid)
        except (OSError, RuntimeError) as e:
            problems.append(str(e))
    if problems:
        pytest.fail(f"mdevs {what} could not be removed: " + "; ".join(problems))


@pytest.fixture(scope="session")
def libvirtd():
    """A real libvirtd (plus virtlogd and systemd-udevd) in the guest; yields its URI (``qemu:///system``).

    Domains still defined at the end are destroyed and undefined, then the daemons are stopped.
    """
    if not g.IN_GUEST:
        pytest.skip(SKIP_REASON)
    if not g.have_libvirtd():
        pytest.fail("libvirtd/virtlogd/virsh not installed on the host (tests/realkernel/run installs them)")
    daemon = g.Libvirtd().start()
    try:
        yield daemon.uri
    finally:
        for name in g.virsh("list", "--all", "--name", uri=daemon.uri, check=False).stdout.split():
            g.virsh("destroy", name, uri=daemon.uri, check=False)
            g.virsh("undefine", name, uri=daemon.uri, check=False)
        daemon.stop()


class Domains:
    """Defines/starts tiny TCG domains with mdev hostdevs; everything it made is destroyed and undefined at teardown."""

    def __init__(self, uri: str, prefix: str):
        self.uri = uri
        self.prefix = prefix
        self.made = []

    def _name(self, name):
        return name or f"{self.prefix}-{len(self.made)}"

    def define(self, *uuids: str, name: str = None) -> g.Domain:
        dom = g.define_domain(self._name(name), uuids, uri=self.uri)
        self.made.append(dom)
        return dom

    def start(self, dom: g.Domain, timeout: float = 120) -> g.Domain:
        try:
            g.start_domain(dom)
        except g.VirshError as e:
            e.qemu_log = g.qemu_log(dom.name)
            e.args = (f"{e.args[0]}\n--- qemu log of {dom.name} ---\n{e.qemu_log}",)
            raise
        for uuid in dom.mdevs:  # QEMU has the device once it holds /dev/vfio/<group>
            g.wait_until(lambda uuid=uuid: g.mdev_holders(uuid), timeout, what=f"QEMU to open the vfio group of {uuid}")
        return dom

    def run(self, *uuids: str, name: str = None) -> g.Domain:
        return self.start(self.define(*uuids, name=name))

    def cleanup(self):
        for dom in reversed(self.made):
            dom.destroy()
            dom.undefine()


@pytest.fixture
def domains(libvirtd, request):
    """Factory for domains: ``domains.define(uuid)``, ``domains.start(dom)``, ``domains.run(uuid)``."""
    prefix = "rk-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40].strip("-")
    d = Domains(libvirtd, prefix)
    yield d
    d.cleanup()


@pytest.fixture
def running_domain_with_mdev(domains):
    """``running_domain_with_mdev(uuid, ...)`` defines and starts a domain holding those mdevs; returns a
    ``guestlib.Domain`` (``.name``, ``.pid`` of its QEMU, ``.destroy()``) once QEMU holds their vfio groups."""
    return domains.run


@pytest.fixture
def mtty_device():
    """A fresh mtty-1 mdev created by a raw sysfs write; yields its uuid (removed afterwards if still there)."""
    uuid = g.create_mdev("mtty", "mtty-1")
    yield uuid
    # removal is left to _realkernel_clean_state, which refuses (instead of hanging) if something still holds it
