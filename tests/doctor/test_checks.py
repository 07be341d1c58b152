"""Every doctor check, ok and broken, on the simulated t4x2, h200 and a16 hosts (each break is a simulator control or
what an operator would do to the root: a disabled unit, a world-writable state file, a broken desired state)."""

from __future__ import annotations

import os
import subprocess

import pytest

from vgpuctl.doctor import Status

from .conftest import one, results

pytestmark = pytest.mark.sim
T4, T4B = "0000:3b:00.0", "0000:d8:00.0"
H200, MIG = "0000:4a:00.0", "0000:ca:00.0"
A16 = "0000:3d:00.0"
OK, WARN, FAIL, NA = Status.OK, Status.WARN, Status.FAIL, Status.NA


# --- vfio-modules ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["t4x2", "h200", "a16"])
def test_vfio_modules(host, request):
    sim = request.getfixturevalue(host)
    assert one(sim, "vfio-modules").status is OK
    sim.unload_module("vfio_iommu_type1")
    r = one(sim, "vfio-modules")
    assert r.status is FAIL and "vfio_iommu_type1" in r.seen and r.fix.startswith("modprobe -a vfio_iommu_type1")


# --- mdev-bus, parents ----------------------------------------------------------------------------------------------
def test_mdev_bus_ok_where_mdev_and_na_on_vendor_vfio(t4x2, a16, h200):
    assert one(t4x2, "mdev-bus").status is OK and one(a16, "mdev-bus").status is OK
    r = one(h200, "mdev-bus")
    assert r.status is NA and "vendor-VFIO" in r.seen
    assert not (h200.paths.sys / "module" / "mdev").exists()


@pytest.mark.parametrize("host", ["t4x2", "a16"])
def test_mdev_core_unloaded(host, request):
    sim = request.getfixturevalue(host)
    sim.unload_module("mdev")
    assert not sim.paths.mdev_bus.exists() and not (sim.paths.sys / "module" / "mdev").exists()
    r = one(sim, "mdev-bus")
    assert r.status is FAIL and "sys/module/mdev" in r.seen and "modprobe mdev" in r.fix
    assert one(sim, "parents").status is FAIL
    sim.load_module("mdev")  # the vendor module went with it: still no parents
    assert one(sim, "mdev-bus").status is OK and one(sim, "parents").status is FAIL
    sim.load_module("nvidia_vgpu_vfio")
    assert one(sim, "parents").status is OK


def test_parents(t4x2, h200):
    r = one(t4x2, "parents")
    assert r.status is OK and T4 in r.seen and T4B in r.seen
    assert one(h200, "parents").seen == "64 NVIDIA vendor-VFIO VF(s)"
    t4x2.unload_module("nvidia_vgpu_vfio")
    r = one(t4x2, "parents")
    assert r.status is FAIL and "mdev_bus is empty" in r.seen


# --- iommu ----------------------------------------------------------------------------------------------------------
def test_iommu_needed_for_vendor_vfio_vfs(h200):
    assert one(h200, "iommu").status is OK
    h200.set_iommu(False)
    assert not (h200.paths.pci_devices / "0000:4a:00.4" / "iommu_group").exists()
    r = one(h200, "iommu")
    assert r.status is FAIL and "64 of 64 vendor-VFIO VFs have no IOMMU group" in r.seen
    assert "intel_iommu=on" in r.fix


@pytest.mark.parametrize("host", ["t4x2", "a16"])
def test_iommu_not_needed_for_mdevs(host, request):
    sim = request.getfixturevalue(host)
    assert "hardware IOMMU on" in one(sim, "iommu").seen
    sim.set_iommu(False)
    r = one(sim, "iommu")
    assert r.status is OK and "not needed" in r.seen


def test_mdevs_get_iommu_groups_without_a_hardware_iommu(t4x2):
    t4x2.set_iommu(False)
    u = t4x2.create(T4, "nvidia-231")
    assert t4x2.group_of(u) and (t4x2.paths.dev_vfio / str(t4x2.group_of(u))).exists()


# --- vgpu-manager (and SR-IOV) --------------------------------------------------------------------------------------
def test_vgpu_manager_ok_on_each_kind(t4x2, h200, a16):
    t4 = results(t4x2, "vgpu-manager")
    assert [(r.subject, r.status) for r in t4] == [(T4, OK), (T4B, OK)]
    assert "on the GPU" in t4[0].seen and "GRID T4-" in t4[0].seen
    h = results(h200, "vgpu-manager")
    assert [r.status for r in h] == [OK, OK] and "32 VF(s) with nvidia/" in h[0].seen
    a = results(a16, "vgpu-manager")
    assert len(a) == 4 and all(r.status is OK for r in a) and "on each of 16 VF(s)" in a[0].seen


