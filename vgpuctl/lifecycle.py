"""Create and destroy vGPU instances safely.

Every precondition is checked under the host lock before the first write; the intent is journalled in the state file
before the host is touched; a failure after the write is rolled back.  Nothing here prints: errors are typed, and
the CLI renders them.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

from .errors import (
    AlreadyExists,
    BadParentName,
    BadUuid,
    DeviceInUse,
    ForeignManaged,
    HostIOError,
    InvalidInput,
    LibvirtConnectError,
    LibvirtUnavailable,
    NoCapacity,
    NotOwned,
    SriovDisabled,
    TypeMix,
    UnknownInstance,
    UnknownParent,
    UnknownType,
    VgpuctlError,
)
from .host import Host, TypeScope
from .model import Instance, Inventory, Parent, Vendor, canonical_instance_id, canonical_parent_name, find_type  # noqa: F401  (find_type: re-exported, the one resolver lives in model)
from .state import ORIGIN_CREATE, HostLock, Intent, State, StateStore


class UsageCheck(Protocol):
    """Something that can say who uses an instance: processes holding it open, libvirt domains referencing it."""

    def users(self, instances: Sequence[Instance]) -> Dict[str, List[str]]:
        """Describe the users of each used instance, keyed by uuid; unused instances are absent."""


class ProcessHolders:
    """Processes that hold an instance's VFIO group open (as QEMU does)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def users(self, instances: Sequence[Instance]) -> Dict[str, List[str]]:
        return {u: [str(h) for h in hs] for u, hs in self.host.holders(instances).items()}


