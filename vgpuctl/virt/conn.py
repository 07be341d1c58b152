"""libvirt connections: the one module that imports libvirt, and only when a connection is opened.

* ``Virt``: one open connection.  Every libvirt error leaves it as a typed ``LibvirtError`` naming the URI or the
  domain, never as a traceback.  ``snapshot()`` reads every domain once (``domxml.Snapshot``).
* ``bounded``: a libvirt conversation in a worker thread, given up after a timeout (libvirt's client waits for ever).
* ``DomainUsers``: the ``UsageCheck`` that lets ``destroy`` refuse a device a domain references; it reads libvirt
  afresh on every call, as a check that guards a change must.
* ``reachability`` (is libvirt there, and why not) and ``mdev_nodedevs`` (libvirt's node devices for mdevs).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from ..errors import (
    DomainNotFound,
    LibvirtConnectError,
    LibvirtError,
    LibvirtRefused,
    LibvirtTimeout,
    LibvirtUnavailable,
)
from ..model import Instance
from .domxml import (
    METADATA_ELEMENT,
    NS,
    NS_KEY,
    XML_INACTIVE,
    DomainInfo,
    DomainXml,
    ManagedVgpu,
    NodeDev,
    Scope,
    Snapshot,
    _nodedev_uuid,
    metadata_xml,
    parse_domain,
)


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
            raise LibvirtTimeout(
                uri,
                timeout,
                "an earlier connection is still waiting for an answer "
                "(libvirtd accepts connections but does not respond)",
            )
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
        if code in (
            self.lv.VIR_ERR_SYSTEM_ERROR,
            self.lv.VIR_ERR_RPC,
            self.lv.VIR_ERR_NO_CONNECT,
            self.lv.VIR_ERR_INVALID_CONN,
            self.lv.VIR_ERR_AUTH_FAILED,
        ):
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

    def set_managed(
        self,
        dom: Any,
        name: str,
        entries: Sequence[ManagedVgpu],
        scope: Scope,
        *,
        tenant: Optional[str] = None,
        groups: Sequence[str] = (),
    ) -> None:
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


# --- one connection per command or pass ----------------------------------------------------------------------------
class Libvirt:
    """The libvirt connection of one command or one service pass: built once by ``vgpuctl.app`` and passed to
    everything that talks to libvirt (the in-use check, the observation step, attach and detach).

    The connection opens on first use, read-only until something asks to change a domain (``connection(write=True)``),
    and is kept until ``end()``.  ``read()`` reads every domain now, within ``timeout`` seconds for connect and read
    together: what a check that guards a change uses.  ``observed()`` is this pass's view of libvirt: the first
    snapshot any ``read()`` of the pass made (or that read's failure), read now if there was none.  It is the one place
    a snapshot is kept, so a command's tables, its placement usage and a plan see one read of libvirt.  ``end()``
    closes the connection and forgets the view: the service's next pass reads again.
    """

    def __init__(self, uri: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.uri = uri
        self.timeout = timeout
        self._virt: Optional[Virt] = None
        self._writable = False
        self._seen: Optional[Snapshot] = None
        self._failed: Optional[LibvirtError] = None

    def connection(self, *, write: bool = False) -> Virt:
        """The open connection (opened now, bounded, if there is none; re-opened read-write if ``write``)."""
        if self._virt is not None and (self._writable or not write):
            return self._virt
        v = Virt.open(self.uri, readonly=not write, timeout=self.timeout)
        if self._virt is not None:
            self._virt.close()
        self._virt, self._writable = v, write
        return v

    def read(self) -> Snapshot:
        """Every domain, read now; ``LibvirtConnectError``/``LibvirtUnavailable``/``LibvirtTimeout`` past the bound.
        A failed read drops the connection, so the next one connects again (libvirtd restarted)."""
        current = self._virt

        def read() -> Snapshot:
            if current is not None:
                return current.snapshot()
            v = Virt.open(self.uri, readonly=True, timeout=None)
            _keepalive(v.conn, self.timeout)
            try:
                snap = v.snapshot()
            except BaseException:
                v.close()
                raise
            if self._virt is None:  # kept for the rest of the pass
                self._virt, self._writable = v, False
            else:
                v.close()
            return snap

        try:
            snap = bounded(self.uri, self.timeout, read)
        except (LibvirtConnectError, LibvirtUnavailable) as e:
            if self._seen is None and self._failed is None:
                self._failed = e
            self._drop()
            raise
        if self._seen is None and self._failed is None:
            self._seen = snap
        return snap

    def observed(self) -> Snapshot:
        """This pass's snapshot: the first one read in it (or the failure that first read met, raised again)."""
        if self._seen is not None:
            return self._seen
        if self._failed is not None:
            raise self._failed
        return self.read()

    def forget(self) -> None:
        """Forget what was observed (the connection stays): the next ``observed()`` reads again (a plan after
        ``apply``'s steps)."""
        self._seen, self._failed = None, None

    def end(self) -> None:
        """The pass is over: close the connection, forget what was observed."""
        self._drop()
        self.forget()

    def _drop(self) -> None:
        v, self._virt, self._writable = self._virt, None, False
        if v is not None:
            v.close()


# --- the usage check -----------------------------------------------------------------------------------------------
class DomainUsers:
    """``UsageCheck``: the libvirt domains whose live or persistent XML references an instance.

    One read of every domain per call, on the command's connection (``Libvirt``; a URI gets a connection of its own),
    never a remembered one: the check guards a change.  With ``include_stale=False`` (``destroy --force``) a definition
    alone no longer counts, but a running domain that has the device always does.
    """

    def __init__(
        self, libvirt: "Libvirt | str", *, include_stale: bool = True, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.libvirt = Libvirt(libvirt, timeout=timeout) if isinstance(libvirt, str) else libvirt
        self.include_stale = include_stale

    @property
    def uri(self) -> str:
        return self.libvirt.uri

    def read(self) -> Snapshot:
        return self.libvirt.read()

    def users(self, instances: Sequence[Instance]) -> Dict[str, List[str]]:
        if not instances:
            return {}
        return users_in(self.read(), instances, include_stale=self.include_stale)

    def running_users(self, instances: Sequence[Instance]) -> Dict[str, List[str]]:
        """Like ``users``, counting only domains that run with the instance (not a definition alone)."""
        if not instances:
            return {}
        return users_in(self.read(), instances, include_stale=False)


def users_in(snap: Snapshot, instances: Sequence[Instance], *, include_stale: bool = True) -> Dict[str, List[str]]:
    """uuid -> the domains of ``snap`` that use each instance, described (``include_stale=False``: only domains that
    run with it).  Pure."""
    out: Dict[str, List[str]] = {}
    for i in instances:
        uses = [u for u in snap.uses(i.uuid) if include_stale or not u.stale]
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
