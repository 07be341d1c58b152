"""``vgpuctl attach``, ``detach`` and ``hook``: give libvirt domains their vGPUs."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Optional, Tuple

import click

from ..errors import InvalidInput
from ..options import FiniteFloat
from ._common import build_lifecycle, app, info, json_option, record, settings
from ._complete import complete_domains, complete_instances, complete_parents, complete_types
from .profiles import profile_option

ATTACHED_SCHEMA = "vgpuctl.attached/v1"
DETACHED_SCHEMA = "vgpuctl.detached/v1"

scope_options = [
    click.option("--config", "config", is_flag=True, help="Change the persistent definition (survives restarts)."),
    click.option("--live", "live", is_flag=True, help="Change the running domain (hot-plug)."),
]


def _scope(f):  # type: ignore[no-untyped-def]
    for opt in reversed(scope_options):
        f = opt(f)
    return f


def _attachments():  # type: ignore[no-untyped-def]
    s = settings()
    if s.connect == "none":
        raise InvalidInput("attach and detach need libvirt: drop --connect none (or VGPUCTL_LIBVIRT_URI=none)")
    return app(s).attachments()


@click.command()
@click.argument("domain", shell_complete=complete_domains)
@click.option(
    "--uuid",
    "-u",
    metavar="UUID",
    shell_complete=complete_instances,
    help="The vGPU to attach; with --parent/--type, the new one's uuid.",
)
@click.option(
    "--parent",
    "-p",
    metavar="PARENT",
    shell_complete=complete_parents,
    help="Create a new vGPU on this parent (with --type) and attach it.",
)
@click.option(
    "--type", "-t", "type_id", metavar="TYPE", shell_complete=complete_types, help="Type of the new vGPU (id or name)."
)
@profile_option
@click.option(
    "--tenant",
    metavar="TENANT",
    help="Whose vGPU it is (quotas, profile limits); recorded in the domain's vgpuctl metadata.",
)
@_scope
@click.option("--display/--no-display", default=None, help="Use the vGPU as the domain's display (default: libvirt's).")
@click.option("--ramfb", is_flag=True, default=None, help="Boot display through ramfb (implies --display).")
@json_option
def attach(
    domain: str,
    uuid: Optional[str],
    parent: Optional[str],
    type_id: Optional[str],
    profile_name: Optional[str],
    tenant: Optional[str],
    config: bool,
    live: bool,
    display: Optional[bool],
    ramfb: Optional[bool],
    as_json: bool,
) -> None:
    """Attach a vGPU to DOMAIN, creating it first with --type (on --parent, or where the placement policy puts it
    for DOMAIN: its tenant, groups and NUMA nodes).

    Without --config or --live, the running domain gets it if DOMAIN runs, else the persistent definition (as
    'virsh attach-device --current').  The device XML comes from the template mdev-hostdev.xml.j2 (override it in
    etc/vgpuctl/templates); ownership is recorded in the domain's metadata.  A vGPU another domain references is
    refused; if libvirt rejects the attach, a vGPU created for it is destroyed again.

    With --profile, a new vGPU of that service profile is created (on --parent, or where the placement policy puts
    it) after its tenant limit is checked; the profile's display and ramfb apply unless given here.
    """
    a = _attachments()
    try:
        if profile_name is not None:
            r = _attach_profiled(
                a,
                domain,
                profile_name,
                uuid=uuid,
                parent=parent,
                type_id=type_id,
                tenant=tenant,
                live=live,
                config=config,
                display=display,
                ramfb=ramfb,
            )
        else:
            if type_id is not None and parent is None:
                parent = _place(domain, type_id, tenant)
            r = a.attach(
                domain,
                uuid=uuid,
                parent=parent,
                type_id=type_id,
                live=live,
                config=config,
                display=display,
                ramfb=ramfb,
                tenant=tenant,
            )
    finally:
        a.virt.close()
    if as_json:
        click.echo(
            json.dumps(
                record(
                    ATTACHED_SCHEMA,
                    domain=r.domain,
                    domain_uuid=r.domain_uuid,
                    uuid=r.instance.uuid,
                    parent=r.instance.parent,
                    type_id=r.instance.type_id,
                    live=r.scope.live,
                    config=r.scope.config,
                    created=r.created,
                    changed=r.changed,
                ),
                indent=2,
            )
        )
        return
    click.echo(r.instance.uuid)
    made = "created and " if r.created else ""
    what = "attached" if r.changed else "already attached"
    info(f"{made}{what} {r.instance.uuid} ({r.instance.type_id} on {r.instance.parent}) to {r.domain!r} ({r.scope})")


def _place(domain: str, type_id: str, tenant: Optional[str]) -> str:
    """``attach --type`` without ``--parent``: where the placement policy puts it for DOMAIN (its tenant, groups and
    NUMA nodes from its XML), as ``vgpuctl place --domain DOMAIN`` says."""
    from ..errors import NoPlacement
    from ..placement import Request
    from ._common import build_host
    from .place import placement_for

    s = settings()
    inv = build_host(s).inventory()
    d = placement_for(s, inv, Request(type=type_id, domain=domain, tenant=tenant))
    if d.parent is None:
        raise NoPlacement(type_id, d.refusals())
    return d.parent


def _attach_profiled(
    a,
    domain: str,
    name: str,
    *,
    uuid: Optional[str],
    parent: Optional[str],  # type: ignore[no-untyped-def]
    type_id: Optional[str],
    tenant: Optional[str],
    live: bool,
    config: bool,
    display: Optional[bool],
    ramfb: Optional[bool],
):
    from .profiles import ProfiledCreate, load_settings_profiles, resolve

    if type_id is not None:
        raise InvalidInput("give --type or --profile, not both")
    s = settings()
    ps = load_settings_profiles(s)
    profile = ps.get(name)

    def make():  # type: ignore[no-untyped-def]
        pname, tid = resolve(s, profile, parent=parent, tenant=tenant, domain=domain)
        return a.attach(
            domain,
            uuid=uuid,
            parent=pname,
            type_id=tid,
            live=live,
            config=config,
            display=profile.display if display is None else display,
            ramfb=profile.ramfb if ramfb is None else ramfb,
            tenant=tenant,
        )

    return ProfiledCreate(ps, profile, tenant).run(s, make)


@click.command()
@click.argument("domain", shell_complete=complete_domains)
@click.option("--uuid", "-u", metavar="UUID", help="Only this vGPU (default: every vGPU vgpuctl manages in DOMAIN).")
@click.option("--destroy", is_flag=True, help="Destroy the vGPUs after detaching them (only ones vgpuctl created).")
@_scope
@json_option
def detach(domain: str, uuid: Optional[str], destroy: bool, config: bool, live: bool, as_json: bool) -> None:
    """Detach vGPUs from DOMAIN (same --config/--live default as attach), and drop them from its metadata."""
    a = _attachments()
    try:
        results = a.detach(domain, uuid=uuid, live=live, config=config, destroy=destroy)
    finally:
        a.virt.close()
    if as_json:
        click.echo(
            json.dumps(
                [
                    record(
                        DETACHED_SCHEMA,
                        domain=r.domain,
                        domain_uuid=r.domain_uuid,
                        uuid=r.uuid,
                        live=r.scope.live,
                        config=r.scope.config,
                        destroyed=r.destroyed,
                    )
                    for r in results
                ],
                indent=2,
            )
        )
        return
    for r in results:
        click.echo(r.uuid)
        info(f"detached {r.uuid} from {r.domain!r} ({r.scope})" + ("; destroyed it" if r.destroyed else ""))


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--timeout",
    type=FiniteFloat(min=0.1),
    default=20.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up after this long (libvirt waits for the hook while it holds the domain).",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def hook(timeout: float, args: Tuple[str, ...]) -> None:
    """libvirt qemu hook: create a domain's vGPUs at prepare/begin (and at migrate/begin on a migration's
    destination, printing the domain XML with the vGPUs it made there), destroy them at release/end.

    Install as /etc/libvirt/hooks/qemu:  exec vgpuctl --connect none hook qemu "$@"
    ARGS are what libvirt passes (qemu DOMAIN OPERATION SUB-OP EXTRA); the domain XML is read from stdin.
    Exits non-zero only when a start or an incoming migration should be aborted; never contacts libvirt.
    """
    from ..hook import Hook

    s = settings()
    # the hook runs under libvirt's domain lock: no libvirt usage check, and no wait longer than the bound
    s = replace(s, connect="none", lock_timeout=min(s.lock_timeout, timeout * 0.8))

    def read_stdin() -> str:
        if sys.stdin is None or sys.stdin.isatty():
            return ""
        return sys.stdin.read()

    code = Hook(build_lifecycle(s), s.paths).run(args, read_stdin, timeout=timeout)
    sys.exit(code)


DOMAIN_SCHEMA = "vgpuctl.domain/v1"
DOMAIN_COLUMNS = [("NAME", "name"), ("STATE", "state"), ("PERSISTENT", "persistent"), ("VGPUS", "vgpus")]


@click.command()
@json_option
def domains(as_json: bool) -> None:
    """libvirt's domains, read-only: name, uuid, running or shut off, and the vGPUs each one's XML references
    (what attach and detach take as DOMAIN)."""
    from ._common import domain_snapshot, render

    s = settings()
    if s.connect == "none":
        raise InvalidInput("domains needs libvirt: drop --connect none (or VGPUCTL_LIBVIRT_URI=none)")
    snap = domain_snapshot(s, strict=True)  # the command's one read, bounded by --libvirt-timeout
    assert snap is not None
    recs = []
    for d in snap.domains:
        xmls = [x for x in (d.live, d.config) if x is not None]
        recs.append(
            record(
                DOMAIN_SCHEMA,
                name=d.name,
                uuid=d.uuid,
                running=d.running,
                state="running" if d.running else "shut off",
                persistent=d.persistent,
                vgpus=sorted({u for x in xmls for u in x.devices}),
                managed=sorted({m.uuid for x in xmls for m in x.managed}),
                tenant=next((x.tenant for x in xmls if x.tenant), None),
            )
        )
    render(recs, DOMAIN_COLUMNS, as_json=as_json, empty=f"no domains at {s.connect}")
