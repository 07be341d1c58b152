"""``vgpuctl create`` and ``vgpuctl destroy``."""

from __future__ import annotations

from typing import Optional, Tuple

import click

from ..errors import InvalidInput
from ._common import build_lifecycle, info, json_option, record, settings
from ._complete import complete_instances, complete_parents, complete_types
from .profiles import profile_option
from .records import instance_record


@click.command()
@click.option(
    "--parent",
    "-p",
    metavar="PARENT",
    shell_complete=complete_parents,
    help="Parent device: PCI address or name (mtty); default: placed by the policy.",
)
@click.option(
    "--type",
    "-t",
    "type_id",
    metavar="TYPE",
    shell_complete=complete_types,
    help="Type id (nvidia-222) or name (T4-2Q); or give --profile.",
)
@profile_option
@click.option("--uuid", "-u", metavar="UUID", help="UUID for the new device (default: a fresh random one).")
@click.option("--tenant", metavar="TENANT", help="Tenant for quotas, reserved GPUs and profile limits.")
@click.option("--domain", "-d", metavar="DOMAIN", help="Without --parent: the domain (anti-affinity groups).")
@click.option("--policy", "policy_file", metavar="FILE", help="Without --parent: placement policy file.")
@click.option(
    "--param",
    "params",
    metavar="KEY=VALUE",
    multiple=True,
    help="NVIDIA vGPU parameter for nvidia/vgpu_params (repeatable): frame_rate_limiter, disable_vnc, "
    "enable_uvm, enable_debugging, enable_profiling; written before any VM can start with it.  With "
    "--profile they replace the profile's.",
)
@json_option
def create(
    parent: Optional[str],
    type_id: Optional[str],
    profile_name: Optional[str],
    uuid: Optional[str],
    tenant: Optional[str],
    domain: Optional[str],
    policy_file: Optional[str],
    params: Tuple[str, ...],
    as_json: bool,
) -> None:
    """Create one vGPU instance and record it as owned by vgpuctl; without --parent, the placement policy picks it.

    With --profile, the type is the profile's type for the chosen GPU's model, and the tenant's limit for the
    profile is checked first.
    """
    s = settings()
    if (type_id is None) == (profile_name is None):
        raise InvalidInput("give --type or --profile (exactly one)")
    from ..vgpu_params import parse_option

    wanted = parse_option(params) if params else None  # checked before anything is touched
    if profile_name is not None:
        inst, inv = _create_profiled(
            s, profile_name, parent=parent, uuid=uuid, tenant=tenant, domain=domain, params=wanted
        )
    else:
        assert type_id is not None
        placer = None
        if parent is None:  # placement (vgpuctl.commands.place) chooses under the lifecycle's lock
            from .place import placer_for

            placer = placer_for(s, type_id, tenant=tenant, domain=domain, policy_file=policy_file)
        inst, inv = build_lifecycle(s).create_with_inventory(
            parent=parent, type_id=type_id, uuid=uuid, placer=placer, params=wanted
        )
    if as_json:
        import json

        # the inventory read under the lock before the create: the new instance's parent and type (its name)
        click.echo(json.dumps(instance_record(inst, inv, owned=True), indent=2))
    else:
        click.echo(inst.uuid)
        info(f"created {inst.uuid} ({inst.type_id} on {inst.parent})")


def _create_profiled(
    s,
    name: str,
    *,
    parent: Optional[str],
    uuid: Optional[str],
    tenant: Optional[str],  # type: ignore[no-untyped-def]
    domain: Optional[str],
    params=None,
):
    """``create --profile``: the GPU model (so the type) is chosen now, the parent under the lifecycle lock.
    Returns the instance and the inventory the create read."""
    from .profiles import ProfiledCreate, load_settings_profiles, placer_for_profile, resolve

    ps = load_settings_profiles(s)
    profile = ps.get(name)

    seen = []

    def make():  # type: ignore[no-untyped-def]
        pname, tid = resolve(s, profile, parent=parent, tenant=tenant, domain=domain)
        placer = (
            None if parent is not None else placer_for_profile(s, profile, tenant=tenant, domain=domain, type_id=tid)
        )
        inst, inv = build_lifecycle(s).create_with_inventory(
            parent=pname if parent is not None else None,
            type_id=tid,
            uuid=uuid,
            placer=placer,
            params=params if params is not None else profile.params,
        )
        seen.append(inv)
        return inst

    inst = ProfiledCreate(ps, profile, tenant).run(s, make)
    info(f"profile {profile.name} -> {inst.type_id}")
    return inst, seen[0]


@click.command()
@click.argument("uuid", shell_complete=complete_instances)
@click.option("--foreign", is_flag=True, help="Also destroy a device that vgpuctl did not create.")
@click.option(
    "--force",
    is_flag=True,
    help="Destroy even though a libvirt domain definition (not running with it) still references the device; "
    "never overrides a running domain or a process holding it.",
)
@click.option(
    "--undefine",
    is_flag=True,
    help="Also remove mdevctl's definition of the device (etc/mdevctl.d/PARENT/UUID), which would otherwise bring it "
    "back at boot; a definition without a device is then only removed.",
)
@json_option
def destroy(uuid: str, foreign: bool, force: bool, undefine: bool, as_json: bool) -> None:
    """Destroy one vGPU instance; refuses while a process or VM uses it, or a defined domain references it, or
    mdevctl defines it (unless --undefine)."""
    lc = build_lifecycle(settings(), stale_ok=force)
    if undefine:
        inst, defn = lc.destroy_undefining(uuid, foreign=foreign)
    else:
        inst, defn = lc.destroy(uuid, foreign=foreign), None
    undefined = defn.path if defn is not None else None
    if as_json:
        import json

        click.echo(
            json.dumps(
                record(
                    "vgpuctl.destroyed/v1",
                    uuid=inst.uuid if inst else (defn.uuid if defn else uuid),
                    parent=inst.parent if inst else None,
                    type_id=inst.type_id if inst else None,
                    destroyed=inst is not None,
                    undefined=undefined,
                ),
                indent=2,
            )
        )
        return
    if inst is not None:
        info(f"destroyed {inst.uuid} ({inst.type_id} on {inst.parent})")
    if undefined:
        info(f"removed mdevctl's definition {undefined}" + ("" if inst else " (it had no device)"))
