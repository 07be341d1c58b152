"""In-memory inventories shaped like the simulator's T4 and A16 profiles (same ids, names, capacities).

Used by the placement tests and by ``bench/placement_churn.py``; no host, no FUSE.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from vgpuctl.describe import typed_fields
from vgpuctl.model import Inventory, Parent, VgpuType, sorted_inventory
from vgpuctl.placement import apply

#: (id, profile, framebuffer MiB, max_instance) as in vgpuctl/sim/profiles/t4x2.yaml
T4_TYPES: Tuple[Tuple[str, str, int, int], ...] = (
    ("nvidia-222", "T4-1B", 1024, 16),
    ("nvidia-223", "T4-2B", 2048, 8),
    ("nvidia-230", "T4-1Q", 1024, 16),
    ("nvidia-231", "T4-2Q", 2048, 8),
    ("nvidia-232", "T4-4Q", 4096, 4),
    ("nvidia-233", "T4-8Q", 8192, 2),
    ("nvidia-234", "T4-16Q", 16384, 1),
    ("nvidia-319", "T4-4C", 4096, 4),
)
#: as in vgpuctl/sim/profiles/a16.yaml (a subset)
A16_TYPES: Tuple[Tuple[str, str, int, int], ...] = (
    ("nvidia-700", "A16-2B", 2048, 8),
    ("nvidia-701", "A16-1Q", 1024, 16),
    ("nvidia-702", "A16-2Q", 2048, 8),
    ("nvidia-703", "A16-4Q", 4096, 4),
    ("nvidia-704", "A16-8Q", 8192, 2),
    ("nvidia-705", "A16-16Q", 16384, 1),
    ("nvidia-711", "A16-4C", 4096, 4),
)


def nv_type(
    parent: str, type_id: str, profile: str, fb: int, max_instance: int, *, available: int, prefix: str = "NVIDIA "
) -> VgpuType:
    name = prefix + profile
    desc = f"num_heads=4, frl_config=60, framebuffer={fb}M, max_resolution=5120x2880, max_instance={max_instance}"
    return VgpuType(
        parent=parent,
        type_id=type_id,
        name=name,
        device_api="vfio-pci",
        available=available,
        description=desc,
        **typed_fields(desc, name),
    )  # type: ignore[arg-type]


def t4(
    addr: str,
    *,
    numa: Optional[int] = 0,
    types: Sequence[Tuple[str, str, int, int]] = T4_TYPES,
    prefix: str = "NVIDIA ",
) -> Tuple[List[Parent], List[VgpuType]]:
    p = Parent(name=addr, pci=True, vendor_id="0x10de", device_id="0x1eb8", numa_node=numa, driver="nvidia")
    return [p], [nv_type(addr, i, n, fb, mx, available=mx, prefix=prefix) for i, n, fb, mx in types]


def a16_gpu(
    pf: str, *, numa: Optional[int] = 1, vfs: int = 16, types: Sequence[Tuple[str, str, int, int]] = A16_TYPES
) -> Tuple[List[Parent], List[VgpuType]]:
    """One A16 GPU (a PF) with ``vfs`` VFs at function 4.. of the same bus, the mdev types on each VF."""
    dom, bus, _ = pf.split(":")
    parents, out = [], []
    for k in range(vfs):
        fn = 4 + k
        vf = f"{dom}:{bus}:{fn // 8:02x}.{fn % 8}"
        parents.append(
            Parent(
                name=vf,
                pci=True,
                vendor_id="0x10de",
                device_id="0x25b6",
                numa_node=numa,
                driver="nvidia",
                physical_gpu=pf,
                is_vf=True,
            )
        )
        out += [nv_type(vf, i, n, fb, mx, available=1) for i, n, fb, mx in types]
    return parents, out


def mdev_other(name: str, types: Iterable[Tuple[str, Optional[str], int]]) -> Tuple[List[Parent], List[VgpuType]]:
    """A non-NVIDIA parent (Intel GVT-g, mtty): (type id, name, available)."""
    p = Parent(name=name, pci=":" in name, vendor_id="0x8086" if ":" in name else None)
    return [p], [VgpuType(parent=name, type_id=i, name=n, available=a) for i, n, a in types]


def host(*parts: Tuple[List[Parent], List[VgpuType]]) -> Inventory:
    parents: List[Parent] = []
    types: List[VgpuType] = []
    for p, t in parts:
        parents += p
        types += t
    return sorted_inventory(parents, types, [])


def with_instances(inv: Inventory, placed: Iterable[Tuple[str, str, str]]) -> Inventory:
    """Apply (parent, type id, uuid) creates, as the host would count them."""
    for parent, type_id, uuid in placed:
        inv = apply(inv, parent=parent, type_id=type_id, uuid=uuid)
    return inv


def uid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def mixed_host() -> Inventory:
    """Like the simulator's ``mixed`` profile: two T4 (NUMA 0, 1) and one A16 board (4 GPUs, NUMA 1)."""
    return host(
        t4("0000:3b:00.0", numa=0),
        t4("0000:d8:00.0", numa=1),
        *(a16_gpu(f"0000:{b}:00.0", numa=1) for b in ("86", "87", "88", "89")),
    )


def t4_host(n: int, *, numa_split: bool = True) -> Inventory:
    return host(*(t4(f"0000:{0x10 + i:02x}:00.0", numa=(i * 2 // n) if numa_split else 0) for i in range(n)))


def a16_host(boards: int) -> Inventory:
    return host(*(a16_gpu(f"0000:{0x80 + i:02x}:00.0", numa=i // 4) for i in range(4 * boards)))


def counts_by_gpu(inv: Inventory) -> Dict[str, Dict[str, int]]:
    from vgpuctl.placement import occupancy

    return occupancy(inv)
