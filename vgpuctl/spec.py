"""The desired state: which vGPU instances this host should have, read from ``etc/vgpuctl``.

Files: ``etc/vgpuctl/vgpuctl.yaml`` (optional) and then ``etc/vgpuctl/conf.d/*.yaml`` in name order.  Every file has
``version: 1``; their ``instances`` are merged into one set, and an instance name defined twice (in one file or two)
is an error.  Parsing is strict: unknown keys, wrong types, duplicate uuids or names are ``ConfigError``s naming the
file, the line and the key, raised before anything on the host is touched.  The schema is in docs/desired-state.md::

    version: 1
    instances:
      web-1:                            # the instance's name: [A-Za-z0-9_.-]+, unique over all files
        uuid: 0f4c...                   # optional: derived from the name when absent (uuid5, stable forever)
        type: T4-2Q                     # type id (nvidia-231) or name/profile (GRID T4-2Q, T4-2Q) ...
        profile: gold                   # ... or a service profile of profiles.yaml (exactly one of the two)
        parent: "0000:3b:00.0"          # a parent device ...
        placement: {tenant: a, numa_node: 0}   # ... or a placement request (exactly one of the two)
        domain: web-1                   # optional: libvirt domain to attach the device to
        attach: config                  # live | config | both (default config); only with domain
        params: {frame_rate_limiter: 0} # NVIDIA vgpu_params (vgpuctl.vgpu_params); {} clears; default: the
                                        # profile's, else not managed
    gpus:                               # optional: GPU-wide NVIDIA settings, converged through NVML
      "0000:4a:00.0":                   # a physical GPU's PCI address, unique over all files
        scheduler: {policy: equal-share, timeslice_ms: 2}   # best-effort | equal-share | fixed-share
        heterogeneous: false            # heterogeneous vGPU mode (mixed-size types)

Checks that need the host (the type is offered, pinned instances fit a parent) are in ``validate``; the planner
never raises for them but shows the instance as blocked, so the service keeps running while a driver loads.
PyYAML is imported only here, when a file is parsed: read-only commands such as ``vgpuctl list`` never load it.
"""
from __future__ import annotations

import os
import re
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Collection, Dict, List, Optional, Sequence, Tuple

from .configfile import VERSION, NodeReader, compose_yaml, read_config
from .errors import AmbiguousType, ConfigError, UnknownType
from .model import BackendKind, Inventory, Parent, canonical_parent_name, canonical_uuid, find_type

MAIN_FILE = "vgpuctl.yaml"
DROPIN_DIR = "conf.d"
SPEC_VERSION = VERSION
#: uuid5 namespace of derived instance uuids.  Never change it: derived uuids must stay the same across releases.
UUID_NAMESPACE = uuidlib.UUID("6f0b3f63-3a51-4d8e-9d0c-7e1b5a2c9a40")
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

_TOP_KEYS = ("version", "instances", "gpus")
_GPU_KEYS = ("scheduler", "heterogeneous")
_SCHED_KEYS = ("policy", "timeslice_ms")
#: the vGPU scheduler policies NVML knows (``nvml.POLICIES``; spelled out here so parsing needs no NVML)
SCHED_POLICIES = ("best-effort", "equal-share", "fixed-share")
_INSTANCE_KEYS = ("uuid", "type", "profile", "parent", "placement", "domain", "attach", "params")
_PLACEMENT_KEYS = ("tenant", "numa_node")


class AttachMode(str, Enum):
    LIVE = "live"  #: hot-plug into the running domain only
    CONFIG = "config"  #: the persistent definition only (takes effect at the next start)
    BOTH = "both"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Mark:
    """Where something was written: file and 1-based line."""

    path: str
    line: Optional[int] = None


@dataclass(frozen=True)
class PlacementRequest:
    tenant: Optional[str] = None
    numa_node: Optional[int] = None  #: only parents on this NUMA node (or without NUMA information)


