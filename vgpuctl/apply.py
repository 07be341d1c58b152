"""Converge the host to the desired state: read, plan, execute exactly that plan under the lock, verify.

``Reconciler.apply`` holds the host lock (``run/vgpuctl/lock``) from the first read to the last write.  Under it, it
first settles what a crashed run left in the state file's intent journal (``State.recover``), then plans, then runs
the plan's runnable actions one by one, each journalled: the intent is saved to ``var/lib/vgpuctl/state.json``
before the host is touched, and its outcome goes out with the next save (one fsync'd write per step).  A kill -9
at any point therefore leaves either a pending intent the next run settles against the host, or a settled state;
never a device that neither the desired state nor the state file knows.  A step that fails is recorded and the rest
of the plan still runs.  Finally the host is read again and planned again: the run converged when that plan is empty.

Attach and detach steps go to the ``AttachmentBackend`` (``virt.AttachmentSource``: the code path of ``vgpuctl
attach``/``detach``), journalled the same way.  Both are idempotent, so recovery only drops their intent and the next
plan redoes what an interrupted one left undone.  With a backend, ``apply`` takes its attach lock before the host
lock, in the order ``vgpuctl attach --parent --type`` takes them.

GPU-wide settings (the desired state's ``gpus:``: vGPU scheduler, heterogeneous mode) go to a ``GpuSettings``
(``nvml.NvmlSettings``): it reports what NVML says for the planner, read only when the desired state names GPUs or
pins instances to NVIDIA vendor-VFIO parents (their mixing rule), and sets them for ``apply``, journalled like
attaches (idempotent: recovery drops the intent, the next plan redoes it).  A refusal is that step's failure.

``Reconciler`` is also what ``plan``, ``check`` and the service use to observe the host without the lock.
"""
from __future__ import annotations

import logging
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, Optional, Protocol, Sequence, Set, Tuple

from .errors import AlreadyExists, LibvirtConnectError, LibvirtUnavailable, VgpuctlError
from .hook import HookRecords
from .host.mdevctl import read_checked
from .lifecycle import Lifecycle
from .model import BackendKind, Inventory
from .plan import (Action, Attachments, GpuObservation, Op, PlacementFailure, Placer, Plan, destroy_candidates,
                   plan)
from .spec import DesiredInstance, DesiredState, PlacementRequest, bind, load
from .state import ORIGIN_APPLY, HostLock, Intent, State

log = logging.getLogger("vgpuctl.apply")


class AttachmentBackend(Protocol):
    """libvirt for the reconciler (``virt.AttachmentSource``).  Errors are ``VgpuctlError``s."""

    def session(self) -> ContextManager[Any]:
        """Everything read inside comes from one read of libvirt."""

    def observe(self, inventory: Inventory) -> Attachments:
        """uuid -> the domains that reference it (or whose vgpuctl metadata records it)."""

    def lock(self) -> ContextManager[Any]:
        """The attach lock, taken before the host lock."""

    def attach(self, action: Action) -> bool:
        """Attach as the action says (idempotent); whether anything changed."""

    def detach(self, action: Action) -> None:
        """Detach as the action says and drop vgpuctl's record of it."""


