"""``vgpuctl service``: keep the host converged to the desired state, in the foreground, for systemd.

What it does:

- at start, and whenever something may have changed, one ``Reconciler.apply`` (under the host lock, journalled);
- it notices changes from three sources, all waited on in one ``select``, so an idle service does no work:
  * the host: what each backend declares (``Backend.watch``): kernel uevents over netlink (pyudev): an mdev added
    or removed, a parent's ``MDEV_STATE`` change (registered/unregistered), a PCI event of an NVIDIA function (VFs
    added or removed, the driver bound or unbound) -- or, with ``--watch poll`` (hosts without uevents: containers,
    the simulated host), every ``--poll-interval`` a signature: the listings of ``sys/class/mdev_bus`` and
    ``sys/bus/mdev/devices``, and NVIDIA PFs' ``sriov_numvfs`` with the vendor-VFIO VFs and their types;
  * the desired-state files: inotify on ``etc/vgpuctl`` and ``etc/vgpuctl/conf.d`` (a file's mtime and size are
    compared at each resync where inotify is not available);
  * mdevctl's definitions: inotify on ``etc/mdevctl.d`` and its parent directories, so that ``mdevctl define`` or
    ``undefine`` is reflected at once in what the service leaves alone (``docs/coexistence.md``);
  * signals: SIGHUP reloads the configuration (and the policy), SIGTERM/SIGINT stop after the current step;
- a periodic resync (``--resync-interval``) as a safety net against a missed event;
- a parent that is not registered yet, a device in use, a failed step: retried with exponential backoff
  (1 s doubling to 60 s), never treated as fatal;
- an invalid configuration never shrinks the host: at start the service stays idle until the files are fixed;
  on a reload it keeps converging to the last valid desired state, and says so in STATUS;
- sd_notify, written by hand to ``$NOTIFY_SOCKET`` (a datagram socket; no python-systemd dependency): READY=1 after
  the first pass, STATUS=<one line>, WATCHDOG=1 at half ``$WATCHDOG_USEC``, RELOADING=1 and STOPPING=1;
- one log line per action (``+ create ...``), per reload, per error;
- optionally Prometheus metrics after every pass (``vgpuctl.metrics``: HTTP endpoint and/or node_exporter textfile).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, List, Optional, Sequence, Tuple

from .errors import ConfigError, VgpuctlError
from .plan import Block

log = logging.getLogger("vgpuctl.service")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
DEBOUNCE = 0.05  #: events come in bursts (a parent and its types, many mdevs): wait this long for the rest


class Watch(str, Enum):
    AUTO = "auto"  #: udev when pyudev and a netlink socket are available, else poll
    UDEV = "udev"
    POLL = "poll"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ServiceOptions:
    resync_interval: float = 300.0
    watch: Watch = Watch.AUTO
    poll_interval: float = 2.0


# --- sd_notify ----------------------------------------------------------------------------------------------------
class Notifier:
    """The sd_notify protocol: datagrams of ``KEY=VALUE`` lines to ``$NOTIFY_SOCKET`` ('@' = abstract namespace)."""

    def __init__(self, address: Optional[str] = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: Optional[str] = None
        self.sock: Optional[socket.socket] = None
        if address:
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __call__(self, **fields: str) -> None:
        if self.sock is None or self.address is None:
            return
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            # never wait on the manager: a receiver that does not read (its queue holds only max_dgram_qlen
            # datagrams) must not stall the service, so a full socket drops this message (EAGAIN)
            self.sock.sendto(msg, socket.MSG_DONTWAIT, self.address)
        except OSError as e:  # systemd gone or the socket full: never fatal
            log.debug("sd_notify failed: %s", e)


def watchdog_interval() -> Optional[float]:
    """Half of ``$WATCHDOG_USEC`` in seconds when the watchdog is meant for this process, else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


# --- change sources -----------------------------------------------------------------------------------------------
class Inotify:
    """Directory watches through libc's inotify (ctypes); ``fileno`` is readable when something changed."""

    MASK = 0x00000008 | 0x00000040 | 0x00000080 | 0x00000100 | 0x00000200 | 0x00000002 | 0x00000400
    #      CLOSE_WRITE  MOVED_FROM   MOVED_TO     CREATE       DELETE       MODIFY       DELETE_SELF

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")

    def watch(self, path: "os.PathLike[str] | str") -> bool:
        return self._add(self.fd, os.fsencode(path), self.MASK) >= 0

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> None:
        while True:
            try:
                if not os.read(self.fd, 65536):
                    return
            except BlockingIOError:
                return

    def close(self) -> None:
        os.close(self.fd)