class Lifecycle:
    def __init__(
        self,
        host: Host,
        *,
        lock_timeout: float = 30.0,
        usage_checks: Optional[Sequence[UsageCheck]] = None,
    ) -> None:
        self.host = host
        self.store = StateStore(host.paths)
        self.lock_timeout = lock_timeout
        self.usage_checks: List[UsageCheck] = list(usage_checks) if usage_checks is not None else [ProcessHolders(host)]

    # --- reading ---------------------------------------------------------------------------------------------------
    def read(self, *, types: TypeScope = TypeScope.ALL) -> "tuple[Inventory, State]":
        """Inventory and ownership without the lock (for read-only commands)."""
        return self.host.inventory(types=types), self.store.load()

    def users(
        self, instances: Sequence[Instance], *, unreachable: Optional[List[VgpuctlError]] = None
    ) -> Dict[str, List[str]]:
        """Who uses each instance, from every check.  ``unreachable`` (read-only views and plans only): a check
        whose peer cannot be asked (libvirt down) is skipped and its error appended there instead of raised, so
        the answer is what the other checks know; never pass it where the answer guards a change."""
        out: Dict[str, List[str]] = {}
        for check in self.usage_checks:
            try:
                found = check.users(instances)
            except (LibvirtConnectError, LibvirtUnavailable) as e:
                if unreachable is None:
                    raise
                unreachable.append(e)
                continue
            for u, who in found.items():
                out.setdefault(u, []).extend(who)
        return out

    def running_users(self, instances: Sequence[Instance]) -> Dict[str, List[str]]:
        """Who runs each instance now: processes holding it open and running domains (a definition alone does not
        count): what must not see its ``vgpu_params`` change."""
        out: Dict[str, List[str]] = {}
        for check in self.usage_checks:
            fn = getattr(check, "running_users", check.users)
            for u, who in fn(instances).items():
                out.setdefault(u, []).extend(who)
        return out

    def write_params(self, inst: Instance, params: "Tuple[Tuple[str, str], ...]") -> None:
        """Set an instance's NVIDIA vGPU parameters (the caller holds the lock): refused (``DeviceInUse``) while a
        VM runs it, since they take effect at the VM's next start."""
        from . import vgpu_params

        who = self.running_users([inst]).get(inst.uuid)
        if who:
            raise DeviceInUse(inst.uuid, who)
        vgpu_params.write(self.host.paths, inst, params)

    def _locked_state(self, inventory: Inventory) -> State:
        """Load the state and settle what a crashed run left pending (caller holds the lock)."""
        state = self.store.load()
        if state.pending:
            state = state.recover(i.uuid for i in inventory.instances)
            self.store.save(state)
        return state

    # --- create ----------------------------------------------------------------------------------------------------
    def create(
        self,
        *,
        parent: Optional[str] = None,
        type_id: str,
        uuid: Optional[str] = None,
        placer: Optional[Callable[[Inventory], str]] = None,
        origin: str = ORIGIN_CREATE,
        params: "Optional[Tuple[Tuple[str, str], ...]]" = None,
    ) -> Instance:
        """Create one instance on ``parent``; without one, ``placer`` chooses it from the inventory read under the
        lock (``vgpuctl.placement``), so the choice and the create see the same host."""
        return self.create_with_inventory(
            parent=parent, type_id=type_id, uuid=uuid, placer=placer, origin=origin, params=params
        )[0]

    def create_with_inventory(
        self,
        *,
        parent: Optional[str] = None,
        type_id: str,
        uuid: Optional[str] = None,
        placer: Optional[Callable[[Inventory], str]] = None,
        origin: str = ORIGIN_CREATE,
        params: "Optional[Tuple[Tuple[str, str], ...]]" = None,
    ) -> "tuple[Instance, Inventory]":
        """``create``, also returning the inventory it read under the lock before creating (its parents and types
        describe the new instance: ``vgpuctl create --json`` takes the type's name from it).  ``params``: NVIDIA
        vGPU parameters written to the new vGPU's ``nvidia/vgpu_params`` before anything can start a VM with it;
        if that write fails the vGPU is removed again."""
        requested = None
        if uuid is not None:
            requested = canonical_instance_id(uuid)
            if requested is None:
                raise BadUuid(uuid)
        if parent is None and placer is None:
            raise InvalidInput("create needs a parent, or a placement policy to choose one")
        if parent is not None and canonical_parent_name(parent) is None:
            raise BadParentName(parent)
        with HostLock(self.host.paths, self.lock_timeout):
            inv = self.host.inventory()
            state = self._locked_state(inv)
            # --- placement: choose the parent when none was given (vgpuctl.placement) ---
            if parent is None:
                parent = placer(inv)  # type: ignore[misc]  # raises NoPlacement when no GPU fits
            pname = self._create_parent(parent, type_id, inv)
            kind = inv.parent(pname).backend  # type: ignore[union-attr]
            want = self.host.identity(parent=pname, requested=requested, inventory=inv)
            clash = inv.instance(want)
            if clash is not None or self.host.exists(want, kind):
                raise AlreadyExists(want, clash.parent if clash else None)
            vtype = find_type(inv, pname, type_id)
            if vtype.available <= 0:
                from .placement import type_mix  # the rule, and who holds the GPU, when that is the reason

                mix = type_mix(inv, pname, vtype.type_id)
                if mix is not None:
                    raise TypeMix(vtype.profile or vtype.type_id, *mix)
                raise NoCapacity(vtype.type_id, pname, detail="available_instances is 0")
            who = self.host.busy(pname, inv)  # an NVIDIA VF open by a VM must not get a vGPU
            if who:
                raise DeviceInUse(pname, who)
            if params is not None and inv.parent(pname).vendor is not Vendor.NVIDIA:  # type: ignore[union-attr]
                raise InvalidInput(f"vGPU parameters (--param) are NVIDIA's: parent {pname} is not an NVIDIA GPU")
            intent = Intent("create", want, pname, vtype.type_id, str(kind), origin)
            self.store.save(state.with_intent(intent))
            try:
                inst = self.host.create(parent=pname, type_id=vtype.type_id, uuid=want, inventory=inv)
            except BaseException:
                self.store.save(state)  # the host refused: nothing was made, forget the intent
                raise
            try:
                self.store.save(state.settle(intent, exists=True))
            except BaseException:
                self.host.remove(inst)  # cannot record ownership: undo the create rather than leak it
                self.store.save(state)
                raise
            if params is not None:
                from . import vgpu_params

                try:
                    vgpu_params.write(self.host.paths, inst, params)
                except BaseException:
                    undo = Intent("remove", inst.uuid, inst.parent, inst.type_id, str(kind))
                    owned = state.settle(intent, exists=True)
                    self.store.save(owned.with_intent(undo))
                    self.host.remove(inst)  # half-done: a vGPU without its parameters is not what was asked
                    self.store.save(owned.settle(undo, exists=False))
                    raise
            return inst, inv

    def _create_parent(self, parent: str, type_id: str, inv: Inventory) -> str:
        """The parent a create goes to: ``parent`` itself, or, where ``parent`` names a physical GPU whose SR-IOV VFs
        are the parents, the first VF that offers the type, has no vGPU and that nothing holds open."""
        try:
            return self.host.resolve_parent(parent, inv)
        except UnknownParent:
            gpu = (canonical_parent_name(parent) or parent).lower()
            vfs = [p for p in inv.parents if p.is_vf and p.gpu.lower() == gpu]
            if vfs:
                return self._free_vf(vfs, type_id, inv)
            if gpu in self.host.sriov_disabled():
                raise SriovDisabled(gpu) from None
            raise

    def _free_vf(self, vfs: Sequence[Parent], type_id: str, inv: Inventory) -> str:
        used = {i.parent for i in inv.instances}
        offering = [p.name for p in vfs if p.name not in used and _offers(inv, p.name, type_id)]
        for name in offering:
            if not self.host.busy(name, inv):
                return name
        hosted = sorted({i.type_id for i in inv.instances if i.parent in {p.name for p in vfs}})
        free = [p.name for p in vfs if p.name not in used]
        if not offering and not hosted and free:
            find_type(inv, free[0], type_id)  # the GPU offers no such type: UnknownType says what it offers
        why = f"it hosts {', '.join(hosted)}" if hosted else "no VF is free"
        held = f"; {len(offering)} VF(s) that could are held open" if offering else ""
        raise NoCapacity(type_id, vfs[0].gpu, detail=f"no free VF of this GPU offers it now: {why}{held}")

    # --- destroy ---------------------------------------------------------------------------------------------------
    def destroy(self, uuid: str, *, foreign: bool = False) -> Instance:
        """Destroy one instance; refuse (``ForeignManaged``) where mdevctl defines it: mdevctl would bring it back."""
        inst, _ = self.destroy_undefining(uuid, foreign=foreign, undefine=False)
        assert inst is not None
        return inst

    def destroy_undefining(
        self, uuid: str, *, foreign: bool = False, undefine: bool = True
    ) -> "tuple[Optional[Instance], Any]":
        """Destroy one instance and, with ``undefine``, retire mdevctl's definition of it first (journalled like the
        removal, put back if the removal then fails).  A definition that has no device yet is only retired.
        Returns the instance destroyed (None: there was none) and the definition retired (None: there was none)."""
        from .host import mdevctl

        want = canonical_instance_id(uuid)
        if want is None:
            raise BadUuid(uuid)
        with HostLock(self.host.paths, self.lock_timeout):
            inv = self.host.inventory()
            state = self._locked_state(inv)
            inst = inv.instance(want)
            defn = mdevctl.read_checked(self.host.paths, inv).get(want)
            if inst is None and not (undefine and defn is not None):
                raise UnknownInstance(want)
            if inst is not None and want not in state.owned and not foreign:
                raise NotOwned(want)
            if defn is not None and not undefine:
                raise ForeignManaged(want, defn.path, defn.start)
            who = self.users([inst]).get(want) if inst is not None else None
            if who:
                raise DeviceInUse(want, who)
            saved = None
            if defn is not None:
                state, saved = self.undefine(state, defn)
            if inst is None:
                return None, defn
            intent = Intent("remove", want, inst.parent, inst.type_id, str(inst.backend))
            self.store.save(state.with_intent(intent))
            try:
                self.host.remove(inst)
            except BaseException:
                still = self.host.exists(want, inst.backend)
                self.store.save(state.settle(intent, exists=still) if want in state.owned else state)
                if still and defn is not None:
                    self.redefine(defn, saved)  # the device stays: so does mdevctl's definition of it
                raise
            self.store.save(state.settle(intent, exists=False))
            return inst, defn

    def undefine(self, state: State, defn: Any) -> "tuple[State, Optional[bytes]]":
        """Retire mdevctl's definition ``defn`` (caller holds the lock), journalled: the intent is saved first.
        Returns the new state and the file's bytes, for ``redefine`` to roll back with."""
        from .host import mdevctl

        saved = mdevctl.read_bytes(defn.path)
        intent = Intent("undefine", defn.uuid, defn.parent, defn.type_id or "", "mdevctl")
        self.store.save(state.with_intent(intent))
        try:
            mdevctl.remove_definition(defn)
        except OSError as e:
            self.store.save(state)
            raise HostIOError(defn.path, e.errno or errno.EIO, action="remove mdevctl's definition") from None
        done = state.with_intent(intent).settle(intent, exists=False)
        self.store.save(done)
        return done, saved

    def redefine(self, defn: Any, saved: Optional[bytes]) -> None:
        """Put back a definition ``undefine`` retired (rolling back); a failure is logged, not raised."""
        from .host import mdevctl

        try:
            mdevctl.restore_definition(defn, saved)
        except OSError as e:  # the removal's error is the one to report; say what is left to do
            import logging

            logging.getLogger("vgpuctl.lifecycle").warning(
                "could not put back mdevctl's definition %s (%s): define it again with mdevctl",
                defn.path,
                os.strerror(e.errno or errno.EIO),
            )


def _offers(inventory: Inventory, parent: str, type_id: str) -> bool:
    """Whether ``parent`` has room for the type ``type_id`` names; a name meaning two types there is
    ``AmbiguousType`` (exit 2), as on every path, not "no free VF offers it"."""
    try:
        t = find_type(inventory, parent, type_id)
    except UnknownType:
        return False
    return t.available > 0