def _line_of(key_lines: Tuple[Tuple[str, int], ...], key: str, default: Optional[int]) -> Optional[int]:
    """The line ``key`` was written on, for errors found after parsing; the entry's own line if not recorded."""
    return next((line for k, line in key_lines if k == key), default)


@dataclass(frozen=True)
class DesiredInstance:
    name: str
    uuid: str  #: canonical lowercase; derived from the name when the file gives none
    type: str  #: as written: an id or a name, resolved per parent with ``lifecycle.find_type``
    parent: Optional[str] = None  #: canonical parent name, or None when placed
    placement: Optional[PlacementRequest] = None
    domain: Optional[str] = None
    attach: AttachMode = AttachMode.CONFIG
    uuid_derived: bool = False
    mark: Mark = Mark("<none>")
    #: line of each key, for errors found later (validation against the host)
    key_lines: Tuple[Tuple[str, int], ...] = ()
    #: the service profile's name (``type`` is then "profile NAME"); ``load`` binds ``profile_def`` to it
    profile: Optional[str] = None
    profile_def: Any = field(default=None, compare=False, repr=False)  #: a ``vgpuctl.profiles.Profile``
    #: NVIDIA vGPU plugin parameters as written (``vgpu_params.Params``); None: not given here
    params: Optional[Tuple[Tuple[str, str], ...]] = None

    def line_of(self, key: str) -> Optional[int]:
        return _line_of(self.key_lines, key, self.mark.line)

    @property
    def wanted_params(self) -> Optional[Tuple[Tuple[str, str], ...]]:
        """The parameters the vGPU should have: the instance's own ``params``, else its profile's; None when
        neither says (then vgpuctl leaves ``vgpu_params`` alone)."""
        if self.params is not None:
            return self.params
        return getattr(self.profile_def, "params", None)


@dataclass(frozen=True)
class DesiredScheduler:
    """A GPU's vGPU time-slice scheduler as the desired state asks for it."""

    policy: str  #: one of ``SCHED_POLICIES``
    timeslice_ms: Optional[float] = None  #: None: leave the time slice as the driver has it (not for best-effort)

    def text(self) -> str:
        return self.policy + (f" {self.timeslice_ms:g}ms" if self.timeslice_ms is not None else "")


@dataclass(frozen=True)
class DesiredGpu:
    """GPU-wide settings of one physical GPU (``gpus:``); a setting left out is not managed."""

    gpu: str  #: canonical PCI address of the physical GPU
    scheduler: Optional[DesiredScheduler] = None
    heterogeneous: Optional[bool] = None
    mark: Mark = Mark("<none>")
    key_lines: Tuple[Tuple[str, int], ...] = ()

    def line_of(self, key: str) -> Optional[int]:
        return _line_of(self.key_lines, key, self.mark.line)


@dataclass(frozen=True)
class DesiredState:
    instances: Tuple[DesiredInstance, ...] = ()
    files: Tuple[str, ...] = ()  #: the files read, in merge order
    gpus: Tuple[DesiredGpu, ...] = ()  #: GPU-wide settings, in file order

    def by_uuid(self) -> Dict[str, DesiredInstance]:
        return {d.uuid: d for d in self.instances}


def derive_uuid(name: str) -> str:
    """The stable uuid of an instance the file gives no uuid for."""
    return str(uuidlib.uuid5(UUID_NAMESPACE, "vgpuctl-instance:" + name))


