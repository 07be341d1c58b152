"""Attach and detach: give domains their vGPUs and take them back, with templates, ownership metadata and roll-back.

* ``Attachments``: the code path of ``vgpuctl attach``/``detach``; it creates and destroys instances through
  ``Lifecycle`` when asked to.  Its collaborators (an open ``conn.Virt``, the lifecycle, the templates) come in.
* ``AttachmentSource``: the reconciler's libvirt side (``apply.AttachmentBackend``), over the same ``Attachments``.
* ``check_multi_vgpu``: NVIDIA's rule for several vGPUs in one VM.
* ``VirtLock``: serialises attach and detach.
"""

from __future__ import annotations

import logging
import uuid as uuidlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

from ..errors import (
    AttachedElsewhere,
    BadUuid,
    InvalidInput,
    LibvirtRefused,
    NotAttached,
    NotOwned,
    TenantMismatch,
    UnknownInstance,
)
from ..fsutil import FileLock
from ..model import PCI_ADDR_RE, Instance, Inventory, Vendor, VgpuType, canonical_parent_name, canonical_uuid
from ..paths import HostPaths
from .conn import Libvirt, Virt
from .domxml import DomainInfo, ManagedVgpu, Scope, match_xml, resolve_scope

if TYPE_CHECKING:  # the planner's types; plan.py imports nothing from here
    from ..plan import Action

log = logging.getLogger("vgpuctl.virt")


def board_and_series(vtype: Optional[VgpuType]) -> Tuple[Optional[str], Optional[str]]:
    """An NVIDIA type's board (``L40S`` of ``L40S-8Q``, ``H200X`` of ``H200X-1-18C``) and series letter."""
    profile = vtype.profile if vtype is not None else None
    if not profile or "-" not in profile:
        return None, vtype.series if vtype is not None else None
    return profile.split("-", 1)[0].upper(), (vtype.series if vtype is not None else None)


def check_multi_vgpu(
    inv: Inventory, planned: Instance, vtype: Optional[VgpuType], others: Sequence[str], *, domain: str
) -> None:
    """NVIDIA's rule for several vGPUs in one VM (Virtual GPU Software User Guide, "Multiple vGPU Support"): every
    vGPU assigned to a VM must be of the same board type and the same series.  ``others``: the vGPUs the domain
    has already; a second NVIDIA vGPU that breaks the rule is ``MultiVgpuConflict``."""
    p = inv.parent(planned.parent)
    if p is None or p.vendor is not Vendor.NVIDIA:
        return
    board, series = board_and_series(vtype)
    for ident in others:
        inst = inv.instance(ident)
        if inst is None:
            continue
        op = inv.parent(inst.parent)
        if op is None or op.vendor is not Vendor.NVIDIA:
            continue
        ot = inv.type_on(inst.parent, inst.type_id)
        ob, os_ = board_and_series(ot)
        if (board and ob and board != ob) or (series and os_ and series != os_):
            from ..errors import MultiVgpuConflict

            raise MultiVgpuConflict(
                domain,
                planned.uuid,
                (vtype.profile if vtype else None) or planned.type_id,
                ident,
                (ot.profile if ot else None) or inst.type_id,
            )


# --- attach and detach ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttachResult:
    domain: str
    domain_uuid: str
    instance: Instance
    scope: Scope
    created: bool  #: vgpuctl made the instance for this attach
    changed: bool  #: anything changed (False: it was attached and recorded already)


@dataclass(frozen=True)
class DetachResult:
    domain: str
    domain_uuid: str
    uuid: str
    scope: Scope
    destroyed: bool


class VirtLock(FileLock):
    """Serialises vgpuctl's attach/detach (``run/vgpuctl/virt.lock``), so two attaches cannot both take one vGPU.

    Separate from the host lock, which ``Lifecycle`` takes inside it for create and destroy.
    """

    def __init__(self, paths: HostPaths, timeout: float) -> None:
        super().__init__(paths.run_dir / "virt.lock", timeout, mode=0o600, root=paths.root)


