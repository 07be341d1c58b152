"""Converge the host to the desired state: read, plan, execute exactly that plan under the lock, verify.

``Reconciler.apply`` holds the host lock (``run/vgpuctl/lock``) from the first read to the last write.  Under it, it
first settles what a crashed run left in the state file's intent journal (``State.recover``), then plans, then runs
the plan's runnable actions, journalled: the intent is saved to ``var/lib/vgpuctl/state.json`` before the host is
touched, and its outcome goes out with the next save.  Creates and destroys run as a batch: every intent of the batch
in one fsync'd write, then the sysfs writes back to back with no read-back, then one look at the host (a readdir of
``sys/bus/mdev/devices``) verifies them all.  A kill -9 at any point therefore leaves either pending intents the next
run settles against the host, or a settled state; never a device that neither the desired state nor the state file
knows.  A step that fails is recorded and the rest of the plan still runs.  Finally the host is planned again: read
again after a failed or interrupted step or a GPU-wide setting, else as the verified steps left it (``_known_after``);
the run converged when that plan is empty.

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

import errno
import logging
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Optional, Protocol, Sequence, Set, Tuple

from .errors import AlreadyExists, HostIOError, LibvirtConnectError, LibvirtUnavailable, VgpuctlError
from .hook import HookRecords
from .host.mdevctl import read_checked
from .lifecycle import Lifecycle, ProcessHolders
from .model import BackendKind, Instance, Inventory
from .plan import (
    Action,
    Attachments,
    Block,
    GpuObservation,
    Op,
    PlacementFailure,
    Placer,
    Plan,
    destroy_candidates,
    plan,
)
from .spec import DesiredInstance, DesiredState, bind, load
from .state import ORIGIN_APPLY, HostLock, Intent, State
from .virt.conn import users_in
from .virt.domxml import Snapshot, domain_attachments

log = logging.getLogger("vgpuctl.apply")

_DEVICE_OPS = (Op.CREATE, Op.DESTROY)  #: steps that write sysfs: run as one journalled batch


class AttachmentBackend(Protocol):
    """libvirt's writes for the reconciler (``virt.attach.AttachmentSource``).  Errors are ``VgpuctlError``s.  What
    the domains reference is observed from the pass's ``virt.conn.Libvirt``, not asked of this."""

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

    def set_mig(self, gpu: str, want: Any) -> None:
        """Converge MIG mode and GPU instances to ``want`` (``gpuwide.DesiredMig``; refused while the GPU is busy)."""


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
    #: libvirt was configured but unreachable (its actions are blocked ``libvirt-unreachable``), and why
    libvirt_error: Optional[VgpuctlError] = None


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
    """Observe, plan and apply.  Built by ``vgpuctl.app`` (the CLI, the service, doctor) from one object graph.

    ``libvirt``: the pass's connection (``virt.conn.Libvirt``), None when libvirt is not configured (attach actions
    stay blocked); ``attachments``: the attach/detach steps over it; ``policy``: the placement policy, None for no
    placement engine (only pinned instances can be placed); ``nvml``: ``off`` never asks NVML for mixing modes."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        *,
        policy: Any = None,
        libvirt: Any = None,
        attachments: Optional[AttachmentBackend] = None,
        gpu_settings: Optional[GpuSettings] = None,
        nvml: str = "auto",
    ) -> None:
        self.lifecycle = lifecycle
        self.host = lifecycle.host
        self.store = lifecycle.store
        self.policy = policy
        self.libvirt = libvirt
        self.attachments = attachments  #: None: libvirt not configured, attach actions stay blocked
        self.nvml = nvml
        self._gpu_settings = gpu_settings

    @property
    def gpu_settings(self) -> GpuSettings:
        """NVML's settings (``nvml.NvmlSettings`` unless given): imported only when a plan asks about a GPU."""
        if self._gpu_settings is None:
            from .nvml import NvmlSettings  # pynvml itself is loaded only when a GPU is asked about

            self._gpu_settings = NvmlSettings()
        return self._gpu_settings

    @gpu_settings.setter
    def gpu_settings(self, value: GpuSettings) -> None:
        self._gpu_settings = value

    def desired(self) -> DesiredState:
        return load(self.host.paths.config_dir)

    def end_pass(self) -> None:
        """A pass is over (the service's, or a command's): close the libvirt connection; the next pass reads again."""
        if self.libvirt is not None:
            self.libvirt.end()

    # --- observe ---------------------------------------------------------------------------------------------------
    def observe(
        self, desired: DesiredState, *, state: Optional[State] = None, inventory: Optional[Inventory] = None
    ) -> Observation:
        """Read the host (unless ``inventory`` is what it is known to be) and plan.  Without the lock, pending
        intents are settled in memory only."""
        inv = inventory if inventory is not None else self.host.inventory()
        if state is None:
            state = self.store.load()
            if state.pending:
                state = state.recover(i.uuid for i in inv.instances)
        return self._plan(inv, state, desired)

    def _plan(self, inv: Inventory, state: State, desired: DesiredState) -> Observation:
        """The observation step, then ``plan()`` on what it read: every read of the host's peers happens here, at most
        once each (libvirt's domains, NVML, the hook's records, mdevctl's definitions); the planner and the placer
        get data.  When libvirt is unreachable (waited for once) what needs it is blocked, the rest converges."""
        on_demand = HookRecords(self.host.paths).all()
        foreign = read_checked(self.host.paths, inv).by_uuid()  # mdevctl's definitions: never fought
        candidates = destroy_candidates(inv, state, desired, on_demand)
        settings_gpus = sorted({g.gpu for g in desired.gpus})
        vendor_vfio = _pinned_vendor_vfio_gpus(inv, desired)
        on_gpus = [i for i in inv.instances if inv.gpu_of(i.parent) in settings_gpus]
        down: List[VgpuctlError] = []
        if self.libvirt is not None:
            self.libvirt.forget()  # this plan's own read: an earlier plan's (before apply's steps) is stale

        def domains() -> Optional[Snapshot]:
            """libvirt's domains, read once for this plan (the in-use check, the attachments, the placement usage)."""
            if self.libvirt is None:
                return None
            try:
                return self.libvirt.observed()
            except (LibvirtConnectError, LibvirtUnavailable) as e:
                if not down:
                    down.append(e)
                return None

        held = list({i.uuid: i for i in list(candidates) + on_gpus}.values())
        users = ProcessHolders(self.host).users(held) if held else {}
        snap = domains() if held else None
        for u, who in (users_in(snap, held) if snap is not None else {}).items():
            users.setdefault(u, []).extend(who)
        params, runs = self._observe_params(inv, desired, domains)
        users = {**users, **runs}
        attached: Optional[Attachments] = None
        if self.libvirt is not None and not down:
            snap = domains() if desired.instances else None
            attached = domain_attachments(snap, inv) if snap is not None else ({} if not down else None)
        unreadable: Optional[str] = None
        if down:
            unreadable = "libvirt unreachable" + (f" ({d})" if (d := getattr(down[0], "detail", "")) else "")
        gpus: Optional[Dict[str, GpuObservation]] = None
        asked = sorted(set(settings_gpus) | vendor_vfio)
        if asked:
            gpus = self._observe_gpus(inv, asked, users, desired.gpus)
        return Observation(
            inv,
            state,
            plan(
                inv,
                state,
                desired,
                users=users,
                attachments=attached,
                placer=self._placer(inv, desired, domains),
                libvirt_error=unreadable,
                on_demand=on_demand,
                gpus=gpus,
                foreign=foreign,
                params=params,
            ),
            libvirt_error=down[0] if down else None,
        )

    def _placer(
        self, inv: Inventory, desired: DesiredState, domains: Callable[[], Optional[Snapshot]]
    ) -> Optional[Placer]:
        """The placer for this plan, over what was observed: the domains (the plan's one read), NVML's mixing modes
        and each domain's facts, read only when the desired state has an instance without a parent; None without a
        placement policy."""
        if self.policy is None:
            return None
        from .observe import all_facts, mix_modes, usage_of

        snap: Optional[Snapshot] = None
        modes: Dict[str, Any] = {}
        facts: Dict[str, Any] = {}
        if any(not d.parent for d in desired.instances):
            snap = domains()
            modes, note = mix_modes(inv, self.nvml)
            if note:
                log.info("%s", note)
            facts = all_facts(snap, self.host.paths)
        return policy_placer(self.policy, usage=usage_of(snap, inv, modes), facts=facts)

    def _observe_params(
        self, inv: Inventory, desired: DesiredState, domains: Callable[[], Optional[Snapshot]]
    ) -> "tuple[Dict[str, Any], Dict[str, Any]]":
        """The vGPU parameters of the existing instances whose desired state sets some, and who runs those that
        differ (a running VM keeps its parameters until its next start: the planner blocks their change)."""
        from . import vgpu_params

        params: Dict[str, Any] = {}
        differ = []
        for d in bind(desired, inv).instances:
            wanted = d.wanted_params
            inst = inv.instance(d.uuid)
            if wanted is None or inst is None:
                continue
            params[d.uuid] = now = vgpu_params.read(self.host.paths, inst)
            if now is not None and now != wanted:
                differ.append(inst)
        if not differ:
            return params, {}
        runs = ProcessHolders(self.host).users(differ)
        if self.libvirt is not None:
            snap = domains()
            if snap is None:  # cannot tell whether a VM runs them: wait
                e = self.libvirt_failure()
                return params, {i.uuid: [f"possibly a running domain (libvirt unreachable: {e})"] for i in differ}
            for u, who in users_in(snap, differ, include_stale=False).items():
                runs.setdefault(u, []).extend(who)
        return params, runs

    def libvirt_failure(self) -> Optional[VgpuctlError]:
        """Why this plan's read of libvirt failed (None: it did not)."""
        try:
            self.libvirt.observed()
        except (LibvirtConnectError, LibvirtUnavailable) as e:
            return e
        return None

    def _observe_gpus(
        self, inv: Inventory, gpus: Sequence[str], users: Any, desired_gpus: Sequence[Any] = ()
    ) -> Dict[str, GpuObservation]:
        """NVML's view of ``gpus``, with the instances a process or domain holds on each added to what runs there
        (the rule of ``vgpuctl sched set``: NVML may not list a vGPU whose VM is only starting)."""
        from dataclasses import replace

        seen = self.gpu_settings.observe(gpus)
        out: Dict[str, GpuObservation] = {}
        for gpu in gpus:
            obs = seen.get(gpu) or GpuObservation(gpu, unavailable=f"NVML did not report GPU {gpu}")
            held = [
                f"{i.uuid} ({', '.join(users[i.uuid])})"
                for i in inv.instances
                if i.uuid in users and inv.gpu_of(i.parent) == gpu
            ]
            out[gpu] = replace(obs, running=tuple(obs.running) + tuple(held)) if held else obs
            if any(g.gpu == gpu and g.sriov is not None for g in desired_gpus):
                from .host.nvidia_vf import NvidiaVfBackend  # SR-IOV is sysfs's, whatever NVML says

                out[gpu] = replace(out[gpu], sriov=NvidiaVfBackend(self.host.paths).sriov(gpu))
        return out

    # --- apply -----------------------------------------------------------------------------------------------------
    def apply(
        self,
        desired: DesiredState,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        on_step: Callable[[Step], None] = lambda s: None,
        validate: Optional[Callable[[DesiredState, Inventory], None]] = None,
    ) -> ApplyResult:
        """``validate``: called with the desired state and the one inventory read under the lock, before anything is
        written; what it raises ends the run with nothing changed.  One pass: libvirt is connected afresh for it and
        the connection closed at its end (``end_pass``)."""
        self.end_pass()
        try:
            return self._apply(desired, should_stop=should_stop, on_step=on_step, validate=validate)
        finally:
            self.end_pass()

    def _apply(
        self,
        desired: DesiredState,
        *,
        should_stop: Callable[[], bool],
        on_step: Callable[[Step], None],
        validate: Optional[Callable[[DesiredState, Inventory], None]],
    ) -> ApplyResult:
        with ExitStack() as locks:
            if self.attachments is not None:
                locks.enter_context(self.attachments.lock())
            locks.enter_context(HostLock(self.host.paths, self.lifecycle.lock_timeout))
            inv = self.host.inventory()
            if validate is not None:
                validate(desired, inv)
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
            if validate is not None:
                refuse_bad_gpu_config(before.plan, desired)
            steps: List[Step] = []
            interrupted = False
            failed: Set[str] = set()  #: uuids whose create failed: their attach is not tried
            current = before
            for _round in range(3):  # after a change of the GPU's VFs or GPU instances: read, plan, run again
                state, interrupted, shaped = self._run_plan(current, state, steps, failed, should_stop, on_step)
                if not shaped or interrupted:
                    break
                current = self._plan(self.host.inventory(), state, desired)
            # what the desired state declares is apply's to manage from now on (export, then apply, adopts devices)
            claimed = state.claim(d.uuid for d in bind(desired, current.inventory).instances)
            if steps or claimed != state:
                state = claimed
                self.store.save(state)  # the last step's outcome (earlier ones went out with the next intent)
            known = _known_after(before.inventory, steps, interrupted) if current is before else None
            after = self.observe(desired, state=state, inventory=known)
        return ApplyResult(before, tuple(steps), after, interrupted)

    def _run_plan(
        self,
        obs: Observation,
        state: State,
        steps: List[Step],
        failed: Set[str],
        should_stop: Callable[[], bool],
        on_step: Callable[[Step], None],
    ) -> "tuple[State, bool, bool]":
        """Run ``obs.plan``'s runnable actions; (state, interrupted, whether a step changed the GPU's shape)."""
        interrupted = False
        shaped = False
        runnable = obs.plan.runnable
        i = 0
        while i < len(runnable) and not interrupted:
            if should_stop():
                interrupted = True
                break
            action = runnable[i]
            if action.op in _DEVICE_OPS:  # a run of creates/destroys: one journal write, one verification
                j, ids = i, set()
                # a re-type (destroy, then create of the same identity) starts a new batch at its create, so
                # that each identity has one intent per batch and one look verifies it
                while j < len(runnable) and runnable[j].op in _DEVICE_OPS and runnable[j].uuid not in ids:
                    ids.add(runnable[j].uuid)
                    j += 1
                state, done, interrupted = self._run_batch(runnable[i:j], state, obs.inventory, should_stop)
                i = j
            else:
                if action.op is Op.ATTACH and action.uuid in failed:
                    step = Step(action, False, "the device was not created", "depends")
                else:
                    state, step = self._run(action, state, obs.inventory)
                done = [step]
                i += 1
            for step in done:
                if not step.ok and step.action.op is Op.CREATE:
                    failed.add(step.action.uuid)
                shaped = shaped or (step.ok and step.action.op.shapes_gpu)
                steps.append(step)
                on_step(step)
        return state, interrupted, shaped

    def _run_batch(
        self, actions: Sequence[Action], state: State, inv: Inventory, should_stop: Callable[[], bool]
    ) -> "tuple[State, List[Step], bool]":
        """Creates and destroys: every intent journalled in one durable write, then the sysfs writes one after the
        other with no read-back, then one look at the host verifies them all and settles each intent (in memory:
        the next save writes it).  A kill -9 anywhere leaves intents that ``State.recover`` settles against the host
        exactly as the verification would, write done or not; so does a refused write (``_settle_after_failure``).
        (state, steps, interrupted): a stop request leaves the rest unwritten, its intents settled as not done."""
        intents = [self._intent(a, inv) for a in actions]
        journalled = State(owned=state.owned, pending=state.pending + tuple(intents))
        self.store.save(journalled)
        state = journalled
        outcome: Dict[int, Step] = {}  #: index -> the failed step of a refused write
        written: List[int] = []
        interrupted = False
        for k, (a, intent) in enumerate(zip(actions, intents)):
            if k and should_stop():
                interrupted = True
                break
            try:
                if a.op is Op.CREATE:
                    self.host.write_create(parent=a.parent or "", type_id=a.type_id, uuid=a.uuid, inventory=inv)
                else:
                    existing = inv.instance(a.uuid)
                    assert existing is not None
                    self.host.write_remove(existing)
            except VgpuctlError as e:
                state = self._settle_after_failure(state, intent, a, e)
                outcome[k] = Step(a, False, str(e), e.kind)
                continue
            written.append(k)
        looked: Dict[BackendKind, Set[str]] = {}
        for intent in intents:
            looked.setdefault(BackendKind(intent.backend), set()).add(intent.uuid)
        present = self.host.present(looked)
        steps: List[Step] = []
        done = set(written)
        for k, (a, intent) in enumerate(zip(actions, intents)):
            if k in outcome:
                steps.append(outcome[k])
                continue
            if k not in done:  # not attempted (stopped): nothing changed, the intent goes
                state = State(owned=state.owned, pending=tuple(p for p in state.pending if p != intent))
                continue
            exists = intent.uuid in present
            state = state.settle(intent, exists=exists)
            if exists and a.op is Op.CREATE and a.value is not None:  # its vGPU parameters, before any VM start
                made = Instance(a.uuid, a.parent or "", a.type_id, backend=BackendKind(intent.backend))
                try:
                    self._params_at_create(made, a.value)
                except VgpuctlError as e:
                    gone = not self.host.exists(a.uuid, made.backend)
                    state = state.settle(intent, exists=not gone)
                    steps.append(Step(a, False, str(e), e.kind))
                    continue
                steps.append(Step(a, True))
            elif exists == (a.op is Op.CREATE):
                steps.append(Step(a, True))
            else:
                verb = "create" if a.op is Op.CREATE else "remove"
                what = "reported success but no device" if a.op is Op.CREATE else "left the device in place"
                e = HostIOError(a.uuid, errno.EIO, action=f"{verb} {a.uuid} {what}: checking")
                steps.append(Step(a, False, str(e), e.kind))
        return state, steps, interrupted

    @staticmethod
    def _intent(a: Action, inv: Inventory) -> Intent:
        existing = inv.instance(a.uuid)
        parent = inv.parent(a.parent or "")
        backend = str(existing.backend if existing else parent.backend if parent else "mdev")
        return Intent(
            "create" if a.op is Op.CREATE else "remove", a.uuid, a.parent or "", a.type_id, backend, ORIGIN_APPLY
        )

    def _run(self, a: Action, state: State, inv: Inventory) -> "tuple[State, Step]":
        if a.op in (Op.ATTACH, Op.DETACH):
            return self._run_libvirt(a, state, inv)
        if a.op.gpu_setting:
            return self._run_setting(a, state)
        if a.op is Op.PARAMS:
            return self._run_params(a, state, inv)
        existing = inv.instance(a.uuid)
        intent = self._intent(a, inv)
        journalled = state.with_intent(intent)
        self.store.save(journalled)
        try:
            if a.op is Op.CREATE:
                made = self.host.create(parent=a.parent or "", type_id=a.type_id, uuid=a.uuid, inventory=inv)
                if a.value is not None:
                    self._params_at_create(made, a.value)
            else:
                assert existing is not None
                self.host.remove(existing)
        except VgpuctlError as e:
            state = self._settle_after_failure(journalled, intent, a, e)
            return state, Step(a, False, str(e), e.kind)
        # settled in memory only: the next step's intent (or the final save) writes it; a crash before that leaves
        # this intent pending, and recovery settles it against the host exactly as this line would
        return journalled.settle(intent, exists=a.op is Op.CREATE), Step(a, True)

    def _run_libvirt(self, a: Action, state: State, inv: Inventory) -> "tuple[State, Step]":
        """An attach or detach: journalled, then done by the backend; a refusal is this step's failure only."""
        if self.attachments is None:  # the planner blocks these without libvirt; a plan from elsewhere might not
            return state, Step(a, False, "libvirt not configured", "libvirt")
        existing = inv.instance(a.uuid)
        intent = Intent(str(a.op), a.uuid, a.parent or "", a.type_id, str(existing.backend) if existing else "mdev")
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
            elif a.op is Op.MIG:
                self.gpu_settings.set_mig(a.parent or "", a.value)
            elif a.op is Op.SRIOV:
                from .host.nvidia_vf import NvidiaVfBackend

                n, expect_types = a.value
                NvidiaVfBackend(self.host.paths).set_vfs(a.parent or "", n, expect_types=expect_types)
            else:
                self.gpu_settings.set_heterogeneous(a.parent or "", bool(a.value))
        except VgpuctlError as e:
            log.warning("%s failed: %s", a.line(), e)
            return journalled.settle(intent, exists=True), Step(a, False, str(e), e.kind)
        return journalled.settle(intent, exists=True), Step(a, True)

    def _params_at_create(self, made: Any, params: Any) -> None:
        """Write a new vGPU's parameters before anything can start a VM with it; if that fails, remove it again
        (the create step fails: a vGPU without its parameters is not what the desired state asks for)."""
        from . import vgpu_params

        try:
            vgpu_params.write(self.host.paths, made, params)
        except VgpuctlError:
            try:
                self.host.remove(made)
            except VgpuctlError as e:
                log.warning("roll-back of %s after its vGPU parameters failed: %s", made.uuid, e)
            raise

    def _run_params(self, a: Action, state: State, inv: Inventory) -> "tuple[State, Step]":
        """An existing vGPU's parameters: journalled, then written unless a VM started running it meanwhile."""
        inst = inv.instance(a.uuid)
        intent = Intent(
            str(a.op), a.uuid, a.parent or "", a.type_id, str(inst.backend) if inst else "mdev", ORIGIN_APPLY
        )
        journalled = state.with_intent(intent)
        self.store.save(journalled)
        try:
            if inst is None:
                from .errors import UnknownInstance

                raise UnknownInstance(a.uuid)
            self.lifecycle.write_params(inst, a.value)
        except VgpuctlError as e:
            log.warning("%s failed: %s", a.line(), e)
            return journalled.settle(intent, exists=True), Step(a, False, str(e), e.kind)
        return journalled.settle(intent, exists=True), Step(a, True)

    def _settle_after_failure(self, journalled: State, intent: Intent, a: Action, error: VgpuctlError) -> State:
        """After a refused step: look at the host, not only at the error, to know whether the device exists."""
        exists = self.host.exists(a.uuid, BackendKind(intent.backend))
        if a.op is Op.CREATE and (not exists or isinstance(error, AlreadyExists)):
            # nothing was made by us (or someone else made that uuid meanwhile): forget the intent
            state = State(owned=journalled.owned, pending=tuple(p for p in journalled.pending if p != intent))
        else:
            state = journalled.settle(intent, exists=exists)
        return state


