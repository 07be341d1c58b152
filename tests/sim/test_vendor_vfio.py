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


@pytest.mark.parametrize(
    "first,second,err",
    [
        (1105, 1114, 0),  # L40S-4Q then L40S-4A: 4 GB both, equal size -> allowed
        (1105, 1103, errno.EINVAL),  # 4Q then 2Q: sizes differ
        (None, 9999, errno.ENODEV),  # unknown type
    ],
)
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


MIGPF = "0000:ca:00.0"


def test_mig_gpu_offers_mig_types_only_inside_free_gpu_instances():
    m = machine("h200")
    mig_vf, vf2 = m.functions[MIGPF].vfs[:2]
    assert m.creatable(mig_vf) == []  # MIG mode, no GPU instances: nothing to create
    m.gpu_instance_control(f"{MIGPF} create 4g.71gb")
    m.gpu_instance_control(f"{MIGPF} create 2g.35gb")  # at 4 (0 and 2 overlap the 4g)
    m.gpu_instance_control(f"{MIGPF} create 1g.18gb")  # at 6
    assert [(g.start, g.size) for g in m.gis[MIGPF]] == [(0, 4), (4, 2), (6, 1)]
    assert [t.name for t in m.creatable(mig_vf)] == ["NVIDIA H200X-1-18C", "NVIDIA H200X-2-35C", "NVIDIA H200X-4-71C"]
    m.set_vgpu_type(mig_vf, b"1418")  # 4-71C takes the 4g.71gb instance
    assert m.vf_gi[mig_vf] == 1
    assert [t.name for t in m.creatable(vf2)] == ["NVIDIA H200X-1-18C", "NVIDIA H200X-2-35C"]
    with pytest.raises(SimError) as ei:  # no second free 4g instance
        m.set_vgpu_type(vf2, b"1418")
    assert ei.value.errno == errno.ENOSPC
    with pytest.raises(SimError) as ei:  # time-sliced types do not fit MIG mode
        m.set_vgpu_type(vf2, b"1400")
    assert ei.value.errno == errno.EINVAL


def test_gpu_instance_placements_and_refusals():
    m = machine("h200")
    for _ in range(3):
        m.gpu_instance_control(f"{MIGPF} create 2g.35gb")
    assert [(g.start, g.size) for g in m.gis[MIGPF]] == [(0, 2), (2, 2), (4, 2)]
    for text, err in [
        (f"{MIGPF} create 3g.71gb", errno.ENOSPC),  # 0 and 4 overlap
        (f"{MIGPF} create 1g.18gb 3", errno.ENOSPC),  # inside the second instance
        (f"{MIGPF} create 1g.18gb 7", errno.EINVAL),  # not a placement of 1g
        (f"{MIGPF} create 5g.99gb", errno.EINVAL),  # no such profile on H200
        ("0000:4a:00.0 create 1g.18gb", errno.EINVAL),  # not in MIG mode
        (f"{MIGPF} destroy 9", errno.ENOENT),
    ]:
        with pytest.raises(SimError) as ei:
            m.gpu_instance_control(text)
        assert ei.value.errno == err, text
    m.gpu_instance_control(f"{MIGPF} create 1g.18gb 6")
    assert (m.gis[MIGPF][-1].start, m.gis[MIGPF][-1].size) == (6, 1)
    vf = m.functions[MIGPF].vfs[0]
    m.set_vgpu_type(vf, b"1416")
    with pytest.raises(SimError) as ei:  # a vGPU uses it
        m.gpu_instance_control(f"{MIGPF} destroy {m.vf_gi[vf]}")
    assert ei.value.errno == errno.EBUSY


def test_mig_mode_refusals_and_reboot_resets_mig_state():
    m = machine("h200")
    tsl = "0000:4a:00.0"
    m.set_vgpu_type(m.functions[tsl].vfs[0], b"1400")
    with pytest.raises(SimError) as ei:  # a vGPU on the GPU
        m.set_mig_mode(f"{tsl} 1")
    assert ei.value.errno == errno.EBUSY and "vGPU on" in str(ei.value)
    m.set_vgpu_type(m.functions[tsl].vfs[0], b"0")
    m.gpu_process_control(f"{tsl} 4242 cuda-app")
    with pytest.raises(SimError) as ei:  # a process runs on it
        m.set_mig_mode(f"{tsl} 1")
    assert "4242" in str(ei.value)
    m.gpu_process_control(f"{tsl} clear")
    m.set_mig_mode(f"{tsl} 1")
    m.gpu_instance_control(f"{tsl} create 7g.141gb")
    with pytest.raises(SimError) as ei:  # GPU instances exist
        m.set_mig_mode(f"{tsl} 0")
    assert ei.value.errno == errno.EBUSY
    assert "0000:4a:00.0 1" in m.tree["/.vgpusim/mig"].content.decode()
    assert m.tree["/.vgpusim/gpu_instances"].content.decode() == "0000:4a:00.0 1 7g.141gb 0 8\n"
    l40s = machine("l40s")
    with pytest.raises(SimError) as ei:
        l40s.set_mig_mode("0000:41:00.0 1")
    assert ei.value.errno == errno.EOPNOTSUPP
    m.reboot()
    assert not m.functions[tsl].mig and m.functions[MIGPF].mig and m.gis == {}


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
