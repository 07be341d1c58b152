"""``vgpuctl create`` and ``vgpuctl destroy``."""
from __future__ import annotations

from typing import Optional

import click

from ._common import build_lifecycle, info, json_option, record, settings
from .records import instance_record


@click.command()
@click.option(
    "--parent", "-p", metavar="PARENT", help="Parent device: PCI address or name (mtty); default: placed by the policy."
)
@click.option("--type", "-t", "type_id", required=True, metavar="TYPE", help="Type id (nvidia-222) or name (T4-2Q).")
@click.option("--uuid", "-u", metavar="UUID", help="UUID for the new device (default: a fresh random one).")
@click.option("--tenant", metavar="TENANT", help="Without --parent: tenant for quotas and reserved GPUs.")
@click.option("--domain", "-d", metavar="DOMAIN", help="Without --parent: the domain (anti-affinity groups).")
@click.option("--policy", "policy_file", metavar="FILE", help="Without --parent: placement policy file.")
@json_option
def create(
    parent: Optional[str],
    type_id: str,
    uuid: Optional[str],
    tenant: Optional[str],
    domain: Optional[str],
    policy_file: Optional[str],
    as_json: bool,
) -> None:
    """Create one vGPU instance and record it as owned by vgpuctl; without --parent, the placement policy picks it."""
    s = settings()
    placer = None
    if parent is None:  # placement (vgpuctl.commands.placement) chooses under the lifecycle's lock
        from .placement import placer_for

        placer = placer_for(s, type_id, tenant=tenant, domain=domain, policy_file=policy_file)
    inst = build_lifecycle(s).create(parent=parent, type_id=type_id, uuid=uuid, placer=placer)
    if as_json:
        import json

        click.echo(json.dumps(instance_record(inst, owned=True), indent=2))
    else:
        click.echo(inst.uuid)
        info(f"created {inst.uuid} ({inst.type_id} on {inst.parent})")


@click.command()
@click.argument("uuid")
@click.option("--foreign", is_flag=True, help="Also destroy a device that vgpuctl did not create.")
@click.option(
    "--force",
    is_flag=True,
    help="Destroy even though a libvirt domain definition (not running with it) still references the device; "
    "never overrides a running domain or a process holding it.",
)
@json_option
def destroy(uuid: str, foreign: bool, force: bool, as_json: bool) -> None:
    """Destroy one vGPU instance; refuses while a process or VM uses it, or a defined domain references it."""
    inst = build_lifecycle(settings(), stale_ok=force).destroy(uuid, foreign=foreign)
    if as_json:
        import json

        click.echo(
            json.dumps(record("vgpuctl.destroyed/v1", uuid=inst.uuid, parent=inst.parent, type_id=inst.type_id), indent=2)
        )
    else:
        info(f"destroyed {inst.uuid} ({inst.type_id} on {inst.parent})")
