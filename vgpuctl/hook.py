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
  Then, for every vGPU the domain references that the desired state (``etc/vgpuctl``) gives NVIDIA vGPU
  parameters (``params:``, or its service profile's), write them to ``nvidia/vgpu_params`` where they differ: a
  change ``apply`` could not make while the VM ran takes effect now, at its start.  A desired state that does not
  parse is logged and skipped (the VM still starts); a refused write aborts the start.
* ``migrate begin`` (on the destination of a live migration, before its QEMU starts): place and create the domain's
  hook-managed vGPUs here (``vgpuctl.migration``: same type, this host's policy; the uuid kept when free here), record
  them, and print the domain XML with the changed uuids/parents (libvirt takes a non-empty stdout as the new XML).
  A vGPU that does not fit aborts the migration (exit 4 or 15); the source's domain keeps running.
* ``release end``: destroy the vGPUs the hook created for this domain (never one it did not create).  Failures are
  logged; the exit status is 0, because libvirt cannot undo a stop.
* anything else: exit 0 at once.

Time is bounded (``timeout``): the lock wait is capped by it, and an alarm ends the run.  Each call writes one line
per action or failure on stderr, which libvirt copies to its log.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, TextIO

from .configfile import read_json
from .errors import HookError, StateError, VgpuctlError
from .fsutil import ensure_dirs, write_atomic
from .model import BackendKind, canonical_uuid
from .paths import HostPaths
from .state import ORIGIN_HOOK
from .virt.domxml import DomainXml, ManagedVgpu, parse_domain

SCHEMA = "vgpuctl.hook/v1"
START = ("prepare", "begin")
STOP = ("release", "end")
#: on the destination of an incoming migration, before QEMU starts; stdout (when not empty) replaces the domain XML
MIGRATE = ("migrate", "begin")
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
            raise HookError(
                f"expected: qemu DOMAIN OPERATION SUB-OP [EXTRA], got {len(argv)} argument(s): "
                + " ".join(repr(a) for a in argv)
            )
        return cls(*(str(a) for a in argv[:4]))

    @property
    def is_start(self) -> bool:
        return (self.operation, self.subop) == START

    @property
    def is_stop(self) -> bool:
        return (self.operation, self.subop) == STOP

    @property
    def is_migrate(self) -> bool:
        return (self.operation, self.subop) == MIGRATE

    @property
    def aborts(self) -> bool:
        """Whether a failure of this call must make libvirt give up (a start, an incoming migration)."""
        return self.is_start or self.is_migrate

    def __str__(self) -> str:
        return f"{self.obj} {self.domain!r} {self.operation}/{self.subop}"


def on_demand(dx: DomainXml) -> List[ManagedVgpu]:
    """The vGPUs the hook manages for a domain: referenced by a hostdev and described in vgpuctl's metadata."""
    return [
        m for m in dx.managed if m.uuid in dx.devices and m.parent and m.type_id and m.backend == str(BackendKind.MDEV)
    ]


class HookRecords:
    """Which vGPUs the hook created for which domain (``run/vgpuctl/hook``: gone at reboot, like the vGPUs).

    Read with the strict reader (``configfile.read_json``): a record that is a symlink, a FIFO, world-writable or
    corrupt is a ``StateError``, never "nothing recorded"."""

    def __init__(self, paths: HostPaths) -> None:
        self.root = paths.root
        self.dir = paths.run_dir / "hook"

    def _path(self, domain_uuid: str) -> str:
        key = canonical_uuid(domain_uuid)
        if key is None:
            raise HookError(f"domain uuid {domain_uuid!r} is not a UUID")
        return os.fspath(self.dir / f"{key}.json")

    def load(self, domain_uuid: str) -> List[str]:
        path = self._path(domain_uuid)
        doc = read_json(path, error=StateError)
        if doc is None:
            return []
        created = doc.get("created") if isinstance(doc, dict) and doc.get("schema") == SCHEMA else None
        if not isinstance(created, list) or not all(isinstance(u, str) and canonical_uuid(u) for u in created):
            raise StateError(path, f"is not a {SCHEMA} record; move it aside (the vGPUs it named stay until destroyed)")
        return list(created)

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

    def prepare(self, domain_uuid: str) -> List[str]:
        """Check, before the first write, that the domain's record can be kept: its uuid is a UUID, the record
        directory is a usable directory (made if missing), and any record already there is readable.  Returns it."""
        self._path(domain_uuid)
        ensure_dirs(self.dir, below=self.root)
        return self.load(domain_uuid)

    def save(self, domain_uuid: str, domain: str, created: Sequence[str]) -> None:
        path = self._path(domain_uuid)
        if not created:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise StateError(path, f"cannot be removed: {os.strerror(e.errno or 0)}") from None
            return
        ensure_dirs(self.dir, below=self.root)
        doc = {"schema": SCHEMA, "domain": domain, "created": sorted(set(created))}
        write_atomic(path, json.dumps(doc), mode=0o644, durable=True)


class Hook:
    def __init__(
        self, lifecycle: Any, paths: HostPaths, *, err: Optional[TextIO] = None, out: Optional[TextIO] = None
    ) -> None:
        self.lc = lifecycle  # vgpuctl.lifecycle.Lifecycle, built without a libvirt usage check
        self.paths = paths
        self.records = HookRecords(paths)
        self.err = err if err is not None else sys.stderr
        self.out = out if out is not None else sys.stdout  #: where the rewritten XML of ``migrate begin`` goes

    def log(self, call: Optional[HookCall], msg: str) -> None:
        head = f"vgpuctl hook: {call}: " if call else "vgpuctl hook: "
        print(head + " ".join(msg.split()), file=self.err, flush=True)

    def start(self, call: HookCall, dx: DomainXml) -> List[str]:
        wanted = on_demand(dx)
        if not wanted:
            self.params(call, dx)
            return []
        prior = self.records.prepare(dx.uuid)  # every check before the first write: uuid, record dir, old record
        inv, _ = self.lc.read()
        made: List[str] = []
        try:
            for m in wanted:
                if inv.instance(m.uuid) is not None:
                    continue
                self.lc.create(parent=m.parent, type_id=m.type_id, uuid=m.uuid, origin=ORIGIN_HOOK)
                made.append(m.uuid)
                self.log(call, f"created {m.uuid} ({m.type_id} on {m.parent})")
            if made:  # recorded before returning: a record that cannot be written rolls the creates back
                self.records.save(dx.uuid, dx.name, prior + made)
        except BaseException:
            self._roll_back(call, made)
            raise
        self.params(call, dx)
        return made

    def _roll_back(self, call: HookCall, made: Sequence[str]) -> None:
        """Destroy what this call created, newest first; a failure is logged, never raised over the first error."""
        for u in reversed(made):
            try:
                self.lc.destroy(u)
                self.log(call, f"rolled back {u}")
            except Exception as e:
                self.log(call, f"roll-back of {u} failed: {e}")

    def params(self, call: HookCall, dx: DomainXml) -> List[str]:
        """Write the desired vGPU parameters of the domain's vGPUs where they differ (before QEMU opens them)."""
        from . import spec, vgpu_params
        from .errors import ConfigError
        from .state import HostLock

        paths = self.lc.host.paths
        try:
            desired = spec.load(paths.config_dir)
        except ConfigError as e:
            self.log(call, f"warning: vGPU parameters not checked: {e}")
            return []
        if not dx.devices or not any(d.wanted_params is not None for d in desired.instances):
            return []
        written: List[str] = []
        with HostLock(paths, self.lc.lock_timeout):
            inv = self.lc.host.inventory()
            desired = spec.bind(desired, inv)
            wanted = {d.uuid: d.wanted_params for d in desired.instances if d.wanted_params is not None}
            for u in dx.devices:
                inst = inv.instance(u)
                if u not in wanted or inst is None:
                    continue
                now = vgpu_params.read(paths, inst)
                if now is None or now == wanted[u]:
                    continue
                self.lc.write_params(inst, wanted[u])
                written.append(u)
                self.log(
                    call, f"vGPU parameters of {u}: {vgpu_params.text_of(now)} -> {vgpu_params.text_of(wanted[u])}"
                )
        return written

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

    def migrate(self, call: HookCall, dx: DomainXml, text: str) -> Optional[str]:
        """The destination of an incoming live migration, before its QEMU starts: create this domain's hook-managed
        vGPUs here (placed by this host's policy, the uuid kept when it is free here, else a fresh one), record them
        as the hook's (``release end`` frees them when the domain stops or the migration fails), and return the
        domain XML with the hostdevs and metadata rewritten when a uuid or parent changed (None: keep libvirt's)."""
        from dataclasses import replace

        from .errors import MigrationIncompatible, MigrationNoCapacity
        from .migration import Fit, check as preflight, verdict
        from .policy import load_policy, policy_path

        wanted = on_demand(dx)
        if not wanted:
            return None
        policy = load_policy(policy_path(self.paths.config_dir), missing_ok=True)
        prior = self.records.prepare(dx.uuid)  # every check before the first write: uuid, record dir, old record
        inv, _ = self.lc.read()
        fits = preflight(replace(dx, devices=tuple(m.uuid for m in wanted)), inv, policy)
        answer = verdict(fits)
        if answer is not Fit.FITS:
            reasons = [f"{f.uuid}: {f.reason}" for f in fits if f.fit is answer]
            raise (MigrationIncompatible if answer is Fit.INCOMPATIBLE else MigrationNoCapacity)(dx.name, reasons)
        made: List[str] = []
        try:
            for f in fits:
                assert f.parent is not None and f.target_uuid is not None and f.type_id is not None
                self.lc.create(parent=f.parent, type_id=f.type_id, uuid=f.target_uuid, origin=ORIGIN_HOOK)
                made.append(f.target_uuid)
                self.log(
                    call,
                    f"created {f.target_uuid} ({f.type_id} on {f.parent}) for the incoming domain"
                    + ("" if f.keeps_uuid else f" (its uuid {f.uuid} is taken here)"),
                )
            self.records.save(dx.uuid, dx.name, prior + made)  # recorded before libvirt goes on
        except BaseException:
            self._roll_back(call, made)
            raise
        was_on = {m.uuid: m.parent for m in wanted}
        moves = [(f.uuid, f.target_uuid, f.parent) for f in fits if not f.keeps_uuid or was_on[f.uuid] != f.parent]
        return rewrite_vgpus(text, moves) if moves else None  # type: ignore[arg-type]

    def run(self, argv: Sequence[str], read_stdin: Callable[[], str], *, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Do one hook call; the exit status libvirt should see.  Never raises."""
        call: Optional[HookCall] = None
        try:
            call = HookCall.parse(argv)
            if call.obj != "qemu" or not (call.is_start or call.is_stop or call.is_migrate):
                return 0
            with _deadline(timeout):
                text = read_stdin()
                try:
                    dx = parse_domain(text)
                except ValueError as e:
                    raise HookError(f"the domain XML on stdin is unusable: {e}") from None
                if dx.name != call.domain:
                    raise HookError(f"the domain XML on stdin names {dx.name!r}, not {call.domain!r}")
                if not dx.uuid:
                    raise HookError("the domain XML on stdin has no <uuid>")
                if call.is_start:
                    self.start(call, dx)
                elif call.is_migrate:
                    new_xml = self.migrate(call, dx, text)
                    if new_xml is not None:
                        self.out.write(new_xml)
                        self.out.flush()
                else:
                    self.stop(call, dx)
            return 0
        except VgpuctlError as e:
            aborts = call is not None and call.aborts
            self.log(call, f"{'error' if aborts else 'warning'}: {e}")
            return e.exit_code if aborts else 0
        except Exception as e:  # a bug: still one line, and libvirt is never left hanging
            aborts = call is not None and call.aborts
            self.log(call, f"internal error: {type(e).__name__}: {e}")
            return 1 if aborts else 0


def rewrite_vgpus(text: str, moves: Sequence["tuple[str, str, str]"]) -> str:
    """``text`` (a domain XML) with each (old uuid, new uuid, new parent) applied: the mdev hostdev's address and
    vgpuctl's metadata entry name the new uuid, the entry the new parent.  Textual, so that libvirt gets back its
    own document otherwise byte for byte (namespaces, prefixes, order)."""
    for old, new, parent in moves:
        entry = re.compile(
            r"<(?:[A-Za-z_][\w.-]*:)?vgpu\b[^>]*?\buuid=(['\"])" + re.escape(old) + r"\1[^>]*>", re.IGNORECASE
        )

        def reparent(m: "re.Match[str]", parent: str = parent) -> str:
            return re.sub(
                r"(\bparent=)(['\"])[^'\"]*\2",
                lambda p: f"{p.group(1)}{p.group(2)}{parent}{p.group(2)}",
                m.group(0),
                count=1,
            )

        text = entry.sub(reparent, text)
        text = re.sub(re.escape(old), new, text, flags=re.IGNORECASE)
    return text


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
