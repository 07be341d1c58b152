"""The in-memory backends (``vgpuctl.host.memory``) read what the sysfs backends read from the tree the same machine
renders, and refuse what the machine refuses with the sysfs backends' typed errors.  No root, no FUSE."""

from __future__ import annotations

import errno
import os

import pytest

from vgpuctl.errors import (
    AlreadyExists,
    DeviceInUse,
    HostIOError,
    NoCapacity,
    ParentGone,
    TypeConflict,
    UnknownInstance,
)
from vgpuctl.host import Host, TypeScope
from vgpuctl.host.memory import machine_at, memory_host
from vgpuctl.model import BackendKind
from vgpuctl.paths import HostPaths
from vgpuctl.sim import list_profiles
from vgpuctl.sim.daemon import write_tree

T4 = "0000:3b:00.0"
L40S_PF, L40S_VF0, L40S_VF1 = "0000:41:00.0", "0000:41:00.4", "0000:41:00.5"


def sysfs_host(machine, tmp_path, name):
    """The sysfs backends over ``machine``'s tree written out as plain files."""
    root = tmp_path / name
    write_tree(machine, root / "sys")
    return Host(HostPaths.from_root(str(root)))


def same_reads(host, machine, tmp_path, name):
    other = sysfs_host(machine, tmp_path, name)
    for scope in TypeScope:
        assert host.inventory(types=scope) == other.inventory(types=scope), scope
    assert host.hints() == other.hints() and host.sriov_disabled() == other.sriov_disabled()


def fill(host, limit=6):
    """Create on parents the first types they offer, as long as the host takes them (some refusals expected)."""
    made = 0
    inv = host.inventory()
    for t in inv.types:
        if made >= limit:
            break
        if t.available <= 0:
            continue
        try:
            ident = host.identity(parent=t.parent, requested=None, inventory=inv)
            host.create(parent=t.parent, type_id=t.type_id, uuid=ident, inventory=inv)
            made += 1
        except (NoCapacity, TypeConflict, AlreadyExists):
            pass
    return made


@pytest.mark.parametrize("profile", list_profiles())
def test_reads_equal_the_sysfs_backends_on_every_profile(profile, tmp_path):
    m = machine_at(profile, tmp_path / "mem")
    host = memory_host(m, tmp_path / "mem")
    same_reads(host, m, tmp_path, "empty")
    assert fill(host) > 0 or not host.inventory().types
    same_reads(host, m, tmp_path, "filled")


def test_mdev_refusals_are_the_sysfs_backends_typed_errors(tmp_path):
    m = machine_at("t4x2", tmp_path)
    host = memory_host(m, tmp_path)
    inv = host.inventory()
    u1, u2 = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
    made = host.create(parent=T4, type_id="nvidia-231", uuid=u1, inventory=inv)
    assert made.uuid == u1 and made.iommu_group is not None and host.exists(u1)
    with pytest.raises(AlreadyExists):
        host.create(parent=T4, type_id="nvidia-231", uuid=u1, inventory=inv)
    with pytest.raises(NoCapacity):  # a T4 runs one type at a time: the machine reports 0 available
        host.create(parent=T4, type_id="nvidia-222", uuid=u2, inventory=inv)
    m.add_fail_rule("create EIO")
    with pytest.raises(HostIOError) as e:
        host.create(parent=T4, type_id="nvidia-231", uuid=u2, inventory=inv)
    assert e.value.errno == errno.EIO and not host.exists(u2)
    m.unregister(T4)
    with pytest.raises(ParentGone):
        host.create(parent=T4, type_id="nvidia-231", uuid=u2, inventory=inv)
    with pytest.raises(UnknownInstance):  # lost with its parent
        host.remove(made)


def test_a_held_mdev_blocks_its_remove_then_ebusy(tmp_path):
    m = machine_at("mtty", tmp_path)
    host = memory_host(m, tmp_path)
    inv = host.inventory()
    t = next(t for t in inv.types if t.available)
    inst = host.create(parent=t.parent, type_id=t.type_id, uuid="33333333-3333-4333-8333-333333333333", inventory=inv)
    m.set_remove_block_seconds("0.05")
    with open(host.paths.dev_vfio / str(inst.iommu_group)):
        assert set(host.holders([inst])) == {inst.uuid}
        with pytest.raises(HostIOError) as e:
            host.remove(inst)
        assert e.value.errno == errno.EBUSY
        assert host.exists(inst.uuid)  # the remove was aborted: back on the bus
    host.remove(inst)
    assert not host.exists(inst.uuid) and not (host.paths.dev_vfio / str(inst.iommu_group)).exists()


def test_vendor_vfio_vf_rules(tmp_path):
    m = machine_at("l40s", tmp_path)
    host = memory_host(m, tmp_path)
    inv = host.inventory()
    offered = [t for t in inv.types_on(L40S_VF0)]
    assert offered and all(t.available == 1 for t in offered)
    first = offered[0]
    inst = host.create(
        parent=L40S_VF0,
        type_id=first.type_id,
        uuid=host.identity(parent=L40S_VF0, requested=None, inventory=inv),
        inventory=inv,
    )
    assert inst.uuid == inst.parent == L40S_VF0 and host.exists(L40S_VF0, BackendKind.NVIDIA_VF)
    after = host.inventory()
    assert [t.type_id for t in after.types_on(L40S_VF0)] == [first.type_id]  # a typed VF lists only its type
    with pytest.raises(AlreadyExists):  # never re-typed in place
        host.create(parent=L40S_VF0, type_id=first.type_id, uuid=L40S_VF0, inventory=after)
    vf1 = m.functions[L40S_VF1]
    with open(m.group_file(vf1.group)):  # a VM holds the untyped VF open
        assert host.busy(L40S_VF1, after)
        with pytest.raises(DeviceInUse):
            host.create(parent=L40S_VF1, type_id=first.type_id, uuid=L40S_VF1, inventory=after)
    assert not host.busy(L40S_VF1, after)
    host.remove(inst)
    assert not host.exists(L40S_VF0, BackendKind.NVIDIA_VF) and host.inventory().types_on(L40S_VF0) == tuple(offered)


def test_sriov_disabled_gpu_is_hinted(tmp_path):
    m = machine_at("l40s", tmp_path)
    m.set_numvfs(L40S_PF, b"0")
    host = memory_host(m, tmp_path)
    assert host.sriov_disabled() == [L40S_PF]
    assert len(host.hints()) == 1 and "sriov-manage" in host.hints()[0]
    assert not [p for p in host.inventory().parents if p.gpu == L40S_PF]


def test_the_machine_must_use_the_roots_dev_vfio(tmp_path):
    m = machine_at("mtty", tmp_path / "a")
    with pytest.raises(ValueError):
        memory_host(m, tmp_path / "b")
    assert os.path.isdir(tmp_path / "a" / "dev" / "vfio")
