"""Living beside mdevctl (and libvirt's node devices, which libvirt stores through mdevctl): who defines each
instance, and ``vgpuctl adopt --from-mdevctl``, which moves mdevctl's definitions into vgpuctl's desired state.

Who defines an instance (``definers``), in this order:

* ``vgpuctl:<name>``  the desired state declares it (``etc/vgpuctl``);
* ``mdevctl:auto`` / ``mdevctl:manual``  mdevctl has a definition (``etc/mdevctl.d/<parent>/<uuid>``) that starts it
  at boot / on ``mdevctl start``; ``mdevctl:invalid`` for a file vgpuctl cannot read;
* ``hook``  vgpuctl's libvirt hook made it for a running domain.

An instance that is both ``vgpuctl:`` and ``mdevctl:auto`` is *double-managed*: ``plan`` blocks it
``foreign-managed``, and nothing changes it until one tool lets go.

``adopt`` (``Adopter.adopt``), under the host lock, checks everything before its first write: every definition it
takes is valid, has no sysfs attributes (the desired state has no place for them), is on a registered parent that
offers its type, and the desired state with the new file still loads.  Then it writes ``conf.d/<file>``
atomically, records the existing devices as owned by the desired state (origin ``apply``), and, with
``undefine``, retires mdevctl's definitions one by one, each journalled; a failure puts back what it retired, the
previous file and the ownership records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Collection, List, Mapping, Optional, Sequence, Tuple

from .errors import ConfigError, InvalidInput, NotFound
from .host import mdevctl
from .model import canonical_uuid
from .state import ORIGIN_APPLY, HostLock, Owned

ADOPT_FILE = "mdevctl.yaml"  #: ``conf.d/mdevctl.yaml``: what ``adopt --from-mdevctl`` wrote


def definers(
    uuid: str,
    *,
    defs: Mapping[str, "mdevctl.Definition"],
    desired: Optional[Mapping[str, str]],
    hook: Collection[str] = (),
) -> Tuple[str, ...]:
    """Who defines ``uuid``: ``vgpuctl:<name>``, ``mdevctl:<start>``, ``hook``, in that order; ``desired``: uuid ->
    desired instance name (None: the desired state could not be read, so vgpuctl's part is unknown)."""
    out: List[str] = []
    if desired is not None and uuid in desired:
        out.append(f"vgpuctl:{desired[uuid]}")
    d = defs.get(uuid)
    if d is not None:
        out.append(d.label)
    if uuid in hook:
        out.append("hook")
    return tuple(out)


def double_managed(defined_by: Sequence[str]) -> bool:
    """Whether an instance is in vgpuctl's desired state and in an mdevctl definition that starts it by itself."""
    return any(x.startswith("vgpuctl:") for x in defined_by) and any(
        x in ("mdevctl:auto", "mdevctl:invalid") for x in defined_by
    )


def adoption_name(d: "mdevctl.Definition", taken: Collection[str]) -> str:
    """The desired-state name of an adopted definition: ``mdevctl-<first 8 hex digits>``, longer where taken."""
    base = d.uuid.replace("-", "")
    for n in (8, 12, 16, 32):
        name = f"mdevctl-{base[:n]}"
        if name not in taken:
            return name
    i = 2
    while f"mdevctl-{base}-{i}" in taken:
        i += 1
    return f"mdevctl-{base}-{i}"


@dataclass(frozen=True)
class Adopted:
    """One definition ``adopt`` took: its desired-state name, and whether it was new to the desired state, its device
    exists, and mdevctl's definition was retired."""

    definition: "mdevctl.Definition"
    name: str
    new: bool
    active: bool
    undefined: bool = False


def select(defs: "mdevctl.Definitions", uuids: Sequence[str]) -> List["mdevctl.Definition"]:
    """The definitions ``uuids`` name (all of them when none are named); an unknown or malformed uuid is an error."""
    by_uuid = defs.by_uuid()
    if not uuids:
        return [by_uuid[u] for u in sorted(by_uuid)]
    out = []
    for raw in uuids:
        u = canonical_uuid(raw)
        if u is None:
            from .errors import BadUuid

            raise BadUuid(raw)
        if u not in by_uuid:
            raise NotFound(f"mdevctl has no definition of {u} (see 'vgpuctl list --defined')")
        if by_uuid[u] not in out:
            out.append(by_uuid[u])
    return out


def check_adoptable(
    d: "mdevctl.Definition", parents: Mapping[str, str], has_type: Callable[[str, str], bool]
) -> Optional[str]:
    """Why ``d`` cannot be adopted (one line naming its file and what to do), or None."""
    if not d.valid:
        return f"{d.path} is not a definition vgpuctl can read; fix or remove it, or name the uuids to adopt without it"
    if d.attrs:
        keys = ", ".join(k for k, _ in d.attrs)
        return (
            f"{d.path} sets sysfs attributes ({keys}) that vgpuctl's desired state cannot carry; leave {d.uuid} "
            "to mdevctl (name the other uuids to adopt), or drop the attributes with 'mdevctl modify'"
        )
    parent = parents.get(d.parent.lower())
    if parent is None:
        return (
            f"{d.path} defines {d.uuid} on parent {d.parent}, which is not registered; adopt it once the parent "
            "is back, or name the other uuids to adopt"
        )
    if d.type_id is None or not has_type(parent, d.type_id):
        return (
            f"{d.path} defines {d.uuid} with type {d.type_id}, which {parent} does not offer; fix the definition "
            "('mdevctl modify'), or name the other uuids to adopt"
        )
    return None


def render_dropin(entries: Sequence[Tuple[str, str, str, str]]) -> str:
    """The ``conf.d`` file for adopted instances: (name, uuid, type, parent) each, in order."""
    import json

    lines = [
        "# vgpuctl desired state: instances adopted from mdevctl's definitions (vgpuctl adopt --from-mdevctl)",
        "version: 1",
    ]
    if not entries:
        lines.append("instances: {}")
    else:
        lines.append("instances:")
        for name, uuid, type_id, parent in entries:
            lines += [
                f"  {name}:",
                f"    uuid: {json.dumps(uuid)}",
                f"    type: {json.dumps(type_id)}",
                f"    parent: {json.dumps(parent)}",
            ]
    return "\n".join(lines) + "\n"


class Adopter:
    """``vgpuctl adopt --from-mdevctl``: over a ``Lifecycle`` (host, state store, lock)."""

    def __init__(self, lifecycle) -> None:  # type: ignore[no-untyped-def]
        self.lc = lifecycle
        self.paths = lifecycle.host.paths

    @property
    def dropin(self) -> str:
        from .spec import DROPIN_DIR

        return os.fspath(self.paths.config_dir / DROPIN_DIR / ADOPT_FILE)

    def adopt(self, uuids: Sequence[str] = (), *, undefine: bool = False) -> List[Adopted]:
        """Adopt mdevctl's definitions ``uuids`` (all when empty): every check before the first write, then the
        adopt file, ownership and, with ``undefine``, mdevctl's definitions; a failed undefine rolls all back."""
        from dataclasses import replace

        with HostLock(self.paths, self.lc.lock_timeout):
            inv = self.lc.host.inventory()
            state = self.lc._locked_state(inv)
            chosen = select(mdevctl.read_checked(self.paths, inv), uuids)
            parents = {p.name.lower(): p.name for p in inv.parents}
            desired = self._check(chosen, inv, parents)
            previous, text, out = self._compose(chosen, inv, parents, desired)
            # --- writes: the file, ownership, then mdevctl's definitions --------------------------------------------
            changed_file = any(a.new for a in out)
            if changed_file:
                _write_atomic(self.paths, self.dropin, text)
            owned = dict(state.owned)
            for a in out:
                inst = inv.instance(a.definition.uuid)
                if inst is not None and inst.uuid not in owned:
                    owned[inst.uuid] = Owned(
                        inst.uuid, inst.parent, inst.type_id, str(inst.backend), _now(), ORIGIN_APPLY
                    )
            original = state
            new_state = replace(state, owned=owned)
            if new_state != state:
                self.lc.store.save(new_state)
            if undefine:
                self._retire(new_state, out, original, previous if changed_file else _UNCHANGED)
            return out

    def _check(self, chosen: Sequence["mdevctl.Definition"], inv: Any, parents: Mapping[str, str]) -> Any:
        """Refuse (``InvalidInput``) a definition vgpuctl cannot adopt as it is, or one the desired state already
        means otherwise; the desired state it read, when all agree."""
        from . import spec

        def has_type(parent: str, type_id: str) -> bool:
            return inv.type_on(parent, type_id) is not None

        for d in chosen:
            why = check_adoptable(d, parents, has_type)
            inst = inv.instance(d.uuid)
            if (
                why is None
                and inst is not None
                and (inst.parent.lower(), inst.type_id) != (d.parent.lower(), d.type_id)
            ):
                why = (
                    f"{d.path} defines {d.uuid} as {d.type_id} on {d.parent}, but the device is {inst.type_id} "
                    f"on {inst.parent}; make them agree first ('mdevctl modify' or 'mdevctl stop/start')"
                )
            if why is not None:
                raise InvalidInput(why)
        desired = spec.load(self.paths.config_dir)
        for x in desired.instances:  # already desired: the desired state must mean the same device
            d = next((c for c in chosen if c.uuid == x.uuid), None)
            if d is None:
                continue
            parent = parents[d.parent.lower()]
            pinned = spec.host_parent(inv, x.parent) if x.parent is not None else parent
            if pinned != parent or spec.desired_type(inv, parent, x) != d.type_id:
                raise InvalidInput(
                    f"{d.path} defines {d.uuid} as {d.type_id} on {parent}, but the desired state already has it "
                    f"as instance {x.name} ({x.type} on {x.parent or 'a placed parent'}, {x.mark.path}); make "
                    "them agree first"
                )
        return desired

    def _compose(
        self, chosen: Sequence["mdevctl.Definition"], inv: Any, parents: Mapping[str, str], desired: Any
    ) -> Tuple[Optional[str], str, List[Adopted]]:
        """(the adopt file as it is, its new text, what is adopted): the file's entries plus the new ones (an
        instance already desired anywhere is not repeated), checked against every other desired-state file."""
        from . import spec

        known = {x.uuid: x.name for x in desired.instances}
        previous = _read_text(self.dropin)
        current = spec.parse(previous, path=self.dropin) if previous is not None else spec.DesiredState()
        entries = [(x.name, x.uuid, x.type, x.parent or "") for x in current.instances]
        taken = {x.name for x in desired.instances}
        out: List[Adopted] = []
        for d in chosen:
            parent = parents[d.parent.lower()]
            if d.uuid in known:
                out.append(Adopted(d, known[d.uuid], False, inv.instance(d.uuid) is not None))
                continue
            name = adoption_name(d, taken)
            taken.add(name)
            entries.append((name, d.uuid, d.type_id or "", parent))
            out.append(Adopted(d, name, True, inv.instance(d.uuid) is not None))
        text = render_dropin(entries)
        files = [f for f in spec.spec_files(self.paths.config_dir) if os.fspath(f) != self.dropin]
        merged = [i for f in files for i in spec.parse(_read_text(os.fspath(f)) or "", path=os.fspath(f)).instances]
        merged += spec.parse(text, path=self.dropin).instances
        spec.merge(merged)  # a clash with another file is a ConfigError now, before anything is written
        return previous, text, out

    def _retire(self, state: Any, out: List[Adopted], original: Any, previous: Any) -> None:
        """Undefine each adopted definition in mdevctl (``out`` marks them); on any failure put back what was
        retired, the state file as it was and the adopt file (``previous``; ``_UNCHANGED`` if not written)."""
        retired: List[Tuple["mdevctl.Definition", Optional[bytes]]] = []
        try:
            for i, a in enumerate(out):
                state, saved = self.lc.undefine(state, a.definition)
                retired.append((a.definition, saved))
                out[i] = Adopted(a.definition, a.name, a.new, a.active, True)
        except BaseException:
            for d, saved in reversed(retired):
                self.lc.redefine(d, saved)
            self.lc.store.save(original)  # the devices are not the desired state's after all
            if previous is None:
                _unlink(self.dropin)
            elif previous is not _UNCHANGED:
                _write_atomic(self.paths, self.dropin, previous)
            raise


def _now() -> float:
    import time

    return time.time()


def _read_text(path: str) -> Optional[str]:
    from .configfile import read_config

    return read_config(path, missing_ok=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_atomic(paths: Any, path: str, text: str) -> None:
    """The adopt file, written with the one atomic write (``fsutil.write_atomic``); ``conf.d`` is made if needed."""
    from .fsutil import ensure_dirs, write_atomic

    ensure_dirs(os.path.dirname(path), below=paths.root)
    write_atomic(path, text, mode=0o644)


#: ``_retire``'s word for "the adopt file was not written"
_UNCHANGED = object()


__all__ = ["Adopter", "Adopted", "definers", "double_managed", "ConfigError"]
