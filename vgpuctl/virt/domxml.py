"""Domain XML, pure: what vgpuctl reads from a libvirt domain and writes into it.  No libvirt, no I/O.

* ``parse_domain`` reads the facts vgpuctl needs from a domain's XML (which vGPUs its hostdevs reference, which of
  them vgpuctl manages according to its ``<metadata>``, its tenant and group labels, its NUMA tuning and vCPU
  pinning); ``metadata_xml`` writes that metadata; ``match_xml`` is the least ``<hostdev>`` a detach needs.
* ``Snapshot``: every domain at one URI as read once (``conn.Virt.snapshot``), and what follows from it as data:
  ``uses`` (the in-use check), ``domain_attachments`` (the reconciler's view), ``consumers_from`` and ``facts_of``
  (placement's view of the domains: tenant, groups, NUMA nodes).

Ownership metadata, in the domain XML (persistent and/or live, like the device itself)::

    <metadata>
      <vgpuctl:vgpus xmlns:vgpuctl="https://vgpuctl.dev/xmlns/1">
        <vgpuctl:tenant>acme</vgpuctl:tenant>
        <vgpuctl:vgpu uuid="..." parent="mtty" type="mtty-1" backend="mdev" name="Single port serial"/>
      </vgpuctl:vgpus>
    </metadata>

``tenant`` (at most one; ``vgpuctl attach --tenant`` records it) and ``group`` (anti-affinity labels, any number;
written by hand) label the domain for placement: quotas count the tenant's instances, groups keep members apart.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from ..model import PCI_ADDR_RE, Inventory, canonical_parent_name, canonical_uuid

if TYPE_CHECKING:  # the planner's and placement's types; neither imports anything from here
    from ..placement import Consumer
    from ..plan import DomainAttachment

NS = "https://vgpuctl.dev/xmlns/1"
NS_KEY = "vgpuctl"

# libvirt's constants, so that this module's pure parts do not need the binding
AFFECT_LIVE = 1
AFFECT_CONFIG = 2
XML_INACTIVE = 2
METADATA_ELEMENT = 2


# --- pure XML ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """Which of a domain's definitions a change affects: the running one, the persistent one, or both."""

    live: bool
    config: bool

    @property
    def flags(self) -> int:
        return (AFFECT_LIVE if self.live else 0) | (AFFECT_CONFIG if self.config else 0)

    def __bool__(self) -> bool:
        return self.live or self.config

    def __str__(self) -> str:
        return "+".join(n for n, on in (("live", self.live), ("config", self.config)) if on) or "none"


def resolve_scope(*, live: bool, config: bool, running: bool) -> Scope:
    """What ``virsh attach-device --current`` does when neither flag is given: live if running, else persistent."""
    if live or config:
        return Scope(live=live, config=config)
    return Scope(live=running, config=not running)


@dataclass(frozen=True)
class ManagedVgpu:
    """One vGPU vgpuctl attached to a domain, as recorded in the domain's metadata."""

    uuid: str  #: mdev uuid, or the VF's PCI address for a per-VF vGPU
    parent: str = ""
    type_id: str = ""
    backend: str = "mdev"
    #: the type's name on the host that attached it ("GRID T4-2Q"): lets another host check that its type of the same
    #: id is the same vGPU (NVIDIA's type ids are per driver).  Informational: not part of the entry's identity.
    type_name: str = field(default="", compare=False)


@dataclass(frozen=True)
class DomainXml:
    """What vgpuctl needs from one domain XML document."""

    name: str
    uuid: str
    devices: Tuple[str, ...] = ()  #: vGPU identities the hostdevs reference (mdev uuids, PCI addresses)
    managed: Tuple[ManagedVgpu, ...] = ()  #: vgpuctl's metadata entries
    tenant: Optional[str] = None  #: the tenant label in vgpuctl's metadata
    groups: Tuple[str, ...] = ()  #: anti-affinity labels in vgpuctl's metadata
    memory_nodes: Tuple[int, ...] = ()  #: ``<numatune><memory nodeset=...>``
    vcpu_cpus: Tuple[int, ...] = ()  #: host CPUs the vCPUs are pinned to (``<vcpupin cpuset>``, else ``<vcpu cpuset>``)
    displays: Tuple[str, ...] = ()  #: vGPU hostdevs with ``display='on'`` or ``ramfb='on'``

    def managed_entry(self, ident: str) -> Optional[ManagedVgpu]:
        for m in self.managed:
            if m.uuid == ident:
                return m
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def hostdev_identity(el: ET.Element) -> Optional[str]:
    """The vGPU a ``<hostdev>`` element references: an mdev uuid, or a PCI address; None for anything else."""
    addr = el.find("source/address")
    if addr is None:
        return None
    kind = el.get("type")
    if kind == "mdev":
        return canonical_uuid(addr.get("uuid", ""))
    if kind == "pci":
        try:
            dom, bus, slot, fn = (int(addr.get(k, "0"), 0) for k in ("domain", "bus", "slot", "function"))
        except ValueError:
            return None
        return f"{dom:04x}:{bus:02x}:{slot:02x}.{fn:x}"
    return None


