"""libvirt access: the one module that imports libvirt, and only when a connection is opened.

Three layers, top to bottom:

* pure XML: ``parse_domain`` reads the facts vgpuctl needs from a domain's XML (which vGPUs its hostdevs reference,
  which of them vgpuctl manages according to its ``<metadata>``); ``metadata_xml`` writes that metadata.  No libvirt.
* ``Virt``: one open connection.  Every libvirt error leaves it as a typed ``LibvirtError`` naming the URI or the
  domain, never as a traceback.  ``snapshot()`` reads every domain once, for commands that ask about many instances.
* ``Attachments`` (attach/detach with templates, ownership metadata and roll-back) and ``DomainUsers`` (the
  ``UsageCheck`` that lets ``destroy`` refuse a device a domain references).

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

import logging
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple,
                    TypeVar)

from .errors import (
    AttachedElsewhere,
    LibvirtError,
    TenantMismatch,
    BadUuid,
    DomainNotFound,
    InvalidInput,
    LibvirtConnectError,
    LibvirtRefused,
    LibvirtTimeout,
    LibvirtUnavailable,
    NotAttached,
    NotOwned,
    UnknownInstance,
)
from .fsutil import FileLock
from .model import PCI_ADDR_RE, Instance, Inventory, Vendor, VgpuType, canonical_parent_name, canonical_uuid
from .paths import HostPaths

if TYPE_CHECKING:  # the planner's types; plan.py imports nothing from here
    from .plan import Action, DomainAttachment

log = logging.getLogger("vgpuctl.virt")

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


def board_and_series(vtype: Optional[VgpuType]) -> Tuple[Optional[str], Optional[str]]:
    """An NVIDIA type's board (``L40S`` of ``L40S-8Q``, ``H200X`` of ``H200X-1-18C``) and series letter."""
    profile = vtype.profile if vtype is not None else None
    if not profile or "-" not in profile:
        return None, vtype.series if vtype is not None else None
    return profile.split("-", 1)[0].upper(), (vtype.series if vtype is not None else None)


def check_multi_vgpu(inv: Inventory, planned: Instance, vtype: Optional[VgpuType], others: Sequence[str], *,
                     domain: str) -> None:
    """NVIDIA's rule for several vGPUs in one VM (Virtual GPU Software User Guide, "Multiple vGPU Support"): every
    vGPU assigned to a VM must be of the same board type and the same series.  ``others``: the vGPUs the domain
    has already; a second NVIDIA vGPU that breaks the rule is ``MultiVgpuConflict``."""
    p = inv.parent(planned.parent)
    if p is None or p.vendor is not Vendor.NVIDIA:
        return
    board, series = board_and_series(vtype)
    for ident in others:
        inst = inv.instance(ident)
        if inst is None:
            continue
        op = inv.parent(inst.parent)
        if op is None or op.vendor is not Vendor.NVIDIA:
            continue
        ot = inv.type_on(inst.parent, inst.type_id)
        ob, os_ = board_and_series(ot)
        if (board and ob and board != ob) or (series and os_ and series != os_):
            from .errors import MultiVgpuConflict

            raise MultiVgpuConflict(domain, planned.uuid, (vtype.profile if vtype else None) or planned.type_id,
                                    ident, (ot.profile if ot else None) or inst.type_id)


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
    displays = sorted({i for i, h in ((hostdev_identity(h), h) for h in root.iterfind("devices/hostdev"))
                       if i and "on" in (h.get("display"), h.get("ramfb"))})
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
                    managed.append(ManagedVgpu(ident, v.get("parent", ""), v.get("type", ""),
                                               v.get("backend", "mdev"), v.get("name", "")))
    pins: set = set()
    for pin in root.iterfind("cputune/vcpupin"):
        pins.update(_cpuset_attr(pin, "cpuset"))
    if not pins:
        pins.update(_cpuset_attr(root.find("vcpu"), "cpuset"))
    return DomainXml(name=name, uuid=(root.findtext("uuid") or "").strip(), devices=tuple(devices),
                     managed=tuple(managed), tenant=tenant, groups=tuple(groups),
                     memory_nodes=_cpuset_attr(root.find("numatune/memory"), "nodeset"),
                     vcpu_cpus=tuple(sorted(pins)), displays=tuple(displays))


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
        ET.SubElement(ET.SubElement(h, "source"), "address", {
            "domain": "0x" + (m.group("domain") or "0000"), "bus": "0x" + m.group("bus"),
            "slot": "0x" + m.group("slot"), "function": "0x" + m.group("fn")})
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