def spec_files(config_dir: "os.PathLike[str] | str") -> List[Path]:
    """The desired-state files under ``config_dir`` in merge order (main file first, then conf.d by name).

    Every entry that is there counts, whatever its kind: a ``vgpuctl.yaml`` that is a directory, or a
    ``conf.d/*.yaml`` that is a symlink loop, is listed so that reading it refuses the whole desired state
    (``ConfigError``, exit 8).  Skipping it would shrink the desired state, and ``apply`` would destroy what the
    file declares.  Only names starting with ``.`` and names not ending in ``.yaml`` are ignored."""
    base = Path(config_dir)
    files = []
    if os.path.lexists(base / MAIN_FILE):
        files.append(base / MAIN_FILE)
    dropins = base / DROPIN_DIR
    try:
        names = os.listdir(dropins)
    except FileNotFoundError:
        names = []
    except NotADirectoryError:
        if os.path.lexists(base) and not os.path.isdir(base):
            raise ConfigError(os.fspath(base), "is not a directory; move it aside") from None
        raise ConfigError(os.fspath(dropins), "is not a directory; move it aside") from None
    except OSError as e:
        raise ConfigError(os.fspath(dropins), f"cannot be listed: {os.strerror(e.errno or 0)}") from None
    files += sorted(dropins / n for n in names if n.endswith(".yaml") and not n.startswith("."))
    return files


def load(config_dir: "os.PathLike[str] | str") -> DesiredState:
    """Read and merge every desired-state file; no file at all is an empty desired state."""
    return load_files(spec_files(config_dir), config_dir, follow=False)


def load_files(paths: "Sequence[os.PathLike[str] | str]", config_dir: "os.PathLike[str] | str", *,
               follow: bool = True) -> DesiredState:
    """Read and merge the desired-state files ``paths`` in the order given (``vgpuctl plan --config FILE``), with
    the same strict parsing as ``load``; ``profile:`` names are bound to ``config_dir``'s ``profiles.yaml``.  A
    missing or unreadable file is a ``ConfigError``; no file at all is an empty desired state.  ``follow``: the
    files were named by the user, so a symlink is followed (the files ``load`` finds itself are not)."""
    parsed: List[DesiredInstance] = []
    gpus: List[DesiredGpu] = []
    for p in paths:
        text = read_config(p, missing_ok=False, follow=follow)
        doc = parse(text or "", path=os.fspath(p))
        parsed += doc.instances
        gpus += doc.gpus
    if any(d.profile for d in parsed):
        parsed = bind_profiles(parsed, config_dir)
    return merge(parsed, files=tuple(os.fspath(p) for p in paths), gpus=gpus)


def bind_profiles(instances: Sequence[DesiredInstance], config_dir: "os.PathLike[str] | str") -> List[DesiredInstance]:
    """Attach each ``profile:`` to its definition in ``profiles.yaml``; an unknown profile, or more instances of a
    profile than a tenant's limit, is a ``ConfigError`` at the instance's ``profile`` line."""
    from .profiles import check_desired_limits, load_profiles, profiles_path

    profiles = load_profiles(profiles_path(config_dir))
    out = []
    for d in instances:
        if d.profile:
            found = profiles.find(d.profile)
            if found is None:
                known = ", ".join(profiles.names()) or f"none: {profiles_path(config_dir)} defines no profile"
                raise ConfigError(d.mark.path, f"unknown profile {d.profile!r} (defined: {known})",
                                  line=d.line_of("profile"), key=f"instances.{d.name}.profile")
            d = replace(d, profile_def=found)
        out.append(d)
    check_desired_limits(profiles, DesiredState(instances=tuple(out)))
    return out


def merge(
    instances: Sequence[DesiredInstance], *, files: Tuple[str, ...] = (), gpus: Sequence[DesiredGpu] = ()
) -> DesiredState:
    seen_gpus: Dict[str, DesiredGpu] = {}
    for g in gpus:
        if g.gpu in seen_gpus:
            first = seen_gpus[g.gpu]
            raise ConfigError(
                g.mark.path, f"GPU {g.gpu} is already configured at {first.mark.path}:{first.mark.line}",
                line=g.mark.line, key=f"gpus.{g.gpu}",
            )
        seen_gpus[g.gpu] = g
    seen_names: Dict[str, DesiredInstance] = {}
    seen_uuids: Dict[str, DesiredInstance] = {}
    for d in instances:
        if d.name in seen_names:
            first = seen_names[d.name]
            raise ConfigError(
                d.mark.path, f"instance {d.name} is already defined at {first.mark.path}:{first.mark.line}",
                line=d.mark.line, key=f"instances.{d.name}",
            )
        if d.uuid in seen_uuids:
            first = seen_uuids[d.uuid]
            raise ConfigError(
                d.mark.path,
                f"uuid {d.uuid} is also used by instance {first.name} ({first.mark.path}:{first.mark.line})",
                line=d.line_of("uuid"), key=f"instances.{d.name}.uuid",
            )
        seen_names[d.name] = d
        seen_uuids[d.uuid] = d
    return DesiredState(instances=tuple(instances), files=files, gpus=tuple(gpus))


