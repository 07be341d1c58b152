"""``vgpuctl plan``, ``apply``, ``check``, ``export`` and ``service``: the desired state and the reconciler.

Text output is one line per action (``+ create``, ``- destroy``, ``~ attach``; blocked ones say why); ``--json`` is
one object ``{"schema": "vgpuctl.reconcile/v1", "command", "changed", "converged", "actions", "before", "after"}``
that the Ansible module passes through (``changed`` is what a real run would change, or did).
"""

from __future__ import annotations

import errno
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

import click

from ..errors import ConfigError, NotConverged, OutputError
from ..model import Inventory
from ..options import FiniteFloat
from ..plan import Action, Block, Plan, predicted, unjudged
from ._common import app, info, json_option, libvirt_unreachable, record, settings

SCHEMA = "vgpuctl.reconcile/v1"


def build_reconciler(s: Any) -> Any:
    """The reconciler of this command's composition root (``vgpuctl.app.App.reconciler``)."""
    return app(s).reconciler()


def config_option(f: Any) -> Any:
    return click.option(
        "--config",
        "configs",
        multiple=True,
        type=click.Path(dir_okay=False),
        metavar="FILE",
        help="Read the desired state from FILE instead of the config dir's vgpuctl.yaml and conf.d/*.yaml; "
        "repeat to merge several, in the order given (profiles.yaml and policy.yaml still come from the config dir).",
    )(f)


def desired_state(s: Any, rec: Any, configs: Sequence[str]) -> Any:
    """The desired state: the ``--config`` files in the order given, else the config dir's files."""
    if not configs:
        return rec.desired()
    from ..spec import load_files

    return load_files(configs, s.paths.config_dir)


# --- records ------------------------------------------------------------------------------------------------------
def action_record(a: Action, *, outcome: Optional[str] = None, error: Optional[str] = None) -> Dict[str, Any]:
    rec = record(
        "vgpuctl.action/v1",
        op=str(a.op),
        uuid=a.uuid,
        parent=a.parent,
        type_id=a.type_id,
        name=a.name,
        domain=a.domain,
        mode=str(a.mode) if a.mode else None,
        why=a.why,
        blocked=str(a.block) if a.block else None,
        detail=a.detail or None,
    )
    if outcome is not None:
        rec["outcome"] = outcome
        rec["error"] = error
    return rec


def instances_of(inv: Inventory, owned: Sequence[str]) -> List[Dict[str, Any]]:
    own = set(owned)
    return [{"uuid": i.uuid, "parent": i.parent, "type_id": i.type_id, "owned": i.uuid in own} for i in inv.instances]


def _emit(doc: Dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2))


def _fail_if_not_converged(p: Plan, failed: int = 0) -> None:
    if not p.empty or failed:
        raise NotConverged(len(p.actions), blocked=len(p.blocked), failed=failed)


def _libvirt(obs: Any, doc: Dict[str, Any]) -> Dict[str, Any]:
    """When libvirt was unreachable: ONE line on stderr saying why and how to fix it, and ``libvirt_error`` in the
    JSON document (the field is there only then)."""
    if obs.libvirt_error is None:
        return doc
    doc["libvirt_error"] = libvirt_unreachable(obs.libvirt_error)
    return doc


def _converged(p: Plan) -> Optional[bool]:
    """True: nothing to do; False: a known difference; None: only attaches whose state libvirt could not tell."""
    if p.empty:
        return True
    return None if all(unjudged(a) for a in p.actions) else False


# --- commands -----------------------------------------------------------------------------------------------------
@click.command("plan")
@config_option
@json_option
def plan_cmd(configs: Sequence[str], as_json: bool) -> None:
    """Show what 'apply' would change to reach the desired state; change nothing."""
    from ..spec import validate

    s = settings()
    rec = build_reconciler(s)
    desired = desired_state(s, rec, configs)
    obs = rec.observe(desired)
    validate(desired, obs.inventory)
    from ..apply import refuse_bad_gpu_config

    refuse_bad_gpu_config(obs.plan, desired)  # a MIG profile the GPU lacks, more VFs than it has: exit 8
    p = obs.plan
    if as_json:
        after = [{"uuid": u, "parent": par, "type_id": t} for u, par, t in predicted(obs.inventory, p)]
        _emit(
            _libvirt(
                obs,
                record(
                    SCHEMA,
                    command="plan",
                    changed=bool(p.runnable),
                    converged=_converged(p),
                    actions=[action_record(a) for a in p.actions],
                    before=instances_of(obs.inventory, list(obs.state.owned)),
                    after=after,
                ),
            )
        )
        return
    _libvirt(obs, {})
    for a in p.actions:
        click.echo(a.line())
    if p.empty:
        info("no changes: the host matches the desired state")
    else:
        info(f"{len(p.runnable)} action(s) to run, {len(p.blocked)} blocked")


