"""The libvirt qemu hook: vGPUs that exist only while their domain runs.

libvirt runs ``/etc/libvirt/hooks/qemu DOMAIN OPERATION SUB-OP EXTRA`` with the domain XML on stdin, *while it holds
the domain's lock*, so a hook must not call back into libvirt and must not take long.  Installed as::

    #!/bin/sh
    exec vgpuctl --connect none hook qemu "$@"

it does this, and only this:

* ``prepare begin``: for every vGPU the domain's XML references *and* vgpuctl's metadata in it describes (uuid,
  parent, type), create the ones that do not exist.  Their uuids are remembered in
  ``run/vgpuctl/hook/<domain-uuid>.json``.  Any failure rolls back what this call created and exits non-zero, which
  makes libvirt abort the start with our message.
* ``release end``: destroy the vGPUs the hook created for this domain (never one it did not create).  Failures are
  logged; the exit status is 0, because libvirt cannot undo a stop.
* anything else: exit 0 at once.

Time is bounded (``timeout``): the lock wait is capped by it, and an alarm ends the run.  Each call writes one line
per action or failure on stderr, which libvirt copies to its log.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, TextIO

from .errors import HookError, VgpuctlError
from .model import BackendKind, canonical_uuid
from .paths import HostPaths
from .state import ORIGIN_HOOK
from .virt import DomainXml, ManagedVgpu, parse_domain

SCHEMA = "vgpuctl.hook/v1"
START = ("prepare", "begin")
STOP = ("release", "end")
DEFAULT_TIMEOUT = 20.0


@dataclass(frozen=True)
class HookCall:
    obj: str
    domain: str
    operation: str
    subop: str

    @classmethod
    def parse(cls, argv: Sequence[str]) -> "HookCall":
        if len(argv) < 4:
            raise HookError(f"expected: qemu DOMAIN OPERATION SUB-OP [EXTRA], got {len(argv)} argument(s): "
                            + " ".join(repr(a) for a in argv))
        return cls(*(str(a) for a in argv[:4]))

    @property
    def is_start(self) -> bool:
        return (self.operation, self.subop) == START

    @property
    def is_stop(self) -> bool:
        return (self.operation, self.subop) == STOP

    def __str__(self) -> str:
        return f"{self.obj} {self.domain!r} {self.operation}/{self.subop}"


def on_demand(dx: DomainXml) -> List[ManagedVgpu]:
    """The vGPUs the hook manages for a domain: referenced by a hostdev and described in vgpuctl's metadata."""
    return [m for m in dx.managed if m.uuid in dx.devices and m.parent and m.type_id
            and m.backend == str(BackendKind.MDEV)]


class HookRecords:
    """Which vGPUs the hook created for which domain (``run/vgpuctl/hook``: gone at reboot, like the vGPUs)."""

    def __init__(self, paths: HostPaths) -> None:
        self.dir = paths.run_dir / "hook"

    def _path(self, domain_uuid: str) -> str:
        key = canonical_uuid(domain_uuid)
        if key is None:
            raise HookError(f"domain uuid {domain_uuid!r} is not a UUID")
        return os.fspath(self.dir / f"{key}.json")

    def load(self, domain_uuid: str) -> List[str]:
        try:
            with open(self._path(domain_uuid)) as f:
                doc = json.load(f)
            return [u for u in doc["created"] if canonical_uuid(u)]
        except FileNotFoundError:
            return []
        except (ValueError, KeyError, TypeError):
            return []  # a torn record is worth nothing: the next release will not destroy what it cannot name

    def all(self) -> List[str]:
        """Every vGPU the hook created and has not destroyed yet, for any domain (the desired state leaves them be)."""
        try:
            names = sorted(os.listdir(self.dir))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out: List[str] = []
        for n in names:
            if n.endswith(".json") and not n.startswith("."):
                out += self.load(n[: -len(".json")])
        return sorted(set(out))

    def save(self, domain_uuid: str, domain: str, created: Sequence[str]) -> None:
        path = self._path(domain_uuid)
        if not created:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hook.", dir=os.fspath(self.dir))
        with os.fdopen(fd, "w") as f:
            json.dump({"schema": SCHEMA, "domain": domain, "created": sorted(set(created))}, f)
        os.replace(tmp, path)


