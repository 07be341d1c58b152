"""Build a static sysfs-like tree in a tmp directory (plain files and relative symlinks, no behaviour).

For fast unit tests of the readers; anything that writes to ``create``/``remove`` runs on the simulated host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(target, link.parent), link)


class Tree:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        (self.sys / "class" / "mdev_bus").mkdir(parents=True)
        (self.sys / "bus" / "mdev" / "devices").mkdir(parents=True)
        (self.sys / "bus" / "mdev" / "drivers" / "vfio_mdev").mkdir(parents=True)
        self._group = 100

    def pci_parent(
        self, bdf: str, *, vendor="0x10de", device="0x1eb8", numa="0", driver="nvidia", physfn: Optional[str] = None
    ) -> Path:
        d = self.sys / "devices" / "pci0000:00" / bdf
        _write(d / "vendor", vendor)
        _write(d / "device", device)
        _write(d / "numa_node", numa)
        drv = self.sys / "bus" / "pci" / "drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        _link(d / "driver", drv)
        if physfn:
            _link(d / "physfn", self.sys / "devices" / "pci0000:00" / physfn)
        _link(self.sys / "class" / "mdev_bus" / bdf, d)
        _link(self.sys / "bus" / "pci" / "devices" / bdf, d)
        return d

    def virtual_parent(self, name: str) -> Path:
        d = self.sys / "devices" / "virtual" / name / name
        d.mkdir(parents=True)
        _link(self.sys / "class" / "mdev_bus" / name, d)
        return d

    def mdev_type(
        self,
        parent_dir: Path,
        type_id: str,
        *,
        available: int,
        name: Optional[str] = None,
        description: Optional[str] = None,
        api: str = "vfio-pci",
    ) -> Path:
        t = parent_dir / "mdev_supported_types" / type_id
        (t / "devices").mkdir(parents=True)
        _write(t / "available_instances", str(available))
        _write(t / "device_api", api)
        if name is not None:
            _write(t / "name", name)
        if description is not None:
            _write(t / "description", description)
        (t / "create").write_text("")
        return t

    def instance(self, parent_dir: Path, type_id: str, uuid: str) -> Path:
        d = parent_dir / uuid
        d.mkdir()
        _link(d / "mdev_type", parent_dir / "mdev_supported_types" / type_id)
        _link(d / "driver", self.sys / "bus" / "mdev" / "drivers" / "vfio_mdev")
        self._group += 1
        g = self.sys / "kernel" / "iommu_groups" / str(self._group)
        (g / "devices").mkdir(parents=True)
        _link(d / "iommu_group", g)
        (d / "remove").write_text("")
        _link(self.sys / "bus" / "mdev" / "devices" / uuid, d)
        _link(parent_dir / "mdev_supported_types" / type_id / "devices" / uuid, d)
        vfio = self.root / "dev" / "vfio"
        vfio.mkdir(parents=True, exist_ok=True)
        (vfio / str(self._group)).write_text("")
        return d
