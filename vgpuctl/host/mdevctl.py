"""mdevctl's persistent definitions: ``etc/mdevctl.d/<parent>/<uuid>``, read (and retired) under the host root.

mdevctl 1.x (Debian 12 ships 1.2.0) stores one JSON file per defined mediated device::

    etc/mdevctl.d/0000:3b:00.0/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
    {
      "mdev_type": "nvidia-231",
      "start": "auto",                 # "auto": its udev rule starts it when the parent registers; "manual"
      "attrs": [ {"name": "value"} ]   # sysfs attributes written after create, in order
    }

``etc/mdevctl.d/scripts.d`` holds mdevctl's callouts and notifiers and is no parent.  libvirt's
``virsh nodedev-define`` of an mdev stores it through mdevctl, so these files are also libvirt's persistent mdevs.

Two layers: pure parsing (``parse_definition``, ``check``) that never touches a file, and the bounded I/O
(``read_definitions``, ``remove_definition``, ``restore_definition``).  A file vgpuctl cannot trust (corrupt or
truncated JSON, a symlink, too large) is still a definition of its uuid, with ``start`` unknown: mdevctl may act on it
at boot, so vgpuctl must not fight it either.  Every such file gives one ``Problem`` naming it, which the commands show
as a one-line warning; nothing is ever rewritten to "fix" it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from ..fsutil import replace_atomic
from ..model import Inventory, canonical_parent_name, canonical_uuid
from ..paths import HostPaths

log = logging.getLogger("vgpuctl.mdevctl")

AUTO = "auto"
MANUAL = "manual"
SCRIPTS_DIR = "scripts.d"
MAX_FILE_BYTES = 64 * 1024  #: a definition is a few hundred bytes; anything bigger is not one
MAX_ENTRIES = 4096  #: parents, and definitions per parent, read at most


@dataclass(frozen=True)
class Definition:
    """One mdevctl definition.  ``start`` is None (and ``type_id`` may be None) when the file could not be read."""

    uuid: str
    parent: str  #: canonical parent name (the directory's name, PCI addresses lowercased)
    type_id: Optional[str]
    start: Optional[str]  #: "auto", "manual", or None: unreadable
    attrs: Tuple[Tuple[str, str], ...] = ()
    path: str = ""

    @property
    def valid(self) -> bool:
        return self.start is not None

    @property
    def auto(self) -> bool:
        """Whether mdevctl may create it by itself (at boot, when its parent registers).  An unreadable file counts:
        vgpuctl cannot tell that it will not."""
        return self.start != MANUAL

    @property
    def label(self) -> str:
        """``mdevctl:auto``, ``mdevctl:manual``, or ``mdevctl:invalid`` for a file vgpuctl could not read."""
        return f"mdevctl:{self.start or 'invalid'}"


@dataclass(frozen=True)
class Problem:
    """A file under ``etc/mdevctl.d`` that vgpuctl warns about; ``line()`` is the one-line warning."""

    path: str
    problem: str

    def line(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class Definitions:
    """Every definition found (sorted by parent, uuid) and the problems met reading them."""

    definitions: Tuple[Definition, ...] = ()
    problems: Tuple[Problem, ...] = ()

    def by_uuid(self) -> Dict[str, Definition]:
        """uuid -> its definition (mdevctl keys by uuid across parents: the first one wins, the others warn)."""
        out: Dict[str, Definition] = {}
        for d in self.definitions:
            out.setdefault(d.uuid, d)
        return out

    def get(self, uuid: str) -> Optional[Definition]:
        return self.by_uuid().get(uuid)

    def __len__(self) -> int:
        return len(self.definitions)


class DefinitionError(ValueError):
    """A definition file's content is not an mdevctl definition; the message says why (one line)."""


