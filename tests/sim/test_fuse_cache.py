"""The kernel's cache of the simulator's names, attributes and symlink targets never shows what the tree no longer has.

The daemon lets the kernel keep entries, attributes and symlink targets (fs.CACHE_SECONDS) and invalidates, before
a write returns, every path the write removed or re-pointed (machine.changed_paths).  These tests read paths first
(so the kernel has them cached), change the host, and read again.  The real-kernel stage pins the other half: the
kernel itself never changes the kind or mode of a path that stays (tests/realkernel/test_sim_pin.py).
"""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from vgpuctl.sim.machine import File, Link, Machine, SimError, changed_paths
from vgpuctl.sim.profile import load_profile

T4 = "0000:3b:00.0"
T4B = "0000:d8:00.0"
U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"


def _touch_all(paths):
    """stat, and readlink where a link, each path (puts them into the kernel's caches); {path: target or None}."""
    out = {}
    for p in paths:
        os.lstat(p)
        out[p] = os.readlink(p) if os.path.islink(p) else None
    return out


@pytest.mark.sim
def test_a_removed_mdev_and_a_retyped_one_are_seen_at_once(sim_factory):
    sim = sim_factory("t4x2")
    sim.create(T4, "nvidia-231", U1)
    dev = sim.sys / "bus" / "pci" / "devices" / T4 / U1
    bus = sim.sys / "bus" / "mdev" / "devices" / U1
    paths = [dev, dev / "mdev_type", dev / "iommu_group", dev / "remove", bus, bus / "mdev_type"]
    before = _touch_all(paths)
    assert before[dev / "mdev_type"].endswith("/nvidia-231")
    # another process sees the same (the kernel's cache is the mount's, not this process's)
    assert subprocess.run([sys.executable, "-c", f"import os; os.stat({str(bus / 'mdev_type')!r})"]).returncode == 0
    sim.remove(U1)
    assert [p for p in paths if os.path.lexists(p)] == []
    # the same uuid, same parent, another type: the same path's link now names the new type
    sim.create(T4, "nvidia-232", U1)
    assert os.readlink(dev / "mdev_type").endswith("/nvidia-232")
    assert os.path.realpath(bus / "mdev_type").endswith("/nvidia-232")
    # ... and on the other GPU: the bus link re-points, the old parent's directory is gone
    sim.remove(U1)
    sim.create(T4B, "nvidia-222", U1)
    assert not os.path.lexists(dev)
    assert os.path.realpath(bus).endswith(f"/{T4B}/{U1}")
    assert os.readlink(bus / "mdev_type").endswith("/nvidia-222")


@pytest.mark.sim
def test_parents_that_leave_and_vfs_that_go_are_seen_at_once(sim_factory):
    sim = sim_factory("a16")
    pf = "0000:3d:00.0"
    vf = "0000:3d:00.4"
    types = sim.sys / "bus" / "pci" / "devices" / vf / "mdev_supported_types"
    bus_link = sim.sys / "class" / "mdev_bus" / vf
    names = sorted(os.listdir(types))
    _touch_all([types, bus_link] + [types / n / "name" for n in names])
    sim.unregister(vf)
    assert not os.path.lexists(types) and not os.path.lexists(bus_link)
    sim.register(vf)
    assert sorted(os.listdir(types)) == names and os.path.islink(bus_link)
    _touch_all([sim.sys / "bus" / "pci" / "devices" / vf, sim.sys / "bus" / "pci" / "devices" / pf / "virtfn0"])
    sim.set_numvfs(pf, 0)
    assert not os.path.lexists(sim.sys / "bus" / "pci" / "devices" / vf)
    assert not os.path.lexists(sim.sys / "bus" / "pci" / "devices" / pf / "virtfn0")


PROFILES = {name: load_profile(name) for name in ("t4x2", "samples", "a16", "h200")}
UUIDS = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(4)]  # few: re-used on other parents and types


def _shape(node):
    if isinstance(node, Link):
        return ("l", node.target)
    if isinstance(node, File):
        return ("f", node.mode)
    return ("d",)


def _step(m: Machine, kind: int, a: int, b: int) -> None:
    parents = [p.name for p in m.parents()]
    pfs = [f.name for f in m.functions.values() if f.model.sriov and f.physfn is None]
    vfio = [f.name for f in m.functions.values() if f.vendor_vfio and f.present]
    kind %= 6
    if kind == 0 and parents:
        parent = parents[a % len(parents)]
        types = m.functions[parent].model.types
        m.create(parent, types[b % len(types)].id, UUIDS[a % len(UUIDS)].encode())
    elif kind == 1 and m.instances:
        m.remove_now(sorted(m.instances)[a % len(m.instances)])
    elif kind == 2 and parents:
        (m.unregister if b % 2 else m.register)(parents[a % len(parents)])
    elif kind == 3 and pfs:
        pf = m.functions[pfs[a % len(pfs)]]
        m.set_numvfs(pf.name, str((b % 2) * pf.model.sriov.totalvfs).encode())
    elif kind == 4 and vfio:
        vf = vfio[a % len(vfio)]
        types = m.creatable(vf)
        m.set_vgpu_type(vf, (types[b % len(types)].id if types and b % 3 else "0").encode())
    elif kind == 5:
        m.reboot() if b % 2 else m.set_iommu(str(a % 2))


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(PROFILES)),
    steps=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1000), st.integers(0, 1000)), max_size=25),
)
def test_every_change_a_cache_could_keep_is_in_changed_paths(name, steps):
    """What changed_paths leaves out (paths in both trees) keeps its kind, its mode and its link target: the
    kernel's cached attributes and links of those stay true.  Fails if the simulator changes a file's mode, or a
    path's kind, in place."""
    m = Machine(PROFILES[name])
    for kind, a, b in steps:
        before = m.tree
        try:
            _step(m, kind, a, b)
        except SimError:
            pass
        after = m.tree
        skip = set(changed_paths(before, after))
        assert not (before.keys() - after.keys()) - skip
        for path in before.keys() & after.keys():
            if path not in skip:
                assert _shape(before[path]) == _shape(after[path]), path
