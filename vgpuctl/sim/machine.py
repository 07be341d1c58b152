"""The simulated host: one in-memory model of parents, types, pools and instances, and the sysfs tree rendered from it.

``Machine`` owns the state and every rule (uuid parsing, duplicate check, capacity, vendor rules, group numbers);
``render`` turns the state into an immutable ``Tree`` (path -> node) that the FUSE layer serves and ``materialize``
writes to disk.  Paths in a tree are absolute under the sysfs root ("/devices/...", "/class/..."); symlink targets
are stored as absolute tree paths and written relative to the link, as sysfs does.

Locking: every method that reads or changes the state takes ``self.lock``; the FUSE layer does the blocking part of
a held ``remove`` outside it (see ``begin_remove`` / ``finish_remove``).
"""

from __future__ import annotations

import errno
import functools
import os
import posixpath
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from vgpuctl.sim.profile import ModelSpec, Profile, TypeSpec

CONTROL_DIR = ".vgpusim"
#: vgpu_params: the plugin parameters NVIDIA's user guide documents, and one page per write
PARAMS_KNOWN = ("frame_rate_limiter", "disable_vnc", "enable_uvm", "enable_debugging", "enable_profiling")
PARAMS_MAX = 4095
EVENTS_KEPT = 1000

#: Access modes of sysfs attributes as the kernel creates them.
RO, RW, WO = 0o444, 0o644, 0o200


class SimError(OSError):
    """A write the simulated kernel refuses: carries the errno the writer's write(2) gets."""

    def __init__(self, err: int, detail: str = "") -> None:
        super().__init__(err, os.strerror(err) + (f": {detail}" if detail else ""))


# --- the tree -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dir:
    children: Tuple[str, ...]
    mode: int = 0o755


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int = RO
    #: what a write does: ("create", parent, type), ("remove", uuid), ("numvfs", pf), ("ctl", name),
    #: ("vgpu_type", vf), ("vf_attr", vf, name); None: read-only
    action: Optional[Tuple[str, ...]] = None


@dataclass(frozen=True)
class Link:
    target: str  #: relative, as readlink(2) returns it


Node = "Dir | File | Link"


class Tree(Dict[str, object]):
    """path -> node, and ``links``: path -> target of every symlink in it (what ``changed_paths`` compares)."""

    links: Dict[str, str]

    def __init__(self, nodes: Optional[Dict[str, object]] = None, links: Optional[Dict[str, str]] = None) -> None:
        super().__init__(nodes or {})
        self.links = dict(links or {})


def changed_paths(before: Tree, after: Tree) -> List[str]:
    """Paths a kernel that cached names, attributes and symlink targets of ``before`` must forget to show
    ``after``: those gone, and symlinks whose target changed or that took another node's place.  A file whose
    content changed is not among them (its reads are never cached); a new path is not either (no negative entry is
    cached)."""
    if before is after:
        return []
    gone = before.keys() - after.keys()
    gone.update(p for p, _ in before.links.items() - after.links.items() if p in after)
    gone.update(p for p in after.links.keys() - before.links.keys() if p in before)
    return sorted(gone)


@functools.lru_cache(maxsize=1 << 16)
def _relpath(target: str, start: str) -> str:
    """posixpath.relpath of two absolute tree paths (the same links come back in every render: cached)."""
    return posixpath.relpath(target, start)


class _Builder:
    def __init__(self) -> None:
        self.nodes: Dict[str, object] = {}
        self.children: Dict[str, List[str]] = {"/": []}
        self.links: Dict[str, str] = {}

    def _add(self, path: str, node: object) -> None:
        parent, _, name = path.rpartition("/")  # tree paths are absolute and normal: "/a/b" -> "/a", "b"
        parent = parent or "/"
        if parent not in self.children:
            self.mkdir(parent)
        if path not in self.nodes:
            self.children[parent].append(name)
        self.nodes[path] = node
        self.links.pop(path, None)

    def mkdir(self, path: str) -> None:
        if path in self.children:
            return
        parent, _, name = path.rpartition("/")
        parent = parent or "/"
        self.mkdir(parent)
        self.children[parent].append(name)
        self.children[path] = []

    def file(self, path: str, text: str, mode: int = RO, action: Optional[Tuple[str, ...]] = None) -> None:
        self._add(path, File(text.encode(), mode, action))

    def link(self, path: str, target: str) -> None:
        rel = _relpath(target, path.rpartition("/")[0] or "/")
        self._add(path, Link(rel))
        self.links[path] = rel

    def tree(self) -> Tree:
        out = Tree(self.nodes, self.links)
        for path, names in self.children.items():
            out[path] = Dir(tuple(sorted(names)))
        return out


# --- the state ------------------------------------------------------------------------------------------------------
@dataclass
class Function:
    """A PCI function or a virtual device, as the profile made it."""

    name: str
    model: ModelSpec
    devpath: str  #: "/devices/pci0000:00/0000:3b:00.0" or "/devices/virtual/mtty/mtty"
    group: Optional[int] = None  #: IOMMU group (PCI functions)
    numa_node: Optional[int] = None
    physfn: Optional[str] = None  #: PF address of a VF
    vfs: List[str] = field(default_factory=list)
    is_parent: bool = False  #: has mdev_supported_types when registered
    registered: bool = True
    vendor_vfio: bool = False  #: a VF with NVIDIA's nvidia/ vGPU directory (vendor VFIO)
    mig: bool = False  #: PF of a vendor-vfio GPU: MIG mode
    heterogeneous: bool = False  #: PF of a vendor-vfio GPU: heterogeneous (mixed-size) mode
    present: bool = True  #: False: a VF of a PF whose SR-IOV VFs are (now) disabled: not in the tree
    all_vfs: List[str] = field(default_factory=list)  #: PF: every VF it can enable (``vfs``: the enabled ones)

    @property
    def gpu(self) -> str:
        return self.physfn or self.name


@dataclass(frozen=True)
class GpuInstance:
    """A MIG GPU instance of a PF: NVML's id, its profile's name, and the memory slices it spans."""

    id: int
    profile: str
    start: int
    size: int


@dataclass
class Instance:
    uuid: str
    parent: str
    type_id: str
    group: int
    removing: bool = False


def parse_params(text: str) -> List[Tuple[str, str]]:
    out = []
    for item in text.split(","):
        name, _, value = item.strip().partition("=")
        if name:
            out.append((name, value))
    return out


def vf_address(pf: str, offset: int, stride: int, index: int) -> str:
    """PCI address of VF ``index`` (0-based) of ``pf``: routing id = PF's + offset + index * stride."""
    domain, bus, devfn = pf.split(":")
    dev, fn = devfn.split(".")
    rid = (int(bus, 16) << 8 | int(dev, 16) << 3 | int(fn)) + offset + index * stride
    return f"{domain}:{rid >> 8 & 0xFF:02x}:{rid >> 3 & 0x1F:02x}.{rid & 7}"


