"""The mounted simulator, through ordinary file operations from this and other processes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from vgpuctl.sim import materialize
from vgpuctl.sim.control import write_attr

pytestmark = pytest.mark.sim

T4 = "0000:3b:00.0"
T4B = "0000:d8:00.0"
U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
U2 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"
U3 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1003"
SIM_CLI = [sys.executable, "-m", "vgpuctl.sim.cli"]


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def walk(sys_dir: Path):
    """{relative path: ("d",) | ("f", content, mode) | ("l", target)} of a tree, control dir left out."""
    out = {}
    for dirpath, dirnames, _filenames in os.walk(sys_dir):
        dirnames[:] = [d for d in dirnames if d != ".vgpusim" and not os.path.islink(os.path.join(dirpath, d))]
        rel = os.path.relpath(dirpath, sys_dir)
        out[rel] = ("d",)
        for name in os.listdir(dirpath):
            p = os.path.join(dirpath, name)
            if name == ".vgpusim":
                continue
            if os.path.islink(p):
                out[os.path.join(rel, name)] = ("l", os.readlink(p))
            elif os.path.isfile(p):
                mode = os.stat(p).st_mode & 0o777
                out[os.path.join(rel, name)] = ("f", Path(p).read_bytes() if mode & 0o444 else b"", mode)
    return out


def test_served_tree_equals_materialized_tree(sim_factory, tmp_path):
    sim = sim_factory("t4x2")
    sim.create(T4, "nvidia-231", U1)
    materialize("t4x2", tmp_path / "plain", instances=[(T4, "nvidia-231", U1)])
    assert walk(sim.sys) == walk(tmp_path / "plain" / "sys")


def test_layout_reads_like_sysfs(sim_factory):
    sim = sim_factory("t4x2")
    parent = sim.sys / "devices/pci0000:00" / T4
    assert os.path.realpath(sim.paths.mdev_bus / T4) == str(parent)
    assert os.path.realpath(parent / "driver") == str(sim.sys / "bus/pci/drivers/nvidia")
    assert os.path.realpath(sim.paths.pci_devices / T4B) == str(sim.sys / "devices/pci0000:00" / T4B)
    assert (parent / "vendor").read_text() == "0x10de\n"
    st = os.stat(parent / "vendor")
    assert st.st_size == 4096
    create = parent / "mdev_supported_types/nvidia-230/create"
    assert os.stat(create).st_mode & 0o777 == 0o200
    assert errno_of(os.open, create, os.O_RDONLY) == errno.EACCES  # even for root, as kernfs
    assert errno_of(os.open, parent / "vendor", os.O_WRONLY) == errno.EACCES
    assert sorted(os.listdir(sim.control_dir)) == [
        "README",
        "events",
        "fail_next",
        "gpu_instances",
        "gpu_processes",
        "heterogeneous",
        "iommu",
        "mig",
        "modules",
        "pid",
        "profile",
        "reboot",
        "register",
        "remove_block_seconds",
        "unregister",
    ]
    assert (sim.control_dir / "profile").read_text() == "t4x2\n"


def test_create_and_remove_through_the_filesystem(sim_factory):
    sim = sim_factory("t4x2")
    avail = sim.type_dir(T4, "nvidia-231") / "available_instances"
    fd = os.open(avail, os.O_RDONLY)  # an open attribute sees every change (direct_io, no cache)
    assert os.pread(fd, 4096, 0) == b"8\n"
    assert sim.create(T4, "nvidia-231", U1.upper()) == U1
    assert os.pread(fd, 4096, 0) == b"7\n"
    os.close(fd)
    assert sim.instances() == [U1]
    mdev = sim.paths.mdev_devices / U1
    parent = sim.sys / "devices/pci0000:00" / T4
    assert os.path.realpath(mdev) == str(parent / U1)
    assert os.path.realpath(mdev / "mdev_type") == str(parent / "mdev_supported_types/nvidia-231")
    group = sim.group_of(U1)
    assert os.path.realpath(mdev / "iommu_group") == str(sim.sys / "kernel/iommu_groups" / str(group))
    assert (sim.paths.dev_vfio / str(group)).is_file()
    assert (mdev / "uevent").read_text() == "DRIVER=nvidia-vgpu-vfio\n"  # 6.1: no MDEV_TYPE (real-kernel stage)
    sim.remove(U1, "0")
    assert sim.instances() == [U1]
    assert errno_of(sim.remove, U1, "please") == errno.EINVAL
    sim.remove(U1)
    assert sim.instances() == [] and not (sim.paths.dev_vfio / str(group)).exists()
    assert not (parent / U1).exists()
    assert [e.split()[1] for e in sim.events()] == ["add", "remove"]


def test_create_errnos(sim_factory):
    sim = sim_factory("t4x2")
    assert errno_of(sim.create, T4, "nvidia-234", "not-a-uuid") == errno.EINVAL
    create = sim.type_dir(T4, "nvidia-234") / "create"
    assert errno_of(write_attr, create, U1[:-1]) == errno.EINVAL  # 35 bytes
    assert errno_of(write_attr, create, U1 + "\n\n") == errno.EINVAL  # 38 bytes
    sim.create(T4, "nvidia-234", U1)
    assert errno_of(sim.create, T4B, "nvidia-234", U1) == errno.EEXIST  # any parent
    assert errno_of(sim.create, T4, "nvidia-234", U2) == errno.ENOSPC  # 16Q: one per GPU
    assert errno_of(sim.create, T4, "nvidia-230", U2) == errno.ENOSPC  # another type on a busy GPU
    assert sim.available(T4, "nvidia-230") == 0 and sim.available(T4B, "nvidia-230") == 16
    # 37 bytes: the kernel does not look at the 37th
    write_attr(sim.type_dir(T4B, "nvidia-230") / "create", U2 + "x")
    assert sim.instances() == [U1, U2]


def test_samples_errnos_and_shared_pools(sim_factory):
    sim = sim_factory("samples")
    assert (sim.available("mtty", "mtty-1"), sim.available("mtty", "mtty-2")) == (24, 12)
    sim.create("mtty", "mtty-2")
    assert (sim.available("mtty", "mtty-1"), sim.available("mtty", "mtty-2")) == (22, 11)
    for _ in range(4):
        sim.create("mdpy", "mdpy-hd")
    assert errno_of(sim.create, "mdpy", "mdpy-vga") == errno.EUSERS
    for _ in range(4):
        sim.create("mbochs", "mbochs-large")
    assert errno_of(sim.create, "mbochs", "mbochs-small") == errno.ENOSPC


def test_a16_per_vf_rule(sim_factory):
    sim = sim_factory("a16")
    pf = sim.sys / "devices/pci0000:00/0000:3d:00.0"
    vfs = [os.path.basename(os.readlink(pf / f"virtfn{k}")) for k in range(16)]
    assert os.path.realpath(sim.sys / "devices/pci0000:00" / vfs[0] / "physfn") == str(pf)
    for vf in vfs[:4]:
        sim.create(vf, "nvidia-703")  # A16-4Q: four fill the GPU
    assert sim.available(vfs[0], "nvidia-703") == 0
    assert [sim.available(vf, "nvidia-703") for vf in vfs[4:]] == [0] * 12
    assert errno_of(sim.create, vfs[4], "nvidia-701") == errno.ENOSPC
    assert sim.available("0000:3e:00.4", "nvidia-701") == 1


def test_fail_next_once(sim_factory):
    sim = sim_factory("mtty")
    sim.fail_next("create", "ENODEV")
    assert (sim.control_dir / "fail_next").read_text() == "create ENODEV\n"
    assert errno_of(sim.create, "mtty", "mtty-1", U1) == errno.ENODEV
    assert sim.instances() == []
    sim.create("mtty", "mtty-1", U1)
    sim.fail_next("remove", errno.EIO)
    assert errno_of(sim.remove, U1) == errno.EIO
    sim.remove(U1)
    assert errno_of(sim.fail_next, "create", "ENOTHING") == errno.EINVAL


def test_unregister_register_and_reboot(sim_factory):
    sim = sim_factory("samples")
    sim.create("mtty", "mtty-1", U1)
    sim.create("mdpy", "mdpy-vga", U2)
    sim.unregister("mtty")
    assert sorted(os.listdir(sim.paths.mdev_bus)) == ["mbochs", "mdpy"]
    assert sim.instances() == [U2]
    assert not (sim.sys / "devices/virtual/mtty").exists() or not os.listdir(sim.sys / "devices/virtual/mtty")
    sim.register("mtty")
    assert sim.available("mtty", "mtty-1") == 24
    assert errno_of(sim.unregister, "nosuch") == errno.ENODEV
    sim.reboot()
    assert sim.instances() == [] and os.listdir(sim.paths.dev_vfio) == []
    assert sorted(os.listdir(sim.paths.mdev_bus)) == ["mbochs", "mdpy", "mtty"]


def test_remove_of_held_device_blocks_until_bound_then_ebusy(sim_factory):
    sim = sim_factory("mtty")
    sim.set_remove_block_seconds(0.6)
    sim.create("mtty", "mtty-1", U1)
    with sim.hold(U1):
        t0 = time.monotonic()
        assert errno_of(sim.remove, U1) == errno.EBUSY
        elapsed = time.monotonic() - t0
    assert 0.55 <= elapsed < 5
    assert sim.instances() == [U1] and (sim.paths.mdev_devices / U1 / "remove").exists()
    sim.remove(U1)  # nobody holds it now
    assert sim.instances() == []


def test_remove_returns_when_holder_lets_go_and_others_go_on_meanwhile(sim_factory):
    sim = sim_factory("mtty")
    sim.create("mtty", "mtty-1", U1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); print(flush=True); time.sleep(1.0)",
            str(sim.paths.dev_vfio / str(sim.group_of(U1))),
        ],
        stdout=subprocess.PIPE,
    )
    holder.stdout.readline()  # it holds the group now
    done = []
    t0 = time.monotonic()
    th = threading.Thread(target=lambda: done.append(sim.remove(U1)))
    th.start()
    deadline = time.monotonic() + 3
    while (sim.paths.mdev_devices / U1).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not (sim.paths.mdev_devices / U1).exists()  # its bus link and remove are gone meanwhile
    assert not done and th.is_alive()  # blocked
    # half removed, as the real 6.1 kernel shows it (tests/realkernel/test_libvirt.py): off its type's list, only
    # the IOMMU group and vfio-dev left, its slot still taken and its uuid still in use
    assert not (sim.type_dir("mtty", "mtty-1") / "devices" / U1).exists()
    assert sorted(os.listdir(sim.parent_dir("mtty") / U1)) == ["iommu_group", "vfio-dev"]
    assert errno_of(sim.create, "mtty", "mtty-1", U1) == errno.EEXIST
    sim.create("mtty", "mtty-2", U2)  # the simulator is not stuck
    assert sim.available("mtty", "mtty-1") == 21
    th.join(5)
    elapsed = time.monotonic() - t0
    holder.wait()
    assert done == [None] and 0.8 <= elapsed < 5
    assert sim.instances() == [U2]


RACER = textwrap.dedent("""
    import errno, os, sys, time
    path, uuid, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
    fd = os.open(path, os.O_WRONLY)
    time.sleep(max(0.0, at - time.time()))
    try:
        os.write(fd, (uuid + "\\n").encode())
        print("ok")
    except OSError as e:
        print(errno.errorcode[e.errno])