# --- the connection ------------------------------------------------------------------------------------------------
def _binding() -> Any:
    try:
        import libvirt
    except ImportError:
        raise LibvirtUnavailable("libvirt (libvirt-python)") from None
    # libvirt prints every error to stderr by default; vgpuctl reports them itself, once, as typed errors
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    _event_loop(libvirt)
    return libvirt


_loop_lock = threading.Lock()
_loop_running = False


def _event_loop(lv: Any) -> bool:
    """libvirt's default event loop in a daemon thread, once per process (as virsh runs it), so that keepalive can
    close a connection whose daemon stopped answering mid-call; registered before the first connection opens."""
    global _loop_running
    with _loop_lock:
        if not _loop_running:
            try:
                lv.virEventRegisterDefaultImpl()
            except Exception:  # an old binding: connections then have no keepalive, opens stay bounded
                return False

            def run() -> None:
                while True:
                    if lv.virEventRunDefaultImpl() < 0:
                        time.sleep(0.1)

            threading.Thread(target=run, name="vgpuctl-libvirt-events", daemon=True).start()
            _loop_running = True
    return True


def _keepalive(conn: Any, timeout: float) -> None:
    """Ping the daemon every ``timeout``/3 seconds; two unanswered pings close the connection, so a change that
    waits on a daemon wedged after the connect fails (exit 12, rolled back) after about ``timeout`` seconds."""
    if not _loop_running:
        return
    try:
        conn.setKeepAlive(max(1, int(timeout / 3)), 2)
    except Exception:  # drivers without keepalive (test:///, local ones): nothing to wait on there
        pass


