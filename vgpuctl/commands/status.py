"""``vgpuctl status``: a picture of every physical GPU (``vgpuctl.status``), and ``vgpuctl completion``."""

from __future__ import annotations

import os
import sys
from typing import Dict, Optional

import click

from ._common import UNKNOWN, Settings, build_host, json_option, libvirt_down, render, settings


def domains_of(s: Settings, uuids) -> Dict[str, str]:  # type: ignore[no-untyped-def]
    """Instance uuid -> the domain using it (a running one first), from one libvirt read; {} without libvirt."""
    from ._common import domain_snapshot  # the command's one read of libvirt, the placement usage's too

    snap = domain_snapshot(s)
    if snap is None:
        return _Unknown() if libvirt_down() else {}
    out: Dict[str, str] = {}
    for u in uuids:
        uses = sorted(snap.uses(u), key=lambda x: (x.stale, x.domain))
        if uses:
            out[u] = uses[0].domain
    return out


def defined_by(s: Settings, inv) -> Dict[str, tuple]:  # type: ignore[no-untyped-def]
    """Instance uuid -> who defines it (vgpuctl's desired state, mdevctl, the hook): ``coexist.definers``."""
    from ..coexist import definers
    from ..host import mdevctl
    from ..lifecycle import Lifecycle
    from .inventory import _desired_names, _hook

    lc = Lifecycle(build_host(s))
    defs = mdevctl.read_checked(lc.host.paths, inv).by_uuid()
    names = _desired_names(lc, inv)
    hook = _hook(lc)
    return {i.uuid: definers(i.uuid, defs=defs, desired=names, hook=hook) for i in inv.instances}


class _Unknown(dict):
    """libvirt was unreachable: every instance's domain is unknown (``?`` in the picture, ``null`` in JSON)."""

    def get(self, key, default=None):  # type: ignore[no-untyped-def,override]
        return UNKNOWN

    def __bool__(self) -> bool:  # not "no domains": unknown ones
        return True


def licenses_of(s: Settings, inv) -> Dict[str, object]:  # type: ignore[no-untyped-def]
    """Instance uuid -> its NVML license (``vgpuctl.nvml.License``) where the host has NVIDIA vGPUs and NVML
    answers; {} otherwise (one line on stderr says why NVML was not used)."""
    from ..model import Vendor

    if s.nvml == "off" or not inv.instances or not any(p.vendor is Vendor.NVIDIA and p.pci for p in inv.parents):
        return {}
    from ._common import enrich_inventory

    _inv, details, _gpus = enrich_inventory(s, inv, vgpus=True)
    return {u: v.license for u, v in details.items()}


def use_colour(stream=None) -> bool:  # type: ignore[no-untyped-def]
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"


@click.command()
@click.option(
    "--policy",
    "policy_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Placement policy (default: ROOT/etc/vgpuctl/policy.yaml): allowed types and rules per GPU.",
)
@json_option
def status(policy_file: Optional[str], as_json: bool) -> None:
    """A picture of every physical GPU: its slots (used by which type and domain, free, unusable because of the
    type-mixing rule), the capacity left per allowed type, and the host's fragmentation.

    Slots are framebuffer units on time-sliced NVIDIA GPUs, VFs on SR-IOV ones, instances elsewhere.  Fragmentation
    is the free framebuffer that the largest profile the policy allows on each GPU cannot use.  Colour only on a
    terminal, never with NO_COLOR.
    """
    from ..status import host_status, records, render_text
    from .place import build_usage, load_settings_policy

    s = settings()
    inv = build_host(s).inventory()
    policy = load_settings_policy(s, policy_file)
    st = host_status(
        inv,
        policy,
        domains=domains_of(s, [i.uuid for i in inv.instances]),
        usage=build_usage(s, inv),
        defined_by=defined_by(s, inv),
        licenses=licenses_of(s, inv),
    )
    if as_json:
        down = libvirt_down()
        render([dict(r, libvirt_error=down) if down else r for r in records(st)], [], as_json=True)
        return
    if not st.gpus:
        click.echo("no vGPU-capable GPUs found", err=True)
        return
    colour = use_colour()
    click.echo(render_text(st, colour=colour), color=colour)


SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell-completion script for SHELL (bash, zsh or fish).

    Parents, types, profiles, instances and domains complete from this host.  Install, e.g.:
    bash: vgpuctl completion bash > /etc/bash_completion.d/vgpuctl;
    zsh: vgpuctl completion zsh > "${fpath[1]}/_vgpuctl";
    fish: vgpuctl completion fish > ~/.config/fish/completions/vgpuctl.fish.
    (Equivalent to _VGPUCTL_COMPLETE=bash_source vgpuctl.)
    """
    from click.shell_completion import get_completion_class

    from ..cli import cli

    cls = get_completion_class(shell)
    assert cls is not None  # every one of SHELLS is built into click
    click.echo(cls(cli, {}, "vgpuctl", "_VGPUCTL_COMPLETE").source())
