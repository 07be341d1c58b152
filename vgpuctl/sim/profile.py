"""Simulated-host profiles: YAML data files that describe the hardware of one host.

A profile names device *models* (a GPU board, a sample driver) and the *devices* of the host built from them.  The
schema (version 1) rejects unknown keys.  Shipped profiles live in ``vgpuctl/sim/profiles/<name>.yaml``; the header
comment of each says where its tables come from.

Schema, version 1 (every key below; anything else is an error)::

    version: 1
    summary: one line
    include: [other-profile, ...]     # take `models` from these profiles (devices are not included)
    first_iommu_group: 10             # auto-numbered IOMMU groups of PCI functions start here
    models:
      <key>:                          # a model included from elsewhere may be overridden key by key
        kind: pci | virtual
        # pci only:
        vendor: "0x10de"
        device: "0x1eb8"
        subsystem_vendor: "0x10de"
        subsystem_device: "0x12a2"
        class: "0x030200"
        driver: nvidia                # the PCI driver bound to the function(s); also a module, sys/module/nvidia
        driver_version: "550.90.05"   # that module's sys/module/<driver>/version (NVIDIA's driver release)
        sriov: {totalvfs: 16, numvfs: 16, offset: 4, stride: 1}   # VFs appear as PCI functions
        mdev_on: pf | vf              # where mdev_supported_types live (vf: on every VF, one vGPU per VF)
        vgpu: mdev | vendor-vfio      # vendor-vfio: NVIDIA vGPU 17+ on kernel 6.8+: no mdev; every VF has
                                      # nvidia/{creatable_vgpu_types,current_vgpu_type,...} (needs sriov, capacity
                                      # nvidia, integer type ids and framebuffer on every type; see machine.py)
        mix: equal-size | homogeneous # vendor-vfio: types of one framebuffer size may share a GPU (vGPU 17+
                                      # default) or only one type per GPU; heterogeneous mode (per device, or NVML)
                                      # allows mixed sizes within the GPU's framebuffer
        framebuffer: 49152            # vendor-vfio: the GPU's framebuffer in MiB (mixed-size and MIG rules)
        mig_slices: 7                 # vendor-vfio: compute slices of a GPU in MIG mode
        mig_profiles:                 # vendor-vfio: GPU instance profiles in MIG mode (NVML's names and ids)
          - {name: 1g.18gb, id: 19, index: 0, slices: 1, memory: 16384, size: 1, placements: [0, 1, 2, 3, 4, 5, 6]}
        # virtual only: the device is /sys/devices/virtual/<class_name>/<device name>
        class_name: mtty
        # both:
        mdev_driver: mtty             # the driver mdevs bind to: /sys/bus/mdev/drivers/<mdev_driver>
        module: kvmgt                 # the module that registers the parents (default: mdev_driver, '-' -> '_')
        capacity: nvidia | pool
        #   nvidia: each type has max_instance; once a type has an instance on a physical GPU every other type on
        #           that GPU shows 0 available (homogeneous, time-sliced vGPU).  With mdev_on: vf a VF holds at
        #           most one vGPU and shows 1 or 0.  A create that finds 0 available fails with full_errno.
        #   pool:   the parent has the resources in `pool`; a type costs `cost` of them (a cost for a resource
        #           defaults to the type's field of the same name); available = min(free // cost).
        pool: {ports: 24}
        full_errno: ENOSPC            # errno of a create that finds no capacity (the mdev core's EUSERS for
                                      # drivers that use its counter, such as mdpy; ENOSPC for the rest,
                                      # NVIDIA included: its driver refuses because available_instances is 0)
        description: nvidia | gvt | text | none   # how a type's description file is written (none: no file)
        name_prefix: "GRID "          # prepended to each type's name
        types:
          - {id: nvidia-222, name: T4-1B, ...fields...}

    devices:
      - {pci: "0000:3b:00.0", model: t4, numa_node: 0, iommu_group: 40}   # iommu_group optional
      - {virtual: mtty, model: mtty}
      - {pci: "0000:4a:00.0", model: h200, mig: true, heterogeneous: false}   # vendor-vfio devices only
      - {pci: "0000:4a:00.0", model: h200, numvfs: 0}   # VFs enabled at boot (default: the model's sriov.numvfs)

Type fields: ``id`` (the type-id directory name), ``name``, ``device_api`` (default ``vfio-pci``), ``cost``
(mapping, pool capacity), ``max_instance`` (nvidia capacity), ``text`` (description: text), and the description
fields: nvidia ``num_heads, frl_config, framebuffer`` (MiB) ``, max_resolution, max_instance``; gvt
``low_gm_size, high_gm_size`` (MB) ``, fence, resolution, weight``; vendor-vfio ``framebuffer`` (MiB) and
``mig_slices`` (compute slices of a MIG-backed type: such types are offered only on a GPU in MIG mode, the others
only without) and ``mig_profile`` (the GPU instance profile a MIG-backed type needs: one vGPU per GPU instance, so
such a type is creatable only while a GPU instance of that profile hosts no vGPU).

MIG profiles: ``name`` (``1g.18gb``), ``id`` (NVML's profile id, ``nvidia-smi mig -lgip``), ``index`` (the
``NVML_GPU_INSTANCE_PROFILE_*`` index NVML is asked with), ``slices`` (compute), ``memory`` (MiB), ``size`` and
``placements`` (the memory slices one instance spans, and where one may start: ``nvidia-smi mig -lgipp``).
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from vgpuctl.errors import ConfigError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

_TOP_KEYS = {"version", "summary", "include", "first_iommu_group", "models", "devices"}
_MODEL_KEYS = {
    "kind",
    "vendor",
    "device",
    "subsystem_vendor",
    "subsystem_device",
    "class",
    "driver",
    "sriov",
    "mdev_on",
    "class_name",
    "mdev_driver",
    "capacity",
    "pool",
    "full_errno",
    "description",
    "name_prefix",
    "types",
    "vgpu",
    "mix",
    "framebuffer",
    "mig_slices",
    "module",
    "driver_version",
    "mig_profiles",
}
_MIG_KEYS = {"name", "id", "index", "slices", "memory", "size", "placements"}
_SRIOV_KEYS = {"totalvfs", "numvfs", "offset", "stride"}
_TYPE_KEYS = {
    "id",
    "name",
    "device_api",
    "cost",
    "max_instance",
    "text",
    "num_heads",
    "frl_config",
    "framebuffer",
    "max_resolution",
    "low_gm_size",
    "high_gm_size",
    "fence",
    "resolution",
    "weight",
    "mig_slices",
    "mig_profile",
}
_DEVICE_KEYS = {"pci", "virtual", "model", "numa_node", "iommu_group", "mig", "heterogeneous", "numvfs"}


@dataclass(frozen=True)
class TypeSpec:
    id: str
    name: Optional[str]
    device_api: str
    description: Optional[str]  #: the description file's text, None where the file is absent
    max_instance: Optional[int]
    cost: Tuple[Tuple[str, int], ...]
    framebuffer: Optional[int] = None  #: MiB (vendor-vfio rules)
    mig_slices: Optional[int] = None  #: compute slices of a MIG-backed type; None: time-sliced
    mig_profile: Optional[str] = None  #: the GPU instance profile a MIG-backed type needs (``1g.18gb``)


@dataclass(frozen=True)
class MigProfileSpec:
    """A GPU instance profile (``nvmlGpuInstanceProfileInfo_t`` and its possible placements)."""

    name: str  #: ``1g.18gb``
    id: int  #: NVML's profile id (``nvidia-smi mig -lgip``)
    index: int  #: the NVML_GPU_INSTANCE_PROFILE_* index NVML's profile-info call takes
    slices: int  #: compute slices
    memory: int  #: MiB
    size: int  #: memory slices one instance spans
    placements: Tuple[int, ...]  #: where an instance may start (memory slice index)


@dataclass(frozen=True)
class SriovSpec:
    totalvfs: int
    numvfs: int
    offset: int
    stride: int


@dataclass(frozen=True)
class ModelSpec:
    key: str
    kind: str
    mdev_driver: str
    capacity: str
    full_errno: int
    types: Tuple[TypeSpec, ...]
    vendor: Optional[str] = None
    device: Optional[str] = None
    subsystem_vendor: Optional[str] = None
    subsystem_device: Optional[str] = None
    pci_class: Optional[str] = None
    driver: Optional[str] = None
    sriov: Optional[SriovSpec] = None
    mdev_on: str = "pf"
    class_name: Optional[str] = None
    pool: Tuple[Tuple[str, int], ...] = ()
    vgpu: str = "mdev"  #: "mdev" or "vendor-vfio"
    mix: str = "equal-size"  #: vendor-vfio: "equal-size" or "homogeneous"
    framebuffer: Optional[int] = None  #: vendor-vfio: the GPU's framebuffer, MiB
    mig_slices: int = 7
    #: the kernel module that registers the mdev parents (sys/module/<module>); default: mdev_driver with '_'
    module: Optional[str] = None
    #: the version of the PCI driver's module (sys/module/<driver>/version), e.g. NVIDIA's "550.90.05"
    driver_version: Optional[str] = None
    mig_profiles: Tuple[MigProfileSpec, ...] = ()

    def mig_profile(self, name: str) -> Optional[MigProfileSpec]:
        return next((p for p in self.mig_profiles if p.name == name), None)

    @property
    def modules(self) -> Tuple[str, ...]:
        """The kernel modules a host with this model has loaded, besides vfio and vfio_iommu_type1."""
        out = [self.driver] if self.driver else []
        if self.vgpu == "mdev":
            out += ["mdev", self.module or self.mdev_driver.replace("-", "_")]
        return tuple(dict.fromkeys(m for m in out if m))


@dataclass(frozen=True)
class DeviceSpec:
    name: str  #: PCI address or virtual device name
    model: ModelSpec
    numa_node: Optional[int] = None
    iommu_group: Optional[int] = None
    mig: bool = False  #: vendor-vfio: the GPU is in MIG mode (offers the MIG-backed types)
    heterogeneous: bool = False  #: vendor-vfio: heterogeneous (mixed-size) mode at start
    numvfs: Optional[int] = None  #: SR-IOV VFs enabled at boot (None: the model's ``sriov.numvfs``)

    @property
    def boot_numvfs(self) -> int:
        s = self.model.sriov
        return (self.numvfs if self.numvfs is not None else s.numvfs) if s is not None else 0


@dataclass(frozen=True)
class Profile:
    name: str
    path: str
    summary: str
    first_iommu_group: int
    devices: Tuple[DeviceSpec, ...] = field(default=())


def list_profiles() -> List[str]:
    """Names of the shipped profiles, sorted."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def profile_path(name_or_path: "str | os.PathLike[str]") -> Path:
    """The YAML file for a shipped profile name or a path; ConfigError if there is none."""
    text = os.fspath(name_or_path)
    if os.sep in text or text.endswith((".yaml", ".yml")):
        path = Path(text)
    else:
        path = PROFILE_DIR / f"{text}.yaml"
    if not path.is_file():
        known = ", ".join(list_profiles())
        raise ConfigError(text, f"no such profile (shipped profiles: {known}; or give a path to a YAML file)")
    return path.resolve()