def parse(text: str, *, path: str = "<spec>") -> DesiredState:
    """Parse one desired-state document (no merging, no host checks)."""
    yaml, root = compose_yaml(text, path)
    return _Parser(path, yaml).document(root)


class _Parser(NodeReader):
    """The desired-state schema over ``configfile.NodeReader``'s strict helpers."""

    def string(self, node: Any, key: str) -> str:
        v = self.scalar(node, key)
        if isinstance(v, bool) or v is None or isinstance(v, (list, dict)):
            raise self.fail(node, key, "must be a string")
        if not isinstance(v, str):
            v = node.value  # numbers and the like: keep what was written (a type id "63" stays "63")
        if not v.strip():
            raise self.fail(node, key, "must not be empty")
        return v

    def document(self, root: Any) -> DesiredState:
        if root is None:
            raise ConfigError(self.path, "is empty; it needs at least 'version: 1'", line=1)
        top = self.mapping(root, None, _TOP_KEYS)
        self.version(top, root)
        instances: List[DesiredInstance] = []
        if "instances" in top:
            inode = top["instances"][1]
            if isinstance(inode, self.yaml.ScalarNode) and inode.tag.endswith(":null"):
                pass  # "instances:" with nothing under it
            else:
                for name, (knode, vnode) in self.mapping(inode, "instances", None).items():
                    instances.append(self.instance(name, knode, vnode))
        gpus: List[DesiredGpu] = []
        if "gpus" in top:
            gnode = top["gpus"][1]
            if not (isinstance(gnode, self.yaml.ScalarNode) and gnode.tag.endswith(":null")):
                for name, (knode, vnode) in self.mapping(gnode, "gpus", None).items():
                    gpus.append(self.gpu(name, knode, vnode))
        return merge(instances, files=(self.path,), gpus=gpus)

    def gpu(self, name: str, knode: Any, node: Any) -> DesiredGpu:
        canon = canonical_parent_name(name)
        if canon is None or ":" not in canon:
            raise self.fail(knode, f"gpus.{name}", f"{name!r} is not a PCI address (e.g. \"0000:4a:00.0\")")
        key = f"gpus.{canon}"
        fields = self.mapping(node, key, _GPU_KEYS)
        if not fields:
            raise self.fail(node, key, f"give at least one of: {', '.join(_GPU_KEYS)}")
        lines = tuple((k, kn.start_mark.line + 1) for k, (kn, _) in fields.items())
        sched = self.scheduler(fields["scheduler"][1], f"{key}.scheduler") if "scheduler" in fields else None
        hetero = None
        if "heterogeneous" in fields:
            v = self.scalar(fields["heterogeneous"][1], f"{key}.heterogeneous")
            if not isinstance(v, bool):
                raise self.fail(fields["heterogeneous"][1], f"{key}.heterogeneous", "must be true or false")
            hetero = v
        if hetero and sched is not None and sched.policy == "fixed-share":
            raise self.fail(fields["scheduler"][1], f"{key}.scheduler.policy",
                            "fixed-share is not available in heterogeneous mode (best-effort or equal-share)")
        return DesiredGpu(gpu=canon, scheduler=sched, heterogeneous=hetero,
                          mark=Mark(self.path, knode.start_mark.line + 1), key_lines=lines)

    def scheduler(self, node: Any, key: str) -> DesiredScheduler:
        f = self.mapping(node, key, _SCHED_KEYS)
        if "policy" not in f:
            raise self.fail(node, f"{key}.policy", f"is required: one of {', '.join(SCHED_POLICIES)}")
        policy = self.string(f["policy"][1], f"{key}.policy")
        if policy not in SCHED_POLICIES:
            raise self.fail(f["policy"][1], f"{key}.policy", f"must be one of: {', '.join(SCHED_POLICIES)}")
        ms = None
        if "timeslice_ms" in f:
            vnode = f["timeslice_ms"][1]
            v = self.scalar(vnode, f"{key}.timeslice_ms")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise self.fail(vnode, f"{key}.timeslice_ms", "must be a number of milliseconds > 0")
            if policy == "best-effort":
                raise self.fail(vnode, f"{key}.timeslice_ms", "best-effort has no time slice; drop timeslice_ms")
            ms = float(v)
        return DesiredScheduler(policy=policy, timeslice_ms=ms)

    def instance(self, name: str, knode: Any, node: Any) -> DesiredInstance:
        key = f"instances.{name}"
        if not NAME_RE.fullmatch(name):
            raise self.fail(knode, key, "instance names are 1-64 of A-Z a-z 0-9 _ . - (not starting with . or -)")
        fields = self.mapping(node, key, _INSTANCE_KEYS)
        lines = tuple((k, kn.start_mark.line + 1) for k, (kn, _) in fields.items())
        profile = None
        if "type" in fields and "profile" in fields:
            raise self.fail(fields["profile"][0], f"{key}.profile", "give 'type' or 'profile', not both")
        if "profile" in fields:
            profile = self.string(fields["profile"][1], f"{key}.profile").strip()
            vtype = f"profile {profile}"
        elif "type" not in fields:
            raise self.fail(node, f"{key}.type", "is required (a type id such as nvidia-231 or a name such as T4-2Q), "
                            "or a service profile ('profile: gold')")
        else:
            vtype = self.string(fields["type"][1], f"{key}.type")
        uuid, derived = None, False
        if "uuid" in fields:
            raw = self.string(fields["uuid"][1], f"{key}.uuid")
            uuid = canonical_uuid(raw)
            if uuid is None:
                raise self.fail(fields["uuid"][1], f"{key}.uuid", f"{raw!r} is not a UUID (8-4-4-4-12 hex digits)")
        else:
            uuid, derived = derive_uuid(name), True
        parent = placement = None
        if ("parent" in fields) == ("placement" in fields):
            raise self.fail(node, key, "give exactly one of 'parent' and 'placement'")
        if "parent" in fields:
            raw = self.string(fields["parent"][1], f"{key}.parent")
            parent = canonical_parent_name(raw)
            if parent is None:
                raise self.fail(fields["parent"][1], f"{key}.parent", f"{raw!r} is not a PCI address or device name")
        else:
            placement = self.placement(fields["placement"][1], f"{key}.placement")
        domain = self.string(fields["domain"][1], f"{key}.domain") if "domain" in fields else None
        attach = AttachMode.CONFIG
        if "attach" in fields:
            if domain is None:
                raise self.fail(fields["attach"][0], f"{key}.attach", "needs 'domain'")
            raw = self.string(fields["attach"][1], f"{key}.attach")
            try:
                attach = AttachMode(raw)
            except ValueError:
                raise self.fail(
                    fields["attach"][1], f"{key}.attach", f"must be one of: {', '.join(m.value for m in AttachMode)}"
                ) from None
        params = None
        if "params" in fields:
            from .vgpu_params import from_node

            params = from_node(self, fields["params"][1], f"{key}.params")
        return DesiredInstance(
            name=name, uuid=uuid, type=vtype, parent=parent, placement=placement, domain=domain, attach=attach,
            uuid_derived=derived, mark=Mark(self.path, knode.start_mark.line + 1), key_lines=lines, profile=profile,
            params=params,
        )

    def placement(self, node: Any, key: str) -> PlacementRequest:
        if isinstance(node, self.yaml.ScalarNode) and node.tag.endswith(":null"):
            return PlacementRequest()
        f = self.mapping(node, key, _PLACEMENT_KEYS)
        return PlacementRequest(
            tenant=self.string(f["tenant"][1], f"{key}.tenant") if "tenant" in f else None,
            numa_node=self.integer(f["numa_node"][1], f"{key}.numa_node") if "numa_node" in f else None,
        )