@pytest.mark.parametrize("host,gpu,vf", [("h200", H200, "0000:4a:00.4"), ("a16", A16, "0000:3d:00.4")])
def test_sriov_disabled_says_sriov_manage(host, gpu, vf, request):
    sim = request.getfixturevalue(host)
    sim.set_numvfs(gpu, 0)
    assert not (sim.paths.pci_devices / vf).exists()
    r = next(r for r in results(sim, "vgpu-manager") if r.subject == gpu)
    assert r.status is FAIL and "sriov_numvfs 0 of" in r.seen
    assert r.fix == f"/usr/lib/nvidia/sriov-manage -e {gpu} (needed after every boot)"
    sim.set_numvfs(gpu, 4)  # as sriov-manage -e does it: through the PCI core's sriov_numvfs
    r = next(r for r in results(sim, "vgpu-manager") if r.subject == gpu)
    assert r.status is OK and "4 of" in r.seen


def test_vgpu_manager_gone(t4x2):
    t4x2.unload_module("nvidia_vgpu_vfio")
    rs = results(t4x2, "vgpu-manager")
    assert [r.status for r in rs] == [FAIL, FAIL] and "no vGPU types" in rs[0].seen


def test_vgpu_manager_na_without_nvidia(tmp_path):
    from vgpuctl.doctor import Context, run_checks
    from vgpuctl.sim import materialize
    from vgpuctl.paths import HostPaths

    materialize("gvtg", tmp_path)
    ctx = Context(paths=HostPaths.from_root(tmp_path), connect="none")
    assert [str(r.status) for r in run_checks(ctx, ["vgpu-manager", "nvidia-daemons", "nvml"])] == ["n/a"] * 3


# --- nvidia-daemons -------------------------------------------------------------------------------------------------
def systemctl(sim, *args):
    subprocess.run(["systemctl", f"--root={sim.root}", *args], check=True, capture_output=True, timeout=60)


needs_systemctl = pytest.mark.skipif(
    not os.path.exists("/usr/bin/systemctl") and not os.path.exists("/bin/systemctl"),
    reason="systemctl is not installed",
)


@needs_systemctl
def test_nvidia_daemons_enabled_and_disabled(t4x2, h200):
    rs = results(t4x2, "nvidia-daemons")
    assert [(r.subject, r.status) for r in rs] == [("nvidia-vgpu-mgr.service", OK), ("nvidia-vgpud.service", OK)]
    assert "enabled" in rs[0].seen
    assert [r.status for r in results(h200, "nvidia-daemons")] == [OK, NA]  # vGPU 17: no nvidia-vgpud
    systemctl(t4x2, "disable", "nvidia-vgpu-mgr.service")
    r = results(t4x2, "nvidia-daemons")[0]
    assert (
        r.status is FAIL and r.seen.startswith("disabled") and r.fix == "systemctl enable --now nvidia-vgpu-mgr.service"
    )
    systemctl(t4x2, "disable", "nvidia-vgpud.service")
    assert results(t4x2, "nvidia-daemons")[1].status is WARN
    (t4x2.root / "usr/lib/systemd/system/nvidia-vgpu-mgr.service").unlink()
    r = results(t4x2, "nvidia-daemons")[0]
    assert r.status is FAIL and r.seen == "not installed"


