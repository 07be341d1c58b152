"""``vgpuctl profiles`` and what ``create --profile`` / ``attach --profile`` share: the service profiles of
``etc/vgpuctl/profiles.yaml`` (``vgpuctl.profiles``), resolved on this host and placed by the policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from ..errors import NoPlacement, VgpuctlError
from ..model import Inventory
from ..placement import Decision, place as place_request
from ..policy import Policy
from ..profile_limits import Assignment, AssignmentStore, check_limit, desired_assignments
from ..profiles import Profile, Profiles, load_profiles, profile_request, profiles_path
from ._common import Settings, build_host, json_option, libvirt_down, record, render, settings
from ._complete import complete_profiles

PROFILE_SCHEMA = "vgpuctl.profile/v1"
PROFILE_COLUMNS = [
    ("PROFILE", "profile"),
    ("ASKS", "asks"),
    ("TYPES_HERE", "type_names"),
    ("OPTIONS", "options"),
    ("SCHEDULER", "scheduler"),
    ("LIMIT", "limit"),
    ("GPUS_NOW", "gpus_now"),
    ("LEFT", "left"),
    ("NEXT", "next_parent"),
]

profile_option = click.option(
    "--profile",
    "profile_name",
    metavar="PROFILE",
    shell_complete=complete_profiles,
    help="A service profile of etc/vgpuctl/profiles.yaml: its type for the chosen GPU, options and limits.",
)


def load_settings_profiles(s: Settings) -> Profiles:
    return load_profiles(profiles_path(s.paths.config_dir))


def _policy(s: Settings) -> Policy:
    from .place import load_settings_policy

    return load_settings_policy(s, None)


def decide(s: Settings, inv: Inventory, profile: Profile, policy: Policy, **request: Any) -> Decision:
    from .place import build_usage, complete_request

    req, _ = complete_request(s, profile_request(profile, inv, **request))  # the domain's tenant and NUMA nodes
    return place_request(inv, policy, req, usage=build_usage(s, inv))


def held(s: Settings, store: AssignmentStore, present: Sequence[str]) -> Tuple[Assignment, ...]:
    """Who holds which profile now: ``create``/``attach --profile`` records, and the desired state's instances."""
    recorded = store.load(present)
    try:
        from ..spec import load

        desired = desired_assignments(load(s.paths.config_dir))
    except VgpuctlError:  # a broken desired state is the service's problem; count what we know
        desired = ()
    seen = {a.uuid for a in recorded}
    return recorded + tuple(a for a in desired if a.uuid not in seen)


@dataclass(frozen=True)
class ProfiledCreate:
    """A ``create`` or ``attach`` with ``--profile``: run ``make`` under the profiles lock, after the tenant-limit
    check, and record the new instance's profile and tenant."""

    profiles: Profiles
    profile: Profile
    tenant: Optional[str]

    def run(self, s: Settings, make: Callable[[], Any]) -> Any:
        store = AssignmentStore(s.paths)
        with store.lock(s.lock_timeout):
            present = [i.uuid for i in build_host(s).inventory().instances]
            check_limit(self.profiles, self.profile, self.tenant, held(s, store, present))
            inst = make()
            uuid = getattr(inst, "uuid", None) or inst.instance.uuid
            store.record(Assignment(uuid, self.profile.name, self.tenant), present + [uuid])
            return inst


def placer_for_profile(
    s: Settings, profile: Profile, *, tenant: Optional[str], domain: Optional[str], type_id: str
) -> Callable[[Inventory], str]:
    """For ``create --profile`` without ``--parent``: under the lifecycle lock, the parent for ``type_id`` (the
    profile's type on the GPU model chosen when the command started)."""
    from .place import require_domains

    policy = _policy(s)
    require_domains(s, tenant=tenant, domain=domain)

    def choose(inv: Inventory) -> str:
        d = decide(s, inv, profile, policy, tenant=tenant, domain=domain)
        chosen = [v for v in d.verdicts if v.feasible and v.type_id == type_id]
        if not chosen:
            raise NoPlacement(profile.name, d.refusals())
        return chosen[0].parent  # type: ignore[return-value]

    return choose


