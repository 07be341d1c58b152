"""A real libvirtd in the guest starts a QEMU (TCG) domain holding an mtty mdev created by raw sysfs writes.

Pins what "in use" means on a real host: QEMU holds /dev/vfio/<group> open, libvirt refuses a second domain on the
same mdev, and a write to the held mdev's ``remove`` blocks (even when the writer is killed) until the VM lets go.
"""

from __future__ import annotations

import errno
import os
import signal
import time

import pytest

from . import guestlib as g

pytestmark = pytest.mark.realkernel


def test_running_domain_holds_the_mdev_vfio_group(running_domain_with_mdev):
    uuid = g.create_mdev("mtty", "mtty-1")
    group = g.iommu_group(uuid)
    assert g.holders(f"/dev/vfio/{group}") == []
    dom = running_domain_with_mdev(uuid)
    assert dom.state() == "running"
    assert dom.pid is not None
    assert g.holders(f"/dev/vfio/{group}") == [dom.pid]
    with open(f"/proc/{dom.pid}/comm") as f:
        assert f.read().strip().startswith("qemu-system-x86")
    # the running domain's live XML still names the mdev by uuid
    xml = g.virsh("dumpxml", dom.name).stdout
    assert f"uuid='{uuid}'" in xml and "type='mdev'" in xml

    dom.destroy()
    g.wait_until(lambda: not g.mdev_holders(uuid), 30, what="QEMU to close the vfio group")
    assert g.mdev_exists(uuid)  # destroying the domain leaves the mdev in place


def test_second_domain_on_the_same_mdev_is_refused(running_domain_with_mdev, domains):
    uuid = g.create_mdev("mtty", "mtty-1")
    first = running_domain_with_mdev(uuid)
    second = domains.define(uuid)  # defining is fine: libvirt checks at start
    with pytest.raises(g.VirshError) as err:
        g.start_domain(second)
    msg = err.value.stderr
    assert "is in use by driver QEMU" in msg, msg
    assert f"domain {first.name}" in msg, msg
    assert second.state() == "shut off"
    assert first.state() == "running"
    assert g.mdev_holders(uuid) == [first.pid]


def test_remove_of_a_held_mdev_blocks_until_the_domain_is_destroyed(running_domain_with_mdev):
    uuid = g.create_mdev("mtty", "mtty-1")
    group = g.iommu_group(uuid)
    devdir = f"/sys/devices/virtual/mtty/mtty/{uuid}"
    dom = running_domain_with_mdev(uuid)
    writer = g.start_remove(uuid)
    try:
        time.sleep(3)
        assert writer.poll() is None, "remove on a held mdev returned instead of blocking"
        # interruptible wait in vfio_unregister_group_dev
        g.wait_until(lambda: g.process_state(writer.pid) == "S", 5, what="the writer to sleep interruptibly")
        # Half removed while blocked: gone from the mdev bus and from its type's devices/, but the device directory
        # stays (iommu_group, vfio-dev only), QEMU still holds the group, and the capacity is not returned yet.
        assert not g.mdev_exists(uuid)
        assert uuid not in g.list_mdevs()
        assert os.listdir(g.type_dir("mtty", "mtty-1") / "devices") == []
        assert sorted(os.listdir(devdir)) == ["iommu_group", "vfio-dev"]
        assert g.holders(f"/dev/vfio/{group}") == [dom.pid]
        assert g.available("mtty", "mtty-1") == 23
        # the uuid is still taken; other devices can be created meanwhile
        assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", uuid) == errno.EEXIST
        # a signal does not free the writer: SIGKILL turns the wait uninterruptible until the device is released
        writer.send_signal(signal.SIGKILL)
        g.wait_until(lambda: g.process_state(writer.pid) == "D", 5, what="the killed writer to sleep uninterruptibly")
        time.sleep(1)
        assert writer.poll() is None, "SIGKILL ended a writer blocked in remove"
        assert g.process_state(writer.pid) == "D"
        assert dom.state() == "running"
    finally:
        dom.destroy()  # QEMU exits and closes the vfio group ...
    writer.wait(30)  # ... so the blocked write completes (then the pending SIGKILL lands)
    assert writer.returncode == -signal.SIGKILL
    g.wait_until(lambda: not os.path.exists(devdir), 10, what="the device directory to go")
    assert not os.path.exists(f"/dev/vfio/{group}")
    assert g.available("mtty", "mtty-1") == 24
    assert g.list_mdevs() == []


def test_live_attach_works_but_live_detach_waits_for_the_guest(running_domain_with_mdev):
    """Hot-plug of a second mdev works; hot-unplug is a request the guest OS must acknowledge.  This guest runs no
    OS, so virsh reports success after its ~5 s wait while the device stays attached and held: a manager must
    check the live XML / the holders, never trust the detach call, before it removes the device."""
    first = g.create_mdev("mtty", "mtty-1")
    second = g.create_mdev("mtty", "mtty-2")
    dom = running_domain_with_mdev(first)
    g.attach_mdev(dom, second)
    g.wait_until(lambda: g.mdev_holders(second), 30, what="QEMU to open the hot-plugged mdev")
    assert g.mdev_holders(second) == [dom.pid]
    assert sorted(g.live_mdevs(dom)) == sorted([first, second])

    assert g.detach_mdev(dom, second).returncode == 0
    assert g.mdev_holders(second) == [dom.pid]
    assert sorted(g.live_mdevs(dom)) == sorted([first, second])


def test_libvirt_node_device_view_of_an_mdev(libvirtd):
    uuid = g.create_mdev("mtty", "mtty-1")
    name = f"mdev_{uuid.replace('-', '_')}_mtty"  # libvirt >= 7.7 names: mdev_<uuid>_<parent>
    g.wait_until(
        lambda: name in g.virsh("nodedev-list", "--cap", "mdev").stdout.split(), 30, what="libvirt to see the new mdev"
    )
    xml = g.virsh("nodedev-dumpxml", name).stdout
    assert f"<path>/sys/devices/virtual/mtty/mtty/{uuid}</path>" in xml
    assert "<parent>mtty_mtty</parent>" in xml
    assert "<type id='mtty-1'/>" in xml
    assert f"<uuid>{uuid}</uuid>" in xml
    assert f"<iommuGroup number='{g.iommu_group(uuid)}'/>" in xml
    g.remove_mdev(uuid)
    g.wait_until(
        lambda: name not in g.virsh("nodedev-list", "--cap", "mdev").stdout.split(),
        30,
        what="libvirt to drop the removed mdev",
    )
