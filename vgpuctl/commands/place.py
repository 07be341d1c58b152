"""``vgpuctl place`` and ``vgpuctl defrag --plan``: ask the placement engine, print its answer, change nothing."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from ..errors import NoPlacement
from ..model import Inventory
from ..observe import complete_request as complete, cpu_nodes, domain_facts as observed_facts, mix_modes, usage_of
from ..placement import Decision, DefragPlan, Request, Usage, Verdict, place as place_request, plan_defrag
from ..policy import NumaMode, Policy
from ..virt.domxml import DomainFacts, needs_cpus
from ._common import (
    Settings,
    build_host,
    app,
    domain_snapshot,
    info,
    json_option,
    libvirt_down,
    record,
    render,
    settings,
    table,
)

PLACEMENT_SCHEMA = "vgpuctl.placement/v1"
VERDICT_SCHEMA = "vgpuctl.placement-verdict/v1"
MOVE_SCHEMA = "vgpuctl.defrag-move/v1"
DEFRAG_SCHEMA = "vgpuctl.defrag-plan/v1"

VERDICT_COLUMNS = [
    ("RANK", "rank"),
    ("GPU", "gpu"),
    ("PARENT", "parent"),
    ("TYPE", "type_id"),
    ("RULE", "rule"),
    ("NUMA", "numa_node"),
    ("USED%", "used_pct"),
    ("VERDICT", "verdict"),
    ("DETAIL", "detail"),
]
MOVE_COLUMNS = [
    ("UUID", "uuid"),
    ("TYPE", "type_id"),
    ("DOMAIN", "domain"),
    ("FROM", "from_parent"),
    ("TO", "to_parent"),
    ("TO_GPU", "to_gpu"),
]

policy_option = click.option(
    "--policy",
    "policy_file",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    help="Placement policy (default: ROOT/etc/vgpuctl/policy.yaml; built-in default if absent).",
)


def load_settings_policy(s: Settings, policy_file: Optional[str]) -> Policy:
    return app(s).policy(policy_file)


def require_domains(s: Settings, *, tenant: Optional[str], domain: Optional[str], groups: Sequence[str] = ()) -> None:
    """A placement that creates something counts the other VMs' tenants (quotas) and groups (anti-affinity), and
    takes a domain's labels and NUMA nodes from libvirt: with a tenant, a domain or a group it refuses (exit 12)
    when libvirt is unreachable.  Without them no domain can change the answer, and the create goes on."""
    if tenant or domain or groups:
        domain_snapshot(s, strict=True)


def build_usage(s: Settings, inventory: Inventory) -> Usage:
    """Who uses each instance (domain, tenant label, anti-affinity labels) and heterogeneous-mode GPUs, from this
    command's observation (``observe.usage_of``): the domains at ``--connect`` (none with ``--connect none``), modes
    from NVML (``observe.mix_modes``; none, with one line on stderr, when NVML cannot say)."""
    modes, note = mix_modes(inventory, s.nvml)
    if note:
        info(note)
    return usage_of(domain_snapshot(s), inventory, modes)


def domain_facts(s: Settings, domain: Optional[str]) -> Optional[DomainFacts]:
    """The facts of ``domain`` at ``--connect`` (None without a domain or with ``--connect none``)."""
    if not domain:
        return None
    snap = domain_snapshot(s)
    info_ = next((d for d in snap.domains if d.name == domain), None) if snap is not None else None
    cpus = cpu_nodes(s.paths) if info_ is not None and needs_cpus(info_) else None
    return observed_facts(snap, domain, cpus, str(s.paths.numa_nodes))


def complete_request(s: Settings, request: Request) -> Tuple[Request, Optional[DomainFacts]]:
    """``request`` completed from its domain's XML (``observe.complete_request``), and the facts it used."""
    facts = domain_facts(s, request.domain)
    return complete(request, facts), facts


def placement_for(
    s: Settings,
    inventory: Inventory,
    request: Request,
    *,
    policy_file: Optional[str] = None,
) -> Decision:
    """The decision for ``request`` under the configured policy; what ``create`` without ``--parent`` uses too."""
    policy = load_settings_policy(s, policy_file)
    request, _ = complete_request(s, request)
    return place_request(inventory, policy, request, usage=build_usage(s, inventory))