def parse_uuid_write(data: bytes) -> str:
    """The uuid a write to ``create`` names, as the 6.1 mdev core parses it: 36 or 37 bytes, 8-4-4-4-12 hex digits
    in the first 36 (a 37th byte, usually the newline, is not looked at); uppercase accepted, result lowercase."""
    if len(data) not in (36, 37):
        raise SimError(errno.EINVAL, f"uuid must be 36 characters, got {len(data)} bytes")
    text = data[:36].decode("ascii", "replace")
    for i, ch in enumerate(text):
        if i in (8, 13, 18, 23):
            if ch != "-":
                raise SimError(errno.EINVAL, "malformed uuid")
        elif ch not in "0123456789abcdefABCDEF":
            raise SimError(errno.EINVAL, "malformed uuid")
    return text.lower()


_KSTRTOUL = re.compile(r"\+?(?:0[xX](?P<hex>[0-9a-fA-F]+)|0(?P<oct>[0-7]*)|(?P<dec>[1-9][0-9]*))\n?")


def kstrtoul(data: bytes) -> int:
    """The kernel's kstrtoul(buf, 0): one optional trailing newline; 0x.. hex, 0.. octal, else decimal."""
    mt = _KSTRTOUL.fullmatch(data.decode("ascii", "replace"))
    if mt is None:
        raise SimError(errno.EINVAL, "not an unsigned integer")
    if mt.group("hex") is not None:
        value = int(mt.group("hex"), 16)
    elif mt.group("oct") is not None:
        value = int(mt.group("oct") or "0", 8)
    else:
        value = int(mt.group("dec"), 10)
    if value > 2**64 - 1:
        raise SimError(errno.EINVAL, "out of range")  # remove_store maps every kstrtoul failure to EINVAL
    return value


def parse_errno(text: str) -> int:
    text = text.strip()
    if text.isdigit():
        return int(text)
    code = getattr(errno, text.upper(), None)
    if not isinstance(code, int):
        raise SimError(errno.EINVAL, f"{text!r} is not an errno name")
    return code


def profile_modules(profile: Profile) -> Dict[str, Optional[str]]:
    """The modules a host of ``profile`` has loaded at boot, with their version text (None: no version file):
    vfio and vfio_iommu_type1, then each model's PCI driver (its ``driver_version``), mdev and the parents'
    module where vGPUs are mdevs.  The first model that gives a driver's version wins."""
    out: Dict[str, Optional[str]] = {"vfio": None, "vfio_iommu_type1": None}
    for dev in profile.devices:
        m = dev.model
        for name in m.modules:
            if name not in out or (out[name] is None and name == m.driver):
                out[name] = m.driver_version if name == m.driver else None
    return out


