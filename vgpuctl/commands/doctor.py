"""``vgpuctl doctor``: run the checks of ``vgpuctl.doctor`` and render their lines; nothing on the host changes."""

from __future__ import annotations

from typing import Optional, Sequence

import click

from ..doctor import REGISTRY, Context, Status, checks, run_checks
from ..errors import HostNotReady, InvalidInput
from ..options import FiniteFloat
from ._common import json_option, render, settings

COLUMNS = [("STATUS", "status"), ("CHECK", "check"), ("SUBJECT", "subject"), ("SEEN", "seen"), ("FIX", "fix")]

HELP = """Is this host ready to run vGPUs, and what exactly to fix.  One line per check: ok, warn, fail or n/a
(does not apply here), what was seen, and the one command or setting that fixes it.  Read-only: nothing on the host
changes.  Every wait on a peer (libvirtd, NVML, systemctl) is bounded by --timeout.  Exit 0 unless a check fails
(then 16); warnings do not change the exit code.

\b
Checks:
"""


def _help() -> str:
    lines = [f"  {c.name}: {c.title}. Fix: {c.fix}." for c in checks()]
    return HELP + "\n".join(lines)


@click.command(help=_help())
@click.option(
    "--check",
    "names",
    multiple=True,
    metavar="NAME",
    type=click.Choice([c.name for c in checks()]),
    help="Run only this check (repeat for several).",
)
@click.option(
    "--timeout",
    type=FiniteFloat(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Bound on each wait on a peer (libvirtd, NVML, systemctl); default: --libvirt-timeout.",
)
@json_option
def doctor(names: Sequence[str], timeout: Optional[float], as_json: bool) -> None:
    s = settings()
    if not s.paths.root.is_dir():
        raise InvalidInput(f"--root {s.paths.root} is not a directory: give the host's root (/, or a simulated host's)")
    ctx = Context(paths=s.paths, connect=s.connect, timeout=timeout or s.libvirt_timeout, nvml=s.nvml)
    results = run_checks(ctx, list(names) or None)
    render([r.record() for r in results], COLUMNS, as_json=as_json)
    failed = [r for r in results if r.status is Status.FAIL]
    if failed:
        raise HostNotReady([r.check + (f" ({r.subject})" if r.subject else "") for r in failed])


__all__ = ["doctor", "REGISTRY"]