def test_nvidia_daemons_without_systemctl(t4x2, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no systemctl anywhere on it
    assert all(r.status is NA and "no systemctl" in r.seen for r in results(t4x2, "nvidia-daemons"))


# --- state, journal, lock -------------------------------------------------------------------------------------------
def _state(sim, **kw):
    from vgpuctl.state import Intent, State, StateStore

    StateStore(sim.paths).save(State(**kw))
    return Intent


def test_state_ok_absent_and_present(t4x2):
    assert one(t4x2, "state").status is OK
    _state(t4x2)
    r = one(t4x2, "state")
    assert r.status is OK and "0 owned" in r.seen


@pytest.mark.parametrize("breakage", ["symlink", "world-writable", "corrupt", "directory", "dir-world-writable"])
def test_state_unsafe_or_corrupt(t4x2, breakage):
    f = t4x2.paths.state_file
    _state(t4x2)
    if breakage == "symlink":
        os.replace(f, f.with_name("elsewhere.json"))
        os.symlink("elsewhere.json", f)
    elif breakage == "world-writable":
        os.chmod(f, 0o666)
    elif breakage == "corrupt":
        f.write_text('{"schema": "vgpuctl.state/v1", "owned": [')
    elif breakage == "directory":
        f.unlink()
        f.mkdir()
    else:
        os.chmod(f.parent, 0o777)
    r = one(t4x2, "state")
    assert r.status is FAIL and r.fix, r
    assert {
        "symlink": "symlink",
        "world-writable": "world-writable",
        "corrupt": "corrupt",
        "directory": "not a regular file",
        "dir-world-writable": "world-writable",
    }[breakage] in r.seen


def test_journal(t4x2):
    assert one(t4x2, "journal").status is OK
    Intent = _state(t4x2)
    _state(t4x2, pending=(Intent("create", "aaaaaaaa-0000-4000-8000-000000000001", T4, "nvidia-231"),))
    r = one(t4x2, "journal")
    assert r.status is WARN and "1 unfinished intent" in r.seen and "vgpuctl apply" in r.fix
    (t4x2.paths.state_file).write_text("nonsense")
    assert one(t4x2, "journal").status is NA  # the state line says it


@pytest.mark.parametrize("breakage", ["symlink", "world-writable", "directory"])
def test_lock(t4x2, breakage):
    assert one(t4x2, "lock").status is OK
    lock = t4x2.paths.lock_file
    lock.parent.mkdir(parents=True, exist_ok=True)
    if breakage == "symlink":
        os.symlink("/etc/passwd", lock)
    elif breakage == "world-writable":
        lock.write_text("")
        os.chmod(lock, 0o666)
    else:
        lock.mkdir()
    r = one(t4x2, "lock")
    assert r.status is FAIL and r.fix


def test_lock_plain_file_ok(t4x2):
    from vgpuctl.state import HostLock

    with HostLock(t4x2.paths):
        pass
    assert one(t4x2, "lock").seen.endswith("a plain file")


# --- service --------------------------------------------------------------------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DESIRED = """version: 1
instances:
  web-1: {type: T4-2Q, parent: "0000:3b:00.0"}
"""


def _desired(sim, text=DESIRED):
    (sim.paths.config_dir).mkdir(parents=True, exist_ok=True)
    (sim.paths.config_dir / "vgpuctl.yaml").write_text(text)


def _install_unit(sim):
    d = sim.root / "etc/systemd/system"
    d.mkdir(parents=True, exist_ok=True)
    (d / "vgpuctl.service").write_text(open(os.path.join(REPO, "systemd", "vgpuctl.service")).read())


@needs_systemctl
def test_service_installed_and_enabled(t4x2):
    r = one(t4x2, "service")
    assert r.status is WARN and "not installed" in r.seen  # no desired state yet: a warning
    _desired(t4x2)
    assert one(t4x2, "service").status is FAIL  # a desired state nobody keeps across reboots
    _install_unit(t4x2)
    r = one(t4x2, "service")
    assert r.status is FAIL and "disabled" in r.seen and r.fix == "systemctl enable --now vgpuctl.service"
    systemctl(t4x2, "enable", "vgpuctl.service")
    assert one(t4x2, "service").status is OK


def test_service_without_systemctl_reads_unit_files(t4x2, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    _desired(t4x2)
    assert one(t4x2, "service").status is FAIL
    _install_unit(t4x2)
    assert "disabled" in one(t4x2, "service").seen
    wants = t4x2.root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    os.symlink("../vgpuctl.service", wants / "vgpuctl.service")
    assert one(t4x2, "service").status is OK


# --- desired-state --------------------------------------------------------------------------------------------------
def test_desired_state_absent_ok_and_unplaceable(t4x2):
    assert one(t4x2, "desired-state").status is NA
    _desired(t4x2)
    r = one(t4x2, "desired-state")
    assert r.status is OK and "1 instance(s)" in r.seen and "1 action(s) for vgpuctl apply" in r.seen
    _desired(
        t4x2, "version: 1\ninstances:\n" + "".join(f"  big-{i}: {{type: T4-16Q, placement: {{}}}}\n" for i in range(3))
    )
    rs = results(t4x2, "desired-state")
    assert [r.status for r in rs] == [FAIL] and "no-placement" in rs[0].seen and rs[0].subject == "big-2"
    assert rs[0].fix == "see why every GPU refuses: vgpuctl place --type T4-16Q --explain"


def test_desired_state_that_does_not_parse(t4x2):
    _desired(t4x2, "version: 1\ninstances:\n  web-1: {type: T4-2Q, colour: blue}\n")
    r = one(t4x2, "desired-state")
    assert r.status is FAIL and "vgpuctl.yaml:3" in r.seen and "colour" in r.seen
    _desired(t4x2, "version: 1\ninstances: [\n")
    assert one(t4x2, "desired-state").status is FAIL


def test_desired_state_on_vendor_vfio(h200):
    _desired(h200, 'version: 1\ninstances:\n  c-1: {type: H200X-8C, parent: "0000:4a:00.4"}\n')
    assert one(h200, "desired-state").status is OK
    _desired(
        h200,
        'version: 1\ninstances:\n  c-1: {type: H200X-8C, parent: "0000:4a:00.4", uuid: '
        '"aaaaaaaa-0000-4000-8000-000000000001"}\n',
    )
    assert one(h200, "desired-state").status is FAIL  # a uuid on a VF instance: exit 8 in plan, fail here
