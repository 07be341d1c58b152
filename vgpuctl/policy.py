"""The placement policy: which GPUs may take which vGPU types, in what order, and the tenants' limits.

The policy is data (frozen dataclasses, below) read from ``etc/vgpuctl/policy.yaml`` under the host root.  Parsing is
strict: ``version: 1`` is required, unknown keys are rejected, and every error names the file, the line and the key.
PyYAML is imported only when a file is actually parsed, so commands that never place pay nothing for it.

Schema (every key optional except ``version``)::

    version: 1
    numa: prefer                 # prefer | require | ignore: how a domain's NUMA nodes (numatune) steer placement
    default:                     # for GPUs that no entry of ``gpus`` matches
      strategy: pack             # pack (fullest GPU that fits) | spread (least-loaded first)
      types: [T4-2Q, nvidia-63]  # allowed types: ids or profile names, case-insensitive
      series: [Q, B]             # allowed NVIDIA series; a type is allowed if its id/name or its series is listed
      reserved: false            # true: place nothing here ...
      reserved_for: [tenant-a]   # ... except for these tenants (implies reserved)
    gpus:                        # first matching entry wins; entries are filled in file order, the default last
      - name: a16-vdi            # a label shown by --explain
        match:                   # every key given must match; a list means any of
          pci: ["0000:3b:00.0", "0000:3c:*"]   # the GPU's or one of its VFs' PCI address, glob
          vendor: "0x10de"       # or nvidia / intel
          device: "0x25b6"
          numa_node: [0, 1]
          model: "A16*"          # glob over the model in the GPU's type names (GRID A16-2Q -> A16)
        strategy: spread
        series: [Q]
    quotas:                      # per tenant; "*" applies to every tenant not listed
      tenant-a: {max_instances: 4, max_framebuffer: 16G}
    anti_affinity:               # members of a group go to different physical GPUs
      - name: db
        domains: ["db-*"]        # domain-name globs; domains can also join by a label in their metadata
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from .configfile import NodeReader, compose_yaml, read_config
from .errors import ConfigError
from .model import PCI_VENDORS, VgpuType, canonical_parent_name, type_names

POLICY_FILE = "policy.yaml"
SERIES = ("Q", "B", "A", "C")


class Strategy(str, Enum):
    PACK = "pack"  #: the fullest GPU that fits first: keeps whole GPUs free for big profiles
    SPREAD = "spread"  #: the least-loaded GPU first: performance isolation

    def __str__(self) -> str:
        return self.value


class NumaMode(str, Enum):
    PREFER = "prefer"  #: GPUs on the domain's NUMA nodes first, others when none fits
    REQUIRE = "require"  #: only GPUs on the domain's NUMA nodes (or with no NUMA information)
    IGNORE = "ignore"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Selector:
    """Which physical GPUs a rule covers.  Empty fields match everything; a GPU must match every non-empty one."""

    pci: Tuple[str, ...] = ()  #: globs over canonical PCI addresses of the GPU or any of its parents
    vendor_ids: Tuple[str, ...] = ()  #: "0x10de"
    device_ids: Tuple[str, ...] = ()
    numa_nodes: Tuple[int, ...] = ()
    models: Tuple[str, ...] = ()  #: globs over the model ("T4", "A16"), case-insensitive

    def matches(
        self,
        *,
        addresses: Sequence[str],
        vendor_id: Optional[str],
        device_id: Optional[str],
        numa_node: Optional[int],
        model: Optional[str],
    ) -> bool:
        if self.pci and not any(fnmatch.fnmatchcase(a.lower(), g) for a in addresses for g in self.pci):
            return False
        if self.vendor_ids and (vendor_id or "").lower() not in self.vendor_ids:
            return False
        if self.device_ids and (device_id or "").lower() not in self.device_ids:
            return False
        if self.numa_nodes and numa_node not in self.numa_nodes:
            return False
        if self.models and not any(fnmatch.fnmatchcase((model or "").lower(), g) for g in self.models):
            return False
        return True


@dataclass(frozen=True)
class GpuRule:
    """What a group of GPUs allows, and how to choose among them."""

    name: str
    match: Selector = field(default_factory=Selector)
    strategy: Strategy = Strategy.PACK
    types: Optional[Tuple[str, ...]] = None  #: lowercase ids or profile names; None: no list given
    series: Optional[Tuple[str, ...]] = None  #: uppercase series letters; None: no list given
    reserved: bool = False
    reserved_for: Tuple[str, ...] = ()
    line: Optional[int] = None  #: where the rule starts in the policy file

    def allows(self, vtype: VgpuType) -> bool:
        """Is ``vtype`` allowed here?  With neither list given, everything is."""
        if self.types is None and self.series is None:
            return True
        if self.types is not None and type_matches(vtype, self.types):
            return True
        return self.series is not None and (vtype.series or "").upper() in self.series

    def admits_tenant(self, tenant: Optional[str]) -> bool:
        return not self.reserved or (tenant is not None and tenant in self.reserved_for)


@dataclass(frozen=True)
class Quota:
    max_instances: Optional[int] = None
    max_framebuffer_mib: Optional[int] = None


@dataclass(frozen=True)
class AntiAffinityGroup:
    name: str
    domains: Tuple[str, ...] = ()  #: domain-name globs (case-sensitive, as libvirt's names are)

    def has_domain(self, domain: Optional[str]) -> bool:
        return domain is not None and any(fnmatch.fnmatchcase(domain, g) for g in self.domains)


DEFAULT_RULE = GpuRule(name="default")


@dataclass(frozen=True)
class Policy:
    rules: Tuple[GpuRule, ...] = ()
    default: GpuRule = DEFAULT_RULE
    numa: NumaMode = NumaMode.PREFER
    quotas: Tuple[Tuple[str, Quota], ...] = ()  #: (tenant or "*", quota), in file order
    anti_affinity: Tuple[AntiAffinityGroup, ...] = ()
    source: Optional[str] = None  #: the file it came from; None for the built-in default

    def quota(self, tenant: Optional[str]) -> Optional[Quota]:
        if tenant is None:
            return None
        found = dict(self.quotas)
        return found.get(tenant, found.get("*"))

    def groups_of(self, domain: Optional[str], labels: Sequence[str] = ()) -> Tuple[str, ...]:
        """Anti-affinity groups a domain belongs to: by a name glob of the policy, or by its own labels."""
        out = [g.name for g in self.anti_affinity if g.has_domain(domain)]
        out += [x for x in labels if x not in out]
        return tuple(out)


def type_matches(vtype: VgpuType, keys: Sequence[str]) -> bool:
    """Does one of ``keys`` (lowercase) name ``vtype`` by id, full name or profile name?"""
    names = type_names(vtype)
    return any(k in names for k in keys)


# --- loading -------------------------------------------------------------------------------------------------------
def policy_path(config_dir: "os.PathLike[str] | str") -> Path:
    return Path(config_dir) / POLICY_FILE


def load_policy(path: "os.PathLike[str] | str", *, missing_ok: bool = True, follow: bool = False) -> Policy:
    """The policy in ``path``; the built-in default (pack, everything allowed) if there is none and ``missing_ok``.
    ``follow``: the user named the file (``--policy``), so a symlink is followed."""
    text = read_config(path, missing_ok=missing_ok, follow=follow)
    return Policy() if text is None else parse_policy(text, path=os.fspath(path))


def parse_policy(text: str, *, path: str = "<policy>") -> Policy:
    yaml, root = compose_yaml(text, path)
    if root is None:
        raise ConfigError(path, "empty file: it needs at least 'version: 1'", line=1)
    return _Parser(path, yaml).policy(root)


_VENDOR_NAMES = {str(v): k for k, v in PCI_VENDORS.items()}
_HEX_ID_RE = re.compile(r"^0x[0-9a-f]{4}$")


class _Parser(NodeReader):
    """Turns a composed YAML node tree into a ``Policy``, with the line and key of each problem."""

    # the document --------------------------------------------------------------------------------------------------
    def policy(self, root: Any) -> Policy:
        top = self.mapping(root, None, ("version", "numa", "default", "gpus", "quotas", "anti_affinity"))
        self.version(top, root)
        numa = self.choice(top["numa"][1], "numa", NumaMode) if "numa" in top else NumaMode.PREFER
        default = (
            self.rule(top["default"][1], "default", name="default", with_match=False)
            if "default" in top
            else DEFAULT_RULE
        )
        rules: List[GpuRule] = []
        if "gpus" in top:
            gnode = top["gpus"][1]
            if not isinstance(gnode, self.yaml.SequenceNode):
                raise self.fail(gnode, "gpus", "expected a list of GPU rules")
            for i, item in enumerate(gnode.value):
                rules.append(self.rule(item, f"gpus[{i}]", name=f"gpus[{i}]", with_match=True))
            names = [r.name for r in rules]
            for i, r in enumerate(rules):
                if r.name in names[:i] or r.name == "default":
                    raise self.fail(gnode.value[i], f"gpus[{i}].name", f"duplicate rule name {r.name!r}")
        quotas = self.quotas(top["quotas"][1]) if "quotas" in top else ()
        groups = self.groups(top["anti_affinity"][1]) if "anti_affinity" in top else ()
        return Policy(
            rules=tuple(rules), default=default, numa=numa, quotas=quotas, anti_affinity=groups, source=self.path
        )

    def rule(self, node: Any, key: str, *, name: str, with_match: bool) -> GpuRule:
        keys = ("strategy", "types", "series", "reserved", "reserved_for")
        if with_match:
            keys = ("name", "match") + keys
        m = self.mapping(node, key, keys)
        if with_match and "match" not in m:
            raise self.fail(node, f"{key}.match", "missing: say which GPUs this rule covers (pci, vendor, model, ...)")
        label = self.string(m["name"][1], f"{key}.name") if "name" in m else name
        types = None
        if "types" in m:
            types = tuple(t.lower() for t in self.strings(m["types"][1], f"{key}.types"))
        series = None
        if "series" in m:
            series = self.strings(m["series"][1], f"{key}.series")
            bad = [s for s in series if s.upper() not in SERIES]
            if bad:
                raise self.fail(
                    m["series"][1], f"{key}.series", f"unknown series {bad[0]!r}; expected {', '.join(SERIES)}"
                )
            series = tuple(s.upper() for s in series)
        reserved_for = self.strings(m["reserved_for"][1], f"{key}.reserved_for") if "reserved_for" in m else ()
        reserved = bool(reserved_for)
        if "reserved" in m:
            reserved = self.boolean(m["reserved"][1], f"{key}.reserved")
            if not reserved and reserved_for:
                raise self.fail(m["reserved"][1], f"{key}.reserved", "false contradicts reserved_for")
        return GpuRule(
            name=label,
            match=self.selector(m["match"][1], f"{key}.match") if with_match else Selector(),
            strategy=self.choice(m["strategy"][1], f"{key}.strategy", Strategy) if "strategy" in m else Strategy.PACK,
            types=types,
            series=series,
            reserved=reserved,
            reserved_for=reserved_for,
            line=node.start_mark.line + 1,
        )

    def selector(self, node: Any, key: str) -> Selector:
        m = self.mapping(node, key, ("pci", "vendor", "device", "numa_node", "model"))
        if not m:
            raise self.fail(node, key, "empty: give at least one of pci, vendor, device, numa_node, model")
        pci: List[str] = []
        for g in self.strings(m["pci"][1], f"{key}.pci") if "pci" in m else ():
            canon = g.lower() if any(c in g for c in "*?[") else canonical_parent_name(g)
            if canon is None:
                raise self.fail(m["pci"][1], f"{key}.pci", f"{g!r} is not a PCI address or address glob")
            pci.append(canon)
        vendors: List[str] = []
        for v in self.strings(m["vendor"][1], f"{key}.vendor") if "vendor" in m else ():
            vid = _VENDOR_NAMES.get(v.lower(), v.lower())
            if not _HEX_ID_RE.match(vid):
                raise self.fail(
                    m["vendor"][1], f"{key}.vendor", f"{v!r} is not a PCI vendor id (0x10de) or nvidia/intel"
                )
            vendors.append(vid)
        devices: List[str] = []
        for d in self.strings(m["device"][1], f"{key}.device") if "device" in m else ():
            if not _HEX_ID_RE.match(d.lower()):
                raise self.fail(m["device"][1], f"{key}.device", f"{d!r} is not a PCI device id (0x1eb8)")
            devices.append(d.lower())
        nodes: List[int] = []
        if "numa_node" in m:
            nnode = m["numa_node"][1]
            items = nnode.value if isinstance(nnode, self.yaml.SequenceNode) else [nnode]
            nodes = [self.integer(x, f"{key}.numa_node") for x in items]
        models = tuple(x.lower() for x in self.strings(m["model"][1], f"{key}.model")) if "model" in m else ()
        return Selector(
            pci=tuple(pci), vendor_ids=tuple(vendors), device_ids=tuple(devices), numa_nodes=tuple(nodes), models=models
        )

    def quotas(self, node: Any) -> Tuple[Tuple[str, Quota], ...]:
        if not isinstance(node, self.yaml.MappingNode):
            raise self.fail(node, "quotas", "expected a mapping of tenant to limits")
        out: List[Tuple[str, Quota]] = []
        seen = set()
        for k, v in node.value:
            tenant = str(self.scalar(k, "quotas")).strip()
            key = f"quotas.{tenant}"
            if not tenant or tenant in seen:
                raise self.fail(k, key, "duplicate or empty tenant name")
            seen.add(tenant)
            m = self.mapping(v, key, ("max_instances", "max_framebuffer"))
            if not m:
                raise self.fail(v, key, "empty: give max_instances and/or max_framebuffer")
            out.append(
                (
                    tenant,
                    Quota(
                        max_instances=self.integer(m["max_instances"][1], f"{key}.max_instances")
                        if "max_instances" in m
                        else None,
                        max_framebuffer_mib=self.size(m["max_framebuffer"][1], f"{key}.max_framebuffer")
                        if "max_framebuffer" in m
                        else None,
                    ),
                )
            )
        return tuple(out)

    def groups(self, node: Any) -> Tuple[AntiAffinityGroup, ...]:
        if not isinstance(node, self.yaml.SequenceNode):
            raise self.fail(node, "anti_affinity", "expected a list of groups")
        out: List[AntiAffinityGroup] = []
        for i, item in enumerate(node.value):
            key = f"anti_affinity[{i}]"
            m = self.mapping(item, key, ("name", "domains"))
            if "name" not in m:
                raise self.fail(item, f"{key}.name", "missing: every group needs a name")
            name = self.string(m["name"][1], f"{key}.name")
            if any(g.name == name for g in out):
                raise self.fail(m["name"][1], f"{key}.name", f"duplicate group {name!r}")
            domains = self.strings(m["domains"][1], f"{key}.domains") if "domains" in m else ()
            out.append(AntiAffinityGroup(name=name, domains=domains))
        return tuple(out)


__all__ = [
    "AntiAffinityGroup",
    "GpuRule",
    "NumaMode",
    "Policy",
    "Quota",
    "Selector",
    "Strategy",
    "load_policy",
    "parse_policy",
    "policy_path",
    "type_matches",
]
