"""The simulated host's rules, on the in-memory model (no FUSE): errnos, capacity, vendor rules, controls."""

from __future__ import annotations

import errno

import pytest

from vgpuctl.sim.machine import File, Machine, SimError, kstrtoul, parse_uuid_write, vf_address
from vgpuctl.sim.profile import load_profile

U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
U2 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"
U3 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1003"
T4 = "0000:3b:00.0"
T4B = "0000:d8:00.0"


def machine(name: str, tmp_path=None) -> Machine:
    return Machine(load_profile(name), dev_vfio=str(tmp_path) if tmp_path else None)


def uid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def err_of(fn, *args) -> int:
    with pytest.raises(SimError) as e:
        fn(*args)
    return e.value.errno


def avail(m: Machine, parent: str, type_id: str) -> int:
    node = m.tree[f"{m.functions[parent].devpath}/mdev_supported_types/{type_id}/available_instances"]
    assert isinstance(node, File)
    assert int(node.content) == m.available(parent, type_id)
    return int(node.content)


# --- parsing --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [U1, U1 + "\n", U1.upper(), U1.upper() + "\n"])
def test_uuid_accepted_36_or_37_bytes_uppercase_lowered(data):
    assert parse_uuid_write(data.encode()) == U1


@pytest.mark.parametrize(
    "data", ["", "\n", U1[:-1], U1 + "\n\n", U1.replace("-", "_"), "g" + U1[1:], U1 + "00", "{" + U1 + "}"]
)
def test_malformed_uuid_is_einval(data):
    assert err_of(parse_uuid_write, data.encode()) == errno.EINVAL


@pytest.mark.parametrize(
    "text,value", [("0", 0), ("1", 1), ("1\n", 1), ("0x10", 16), ("010", 8), ("+5", 5), ("00", 0), ("0X1f\n", 31)]
)
def test_kstrtoul(text, value):
    assert kstrtoul(text.encode()) == value


@pytest.mark.parametrize("text", ["", "\n", "-1", "x", "1 ", " 1", "1\n\n", "0x", "yes", "1.0", "08", "1_0"])
def test_kstrtoul_rejects(text):
    assert err_of(kstrtoul, text.encode()) == errno.EINVAL


def test_vf_addresses_follow_offset_and_stride():
    assert vf_address("0000:3d:00.0", 4, 1, 0) == "0000:3d:00.4"
    assert vf_address("0000:3d:00.0", 4, 1, 4) == "0000:3d:01.0"
    assert vf_address("0000:3d:00.0", 4, 1, 15) == "0000:3d:02.3"


# --- create / remove errnos ------------------------------------------------------------------------------------------
def test_create_lowercases_and_duplicate_on_any_parent_is_eexist(tmp_path):
    m = machine("t4x2", tmp_path)
    assert m.create(T4, "nvidia-231", (U1.upper() + "\n").encode()) == U1
    assert err_of(m.create, T4, "nvidia-231", U1.encode()) == errno.EEXIST
    assert err_of(m.create, T4B, "nvidia-231", U1.upper().encode()) == errno.EEXIST
    assert (tmp_path / str(m.instances[U1].group)).is_file()


def test_eexist_is_checked_before_capacity():
    m = machine("t4x2")
    m.create(T4, "nvidia-234", U1.encode())  # 16Q: the GPU is full
    assert err_of(m.create, T4, "nvidia-234", U1.encode()) == errno.EEXIST
    assert err_of(m.create, T4, "nvidia-234", U2.encode()) == errno.ENOSPC


def test_remove_zero_is_noop_other_integers_remove_garbage_einval(tmp_path):
    m = machine("mtty", tmp_path)
    m.create("mtty", "mtty-1", U1.encode())
    group = m.instances[U1].group
    assert m.begin_remove(U1, b"0\n") is None and U1 in m.instances
    assert err_of(m.begin_remove, U1, b"yes") == errno.EINVAL
    inst = m.begin_remove(U1, b"0x2\n")
    assert inst is not None
    assert f"/devices/virtual/mtty/mtty/{U1}/remove" not in m.tree  # as while the kernel waits
    assert f"/bus/mdev/devices/{U1}" not in m.tree
    m.finish_remove(inst)
    assert U1 not in m.instances and not (tmp_path / str(group)).exists()
    assert f"/devices/virtual/mtty/mtty/{U1}" not in m.tree


def test_aborted_remove_restores_the_device():
    m = machine("mtty")
    m.create("mtty", "mtty-1", U1.encode())
    inst = m.begin_remove(U1, b"1")
    m.abort_remove(inst)
    assert f"/devices/virtual/mtty/mtty/{U1}/remove" in m.tree
    assert f"/bus/mdev/devices/{U1}" in m.tree