def placer_for(
    s: Settings,
    type_name: str,
    *,
    tenant: Optional[str] = None,
    domain: Optional[str] = None,
    policy_file: Optional[str] = None,
) -> Callable[[Inventory], str]:
    """For ``create`` without ``--parent``: a function from the inventory (read under the lock) to the chosen parent."""
    policy = load_settings_policy(s, policy_file)  # read before the lock: a bad file fails fast
    require_domains(s, tenant=tenant, domain=domain)
    request, _ = complete_request(s, Request(type=type_name, tenant=tenant, domain=domain))

    def choose(inventory: Inventory) -> str:
        d = place_request(inventory, policy, request, usage=build_usage(s, inventory))
        if d.parent is None:
            raise NoPlacement(type_name, d.refusals())
        return d.parent

    return choose


def verdict_record(v: Verdict, inv: Inventory) -> Dict[str, Any]:
    t = inv.type_on(v.parent, v.type_id) if v.parent and v.type_id else None
    return record(
        VERDICT_SCHEMA,
        gpu=v.gpu,
        rank=v.rank,
        chosen=v.rank == 1,
        parent=v.parent,
        type_id=v.type_id,
        type_name=t.name if t else None,
        rule=v.rule,
        numa_node=v.numa_node,
        used_pct=round(100 * v.fullness),
        verdict="ok" if v.reason is None else str(v.reason),
        reason=None if v.reason is None else str(v.reason),
        detail=v.detail,
        loss=v.loss,
    )


def decision_record(d: Decision, inv: Inventory, *, numa_from: Sequence[str] = ()) -> Dict[str, Any]:
    c = d.chosen
    t = inv.type_on(c.parent, c.type_id) if c and c.parent and c.type_id else None
    return record(
        PLACEMENT_SCHEMA,
        placed=c is not None,
        type=d.request.type,
        type_id=c.type_id if c else None,
        type_name=t.name if t else None,
        parent=c.parent if c else None,
        gpu=c.gpu if c else None,
        rule=c.rule if c else None,
        strategy=str(d.strategy) if d.strategy else None,
        domain=d.request.domain,
        tenant=d.request.tenant,
        numa_nodes=list(d.request.numa_nodes),
        numa_from=list(numa_from),
        refusals=[{"gpu": g, "reason": r, "detail": x} for g, r, x in d.refusals()],
    )


@click.command()
@click.option(
    "--type",
    "-t",
    "type_name",
    required=True,
    multiple=True,
    metavar="TYPE",
    help="Type id (nvidia-231) or name (T4-2Q); repeat to ask about several types in one call (each gets "
    "its own records; exit 4 if any has no placement).",
)
@click.option(
    "--domain",
    "-d",
    metavar="DOMAIN",
    help="The domain the vGPU is for: anti-affinity groups; with libvirt, its tenant and NUMA nodes too.",
)
@click.option(
    "--tenant",
    metavar="TENANT",
    help="Tenant label for quotas and reserved GPUs (default: the domain's, from its vgpuctl metadata).",
)
@click.option(
    "--numa-node",
    "numa_nodes",
    type=click.IntRange(min=0),
    multiple=True,
    metavar="N",
    help="NUMA node(s) for the vGPU; repeat for several (default: the domain's numatune and vCPU pinning).",
)
@click.option(
    "--numa",
    "numa_mode",
    type=click.Choice([m.value for m in NumaMode]),
    help="Override the policy's NUMA mode: prefer, require or ignore.",
)
@click.option("--group", "groups", multiple=True, metavar="GROUP", help="Anti-affinity group label of the domain.")
@policy_option
@click.option("--explain", is_flag=True, help="Show every GPU's verdict: rank, or why it cannot take the type.")
@json_option
def place(
    type_name: Tuple[str, ...],  # named so: its variable stays VGPUCTL_PLACE_TYPE_NAME (whitespace separates several)
    domain: Optional[str],
    tenant: Optional[str],
    numa_nodes: Tuple[int, ...],
    numa_mode: Optional[str],
    groups: Tuple[str, ...],
    policy_file: Optional[str],
    explain: bool,
    as_json: bool,
) -> None:
    """Say which parent would get a vGPU of TYPE, and why; creates nothing."""
    s = settings()
    inv = build_host(s).inventory()
    policy = load_settings_policy(s, policy_file)
    usage = build_usage(s, inv)
    recs: List[Dict[str, Any]] = []
    unplaced: List[Decision] = []
    for n, one in enumerate(dict.fromkeys(type_name)):
        req = Request(
            type=one,
            domain=domain,
            tenant=tenant,
            numa_nodes=tuple(sorted(set(numa_nodes))),
            numa=NumaMode(numa_mode) if numa_mode else None,
            groups=tuple(groups),
        )
        req, facts = complete_request(s, req)
        numa_from: Tuple[str, ...] = ("--numa-node",) if numa_nodes else (facts.numa_from if facts else ())
        d = place_request(inv, policy, req, usage=usage)  # req is complete
        if n == 0:  # the domain's facts are the same for every type: say them once
            if explain and facts is not None:
                info(
                    f"domain {facts.name}: tenant {facts.tenant or '-'}, groups {','.join(facts.groups) or '-'}, "
                    f"NUMA nodes {','.join(map(str, req.numa_nodes)) or '-'} "
                    f"(from {' and '.join(numa_from) or 'nothing'})"
                )
            for note in facts.notes if facts is not None and (explain or not facts.found) else ():
                info(note)
        if as_json:
            recs.append(decision_record(d, inv, numa_from=numa_from))
            if explain:
                recs += [verdict_record(v, inv) for v in d.verdicts]
        elif explain:
            click.echo(table([verdict_record(v, inv) for v in d.verdicts], VERDICT_COLUMNS))
        if not d.placed:
            unplaced.append(d)
            continue
        c = d.chosen
        assert c is not None
        if not as_json and not explain:
            click.echo(c.parent)
        info(f"{one} -> {c.parent} ({c.type_id} on GPU {c.gpu}, rule {c.rule}, {d.strategy})")
    if as_json:
        down = libvirt_down()
        if down:  # the decisions count no other VM's tenant or groups, and know no domain's labels
            recs = [dict(r, libvirt_error=down) for r in recs]
        render(recs, [], as_json=True)
    if unplaced:
        raise NoPlacement(unplaced[0].request.type, unplaced[0].refusals())


