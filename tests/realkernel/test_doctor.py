"""``vgpuctl doctor`` on a true 6.1 sysfs (the mtty/mdpy/mbochs samples, no GPU, no hardware IOMMU under TCG) and a
real libvirtd with QEMU: what it says there is pinned here.  The output of each run is also written to
``tests/realkernel/.cache/doctor-*.txt`` for the closing note."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from . import guestlib as g

pytestmark = pytest.mark.realkernel
OUT = Path(os.environ.get("VGPUCTL_RK_CACHE", "/nonexistent"))


def doctor(*args, uri="none"):
    env = dict(os.environ, VGPUCTL_LIBVIRT_URI=uri)
    env.pop("VGPUCTL_JSON", None)
    p = subprocess.run(["vgpuctl", "doctor", *args], capture_output=True, text=True, env=env, timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def by_check(p):
    recs = json.loads(p.stdout)
    assert {r["schema"] for r in recs} == {"vgpuctl.doctor/v1"}
    assert not [r for r in recs if "check crashed" in r["seen"]], recs
    return {r["check"]: r for r in recs}


def keep(name, p):
    try:
        (OUT / f"doctor-{name}.txt").write_text(p.stdout + p.stderr)
    except OSError:
        pass


def test_doctor_on_the_sample_drivers():
    keep("mtty", doctor())
    r = by_check(doctor("--json"))
    assert (r["vfio-modules"]["status"], r["vfio-modules"]["seen"]) == ("ok", "vfio, vfio_iommu_type1 loaded")
    assert r["mdev-bus"]["status"] == "ok" and "3 parent(s) in sys/class/mdev_bus" in r["mdev-bus"]["seen"]
    assert r["parents"]["status"] == "ok" and r["parents"]["seen"].startswith("3 mdev parent(s): ")
    assert all(p in r["parents"]["seen"] for p in ("mtty", "mdpy", "mbochs"))
    # TCG has no IOMMU: no PCI group, and mdevs need none
    assert r["iommu"]["status"] == "ok" and "not needed" in r["iommu"]["seen"]
    for name in ("vgpu-manager", "nvidia-daemons", "nvml"):
        assert (r[name]["status"], r[name]["seen"]) == ("n/a", "no NVIDIA GPU on this host")
    assert r["libvirt"]["status"] == r["qemu"]["status"] == "n/a"


def test_doctor_sees_an_mdev_group_and_a_parent_gone():
    uuid = g.create_mdev("mtty", "mtty-1")
    assert g.iommu_group(uuid) is not None  # the kernel gave the mdev a group without any IOMMU
    r = by_check(doctor("--json", "--check", "iommu"))
    assert r["iommu"]["status"] == "ok" and "not needed" in r["iommu"]["seen"]
    g.remove_mdev(uuid)
    for name in ("mtty", "mdpy", "mbochs"):
        g.rmmod(name)
    p = doctor("--json", "--check", "mdev-bus", "--check", "parents")
    assert p.returncode == 16
    r = by_check(p)
    assert r["mdev-bus"]["status"] == "ok" and "0 parent(s)" in r["mdev-bus"]["seen"]  # the mdev core stays loaded
    assert r["parents"]["status"] == "fail" and "mdev_bus is empty" in r["parents"]["seen"]
    # the autouse fixture loads the samples again


def test_doctor_with_a_real_libvirtd(libvirtd):
    p = doctor("--check", "libvirt", "--check", "qemu", "--timeout", "120", uri=libvirtd)
    keep("libvirt", p)
    assert p.returncode == 0, p.stdout + p.stderr
    r = by_check(doctor("--json", "--check", "libvirt", "--check", "qemu", "--timeout", "120", uri=libvirtd))
    assert r["libvirt"]["status"] == "ok" and "libvirt 9.0.0" in r["libvirt"]["seen"]
    assert r["qemu"]["status"] == "ok" and "qemu-system-x86_64" in r["qemu"]["seen"]
    assert "no KVM" in r["qemu"]["seen"]  # TCG guest: libvirt offers domain type qemu only