def parse_cpuset(text: str) -> Tuple[int, ...]:
    """libvirt's cpuset/nodeset syntax (``0-3,^2,8``) as sorted numbers; ``ValueError`` if it is not one."""
    keep: set = set()
    drop: set = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        target = drop if part.startswith("^") else keep
        part = part.lstrip("^")
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a CPU or node list")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"{text!r} has a decreasing range {part}")
        target.update(range(a, b + 1))
    return tuple(sorted(keep - drop))


def _cpuset_attr(el: Optional[ET.Element], attr: str) -> Tuple[int, ...]:
    value = el.get(attr) if el is not None else None
    if not value:
        return ()
    try:
        return parse_cpuset(value)
    except ValueError:  # libvirt validates these; an odd one is not worth refusing the whole domain for
        return ()


def parse_domain(text: str) -> DomainXml:
    """Parse a domain XML document; ``ValueError`` (with a one-line reason) if it is not one."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ValueError("domain XML with a DOCTYPE or ENTITY declaration is refused")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"not well-formed XML ({e})") from None
    if root.tag != "domain":
        raise ValueError(f"the document element is <{root.tag}>, not <domain>")
    name = (root.findtext("name") or "").strip()
    if not name:
        raise ValueError("the domain XML has no <name>")
    devices = sorted({i for i in (hostdev_identity(h) for h in root.iterfind("devices/hostdev")) if i})
    displays = sorted(
        {
            i
            for i, h in ((hostdev_identity(h), h) for h in root.iterfind("devices/hostdev"))
            if i and "on" in (h.get("display"), h.get("ramfb"))
        }
    )
    managed: List[ManagedVgpu] = []
    tenant: Optional[str] = None
    groups: List[str] = []
    for el in root.iterfind("metadata/*"):
        if el.tag != f"{{{NS}}}vgpus":
            continue
        for v in el:  # libvirt namespaces only the element it stores; children may carry the prefix or not
            kind = _local(v.tag)
            if kind == "tenant":
                tenant = tenant or (v.text or "").strip() or None
            elif kind == "group":
                label = (v.text or "").strip()
                if label and label not in groups:
                    groups.append(label)
            elif kind == "vgpu":
                ident = canonical_uuid(v.get("uuid", "")) or canonical_parent_name(v.get("uuid", ""))
                if ident:
                    managed.append(
                        ManagedVgpu(
                            ident, v.get("parent", ""), v.get("type", ""), v.get("backend", "mdev"), v.get("name", "")
                        )
                    )
    pins: set = set()
    for pin in root.iterfind("cputune/vcpupin"):
        pins.update(_cpuset_attr(pin, "cpuset"))
    if not pins:
        pins.update(_cpuset_attr(root.find("vcpu"), "cpuset"))
    return DomainXml(
        name=name,
        uuid=(root.findtext("uuid") or "").strip(),
        devices=tuple(devices),
        managed=tuple(managed),
        tenant=tenant,
        groups=tuple(groups),
        memory_nodes=_cpuset_attr(root.find("numatune/memory"), "nodeset"),
        vcpu_cpus=tuple(sorted(pins)),
        displays=tuple(displays),
    )


def metadata_xml(entries: Iterable[ManagedVgpu], *, tenant: Optional[str] = None, groups: Sequence[str] = ()) -> str:
    """The metadata element for ``setMetadata`` (libvirt adds the namespace and prefix); values are XML-escaped."""
    root = ET.Element("vgpus")
    if tenant:
        ET.SubElement(root, "tenant").text = tenant
    for g in groups:
        ET.SubElement(root, "group").text = g
    for e in sorted(entries, key=lambda e: e.uuid):
        attrs = {"uuid": e.uuid, "parent": e.parent, "type": e.type_id, "backend": e.backend}
        if e.type_name:
            attrs["name"] = e.type_name
        ET.SubElement(root, "vgpu", attrs)
    return ET.tostring(root, encoding="unicode")


def match_xml(ident: str) -> str:
    """The least ``<hostdev>`` libvirt needs to find the device referencing ``ident`` (it matches on the source)."""
    m = PCI_ADDR_RE.match(ident)
    if m and canonical_uuid(ident) is None:
        h = ET.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": "no"})
        ET.SubElement(
            ET.SubElement(h, "source"),
            "address",
            {
                "domain": "0x" + (m.group("domain") or "0000"),
                "bus": "0x" + m.group("bus"),
                "slot": "0x" + m.group("slot"),
                "function": "0x" + m.group("fn"),
            },
        )
    else:
        h = ET.Element("hostdev", {"mode": "subsystem", "type": "mdev", "model": "vfio-pci"})
        ET.SubElement(ET.SubElement(h, "source"), "address", {"uuid": ident})
    return ET.tostring(h, encoding="unicode")


# --- what the domains of a host reference ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    running: bool
    persistent: bool
    live: Optional[DomainXml] = None  #: the running definition (running domains only)
    config: Optional[DomainXml] = None  #: the persistent definition (persistent domains only)

    def xml_for(self, scope: Scope) -> List[DomainXml]:
        return [x for x, on in ((self.live, scope.live), (self.config, scope.config)) if on and x is not None]


@dataclass(frozen=True)
class DomainUse:
    """One domain referencing one vGPU."""

    domain: str
    domain_uuid: str
    running: bool
    live: bool  #: the running domain's XML references it (QEMU has, or is about to have, the device)
    config: bool  #: the persistent definition references it

    @property
    def stale(self) -> bool:
        """Only a definition references it, not a running domain: ``destroy --force`` may override this one."""
        return not (self.running and self.live)

    def describe(self) -> str:
        if self.running and self.live:
            return f"domain {self.domain!r} (running)"
        if self.running:
            return f"domain {self.domain!r} (running; in its persistent config, for the next start)"
        return f"domain {self.domain!r} (defined, shut off)"


@dataclass(frozen=True)
class Snapshot:
    """Every domain at one URI, read once."""

    uri: str
    domains: Tuple[DomainInfo, ...] = ()

    def uses(self, ident: str) -> Tuple[DomainUse, ...]:
        out = []
        for d in self.domains:
            live = d.live is not None and ident in d.live.devices
            config = d.config is not None and ident in d.config.devices
            if live or config:
                out.append(DomainUse(d.name, d.uuid, d.running, live, config))
        return tuple(sorted(out, key=lambda u: u.domain))


# --- the desired state's view of libvirt ---------------------------------------------------------------------------
def domain_attachments(snap: Snapshot, inventory: Inventory) -> Dict[str, FrozenSet["DomainAttachment"]]:
    """uuid -> the domains whose live or persistent XML references it, or whose vgpuctl metadata records it.

    A record counts when it describes the instance as the host has it (parent, type, backend); a stale one (the
    instance was re-made with another type) makes ``apply`` write it again."""
    from ..plan import DomainAttachment

    def recorded(x: Optional[DomainXml], ident: str) -> bool:
        if x is None:
            return False
        m = x.managed_entry(ident)
        if m is None:
            return False
        inst = inventory.instance(ident)
        return inst is None or m == ManagedVgpu(inst.uuid, inst.parent, inst.type_id, str(inst.backend))

    out: Dict[str, set] = {}
    for d in snap.domains:
        idents: set = set()
        for x in (d.live, d.config):
            if x is not None:
                idents.update(x.devices)
                idents.update(m.uuid for m in x.managed)
        for ident in idents:
            out.setdefault(ident, set()).add(
                DomainAttachment(
                    domain=d.name,
                    running=d.running,
                    live=d.live is not None and ident in d.live.devices,
                    config=d.config is not None and ident in d.config.devices,
                    recorded_live=recorded(d.live, ident),
                    recorded_config=recorded(d.config, ident),
                )
            )
    return {k: frozenset(v) for k, v in out.items()}


# --- what placement takes from the domains -------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainFacts:
    """What placement takes from a domain's XML: its tenant and group labels and its NUMA nodes."""

    name: str
    found: bool
    tenant: Optional[str] = None
    groups: Tuple[str, ...] = ()
    numa_nodes: Tuple[int, ...] = ()
    numa_from: Tuple[str, ...] = ()  #: "numatune", "vcpupin"
    notes: Tuple[str, ...] = ()


