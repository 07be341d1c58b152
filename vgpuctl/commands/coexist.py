"""``vgpuctl adopt --from-mdevctl``: take over mdevctl's definitions as desired-state instances."""

from __future__ import annotations

from typing import Sequence

import click

from ..errors import InvalidInput
from ._common import build_lifecycle, info, json_option, record, render, settings

ADOPTED_COLUMNS = [
    ("NAME", "name"),
    ("UUID", "uuid"),
    ("PARENT", "parent"),
    ("TYPE", "type_id"),
    ("START", "start"),
    ("ACTIVE", "active"),
    ("NEW", "new"),
    ("UNDEFINED", "undefined"),
]


@click.command()
@click.argument("uuids", nargs=-1, metavar="[UUID]...")
@click.option(
    "--from-mdevctl",
    "from_mdevctl",
    is_flag=True,
    help="Adopt mdevctl's definitions (etc/mdevctl.d/PARENT/UUID); the only source so far, required.",
)
@click.option(
    "--undefine",
    is_flag=True,
    help="Also retire mdevctl's definitions, so that vgpuctl alone keeps the instances (without it they "
    "stay double-managed, and plan/check report them).",
)
@json_option
def adopt(uuids: Sequence[str], from_mdevctl: bool, undefine: bool, as_json: bool) -> None:
    """Write mdevctl's definitions (all, or the UUIDs given) as desired-state instances into
    etc/vgpuctl/conf.d/mdevctl.yaml: same uuid, parent and type; the devices that exist become vgpuctl's.

    Every definition is checked before anything is written: a file vgpuctl cannot read, sysfs attributes, a parent
    that is not registered or a type it does not offer refuses the whole adopt (name the other uuids instead).
    """
    from ..coexist import Adopter

    if not from_mdevctl:
        raise InvalidInput("say where to adopt from: --from-mdevctl")
    adopter = Adopter(build_lifecycle(settings()))
    done = adopter.adopt(uuids, undefine=undefine)
    recs = [
        record(
            "vgpuctl.adopted/v1",
            name=a.name,
            uuid=a.definition.uuid,
            parent=a.definition.parent,
            type_id=a.definition.type_id,
            start=a.definition.start,
            active=a.active,
            new=a.new,
            undefined=a.definition.path if a.undefined else None,
            file=adopter.dropin,
        )
        for a in done
    ]
    render(recs, ADOPTED_COLUMNS, as_json=as_json, empty="mdevctl has no definitions to adopt")
    if not done or as_json:
        return
    if any(a.new for a in done):
        info(f"wrote {adopter.dropin}")
    if undefine:
        info(f"retired mdevctl's definitions: vgpuctl alone keeps these {len(done)} instance(s) now")
    else:
        auto = [a for a in done if a.definition.auto]
        if auto:
            info(
                f"{len(auto)} instance(s) stay double-managed (mdevctl also starts them at boot), and plan and "
                "check report them: re-run with --undefine to let vgpuctl alone keep them"
            )