class Hook:
    def __init__(self, lifecycle: Any, paths: HostPaths, *, err: Optional[TextIO] = None) -> None:
        self.lc = lifecycle  # vgpuctl.lifecycle.Lifecycle, built without a libvirt usage check
        self.records = HookRecords(paths)
        self.err = err if err is not None else sys.stderr

    def log(self, call: Optional[HookCall], msg: str) -> None:
        head = f"vgpuctl hook: {call}: " if call else "vgpuctl hook: "
        print(head + " ".join(msg.split()), file=self.err, flush=True)

    def start(self, call: HookCall, dx: DomainXml) -> List[str]:
        inv, _ = self.lc.read()
        made: List[str] = []
        try:
            for m in on_demand(dx):
                if inv.instance(m.uuid) is not None:
                    continue
                self.lc.create(parent=m.parent, type_id=m.type_id, uuid=m.uuid, origin=ORIGIN_HOOK)
                made.append(m.uuid)
                self.log(call, f"created {m.uuid} ({m.type_id} on {m.parent})")
        except BaseException:
            for u in reversed(made):
                try:
                    self.lc.destroy(u)
                    self.log(call, f"rolled back {u}")
                except Exception as e:
                    self.log(call, f"roll-back of {u} failed: {e}")
            raise
        if made:
            self.records.save(dx.uuid, dx.name, self.records.load(dx.uuid) + made)
        return made

    def stop(self, call: HookCall, dx: DomainXml) -> List[str]:
        ours = self.records.load(dx.uuid)
        if not ours:
            return []
        inv, _ = self.lc.read()
        left: List[str] = []
        gone: List[str] = []
        for u in ours:
            if inv.instance(u) is None:
                continue
            try:
                self.lc.destroy(u)
                gone.append(u)
                self.log(call, f"destroyed {u}")
            except VgpuctlError as e:
                left.append(u)
                self.log(call, f"could not destroy {u}: {e}")
        self.records.save(dx.uuid, dx.name, left)
        return gone

    def run(self, argv: Sequence[str], read_stdin: Callable[[], str], *, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Do one hook call; the exit status libvirt should see.  Never raises."""
        call: Optional[HookCall] = None
        try:
            call = HookCall.parse(argv)
            if call.obj != "qemu" or not (call.is_start or call.is_stop):
                return 0
            with _deadline(timeout):
                try:
                    dx = parse_domain(read_stdin())
                except ValueError as e:
                    raise HookError(f"the domain XML on stdin is unusable: {e}") from None
                if dx.name != call.domain:
                    raise HookError(f"the domain XML on stdin names {dx.name!r}, not {call.domain!r}")
                if not dx.uuid:
                    raise HookError("the domain XML on stdin has no <uuid>")
                if call.is_start:
                    self.start(call, dx)
                else:
                    self.stop(call, dx)
            return 0
        except VgpuctlError as e:
            aborts = call is not None and call.is_start
            self.log(call, f"{'error' if aborts else 'warning'}: {e}")
            return e.exit_code if aborts else 0
        except Exception as e:  # a bug: still one line, and libvirt is never left hanging
            aborts = call is not None and call.is_start
            self.log(call, f"internal error: {type(e).__name__}: {e}")
            return 1 if aborts else 0


class _deadline:
    """Raise ``HookError`` in the main thread once ``seconds`` have passed (SIGALRM); a no-op elsewhere."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.old: Any = None
        self.armed = False

    def _fire(self, signum: int, frame: Any) -> None:
        raise HookError(f"gave up after {self.seconds:g} s (raise the bound with --timeout)")

    def __enter__(self) -> "_deadline":
        if self.seconds > 0 and threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
            self.armed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