# --- checks against the host --------------------------------------------------------------------------------------
def resolve_type(inventory: Inventory, parent: str, wanted: str) -> Optional[str]:
    """The type id ``wanted`` names on ``parent``, or None if that parent does not offer it."""
    try:
        return find_type(inventory, parent, wanted).type_id
    except (UnknownType, AmbiguousType):  # does not resolve to one type there
        return None


def desired_type(inventory: Inventory, parent: str, d: DesiredInstance) -> Optional[str]:
    """The type id desired instance ``d`` gets on ``parent``: its type, or what its service profile resolves to
    there; None if ``parent`` offers neither.  A vendor-VFIO VF that holds a vGPU offers only that vGPU's type, so
    there the GPU's other VFs also say what the name means (re-typing a VF: destroy, then create)."""
    tid = _type_on(inventory, parent, d)
    if tid is None:
        p = vf_parent(inventory, parent)
        if p is not None and inventory.instance(p.name) is not None:
            for q in sorted(inventory.parents, key=lambda q: q.name):
                if q.backend is p.backend and q.gpu == p.gpu and q.name != p.name:
                    tid = _type_on(inventory, q.name, d)
                    if tid is not None:
                        break
    return tid


def _type_on(inventory: Inventory, parent: str, d: DesiredInstance) -> Optional[str]:
    if d.profile_def is not None:
        t = d.profile_def.type_on(inventory, parent)
        return t.type_id if t is not None else None
    return resolve_type(inventory, parent, d.type)