class ConfigWatch:
    """Notices edits of the desired-state files (and policy.yaml) under ``config_dir``."""

    def __init__(self, config_dir: "os.PathLike[str] | str") -> None:
        self.dir = os.fspath(config_dir)
        self.inotify: Optional[Inotify] = None
        try:
            self.inotify = Inotify()
        except (OSError, AttributeError) as e:
            log.info("inotify not available (%s): config changes are noticed at resync and on SIGHUP", e)
        self.signature = self._signature()
        self.rewatch()

    def rewatch(self) -> None:
        if self.inotify is None:
            return
        for d in (os.path.dirname(self.dir), self.dir, os.path.join(self.dir, "conf.d")):
            if os.path.isdir(d):
                self.inotify.watch(d)

    def fileno(self) -> Optional[int]:
        return self.inotify.fileno() if self.inotify is not None else None

    def _signature(self) -> Tuple[Tuple[str, int, int], ...]:
        out = []
        for d in (self.dir, os.path.join(self.dir, "conf.d")):
            try:
                for e in os.scandir(d):
                    if e.name.endswith(".yaml"):
                        st = e.stat()
                        out.append((e.path, st.st_mtime_ns, st.st_size))
            except OSError:
                continue
        return tuple(sorted(out))

    def changed(self) -> bool:
        """After the fd was readable, or at resync: whether the files differ from last time (and remember)."""
        if self.inotify is not None:
            self.inotify.drain()
            self.rewatch()
        sig = self._signature()
        if sig == self.signature:
            return False
        self.signature = sig
        return True


class DefinitionsWatch(ConfigWatch):
    """Notices mdevctl's definitions changing (``etc/mdevctl.d/<parent>/<uuid>``: ``mdevctl define``/``undefine``,
    ``virsh nodedev-define``): the plan's never-fight rules depend on them."""

    def rewatch(self) -> None:
        if self.inotify is None:
            return
        for d in self._dirs(with_base=True):
            self.inotify.watch(d)

    def _dirs(self, *, with_base: bool = False) -> List[str]:
        out = [os.path.dirname(self.dir)] if with_base and os.path.isdir(os.path.dirname(self.dir)) else []
        try:
            entries = sorted(os.scandir(self.dir), key=lambda e: e.name)
        except OSError:
            return out
        out.append(self.dir)
        out += [e.path for e in entries if e.name != "scripts.d" and e.is_dir(follow_symlinks=False)]
        return out

    def _signature(self) -> Tuple[Tuple[str, int, int], ...]:
        out = []
        for d in self._dirs():
            try:
                for e in os.scandir(d):
                    st = e.stat(follow_symlinks=False)
                    out.append((e.path, st.st_mtime_ns, st.st_size))
            except OSError:
                continue
        return tuple(sorted(out))


class HostWatch:
    """Kernel uevents through pyudev, or a cheap polled signature: what each host backend declares it depends on
    (``Backend.watch``: mdev's ``mdev``/``MDEV_STATE`` uevents and two readdirs; the NVIDIA vendor-VFIO backend's
    PCI uevents and ``sriov_numvfs``/VF listing)."""

    def __init__(self, paths: Any, watch: Watch, poll_interval: float, backends: Sequence[Any] = ()) -> None:
        self.paths = paths
        self.poll_interval = poll_interval
        self.specs = [b.watch() for b in backends]
        self.monitor: Any = None
        self.mode = Watch.POLL
        if watch in (Watch.AUTO, Watch.UDEV):
            try:
                import pyudev

                self.monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
                self.monitor.start()
                self.mode = Watch.UDEV
            except Exception as e:  # ImportError, or no netlink socket here (a container): fall back
                if watch is Watch.UDEV:
                    raise
                log.info("kernel uevents not available (%s): polling sysfs every %gs", e, poll_interval)
        self._last: List[Any] = [None] * len(self.specs)  #: each spec's last signature
        self._next: List[float] = [0.0] * len(self.specs)  #: when each spec may be read again
        self.signature = self.read_signature(force=True)

    def read_signature(self, force: bool = False) -> Tuple[Any, ...]:
        """Every backend's signature.  One that is costly to read (the vendor-VFIO one reads a file per VF: a few
        ms on sysfs, far more through a loaded FUSE simulator) is re-read at most once per ten times its own cost,
        so that polling never takes more than a tenth of the time; ``force``: read all now."""
        now = time.monotonic()
        for k, spec in enumerate(self.specs):
            if not force and now < self._next[k]:
                continue
            t0 = time.monotonic()
            try:
                self._last[k] = spec.signature()
            except OSError:
                self._last[k] = None
            cost = time.monotonic() - t0
            self._next[k] = t0 + max(self.poll_interval, 10 * cost) - self.poll_interval / 2
        return tuple(self._last)

    def fileno(self) -> Optional[int]:
        return self.monitor.fileno() if self.monitor is not None else None

    def relevant_events(self) -> List[str]:
        """Read the pending uevents; describe those that concern a backend."""
        out: List[str] = []
        while True:
            dev = self.monitor.poll(timeout=0)
            if dev is None:
                return out
            props = dev.properties
            subsystem = dev.subsystem or ""
            if any(spec.uevent(subsystem, props) for spec in self.specs):
                out.append(
                    f"{dev.action} {dev.sys_name}"
                    + (f" MDEV_STATE={props['MDEV_STATE']}" if "MDEV_STATE" in props else "")
                )

    def poll_changed(self) -> bool:
        sig = self.read_signature()
        if sig == self.signature:
            return False
        self.signature = sig
        return True