class GpuSettings(Protocol):
    """NVML's GPU-wide settings for the reconciler (``nvml.NvmlSettings``).  Setters raise ``VgpuctlError``s."""

    def observe(self, gpus: Sequence[str]) -> Dict[str, GpuObservation]:
        """What each GPU reports; where NVML cannot tell, an observation with ``unavailable`` set."""

    def set_scheduler(self, gpu: str, policy: str, timeslice_ms: Optional[float]) -> None:
        """Set the vGPU scheduler (refused while a vGPU runs on the GPU)."""

    def set_heterogeneous(self, gpu: str, on: bool) -> None:
        """Set heterogeneous mode."""


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
        attachments: Optional[AttachmentBackend] = None,
        gpu_settings: Optional[GpuSettings] = None,
    ) -> None:
        self.lifecycle = lifecycle
        self.host = lifecycle.host
        self.store = lifecycle.store
        self.placer = placer
        self.attachments = attachments  #: None: libvirt not configured, attach actions stay blocked
        if gpu_settings is None:
            from .nvml import NvmlSettings  # pynvml itself is loaded only when a GPU is asked about

            gpu_settings = NvmlSettings()
        self.gpu_settings = gpu_settings

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
        on_demand = HookRecords(self.host.paths).all()
        foreign = read_checked(self.host.paths, inv).by_uuid()  # mdevctl's definitions: never fought
        candidates = destroy_candidates(inv, state, desired, on_demand)
        attached: Optional[Attachments] = None
        unreadable: Optional[str] = None
        settings_gpus = sorted({g.gpu for g in desired.gpus})
        vendor_vfio = _pinned_vendor_vfio_gpus(inv, desired)
        on_gpus = [i for i in inv.instances if _gpu_of(inv, i.parent) in settings_gpus]
        # one read of libvirt serves the in-use check, the attachments and the placer's usage (``plan`` calls it)
        with self.attachments.session() if self.attachments is not None else nullcontext():
            held = {i.uuid: i for i in list(candidates) + on_gpus}
            users = self.lifecycle.users(tuple(held.values())) if held else {}
            if self.attachments is not None and desired.instances:
                try:
                    attached = self.attachments.observe(inv)
                except (LibvirtConnectError, LibvirtUnavailable) as e:
                    if _wants_domains(desired):  # the devices still converge; the attaches wait (retried)
                        unreadable = f"libvirt unreachable: {e}"
                    else:  # only a detach could follow, and none is known: nothing to wait for
                        attached = {}
            elif self.attachments is not None:
                attached = {}
            gpus: Optional[Dict[str, GpuObservation]] = None
            asked = sorted(set(settings_gpus) | vendor_vfio)
            if asked:
                gpus = self._observe_gpus(inv, asked, users)
            return Observation(inv, state, plan(inv, state, desired, users=users, attachments=attached,
                                                placer=self.placer, libvirt_error=unreadable, on_demand=on_demand,
                                                gpus=gpus, foreign=foreign))

    def _observe_gpus(self, inv: Inventory, gpus: Sequence[str], users: Any) -> Dict[str, GpuObservation]:
        """NVML's view of ``gpus``, with the instances a process or domain holds on each added to what runs there
        (the rule of ``vgpuctl sched set``: NVML may not list a vGPU whose VM is only starting)."""
        from dataclasses import replace

        seen = self.gpu_settings.observe(gpus)
        out: Dict[str, GpuObservation] = {}
        for gpu in gpus:
            obs = seen.get(gpu) or GpuObservation(gpu, unavailable=f"NVML did not report GPU {gpu}")
            held = [f"{i.uuid} ({', '.join(users[i.uuid])})" for i in inv.instances
                    if i.uuid in users and _gpu_of(inv, i.parent) == gpu]
            out[gpu] = replace(obs, running=tuple(obs.running) + tuple(held)) if held else obs
        return out

    # --- apply -----------------------------------------------------------------------------------------------------
    def apply(
        self,
        desired: DesiredState,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[Step], None] = lambda s: None,
    ) -> ApplyResult:
        with ExitStack() as locks:
            if self.attachments is not None:
                locks.enter_context(self.attachments.lock())
            locks.enter_context(HostLock(self.host.paths, self.lifecycle.lock_timeout))
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
            failed: Set[str] = set()  #: uuids whose create failed: their attach is not tried
            for action in before.plan.runnable:
                if should_stop():
                    interrupted = True
                    break
                if action.op is Op.ATTACH and action.uuid in failed:
                    step = Step(action, False, "the device was not created", "depends")
                else:
                    state, step = self._run(action, state, before.inventory)
                if not step.ok and action.op is Op.CREATE:
                    failed.add(action.uuid)
                steps.append(step)
                on_step(step)
            # what the desired state declares is apply's to manage from now on (export, then apply, adopts devices)
            claimed = state.claim(d.uuid for d in bind(desired, before.inventory).instances)
            if steps or claimed != state:
                state = claimed
                self.store.save(state)  # the last step's outcome (earlier ones went out with the next intent)
            after = self.observe(desired, state=state)
        return ApplyResult(before, tuple(steps), after, interrupted)

    def _run(self, a: Action, state: State, inv: Inventory) -> "tuple[State, Step]":
        if a.op in (Op.ATTACH, Op.DETACH):
            return self._run_libvirt(a, state, inv)
        if a.op.gpu_setting:
            return self._run_setting(a, state)
        existing = inv.instance(a.uuid)
        parent = inv.parent(a.parent or "")
        backend = str(existing.backend if existing else parent.backend if parent else "mdev")
        intent = Intent("create" if a.op is Op.CREATE else "remove", a.uuid, a.parent or "", a.type_id, backend,
                        ORIGIN_APPLY)
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

    def _run_libvirt(self, a: Action, state: State, inv: Inventory) -> "tuple[State, Step]":
        """An attach or detach: journalled, then done by the backend; a refusal is this step's failure only."""
        if self.attachments is None:  # the planner blocks these without libvirt; a plan from elsewhere might not
            return state, Step(a, False, "libvirt not configured", "libvirt")
        existing = inv.instance(a.uuid)
        intent = Intent(str(a.op), a.uuid, a.parent or "", a.type_id,
                        str(existing.backend) if existing else "mdev")
        journalled = state.with_intent(intent)
        self.store.save(journalled)
        try:
            if a.op is Op.ATTACH:
                self.attachments.attach(a)
            else:
                self.attachments.detach(a)
        except VgpuctlError as e:
            log.warning("%s failed: %s", a.line(), e)
            return journalled.settle(intent, exists=True), Step(a, False, str(e), e.kind)
        return journalled.settle(intent, exists=True), Step(a, True)

    def _run_setting(self, a: Action, state: State) -> "tuple[State, Step]":
        """A GPU-wide setting through NVML: journalled, then set; a refusal (NVML's or a vGPU that started running
        meanwhile) is this step's failure only."""
        intent = Intent(str(a.op), "", a.parent or "", a.type_id, "nvml", ORIGIN_APPLY)
        journalled = state.with_intent(intent)
        self.store.save(journalled)
        try:
            if a.op is Op.SCHED:
                self.gpu_settings.set_scheduler(a.parent or "", a.value.policy, a.value.timeslice_ms)
            else:
                self.gpu_settings.set_heterogeneous(a.parent or "", bool(a.value))
        except VgpuctlError as e:
            log.warning("%s failed: %s", a.line(), e)
            return journalled.settle(intent, exists=True), Step(a, False, str(e), e.kind)
        return journalled.settle(intent, exists=True), Step(a, True)

    def _settle_after_failure(
        self, journalled: State, intent: Intent, a: Action, old: State, error: VgpuctlError
    ) -> State:
        """After a refused step: look at the host, not only at the error, to know whether the device exists."""
        exists = self.host.exists(a.uuid, BackendKind(intent.backend))
        if a.op is Op.CREATE and (not exists or isinstance(error, AlreadyExists)):
            state = old  # nothing was made by us (or someone else made that uuid meanwhile): forget the intent
        else:
            state = journalled.settle(intent, exists=exists)
        return state