def host_parent(inventory: Inventory, name: str) -> Optional[str]:
    """The registered parent ``name`` refers to (case-insensitively), or None."""
    low = name.lower()
    for p in inventory.parents:
        if p.name.lower() == low:
            return p.name
    return None


# --- vendor-VFIO instances: named by their VF -------------------------------------------------------------------
def vf_parent(inventory: Inventory, name: Optional[str]) -> Optional[Parent]:
    """The NVIDIA vendor-VFIO parent (an SR-IOV VF with ``nvidia/``) ``name`` refers to, or None."""
    if name is None:
        return None
    low = name.lower()
    for p in inventory.parents:
        if p.backend is BackendKind.NVIDIA_VF and p.name.lower() == low:
            return p
    return None


def _vf_gpu(inventory: Inventory, name: str) -> List[Parent]:
    """The vendor-VFIO VFs of physical GPU ``name`` when ``name`` is such a GPU (and not itself a parent), in address
    order; else empty."""
    low = name.lower()
    if host_parent(inventory, name) is not None:
        return []
    return sorted((p for p in inventory.parents if p.backend is BackendKind.NVIDIA_VF and p.gpu.lower() == low),
                  key=lambda p: p.name)


def bind(desired: DesiredState, inventory: Inventory) -> DesiredState:
    """``desired`` with the identities the host gives: an instance pinned to an NVIDIA vendor-VFIO VF is the vGPU on
    that VF, so its ``uuid`` becomes the VF's address (as ``Instance.uuid`` there is).  Instances ``vf_issues``
    reports are left as written (an explicit uuid, a VF an earlier instance already pins).  Pure; instances on a
    parent that is not registered keep their uuid until it is."""
    out: List[DesiredInstance] = []
    taken: set = set()
    changed = False
    for d in desired.instances:
        p = vf_parent(inventory, d.parent)
        if p is not None and d.uuid_derived and p.name not in taken:
            taken.add(p.name)
            d = replace(d, uuid=p.name)
            changed = True
        out.append(d)
    return replace(desired, instances=tuple(out)) if changed else desired


