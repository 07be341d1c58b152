"""Every host path vgpuctl touches, built from one root.

Production's root is ``/``; tests and the simulated host point it elsewhere.  Nothing else in the package spells out
``/sys`` or ``/etc``: code asks a ``HostPaths`` for the directory it needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HostPaths:
    root: Path = Path("/")
    #: Processes are global, so the process table is not under the root.  The holder scan looks here for file
    #: descriptors whose targets are ``<root>/dev/vfio/<group>``.
    proc: Path = Path("/proc")

    @classmethod
    def from_root(cls, root: "str | os.PathLike[str]" = "/") -> "HostPaths":
        return cls(root=Path(os.path.abspath(os.fspath(root))))

    # sysfs ---------------------------------------------------------------------------------------------------------
    @property
    def sys(self) -> Path:
        return self.root / "sys"

    @property
    def mdev_bus(self) -> Path:
        """``sys/class/mdev_bus``: one symlink per parent registered with the mdev core."""
        return self.sys / "class" / "mdev_bus"

    @property
    def mdev_devices(self) -> Path:
        """``sys/bus/mdev/devices``: one symlink per mediated device."""
        return self.sys / "bus" / "mdev" / "devices"

    @property
    def pci_devices(self) -> Path:
        return self.sys / "bus" / "pci" / "devices"

    @property
    def numa_nodes(self) -> Path:
        """``sys/devices/system/node``: ``node<N>/cpulist`` maps host CPUs to NUMA nodes."""
        return self.sys / "devices" / "system" / "node"

    @property
    def dev_vfio(self) -> Path:
        return self.root / "dev" / "vfio"

    # vgpuctl's own files -------------------------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.root / "etc" / "vgpuctl"

    @property
    def state_dir(self) -> Path:
        return self.root / "var" / "lib" / "vgpuctl"

    @property
    def run_dir(self) -> Path:
        return self.root / "run" / "vgpuctl"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "lock"
