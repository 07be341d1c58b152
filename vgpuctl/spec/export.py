"""``vgpuctl export``'s document: the desired state that keeps the host's vgpuctl-owned instances as they are."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from ..host.rules import named_by_parent
from ..model import Inventory
from .schema import SPEC_VERSION, DesiredState
from .validation import bind


def export_doc(inventory: Inventory, owned: Sequence[str], desired: Optional[DesiredState] = None) -> Dict[str, Any]:
    """The desired-state document for the owned instances that exist: explicit uuid, type id and parent (vendor-VFIO
    instances: parent VF and type only, the VF being their name).  Names come from ``desired`` where it has the
    instance, else ``vgpu-<first 8 hex digits>`` (``vgpu-0000-4a-00.4`` for a VF)."""
    names = {d.uuid: d for d in bind(desired, inventory).instances} if desired is not None else {}
    own = set(owned)
    instances: Dict[str, Dict[str, Any]] = {}
    for inst in sorted(inventory.instances, key=lambda i: i.uuid):
        if inst.uuid not in own:
            continue
        d = names.get(inst.uuid)
        entry: Dict[str, Any]
        if named_by_parent(inst.backend):  # named by its VF: no uuid
            name = d.name if d is not None else "vgpu-" + inst.uuid.replace(":", "-")
            entry = {"type": inst.type_id, "parent": inst.parent}
        else:
            name = d.name if d is not None else f"vgpu-{inst.uuid[:8]}"
            entry = {"uuid": inst.uuid, "type": inst.type_id, "parent": inst.parent}
        if d is not None and d.domain:
            entry["domain"] = d.domain
            entry["attach"] = str(d.attach)
        instances[name] = entry
    return {"version": SPEC_VERSION, "instances": instances}


def render_doc(doc: Dict[str, Any]) -> str:
    """YAML text for ``export_doc``'s document (written by hand: strings JSON-quoted, which YAML reads back)."""
    import json

    lines = ["# vgpuctl desired state, exported from the host's vgpuctl-owned instances", f"version: {doc['version']}"]
    if not doc["instances"]:
        lines.append("instances: {}")
    else:
        lines.append("instances:")
        for name, entry in doc["instances"].items():
            lines.append(f"  {name}:")
            for k, v in entry.items():
                lines.append(f"    {k}: {json.dumps(v)}")
    return "\n".join(lines) + "\n"
