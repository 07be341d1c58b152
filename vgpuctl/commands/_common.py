"""What every sub-command shares: settings, the object graph, the --json switch and rendering."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import click

from ..host import Host
from ..lifecycle import Lifecycle, ProcessHolders, UsageCheck
from ..paths import HostPaths


@dataclass(frozen=True)
class Settings:
    root: str = "/"
    connect: str = "qemu:///system"
    lock_timeout: float = 30.0
    nvml: str = "auto"  #: "auto": ask NVML where the host has NVIDIA GPUs; "off": never
    libvirt_timeout: float = 5.0  #: the bound on one read of libvirt (``virt.DEFAULT_TIMEOUT``)

    @property
    def paths(self) -> HostPaths:
        return HostPaths.from_root(self.root)


def settings() -> Settings:
    return click.get_current_context().find_object(Settings) or Settings()


def build_host(s: Settings) -> Host:
    return Host(s.paths)


def build_lifecycle(s: Settings, *, stale_ok: bool = False) -> Lifecycle:
    """The one place that wires a Lifecycle: host, lock timeout, and the checks that say who uses a device.

    Processes holding a device always count; so do libvirt domains referencing it, unless ``connect`` is ``none``.
    ``stale_ok`` (``destroy --force``) stops counting a domain whose *definition* alone references the device; a
    running domain that has it still counts.  libvirt itself is imported only when a check first runs.
    """
    host = build_host(s)
    checks: List[UsageCheck] = [ProcessHolders(host)]
    if s.connect != "none":
        from ..virt.conn import DomainUsers

        checks.append(DomainUsers(s.connect, include_stale=not stale_ok, timeout=s.libvirt_timeout))
    return Lifecycle(host, lock_timeout=s.lock_timeout, usage_checks=checks)


class _Unknown:
    """What libvirt would have said, when it could not be asked: ``?`` in tables, ``null`` in JSON."""

    def __str__(self) -> str:
        return "?"

    __repr__ = __str__


UNKNOWN: Any = _Unknown()


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)``: ``UNKNOWN`` is ``null``."""
    if isinstance(o, _Unknown):
        return None
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, default=json_default)


_LIBVIRT_DOWN = "vgpuctl.libvirt.unreachable"


def libvirt_unreachable(e: Exception) -> str:
    """A read-only command goes on without libvirt: ONE line on stderr per command saying why and what fixes it
    (the error's message carries the fix); returns that reason, for the records' ``libvirt_error``."""
    reason = str(e)
    ctx = click.get_current_context(silent=True)
    meta: Dict[str, Any] = ctx.meta if ctx is not None else {}
    if _LIBVIRT_DOWN not in meta:
        meta[_LIBVIRT_DOWN] = reason
        info(f"libvirt not used: {reason}; showing sysfs data, what only libvirt knows as unknown (?)")
    return meta[_LIBVIRT_DOWN]


def libvirt_down() -> Optional[str]:
    """The reason this command found libvirt unreachable, or None (reachable, not asked, or ``--connect none``)."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get(_LIBVIRT_DOWN) if ctx is not None else None


def json_option(f: Callable) -> Callable:
    return click.option(
        "--json", "as_json", is_flag=True, envvar="VGPUCTL_JSON", help="Print JSON records for machines. [env VGPUCTL_JSON]"
    )(f)


Column = Tuple[str, str]  # (header, record key)


def render(records: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, as_json: bool, empty: str = "") -> None:
    """JSON: a list of flat records, each with its ``schema`` tag.  Text: a fixed-column table, no colour."""
    if as_json:
        click.echo(dumps(list(records)))
        return
    if not records:
        if empty:
            click.echo(empty, err=True)
        return
    click.echo(table(records, columns))


def table(records: Iterable[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    rows: List[List[str]] = [[h for h, _ in columns]]
    for r in records:
        rows.append([cell(r.get(k)) for _, k in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def cell(v: Any) -> str:
    if isinstance(v, _Unknown):
        return "?"
    if v is None or v == "" or v == []:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def record(schema: str, **fields: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"schema": schema}
    out.update(fields)
    return out


def info(msg: str) -> None:
    """A human note on stderr (never mixed into stdout tables or JSON)."""
    print(f"vgpuctl: {msg}", file=sys.stderr)