class Attachments:
    """Give domains their vGPUs and take them back.  Collaborators come in; nothing here opens them."""

    def __init__(self, virt: Virt, lifecycle: Any, templates: Any) -> None:
        self.virt = virt
        self.lc = lifecycle  # vgpuctl.lifecycle.Lifecycle
        self.templates = templates  # vgpuctl.virt.templates.Templates

    def _domain(self, name: str, *, live: bool, config: bool, action: str) -> "tuple[Any, DomainInfo, Scope]":
        dom = self.virt.lookup(name)
        info = self.virt.info(dom, name)
        scope = resolve_scope(live=live, config=config, running=info.running)
        if scope.live and not info.running:
            raise LibvirtRefused(action, name, "the domain is not running; use --config for its persistent definition")
        if scope.config and not info.persistent:
            raise LibvirtRefused(action, name, "the domain is transient (no persistent definition); use --live")
        return dom, info, scope

    def attach(
        self,
        domain: str,
        *,
        uuid: Optional[str] = None,
        parent: Optional[str] = None,
        type_id: Optional[str] = None,
        live: bool = False,
        config: bool = False,
        display: Optional[bool] = None,
        ramfb: Optional[bool] = None,
        tenant: Optional[str] = None,
    ) -> AttachResult:
        """Attach an existing instance (``uuid``) or a new one (``parent`` and ``type_id``, optionally ``uuid``);
        ``tenant`` is recorded in the domain's vgpuctl metadata (refused if another tenant is recorded there)."""
        creating = parent is not None or type_id is not None
        if creating and (parent is None or type_id is None):
            raise InvalidInput("give both --parent and --type to create a vGPU for the domain, or --uuid alone")
        if not creating and uuid is None:
            raise InvalidInput("say which vGPU to attach: --uuid UUID, or --parent PARENT --type TYPE to create one")
        if ramfb and display is False:
            raise InvalidInput("--ramfb needs the vGPU's display: drop --no-display")
        if ramfb and display is None:
            display = True
        want = str(uuidlib.uuid4()) if uuid is None else canonical_uuid(uuid)
        if want is None:
            raise BadUuid(uuid or "")
        with VirtLock(self.lc.host.paths, self.lc.lock_timeout):
            return self.attach_held(
                domain,
                uuid=want,
                creating=creating,
                parent=parent,
                type_id=type_id,
                live=live,
                config=config,
                display=display,
                ramfb=ramfb,
                tenant=tenant,
            )

    def attach_held(
        self,
        domain: str,
        *,
        uuid: str,
        creating: bool = False,
        parent: Optional[str] = None,
        type_id: Optional[str] = None,
        live: bool = False,
        config: bool = False,
        display: Optional[bool] = None,
        ramfb: Optional[bool] = None,
        tenant: Optional[str] = None,
    ) -> AttachResult:
        """``attach`` for a caller that holds the ``VirtLock`` already (``vgpuctl apply``); ``uuid`` is canonical."""
        want = uuid
        dom, info, scope = self._domain(domain, live=live, config=config, action="attach a vGPU to")
        tenant = (tenant or "").strip() or None
        if tenant is not None:
            for x in info.xml_for(scope):
                if x.tenant is not None and x.tenant != tenant:
                    raise TenantMismatch(info.name, x.tenant, tenant)
        inv, _state = self.lc.read()
        if creating:
            from ..lifecycle import find_type

            pname = self.lc.host.resolve_parent(parent, inv)
            vtype = find_type(inv, pname, type_id or "")
            planned = Instance(uuid=want, parent=pname, type_id=vtype.type_id, backend=inv.parent(pname).backend)  # type: ignore[union-attr]
        else:
            existing = inv.instance(want)
            if existing is None:
                raise UnknownInstance(want)
            planned = existing
            vtype = inv.type_on(existing.parent, existing.type_id)
        others = [u.domain for u in self.virt.snapshot().uses(planned.uuid) if u.domain_uuid != info.uuid]
        if others:
            raise AttachedElsewhere(planned.uuid, others)
        xmls = info.xml_for(scope)
        check_multi_vgpu(
            inv, planned, vtype, sorted({d for x in xmls for d in x.devices} - {planned.uuid}), domain=info.name
        )
        display_taken = any(d != planned.uuid for x in xmls for d in x.displays)
        if display_taken and (display or ramfb):
            log.info(
                "domain %r has a vGPU with its display on already: %s gets display and ramfb off (a second "
                "ramfb stops the VM from starting)",
                info.name,
                planned.uuid,
            )
        rendered = self.templates.for_instance(
            planned, vtype, domain=info.name, display=display, ramfb=ramfb, display_taken=display_taken
        )
        entry = ManagedVgpu(
            planned.uuid,
            planned.parent,
            planned.type_id,
            str(planned.backend),
            (vtype.name or "") if vtype is not None else "",
        )
        missing = Scope(
            live=scope.live and planned.uuid not in (info.live.devices if info.live else ()),
            config=scope.config and planned.uuid not in (info.config.devices if info.config else ()),
        )
        unrecorded = [
            x
            for x in info.xml_for(scope)
            if x.managed_entry(planned.uuid) != entry or (tenant is not None and x.tenant != tenant)
        ]
        if not missing and not unrecorded:
            return AttachResult(info.name, info.uuid, planned, scope, created=False, changed=False)

        inst = self.lc.create(parent=planned.parent, type_id=planned.type_id, uuid=want) if creating else planned
        attached = False
        try:
            if missing:
                self.virt.attach_device(dom, info.name, rendered.xml, missing)
                attached = True
            for x, one in ((info.live, Scope(True, False)), (info.config, Scope(False, True))):
                if x is not None and (scope.live if one.live else scope.config):
                    kept = [m for m in x.managed if m.uuid != entry.uuid]
                    self.virt.set_managed(
                        dom, info.name, kept + [entry], one, tenant=tenant or x.tenant, groups=x.groups
                    )
        except BaseException:
            self._undo(dom, info.name, inst.uuid, missing if attached else Scope(False, False), created=creating)
            raise
        return AttachResult(info.name, info.uuid, inst, scope, created=creating, changed=True)

    def _undo(self, dom: Any, name: str, ident: str, attached: Scope, *, created: bool) -> None:
        """Best-effort roll-back of a failed attach: take the device back, destroy what this attach created."""
        if attached:
            try:
                self.virt.detach_device(dom, name, match_xml(ident), attached)
            except Exception as e:
                log.warning("roll-back: could not detach %s from %r again: %s", ident, name, e)
        if created:
            try:
                self.lc.destroy(ident)
            except Exception as e:
                log.warning("roll-back: could not destroy %s, which this attach created: %s", ident, e)

    def detach(
        self,
        domain: str,
        *,
        uuid: Optional[str] = None,
        live: bool = False,
        config: bool = False,
        destroy: bool = False,
    ) -> List[DetachResult]:
        """Detach one vGPU (``uuid``), or every one vgpuctl manages in the domain; optionally destroy them."""
        want: Optional[str] = None
        if uuid is not None:
            want = canonical_uuid(uuid) or (canonical_parent_name(uuid) if PCI_ADDR_RE.match(uuid) else None)
            if want is None:
                raise BadUuid(uuid)
        with VirtLock(self.lc.host.paths, self.lc.lock_timeout):
            return self.detach_held(domain, uuid=want, live=live, config=config, destroy=destroy)

    def detach_held(
        self,
        domain: str,
        *,
        uuid: Optional[str] = None,
        live: bool = False,
        config: bool = False,
        destroy: bool = False,
    ) -> List[DetachResult]:
        """``detach`` for a caller that holds the ``VirtLock`` already; ``uuid`` is canonical (or None: all)."""
        want = uuid
        dom, info, scope = self._domain(domain, live=live, config=config, action="detach a vGPU from")
        xmls = info.xml_for(scope)
        if want is not None:
            # a metadata entry alone (an earlier detach interrupted between its two steps) is cleaned up too
            if not any(want in x.devices or x.managed_entry(want) is not None for x in xmls):
                raise NotAttached(info.name, want)
            targets = [want]
        else:
            targets = sorted({m.uuid for x in xmls for m in x.managed if m.uuid in x.devices})
            if not targets:
                raise NotAttached(info.name)
        if destroy:
            inv, state = self.lc.read()
            for t in targets:  # preconditions before the first change
                if inv.instance(t) is not None and t not in state.owned:
                    raise NotOwned(t)
        for t in targets:
            where = Scope(
                live=scope.live and info.live is not None and t in info.live.devices,
                config=scope.config and info.config is not None and t in info.config.devices,
            )
            if where:
                self.virt.detach_device(dom, info.name, match_xml(t), where)
        for x, one in ((info.live, Scope(True, False)), (info.config, Scope(False, True))):
            if x is not None and (scope.live if one.live else scope.config):
                kept = [m for m in x.managed if m.uuid not in targets]
                if len(kept) != len(x.managed):
                    self.virt.set_managed(dom, info.name, kept, one, tenant=x.tenant, groups=x.groups)
        out = []
        for t in targets:
            gone = False
            if destroy and self.lc.read()[0].instance(t) is not None:
                self.lc.destroy(t)
                gone = True
            out.append(DetachResult(info.name, info.uuid, t, scope, destroyed=gone))
        return out


