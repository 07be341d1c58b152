"""Real mdev sysfs of a Debian 12 (6.1) kernel with the sample parents mtty, mdpy and mbochs, by raw writes.

These pin the kernel behaviour the simulator and vgpuctl's host layer must match.  Each test leaves the guest clean
(conftest._realkernel_clean_state).
"""

from __future__ import annotations

import errno
import os

import pytest

from . import guestlib as g

pytestmark = pytest.mark.realkernel

EXPECTED_TYPES = {
    # parent: {type-id: (name, available_instances on an empty parent)}
    "mtty": {"mtty-1": ("Single port serial", 24), "mtty-2": ("Dual port serial", 12)},
    "mdpy": {"mdpy-vga": ("mdpy-vga", 4), "mdpy-xga": ("mdpy-xga", 4), "mdpy-hd": ("mdpy-hd", 4)},
    "mbochs": {
        "mbochs-small": ("mbochs-small", 64),
        "mbochs-medium": ("mbochs-medium", 16),
        "mbochs-large": ("mbochs-large", 4),
    },
}
DESCRIPTIONS = {
    "mdpy-vga": "virtual display, 640x480 framebuffer",
    "mdpy-xga": "virtual display, 1024x768 framebuffer",
    "mdpy-hd": "virtual display, 1920x1080 framebuffer",
    "mbochs-small": "virtual display, 4 MB video memory",
    "mbochs-medium": "virtual display, 16 MB video memory",
    "mbochs-large": "virtual display, 64 MB video memory",
}


def test_sample_parents_types_and_capacity():
    assert sorted(os.listdir(g.MDEV_BUS)) == ["mbochs", "mdpy", "mtty"]
    for parent, types in EXPECTED_TYPES.items():
        link = g.MDEV_BUS / parent
        assert link.is_symlink()  # class-compat link to a virtual device
        assert os.path.realpath(link) == f"/sys/devices/virtual/{parent}/{parent}"
        assert sorted(os.listdir(link / "mdev_supported_types")) == sorted(types)
        for type_id, (name, count) in types.items():
            tdir = g.type_dir(parent, type_id)
            assert g.read(tdir / "name") == name
            assert g.read(tdir / "device_api") == "vfio-pci"
            assert g.available(parent, type_id) == count
            assert os.listdir(tdir / "devices") == []
            if type_id in DESCRIPTIONS:
                assert g.read(tdir / "description") == DESCRIPTIONS[type_id]
            else:  # mtty has no description attribute at all
                assert not (tdir / "description").exists()
    assert g.list_mdevs() == []


def test_create_and_remove_mtty_by_raw_sysfs_writes():
    uuid = g.new_uuid()
    assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", uuid) == 0
    dev = g.MDEV_DEVICES / uuid
    assert dev.is_symlink()
    assert os.path.realpath(dev) == f"/sys/devices/virtual/mtty/mtty/{uuid}"
    assert g.mdev_type_of(uuid) == "mtty-1"
    assert g.parent_of(uuid) == "mtty"
    assert os.listdir(g.type_dir("mtty", "mtty-1") / "devices") == [uuid]
    # bound to the parent's own mdev driver (6.1 has no separate vfio_mdev), which registers an emulated-IOMMU
    # vfio group with a /dev/vfio node
    assert os.path.basename(os.readlink(dev / "driver")) == "mtty"
    group = g.iommu_group(uuid)
    assert (g.DEV_VFIO / str(group)).exists()
    assert g.available("mtty", "mtty-1") == 23
    assert g.mdev_holders(uuid) == []

    assert g.sysfs_write(dev / "remove", "1") == 0
    assert not g.mdev_exists(uuid)
    assert not (g.DEV_VFIO / str(group)).exists()
    assert os.listdir(g.type_dir("mtty", "mtty-1") / "devices") == []
    assert g.available("mtty", "mtty-1") == 24


def test_create_with_trailing_newline_is_accepted():
    uuid = g.new_uuid()
    assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", uuid + "\n") == 0  # what `echo` writes
    assert g.mdev_exists(uuid)


def test_uppercase_uuid_is_accepted_and_stored_lowercase():
    uuid = g.new_uuid()
    assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", uuid.upper()) == 0
    assert uuid in g.list_mdevs()
    assert uuid.upper() not in g.list_mdevs()
    # the same uuid in the other case is the same device
    assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", uuid) == errno.EEXIST