def preferred(d: DomainInfo) -> List[DomainXml]:
    """A domain's definitions, the one that describes it now first: the running XML, else the persistent one."""
    order = (d.live, d.config) if d.running else (d.config, d.live)
    return [x for x in order if x is not None]


def consumers_from(snap: Snapshot, inventory: Inventory) -> Dict[str, "Consumer"]:
    """Instance uuid -> the domain that uses it (its live or persistent XML references it, or vgpuctl's metadata
    records it), with the tenant and group labels of that domain's vgpuctl metadata.  A running domain first, then by
    name, when several reference one instance."""
    from ..placement import Consumer

    known = {i.uuid for i in inventory.instances}
    out: Dict[str, Consumer] = {}
    for d in sorted(snap.domains, key=lambda d: (not d.running, d.name)):
        xs = preferred(d)
        idents = {i for x in xs for i in (*x.devices, *(m.uuid for m in x.managed))}
        tenant = next((x.tenant for x in xs if x.tenant), None)
        groups = tuple(dict.fromkeys(g for x in xs for g in x.groups))
        for ident in sorted(idents & known):
            out.setdefault(ident, Consumer(domain=d.name, tenant=tenant, groups=groups))
    return out


def facts_of(info: DomainInfo, cpus: Optional[Dict[int, int]], node_dir: str) -> DomainFacts:
    """``DomainFacts`` from one domain: NUMA nodes are ``<numatune><memory nodeset>`` together with the nodes of
    the host CPUs its vCPUs are pinned to (``cpus``: CPU -> node; None: unknown, then only numatune counts)."""
    xs = preferred(info)
    x = xs[0] if xs else None
    if x is None:
        return DomainFacts(info.name, found=True)
    nodes = set(x.memory_nodes)
    sources = ["numatune"] if x.memory_nodes else []
    notes: List[str] = []
    if x.vcpu_cpus:
        if cpus is None:
            notes.append(
                f"vCPU pinning of {info.name!r} not used: no cpulist files under {node_dir}; "
                + ("only <numatune> counts" if x.memory_nodes else "no NUMA affinity")
            )
        else:
            pinned = {cpus[c] for c in x.vcpu_cpus if c in cpus}
            if pinned:
                nodes |= pinned
                sources.append("vcpupin")
            unknown = [c for c in x.vcpu_cpus if c not in cpus]
            if unknown:
                notes.append(
                    f"vCPU pinning of {info.name!r}: CPU(s) {','.join(map(str, unknown))} are on no "
                    f"NUMA node under {node_dir}"
                )
    tenant = next((y.tenant for y in xs if y.tenant), None)
    groups = tuple(dict.fromkeys(g for y in xs for g in y.groups))
    return DomainFacts(
        info.name,
        found=True,
        tenant=tenant,
        groups=groups,
        numa_nodes=tuple(sorted(nodes)),
        numa_from=tuple(sources),
        notes=tuple(notes),
    )


def needs_cpus(info: DomainInfo) -> bool:
    """Whether the domain's vCPUs are pinned (its NUMA nodes then need the host's CPU -> node map)."""
    return any(x.vcpu_cpus for x in preferred(info))


# --- node devices (their names; ``conn.mdev_nodedevs`` reads them) --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeDev:
    """libvirt's node device for one mdev: ``mdev_<uuid>_<parent>`` (libvirt >= 7.7; every character that is not a
    letter or digit becomes ``_``), whether libvirt keeps it persistently (an mdevctl definition) and runs it."""

    name: str
    uuid: str
    persistent: Optional[bool] = None
    active: Optional[bool] = None


def nodedev_name(uuid: str, parent: str) -> str:
    """The name libvirt (7.7 and later, 9.0 included) gives the node device of mdev ``uuid`` on ``parent``."""
    return "".join(c if c.isascii() and c.isalnum() else "_" for c in f"mdev_{uuid}_{parent}")


def _nodedev_uuid(name: str) -> Optional[str]:
    """The mdev uuid a node device name carries (``mdev_<uuid>[_<parent>]``), or None."""
    if not name.startswith("mdev_") or len(name) < 41:
        return None
    return canonical_uuid(name[5:41].replace("_", "-"))