def load_profile(name_or_path: "str | os.PathLike[str]") -> Profile:
    path = profile_path(name_or_path)
    raw = _read_yaml(path)
    models = _models_of(path, raw, seen=(str(path),))
    devices = raw.get("devices")
    if not isinstance(devices, list) or not devices:
        raise ConfigError(str(path), "needs a non-empty list", key="devices")
    specs = []
    names = set()
    for i, dev in enumerate(devices):
        where = f"devices[{i}]"
        _mapping(path, dev, where, _DEVICE_KEYS)
        if ("pci" in dev) == ("virtual" in dev):
            raise ConfigError(str(path), "give exactly one of pci: or virtual:", key=where)
        name = str(dev.get("pci") or dev.get("virtual"))
        model = models.get(dev.get("model"))
        if model is None:
            raise ConfigError(
                str(path), f"unknown model {dev.get('model')!r}; known: {', '.join(sorted(models))}", key=where
            )
        if ("pci" in dev) != (model.kind == "pci"):
            raise ConfigError(str(path), f"model {model.key} is of kind {model.kind}", key=where)
        if "pci" in dev:
            from vgpuctl.model import canonical_parent_name, PCI_ADDR_RE

            if not PCI_ADDR_RE.match(name):
                raise ConfigError(str(path), f"{name!r} is not a PCI address", key=where)
            name = canonical_parent_name(name) or name
        if name in names:
            raise ConfigError(str(path), f"device {name} appears twice", key=where)
        names.add(name)
        for flag in ("mig", "heterogeneous"):
            if flag in dev and (not isinstance(dev[flag], bool) or model.vgpu != "vendor-vfio"):
                raise ConfigError(str(path), f"{flag} must be true or false, on a vendor-vfio model", key=where)
        numvfs = _opt_int(path, dev, "numvfs", where)
        if numvfs is not None and (
            model.sriov is None or not 0 <= numvfs <= model.sriov.totalvfs or (model.mdev_on == "vf" and numvfs < 1)
        ):
            raise ConfigError(str(path), "numvfs must be 0..sriov.totalvfs, on a model with sriov", key=where)
        specs.append(
            DeviceSpec(
                name=name,
                model=model,
                numa_node=_opt_int(path, dev, "numa_node", where),
                iommu_group=_opt_int(path, dev, "iommu_group", where),
                mig=bool(dev.get("mig", False)),
                heterogeneous=bool(dev.get("heterogeneous", False)),
                numvfs=numvfs,
            )
        )
    return Profile(
        name=path.stem,
        path=str(path),
        summary=str(raw.get("summary", "")),
        first_iommu_group=int(raw.get("first_iommu_group", 10)),
        devices=tuple(specs),
    )