@click.command()
@config_option
@json_option
def apply(configs: Sequence[str], as_json: bool) -> None:
    """Converge the host to the desired state: run the plan under the lock, then verify; exit 13 if not converged."""
    from ..spec import validate

    s = settings()
    rec = build_reconciler(s)
    desired = desired_state(s, rec, configs)
    result = rec.apply(desired, validate=validate)  # against the run's one read of the host, under the lock
    done = {id(s.action): s for s in result.steps}
    # after a change of a GPU's VFs or GPU instances apply plans again: what then ran supersedes what first waited
    later = [s for s in result.steps if all(s.action is not a for a in result.before.plan.actions)]
    superseded = {(s.action.op, s.action.uuid, s.action.parent) for s in later}
    waited = [a for a in result.before.plan.blocked if (a.op, a.uuid, a.parent) not in superseded]
    if as_json:
        actions = []
        for a in result.before.plan.actions:
            s = done.get(id(a))
            if s is not None:
                actions.append(action_record(a, outcome="done" if s.ok else "failed", error=s.error))
            elif a.block is None or a in waited:
                actions.append(action_record(a, outcome="blocked" if a.block else "skipped", error=None))
        for s in later:
            actions.append(action_record(s.action, outcome="done" if s.ok else "failed", error=s.error))
        _emit(
            _libvirt(
                result.after,
                record(
                    SCHEMA,
                    command="apply",
                    changed=result.changed,
                    converged=result.converged,
                    actions=actions,
                    remaining=[action_record(a) for a in result.after.plan.actions],
                    before=instances_of(result.before.inventory, list(result.before.state.owned)),
                    after=instances_of(result.after.inventory, list(result.after.state.owned)),
                ),
            )
        )
    else:
        _libvirt(result.after, {})
        for s in result.steps:
            click.echo(s.action.line() + ("" if s.ok else f" [failed: {s.error}]"))
        for a in waited:
            click.echo(a.line())
        if result.converged:
            info("converged" if result.changed else "no changes: the host matches the desired state")
    down = result.after.libvirt_error
    if not result.failed and down is not None and any(a.block is Block.LIBVIRT_DOWN for a in result.after.plan.actions):
        raise down  # exit 12: what needs libvirt (destroys, attaches, placements by domain) was refused, not done
    _fail_if_not_converged(result.after.plan, failed=len(result.failed))


@click.command()
@config_option
@json_option
def check(configs: Sequence[str], as_json: bool) -> None:
    """Exit 0 if the host matches the desired state; else list the differences and exit 13."""
    s = settings()
    rec = build_reconciler(s)
    obs = rec.observe(desired_state(s, rec, configs))
    p = obs.plan
    if as_json:
        _emit(
            _libvirt(
                obs,
                record(
                    SCHEMA,
                    command="check",
                    changed=False,
                    converged=_converged(p),
                    actions=[action_record(a) for a in p.actions],
                    before=instances_of(obs.inventory, list(obs.state.owned)),
                    after=instances_of(obs.inventory, list(obs.state.owned)),
                ),
            )
        )
    else:
        _libvirt(obs, {})
        for a in p.actions:
            click.echo(a.line())
    if _converged(p) is None:  # what it can judge matches; the attaches libvirt could not tell are listed
        return
    _fail_if_not_converged(p)


@click.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="Write the desired-state file here ('-': stdout).",
)
@json_option
def export(output: str, as_json: bool) -> None:
    """Write the host's vgpuctl-owned instances as a desired-state file (explicit uuids and parents)."""
    from ..spec import export_doc, render_doc

    rec = build_reconciler(settings())
    try:
        desired = rec.desired()
    except ConfigError as e:  # a broken config must not stop an export of what exists: names are then generic
        info(f"ignoring the desired state for names: {e}")
        desired = None
    inv, state = rec.host.inventory(), rec.store.load()
    doc = export_doc(inv, list(state.owned), desired)
    if as_json:
        owned = instances_of(inv, list(state.owned))
        _emit(
            record(
                SCHEMA,
                command="export",
                changed=False,
                converged=True,
                actions=[],
                before=owned,
                after=owned,
                desired=doc,
            )
        )
        return
    text = render_doc(doc)
    if output == "-":
        sys.stdout.write(text)
    else:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            raise OutputError(output, e.errno or errno.EIO) from None
        info(f"wrote {output}")


@click.command()
@click.option(
    "--resync-interval",
    type=FiniteFloat(min=1),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="Full re-check of the host this often, whatever the events say.",
)
@click.option(
    "--watch",
    type=click.Choice(["auto", "udev", "poll"]),
    default="auto",
    show_default=True,
    help="How to notice host changes: kernel uevents (pyudev), polling sysfs, or udev when available.",
)
@click.option(
    "--poll-interval",
    type=FiniteFloat(min=0.05),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="With --watch poll: how often to list the parent and mdev directories.",
)
@click.option(
    "--metrics-address",
    metavar="[HOST:]PORT",
    help="Serve Prometheus metrics here (a bare PORT listens on 127.0.0.1); off by default.",
)
@click.option(
    "--metrics-textfile",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Write the metrics to FILE (atomically) after every pass, for node_exporter's textfile collector.",
)
def service(
    resync_interval: float,
    watch: str,
    poll_interval: float,
    metrics_address: Optional[str],
    metrics_textfile: Optional[str],
) -> None:
    """Run the reconciling service in the foreground (for systemd Type=notify)."""
    from ..service import Service, ServiceOptions, Watch

    s = settings()
    metrics = None
    if metrics_address or metrics_textfile:
        from ..metrics import MetricsExporter, parse_address

        if metrics_address:
            parse_address(metrics_address)  # a bad address is a usage error before anything starts
        metrics = MetricsExporter(address=metrics_address, textfile=metrics_textfile)
    from ..app import App

    svc = Service(
        lambda: App(s).reconciler(),  # a fresh object graph whenever the service (re)loads
        s.paths,
        ServiceOptions(resync_interval=resync_interval, watch=Watch(watch), poll_interval=poll_interval),
        metrics=metrics,
    )
    sys.exit(svc.run())