@pytest.mark.parametrize(
    "bad",
    [
        "not-a-uuid",
        "1234",
        "0123456789abcdef0123456789abcdef",  # 32 hex digits, no dashes
        "g0000000-0000-0000-0000-000000000000",  # right length, bad digit
        "00000000-0000-0000-0000-0000000000000",  # 37 characters, no newline: uuid + 1 digit
    ],
)
def test_create_bad_uuid_is_einval(bad):
    before = g.available("mtty", "mtty-1")
    rc = g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", bad)
    if bad == "00000000-0000-0000-0000-0000000000000":
        # The kernel accepts 36 or 37 bytes and parses only the first 36: a 37th character that is not a newline
        # is ignored (mdev_sysfs.c create_store + uuid_parse).  Pinned so nobody relies on it being rejected.
        assert rc == 0
        assert g.mdev_exists("00000000-0000-0000-0000-000000000000")
        return
    assert rc == errno.EINVAL
    assert g.available("mtty", "mtty-1") == before
    assert g.list_mdevs() == []


def test_create_too_long_is_einval():
    assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", g.new_uuid() + "\n\n") == errno.EINVAL


def test_duplicate_uuid_is_eexist_on_any_parent():
    uuid = g.create_mdev("mtty", "mtty-1")
    assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", uuid) == errno.EEXIST
    assert g.sysfs_write(g.type_dir("mtty", "mtty-2") / "create", uuid) == errno.EEXIST
    assert g.sysfs_write(g.type_dir("mdpy", "mdpy-vga") / "create", uuid) == errno.EEXIST
    assert g.sysfs_write(g.type_dir("mbochs", "mbochs-small") / "create", uuid) == errno.EEXIST
    # failed creates consume nothing
    assert g.available("mtty", "mtty-1") == 23
    assert g.available("mdpy", "mdpy-vga") == 4
    assert g.available("mbochs", "mbochs-small") == 64


def test_mtty_shared_port_pool_counts_down_together_and_ends_in_enospc():
    g.create_mdev("mtty", "mtty-2")  # 2 of 24 ports
    assert (g.available("mtty", "mtty-1"), g.available("mtty", "mtty-2")) == (22, 11)
    g.create_mdev("mtty", "mtty-1")  # 1 port
    assert (g.available("mtty", "mtty-1"), g.available("mtty", "mtty-2")) == (21, 10)
    for _ in range(10):
        g.create_mdev("mtty", "mtty-2")
    assert (g.available("mtty", "mtty-1"), g.available("mtty", "mtty-2")) == (1, 0)
    assert g.sysfs_write(g.type_dir("mtty", "mtty-2") / "create", g.new_uuid()) == errno.ENOSPC
    last = g.create_mdev("mtty", "mtty-1")
    assert (g.available("mtty", "mtty-1"), g.available("mtty", "mtty-2")) == (0, 0)
    assert g.sysfs_write(g.type_dir("mtty", "mtty-1") / "create", g.new_uuid()) == errno.ENOSPC
    assert len(g.list_mdevs()) == 13, [(u, g.parent_of(u), g.mdev_type_of(u)) for u in g.list_mdevs()]
    # removing one port frees it for mtty-1 only (mtty-2 needs two)
    g.remove_mdev(last)
    assert (g.available("mtty", "mtty-1"), g.available("mtty", "mtty-2")) == (1, 0)


def test_mbochs_shared_memory_pool_and_enospc():
    g.create_mdev("mbochs", "mbochs-large")  # 64 of 256 MB
    assert [g.available("mbochs", t) for t in ("mbochs-small", "mbochs-medium", "mbochs-large")] == [48, 12, 3]
    g.create_mdev("mbochs", "mbochs-medium")  # 16 MB
    assert [g.available("mbochs", t) for t in ("mbochs-small", "mbochs-medium", "mbochs-large")] == [44, 11, 2]
    for _ in range(2):
        g.create_mdev("mbochs", "mbochs-large")
    assert [g.available("mbochs", t) for t in ("mbochs-small", "mbochs-medium", "mbochs-large")] == [12, 3, 0]
    assert g.sysfs_write(g.type_dir("mbochs", "mbochs-large") / "create", g.new_uuid()) == errno.ENOSPC


