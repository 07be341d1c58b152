"""libvirt's node device names in ``vgpuctl list``: read from a real libvirt (its test driver, with an mdev node
device as libvirt 9.0 names it), bounded when libvirtd does not answer, unknown when it cannot be reached."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from vgpuctl.errors import LibvirtConnectError

libvirt = pytest.importorskip("libvirt")

from vgpuctl.virt import mdev_nodedevs, nodedev_name  # noqa: E402

UA = "aaaaaaaa-0000-4000-8000-000000000001"
GPU = "0000:3b:00.0"

NODE_XML = """<node>
  <device>
    <name>{name}</name>
    <path>/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/{uuid}</path>
    <parent>computer</parent>
    <driver><name>nvidia-vgpu-vfio</name></driver>
    <capability type='mdev'>
      <type id='nvidia-231'/>
      <uuid>{uuid}</uuid>
      <iommuGroup number='40'/>
    </capability>
  </device>
</node>
"""


def test_nodedev_name_follows_libvirt():
    assert nodedev_name(UA, GPU) == "mdev_aaaaaaaa_0000_4000_8000_000000000001_0000_3b_00_0"
    assert nodedev_name(UA, "mtty") == "mdev_aaaaaaaa_0000_4000_8000_000000000001_mtty"


def test_mdev_nodedevs_from_a_real_libvirt(tmp_path):
    xml = tmp_path / "node.xml"
    xml.write_text(NODE_XML.format(name=nodedev_name(UA, GPU), uuid=UA))
    found = mdev_nodedevs(f"test://{xml}")
    assert list(found) == [UA] and found[UA].name == nodedev_name(UA, GPU)


def test_unreachable_libvirt_raises_typed(tmp_path):
    with pytest.raises(LibvirtConnectError):
        mdev_nodedevs(f"qemu:///system?socket={tmp_path}/none")


def test_a_libvirtd_that_never_answers_is_bounded(tmp_path):
    path = str(tmp_path / "sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)  # accepts connections (the kernel does), never speaks
    try:
        t0 = time.monotonic()
        with pytest.raises(LibvirtConnectError) as e:
            mdev_nodedevs(f"qemu:///system?socket={path}", timeout=1.0)
        assert time.monotonic() - t0 < 10 and "within 1 s" in str(e.value)
    finally:
        srv.close()


@pytest.mark.sim
def test_list_shows_the_nodedev_libvirt_knows(sim_factory, tmp_path):
    sim = sim_factory("t4x2")
    sim.create(GPU, "nvidia-231", UA)
    other = sim.create(GPU, "nvidia-231")
    xml = tmp_path / "node.xml"
    xml.write_text(NODE_XML.format(name=nodedev_name(UA, GPU), uuid=UA))
    env = dict(os.environ, VGPUCTL_ROOT=str(sim.root), VGPUCTL_LIBVIRT_URI=f"test://{xml}", VGPUCTL_NVML="off")
    r = subprocess.run(
        [sys.executable, "-m", "vgpuctl.cli", "list", "--json"], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    recs = {x["uuid"]: x for x in json.loads(r.stdout)}
    assert (recs[UA]["nodedev"], recs[UA]["nodedev_known"]) == (nodedev_name(UA, GPU), True)
    assert (recs[other]["nodedev"], recs[other]["nodedev_known"]) == (None, False)
    table = subprocess.run(
        [sys.executable, "-m", "vgpuctl.cli", "list"], capture_output=True, text=True, env=env, timeout=60
    ).stdout
    assert "NODEDEV" in table and nodedev_name(UA, GPU) in table
    off = subprocess.run(
        [sys.executable, "-m", "vgpuctl.cli", "--connect", "none", "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert all(x["nodedev_known"] is None for x in json.loads(off.stdout))