def vf_issues(desired: DesiredState, inventory: Inventory) -> Dict[str, Tuple[str, str]]:
    """Instance name -> (key, problem) for what the desired state cannot mean on this host's vendor-VFIO parents:
    an explicit ``uuid`` on an instance pinned to a VF (the VF's address is its name), a ``parent`` that is the
    physical GPU of vendor-VFIO VFs (pin one VF: which VF a vGPU is on is its identity, so vgpuctl does not choose
    it behind the operator's back).  A second instance pinned to one VF is not here: the plan blocks it
    ``no-capacity`` (one vGPU per VF) and ``validate`` refuses it."""
    out: Dict[str, Tuple[str, str]] = {}
    pins: Dict[str, DesiredInstance] = {}
    for d in desired.instances:
        if d.parent is None:
            continue
        p = vf_parent(inventory, d.parent)
        if p is not None:
            if not d.uuid_derived:
                out[d.name] = ("uuid", f"a vGPU on NVIDIA vendor-VFIO VF {p.name} is named by the VF's address, "
                                       "not a uuid: drop 'uuid' (the instance is the VF given as 'parent')")
            else:
                pins.setdefault(p.name, d)
    for d in desired.instances:
        if d.parent is None or d.name in out:
            continue
        vfs = _vf_gpu(inventory, d.parent)
        if vfs:
            out[d.name] = ("parent", f"{d.parent} is an NVIDIA GPU whose vGPUs live on its SR-IOV VFs and are named "
                                     f"by the VF: pin one VF as 'parent' ({suggest_vf(inventory, vfs, d, pins)})")
    return out


def suggest_vf(inventory: Inventory, vfs: Sequence[Parent], d: DesiredInstance,
               pinned: Collection[str]) -> str:
    """Words naming the lowest VF of ``vfs`` that is free, offers ``d``'s type and no desired instance pins."""
    used = {i.parent for i in inventory.instances} | set(pinned)
    for p in vfs:
        if p.name not in used and desired_type(inventory, p.name, d) is not None:
            return f"the lowest free VF offering {d.type} is \"{p.name}\""
    return f"none of its VFs {vfs[0].name}..{vfs[-1].name} is free and offers {d.type} now"