class AttachmentSource:
    """The reconciler's libvirt side (``apply.AttachmentBackend``): the attach lock, and the attach/detach steps of
    ``vgpuctl apply``, done by ``Attachments`` (same templates, metadata and scopes as ``vgpuctl attach
    --live/--config``) on the pass's one connection (``conn.Libvirt``).  What the domains reference is read by the
    observation step (``vgpuctl.observe``), not here."""

    def __init__(self, libvirt: Libvirt, lifecycle: Any, *, templates: Any = None) -> None:
        self.libvirt = libvirt
        self.lc = lifecycle  # vgpuctl.lifecycle.Lifecycle
        self._templates = templates

    @property
    def uri(self) -> str:
        return self.libvirt.uri

    @property
    def templates(self) -> Any:
        if self._templates is None:
            from .templates import Templates  # jinja2: only when something is attached

            self._templates = Templates(self.lc.host.paths)
        return self._templates

    def lock(self) -> VirtLock:
        """The attach lock; ``apply`` takes it before the host lock, in the order ``vgpuctl attach`` does."""
        return VirtLock(self.lc.host.paths, self.lc.lock_timeout)

    def attach(self, action: "Action") -> bool:
        """Attach ``action.uuid`` to ``action.domain`` in ``action.mode``'s definitions; whether anything changed.
        The caller holds ``lock()``."""
        live, config = _mode_scope(action)
        r = Attachments(self.libvirt.connection(write=True), self.lc, self.templates).attach_held(
            action.domain or "", uuid=action.uuid, live=live, config=config
        )
        return r.changed

    def detach(self, action: "Action") -> None:
        """Detach ``action.uuid`` from ``action.domain`` and drop vgpuctl's record of it.  The caller holds
        ``lock()``."""
        live, config = _mode_scope(action)
        Attachments(self.libvirt.connection(write=True), self.lc, self.templates).detach_held(
            action.domain or "", uuid=action.uuid, live=live, config=config
        )


def _mode_scope(action: "Action") -> Tuple[bool, bool]:
    mode = str(action.mode or "config")
    return mode in ("live", "both"), mode in ("config", "both")
