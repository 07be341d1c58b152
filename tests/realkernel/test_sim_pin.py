"""What the simulator lets the kernel cache, the real kernel never changes in place.

The simulator (vgpuctl/sim/fs.py) lets the kernel keep names, attributes (kind, mode, size) and symlink targets, and
invalidates only paths that went away or links that were re-pointed (machine.changed_paths).  That is right only if
sysfs itself never changes the kind, mode or size of a path that stays: these tests walk the real mdev tree of the
6.1 kernel across a create, a remove, a re-create with another type and a driver reload, and compare every path that
is present on both sides of each step.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from . import guestlib as g

pytestmark = pytest.mark.realkernel

ROOTS = (Path("/sys/devices/virtual/mtty/mtty"), g.MDEV_BUS, g.MDEV_DEVICES)


def snapshot():
    """{path: (kind, mode, size)} of the mtty parent's tree and the mdev bus/class links (links not followed)."""
    out = {}
    for top in ROOTS:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [""] + dirnames + filenames:
                p = os.path.join(dirpath, name) if name else dirpath
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                kind = "l" if stat.S_ISLNK(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode) else "f"
                out[p] = (kind, stat.S_IMODE(st.st_mode), st.st_size if kind == "f" else None)
    return out


def links(snap):
    return {p: os.readlink(p) for p, (kind, _, _) in snap.items() if kind == "l" and os.path.lexists(p)}


def assert_same_where_present(before, after, step):
    changed = {p: (before[p], after[p]) for p in before.keys() & after.keys() if before[p] != after[p]}
    assert changed == {}, f"{step}: the kernel changed these in place: {changed}"


def test_kind_mode_and_size_of_a_path_never_change_while_it_exists():
    steps = []
    s0 = snapshot()
    u = g.create_mdev("mtty", "mtty-1")
    g.wait_until(lambda: g.mdev_ready(u), 10, what=f"{u} ready")
    s1 = snapshot()
    l1 = links(s1)
    steps.append(("create", s0, s1))
    g.remove_mdev(u)
    s2 = snapshot()
    steps.append(("remove", s1, s2))
    g.create_mdev("mtty", "mtty-2", u)  # the same uuid, another type: the same paths come back
    g.wait_until(lambda: g.mdev_ready(u), 10, what=f"{u} ready")
    s3 = snapshot()
    steps.append(("re-create with another type", s2, s3))
    # the mdev_type link at the same path now points elsewhere: the simulator invalidates such links
    dev_type = f"/sys/devices/virtual/mtty/mtty/{u}/mdev_type"
    assert l1[dev_type] != os.readlink(dev_type)
    assert_same_where_present(s1, s3, "create, remove, create again")
    g.remove_mdev(u)
    g.rmmod("mtty")
    g.insmod("mtty")
    g.wait_until(lambda: (g.MDEV_BUS / "mtty").exists(), 10, what="mtty registered again")
    s4 = snapshot()
    steps.append(("rmmod mtty; insmod mtty.ko", s2, s4))
    for name, before, after in steps:
        assert_same_where_present(before, after, name)
    assert s1.keys() - s0.keys(), "the create added no path (the walk saw nothing)"