# --- helpers -------------------------------------------------------------------------------------------------------
def _read_yaml(path: Path) -> Dict[str, Any]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(
            str(path), f"not valid YAML: {getattr(e, 'problem', e)}", line=mark.line + 1 if mark else None
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "a profile is a YAML mapping")
    _mapping(path, raw, None, _TOP_KEYS)
    if raw.get("version") != 1:
        raise ConfigError(
            str(path), f"unsupported version {raw.get('version')!r} (this simulator reads 1)", key="version"
        )
    return raw


def _mapping(path: Path, value: Any, where: Optional[str], allowed: set) -> None:
    if not isinstance(value, dict):
        raise ConfigError(str(path), "expected a mapping", key=where)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(str(path), f"unexpected field {unknown[0]!r}", key=where)


def _opt_int(path: Path, d: Mapping[str, Any], key: str, where: str) -> Optional[int]:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(str(path), f"{key} must be an integer", key=where)
    return v


def _models_of(path: Path, raw: Mapping[str, Any], seen: Tuple[str, ...]) -> Dict[str, ModelSpec]:
    return {key: _model(path, key, m) for key, m in _raw_models(path, raw, seen).items()}


def _raw_models(path: Path, raw: Mapping[str, Any], seen: Tuple[str, ...]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for inc in raw.get("include") or []:
        inc_path = profile_path(inc)
        if str(inc_path) in seen:
            raise ConfigError(str(path), f"include loop through {inc}", key="include")
        out.update(
            {k: dict(v) for k, v in _raw_models(inc_path, _read_yaml(inc_path), seen + (str(inc_path),)).items()}
        )
    for key, model in (raw.get("models") or {}).items():
        _mapping(path, model, f"models.{key}", _MODEL_KEYS)
        out.setdefault(key, {}).update(model)
    return out


def _errno_value(path: Path, value: Any, where: str) -> int:
    if isinstance(value, int):
        return value
    code = getattr(_errno, str(value), None)
    if not isinstance(code, int):
        raise ConfigError(str(path), f"{value!r} is not an errno name", key=where)
    return code


def _model(path: Path, key: str, m: Mapping[str, Any]) -> ModelSpec:
    where = f"models.{key}"
    kind = m.get("kind")
    if kind not in ("pci", "virtual"):
        raise ConfigError(str(path), "kind must be pci or virtual", key=where)
    capacity = m.get("capacity", "pool")
    if capacity not in ("nvidia", "pool"):
        raise ConfigError(str(path), "capacity must be nvidia or pool", key=where)
    desc_format = m.get("description", "none")
    if desc_format not in ("nvidia", "gvt", "text", "none"):
        raise ConfigError(str(path), "description must be nvidia, gvt, text or none", key=where)
    mdev_on = m.get("mdev_on", "pf")
    if mdev_on not in ("pf", "vf"):
        raise ConfigError(str(path), "mdev_on must be pf or vf", key=where)
    sriov = None
    if m.get("sriov") is not None:
        _mapping(path, m["sriov"], f"{where}.sriov", _SRIOV_KEYS)
        s = m["sriov"]
        sriov = SriovSpec(
            totalvfs=int(s["totalvfs"]),
            numvfs=int(s.get("numvfs", s["totalvfs"])),
            offset=int(s.get("offset", 1)),
            stride=int(s.get("stride", 1)),
        )
    if mdev_on == "vf" and (sriov is None or sriov.numvfs < 1):
        raise ConfigError(str(path), "mdev_on: vf needs sriov with numvfs >= 1", key=where)
    if kind == "virtual" and not m.get("class_name"):
        raise ConfigError(str(path), "a virtual model needs class_name", key=where)
    vgpu = m.get("vgpu", "mdev")
    if vgpu not in ("mdev", "vendor-vfio"):
        raise ConfigError(str(path), "vgpu must be mdev or vendor-vfio", key=where)
    mix = m.get("mix", "equal-size")
    if mix not in ("equal-size", "homogeneous"):
        raise ConfigError(str(path), "mix must be equal-size or homogeneous", key=where)
    if vgpu == "vendor-vfio":
        if sriov is None or capacity != "nvidia" or kind != "pci":
            raise ConfigError(str(path), "vgpu: vendor-vfio needs kind: pci, sriov and capacity: nvidia", key=where)
        if not isinstance(m.get("framebuffer"), int):
            raise ConfigError(str(path), "vgpu: vendor-vfio needs the GPU's framebuffer (MiB)", key=where)
    elif not m.get("mdev_driver"):
        raise ConfigError(str(path), "needs mdev_driver", key=where)
    pool = tuple((str(k), int(v)) for k, v in (m.get("pool") or {}).items())
    if capacity == "pool" and not pool:
        raise ConfigError(str(path), "capacity: pool needs pool resources", key=where)
    prefix = str(m.get("name_prefix", ""))
    types = []
    ids = set()
    for i, t in enumerate(m.get("types") or []):
        twhere = f"{where}.types[{i}]"
        _mapping(path, t, twhere, _TYPE_KEYS)
        if not t.get("id"):
            raise ConfigError(str(path), "a type needs id", key=twhere)
        if t["id"] in ids:
            raise ConfigError(str(path), f"type {t['id']} appears twice", key=twhere)
        ids.add(t["id"])
        if capacity == "nvidia" and not isinstance(t.get("max_instance"), int):
            raise ConfigError(str(path), "capacity: nvidia needs max_instance on every type", key=twhere)
        if vgpu == "vendor-vfio" and (not str(t["id"]).isdigit() or not isinstance(t.get("framebuffer"), int)):
            raise ConfigError(str(path), "a vendor-vfio type needs an integer id and framebuffer (MiB)", key=twhere)
        cost: List[Tuple[str, int]] = []
        if capacity == "pool":
            given = t.get("cost") or {}
            for res, _total in pool:
                c = given.get(res, t.get(res, 0))
                if not isinstance(c, int) or c < 0:
                    raise ConfigError(str(path), f"cost of {res} must be a non-negative integer", key=twhere)
                if c:
                    cost.append((res, c))
            if not cost:
                raise ConfigError(str(path), "type costs nothing from the pool", key=twhere)
        types.append(
            TypeSpec(
                id=str(t["id"]),
                name=(prefix + str(t["name"])) if t.get("name") is not None else None,
                device_api=str(t.get("device_api", "vfio-pci")),
                description=_description(path, desc_format, t, twhere),
                max_instance=t.get("max_instance"),
                cost=tuple(cost),
                framebuffer=t.get("framebuffer") if isinstance(t.get("framebuffer"), int) else None,
                mig_slices=t.get("mig_slices"),
                mig_profile=str(t["mig_profile"]) if t.get("mig_profile") is not None else None,
            )
        )
    if not types:
        raise ConfigError(str(path), "a model needs at least one type", key=where)
    migs = []
    for i, mp in enumerate(m.get("mig_profiles") or []):
        mwhere = f"{where}.mig_profiles[{i}]"
        _mapping(path, mp, mwhere, _MIG_KEYS)
        ints = ("id", "index", "slices", "memory", "size")
        if (
            not mp.get("name")
            or any(not isinstance(mp.get(k), int) for k in ints)
            or not isinstance(mp.get("placements"), list)
        ):
            raise ConfigError(str(path), f"a MIG profile needs name, {', '.join(ints)} and placements", key=mwhere)
        migs.append(
            MigProfileSpec(
                name=str(mp["name"]),
                id=mp["id"],
                index=mp["index"],
                slices=mp["slices"],
                memory=mp["memory"],
                size=mp["size"],
                placements=tuple(int(x) for x in mp["placements"]),
            )
        )
    names = {p.name for p in migs}
    for t in types:
        if t.mig_profile is not None and t.mig_profile not in names:
            raise ConfigError(
                str(path), f"type {t.id} needs MIG profile {t.mig_profile}, which the model lacks", key=where
            )
    return ModelSpec(
        key=key,
        kind=kind,
        mdev_driver=str(m.get("mdev_driver", "")),
        capacity=capacity,
        full_errno=_errno_value(path, m.get("full_errno", "ENOSPC"), where),
        types=tuple(types),
        vendor=_hex(m.get("vendor")),
        device=_hex(m.get("device")),
        subsystem_vendor=_hex(m.get("subsystem_vendor")),
        subsystem_device=_hex(m.get("subsystem_device")),
        pci_class=_hex(m.get("class")),
        driver=m.get("driver"),
        sriov=sriov,
        mdev_on=mdev_on,
        class_name=m.get("class_name"),
        pool=pool,
        vgpu=vgpu,
        mix=mix,
        framebuffer=m.get("framebuffer"),
        mig_slices=int(m.get("mig_slices", 7)),
        module=str(m["module"]) if m.get("module") else None,
        driver_version=str(m["driver_version"]) if m.get("driver_version") is not None else None,
        mig_profiles=tuple(migs),
    )


def _hex(v: Any) -> Optional[str]:
    if v is None:
        return None
    return str(v).lower()


def _description(path: Path, fmt: str, t: Mapping[str, Any], where: str) -> Optional[str]:
    def need(*keys: str) -> None:
        missing = [k for k in keys if t.get(k) is None]
        if missing:
            raise ConfigError(str(path), f"description: {fmt} needs {', '.join(missing)}", key=where)

    if fmt == "none":
        return None
    if fmt == "text":
        need("text")
        return str(t["text"])
    if fmt == "nvidia":
        need("num_heads", "frl_config", "framebuffer", "max_resolution", "max_instance")
        return (
            f"num_heads={t['num_heads']}, frl_config={t['frl_config']}, framebuffer={t['framebuffer']}M, "
            f"max_resolution={t['max_resolution']}, max_instance={t['max_instance']}"
        )
    need("low_gm_size", "high_gm_size", "fence", "resolution", "weight")
    return (
        f"low_gm_size: {t['low_gm_size']}MB\nhigh_gm_size: {t['high_gm_size']}MB\nfence: {t['fence']}\n"
        f"resolution: {t['resolution']}\nweight: {t['weight']}"
    )
