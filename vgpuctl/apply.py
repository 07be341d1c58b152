"""Converge the host to the desired state: read, plan, execute exactly that plan under the lock, verify.

``Reconciler.apply`` holds the host lock (``run/vgpuctl/lock``) from the first read to the last write.  Under it, it
first settles what a crashed run left in the state file's intent journal (``State.recover``), then plans, then runs
the plan's runnable actions one by one, each journalled: the intent is saved to ``var/lib/vgpuctl/state.json``
before the host is touched, and its outcome goes out with the next save (one fsync'd write per step).  A kill -9
at any point therefore leaves either a pending intent the next run settles against the host, or a settled state;
never a device that neither the desired state nor the state file knows.  A step that fails is recorded and the rest of the plan still runs.  Finally the host is read again and
planned again: the run converged when that plan is empty.

``Reconciler`` is also what ``plan``, ``check`` and the service use to observe the host without the lock.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .errors import AlreadyExists, VgpuctlError
from .lifecycle import Lifecycle
from .model import Inventory
from .plan import Action, Attachments, Op, PlacementFailure, Placer, Plan, destroy_candidates, plan
from .spec import DesiredInstance, DesiredState, PlacementRequest, load
from .state import HostLock, Intent, State

log = logging.getLogger("vgpuctl.apply")


@dataclass(frozen=True)
class Step:
    action: Action
    ok: bool
    error: Optional[str] = None  #: the error's message when not ok
    error_kind: Optional[str] = None  #: ``VgpuctlError.kind``


@dataclass(frozen=True)
class Observation:
    inventory: Inventory
    state: State
    plan: Plan


@dataclass(frozen=True)
class ApplyResult:
    before: Observation
    steps: Tuple[Step, ...]
    after: Observation
    interrupted: bool = False  #: stopped early on request (the service's SIGTERM); the rest runs next time

    @property
    def changed(self) -> bool:
        return any(s.ok for s in self.steps)

    @property
    def converged(self) -> bool:
        return self.after.plan.empty

    @property
    def failed(self) -> Tuple[Step, ...]:
        return tuple(s for s in self.steps if not s.ok)


class Reconciler:
    """Observe, plan and apply.  Built by ``commands._common`` (the CLI) and by the service from the same parts."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        *,
        placer: Optional[Placer] = None,
        attachments: Optional[Callable[[Inventory], Attachments]] = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.host = lifecycle.host
        self.store = lifecycle.store
        self.placer = placer
        self.attachments = attachments  #: None: libvirt not configured, attach actions stay blocked

    def desired(self) -> DesiredState:
        return load(self.host.paths.config_dir)

    # --- observe ---------------------------------------------------------------------------------------------------
    def observe(self, desired: DesiredState, *, state: Optional[State] = None) -> Observation:
        """Read the host and plan.  Without the lock, pending intents are settled in memory only."""
        inv = self.host.inventory()
        if state is None:
            state = self.store.load()
            if state.pending:
                state = state.recover(i.uuid for i in inv.instances)
        return self._plan(inv, state, desired)

    def _plan(self, inv: Inventory, state: State, desired: DesiredState) -> Observation:
        candidates = destroy_candidates(inv, state, desired)
        users = self.lifecycle.users(candidates) if candidates else {}
        attached: Optional[Attachments] = None
        if self.attachments is not None:
            attached = self.attachments(inv) if _wants_domains(desired) else {}
        return Observation(inv, state, plan(inv, state, desired, users=users, attachments=attached, placer=self.placer))

    # --- apply -----------------------------------------------------------------------------------------------------
    def apply(
        self,
        desired: DesiredState,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[Step], None] = lambda s: None,
    ) -> ApplyResult:
        with HostLock(self.host.paths, self.lifecycle.lock_timeout):
            inv = self.host.inventory()
            state = self.store.load()
            present = {i.uuid for i in inv.instances}
            settled = state.recover(present) if state.pending else state
            # forget ownership of devices that are gone (reboot, driver reload): a foreign device that later takes
            # the same uuid must not count as ours
            settled = State(owned={u: o for u, o in settled.owned.items() if u in present})
            if settled != state:
                self.store.save(settled)
            state = settled
            before = self._plan(inv, state, desired)
            steps = []
            interrupted = False
            for action in before.plan.runnable:
                if should_stop():
                    interrupted = True
                    break
                state, step = self._run(action, state, before.inventory)
                steps.append(step)
                on_step(step)
            if steps:
                self.store.save(state)  # the last step's outcome (earlier ones went out with the next intent)
            after = self.observe(desired, state=state)
        return ApplyResult(before, tuple(steps), after, interrupted)

    def _run(self, a: Action, state: State, inv: Inventory) -> "tuple[State, Step]":
        if a.op is Op.ATTACH:
            # attaching is done by the libvirt layer; without one the planner blocks attach actions
            return state, Step(a, False, "libvirt not configured", "libvirt")
        existing = inv.instance(a.uuid)
        parent = inv.parent(a.parent or "")
        backend = str(existing.backend if existing else parent.backend if parent else "mdev")
        intent = Intent("create" if a.op is Op.CREATE else "remove", a.uuid, a.parent or "", a.type_id, backend)
        journalled = state.with_intent(intent)
        self.store.save(journalled)
        try:
            if a.op is Op.CREATE:
                self.host.create(parent=a.parent or "", type_id=a.type_id, uuid=a.uuid, inventory=inv)
            else:
                assert existing is not None
                self.host.remove(existing)
        except VgpuctlError as e:
            state = self._settle_after_failure(journalled, intent, a, state, e)
            return state, Step(a, False, str(e), e.kind)
        # settled in memory only: the next step's intent (or the final save) writes it; a crash before that leaves
        # this intent pending, and recovery settles it against the host exactly as this line would
        return journalled.settle(intent, exists=a.op is Op.CREATE), Step(a, True)

    def _settle_after_failure(
        self, journalled: State, intent: Intent, a: Action, old: State, error: VgpuctlError
    ) -> State:
        """After a refused step: look at the host, not only at the error, to know whether the device exists."""
        exists = os.path.lexists(self.host.paths.mdev_devices / a.uuid)
        if a.op is Op.CREATE and (not exists or isinstance(error, AlreadyExists)):
            state = old  # nothing was made by us (or someone else made that uuid meanwhile): forget the intent
        else:
            state = journalled.settle(intent, exists=exists)
        return state