def test_groups_are_fresh_above_pci_groups_and_lowest_free_is_reused():
    m = machine("t4x2")
    assert {m.functions[T4].group, m.functions[T4B].group} == {30, 31}
    m.create(T4, "nvidia-230", U1.encode())
    m.create(T4, "nvidia-230", U2.encode())
    assert (m.instances[U1].group, m.instances[U2].group) == (32, 33)
    m.remove_now(U1)
    m.create(T4, "nvidia-230", U3.encode())
    assert m.instances[U3].group == 32  # the kernel's IDA hands out the lowest free number


# --- capacity ---------------------------------------------------------------------------------------------------------
def test_mtty_ports_are_shared_between_types():
    m = machine("samples")
    assert (avail(m, "mtty", "mtty-1"), avail(m, "mtty", "mtty-2")) == (24, 12)
    m.create("mtty", "mtty-2", U1.encode())
    assert (avail(m, "mtty", "mtty-1"), avail(m, "mtty", "mtty-2")) == (22, 11)
    m.create("mtty", "mtty-1", U2.encode())
    assert (avail(m, "mtty", "mtty-1"), avail(m, "mtty", "mtty-2")) == (21, 10)
    for n in range(10):
        m.create("mtty", "mtty-2", uid(n).encode())
    assert (avail(m, "mtty", "mtty-1"), avail(m, "mtty", "mtty-2")) == (1, 0)
    assert err_of(m.create, "mtty", "mtty-2", U3.encode()) == errno.ENOSPC
    m.create("mtty", "mtty-1", U3.encode())
    assert err_of(m.create, "mtty", "mtty-1", uid(99).encode()) == errno.ENOSPC


def test_mdpy_counter_is_shared_and_full_is_eusers():
    m = machine("samples")
    assert [avail(m, "mdpy", t) for t in ("mdpy-vga", "mdpy-xga", "mdpy-hd")] == [4, 4, 4]
    for n, t in enumerate(("mdpy-vga", "mdpy-xga", "mdpy-hd", "mdpy-vga")):
        m.create("mdpy", t, uid(n).encode())
    assert [avail(m, "mdpy", t) for t in ("mdpy-vga", "mdpy-xga", "mdpy-hd")] == [0, 0, 0]
    assert err_of(m.create, "mdpy", "mdpy-hd", U1.encode()) == errno.EUSERS


def test_mbochs_memory_pool():
    m = machine("samples")
    assert [avail(m, "mbochs", t) for t in ("mbochs-small", "mbochs-medium", "mbochs-large")] == [64, 16, 4]
    m.create("mbochs", "mbochs-large", U1.encode())
    assert [avail(m, "mbochs", t) for t in ("mbochs-small", "mbochs-medium", "mbochs-large")] == [48, 12, 3]
    for n in range(3):
        m.create("mbochs", "mbochs-large", uid(n).encode())
    assert err_of(m.create, "mbochs", "mbochs-small", U2.encode()) == errno.ENOSPC


def test_gvtg_pools():
    m = machine("gvtg")
    igpu = "0000:00:02.0"
    types = ("i915-GVTg_V5_8", "i915-GVTg_V5_4", "i915-GVTg_V5_2", "i915-GVTg_V5_1")
    assert [avail(m, igpu, t) for t in types] == [7, 5, 2, 1]
    m.create(igpu, "i915-GVTg_V5_1", U1.encode())
    assert [avail(m, igpu, t) for t in types] == [1, 1, 0, 0]  # high GM left: 640 MB
    assert err_of(m.create, igpu, "i915-GVTg_V5_2", U2.encode()) == errno.ENOSPC


def test_nvidia_one_type_per_gpu_and_max_instance():
    m = machine("t4x2")
    assert avail(m, T4, "nvidia-230") == 16 and avail(m, T4, "nvidia-232") == 4
    m.create(T4, "nvidia-232", U1.encode())  # T4-4Q
    assert avail(m, T4, "nvidia-232") == 3
    assert all(avail(m, T4, t.id) == 0 for t in m.functions[T4].model.types if t.id != "nvidia-232")
    assert avail(m, T4B, "nvidia-230") == 16  # the other GPU is untouched
    assert err_of(m.create, T4, "nvidia-230", U2.encode()) == errno.ENOSPC
    for n in range(3):
        m.create(T4, "nvidia-232", uid(n).encode())
    assert avail(m, T4, "nvidia-232") == 0
    assert err_of(m.create, T4, "nvidia-232", U2.encode()) == errno.ENOSPC
    for n in range(3):
        m.remove_now(uid(n))
    m.remove_now(U1)
    assert avail(m, T4, "nvidia-230") == 16


