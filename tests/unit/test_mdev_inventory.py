"""The mdev backend's readers against a static tmp tree (no FUSE, no kernel)."""

import os
import subprocess
import sys
import time

import pytest

from vgpuctl.errors import BadParentName, UnknownParent
from vgpuctl.host import Host
from vgpuctl.model import BackendKind

U1 = "11111111-2222-3333-4444-555555555555"
NV = "num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=5120x2880, max_instance=8"
GVT = "low_gm_size: 128MB\nhigh_gm_size: 384MB\nfence: 4\nresolution: 1920x1200\nweight: 4"


@pytest.fixture
def host(tree):
    gpu = tree.pci_parent("0000:3b:00.0", numa="1")
    tree.mdev_type(gpu, "nvidia-223", available=0, name="GRID T4-1B", description=NV.replace("2048M", "1024M"))
    tree.mdev_type(gpu, "nvidia-231", available=7, name="GRID T4-2Q", description=NV)
    tree.instance(gpu, "nvidia-231", U1)
    vf = tree.pci_parent("0000:41:00.4", device="0x25b6", numa="-1", physfn="0000:41:00.0")
    tree.mdev_type(vf, "nvidia-700", available=1, name="NVIDIA A16-4Q", description=NV)
    igpu = tree.pci_parent("0000:00:02.0", vendor="0x8086", device="0x3e92", driver="i915")
    tree.mdev_type(igpu, "i915-GVTg_V5_4", available=2, name="GVTg_V5_4", description=GVT)
    mtty = tree.virtual_parent("mtty")
    tree.mdev_type(mtty, "mtty-1", available=24, name="Single port serial", api="vfio-pci")
    return Host.at(str(tree.root))


def test_parents(host):
    inv = host.inventory()
    assert [p.name for p in inv.parents] == ["0000:00:02.0", "0000:3b:00.0", "0000:41:00.4", "mtty"]
    gpu = inv.parent("0000:3b:00.0")
    assert (gpu.vendor_id, gpu.device_id, gpu.numa_node, gpu.driver, gpu.pci) == ("0x10de", "0x1eb8", 1, "nvidia", True)
    assert gpu.backend is BackendKind.MDEV
    vf = inv.parent("0000:41:00.4")
    assert vf.is_vf and vf.gpu == "0000:41:00.0" and vf.numa_node is None
    mtty = inv.parent("mtty")
    assert (mtty.pci, mtty.vendor_id, mtty.driver, mtty.gpu) == (False, None, None, "mtty")


def test_types_parsed(host):
    inv = host.inventory()
    q = inv.type_on("0000:3b:00.0", "nvidia-231")
    assert (q.name, q.available, q.framebuffer_mib, q.max_instance, q.series, q.profile) == (
        "GRID T4-2Q",
        7,
        2048,
        8,
        "Q",
        "T4-2Q",
    )
    g = inv.type_on("0000:00:02.0", "i915-GVTg_V5_4")
    assert (g.weight, g.framebuffer_mib, g.max_resolution) == (4, 512, "1920x1200")
    m = inv.type_on("mtty", "mtty-1")
    assert (m.description, m.fields, m.available) == ("", (), 24)


def test_instances_resolved_through_links(host):
    inv = host.inventory()
    (i,) = inv.instances
    assert (i.uuid, i.parent, i.type_id, i.driver) == (U1, "0000:3b:00.0", "nvidia-231", "vfio_mdev")
    assert i.iommu_group == 101


def test_resolve_parent_case_insensitive_and_strict(host):
    inv = host.inventory()
    assert host.resolve_parent("0000:3B:00.0", inv) == "0000:3b:00.0"
    assert host.resolve_parent("3b:00.0", inv) == "0000:3b:00.0"
    assert host.resolve_parent("MTTY", inv) == "mtty"
    with pytest.raises(BadParentName):
        host.resolve_parent("../../mtty", inv)
    with pytest.raises(UnknownParent) as e:
        host.resolve_parent("0000:99:00.0", inv)
    assert "mtty" in e.value.known


def test_holders_found_by_fd_scan(host, tree):
    inv = host.inventory()
    (i,) = inv.instances
    assert host.holders(inv.instances) == {}
    path = os.path.join(str(tree.root), "dev", "vfio", str(i.iommu_group))
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; f = open({path!r}); print('ok', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"ok"
        held = host.holders(inv.instances)
        assert [h.pid for h in held[U1]] == [holder.pid]
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while host.holders(inv.instances) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.holders(inv.instances) == {}


def test_empty_host(tmp_path):
    inv = Host.at(str(tmp_path)).inventory()
    assert (inv.parents, inv.types, inv.instances) == ((), (), ())