""")


def test_two_processes_racing_for_the_last_slot(sim_factory):
    sim = sim_factory("t4x2")
    create = sim.type_dir(T4, "nvidia-233") / "create"  # T4-8Q: 2 per GPU
    sim.create(T4, "nvidia-233", U1)
    for _ in range(3):
        at = time.time() + 0.4
        procs = [
            subprocess.Popen([sys.executable, "-c", RACER, str(create), u, str(at)], stdout=subprocess.PIPE, text=True)
            for u in (U2, U3)
        ]
        results = sorted(p.communicate(timeout=10)[0].strip() for p in procs)
        assert results == ["ENOSPC", "ok"]
        assert len(sim.instances()) == 2
        winner = U2 if U2 in sim.instances() else U3
        sim.remove(winner)


def test_cli_start_status_stop(tmp_path):
    root = tmp_path / "r"

    def cli(*args, check_rc=0):
        r = subprocess.run(SIM_CLI + list(args), capture_output=True, text=True, timeout=30)
        assert r.returncode == check_rc, r.stderr
        return r

    try:
        cli("start", "mtty", str(root))
        for sub in ("dev/vfio", "etc", "var", "run"):
            assert (root / sub).is_dir()
        st = cli("status", str(root)).stdout
        assert "profile: mtty" in st and "pid:" in st
        assert (root / "sys/class/mdev_bus/mtty").exists()
        err = cli("start", "mtty", str(root), check_rc=1).stderr
        assert "already mounted" in err and len(err.strip().splitlines()) == 1
        cli("ctl", str(root), "fail-next", "create", "EIO")
        assert (
            errno_of(write_attr, root / "sys/class/mdev_bus/mtty/mdev_supported_types/mtty-1/create", U1) == errno.EIO
        )
        cli("ctl", str(root), "reboot")
        assert "reboot" in cli("ctl", str(root), "events").stdout
        assert (root / "run/vgpusim.log").stat().st_size > 0
    finally:
        cli("stop", str(root))
    assert not (root / "sys/class").exists()
    cli("stop", str(root))  # idempotent
    assert cli("status", str(root), check_rc=3).stdout.strip() == "not running"
    bad = cli("start", "nosuch", str(tmp_path / "r2"), check_rc=1).stderr
    assert "no such profile" in bad and len(bad.strip().splitlines()) == 1
    assert "t4x2" in cli("profiles").stdout


def test_stop_cleans_up_after_a_crashed_daemon(tmp_path):
    from vgpuctl.sim import SimHost
    from vgpuctl.sim.daemon import pid_alive, is_mounted

    link = tmp_path / "link"
    (tmp_path / "real").mkdir()
    link.symlink_to(tmp_path / "real")  # a root reached through a symlink
    sim = SimHost("mtty", link / "r").start()
    try:
        sim.create("mtty", "mtty-1", U1)
        os.kill(sim.pid, 9)
        deadline = time.monotonic() + 5
        while pid_alive(sim.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert errno_of(os.listdir, sim.sys) in (errno.ENOTCONN, errno.ECONNABORTED)  # the kernel says either
        assert is_mounted(sim.sys)
    finally:
        sim.stop()
    assert not is_mounted(sim.sys) and os.listdir(sim.paths.dev_vfio) == []
    with SimHost("mtty", link / "r") as again:  # and it starts again
        assert again.instances() == []


def test_many_blocked_removes_do_not_stall_other_operations(sim_factory):
    sim = sim_factory("mtty")
    uuids = [sim.create("mtty", "mtty-1") for _ in range(14)]  # more than libfuse's default 10 workers
    fds = [os.open(sim.paths.dev_vfio / str(sim.group_of(u)), os.O_RDONLY) for u in uuids]
    removers = [threading.Thread(target=sim.remove, args=(u,)) for u in uuids]
    try:
        for th in removers:
            th.start()
        time.sleep(0.3)
        seen = []
        reader = threading.Thread(target=lambda: seen.append(sim.available("mtty", "mtty-1")))
        reader.start()
        reader.join(5.0)
        assert seen == [10]
    finally:
        for fd in fds:
            os.close(fd)
        for th in removers:
            th.join(5)
    assert sim.instances() == []