def _known_after(inv: Inventory, steps: Sequence[Step], interrupted: bool) -> Optional[Inventory]:
    """The host after ``steps``, when every step succeeded and was verified (the batch's one look at the host) and
    none changed what a GPU offers: ``inv`` with the creates and destroys applied (``placement.apply``/``release``
    count ``available`` as the host does).  None when the host must be read again: a failed or interrupted run, a
    GPU-wide setting changed, or a step the model cannot replay."""
    if interrupted or any(not s.ok or s.action.op.gpu_setting for s in steps):
        return None
    from . import placement

    try:
        for s in steps:
            a = s.action
            if a.op is Op.CREATE:
                inv = placement.apply(inv, parent=a.parent or "", type_id=a.type_id, uuid=a.uuid)
            elif a.op is Op.DESTROY:
                inv = placement.release(inv, a.uuid)
    except VgpuctlError:
        return None
    return inv


def refuse_bad_gpu_config(p: Plan, desired: DesiredState) -> None:
    """A GPU-wide MIG or SR-IOV setting the GPU proves wrong (a profile it lacks, instances that overlap, more VFs
    than it has) is bad input: ``ConfigError`` (exit 8) naming the file and line, before anything is written."""
    from .errors import ConfigError

    for a in p.actions:
        if a.op.shapes_gpu and a.block is Block.CONFIG:
            g = next((g for g in desired.gpus if g.gpu == a.parent), None)
            key = "mig" if a.op is Op.MIG else "sriov"
            path, line = (g.mark.path, g.line_of(key)) if g is not None else ("<desired state>", None)
            raise ConfigError(path, a.detail, line=line, key=f"gpus.{a.parent}.{key}")