def test_mdpy_core_instance_limit_is_eusers():
    # mdpy has no get_available: the mdev core counts instances (max_instances=4, shared by all mdpy types)
    g.create_mdev("mdpy", "mdpy-vga")
    g.create_mdev("mdpy", "mdpy-xga")
    assert [g.available("mdpy", t) for t in ("mdpy-vga", "mdpy-xga", "mdpy-hd")] == [2, 2, 2]
    g.create_mdev("mdpy", "mdpy-hd")
    g.create_mdev("mdpy", "mdpy-hd")
    assert [g.available("mdpy", t) for t in ("mdpy-vga", "mdpy-xga", "mdpy-hd")] == [0, 0, 0]
    assert g.sysfs_write(g.type_dir("mdpy", "mdpy-vga") / "create", g.new_uuid()) == errno.EUSERS


def test_remove_input_handling():
    uuid = g.create_mdev("mtty", "mtty-1")
    remove = g.MDEV_DEVICES / uuid / "remove"
    assert g.sysfs_write(remove, "0") == 0  # "0" is accepted and does nothing
    assert g.mdev_exists(uuid)
    assert g.sysfs_write(remove, "yes") == errno.EINVAL
    assert g.mdev_exists(uuid)
    assert g.sysfs_write(remove, "2") == 0  # any non-zero number removes
    assert not g.mdev_exists(uuid)


def test_driver_reload_unregisters_and_reregisters_the_parent_empty():
    uuid = g.create_mdev("mtty", "mtty-2")
    g.create_mdev("mtty", "mtty-1")
    assert g.available("mtty", "mtty-1") == 21

    g.rmmod("mtty")
    assert not (g.MDEV_BUS / "mtty").exists()
    assert not g.mdev_exists(uuid)  # unregistering the parent removed its (unused) mdevs
    assert g.list_mdevs() == []
    assert sorted(os.listdir(g.MDEV_BUS)) == ["mbochs", "mdpy"]

    g.insmod("mtty")
    assert sorted(os.listdir(g.MDEV_BUS)) == ["mbochs", "mdpy", "mtty"]
    assert g.list_mdevs() == []  # comes back empty: nothing recreates mdevs by itself
    assert g.available("mtty", "mtty-1") == 24
    assert g.available("mtty", "mtty-2") == 12


def test_uevents_of_create_remove_and_driver_reload():
    """The kernel-source uevents a listener (pyudev's kernel monitor, udevd) gets, in order."""

    def summary(events):
        return [(e["ACTION"], e["DEVPATH"], e.get("SUBSYSTEM"), e.get("DRIVER") or e.get("MDEV_STATE")) for e in events]

    mon = g.KernelUevents()
    try:
        uuid = g.create_mdev("mtty", "mtty-1")
        dev = f"/devices/virtual/mtty/mtty/{uuid}"
        group = g.iommu_group(uuid)
        assert summary(mon.collect()) == [
            ("add", dev, "mdev", None),
            ("add", f"/devices/virtual/vfio/{group}", "vfio", None),
            ("add", f"{dev}/vfio-dev/vfio0", "vfio-dev", None),
            ("bind", dev, "mdev", "mtty"),
        ]
        g.remove_mdev(uuid)
        assert summary(mon.collect()) == [
            ("remove", f"{dev}/vfio-dev/vfio0", "vfio-dev", None),
            ("remove", f"/devices/virtual/vfio/{group}", "vfio", None),
            ("unbind", dev, "mdev", None),
            ("remove", dev, "mdev", None),
        ]
        g.rmmod("mtty")
        assert summary(mon.collect()) == [
            ("change", "/devices/virtual/mtty/mtty", "mtty", "unregistered"),
            ("remove", "/devices/virtual/mtty/mtty", "mtty", None),
            ("remove", "/bus/mdev/drivers/mtty", "drivers", None),
            ("remove", "/class/mtty", "class", None),
            ("remove", "/module/mtty", "module", None),
        ]
        g.insmod("mtty")
        assert summary(mon.collect()) == [
            ("add", "/bus/mdev/drivers/mtty", "drivers", None),
            ("add", "/class/mtty", "class", None),
            ("add", "/devices/virtual/mtty/mtty", "mtty", None),
            ("change", "/devices/virtual/mtty/mtty", "mtty", "registered"),
            ("add", "/module/mtty", "module", None),
        ]
    finally:
        mon.close()
