"""The simulator's NVIDIA vendor-VFIO layout (h200, l40s): creatable lists, errnos, rules; and vgpuctl on it."""
from __future__ import annotations

import errno

import pytest

from vgpuctl.host import Host
from vgpuctl.host.nvidia_vf import parse_creatable
from vgpuctl.lifecycle import Lifecycle
from vgpuctl.sim.machine import Machine, SimError
from vgpuctl.sim.profile import load_profile

GPU = "0000:41:00.0"
VF, VF2 = "0000:41:00.4", "0000:41:00.5"


def machine(name="l40s"):
    return Machine(load_profile(name))


def test_layout_and_creatable_format():
    m = machine()
    tree = m.tree
    nv = f"/devices/pci0000:00/{VF}/nvidia"
    for attr in ("creatable_vgpu_types", "current_vgpu_type", "vgpu_params", "placement_id", "gpu_instance_id"):
        assert f"{nv}/{attr}" in tree
    text = tree[f"{nv}/creatable_vgpu_types"].content.decode()
    assert text.splitlines()[0] == "ID    : vGPU Name"
    assert (1105, "NVIDIA L40S-4Q") in parse_creatable(text)
    assert f"/class/mdev_bus/{VF}" not in tree  # no mdev on this path


@pytest.mark.parametrize("first,second,err", [
    (1105, 1114, 0),  # L40S-4Q then L40S-4A: 4 GB both, equal size -> allowed
    (1105, 1103, errno.EINVAL),  # 4Q then 2Q: sizes differ
    (None, 9999, errno.ENODEV),  # unknown type
])
def test_equal_size_rule_and_errnos(first, second, err):
    m = machine()
    if first:
        m.set_vgpu_type(VF, str(first).encode())
    if err:
        with pytest.raises(SimError) as ei:
            m.set_vgpu_type(VF2, str(second).encode())
        assert ei.value.errno == err
    else:
        m.set_vgpu_type(VF2, str(second).encode())


def test_full_gpu_is_enospc_and_typed_vf_is_ebusy():
    m = machine()
    vfs = m.functions[GPU].vfs
    for vf in vfs[:2]:
        m.set_vgpu_type(vf, b"1110")  # L40S-24Q, max 2
    with pytest.raises(SimError) as ei:
        m.set_vgpu_type(vfs[2], b"1110")
    assert ei.value.errno == errno.ENOSPC
    with pytest.raises(SimError) as ei:
        m.set_vgpu_type(vfs[0], b"1110")
    assert ei.value.errno == errno.EBUSY
    assert m.tree[f"/devices/pci0000:00/{vfs[0]}/nvidia/creatable_vgpu_types"].content == b""
    m.set_vgpu_type(vfs[0], b"0")
    m.set_vgpu_type(vfs[2], b"1110")


def test_mig_gpu_offers_only_mig_types():
    m = machine("h200")
    mig_vf = m.functions["0000:ca:00.0"].vfs[0]
    names = [t.name for t in m.creatable(mig_vf)]
    assert names and all(n.count("-") == 2 for n in names)
    m.set_vgpu_type(mig_vf, b"1418")  # 4-71C: 4 slices
    assert [t.name for t in m.creatable(m.functions["0000:ca:00.0"].vfs[1])] == [
        "NVIDIA H200X-1-18C", "NVIDIA H200X-1-35C", "NVIDIA H200X-2-35C", "NVIDIA H200X-3-71C"]


@pytest.mark.sim
def test_vgpuctl_create_destroy_through_fuse(sim_factory):
    sim = sim_factory("l40s")
    lc = Lifecycle(Host(sim.paths))
    inst = lc.create(parent=GPU, type_id="L40S-4Q")
    assert (inst.uuid, inst.parent, inst.type_id) == (VF, VF, "nvidia-1105")
    assert sim.vgpu_type(VF) == 1105
    with sim.hold_vf(VF2):  # a VF some VM holds is skipped
        assert lc.create(parent=GPU, type_id="L40S-4Q").uuid == "0000:41:00.6"
    lc.destroy(VF)
    assert sim.vgpu_type(VF) == 0
    with sim.hold_vf("0000:41:00.6"):
        from vgpuctl.errors import DeviceInUse

        with pytest.raises(DeviceInUse):
            lc.destroy("0000:41:00.6")
    sim.fail_next("current_vgpu_type", "ENOSPC")
    from vgpuctl.errors import NoCapacity

    with pytest.raises(NoCapacity):
        lc.create(parent=VF, type_id="L40S-4Q")
    assert sim.vgpu_type(VF) == 0 and lc.store.load().pending == ()