def _pinned_vendor_vfio_gpus(inv: Inventory, desired: DesiredState) -> Set[str]:
    """Physical GPUs of the parents desired instances are pinned to whose mixing rule depends on heterogeneous mode
    (NVIDIA vendor VFIO; ``BackendRules.mode_mixing``), which only NVML reports."""
    from .host.rules import backend_rules

    out: Set[str] = set()
    for d in desired.instances:
        p = inv.find_parent(d.parent)
        if p is not None and backend_rules(p.backend).mode_mixing:
            out.add(p.gpu)
    return out


def policy_placer(policy: Any, *, usage: Any = None, facts: Optional[Dict[str, Any]] = None) -> Placer:
    """A ``Placer`` over ``vgpuctl.placement.place`` and ``policy`` (``policy.Policy``).  Instances are placed one
    after the other, each seeing the ones before it (and the plan's destroys and pinned creates).  Pure: what it needs
    comes in as data, from the observation step.

    ``usage``: the ``placement.Usage`` observed for this plan (who uses the existing instances: domains, tenants,
    groups; GPU mix modes), so quotas and anti-affinity count the host's other VMs; None: nobody's.  ``facts``: domain
    name -> ``DomainFacts``: a desired instance's request takes its domain's tenant, groups and NUMA nodes from there
    (``observe.desired_request``), as ``vgpuctl place --domain`` does."""
    from . import placement
    from .observe import desired_request

    observed = usage if usage is not None else placement.Usage()
    known = facts or {}

    def placer(
        inventory: Inventory,
        todo: Sequence[DesiredInstance],
        creates: Sequence[Tuple[str, str, str]],
        destroys: Sequence[str],
    ) -> Dict[str, Any]:
        inv = inventory
        used = observed
        for uuid in destroys:
            inv = placement.release(inv, uuid)
            used = used.without(uuid)
        for uuid, parent, type_id in creates:
            inv = placement.apply(inv, parent=parent, type_id=type_id, uuid=uuid)
        out: Dict[str, Any] = {}
        for d in todo:
            request = desired_request(d, inv, known.get(d.domain) if d.domain else None)
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
            used = used.with_consumer(
                d.uuid, placement.Consumer(domain=d.domain, tenant=request.tenant, groups=request.groups)
            )
            out[d.name] = decision.parent
        return out

    return placer