# --- the service --------------------------------------------------------------------------------------------------
class Service:
    def __init__(
        self,
        make_reconciler: Callable[[], Any],
        paths: Any,
        options: ServiceOptions = ServiceOptions(),
        notify: Optional[Notifier] = None,
        metrics: Any = None,
    ) -> None:
        self.make_reconciler = make_reconciler
        self.paths = paths
        self.options = options
        self.notify = notify or Notifier()
        self.stopping = False
        self.reload_requested = False
        self.reconciler: Any = None
        self.desired: Any = None
        self.config_problem: Optional[str] = None
        self.backoff = BACKOFF_FIRST
        self.retry_at: Optional[float] = None
        self.status = "starting"
        self.metrics = metrics  #: a ``vgpuctl.metrics.MetricsExporter``, or None

    # --- signals ---------------------------------------------------------------------------------------------------
    def _install_signals(self) -> socket.socket:
        rsock, wsock = socket.socketpair()
        for s in (rsock, wsock):
            s.setblocking(False)
        signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)

        def on_term(signum: int, frame: Any) -> None:
            self.stopping = True

        def on_hup(signum: int, frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)
        self._wsock = wsock
        return rsock

    # --- configuration ---------------------------------------------------------------------------------------------
    def load(self, why: str) -> None:
        """(Re)build the reconciler and read the desired state; an invalid file keeps the last good state."""
        try:
            reconciler = self.make_reconciler()
            desired = reconciler.desired()
        except ConfigError as e:
            self.config_problem = str(e)
            if self.desired is None:
                log.error("%s: invalid configuration, doing nothing until it is fixed: %s", why, e)
            else:
                log.error("%s: invalid configuration, keeping the previous desired state: %s", why, e)
            return
        self.reconciler, self.desired, self.config_problem = reconciler, desired, None
        log.info(
            "%s: desired state has %d instance(s) from %d file(s)", why, len(desired.instances), len(desired.files)
        )

    # --- converge --------------------------------------------------------------------------------------------------
    def converge(self, why: str) -> None:
        if self.desired is None:
            self._set_status(f"invalid configuration: {self.config_problem}")
            return
        log.debug("converging (%s)", why)
        started = time.monotonic()
        try:
            result = self.reconciler.apply(self.desired, should_stop=lambda: self.stopping, on_step=self._log_step)
        except VgpuctlError as e:
            log.error("converge failed (%s): %s", why, e)
            self._observed(None, started, e)
            self._schedule_retry()
            self._set_status(f"error: {e}")
            return
        self._observed(result, started, None)
        p = result.after.plan
        retry = bool(result.failed) or any(a.block is not None and a.block.retryable for a in p.actions)
        if retry or result.interrupted:
            self._schedule_retry()
        else:
            self.backoff, self.retry_at = BACKOFF_FIRST, None
        self._set_status(self._summary(result))

    def _observed(self, result: Any, started: float, error: Optional[BaseException]) -> None:
        if self.metrics is not None:
            self.metrics.observe(
                reconciler=self.reconciler, result=result, duration=time.monotonic() - started, error=error
            )

    def _log_step(self, step: Any) -> None:
        if step.ok:
            log.info("%s", step.action.line())
        else:
            log.warning("%s [failed: %s]", step.action.line(), step.error)

    def _schedule_retry(self) -> None:
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)

    def _summary(self, result: Any) -> str:
        inv, p = result.after.inventory, result.after.plan
        n = len(self.desired.instances)
        from .spec import bind  # an instance pinned to a vendor-VFIO VF is named by the VF

        have = sum(1 for d in bind(self.desired, inv).instances if inv.instance(d.uuid) is not None)
        text = f"{have}/{n} desired instances present"
        if p.empty:
            text += ", converged"
        else:
            waiting = sorted({a.parent or "(any)" for a in p.actions if a.block is Block.PARENT_MISSING})
            blocked = len(p.blocked)
            text += f", {len(p.actions)} action(s) left ({blocked} blocked)"
            if waiting:
                text += f"; waiting for parent {', '.join(waiting)}"
        if self.config_problem:
            text += "; config error, using last good: " + self.config_problem
        return text

    def _set_status(self, text: str) -> None:
        if text != self.status:
            log.info("status: %s", text)
        self.status = text
        self.notify(STATUS=text)

    # --- main loop -------------------------------------------------------------------------------------------------
    def run(self) -> int:
        logging.getLogger("vgpuctl").setLevel(min(logging.INFO, logging.getLogger().getEffectiveLevel()))
        wake = self._install_signals()
        if self.metrics is not None:
            self.metrics.start()
        self.load("start")
        paths = self.paths
        config = ConfigWatch(paths.config_dir)
        from .host.mdevctl import config_dir as mdevctl_dir

        definitions = DefinitionsWatch(mdevctl_dir(paths))
        if self.reconciler is not None:
            backends = self.reconciler.host.backends
        else:  # no valid configuration yet: watch what the default backends watch
            from .host import Host

            backends = Host(paths).backends
        host = HostWatch(paths, self.options.watch, self.options.poll_interval, backends)
        log.info("watching the host by %s, resync every %gs", host.mode, self.options.resync_interval)
        self.converge("start")
        self.notify(READY="1", STATUS=self.status)
        wd = watchdog_interval()
        now = time.monotonic()
        next_resync = now + self.options.resync_interval
        next_poll = now + self.options.poll_interval if host.mode is Watch.POLL else None
        next_wd = now + wd if wd else None
        pending: Optional[str] = None  #: why the next converge (debounced) will run
        pending_at = 0.0
        while not self.stopping:
            if self.reload_requested:
                self.reload_requested = False
                self.notify(RELOADING="1")
                self.load("SIGHUP")
                config.changed()
                pending, pending_at = "reload", time.monotonic()
            deadlines = [d for d in (next_resync, next_poll, next_wd, self.retry_at) if d is not None]
            if pending is not None:
                deadlines.append(pending_at + DEBOUNCE)
            timeout = max(0.0, min(deadlines) - time.monotonic())
            fds = [wake] + [f for f in (config.fileno(), definitions.fileno(), host.fileno()) if f is not None]
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                ready = []
            now = time.monotonic()
            if wake in ready:
                try:
                    while wake.recv(64):
                        pass
                except BlockingIOError:
                    pass
            if config.fileno() is not None and config.fileno() in ready and config.changed():
                self.load("configuration changed")
                pending, pending_at = pending or "configuration changed", now
            if definitions.fileno() is not None and definitions.fileno() in ready and definitions.changed():
                pending, pending_at = pending or "mdevctl's definitions changed", now
            if host.fileno() is not None and host.fileno() in ready:
                events = host.relevant_events()
                if events:
                    log.debug("uevents: %s", "; ".join(events))
                    pending, pending_at = pending or f"uevent {events[0]}", now
            if next_poll is not None and now >= next_poll:
                next_poll = now + self.options.poll_interval
                if host.poll_changed():
                    pending, pending_at = pending or "sysfs changed", now
                if definitions.inotify is None and definitions.changed():
                    pending, pending_at = pending or "mdevctl's definitions changed", now
            if next_wd is not None and now >= next_wd:
                self.notify(WATCHDOG="1")
                next_wd = now + (wd or 1.0)
            if now >= next_resync:
                next_resync = now + self.options.resync_interval
                if config.changed():
                    self.load("configuration changed")
                pending, pending_at = pending or "periodic resync", now - DEBOUNCE
            if self.retry_at is not None and now >= self.retry_at:
                self.retry_at = None
                pending, pending_at = pending or "retry", now - DEBOUNCE
            if pending is not None and now >= pending_at + DEBOUNCE and not self.stopping:
                why, pending = pending, None
                # the signature is taken before the pass: a change during it (ours included) causes one more pass
                host.signature = host.read_signature(force=True)
                self.converge(why)
        self.notify(STOPPING="1", STATUS="stopping")
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped")
        signal.set_wakeup_fd(-1)
        return 0