def _detail(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


#: how long one read of libvirt (connect and read every domain) or one connect may take: ``--libvirt-timeout``
DEFAULT_TIMEOUT = 5.0

_T = TypeVar("_T")
_stuck: Dict[str, threading.Thread] = {}  #: uri -> a worker still waiting on a libvirtd that never answered
_stuck_lock = threading.Lock()


def bounded(uri: str, timeout: float, fn: Callable[[], _T]) -> _T:
    """``fn()`` (a libvirt conversation with ``uri``) in a daemon worker thread; its result or its exception, or
    ``LibvirtTimeout`` once ``timeout`` seconds have passed.

    libvirt's client waits for a reply without a time limit (a daemon that accepts and never answers blocks
    ``virConnectOpen`` for ever), and its calls release the GIL, so the wait is left to a worker: a daemon thread,
    which never keeps the process alive at exit.  What an abandoned worker opens after all is closed again.  While a
    worker for ``uri`` is still stuck, a new call fails at once instead of starting a second one: at most one thread
    per URI ever waits on a silent daemon, and one command never waits twice."""
    with _stuck_lock:
        old = _stuck.get(uri)
        if old is not None and old.is_alive():
            raise LibvirtTimeout(uri, timeout, "an earlier connection is still waiting for an answer "
                                 "(libvirtd accepts connections but does not respond)")
        _stuck.pop(uri, None)
    box: Dict[str, Any] = {}
    done = threading.Event()
    abandoned = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e
        finally:
            done.set()
            if abandoned.is_set() and isinstance(box.get("value"), Virt):
                box["value"].close()

    worker = threading.Thread(target=work, name=f"vgpuctl-libvirt {uri}", daemon=True)
    worker.start()
    if not done.wait(timeout):
        abandoned.set()
        if not done.is_set():
            with _stuck_lock:
                _stuck[uri] = worker
            raise LibvirtTimeout(uri, timeout)
        if isinstance(box.get("value"), Virt):  # it answered just as we gave up: too late to use, close it
            box["value"].close()
        raise LibvirtTimeout(uri, timeout)
    if "error" in box:
        raise box["error"]
    return box["value"]


class Virt:
    """One open libvirt connection.  Build it with ``Virt.open(uri)``; tests pass a ``test:///<file>`` URI."""

    def __init__(self, conn: Any, uri: str) -> None:
        self.conn = conn
        self.uri = uri
        self.lv = _binding()

    @classmethod
    def open(cls, uri: str, *, readonly: bool = False, timeout: Optional[float] = DEFAULT_TIMEOUT) -> "Virt":
        """Connect to ``uri``; ``LibvirtTimeout`` when libvirtd does not answer within ``timeout`` seconds (None:
        wait as long as libvirt does, for callers that bound the whole conversation themselves).  With a timeout the
        connection also gets libvirt keepalive, so a call on it fails instead of hanging once the daemon stops
        answering (``_keepalive``)."""
        lv = _binding()

        def connect() -> "Virt":
            try:
                conn = lv.openReadOnly(uri) if readonly else lv.open(uri)
            except lv.libvirtError as e:
                raise LibvirtConnectError(uri, _detail(e)) from None
            if conn is None:
                raise LibvirtConnectError(uri, "libvirt returned no connection")
            if timeout is not None:
                _keepalive(conn, timeout)
            return cls(conn, uri)

        return connect() if timeout is None else bounded(uri, timeout, connect)

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # closing a dead connection is not worth reporting
            pass

    def __enter__(self) -> "Virt":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, e: Exception, action: str, domain: str) -> Exception:
        code = e.get_error_code() if hasattr(e, "get_error_code") else None
        if code == self.lv.VIR_ERR_NO_DOMAIN:
            return DomainNotFound(domain, self.uri)
        if code in (self.lv.VIR_ERR_SYSTEM_ERROR, self.lv.VIR_ERR_RPC, self.lv.VIR_ERR_NO_CONNECT,
                    self.lv.VIR_ERR_INVALID_CONN, self.lv.VIR_ERR_AUTH_FAILED):
            return LibvirtConnectError(self.uri, _detail(e))
        return LibvirtRefused(action, domain, _detail(e))

    # --- reading ---------------------------------------------------------------------------------------------------
    def lookup(self, name: str) -> Any:
        try:
            return self.conn.lookupByName(name)
        except self.lv.libvirtError as e:
            raise self._error(e, "look up", name) from None

    def info(self, dom: Any, name: str = "") -> DomainInfo:
        name = name or dom.name()
        try:
            running = bool(dom.isActive())
            persistent = bool(dom.isPersistent())
            live = _parse(dom.XMLDesc(0), name) if running else None
            config = _parse(dom.XMLDesc(XML_INACTIVE), name) if persistent else None
            uuid = dom.UUIDString()
        except self.lv.libvirtError as e:
            raise self._error(e, "read", name) from None
        return DomainInfo(name=name, uuid=uuid, running=running, persistent=persistent, live=live, config=config)

    def snapshot(self) -> Snapshot:
        try:
            doms = self.conn.listAllDomains(0)
        except self.lv.libvirtError as e:
            raise LibvirtConnectError(self.uri, _detail(e)) from None
        infos = []
        for d in doms:
            try:
                infos.append(self.info(d))
            except DomainNotFound:  # undefined while we looked
                continue
        return Snapshot(self.uri, tuple(sorted(infos, key=lambda i: i.name)))

    # --- changing --------------------------------------------------------------------------------------------------
    def attach_device(self, dom: Any, name: str, xml: str, scope: Scope) -> None:
        try:
            dom.attachDeviceFlags(xml, scope.flags)
        except self.lv.libvirtError as e:
            raise self._error(e, f"attach a device ({scope}) to", name) from None

    def detach_device(self, dom: Any, name: str, xml: str, scope: Scope) -> None:
        try:
            dom.detachDeviceFlags(xml, scope.flags)
        except self.lv.libvirtError as e:
            raise self._error(e, f"detach a device ({scope}) from", name) from None

    def set_managed(self, dom: Any, name: str, entries: Sequence[ManagedVgpu], scope: Scope, *,
                    tenant: Optional[str] = None, groups: Sequence[str] = ()) -> None:
        """Replace vgpuctl's metadata in ``scope`` (one definition at a time); nothing to record removes it."""
        text = metadata_xml(entries, tenant=tenant, groups=groups) if entries or tenant or groups else None
        try:
            dom.setMetadata(METADATA_ELEMENT, text, NS_KEY, NS, scope.flags)
        except self.lv.libvirtError as e:
            raise self._error(e, f"record vgpuctl metadata ({scope}) in", name) from None


