"""``vgpuctl doctor``: is this host ready to run vGPUs, and what exactly to fix.

A check is one function registered with ``@check(name, title, fix)``: it takes the ``Context`` (the host's root,
the libvirt URI, bounded helpers and facts read once and shared between checks) and returns one ``Result`` or a list
of them (one per GPU, per file).  A result says ``ok``, ``warn``, ``fail`` or ``n/a``, what was seen, and the one
command or setting that fixes it.  The renderer (``vgpuctl.commands.doctor``) knows nothing about any check.

Adding a check (mdevctl double-managed definitions, NVIDIA license state, ...): write a function in one of the
modules of ``CHECK_MODULES`` (or in a new module added there, in display order)::

    @check("license", "NVIDIA vGPU licence server reachable", "set ServerAddress in /etc/nvidia/gridd.conf")
    def license_state(ctx: Context) -> Result:
        ...
        return Result.ok("license", "licensed until 2027-01-01")

Every check is read-only: it never writes a file, a sysfs attribute or a libvirt object, and every wait on a peer
(libvirtd, NVML, systemctl) is bounded by ``Context.timeout``.  A check that raises is reported as its own ``fail``
line ("check crashed"), never as a traceback of the whole command.
"""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, TypeVar, Union

from ..paths import HostPaths

#: Modules that define checks, in the order their checks are shown.
CHECK_MODULES = (
    "vgpuctl.doctor.kernel",
    "vgpuctl.doctor.nvidia",
    "vgpuctl.doctor.libvirt",
    "vgpuctl.doctor.own",
    "vgpuctl.doctor.mdevctl",
)

SCHEMA = "vgpuctl.doctor/v1"
DEFAULT_TIMEOUT = 5.0


class Status(str, Enum):
    OK = "ok"
    WARN = "warn"  #: works, but something is missing or will bite later
    FAIL = "fail"  #: the host cannot run vGPUs (or vgpuctl cannot manage them) until this is fixed
    NA = "n/a"  #: does not apply to this host (no NVIDIA GPU, libvirt turned off, no systemd)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Result:
    check: str
    status: Status
    seen: str  #: what was seen, one line
    fix: str = ""  #: the one command or setting that fixes it ("" when nothing is to fix)
    subject: str = ""  #: what the line is about when a check has several (a GPU, a file, a unit)

    @classmethod
    def ok(cls, check: str, seen: str, subject: str = "") -> "Result":
        return cls(check, Status.OK, seen, "", subject)

    @classmethod
    def na(cls, check: str, seen: str, subject: str = "") -> "Result":
        return cls(check, Status.NA, seen, "", subject)

    @classmethod
    def warn(cls, check: str, seen: str, fix: str, subject: str = "") -> "Result":
        return cls(check, Status.WARN, seen, fix, subject)

    @classmethod
    def fail(cls, check: str, seen: str, fix: str, subject: str = "") -> "Result":
        return cls(check, Status.FAIL, seen, fix, subject)

    def record(self) -> Dict[str, Any]:
        return {
            "schema": SCHEMA,
            "check": self.check,
            "status": str(self.status),
            "subject": self.subject or None,
            "seen": self.seen,
            "fix": self.fix or None,
        }


CheckFn = Callable[["Context"], Union[Result, Iterable[Result]]]


@dataclass(frozen=True)
class Check:
    name: str
    title: str  #: what it checks, one line (``--help`` and docs)
    fix: str  #: the usual fix, one line (``--help`` and docs)
    fn: CheckFn


REGISTRY: List[Check] = []


def check(name: str, title: str, fix: str) -> Callable[[CheckFn], CheckFn]:
    """Register ``fn`` as the check ``name`` (shown in registration order)."""

    def deco(fn: CheckFn) -> CheckFn:
        if any(c.name == name for c in REGISTRY):
            raise ValueError(f"doctor check {name!r} is registered twice")
        REGISTRY.append(Check(name, title, fix, fn))
        return fn

    return deco


def checks() -> List[Check]:
    """Every registered check, in display order."""
    for mod in CHECK_MODULES:
        importlib.import_module(mod)
    return list(REGISTRY)


# --- what checks share -----------------------------------------------------------------------------------------------
_T = TypeVar("_T")


class Timeout(Exception):
    """A bounded call to a peer did not return in time."""