def validate(desired: DesiredState, inventory: Inventory) -> None:
    """Raise ``ConfigError`` for what the host proves wrong: a type no registered parent offers, more instances
    pinned to a parent than the type's ``max_instance`` allows.  A parent that is not registered (yet) is not an
    error: its instances wait.  While no parent at all is registered nothing is checked."""
    if not inventory.parents:
        return
    issues = vf_issues(desired, inventory)
    for d in desired.instances:
        if d.name in issues:
            k, problem = issues[d.name]
            raise ConfigError(d.mark.path, problem, line=d.line_of(k), key=f"instances.{d.name}.{k}")
    vf_pins: Dict[str, DesiredInstance] = {}
    for d in desired.instances:
        p = vf_parent(inventory, d.parent)
        if p is None:
            continue
        first = vf_pins.setdefault(p.name, d)
        if first is not d:
            raise ConfigError(
                d.mark.path, f"VF {p.name} holds one vGPU and instance {first.name} ({first.mark.path}:"
                f"{first.mark.line}) already pins it", line=d.line_of("parent"), key=f"instances.{d.name}.parent",
            )
    pinned: Counter = Counter()
    for d in desired.instances:
        key = f"instances.{d.name}.type"
        if d.parent is None:
            offering = [p for p in inventory.parents if desired_type(inventory, p.name, d)]
            vfs = sorted((p for p in offering if p.backend is BackendKind.NVIDIA_VF), key=lambda p: p.name)
            if offering and len(vfs) == len(offering):
                pins = [x.parent for x in desired.instances if x.parent is not None]
                raise ConfigError(
                    d.mark.path, f"only NVIDIA vendor-VFIO VFs offer type {d.type}, and a vGPU there is named by its "
                    f"VF: give this instance a 'parent' VF instead of 'placement' "
                    f"({suggest_vf(inventory, vfs, d, pins)})",
                    line=d.line_of("placement"), key=f"instances.{d.name}.placement",
                )
        if d.parent is not None:
            parent = host_parent(inventory, d.parent)
            if parent is None:
                continue
            tid = desired_type(inventory, parent, d)
            if tid is None:
                offered = ", ".join(t.type_id for t in inventory.types_on(parent)) or "none"
                raise ConfigError(
                    d.mark.path, f"parent {parent} does not offer type {d.type} (it offers: {offered})",
                    line=d.line_of("type"), key=key,
                )
            pinned[(parent, tid)] += 1
            vt = inventory.type_on(parent, tid)
            limit = vt.max_instance if vt is not None else None
            if limit is not None and pinned[(parent, tid)] > limit:
                raise ConfigError(
                    d.mark.path,
                    f"{pinned[(parent, tid)]} instances of {tid} pinned to {parent}, which holds at most {limit}",
                    line=d.line_of("parent"), key=f"instances.{d.name}.parent",
                )
        elif not any(desired_type(inventory, p.name, d) for p in inventory.parents):
            raise ConfigError(
                d.mark.path, f"no registered parent offers type {d.type} (see 'vgpuctl types')",
                line=d.line_of("type"), key=key,
            )


# --- export -------------------------------------------------------------------------------------------------------
def export_doc(inventory: Inventory, owned: Sequence[str], desired: Optional[DesiredState] = None) -> Dict[str, Any]:
    """The desired-state document for the owned instances that exist: explicit uuid, type id and parent (vendor-VFIO
    instances: parent VF and type only, the VF being their name).  Names come from ``desired`` where it has the
    instance, else ``vgpu-<first 8 hex digits>`` (``vgpu-0000-4a-00.4`` for a VF)."""
    names = {d.uuid: d for d in bind(desired, inventory).instances} if desired is not None else {}
    own = set(owned)
    instances: Dict[str, Dict[str, Any]] = {}
    for inst in sorted(inventory.instances, key=lambda i: i.uuid):
        if inst.uuid not in own:
            continue
        d = names.get(inst.uuid)
        entry: Dict[str, Any]
        if inst.backend is BackendKind.NVIDIA_VF:  # named by its VF: no uuid
            name = d.name if d is not None else "vgpu-" + inst.uuid.replace(":", "-")
            entry = {"type": inst.type_id, "parent": inst.parent}
        else:
            name = d.name if d is not None else f"vgpu-{inst.uuid[:8]}"
            entry = {"uuid": inst.uuid, "type": inst.type_id, "parent": inst.parent}
        if d is not None and d.domain:
            entry["domain"] = d.domain
            entry["attach"] = str(d.attach)
        instances[name] = entry
    return {"version": SPEC_VERSION, "instances": instances}


def render_doc(doc: Dict[str, Any]) -> str:
    """YAML text for ``export_doc``'s document (written by hand: strings JSON-quoted, which YAML reads back)."""
    import json

    lines = ["# vgpuctl desired state, exported from the host's vgpuctl-owned instances", f"version: {doc['version']}"]
    if not doc["instances"]:
        lines.append("instances: {}")
    else:
        lines.append("instances:")
        for name, entry in doc["instances"].items():
            lines.append(f"  {name}:")
            for k, v in entry.items():
                lines.append(f"    {k}: {json.dumps(v)}")
    return "\n".join(lines) + "\n"