# --- pure ---------------------------------------------------------------------------------------------------------
def parse_definition(data: bytes, *, uuid: str, parent: str, path: str = "") -> Definition:
    """The definition in ``data`` (a file's bytes), or ``DefinitionError``.  Accepts what mdevctl 1.x accepts:
    ``mdev_type`` and ``start`` present, ``attrs`` absent, null or a list of one-key objects with string values."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise DefinitionError("not UTF-8 text") from None
    except RecursionError:
        raise DefinitionError("not valid JSON (nested too deeply)") from None
    except ValueError as e:
        raise DefinitionError(f"not valid JSON ({_first_line(e)})") from None
    if not isinstance(doc, dict):
        raise DefinitionError("not a JSON object")
    mdev_type = doc.get("mdev_type")
    start = doc.get("start")
    if not isinstance(mdev_type, str) or not mdev_type or "/" in mdev_type or mdev_type in (".", ".."):
        raise DefinitionError('has no valid "mdev_type"')
    if start not in (AUTO, MANUAL):
        # mdevctl treats anything but "auto" as manual; vgpuctl does not guess either way
        raise DefinitionError(f'"start" is {json.dumps(start)[:40]}, not "auto" or "manual"')
    raw = doc.get("attrs")
    attrs: List[Tuple[str, str]] = []
    if raw is not None:
        if not isinstance(raw, list):
            raise DefinitionError('"attrs" is not a list')
        for a in raw:
            if not isinstance(a, dict) or len(a) != 1:
                raise DefinitionError('an entry of "attrs" is not an object with one key')
            ((k, v),) = a.items()
            if not isinstance(v, str):
                raise DefinitionError(f"attribute {k!r} has a value that is not a string")
            attrs.append((k, v))
    return Definition(uuid=uuid, parent=parent, type_id=mdev_type, start=start, attrs=tuple(attrs), path=path)


def check(defs: Definitions, parents: Iterable[str], has_type: Callable[[str, str], bool]) -> Tuple[Problem, ...]:
    """What the host proves wrong about valid definitions: a parent that is not registered (``parents``: the
    registered ones), a type the parent does not offer (``has_type(parent, type_id)``).  Only warnings: the
    definition still stands (mdevctl keeps it, the parent or its driver may come later)."""
    out: List[Problem] = []
    registered = {p.lower(): p for p in parents}
    for d in defs.definitions:
        if not d.valid:
            continue
        p = registered.get(d.parent.lower())
        if p is None:
            out.append(
                Problem(d.path, f"defines {d.uuid} on parent {d.parent}, which is not registered for mediated devices")
            )
        elif not has_type(p, d.type_id or ""):
            out.append(Problem(d.path, f"defines {d.uuid} with type {d.type_id}, which {p} does not offer"))
    return tuple(out)


def definition_json(d: Definition) -> str:
    """The file mdevctl would write for ``d`` (its own layout: two-space indent, no trailing newline)."""
    doc = {"mdev_type": d.type_id, "start": d.start or MANUAL, "attrs": [{k: v} for k, v in d.attrs]}
    return json.dumps(doc, indent=2)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:120] if str(e) else type(e).__name__


# --- I/O ----------------------------------------------------------------------------------------------------------
def config_dir(paths: HostPaths) -> str:
    return os.fspath(paths.root / "etc" / "mdevctl.d")


def definition_path(paths: HostPaths, parent: str, uuid: str) -> str:
    return os.path.join(config_dir(paths), parent, uuid)


def read_definitions(paths: HostPaths) -> Definitions:
    """Every definition under ``ROOT/etc/mdevctl.d``.  Never raises for what it finds: an entry it cannot trust is a
    ``Problem`` (and, where its name is a uuid, an unreadable ``Definition``).  Symlinks are never followed."""
    base = config_dir(paths)
    defs: List[Definition] = []
    problems: List[Problem] = []
    names = _listdir(base, problems)
    if names is None:
        return Definitions()
    if len(names) > MAX_ENTRIES:
        problems.append(Problem(base, f"has {len(names)} entries; only the first {MAX_ENTRIES} are read"))
        names = names[:MAX_ENTRIES]
    for pname in names:
        if pname == SCRIPTS_DIR:
            continue
        pdir = os.path.join(base, pname)
        try:
            st = os.lstat(pdir)
        except OSError:
            continue  # removed while we looked
        if stat.S_ISLNK(st.st_mode):
            problems.append(
                Problem(pdir, "is a symlink; vgpuctl does not follow it (mdevctl does): replace it with a directory")
            )
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue  # mdevctl ignores plain files here too
        parent = canonical_parent_name(pname)
        if parent is None:
            problems.append(Problem(pdir, "is not named after a parent device; ignored"))
            continue
        children = _listdir(pdir, problems)
        if children is None:
            continue
        if len(children) > MAX_ENTRIES:
            problems.append(Problem(pdir, f"has {len(children)} entries; only the first {MAX_ENTRIES} are read"))
            children = children[:MAX_ENTRIES]
        for cname in children:
            d = _read_one(os.path.join(pdir, cname), parent, cname, problems)
            if d is not None:
                defs.append(d)
    seen: Dict[str, Definition] = {}
    for d in sorted(defs, key=lambda x: (x.parent, x.uuid)):
        first = seen.setdefault(d.uuid, d)
        if first is not d:
            problems.append(
                Problem(
                    d.path, f"defines {d.uuid} again (also in {first.path}); mdevctl uses one of them: remove the other"
                )
            )
    return Definitions(tuple(sorted(defs, key=lambda x: (x.parent, x.uuid))), tuple(problems))


def _listdir(path: str, problems: List[Problem]) -> Optional[List[str]]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        problems.append(Problem(path, f"cannot be read: {os.strerror(e.errno or errno.EIO)}"))
        return None


def _read_one(path: str, parent: str, name: str, problems: List[Problem]) -> Optional[Definition]:
    uuid = canonical_uuid(name)
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return None  # mdevctl ignores sub-directories
    if uuid is None:
        problems.append(Problem(path, "is not named after a uuid; mdevctl and vgpuctl ignore it"))
        return None
    unreadable = Definition(uuid=uuid, parent=parent, type_id=None, start=None, path=path)
    if stat.S_ISLNK(st.st_mode):
        problems.append(
            Problem(
                path,
                "is a symlink; vgpuctl does not follow it (mdevctl does), and counts it as an "
                "mdevctl definition it cannot read: replace it with the file itself",
            )
        )
        return unreadable
    if not stat.S_ISREG(st.st_mode):
        problems.append(Problem(path, "is not a regular file; ignored"))
        return None
    if st.st_size > MAX_FILE_BYTES:
        problems.append(Problem(path, f"is {st.st_size} bytes, too large for an mdevctl definition; not read"))
        return unreadable
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        problems.append(Problem(path, f"cannot be opened: {os.strerror(e.errno or errno.EIO)}"))
        return unreadable
    try:
        data = os.read(fd, MAX_FILE_BYTES + 1)
    except OSError as e:
        problems.append(Problem(path, f"cannot be read: {os.strerror(e.errno or errno.EIO)}"))
        return unreadable
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        problems.append(Problem(path, "is too large for an mdevctl definition; not read"))
        return unreadable
    try:
        return parse_definition(data, uuid=uuid, parent=parent, path=path)
    except DefinitionError as e:
        problems.append(Problem(path, f"is not a valid mdevctl definition: {e}; vgpuctl leaves {uuid} alone"))
        return unreadable


def read_bytes(path: str) -> Optional[bytes]:
    """A definition file's exact bytes (what ``restore_definition`` puts back), or None for a symlink / missing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        return os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)