def resolve(
    s: Settings, profile: Profile, *, parent: Optional[str], tenant: Optional[str], domain: Optional[str]
) -> Tuple[Optional[str], str]:
    """(parent or None, type id) for one vGPU of ``profile``: on ``parent``, else where the policy places it now."""
    from ..errors import UnknownType

    host = build_host(s)
    inv = host.inventory()
    if parent is not None:
        pname = host.resolve_parent(parent, inv)
        t = profile.type_on(inv, pname)
        if t is None:
            raise UnknownType(
                f"profile {profile.name} ({profile.selector})",
                pname,
                [x.profile or x.type_id for x in inv.types_on(pname)],
            )
        return pname, t.type_id
    from .place import require_domains

    require_domains(s, tenant=tenant, domain=domain)
    d = decide(s, inv, profile, _policy(s), tenant=tenant, domain=domain)
    if d.chosen is None or d.type_id is None:
        raise NoPlacement(profile.name, d.refusals())
    return d.parent, d.type_id


def profile_record(profiles: Profiles, p: Profile, inv: Inventory, d: Optional[Decision]) -> Dict[str, Any]:
    types = p.types_here(inv)
    feasible = [v for v in d.verdicts if v.feasible] if d is not None else []
    from ..placement import gpu_states, headroom

    states = {g.gpu: g for g in gpu_states(inv)}
    left = sum(headroom(states[v.gpu], v.type_id) for v in feasible if v.type_id)  # type: ignore[arg-type]
    options = [k for k, v in (("display", p.display), ("ramfb", p.ramfb)) if v]
    options += [f"no-{k}" for k, v in (("display", p.display), ("ramfb", p.ramfb)) if v is False]
    weights = sorted({t.weight for t in types if t.weight is not None})
    scheduler = str(p.scheduler) if p.scheduler else None
    if weights:  # Intel GVT-g: the type fixes its time-slice weight
        scheduler = (scheduler + ", " if scheduler else "") + "weight " + "/".join(map(str, weights))
    limits = dict(p.tenant_limits)
    limit = None
    if p.per_tenant is not None or limits:
        limit = ",".join(
            ([f"{p.per_tenant}/tenant"] if p.per_tenant is not None else []) + [f"{t}={n}" for t, n in limits.items()]
        )
    return record(
        PROFILE_SCHEMA,
        profile=p.name,
        description=p.description or None,
        asks=p.selector,
        types=[t.type_id for t in types],
        type_names=[t.profile or t.type_id for t in types],
        display=p.display,
        ramfb=p.ramfb,
        options=options,
        scheduler=scheduler,
        scheduler_share=str(p.scheduler) if p.scheduler else None,
        per_tenant=p.per_tenant,
        tenant_limits=limits,
        limit=limit,
        gpus_now=[v.gpu for v in feasible],
        left=left,
        next_parent=d.parent if d is not None else None,
        next_type=d.type_id if d is not None else None,
        refusals=[{"gpu": g, "reason": r, "detail": x} for g, r, x in d.refusals()] if d is not None else [],
        source=profiles.where(p) or None,
    )


@click.command()
@json_option
def profiles(as_json: bool) -> None:
    """Service profiles (etc/vgpuctl/profiles.yaml) and where each can be placed right now.

    ASKS is what the profile names; TYPES_HERE what it resolves to on this host's GPU models; GPUS_NOW the GPUs
    that could take one now under the placement policy, LEFT how many more fit on them in all, NEXT the parent the
    next one would get.  An NVIDIA scheduler share is applied per GPU with 'vgpuctl sched set GPU --policy ...'.
    """
    s = settings()
    ps = load_settings_profiles(s)
    inv = build_host(s).inventory()
    policy = _policy(s)
    recs = [profile_record(ps, p, inv, decide(s, inv, p, policy) if inv.parents else None) for p in ps.profiles]
    down = libvirt_down()
    if down:  # the other VMs' tenants and groups are not counted: GPUS_NOW, LEFT and NEXT may be optimistic
        recs = [dict(r, libvirt_error=down) for r in recs]
    empty = f"no service profiles: define them in {profiles_path(s.paths.config_dir)}"
    render(recs, PROFILE_COLUMNS, as_json=as_json, empty=empty)


__all__: List[str] = [
    "profiles",
    "profile_option",
    "ProfiledCreate",
    "resolve",
    "placer_for_profile",
    "load_settings_profiles",
]