def bounded(fn: Callable[[], _T], timeout: float, what: str) -> _T:
    """``fn()`` in a daemon worker thread: its result or exception, or ``Timeout`` after ``timeout`` seconds (the
    worker is left behind; a daemon thread never keeps the process alive).  For libraries whose calls may wait for
    ever on a peer (libvirt's client, NVML's init) and release the GIL while they wait."""
    box: Dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name=f"vgpuctl-doctor {what}", daemon=True).start()
    if not done.wait(timeout):
        raise Timeout(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass(frozen=True)
class Command:
    rc: Optional[int]  #: None: not found, or timed out
    out: str
    err: str
    timed_out: bool = False


@dataclass
class Context:
    """What checks read the host through.  Facts several checks need are read once (``fact``)."""

    paths: HostPaths
    connect: str = "qemu:///system"
    timeout: float = DEFAULT_TIMEOUT  #: bound on each wait on a peer (libvirtd, NVML, systemctl)
    nvml: str = "auto"
    _facts: Dict[str, Any] = field(default_factory=dict)

    @property
    def root_is_slash(self) -> bool:
        return os.path.realpath(self.paths.root) == "/"

    def fact(self, name: str, make: Callable[[], _T]) -> _T:
        """``make()``'s value, computed the first time any check asks for ``name``.  A raising ``make`` raises for
        every check that asks (each reports it)."""
        if name not in self._facts:
            try:
                self._facts[name] = ("value", make())
            except Exception as e:  # remembered, re-raised for each asker
                self._facts[name] = ("error", e)
        kind, value = self._facts[name]
        if kind == "error":
            raise value
        return value

    def inventory(self) -> Any:
        """Parents and instances (no type tables: reading every type of 64 VFs costs seconds)."""
        from ..host import Host, TypeScope

        return self.fact("inventory", lambda: Host(self.paths).inventory(types=TypeScope.NONE))

    def run(self, argv: Sequence[str]) -> Command:
        """A bounded subprocess (``timeout``); never raises for a missing program or a timeout."""
        try:
            p = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError:
            return Command(None, "", f"{argv[0]}: not found")
        except subprocess.TimeoutExpired:
            return Command(None, "", f"{' '.join(argv)}: no answer within {self.timeout:g} s", timed_out=True)
        return Command(p.returncode, p.stdout.strip(), " ".join(p.stderr.split()))

    def sys(self, *parts: str) -> Path:
        return self.paths.sys.joinpath(*parts)

    def rel(self, path: "os.PathLike[str] | str") -> str:
        """A host path as the operator should read it: absolute on ``/``, else still absolute under the root."""
        return os.fspath(path)


def run_checks(ctx: Context, names: Optional[Sequence[str]] = None) -> List[Result]:
    """Every check (or those named, in registry order), each turned into its result lines."""
    out: List[Result] = []
    for c in checks():
        if names and c.name not in names:
            continue
        try:
            got = c.fn(ctx)
            results = [got] if isinstance(got, Result) else list(got)
        except Exception as e:  # a bug in one check must not hide the others
            results = [
                Result.fail(
                    c.name,
                    f"check crashed: {type(e).__name__}: {' '.join(str(e).split())}",
                    "report this as a vgpuctl bug, with the command line",
                )
            ]
        out += results
    return out


# --- small sysfs helpers the checks share ------------------------------------------------------------------------------
def read(path: "os.PathLike[str] | str") -> Optional[str]:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: "os.PathLike[str] | str") -> Optional[int]:
    text = read(path)
    try:
        return int(text, 0) if text is not None else None
    except ValueError:
        return None


def listdir(path: "os.PathLike[str] | str") -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def link_name(path: "os.PathLike[str] | str") -> Optional[str]:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def file_problem(path: Path, *, want_dir: bool = False) -> Optional[str]:
    """Why vgpuctl must not trust ``path`` (a symlink, another kind of file, world-writable), or None; a missing
    path is no problem (vgpuctl makes it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot be read ({os.strerror(e.errno or 0)})"
    if stat.S_ISLNK(st.st_mode):
        return f"is a symlink (to {os.readlink(path)})"
    if want_dir and not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if not want_dir and not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_mode & stat.S_IWOTH:
        return f"is world-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
