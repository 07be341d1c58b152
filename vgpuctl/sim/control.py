"""``SimHost``: a simulated host for tests, started and stopped as a context manager.

Everything goes through the mounted filesystem, as any other process would: the control methods write to
ROOT/sys/.vgpusim/*, the convenience methods read and write ordinary sysfs attributes.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import uuid as _uuid
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

from vgpuctl.paths import HostPaths
from vgpuctl.sim import daemon
from vgpuctl.sim.machine import CONTROL_DIR


def write_attr(path: "str | os.PathLike[str]", value: str) -> None:
    """One write(2) of ``value`` to a sysfs attribute; the kernel's errno comes back as OSError."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def errno_name(err: Union[int, str]) -> str:
    if isinstance(err, int):
        return _errno.errorcode.get(err, str(err))
    return err


class SimHost:
    """``with SimHost("t4x2", tmp_path) as sim:`` mounts the profile at tmp_path/sys in a daemon process."""

    def __init__(
        self,
        profile: "str | os.PathLike[str]",
        root: "str | os.PathLike[str]",
        *,
        start_timeout: float = daemon.START_TIMEOUT,
    ) -> None:
        self.profile = profile
        self.root = Path(os.path.abspath(os.fspath(root)))
        self.paths = HostPaths.from_root(self.root)
        self.sys = self.root / "sys"
        self.control_dir = self.sys / CONTROL_DIR
        self.start_timeout = start_timeout
        self.pid: Optional[int] = None

    @classmethod
    def attach(cls, root: "str | os.PathLike[str]") -> "SimHost":
        """A handle on the simulator already running at ROOT (started elsewhere); ``stop`` stops it."""
        sim = cls("", root)
        sim.profile = (sim.control_dir / "profile").read_text().strip()
        sim.pid = daemon.read_pid(sim.root)
        return sim

    # --- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> "SimHost":
        self.pid = daemon.start(self.profile, self.root, timeout=self.start_timeout)
        return self

    def stop(self) -> None:
        daemon.stop(self.root)
        self.pid = None

    def __enter__(self) -> "SimHost":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls -----------------------------------------------------------------------------------------
    def control(self, name: str, value: str) -> None:
        write_attr(self.control_dir / name, value + "\n")

    def fail_next(self, target: str, err: Union[int, str]) -> None:
        """The next write to ``target`` ("create", "remove" or a path suffix) fails with ``err``, once."""
        self.control("fail_next", f"{target} {errno_name(err)}")

    def clear_failures(self) -> None:
        self.control("fail_next", "clear")

    def unregister(self, parent: str) -> None:
        self.control("unregister", parent)

    def register(self, parent: str) -> None:
        self.control("register", parent)

    def reboot(self) -> None:
        self.control("reboot", "1")

    def unload_module(self, name: str) -> None:
        """``name`` and the modules that need it leave sys/module; the parents they registered leave the mdev core."""
        self.control("modules", f"unload {name}")

    def load_module(self, name: str) -> None:
        self.control("modules", f"load {name}")

    def reload_module(self, name: str, version: Optional[str] = None) -> None:
        """As after installing another release of the driver and reloading it (sys/module/NAME/version)."""
        self.control("modules", f"reload {name}" + (f" {version}" if version else ""))

    def set_iommu(self, on: bool) -> None:
        """Reboot with (True) or without (False) a hardware IOMMU."""
        self.control("iommu", "1" if on else "0")

    def set_numvfs(self, pf: str, n: int) -> None:
        """Write ``n`` to the PF's sriov_numvfs (0 disables its VFs; the PCI core's errnos come back as OSError)."""
        write_attr(self.paths.pci_devices / pf / "sriov_numvfs", f"{n}\n")

    def set_remove_block_seconds(self, seconds: float) -> None:
        self.control("remove_block_seconds", f"{seconds:g}")

    def events(self) -> List[str]:
        return (self.control_dir / "events").read_text().splitlines()

    # --- conveniences over plain sysfs ---------------------------------------------------------------------------
    def parent_dir(self, parent: str) -> Path:
        return self.paths.mdev_bus / parent

    def type_dir(self, parent: str, type_id: str) -> Path:
        return self.parent_dir(parent) / "mdev_supported_types" / type_id

    def available(self, parent: str, type_id: str) -> int:
        return int((self.type_dir(parent, type_id) / "available_instances").read_text())

    def create(self, parent: str, type_id: str, uuid: Optional[str] = None) -> str:
        """Write ``uuid`` (a random one by default) to the type's create; returns it lowercased."""
        uuid = uuid or str(_uuid.uuid4())
        write_attr(self.type_dir(parent, type_id) / "create", uuid + "\n")
        return uuid.lower()

    def remove(self, uuid: str, value: str = "1") -> None:
        write_attr(self.paths.mdev_devices / uuid / "remove", value + "\n")

    def instances(self) -> List[str]:
        return sorted(os.listdir(self.paths.mdev_devices))

    def group_of(self, uuid: str) -> int:
        return int(os.path.basename(os.readlink(self.paths.mdev_devices / uuid / "iommu_group")))

    # --- vendor VFIO (NVIDIA vGPU 17+) ----------------------------------------------------------------------------
    def nvidia_dir(self, vf: str) -> Path:
        return self.paths.pci_devices / vf / "nvidia"

    def vgpu_type(self, vf: str) -> int:
        return int((self.nvidia_dir(vf) / "current_vgpu_type").read_text())

    def set_vgpu_type(self, vf: str, number: int) -> None:
        """Write ``number`` (0: destroy) to the VF's current_vgpu_type; the driver's errno comes back as OSError."""
        write_attr(self.nvidia_dir(vf) / "current_vgpu_type", f"{number}\n")

    def creatable(self, vf: str) -> List[str]:
        return (self.nvidia_dir(vf) / "creatable_vgpu_types").read_text().splitlines()[1:]

    def set_heterogeneous(self, pf: str, on: bool) -> None:
        self.control("heterogeneous", f"{pf} {int(on)}")

    def set_mig_mode(self, pf: str, on: bool) -> None:
        self.control("mig", f"{pf} {int(on)}")

    def mig_mode(self, pf: str) -> bool:
        lines = (self.control_dir / "mig").read_text().splitlines()
        return next(ln.split()[1] == "1" for ln in lines if ln.split()[0] == pf)

    def create_gpu_instance(self, pf: str, profile: str, start: Optional[int] = None) -> None:
        self.control("gpu_instances", f"{pf} create {profile}" + ("" if start is None else f" {start}"))

    def destroy_gpu_instance(self, pf: str, gi: int) -> None:
        self.control("gpu_instances", f"{pf} destroy {gi}")

    def gpu_instances(self, pf: str) -> List[Tuple[int, str, int, int]]:
        """(id, profile, start, size) of each GPU instance of ``pf``."""
        out = []
        for ln in (self.control_dir / "gpu_instances").read_text().splitlines():
            f = ln.split()
            if f[0] == pf:
                out.append((int(f[1]), f[2], int(f[3]), int(f[4])))
        return out

    def add_gpu_process(self, pf: str, pid: int, name: str) -> None:
        self.control("gpu_processes", f"{pf} {pid} {name}")

    @contextlib.contextmanager
    def hold_vf(self, vf: str) -> Iterator[int]:
        """Hold the VF's ROOT/dev/vfio/<group> open, as QEMU does for a VM with the VF assigned."""
        group = os.path.basename(os.readlink(self.paths.pci_devices / vf / "iommu_group"))
        fd = os.open(self.paths.dev_vfio / group, os.O_RDWR)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def hold(self, uuid: str) -> Iterator[int]:
        """Hold the mdev's ROOT/dev/vfio/<group> open, as QEMU does while a VM uses it; yields the fd."""
        fd = os.open(self.paths.dev_vfio / str(self.group_of(uuid)), os.O_RDWR)
        try:
            yield fd
        finally:
            os.close(fd)
