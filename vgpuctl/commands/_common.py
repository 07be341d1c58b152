"""What every sub-command shares: settings, the object graph, the --json switch and rendering."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Sequence, Tuple

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
        from ..virt import DomainUsers

        checks.append(DomainUsers(s.connect, include_stale=not stale_ok))
    return Lifecycle(host, lock_timeout=s.lock_timeout, usage_checks=checks)


def json_option(f: Callable) -> Callable:
    return click.option(
        "--json", "as_json", is_flag=True, envvar="VGPUCTL_JSON", help="Print JSON records for machines. [env VGPUCTL_JSON]"
    )(f)


Column = Tuple[str, str]  # (header, record key)


def render(records: Sequence[Mapping[str, Any]], columns: Sequence[Column], *, as_json: bool, empty: str = "") -> None:
    """JSON: a list of flat records, each with its ``schema`` tag.  Text: a fixed-column table, no colour."""
    if as_json:
        click.echo(json.dumps(list(records), indent=2, sort_keys=False))
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
