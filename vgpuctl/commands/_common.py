"""What every sub-command shares: settings, the object graph, the --json switch and rendering."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import click

from ..app import App, Settings
from ..errors import LibvirtConnectError, LibvirtUnavailable

if TYPE_CHECKING:
    from ..host import Host
    from ..lifecycle import Lifecycle
    from ..model import Inventory
    from ..virt.domxml import Snapshot


def settings() -> Settings:
    return click.get_current_context().find_object(Settings) or Settings()


_APP = "vgpuctl.app"


def app(s: Optional[Settings] = None) -> App:
    """This command's composition root (``vgpuctl.app.App``): one per command, so one Host and one libvirt
    connection; ``s`` other than the command's settings gets an App of its own."""
    s = s if s is not None else settings()
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return App(s)
    meta = ctx.find_root().meta
    got = meta.get(_APP)
    if got is None:
        got = meta[_APP] = App(s)
    elif got.settings != s:
        return App(s)
    return got


def build_host(s: Settings) -> Host:
    return app(s).host


def build_lifecycle(s: Settings, *, stale_ok: bool = False) -> Lifecycle:
    """The command's Lifecycle (``App.lifecycle``): host, lock timeout, and the checks that say who uses a
    device."""
    return app(s).lifecycle(stale_ok=stale_ok)


def domain_snapshot(s: Settings, *, strict: bool = False) -> Optional[Snapshot]:
    """Every domain at ``--connect``, as this command observed it (``virt.conn.Libvirt.observed``: one read per
    command, whoever asks first); None with ``none``.

    When libvirt is unreachable (down, silent past ``--libvirt-timeout``, libvirt-python missing) this is None as
    well, after ONE line on stderr per command (``libvirt_down()`` then says why), so that read-only views go on
    with what sysfs knows; ``strict`` raises that error instead (exit 12), for a change that needs the domains."""
    lv = app(s).libvirt
    if lv is None:
        return None
    try:
        return lv.observed()
    except (LibvirtConnectError, LibvirtUnavailable) as e:
        if strict:
            raise
        libvirt_unreachable(e)
        return None


def enrich_inventory(s: Settings, inv: Inventory, *, vgpus: bool) -> Tuple[Inventory, Dict[str, Any], Dict[str, Any]]:
    """The inventory with NVML's details (``observe.nvml_details``); on any failure the sysfs inventory and ONE line
    on stderr saying why."""
    from ..observe import nvml_details

    enriched, details, gpus, notes = nvml_details(inv, s.paths, vgpus=vgpus)
    for note in notes:
        info(note)
    return enriched, details, gpus


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
        "--json",
        "as_json",
        is_flag=True,
        envvar="VGPUCTL_JSON",
        help="Print JSON records for machines. [env VGPUCTL_JSON]",
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