def _gpu_of(inv: Inventory, parent: str) -> str:
    p = inv.parent(parent)
    return p.gpu if p is not None else parent


def _pinned_vendor_vfio_gpus(inv: Inventory, desired: DesiredState) -> Set[str]:
    """Physical GPUs of NVIDIA vendor-VFIO parents that desired instances are pinned to: their mixing rule depends on
    heterogeneous mode, which only NVML reports."""
    names = {p.name.lower(): p for p in inv.parents if p.backend is BackendKind.NVIDIA_VF}
    out: Set[str] = set()
    for d in desired.instances:
        p = names.get((d.parent or "").lower())
        if p is not None:
            out.add(p.gpu)
    return out


def _wants_domains(desired: DesiredState) -> bool:
    return any(d.domain for d in desired.instances)


def policy_placer(paths: Any, *, usage: Optional[Callable[[Inventory], Any]] = None) -> Placer:
    """A ``Placer`` over ``vgpuctl.placement.place`` and the policy file ``etc/vgpuctl/policy.yaml``.  Instances are
    placed one after the other, each seeing the ones before it (and the plan's destroys and pinned creates).

    ``usage``: inventory -> ``placement.Usage`` (who uses the existing instances: domains, tenants, groups; GPU mix
    modes), asked once per plan, so quotas and anti-affinity count the host's other VMs; None: nobody's."""
    from . import placement
    from .policy import NumaMode, load_policy, policy_path

    policy = load_policy(policy_path(paths.config_dir))

    def placer(
        inventory: Inventory, todo: Sequence[DesiredInstance], creates: Sequence[Tuple[str, str, str]],
        destroys: Sequence[str],
    ) -> Dict[str, Any]:
        inv = inventory
        used = usage(inventory) if usage is not None else placement.Usage()
        for uuid in destroys:
            inv = placement.release(inv, uuid)
            used = used.without(uuid)
        for uuid, parent, type_id in creates:
            inv = placement.apply(inv, parent=parent, type_id=type_id, uuid=uuid)
        out: Dict[str, Any] = {}
        for d in todo:
            req = d.placement or PlacementRequest()
            request = placement.Request(
                type=d.type, domain=d.domain, tenant=req.tenant,
                numa_nodes=(req.numa_node,) if req.numa_node is not None else (),
                numa=NumaMode.REQUIRE if req.numa_node is not None else None,
                any_of=d.profile_def.type_ids(inv) if d.profile_def is not None else None,
            )
            try:
                decision = placement.place(inv, policy, request, usage=used)
            except VgpuctlError as e:
                out[d.name] = PlacementFailure(str(e))
                continue
            if decision.parent is None or decision.type_id is None:
                why = "; ".join(f"{g}: {r} {x}".strip() for g, r, x in decision.refusals()) or "no parent fits"
                out[d.name] = PlacementFailure(why)
                continue
            inv = placement.apply(inv, parent=decision.parent, type_id=decision.type_id, uuid=d.uuid)
            used = used.with_consumer(d.uuid, placement.Consumer(domain=d.domain, tenant=req.tenant))
            out[d.name] = decision.parent
        return out

    return placer