def _wants_domains(desired: DesiredState) -> bool:
    return any(d.domain for d in desired.instances)


def policy_placer(paths: Any) -> Placer:
    """A ``Placer`` over ``vgpuctl.placement.place`` and the policy file ``etc/vgpuctl/policy.yaml``.  Instances are
    placed one after the other, each seeing the ones before it (and the plan's destroys and pinned creates)."""
    from . import placement
    from .policy import NumaMode, load_policy, policy_path

    policy = load_policy(policy_path(paths.config_dir))

    def placer(
        inventory: Inventory, todo: Sequence[DesiredInstance], creates: Sequence[Tuple[str, str, str]],
        destroys: Sequence[str],
    ) -> Dict[str, Any]:
        inv = inventory
        for uuid in destroys:
            inv = placement.release(inv, uuid)
        for uuid, parent, type_id in creates:
            inv = placement.apply(inv, parent=parent, type_id=type_id, uuid=uuid)
        out: Dict[str, Any] = {}
        for d in todo:
            req = d.placement or PlacementRequest()
            request = placement.Request(
                type=d.type, domain=d.domain, tenant=req.tenant,
                numa_nodes=(req.numa_node,) if req.numa_node is not None else (),
                numa=NumaMode.REQUIRE if req.numa_node is not None else None,
            )
            try:
                decision = placement.place(inv, policy, request)
            except VgpuctlError as e:
                out[d.name] = PlacementFailure(str(e))
                continue
            if decision.parent is None or decision.type_id is None:
                why = "; ".join(f"{g}: {r} {x}".strip() for g, r, x in decision.refusals()) or "no parent fits"
                out[d.name] = PlacementFailure(why)
                continue
            inv = placement.apply(inv, parent=decision.parent, type_id=decision.type_id, uuid=d.uuid)
            out[d.name] = decision.parent
        return out

    return placer