def remove_definition(d: Definition) -> None:
    """Retire mdevctl's definition of ``d`` as ``mdevctl undefine`` does: unlink the file (a symlink itself, never
    its target).  Already gone is fine.  ``OSError`` otherwise."""
    try:
        os.unlink(d.path)
    except FileNotFoundError:
        pass


def restore_definition(d: Definition, data: Optional[bytes]) -> None:
    """Put a definition back (rolling back a half-done command): the original bytes where known."""
    if data is None:
        if not d.valid:
            return  # a symlink or unreadable file: nothing vgpuctl could restore faithfully
        data = definition_json(d).encode()
    os.makedirs(os.path.dirname(d.path), mode=0o755, exist_ok=True)
    replace_atomic(d.path, data, mode=0o644)  # the one atomic write; its OSError is the caller's to report


_warned: Set[Tuple[str, str]] = set()


def warn_once(problems: Iterable[Problem]) -> None:
    """Log each problem once per process (the service re-reads the definitions every pass)."""
    for p in problems:
        key = (p.path, p.problem)
        if key not in _warned:
            _warned.add(key)
            log.warning("%s", p.line())


def read_checked(paths: HostPaths, inventory: Optional[Inventory] = None) -> Definitions:
    """``read_definitions`` plus ``check`` against the registered parents of ``inventory`` (types looked up in sysfs,
    so an inventory read without its type tables will do), every problem warned about once."""
    defs = read_definitions(paths)
    problems: Sequence[Problem] = defs.problems
    if inventory is not None and defs.definitions:

        def has_type(parent: str, type_id: str) -> bool:
            return os.path.isdir(paths.mdev_bus / parent / "mdev_supported_types" / type_id)

        problems = tuple(problems) + check(defs, [p.name for p in inventory.parents], has_type)
    warn_once(problems)
    return Definitions(defs.definitions, tuple(problems))