def _parse(text: str, name: str) -> DomainXml:
    try:
        return parse_domain(text)
    except ValueError as e:  # libvirt gave us something we cannot read: report, do not guess
        raise LibvirtRefused("read the XML of", name, str(e)) from None


# --- the usage check -----------------------------------------------------------------------------------------------
class DomainUsers:
    """``UsageCheck``: the libvirt domains whose live or persistent XML references an instance.

    One connection and one read of every domain per call.  With ``include_stale=False`` (``destroy --force``) a
    definition alone no longer counts, but a running domain that has the device always does.
    """

    def __init__(self, uri: str, *, include_stale: bool = True, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.uri = uri
        self.include_stale = include_stale
        self.timeout = timeout  #: the bound on one read (connect and every domain), ``LibvirtTimeout`` past it
        #: what the last call read, so a command can show domains without a second read
        self.last: Optional[Snapshot] = None
        #: why the last read failed (``LibvirtConnectError``, ``LibvirtUnavailable``), None after a good one
        self.error: Optional[LibvirtError] = None
        self._sessions = 0

    def read(self) -> Snapshot:
        """Every domain, read now (within ``timeout``); inside ``session()`` the session's first read is reused, and
        so is its failure (a silent libvirtd is waited for once per session)."""
        if self._sessions and self.last is not None:
            return self.last
        if self._sessions and self.error is not None:
            raise self.error

        def read() -> Snapshot:
            with Virt.open(self.uri, readonly=True, timeout=None) as v:
                return v.snapshot()

        try:
            self.last = bounded(self.uri, self.timeout, read)
        except (LibvirtConnectError, LibvirtUnavailable) as e:
            self.last, self.error = None, e
            raise
        self.error = None
        return self.last

    @contextmanager
    def session(self) -> Iterator[None]:
        """One read of libvirt for everything inside (a plan: the in-use check and the attachments together).

        Never wrap a check that guards a change in it: ``Lifecycle.destroy`` must see libvirt as it is then."""
        if not self._sessions:
            self.last = None
            self.error = None
        self._sessions += 1
        try:
            yield
        finally:
            self._sessions -= 1

    def users(self, instances: Sequence[Instance]) -> Dict[str, List[str]]:
        if not instances:
            return {}
        snap = self.read()
        out: Dict[str, List[str]] = {}
        for i in instances:
            uses = [u for u in snap.uses(i.uuid) if self.include_stale or not u.stale]
            if uses:
                out[i.uuid] = [u.describe() for u in uses]
        return out

    def running_users(self, instances: Sequence[Instance]) -> Dict[str, List[str]]:
        """Like ``users``, counting only domains that run with the instance (not a definition alone)."""
        if not instances:
            return {}
        snap = self.read()
        out: Dict[str, List[str]] = {}
        for i in instances:
            uses = [u for u in snap.uses(i.uuid) if not u.stale]
            if uses:
                out[i.uuid] = [u.describe() for u in uses]
        return out


# --- is libvirt reachable ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reachability:
    """The answer to "is libvirt reachable at this URI, and if not, why": what ``reachability`` found."""

    uri: str
    reachable: bool
    #: why not: ``libvirt-unavailable`` (libvirt-python missing), ``libvirt-connect`` (refused, no socket, auth),
    #: ``libvirt-timeout`` (it accepted but did not answer in time); None when reachable
    kind: Optional[str] = None
    reason: Optional[str] = None  #: the one-line error, with its fix; None when reachable
    hypervisor: Optional[str] = None  #: the driver's name (``QEMU``), when reachable
    version: Optional[str] = None  #: the daemon's libvirt version (``9.0.0``), when reachable
    error: Optional[LibvirtError] = None  #: the typed error itself, for callers that re-raise it

    def __bool__(self) -> bool:
        return self.reachable


def reachability(uri: str, *, timeout: float = DEFAULT_TIMEOUT) -> Reachability:
    """Connect read-only to ``uri`` within ``timeout`` seconds and ask the daemon who it is.  Never raises for an
    unreachable libvirt (that is the answer); ``uri`` ``none`` is reported unreachable as configured off."""
    if uri == "none":
        return Reachability(uri, False, kind="libvirt-off", reason="libvirt is turned off (--connect none)")

    def ask() -> Tuple[Optional[str], Optional[str]]:
        with Virt.open(uri, readonly=True, timeout=None) as v:
            try:
                kind = v.conn.getType()
                n = v.conn.getLibVersion()
            except v.lv.libvirtError as e:
                raise LibvirtConnectError(uri, _detail(e)) from None
        return kind, f"{n // 1000000}.{n // 1000 % 1000}.{n % 1000}"

    try:
        hypervisor, version = bounded(uri, timeout, ask)
    except (LibvirtConnectError, LibvirtUnavailable) as e:
        return Reachability(uri, False, kind=e.kind, reason=str(e), error=e)
    return Reachability(uri, True, hypervisor=hypervisor, version=version)


# --- attach and detach ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttachResult:
    domain: str
    domain_uuid: str
    instance: Instance
    scope: Scope
    created: bool  #: vgpuctl made the instance for this attach
    changed: bool  #: anything changed (False: it was attached and recorded already)


@dataclass(frozen=True)
class DetachResult:
    domain: str
    domain_uuid: str
    uuid: str
    scope: Scope
    destroyed: bool


class VirtLock(FileLock):
    """Serialises vgpuctl's attach/detach (``run/vgpuctl/virt.lock``), so two attaches cannot both take one vGPU.

    Separate from the host lock, which ``Lifecycle`` takes inside it for create and destroy.
    """

    def __init__(self, paths: HostPaths, timeout: float) -> None:
        super().__init__(paths.run_dir / "virt.lock", timeout, mode=0o600, root=paths.root)


class Attachments:
    """Give domains their vGPUs and take them back.  Collaborators come in; nothing here opens them."""

    def __init__(self, virt: Virt, lifecycle: Any, templates: Any) -> None:
        self.virt = virt
        self.lc = lifecycle  # vgpuctl.lifecycle.Lifecycle
        self.templates = templates  # vgpuctl.templates.Templates

    def _domain(self, name: str, *, live: bool, config: bool, action: str) -> "tuple[Any, DomainInfo, Scope]":
        dom = self.virt.lookup(name)
        info = self.virt.info(dom, name)
        scope = resolve_scope(live=live, config=config, running=info.running)
        if scope.live and not info.running:
            raise LibvirtRefused(action, name, "the domain is not running; use --config for its persistent definition")
        if scope.config and not info.persistent:
            raise LibvirtRefused(action, name, "the domain is transient (no persistent definition); use --live")
        return dom, info, scope

    def attach(
        self,
        domain: str,
        *,
        uuid: Optional[str] = None,
        parent: Optional[str] = None,
        type_id: Optional[str] = None,
        live: bool = False,
        config: bool = False,
        display: Optional[bool] = None,
        ramfb: Optional[bool] = None,
        tenant: Optional[str] = None,
    ) -> AttachResult:
        """Attach an existing instance (``uuid``) or a new one (``parent`` and ``type_id``, optionally ``uuid``);
        ``tenant`` is recorded in the domain's vgpuctl metadata (refused if another tenant is recorded there)."""
        creating = parent is not None or type_id is not None
        if creating and (parent is None or type_id is None):
            raise InvalidInput("give both --parent and --type to create a vGPU for the domain, or --uuid alone")
        if not creating and uuid is None:
            raise InvalidInput("say which vGPU to attach: --uuid UUID, or --parent PARENT --type TYPE to create one")
        if ramfb and display is False:
            raise InvalidInput("--ramfb needs the vGPU's display: drop --no-display")
        if ramfb and display is None:
            display = True
        want = str(uuidlib.uuid4()) if uuid is None else canonical_uuid(uuid)
        if want is None:
            raise BadUuid(uuid or "")
        with VirtLock(self.lc.host.paths, self.lc.lock_timeout):
            return self.attach_held(domain, uuid=want, creating=creating, parent=parent, type_id=type_id, live=live,
                                    config=config, display=display, ramfb=ramfb, tenant=tenant)

    def attach_held(
        self,
        domain: str,
        *,
        uuid: str,
        creating: bool = False,
        parent: Optional[str] = None,
        type_id: Optional[str] = None,
        live: bool = False,
        config: bool = False,
        display: Optional[bool] = None,
        ramfb: Optional[bool] = None,
        tenant: Optional[str] = None,
    ) -> AttachResult:
        """``attach`` for a caller that holds the ``VirtLock`` already (``vgpuctl apply``); ``uuid`` is canonical."""
        want = uuid
        dom, info, scope = self._domain(domain, live=live, config=config, action="attach a vGPU to")
        tenant = (tenant or "").strip() or None
        if tenant is not None:
            for x in info.xml_for(scope):
                if x.tenant is not None and x.tenant != tenant:
                    raise TenantMismatch(info.name, x.tenant, tenant)
        inv, _state = self.lc.read()
        if creating:
            from .lifecycle import find_type

            pname = self.lc.host.resolve_parent(parent, inv)
            vtype = find_type(inv, pname, type_id or "")
            planned = Instance(uuid=want, parent=pname, type_id=vtype.type_id,
                               backend=inv.parent(pname).backend)  # type: ignore[union-attr]
        else:
            existing = inv.instance(want)
            if existing is None:
                raise UnknownInstance(want)
            planned = existing
            vtype = inv.type_on(existing.parent, existing.type_id)
        others = [u.domain for u in self.virt.snapshot().uses(planned.uuid) if u.domain_uuid != info.uuid]
        if others:
            raise AttachedElsewhere(planned.uuid, others)
        xmls = info.xml_for(scope)
        check_multi_vgpu(inv, planned, vtype, sorted({d for x in xmls for d in x.devices} - {planned.uuid}),
                         domain=info.name)
        display_taken = any(d != planned.uuid for x in xmls for d in x.displays)
        if display_taken and (display or ramfb):
            log.info("domain %r has a vGPU with its display on already: %s gets display and ramfb off (a second "
                     "ramfb stops the VM from starting)", info.name, planned.uuid)
        rendered = self.templates.for_instance(planned, vtype, domain=info.name, display=display, ramfb=ramfb,
                                               display_taken=display_taken)
        entry = ManagedVgpu(planned.uuid, planned.parent, planned.type_id, str(planned.backend),
                            (vtype.name or "") if vtype is not None else "")
        missing = Scope(
            live=scope.live and planned.uuid not in (info.live.devices if info.live else ()),
            config=scope.config and planned.uuid not in (info.config.devices if info.config else ()),
        )
        unrecorded = [x for x in info.xml_for(scope)
                      if x.managed_entry(planned.uuid) != entry or (tenant is not None and x.tenant != tenant)]
        if not missing and not unrecorded:
            return AttachResult(info.name, info.uuid, planned, scope, created=False, changed=False)

        inst = self.lc.create(parent=planned.parent, type_id=planned.type_id, uuid=want) if creating else planned
        attached = False
        try:
            if missing:
                self.virt.attach_device(dom, info.name, rendered.xml, missing)
                attached = True
            for x, one in ((info.live, Scope(True, False)), (info.config, Scope(False, True))):
                if x is not None and (scope.live if one.live else scope.config):
                    kept = [m for m in x.managed if m.uuid != entry.uuid]
                    self.virt.set_managed(dom, info.name, kept + [entry], one, tenant=tenant or x.tenant,
                                          groups=x.groups)
        except BaseException:
            self._undo(dom, info.name, inst.uuid, missing if attached else Scope(False, False), created=creating)
            raise
        return AttachResult(info.name, info.uuid, inst, scope, created=creating, changed=True)

    def _undo(self, dom: Any, name: str, ident: str, attached: Scope, *, created: bool) -> None:
        """Best-effort roll-back of a failed attach: take the device back, destroy what this attach created."""
        if attached:
            try:
                self.virt.detach_device(dom, name, match_xml(ident), attached)
            except Exception as e:
                log.warning("roll-back: could not detach %s from %r again: %s", ident, name, e)
        if created:
            try:
                self.lc.destroy(ident)
            except Exception as e:
                log.warning("roll-back: could not destroy %s, which this attach created: %s", ident, e)

    def detach(
        self,
        domain: str,
        *,
        uuid: Optional[str] = None,
        live: bool = False,
        config: bool = False,
        destroy: bool = False,
    ) -> List[DetachResult]:
        """Detach one vGPU (``uuid``), or every one vgpuctl manages in the domain; optionally destroy them."""
        want: Optional[str] = None
        if uuid is not None:
            want = canonical_uuid(uuid) or (canonical_parent_name(uuid) if PCI_ADDR_RE.match(uuid) else None)
            if want is None:
                raise BadUuid(uuid)
        with VirtLock(self.lc.host.paths, self.lc.lock_timeout):
            return self.detach_held(domain, uuid=want, live=live, config=config, destroy=destroy)

    def detach_held(
        self,
        domain: str,
        *,
        uuid: Optional[str] = None,
        live: bool = False,
        config: bool = False,
        destroy: bool = False,
    ) -> List[DetachResult]:
        """``detach`` for a caller that holds the ``VirtLock`` already; ``uuid`` is canonical (or None: all)."""
        want = uuid
        dom, info, scope = self._domain(domain, live=live, config=config, action="detach a vGPU from")
        xmls = info.xml_for(scope)
        if want is not None:
            # a metadata entry alone (an earlier detach interrupted between its two steps) is cleaned up too
            if not any(want in x.devices or x.managed_entry(want) is not None for x in xmls):
                raise NotAttached(info.name, want)
            targets = [want]
        else:
            targets = sorted({m.uuid for x in xmls for m in x.managed if m.uuid in x.devices})
            if not targets:
                raise NotAttached(info.name)
        if destroy:
            inv, state = self.lc.read()
            for t in targets:  # preconditions before the first change
                if inv.instance(t) is not None and t not in state.owned:
                    raise NotOwned(t)
        for t in targets:
            where = Scope(
                live=scope.live and info.live is not None and t in info.live.devices,
                config=scope.config and info.config is not None and t in info.config.devices,
            )
            if where:
                self.virt.detach_device(dom, info.name, match_xml(t), where)
        for x, one in ((info.live, Scope(True, False)), (info.config, Scope(False, True))):
            if x is not None and (scope.live if one.live else scope.config):
                kept = [m for m in x.managed if m.uuid not in targets]
                if len(kept) != len(x.managed):
                    self.virt.set_managed(dom, info.name, kept, one, tenant=x.tenant, groups=x.groups)
        out = []
        for t in targets:
            gone = False
            if destroy and self.lc.read()[0].instance(t) is not None:
                self.lc.destroy(t)
                gone = True
            out.append(DetachResult(info.name, info.uuid, t, scope, destroyed=gone))
        return out


# --- the desired state's view of libvirt ---------------------------------------------------------------------------
def domain_attachments(snap: Snapshot, inventory: Inventory) -> Dict[str, FrozenSet["DomainAttachment"]]:
    """uuid -> the domains whose live or persistent XML references it, or whose vgpuctl metadata records it.

    A record counts when it describes the instance as the host has it (parent, type, backend); a stale one (the
    instance was re-made with another type) makes ``apply`` write it again."""
    from .plan import DomainAttachment

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
            out.setdefault(ident, set()).add(DomainAttachment(
                domain=d.name,
                running=d.running,
                live=d.live is not None and ident in d.live.devices,
                config=d.config is not None and ident in d.config.devices,
                recorded_live=recorded(d.live, ident),
                recorded_config=recorded(d.config, ident),
            ))
    return {k: frozenset(v) for k, v in out.items()}


class AttachmentSource:
    """The reconciler's libvirt side (``apply.AttachmentBackend``): what the domains reference, read once per plan,
    and the attach/detach steps of ``vgpuctl apply``, done by ``Attachments`` (same templates, metadata and scopes as
    ``vgpuctl attach --live/--config``).

    ``users`` is the lifecycle's ``DomainUsers`` for the same URI, so that a plan's in-use check and its attachments
    come from one read (``session``); one of its own otherwise.
    """

    def __init__(self, uri: str, lifecycle: Any, *, users: Optional[DomainUsers] = None,
                 templates: Any = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.uri = uri
        self.lc = lifecycle  # vgpuctl.lifecycle.Lifecycle
        if users is None:
            users = next((c for c in getattr(lifecycle, "usage_checks", ())
                          if isinstance(c, DomainUsers) and c.uri == uri), None) or DomainUsers(uri, timeout=timeout)
        self.users = users
        self._templates = templates

    @property
    def templates(self) -> Any:
        if self._templates is None:
            from .templates import Templates  # jinja2: only when something is attached

            self._templates = Templates(self.lc.host.paths)
        return self._templates

    def session(self) -> Any:
        return self.users.session()

    def observe(self, inventory: Inventory) -> Dict[str, FrozenSet["DomainAttachment"]]:
        """The attachments now (inside ``session``: as the session read them)."""
        return domain_attachments(self.users.read(), inventory)

    def lock(self) -> VirtLock:
        """The attach lock; ``apply`` takes it before the host lock, in the order ``vgpuctl attach`` does."""
        return VirtLock(self.lc.host.paths, self.lc.lock_timeout)

    def attach(self, action: "Action") -> bool:
        """Attach ``action.uuid`` to ``action.domain`` in ``action.mode``'s definitions; whether anything changed.
        The caller holds ``lock()``."""
        live, config = _mode_scope(action)
        with Virt.open(self.uri, timeout=self.users.timeout) as v:
            r = Attachments(v, self.lc, self.templates).attach_held(
                action.domain or "", uuid=action.uuid, live=live, config=config)
        return r.changed

    def detach(self, action: "Action") -> None:
        """Detach ``action.uuid`` from ``action.domain`` and drop vgpuctl's record of it.  The caller holds
        ``lock()``."""
        live, config = _mode_scope(action)
        with Virt.open(self.uri, timeout=self.users.timeout) as v:
            Attachments(v, self.lc, self.templates).detach_held(
                action.domain or "", uuid=action.uuid, live=live, config=config)


def _mode_scope(action: "Action") -> Tuple[bool, bool]:
    mode = str(action.mode or "config")
    return mode in ("live", "both"), mode in ("config", "both")


def attachments_provider(uri: str, lifecycle: Any, *, timeout: float = DEFAULT_TIMEOUT) -> AttachmentSource:
    """What ``commands.reconcile`` looks for: the attachment source for ``uri``, attaching with ``lifecycle``."""
    return AttachmentSource(uri, lifecycle, timeout=timeout)


# --- node devices --------------------------------------------------------------------------------------------------
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


def mdev_nodedevs(uri: str, *, timeout: float = 5.0) -> Dict[str, NodeDev]:
    """uuid -> libvirt's node device, for every mdev node device libvirt knows (active or only defined), in one
    read-only connection bounded by ``timeout`` seconds.  ``LibvirtConnectError`` when libvirt cannot say."""
    import threading

    out: Dict[str, NodeDev] = {}
    failure: List[BaseException] = []

    def read() -> None:
        try:
            with Virt.open(uri, readonly=True) as v:
                try:
                    devs = v.conn.listAllDevices(v.lv.VIR_CONNECT_LIST_NODE_DEVICES_CAP_MDEV)
                except v.lv.libvirtError as e:
                    raise LibvirtConnectError(uri, _detail(e)) from None
                for d in devs:
                    u = _nodedev_uuid(d.name())
                    if u is None:
                        continue
                    out[u] = NodeDev(d.name(), u, _flag(d, "isPersistent"), _flag(d, "isActive"))
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    t = threading.Thread(target=read, name="vgpuctl-nodedevs", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise LibvirtConnectError(uri, f"no answer about node devices within {timeout:g} s")
    if failure:
        raise failure[0]
    return dict(out)


def _flag(dev: Any, method: str) -> Optional[bool]:
    try:
        return bool(getattr(dev, method)())
    except Exception:  # older libvirt (< 7.3) has no such call, or the device went away
        return None