def move_record(m: Any, inv: Inventory) -> Dict[str, Any]:
    t = inv.type_on(m.from_parent, m.type_id)
    return record(
        MOVE_SCHEMA,
        uuid=m.uuid,
        type_id=m.type_id,
        type_name=t.name if t else None,
        domain=m.domain,
        from_parent=m.from_parent,
        from_gpu=m.from_gpu,
        to_parent=m.to_parent,
        to_gpu=m.to_gpu,
        restart_needed=True,
    )


def plan_record(p: DefragPlan, total_gpus: int) -> Dict[str, Any]:
    return record(
        DEFRAG_SCHEMA,
        moves=len(p.moves),
        freed=list(p.freed),
        free_gpus_before=p.before_free,
        free_gpus_after=p.before_free + len(p.freed),
        gpus=total_gpus,
    )


@click.command()
@click.option("--plan", "plan_only", is_flag=True, help="Print the moves (required: defrag never moves anything).")
@policy_option
@json_option
def defrag(plan_only: bool, policy_file: Optional[str], as_json: bool) -> None:
    """Plan the moves that would free the most whole GPUs; each move needs its VM restarted.  Prints only."""
    if not plan_only:
        raise click.UsageError(
            "defrag only plans: pass --plan (moving a vGPU means restarting its VM; do that yourself)"
        )
    s = settings()
    inv = build_host(s).inventory()
    policy = load_settings_policy(s, policy_file)
    p = plan_defrag(inv, policy, usage=build_usage(s, inv))
    total = len({x.gpu for x in inv.parents})
    if as_json:
        render([move_record(m, inv) for m in p.moves] + [plan_record(p, total)], [], as_json=True)
        return
    for m in p.moves:
        click.echo(_move_line(m, inv))
    if p.freed:
        info(
            f"{len(p.moves)} move(s) free {len(p.freed)} GPU(s): {', '.join(p.freed)} "
            f"({p.before_free} -> {p.before_free + len(p.freed)} of {total} GPUs free); "
            "each move needs its VM stopped, the vGPU re-created on the new parent, the VM started; nothing was moved"
        )
    else:
        info(f"no moves free a whole GPU ({p.before_free} of {total} GPUs are free)")


def _move_line(m: Any, inv: Inventory) -> str:
    t = inv.type_on(m.from_parent, m.type_id)
    name = (t.profile if t else None) or m.type_id
    who = f" (domain {m.domain})" if m.domain else ""
    return f"~ move {m.uuid} {name} {m.from_parent} -> {m.to_parent}{who}: restart needed"


__all__: Sequence[str] = [
    "place",
    "defrag",
    "placement_for",
    "placer_for",
    "build_usage",
    "complete_request",
    "require_domains",
    "domain_facts",
]