def test_a16_one_vgpu_per_vf_counted_per_physical_gpu():
    m = machine("a16")
    pf = "0000:3d:00.0"
    vfs = m.functions[pf].vfs
    assert len(vfs) == 16 and pf not in [p.name for p in m.parents()]
    assert all(avail(m, vf, "nvidia-703") == 1 for vf in vfs)
    q4 = "nvidia-703"  # A16-4Q: 4 per GPU
    for n in range(4):
        m.create(vfs[n], q4, uid(n).encode())
    assert avail(m, vfs[0], q4) == 0 and avail(m, vfs[0], "nvidia-701") == 0  # VF busy
    assert all(avail(m, vf, q4) == 0 for vf in vfs[4:])  # GPU full for 4Q
    assert all(avail(m, vf, "nvidia-701") == 0 for vf in vfs[4:])  # homogeneous across the PF's VFs
    assert err_of(m.create, vfs[5], q4, U1.encode()) == errno.ENOSPC
    assert err_of(m.create, vfs[0], q4, U1.encode()) == errno.ENOSPC
    other_gpu = m.functions["0000:3e:00.0"].vfs[0]
    assert avail(m, other_gpu, "nvidia-701") == 1
    for n in range(4):
        m.remove_now(uid(n))
    for n, vf in enumerate(vfs):
        m.create(vf, "nvidia-701", uid(n).encode())  # 16 x 1Q fill the GPU, one per VF
    assert all(avail(m, vf, "nvidia-701") == 0 for vf in vfs)


# --- controls -----------------------------------------------------------------------------------------------------
def test_fail_next_fires_once_on_matching_path():
    m = machine("mtty")
    m.add_fail_rule("create ENODEV")
    m.add_fail_rule("mtty-2/create 5")
    assert "create ENODEV\nmtty-2/create EIO\n" == m.tree["/.vgpusim/fail_next"].content.decode()
    assert err_of(m.take_failure, "/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/create") == errno.ENODEV
    assert err_of(m.take_failure, "/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/create") == errno.EIO
    m.take_failure("/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/create")  # nothing left
    m.add_fail_rule("remove EIO")
    m.take_failure("/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/create")  # does not match
    m.add_fail_rule("clear")
    assert m.fail_rules == []
    assert err_of(m.add_fail_rule, "create ENOTANERRNO") == errno.EINVAL
    assert err_of(m.add_fail_rule, "create") == errno.EINVAL


def test_unregister_loses_instances_and_register_brings_parent_back_empty(tmp_path):
    m = machine("samples", tmp_path)
    m.create("mtty", "mtty-1", U1.encode())
    m.create("mdpy", "mdpy-vga", U2.encode())
    m.unregister("mtty")
    assert "/class/mdev_bus/mtty" not in m.tree and "/devices/virtual/mtty/mtty" not in m.tree
    assert U1 not in m.instances and U2 in m.instances
    assert sorted(p.name for p in m.parents()) == ["mbochs", "mdpy"]
    assert err_of(m.create, "mtty", "mtty-1", U3.encode()) == errno.ENODEV
    m.register("mtty")
    assert "/class/mdev_bus/mtty" in m.tree and avail(m, "mtty", "mtty-1") == 24
    assert [e.split()[1:3] for e in m.events][-3:] == [
        ["remove", f"/devices/virtual/mtty/mtty/{U1}"],
        ["change", "/devices/virtual/mtty/mtty"],
        ["change", "/devices/virtual/mtty/mtty"],
    ]
    assert err_of(m.unregister, "nosuch") == errno.ENODEV


def test_unregister_pci_parent_keeps_the_function_and_pf_means_its_vfs():
    m = machine("mixed")
    m.unregister("0000:3b:00.0")
    assert "/devices/pci0000:00/0000:3b:00.0/vendor" in m.tree
    assert "/devices/pci0000:00/0000:3b:00.0/mdev_supported_types" not in m.tree
    m.unregister("0000:86:00.0")  # an A16 PF: all 16 VF parents go
    names = {p.name for p in m.parents()}
    assert not any(n.startswith("0000:86:") for n in names) and "0000:87:00.4" in names


def test_reboot_clears_everything(tmp_path):
    m = machine("t4x2", tmp_path)
    m.create(T4, "nvidia-230", U1.encode())
    m.unregister(T4B)
    m.add_fail_rule("create EIO")
    m.reboot()
    assert not m.instances and len(m.parents()) == 2 and not m.fail_rules
    assert not list(tmp_path.iterdir())
    m.create(T4, "nvidia-230", U1.encode())
    assert m.instances[U1].group == 32


def test_remove_block_seconds_validation():
    m = machine("mtty")
    m.set_remove_block_seconds("0.5\n")
    assert m.remove_block_seconds == 0.5
    assert err_of(m.set_remove_block_seconds, "-1") == errno.EINVAL
    assert err_of(m.set_remove_block_seconds, "soon") == errno.EINVAL
