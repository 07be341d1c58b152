"""Profiles load and validate; materialize writes the same tree the daemon serves (no FUSE needed)."""

from __future__ import annotations

import os

import pytest

from vgpuctl.errors import ConfigError
from vgpuctl.sim import list_profiles, load_profile, materialize

SHIPPED = ["a16", "gvtg", "h200", "l40s", "mixed", "mtty", "samples", "t4x2"]


def test_shipped_profiles_load():
    assert list_profiles() == SHIPPED
    for name in SHIPPED:
        prof = load_profile(name)
        assert prof.name == name and prof.summary and prof.devices


def test_t4_table_matches_the_user_guide():
    t4 = {t.id: t for t in load_profile("t4x2").devices[0].model.types}
    assert t4["nvidia-230"].name == "GRID T4-1Q"
    assert t4["nvidia-230"].description == (
        "num_heads=4, frl_config=60, framebuffer=1024M, max_resolution=5120x2880, max_instance=16"
    )
    by_profile = {t.name.split()[-1]: t.max_instance for t in t4.values()}
    assert {k: by_profile[k] for k in ("T4-1Q", "T4-2Q", "T4-4Q", "T4-8Q", "T4-16Q")} == {
        "T4-1Q": 16,
        "T4-2Q": 8,
        "T4-4Q": 4,
        "T4-8Q": 2,
        "T4-16Q": 1,
    }
    assert {"T4-1B", "T4-1A", "T4-4C"} <= set(by_profile)


def test_include_overrides_model_keys():
    mixed = load_profile("mixed")
    names = {d.model.key: d.model.types[0].name for d in mixed.devices}
    assert names == {"t4": "NVIDIA T4-1B", "a16": "NVIDIA A16-1B"}


@pytest.mark.parametrize(
    "text,key",
    [
        ("version: 2\ndevices: []\n", "version"),
        ("version: 1\nbogus: 1\n", None),
        ("version: 1\ndevices: [{virtual: x, model: nope}]\n", "devices[0]"),
        (
            "version: 1\nmodels: {m: {kind: virtual, class_name: m, mdev_driver: m, pool: {a: 1},"
            " types: [{id: m-1, colour: red}]}}\ndevices: [{virtual: m, model: m}]\n",
            "models.m.types[0]",
        ),
        (
            "version: 1\nmodels: {m: {kind: pci, mdev_driver: m, capacity: nvidia,"
            " types: [{id: m-1}]}}\ndevices: [{pci: '0000:01:00.0', model: m}]\n",
            "models.m.types[0]",
        ),
        ("version: 1\n: :\n", None),
    ],
)
def test_bad_profiles_are_config_errors(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_profile(str(path))
    assert e.value.key == key


def test_unknown_profile_name():
    with pytest.raises(ConfigError) as e:
        load_profile("nosuch")
    assert "t4x2" in str(e.value)


def test_materialize_layout_and_relative_symlinks(tmp_path):
    u = "AAAAAAAA-0000-0000-0000-000000000001"
    sys_dir = materialize("t4x2", tmp_path, instances=[("0000:3b:00.0", "nvidia-231", u)])
    u = u.lower()
    assert sys_dir == tmp_path / "sys"
    for sub in ("dev/vfio", "etc", "var", "run"):
        assert (tmp_path / sub).is_dir()
    parent = sys_dir / "devices/pci0000:00/0000:3b:00.0"
    assert os.path.realpath(sys_dir / "class/mdev_bus/0000:3b:00.0") == str(parent)
    assert os.readlink(sys_dir / "class/mdev_bus/0000:3b:00.0") == "../../devices/pci0000:00/0000:3b:00.0"
    assert os.readlink(parent / "driver") == "../../../bus/pci/drivers/nvidia"
    assert os.readlink(parent / "iommu_group") == "../../../kernel/iommu_groups/30"
    assert (parent / "vendor").read_text() == "0x10de\n"
    assert (parent / "device").read_text() == "0x1eb8\n"
    assert (parent / "numa_node").read_text() == "0\n"
    assert (sys_dir / "devices/pci0000:00/0000:d8:00.0/numa_node").read_text() == "1\n"
    types = parent / "mdev_supported_types"
    assert (types / "nvidia-231/available_instances").read_text() == "7\n"
    assert (types / "nvidia-230/available_instances").read_text() == "0\n"
    assert oct((types / "nvidia-231/create").stat().st_mode & 0o777) == "0o200"
    mdev = sys_dir / "bus/mdev/devices" / u
    assert os.path.realpath(mdev) == str(parent / u)
    assert os.readlink(parent / u / "driver") == "../../../../bus/mdev/drivers/nvidia-vgpu-vfio"
    assert os.path.realpath(parent / u / "mdev_type") == str(types / "nvidia-231")
    group = os.path.basename(os.readlink(parent / u / "iommu_group"))
    assert group == "32" and (tmp_path / "dev/vfio/32").is_file()
    assert os.path.realpath(sys_dir / f"kernel/iommu_groups/{group}/devices/{u}") == str(parent / u)
    assert os.path.realpath(types / f"nvidia-231/devices/{u}") == str(parent / u)
    assert not (sys_dir / ".vgpusim").exists()


def test_materialize_a16_sriov_and_samples(tmp_path):
    sys_dir = materialize("a16", tmp_path / "a")
    pf = sys_dir / "devices/pci0000:00/0000:3d:00.0"
    assert (pf / "sriov_totalvfs").read_text() == "16\n" and (pf / "sriov_numvfs").read_text() == "16\n"
    assert os.readlink(pf / "virtfn0") == "../0000:3d:00.4"
    assert os.readlink(pf / "virtfn15") == "../0000:3d:02.3"
    assert os.readlink(sys_dir / "devices/pci0000:00/0000:3d:00.4/physfn") == "../0000:3d:00.0"
    assert not (pf / "mdev_supported_types").exists()
    bus = sorted(os.listdir(sys_dir / "class/mdev_bus"))
    assert len(bus) == 64 and "0000:3d:00.4" in bus and "0000:3d:00.0" not in bus
    s = materialize("samples", tmp_path / "s")
    mtty = s / "devices/virtual/mtty/mtty"
    assert os.path.realpath(s / "class/mdev_bus/mtty") == str(mtty)
    assert sorted(os.listdir(mtty / "mdev_supported_types")) == ["mtty-1", "mtty-2"]
    assert sorted(os.listdir(mtty / "mdev_supported_types/mtty-1")) == [
        "available_instances",
        "create",
        "device_api",
        "devices",
        "name",
    ]  # no description, as the sample
    assert (mtty / "mdev_supported_types/mtty-2/available_instances").read_text() == "12\n"
    assert (mtty / "mdev_supported_types/mtty-1/name").read_text() == "Single port serial\n"
    assert (s / "devices/virtual/mdpy/mdpy/mdev_supported_types/mdpy-xga/description").read_text() == (
        "virtual display, 1024x768 framebuffer\n"
    )
    g = materialize("gvtg", tmp_path / "g")
    desc = g / "class/mdev_bus/0000:00:02.0/mdev_supported_types/i915-GVTg_V5_4/description"
    assert desc.read_text() == "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4\n"
    assert (g / "devices/pci0000:00/0000:00:02.0/numa_node").read_text() == "-1\n"