class Machine:
    """The simulated host.  ``dev_vfio``: directory where a group's file appears while its mdev exists (None: none)."""

    def __init__(
        self,
        profile: Profile,
        *,
        dev_vfio: Optional[str] = None,
        pid: Optional[int] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.profile = profile
        self.dev_vfio = dev_vfio
        self.pid = pid
        self.lock = threading.RLock()
        self.clock = clock
        self.functions: Dict[str, Function] = {}
        self.instances: Dict[str, Instance] = {}
        self.fail_rules: List[Tuple[str, int]] = []
        #: vendor VFIO: per VF its vGPU type id (0: none), vgpu_params, placement_id, gpu_instance_id
        self.vf_type: Dict[str, int] = {}
        self.vf_params: Dict[str, str] = {}
        self.vf_placement: Dict[str, int] = {}
        self.vf_gi: Dict[str, int] = {}
        #: MIG: per PF its GPU instances, and the processes NVML would list as running on it (tests' control)
        self.gis: Dict[str, List[GpuInstance]] = {}
        self.gpu_procs: Dict[str, List[Tuple[int, str]]] = {}
        self.remove_block_seconds = 10.0
        self.events: List[str] = []
        self.event_seq = 0
        #: booted with a hardware IOMMU (PCI functions have IOMMU groups); mdevs get groups either way
        self.iommu = True
        #: loaded kernel modules (sys/module/<name>) -> their version file's text (None: no version file)
        self.modules: Dict[str, Optional[str]] = profile_modules(profile)
        self._build(profile)
        self._vf_group_files()
        self.group_base = max([f.group for f in self.functions.values() if f.group is not None] + [0]) + 1
        self._tree: Optional[Tree] = None

    # --- construction ------------------------------------------------------------------------------------------
    def _build(self, profile: Profile) -> None:
        next_group = profile.first_iommu_group
        used = {d.iommu_group for d in profile.devices if d.iommu_group is not None}

        def group(explicit: Optional[int]) -> int:
            nonlocal next_group
            if explicit is not None:
                return explicit
            while next_group in used:
                next_group += 1
            used.add(next_group)
            return next_group

        for dev in profile.devices:
            m = dev.model
            if m.kind == "virtual":
                self.functions[dev.name] = Function(
                    name=dev.name, model=m, devpath=f"/devices/virtual/{m.class_name}/{dev.name}", is_parent=True
                )
                continue
            vfio = m.vgpu == "vendor-vfio"
            pf = Function(
                name=dev.name,
                model=m,
                devpath=f"/devices/pci0000:00/{dev.name}",
                group=group(dev.iommu_group),
                numa_node=dev.numa_node,
                is_parent=m.mdev_on == "pf" and not vfio,
                mig=dev.mig,
                heterogeneous=dev.heterogeneous,
            )
            self.functions[pf.name] = pf
            if m.sriov:
                boot = dev.boot_numvfs
                for i in range(max(m.sriov.numvfs, m.sriov.totalvfs)):
                    addr = vf_address(pf.name, m.sriov.offset, m.sriov.stride, i)
                    pf.all_vfs.append(addr)
                    if i < boot:
                        pf.vfs.append(addr)
                    self.functions[addr] = Function(
                        name=addr,
                        model=m,
                        devpath=f"/devices/pci0000:00/{addr}",
                        group=group(None),
                        numa_node=dev.numa_node,
                        physfn=pf.name,
                        is_parent=m.mdev_on == "vf" and not vfio,
                        vendor_vfio=vfio,
                        present=i < boot,
                    )

    def _vf_group_files(self) -> None:
        """A vendor-VFIO VF is a VFIO device from the start: its group file exists (QEMU opens it) while the VF is
        enabled and the host has an IOMMU; otherwise it does not."""
        for fn in self.functions.values():
            gf = self.group_file(fn.group) if fn.vendor_vfio and fn.group is not None else None
            if not gf:
                continue
            if fn.present and self.iommu:
                with open(gf, "w"):
                    pass
            else:
                try:
                    os.unlink(gf)
                except FileNotFoundError:
                    pass

    # --- queries ------------------------------------------------------------------------------------------------
    def parents(self) -> List[Function]:
        return [f for f in self.functions.values() if f.is_parent and f.registered and f.present]

    def type_spec(self, parent: str, type_id: str) -> TypeSpec:
        for t in self.functions[parent].model.types:
            if t.id == type_id:
                return t
        raise KeyError(type_id)

    def available(self, parent: str, type_id: str) -> int:
        with self.lock:
            fn = self.functions[parent]
            spec = self.type_spec(parent, type_id)
            live = [i for i in self.instances.values()]
            if fn.model.capacity == "nvidia":
                on_gpu = [i for i in live if self.functions[i.parent].gpu == fn.gpu]
                if any(i.type_id != type_id for i in on_gpu):
                    return 0
                free = max(0, (spec.max_instance or 0) - len(on_gpu))
                if fn.physfn is not None:  # one vGPU per VF
                    return 0 if any(i.parent == parent for i in live) else min(1, free)
                return free
            used: Dict[str, int] = {}
            for inst in live:
                if inst.parent == parent:
                    for res, c in self.type_spec(parent, inst.type_id).cost:
                        used[res] = used.get(res, 0) + c
            pool = dict(fn.model.pool)
            return max(0, min((pool[res] - used.get(res, 0)) // c for res, c in spec.cost))

    # --- vendor VFIO (NVIDIA vGPU 17+): nvidia/current_vgpu_type on each VF --------------------------------------
    def vfio_spec(self, vf: str, number: int) -> Optional[TypeSpec]:
        for t in self.functions[vf].model.types:
            if t.id == str(number):
                return t
        return None

    def vfio_refusal(self, vf: str, number: int) -> Optional[Tuple[int, str]]:
        """Why ``number`` cannot be written to ``vf``'s current_vgpu_type now, as (errno, detail); None if it can.
        Checked in the driver's order: unknown type (ENODEV), VF already typed (EBUSY), conflict with the types the
        GPU hosts (EINVAL), GPU full (ENOSPC).  That a process holds the VF open (EBUSY) is the FUSE layer's check."""
        with self.lock:
            fn = self.functions[vf]
            spec = self.vfio_spec(vf, number)
            if spec is None:
                return errno.ENODEV, f"type {number} is not supported on {vf}"
            if self.vf_type.get(vf):
                return errno.EBUSY, f"{vf} already has type {self.vf_type[vf]}; write 0 first"
            pf = self.functions[fn.physfn or vf]
            m = fn.model
            if (spec.mig_slices is not None) != pf.mig:
                mode = "MIG" if pf.mig else "time-sliced"
                return errno.EINVAL, f"type {number} does not fit the GPU's {mode} mode"
            typed = [
                (v, self.vfio_spec(v, t)) for v, t in self.vf_type.items() if t and self.functions[v].physfn == pf.name
            ]
            specs = [t for _, t in typed if t is not None]
            same = sum(1 for t in specs if t.id == spec.id)
            fb_used = sum(t.framebuffer or 0 for t in specs)
            if same >= (spec.max_instance or 0):
                return errno.ENOSPC, f"{same} of type {number} on {pf.name} (max {spec.max_instance})"
            if pf.mig:
                if spec.mig_profile is not None and self.free_gi(pf.name, spec.mig_profile) is None:
                    return errno.ENOSPC, f"no free GPU instance of profile {spec.mig_profile} on {pf.name}"
                slices = sum(t.mig_slices or 0 for t in specs)
                if slices + (spec.mig_slices or 0) > m.mig_slices:
                    return errno.ENOSPC, f"{slices} of {m.mig_slices} compute slices in use on {pf.name}"
            elif not pf.heterogeneous:
                others = [t for t in specs if t.id != spec.id]
                if others and (m.mix == "homogeneous" or any(t.framebuffer != spec.framebuffer for t in others)):
                    return errno.EINVAL, f"{pf.name} hosts type {others[0].id}"
                if len(specs) >= (spec.max_instance or 0):
                    return errno.ENOSPC, f"{pf.name} is full"
            if not pf.mig and fb_used + (spec.framebuffer or 0) > (m.framebuffer or 0):
                return errno.ENOSPC, f"{fb_used} of {m.framebuffer} MiB in use on {pf.name}"
            return None

    def creatable(self, vf: str) -> List[TypeSpec]:
        """The types ``vf`` lists in creatable_vgpu_types now (none once it has a type)."""
        with self.lock:
            if self.vf_type.get(vf):
                return []
            out = [t for t in self.functions[vf].model.types if self.vfio_refusal(vf, int(t.id)) is None]
            return sorted(out, key=lambda t: int(t.id))

    def set_vgpu_type(self, vf: str, data: bytes) -> None:
        """A write to <VF>/nvidia/current_vgpu_type (the caller has checked that nothing holds the VF open)."""
        with self.lock:
            number = kstrtoul(data)
            fn = self.functions[vf]
            if number == 0:
                old = self.vf_type.pop(vf, 0)
                self.vf_gi.pop(vf, None)
                self.vf_params.pop(vf, None)  # a new vGPU on the VF starts without parameters (an assumption)
                if old:
                    self._event("change", fn.devpath, NVIDIA_VGPU_TYPE="0")
                    self.rerender()
                return
            refusal = self.vfio_refusal(vf, number)
            if refusal is not None:
                raise SimError(*refusal)
            spec = self.vfio_spec(vf, number)
            siblings = [v for v in self.functions[fn.physfn or vf].vfs if self.vf_type.get(v) and v != vf]
            if vf not in self.vf_placement:
                taken = {self.vf_placement.get(v) for v in siblings}
                self.vf_placement[vf] = min(n for n in range(len(siblings) + 1) if n not in taken)
            if spec is not None and spec.mig_slices is not None:
                gi = self.free_gi(fn.physfn or vf, spec.mig_profile) if spec.mig_profile else None
                if gi is not None:
                    self.vf_gi[vf] = gi.id
                else:  # a profile without GPU instance profiles: numbered as before
                    gis = {self.vf_gi.get(v) for v in siblings}
                    self.vf_gi[vf] = min(n for n in range(1, len(siblings) + 2) if n not in gis)
            self.vf_type[vf] = number
            self._event("change", fn.devpath, NVIDIA_VGPU_TYPE=str(number))
            self.rerender()

    def set_vf_attr(self, vf: str, name: str, data: bytes) -> None:
        """A write to <VF>/nvidia/placement_id (only while the VF has no type: an assumption) or vgpu_params (see
        ``set_params``; the caller has checked that nothing holds the VF open)."""
        with self.lock:
            if name == "vgpu_params":
                self.set_params(vf, data)
                return
            if self.vf_type.get(vf):
                raise SimError(errno.EBUSY, f"{vf} has a vGPU; write 0 to current_vgpu_type first")
            self.vf_placement[vf] = kstrtoul(data)
            self.rerender()

    def set_params(self, key: str, data: bytes) -> None:
        """A write to nvidia/vgpu_params of a VF or an NVIDIA mdev (``key``: the VF's address or the mdev's uuid),
        with the semantics NVIDIA's user guide gives: a comma-separated list of ``name=value`` pairs is added to
        what is set (a name given again takes the new value), a write of only white space clears them all.
        Unknown names, malformed pairs and writes over a page are EINVAL (the driver's checks are not documented:
        an assumption)."""
        with self.lock:
            if len(data) > PARAMS_MAX:
                raise SimError(errno.EINVAL, f"vgpu_params write of {len(data)} bytes")
            text = data.decode("utf-8", "replace")
            if not text.strip():
                self.vf_params.pop(key, None)
                self.rerender()
                return
            current = dict(parse_params(self.vf_params.get(key, "")))
            for item in text.strip().split(","):
                name, eq, value = item.strip().partition("=")
                if not eq or name not in PARAMS_KNOWN or not value.isdigit():
                    raise SimError(errno.EINVAL, f"bad vgpu_params item {item.strip()!r}")
                current[name] = value
            self.vf_params[key] = ", ".join(f"{k}={v}" for k, v in current.items())
            self.rerender()

    # --- MIG (what NVML's nvmlDeviceSetMigMode / nvmlDeviceCreateGpuInstance* / nvmlGpuInstanceDestroy do) --------
    def _vfio_pf(self, name: str) -> Function:
        pf = self.functions.get(name.lower())
        if pf is None or not pf.all_vfs or not self.functions[pf.all_vfs[0]].vendor_vfio:
            raise SimError(errno.ENODEV, f"{name} is not a vendor-VFIO GPU")
        return pf

    def free_gi(self, pf: str, profile: str) -> Optional[GpuInstance]:
        """The lowest-numbered GPU instance of ``profile`` on ``pf`` that no vGPU uses."""
        with self.lock:
            used = {self.vf_gi.get(v) for v in self.functions[pf].vfs if self.vf_type.get(v)}
            free = [g for g in self.gis.get(pf, []) if g.profile == profile and g.id not in used]
            return min(free, key=lambda g: g.id) if free else None

    def _gpu_busy(self, pf: Function) -> List[str]:
        typed = [f"vGPU on {v}" for v in pf.vfs if self.vf_type.get(v)]
        return typed + [f"process {pid} ({name})" for pid, name in self.gpu_procs.get(pf.name, [])]

    def set_mig_mode(self, text: str) -> None:
        """Control ``mig``: '<PF> 0|1'.  Refused (EBUSY) while the GPU hosts vGPUs or runs processes (NVML's
        IN_USE: the change resets the GPU), or, to turn it off, while GPU instances exist (an assumption)."""
        with self.lock:
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1"):
                raise SimError(errno.EINVAL, "write '<PF address> 0|1'")
            pf = self._vfio_pf(parts[0])
            on = parts[1] == "1"
            if on == pf.mig:
                return
            if not pf.model.mig_profiles:
                raise SimError(errno.EOPNOTSUPP, f"{pf.name} ({pf.model.key}) has no MIG mode")
            busy = self._gpu_busy(pf)
            if busy:
                raise SimError(errno.EBUSY, f"{pf.name} is in use: {', '.join(busy)}")
            if not on and self.gis.get(pf.name):
                raise SimError(errno.EBUSY, f"{pf.name} has GPU instances; destroy them first")
            pf.mig = on
            self._event("change", pf.devpath, NVIDIA_MIG_MODE=str(int(on)))
            self.rerender()

    def gpu_instance_control(self, text: str) -> None:
        """Control ``gpu_instances``: '<PF> create <profile> [<start>]' or '<PF> destroy <id>'.  Create: EINVAL
        unless in MIG mode or for a profile the model lacks or a start the profile does not allow; ENOSPC when the
        placement (or, without one, every placement) overlaps an existing instance.  Destroy: ENOENT for an unknown
        id, EBUSY while a vGPU uses the instance."""
        with self.lock:
            parts = text.split()
            if len(parts) < 3 or parts[1] not in ("create", "destroy") or len(parts) > 4:
                raise SimError(errno.EINVAL, "write '<PF> create <profile> [<start>]' or '<PF> destroy <id>'")
            pf = self._vfio_pf(parts[0])
            mine = self.gis.setdefault(pf.name, [])
            if parts[1] == "destroy":
                gid = int(parts[2]) if parts[2].isdigit() else -1
                gi = next((g for g in mine if g.id == gid), None)
                if gi is None:
                    raise SimError(errno.ENOENT, f"no GPU instance {parts[2]} on {pf.name}")
                users = [v for v in pf.vfs if self.vf_type.get(v) and self.vf_gi.get(v) == gid]
                if users:
                    raise SimError(errno.EBUSY, f"GPU instance {gid} hosts the vGPU on {users[0]}")
                mine.remove(gi)
                self._event("change", pf.devpath, NVIDIA_GPU_INSTANCE=f"-{gid}")
                self.rerender()
                return
            if not pf.mig:
                raise SimError(errno.EINVAL, f"{pf.name} is not in MIG mode")
            prof = pf.model.mig_profile(parts[2])
            if prof is None:
                known = ", ".join(p.name for p in pf.model.mig_profiles) or "none"
                raise SimError(errno.EINVAL, f"no MIG profile {parts[2]} on {pf.model.key} (known: {known})")
            taken = {s for g in mine for s in range(g.start, g.start + g.size)}
            if len(parts) == 4:
                if not parts[3].isdigit() or int(parts[3]) not in prof.placements:
                    raise SimError(errno.EINVAL, f"{prof.name} cannot start at {parts[3]} (only {prof.placements})")
                starts = [int(parts[3])]
            else:
                starts = list(prof.placements)
            start = next((st for st in starts if not taken & set(range(st, st + prof.size))), None)
            if start is None:
                raise SimError(errno.ENOSPC, f"no room for {prof.name} on {pf.name}: overlaps GPU instances")
            slices = {p.name: p.slices for p in pf.model.mig_profiles}
            if sum(slices.get(g.profile, 0) for g in mine) + prof.slices > pf.model.mig_slices:
                raise SimError(errno.ENOSPC, f"no compute slices left for {prof.name} on {pf.name}")
            ids = {g.id for g in mine}
            gi = GpuInstance(
                id=min(n for n in range(1, len(mine) + 2) if n not in ids),
                profile=prof.name,
                start=start,
                size=prof.size,
            )
            mine.append(gi)
            self._event("change", pf.devpath, NVIDIA_GPU_INSTANCE=f"+{gi.id}")
            self.rerender()

    def gpu_process_control(self, text: str) -> None:
        """Control ``gpu_processes``: '<PF> <pid> <name>' (a process NVML lists as running on the GPU, as a CUDA
        process or the display driver's client would be), or '<PF> clear'."""
        with self.lock:
            parts = text.split()
            if len(parts) == 2 and parts[1] == "clear":
                self.gpu_procs.pop(self._vfio_pf(parts[0]).name, None)
            elif len(parts) == 3 and parts[1].isdigit():
                self.gpu_procs.setdefault(self._vfio_pf(parts[0]).name, []).append((int(parts[1]), parts[2]))
            else:
                raise SimError(errno.EINVAL, "write '<PF> <pid> <name>' or '<PF> clear'")
            self.rerender()

    def _reset_mig(self, pf: Function) -> None:
        dev = next((d for d in self.profile.devices if d.name == pf.name), None)
        pf.mig = bool(dev.mig) if dev is not None else False
        self.gis.pop(pf.name, None)

    def set_heterogeneous(self, text: str) -> None:
        """Control ``heterogeneous``: '<PF> 0|1'; refused (EBUSY) while the GPU hosts vGPUs, as NVML's IN_USE."""
        with self.lock:
            parts = text.split()
            if len(parts) != 2 or parts[1] not in ("0", "1"):
                raise SimError(errno.EINVAL, "write '<PF address> 0|1'")
            pf = self.functions.get(parts[0].lower())
            if pf is None or not pf.all_vfs or not self.functions[pf.all_vfs[0]].vendor_vfio:
                raise SimError(errno.ENODEV, f"{parts[0]} is not a vendor-VFIO GPU")
            if any(self.vf_type.get(v) for v in pf.vfs):
                raise SimError(errno.EBUSY, f"{pf.name} hosts vGPUs")
            pf.heterogeneous = parts[1] == "1"
            self.rerender()

    # --- SR-IOV, modules, IOMMU ----------------------------------------------------------------------------------
    def set_numvfs(self, pf_name: str, data: bytes) -> None:
        """A write to <PF>/sriov_numvfs, as the 6.1 PCI core takes it (``sriov_numvfs_store``): the current value
        succeeds and does nothing; 0 disables the VFs; another value enables that many when none are enabled,
        EBUSY when some are ("Disable before enabling"), ERANGE above sriov_totalvfs.  Assumption: the NVIDIA
        driver refuses (EBUSY) to disable VFs that host a vGPU."""
        with self.lock:
            pf = self.functions[pf_name]
            try:
                value = int(data.decode("ascii", "replace").strip(), 0)
            except ValueError:
                raise SimError(errno.EINVAL, "not a number") from None
            total = pf.model.sriov.totalvfs if pf.model.sriov else 0
            if value < 0 or value > total:
                raise SimError(errno.ERANGE, f"{value} is more than sriov_totalvfs {total}")
            if value == len(pf.vfs):
                return
            if value and pf.vfs:
                raise SimError(errno.EBUSY, f"{len(pf.vfs)} VFs already enabled; disable before enabling {value}")
            if not value:
                busy = [v for v in pf.vfs if self.vf_type.get(v) or any(i.parent == v for i in self.instances.values())]
                if busy:
                    raise SimError(errno.EBUSY, f"VF {busy[0]} hosts a vGPU")
                for v in pf.vfs:
                    self.functions[v].present = False
                    self.vf_params.pop(v, None)
                    self.vf_placement.pop(v, None)
                    self._event("remove", self.functions[v].devpath)
                pf.vfs = []
            else:
                pf.vfs = pf.all_vfs[:value]
                for v in pf.vfs:
                    self.functions[v].present = True
                    self.functions[v].registered = self._modules_loaded(self.functions[v])
                    self._event("add", self.functions[v].devpath)
            self._vf_group_files()
            self.rerender()

    def _modules_loaded(self, fn: Function) -> bool:
        need = list(fn.model.modules) + (["vfio"] if fn.is_parent else [])
        return all(m in self.modules for m in need)

    def _dependents(self, name: str) -> List[str]:
        """``name`` and the loaded modules that need it (a vendor mdev module needs mdev, vfio and its PCI driver)."""
        out = [name]
        for dev in self.profile.devices:
            m = dev.model
            vendor = [x for x in m.modules if x not in ("mdev", m.driver)]
            needs = {"mdev", "vfio", m.driver} if m.vgpu == "mdev" else set()
            if name in needs:
                out += [x for x in vendor if x in self.modules]
        return list(dict.fromkeys(out))

    def module_control(self, text: str) -> None:
        """Control ``modules``: 'unload NAME' (NAME and the modules that need it go, as ``modprobe -r`` would take
        them; parents they registered leave the mdev core, their mdevs are lost), 'load NAME' (back, with the
        profile's version; parents whose modules are all loaded again register, empty), 'reload NAME [VERSION]'
        (as after installing another release of the driver and reloading it: the parents it serves lose their
        vGPUs, the version file says VERSION)."""
        with self.lock:
            parts = text.split()
            if (
                not parts
                or parts[0] not in ("unload", "load", "reload")
                or len(parts) not in (2, 3)
                or (len(parts) == 3 and parts[0] != "reload")
            ):
                raise SimError(errno.EINVAL, "write 'unload NAME', 'load NAME' or 'reload NAME [VERSION]'")
            op, name = parts[0], parts[1]
            known = profile_modules(self.profile)
            if name not in known:
                raise SimError(errno.ENOENT, f"module {name} is not part of this host")
            if op == "load":
                self.modules.setdefault(name, known[name])
            else:
                if name not in self.modules:
                    raise SimError(errno.ENOENT, f"module {name} is not loaded")
                gone = self._dependents(name)
                affected = [
                    fn
                    for fn in self.functions.values()
                    if (fn.is_parent and any(g in fn.model.modules for g in gone))
                    or (fn.vendor_vfio and fn.model.driver in gone)
                ]
                for pf in {
                    self.functions[fn.physfn].name: self.functions[fn.physfn]
                    for fn in affected
                    if fn.vendor_vfio and fn.physfn
                }.values():
                    self._reset_mig(pf)  # MIG mode and GPU instances do not survive a driver reload
                for fn in affected:
                    for inst in [i for i in self.instances.values() if i.parent == fn.name]:
                        self._drop(inst)
                    self.vf_type.pop(fn.name, None)
                    self.vf_gi.pop(fn.name, None)
                    if fn.is_parent and fn.registered:
                        fn.registered = False
                        self._event("change", fn.devpath, MDEV_STATE="unregistered")
                if op == "unload":
                    for g in gone:
                        self.modules.pop(g, None)
                else:
                    self.modules[name] = parts[2] if len(parts) == 3 else known[name]
            for fn in self.functions.values():
                if fn.is_parent and fn.present and not fn.registered and self._modules_loaded(fn):
                    fn.registered = True
                    self._event("change", fn.devpath, MDEV_STATE="registered")
            self.rerender()

    def set_iommu(self, text: str) -> None:
        """Control ``iommu``: '0' or '1': reboot, with (1) or without (0) a hardware IOMMU (intel_iommu=on, or
        VT-d / AMD-Vi off in the firmware): without one, PCI functions have no IOMMU group (mdevs still get theirs)."""
        value = text.strip()
        if value not in ("0", "1"):
            raise SimError(errno.EINVAL, "write 0 or 1")
        with self.lock:
            self.iommu = value == "1"
            self.reboot()

    # --- events, groups, failures ---------------------------------------------------------------------------------
    def _event(self, action: str, devpath: str, **env: str) -> None:
        self.event_seq += 1
        extra = "".join(f" {k}={v}" for k, v in env.items())
        self.events.append(f"{self.event_seq} {action} {devpath}{extra}")
        del self.events[:-EVENTS_KEPT]

    def _alloc_group(self) -> int:
        """Lowest free group number above the PCI functions' groups (the kernel's IDA hands out the lowest free)."""
        taken = {i.group for i in self.instances.values()}
        n = self.group_base
        while n in taken:
            n += 1
        return n

    def group_file(self, group: int) -> Optional[str]:
        return os.path.join(self.dev_vfio, str(group)) if self.dev_vfio else None

    def take_failure(self, path: str) -> None:
        """Raise the errno of the first fail_next rule matching ``path`` (a tree path), consuming the rule."""
        for idx, (suffix, err) in enumerate(self.fail_rules):
            if path == suffix or path.endswith("/" + suffix.lstrip("/")):
                del self.fail_rules[idx]
                raise SimError(err, f"fail_next {suffix}")

    # --- kernel operations ----------------------------------------------------------------------------------------
    def create(self, parent: str, type_id: str, data: bytes) -> str:
        """A write to mdev_supported_types/<type>/create; returns the new mdev's uuid."""
        with self.lock:
            fn = self.functions.get(parent)
            if fn is None or not fn.is_parent or not fn.registered or not fn.present:
                raise SimError(errno.ENODEV, f"parent {parent} is not registered")
            uuid = parse_uuid_write(data)
            if uuid in self.instances:
                raise SimError(errno.EEXIST, f"{uuid} exists")
            if self.available(parent, type_id) < 1:
                raise SimError(fn.model.full_errno, f"no available instances of {type_id} on {parent}")
            inst = Instance(uuid=uuid, parent=parent, type_id=type_id, group=self._alloc_group())
            self.instances[uuid] = inst
            gf = self.group_file(inst.group)
            if gf:
                with open(gf, "w"):
                    pass
            self._event("add", f"{fn.devpath}/{uuid}", MDEV_TYPE=type_id)
            self.rerender()
            return uuid

    def begin_remove(self, uuid: str, data: bytes) -> Optional[Instance]:
        """First half of a write to <mdev>/remove.  Returns the instance to remove (now marked removing: its
        ``remove`` attribute and bus link are gone, as while the kernel waits for the device's user), or None when
        the write does nothing ("0", or another writer got there first)."""
        with self.lock:
            value = kstrtoul(data)
            inst = self.instances.get(uuid)
            if value == 0 or inst is None or inst.removing:
                return None
            inst.removing = True
            self.rerender()
            return inst

    def abort_remove(self, inst: Instance) -> None:
        with self.lock:
            if self.instances.get(inst.uuid) is inst:
                inst.removing = False
                self.rerender()

    def finish_remove(self, inst: Instance) -> None:
        with self.lock:
            if self.instances.get(inst.uuid) is inst:
                self._drop(inst)
                self.rerender()

    def _drop(self, inst: Instance) -> None:
        del self.instances[inst.uuid]
        self.vf_params.pop(inst.uuid, None)
        gf = self.group_file(inst.group)
        if gf:
            try:
                os.unlink(gf)
            except FileNotFoundError:
                pass
        self._event("remove", f"{self.functions[inst.parent].devpath}/{inst.uuid}", MDEV_TYPE=inst.type_id)

    def remove_now(self, uuid: str) -> None:
        """Remove without the in-use wait (materialize, tests of the model)."""
        inst = self.begin_remove(uuid, b"1")
        if inst is not None:
            self.finish_remove(inst)

    # --- test controls --------------------------------------------------------------------------------------------
    def _resolve_parents(self, name: str) -> List[Function]:
        name = name.strip()
        fn = self.functions.get(name) or self.functions.get(name.lower())
        if fn is None:
            raise SimError(errno.ENODEV, f"no device {name}")
        if fn.is_parent:
            return [fn]
        vfs = [self.functions[v] for v in fn.vfs if self.functions[v].is_parent]
        if not vfs:
            raise SimError(errno.EINVAL, f"{name} is not an mdev parent")
        return vfs

    def unregister(self, name: str) -> None:
        """The parent's driver unregisters from the mdev core (driver unload): its instances are lost."""
        with self.lock:
            for fn in self._resolve_parents(name):
                for inst in [i for i in self.instances.values() if i.parent == fn.name]:
                    self._drop(inst)
                if fn.registered:
                    fn.registered = False
                    self._event("change", fn.devpath, MDEV_STATE="unregistered")
            self.rerender()

    def register(self, name: str) -> None:
        with self.lock:
            for fn in self._resolve_parents(name):
                if not self._modules_loaded(fn):
                    raise SimError(errno.ENODEV, f"the modules of {fn.name} are not loaded")
                if not fn.registered:
                    fn.registered = True
                    self._event("change", fn.devpath, MDEV_STATE="registered")
            self.rerender()

    def reboot(self) -> None:
        """As after a reboot: no instances, every parent registered, no pending failures."""
        with self.lock:
            for inst in list(self.instances.values()):
                self._drop(inst)
            self.vf_type.clear()
            self.vf_params.clear()
            self.vf_placement.clear()
            self.vf_gi.clear()
            for dev in self.profile.devices:
                if dev.name in self.functions:
                    self.functions[dev.name].heterogeneous = dev.heterogeneous
                    self._reset_mig(self.functions[dev.name])
            self.gpu_procs.clear()
            self.modules = profile_modules(self.profile)
            for fn in self.functions.values():
                fn.registered = True
                if fn.physfn is not None:
                    pf = self.functions[fn.physfn]
                    dev = next((d for d in self.profile.devices if d.name == pf.name), None)
                    boot = dev.boot_numvfs if dev is not None else (fn.model.sriov.numvfs if fn.model.sriov else 0)
                    fn.present = pf.all_vfs.index(fn.name) < boot
            for fn in self.functions.values():
                if fn.all_vfs:
                    fn.vfs = [v for v in fn.all_vfs if self.functions[v].present]
            self._vf_group_files()
            self.fail_rules.clear()
            self._event("reboot", "/")
            self.rerender()

    def add_fail_rule(self, text: str) -> None:
        with self.lock:
            line = text.strip()
            if line in ("", "clear"):
                self.fail_rules.clear()
            else:
                parts = line.split()
                if len(parts) != 2:
                    raise SimError(errno.EINVAL, "write '<create|remove|path-suffix> <ERRNO>' or 'clear'")
                self.fail_rules.append((parts[0], parse_errno(parts[1])))
            self.rerender()

    def set_remove_block_seconds(self, text: str) -> None:
        try:
            value = float(text.strip())
        except ValueError:
            raise SimError(errno.EINVAL, "seconds expected") from None
        if value < 0:
            raise SimError(errno.EINVAL, "seconds must be >= 0")
        with self.lock:
            self.remove_block_seconds = value
            self.rerender()

    # --- rendering ------------------------------------------------------------------------------------------------
    def rerender(self) -> None:
        """Note a change: the tree is rendered again on its next read."""
        with self.lock:
            self._tree = None

    @property
    def tree(self) -> Tree:
        """The current sysfs tree (immutable; a change makes a new one)."""
        tree = self._tree
        if tree is None:
            with self.lock:
                if self._tree is None:
                    self._tree = render(self)
                tree = self._tree
        return tree


CONTROL_README = """\
vgpusim control directory: the only part of this tree no kernel has.  Write a line to a file:
  fail_next             '<create|remove|path-suffix> <ERRNO>': the next write to a matching attribute
                        fails with that errno, once.  'clear' drops pending rules.  Read: pending rules.
  unregister            '<parent>': the parent's driver leaves the mdev core; its mdevs are lost.
                        A PF name means all its VF parents.
  register              '<parent>': the parent comes back, empty.
  reboot                anything: every mdev is gone and every parent registered, as after a reboot
                        (vendor-VFIO VFs lose their vGPU types; SR-IOV VFs, heterogeneous and MIG modes
                        return to the profile's, GPU instances and GPU processes are gone).
  heterogeneous         '<PF> 0|1': a vendor-VFIO GPU's heterogeneous (mixed-size) mode, as NVML's
                        nvmlDeviceSetVgpuHeterogeneousMode sets it; EBUSY while the GPU hosts vGPUs.
  modules               'unload NAME': the module and those that need it go (their parents leave the mdev
                        core, their mdevs are lost); 'load NAME': it comes back (parents register, empty);
                        'reload NAME [VERSION]': as after installing another driver release and reloading it
                        (its parents lose their vGPUs; sys/module/NAME/version says VERSION).  Read: loaded ones.
  mig                   '<PF> 0|1': a vendor-VFIO GPU's MIG mode, as nvmlDeviceSetMigMode sets it; EBUSY while the
                        GPU hosts vGPUs or runs processes, or (to turn it off) has GPU instances.  Read: PF mode.
  gpu_instances         '<PF> create <profile> [<start>]', '<PF> destroy <id>': MIG GPU instances, as NVML
                        creates them (EINVAL: not in MIG mode, unknown profile or start; ENOSPC: overlap; EBUSY:
                        destroying one a vGPU uses).  Read: 'PF ID PROFILE START SIZE' lines.
  gpu_processes         '<PF> <pid> <name>' or '<PF> clear': processes running on the GPU (they block MIG changes).
  iommu                 '0' or '1': reboot without or with a hardware IOMMU (PCI functions lose or get their
                        IOMMU groups; mdevs get groups either way).  Read: the current setting.
  remove_block_seconds  how long a write to 'remove' of a held mdev (someone has dev/vfio/<group> open)
                        blocks before failing with EBUSY (default 10).
  events                read: 'SEQ ACTION DEVPATH KEY=VALUE...' lines (add, remove, change, reboot).
  profile, pid          read: the profile's name and the daemon's pid.
"""


def render(m: Machine) -> Tree:
    b = _Builder()
    mdev_core = ("/bus/mdev/devices", "/bus/mdev/drivers", "/class/mdev_bus") if "mdev" in m.modules else ()
    for d in ("/bus/pci/devices", "/kernel/iommu_groups", "/devices/virtual") + mdev_core:
        b.mkdir(d)
    for name, version in sorted(m.modules.items()):
        # as a loaded module's directory: initstate, refcnt, version where the module declares one, holders/
        b.file(f"/module/{name}/initstate", "live\n")
        b.file(f"/module/{name}/refcnt", "0\n")
        if version is not None:
            b.file(f"/module/{name}/version", version + "\n")
        b.mkdir(f"/module/{name}/holders")
    by_parent: Dict[str, List[Instance]] = {}
    for inst in sorted(m.instances.values(), key=lambda i: i.uuid):
        by_parent.setdefault(inst.parent, []).append(inst)
    for fn in m.functions.values():
        md = fn.model
        base = fn.devpath
        if not fn.present:
            continue  # a VF of a PF whose VFs are disabled
        if md.kind == "pci":
            _render_pci(b, m, fn)
        elif fn.registered:
            b.file(f"{base}/uevent", f"MAJOR=0\nMINOR=0\nDEVNAME={fn.name}\n", RW)
            b.link(f"{base}/subsystem", f"/class/{md.class_name}")
            b.link(f"/class/{md.class_name}/{fn.name}", base)
        else:
            continue  # a virtual parent's module is gone, and its device with it
        if not (fn.is_parent and fn.registered):
            continue
        b.link(f"/class/mdev_bus/{fn.name}", base)
        b.mkdir(f"/bus/mdev/drivers/{md.mdev_driver}")
        for t in md.types:
            tdir = f"{base}/mdev_supported_types/{t.id}"
            if t.name is not None:
                b.file(f"{tdir}/name", t.name + "\n")
            if t.description is not None:
                b.file(f"{tdir}/description", t.description + "\n")
            b.file(f"{tdir}/device_api", t.device_api + "\n")
            b.file(f"{tdir}/available_instances", f"{m.available(fn.name, t.id)}\n")
            b.file(f"{tdir}/create", "", WO, ("create", fn.name, t.id))
            b.mkdir(f"{tdir}/devices")
        for inst in by_parent.get(fn.name, []):
            idir = f"{base}/{inst.uuid}"
            b.link(f"{idir}/iommu_group", f"/kernel/iommu_groups/{inst.group}")
            b.link(f"/kernel/iommu_groups/{inst.group}/devices/{inst.uuid}", idir)
            b.mkdir(f"{idir}/vfio-dev")
            if inst.removing:
                # as measured on 6.1 while a remove waits for the device's user: the device is unbound and off the
                # bus and its type's list, and keeps only its IOMMU group and vfio-dev (its slot is not freed yet)
                continue
            b.link(f"{base}/mdev_supported_types/{inst.type_id}/devices/{inst.uuid}", idir)
            b.link(f"{idir}/mdev_type", f"{base}/mdev_supported_types/{inst.type_id}")
            b.link(f"{idir}/driver", f"/bus/mdev/drivers/{md.mdev_driver}")
            b.link(f"{idir}/subsystem", "/bus/mdev")
            if md.vendor == "0x10de":  # NVIDIA's vGPU manager adds nvidia/ to its mdevs
                b.file(f"{idir}/nvidia/vgpu_params", f"{m.vf_params.get(inst.uuid, '')}\n", RW, ("params", inst.uuid))
            b.file(f"{idir}/uevent", f"DRIVER={md.mdev_driver}\n", RW)  # 6.1 puts no MDEV_TYPE in it
            b.mkdir(f"{idir}/power")
            b.link(f"/bus/mdev/drivers/{md.mdev_driver}/{inst.uuid}", idir)
            b.file(f"{idir}/remove", "", WO, ("remove", inst.uuid))
            b.link(f"/bus/mdev/devices/{inst.uuid}", idir)
    _render_control(b, m)
    return b.tree()


def _render_pci(b: _Builder, m: Machine, fn: Function) -> None:
    md, base = fn.model, fn.devpath
    b.file(f"{base}/vendor", f"{md.vendor}\n")
    b.file(f"{base}/device", f"{md.device}\n")
    if md.subsystem_vendor:
        b.file(f"{base}/subsystem_vendor", f"{md.subsystem_vendor}\n")
    if md.subsystem_device:
        b.file(f"{base}/subsystem_device", f"{md.subsystem_device}\n")
    b.file(f"{base}/class", f"{md.pci_class}\n")
    b.file(f"{base}/numa_node", f"{fn.numa_node if fn.numa_node is not None else -1}\n", RW)
    pci_id = f"{(md.vendor or '')[2:].upper()}:{(md.device or '')[2:].upper()}"
    uevent = f"DRIVER={md.driver}\n" if md.driver else ""
    uevent += f"PCI_CLASS={(md.pci_class or '0x0')[2:].upper().lstrip('0')}\nPCI_ID={pci_id}\n"
    uevent += f"PCI_SLOT_NAME={fn.name}\n"
    b.file(f"{base}/uevent", uevent, RW)
    b.link(f"{base}/subsystem", "/bus/pci")
    b.link(f"/bus/pci/devices/{fn.name}", base)
    if md.driver:
        b.link(f"{base}/driver", f"/bus/pci/drivers/{md.driver}")
        b.link(f"/bus/pci/drivers/{md.driver}/{fn.name}", base)
    if fn.group is not None and m.iommu:
        b.link(f"{base}/iommu_group", f"/kernel/iommu_groups/{fn.group}")
        b.link(f"/kernel/iommu_groups/{fn.group}/devices/{fn.name}", base)
        b.file(f"/kernel/iommu_groups/{fn.group}/type", "DMA\n")
    if md.sriov and fn.physfn is None:
        b.file(f"{base}/sriov_totalvfs", f"{md.sriov.totalvfs}\n")
        b.file(f"{base}/sriov_numvfs", f"{len(fn.vfs)}\n", RW, ("numvfs", fn.name))
        b.file(f"{base}/sriov_offset", f"{md.sriov.offset}\n")
        b.file(f"{base}/sriov_stride", f"{md.sriov.stride}\n")
        b.file(f"{base}/sriov_vf_device", f"{(md.device or '0x')[2:]}\n")
        for k, vf in enumerate(fn.vfs):
            b.link(f"{base}/virtfn{k}", m.functions[vf].devpath)
    if fn.physfn is not None:
        b.link(f"{base}/physfn", m.functions[fn.physfn].devpath)
    if fn.vendor_vfio:
        nv = f"{base}/nvidia"
        number = m.vf_type.get(fn.name, 0)
        text = (
            ""
            if number
            else "ID    : vGPU Name\n" + "".join(f"{int(t.id):<5d} : {t.name}\n" for t in m.creatable(fn.name))
        )
        b.file(f"{nv}/creatable_vgpu_types", text)
        b.file(f"{nv}/current_vgpu_type", f"{number}\n", RW, ("vgpu_type", fn.name))
        b.file(f"{nv}/vgpu_params", f"{m.vf_params.get(fn.name, '')}\n", RW, ("vf_attr", fn.name, "vgpu_params"))
        b.file(f"{nv}/placement_id", f"{m.vf_placement.get(fn.name, 0)}\n", RW, ("vf_attr", fn.name, "placement_id"))
        b.file(f"{nv}/gpu_instance_id", f"{m.vf_gi.get(fn.name, -1)}\n")


def _render_control(b: _Builder, m: Machine) -> None:
    c = f"/{CONTROL_DIR}"
    b.file(f"{c}/README", CONTROL_README)
    b.file(
        f"{c}/fail_next",
        "".join(f"{s} {errno.errorcode.get(e, e)}\n" for s, e in m.fail_rules),
        RW,
        ("ctl", "fail_next"),
    )
    b.file(f"{c}/unregister", "", WO, ("ctl", "unregister"))
    b.file(f"{c}/register", "", WO, ("ctl", "register"))
    b.file(f"{c}/reboot", "", WO, ("ctl", "reboot"))
    b.file(
        f"{c}/heterogeneous",
        "".join(
            f"{f.name} {int(f.heterogeneous)}\n"
            for f in m.functions.values()
            if f.all_vfs and m.functions[f.all_vfs[0]].vendor_vfio
        ),
        RW,
        ("ctl", "heterogeneous"),
    )
    vfio_pfs = [f for f in m.functions.values() if f.all_vfs and m.functions[f.all_vfs[0]].vendor_vfio]
    b.file(f"{c}/mig", "".join(f"{f.name} {int(f.mig)}\n" for f in vfio_pfs), RW, ("ctl", "mig"))
    b.file(
        f"{c}/gpu_instances",
        "".join(
            f"{f.name} {g.id} {g.profile} {g.start} {g.size}\n"
            for f in vfio_pfs
            for g in sorted(m.gis.get(f.name, []), key=lambda g: g.id)
        ),
        RW,
        ("ctl", "gpu_instances"),
    )
    b.file(
        f"{c}/gpu_processes",
        "".join(f"{f.name} {pid} {name}\n" for f in vfio_pfs for pid, name in m.gpu_procs.get(f.name, [])),
        RW,
        ("ctl", "gpu_processes"),
    )
    b.file(f"{c}/iommu", f"{int(m.iommu)}\n", RW, ("ctl", "iommu"))
    b.file(f"{c}/modules", "".join(f"{k} {v or '-'}\n" for k, v in sorted(m.modules.items())), RW, ("ctl", "modules"))
    b.file(f"{c}/remove_block_seconds", f"{m.remove_block_seconds:g}\n", RW, ("ctl", "remove_block_seconds"))
    b.file(f"{c}/events", "".join(e + "\n" for e in m.events))
    b.file(f"{c}/profile", f"{m.profile.name}\n")
    b.file(f"{c}/pid", f"{m.pid if m.pid is not None else ''}\n")
