"""The one strict reader of vgpuctl's YAML and JSON files.

Every file vgpuctl reads as data comes through here: the desired state, the policy and the profiles (YAML, via
``read_config`` + ``compose_yaml`` + a ``NodeReader`` schema), and its own records (``state.json``, the hook's
records, the profile assignments; JSON via ``read_json``).  The same function reads mdevctl's definition files
(``read_json(path, error=...)``).  The rules, documented in docs/security.md:

* the file is read through ``fsutil`` (regular file only, bounded size, no symlink inside vgpuctl's own
  directories, not world-writable, UTF-8);
* YAML is composed by a safe loader that refuses every explicit tag (``!!python/object``, ``!!int "x"``,
  ``!custom``, even ``!``) with an error naming file:line, and nesting deeper than ``MAX_DEPTH``;
* scalars are built only with YAML's implicit types, and a value those cannot build (``2001-13-45``) is an error
  at its line, not a traceback;
* ``version`` is the integer 1 in every file: not ``true``, not ``"1"``, not ``v1``;
* JSON is strict: no NaN or Infinity, no duplicate keys, no nesting the decoder cannot take.

Each config module keeps its own schema (``spec``, ``policy``, ``profiles``) as a ``NodeReader`` subclass.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

from .errors import ConfigError, StateError
from .fsutil import CONFIG_LIMIT, RECORD_LIMIT, ErrorFactory, read_text

MAX_DEPTH = 32  #: deepest nesting of mappings and lists any of vgpuctl's files may have
VERSION = 1  #: the only ``version`` any of vgpuctl's config files may have


def config_error(path: str, problem: str) -> ConfigError:
    return ConfigError(path, problem)


def read_config(path: "os.PathLike[str] | str", *, missing_ok: bool = True, follow: bool = False) -> Optional[str]:
    """The file's text; None if it does not exist and ``missing_ok``; a ``ConfigError`` naming the file otherwise
    (not a regular file, a symlink unless ``follow``, world-writable, over ``CONFIG_LIMIT``, not UTF-8)."""
    return read_text(path, limit=CONFIG_LIMIT, error=config_error, follow=follow, missing_ok=missing_ok)


def compose_yaml(text: str, path: str) -> Tuple[Any, Any]:
    """``(yaml module, root node)`` of a YAML document (the root is None for an empty one).

    PyYAML is imported here, lazily: commands that read no config file never pay for it.  Where PyYAML has libyaml,
    its C parser and composer do the work (a 128-instance file: ~30x faster), with the strict checks run over its
    events; a document libyaml refuses is read again by the Python loader, so every error reads as before."""
    import yaml

    # libyaml: the same checks on its events, then its composer.  Not for a text with a tab or a byte-order mark
    # after its first character: libyaml takes tabs where PyYAML's scanner refuses them, and skips a BOM at the start
    # of any line where PyYAML reads it as text; the Python loader's verdict is the rule.
    if getattr(yaml, "__with_libyaml__", False) and "\t" not in text and "\ufeff" not in text[1:]:
        fast = None
        try:
            _check_events(yaml, yaml.parse(text, Loader=yaml.CSafeLoader), path)
            fast = yaml.CSafeLoader(text)
            return yaml, fast.get_single_node()
        except yaml.YAMLError:
            pass  # a broken document: the Python loader below says what is wrong, in its words, at its line
        finally:
            if fast is not None:
                fast.dispose()
    loader = None
    try:
        loader = _strict_loader(yaml)(text)  # the reader checks the characters here already
        loader.vgpuctl_path = path
        return yaml, loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError(
            path, f"not valid YAML: {e.problem or e.context}", line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(path, f"not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_events(yaml: Any, events: Any, path: str) -> None:
    """What ``StrictLoader.compose_node`` refuses, over a parser's events (libyaml's C composer has no hook): an
    explicit tag on any node, and a node deeper than ``MAX_DEPTH`` (the root is at depth 1).  A second document is
    left to the Python loader, which refuses it before it looks inside (so its error, not a tag in it, is the one)."""
    node_events = (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent, yaml.AliasEvent)
    starts = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
    ends = (yaml.SequenceEndEvent, yaml.MappingEndEvent)
    open_collections = documents = 0
    for event in events:
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise yaml.YAMLError("more than one document")
        elif isinstance(event, node_events):
            tag = getattr(event, "tag", None)
            line = event.start_mark.line + 1 if event.start_mark else None
            if tag is not None:
                raise ConfigError(
                    path,
                    f"explicit YAML tags such as {tag!r} are not allowed: write plain values (quote a string)",
                    line=line,
                )
            if open_collections + 1 > MAX_DEPTH:
                raise ConfigError(path, f"nested deeper than {MAX_DEPTH} levels", line=line)
            if isinstance(event, starts):
                open_collections += 1
        elif isinstance(event, ends):
            open_collections -= 1


_LOADER: Any = None


def _strict_loader(yaml: Any) -> Any:
    global _LOADER
    if _LOADER is None:

        class StrictLoader(yaml.SafeLoader):  # type: ignore[misc,name-defined]
            vgpuctl_path = "<yaml>"
            vgpuctl_depth = 0

            def compose_node(self, parent: Any, index: Any) -> Any:
                event = self.peek_event()
                tag = getattr(event, "tag", None)
                line = event.start_mark.line + 1 if event.start_mark else None
                if tag is not None:
                    raise ConfigError(
                        self.vgpuctl_path,
                        f"explicit YAML tags such as {tag!r} are not allowed: write plain values (quote a string)",
                        line=line,
                    )
                self.vgpuctl_depth += 1
                try:
                    if self.vgpuctl_depth > MAX_DEPTH:
                        raise ConfigError(self.vgpuctl_path, f"nested deeper than {MAX_DEPTH} levels", line=line)
                    return super().compose_node(parent, index)
                finally:
                    self.vgpuctl_depth -= 1

        _LOADER = StrictLoader
    return _LOADER


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([MGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNIT = {"": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


class NodeReader:
    """The schema helpers every config parser shares, over a composed node tree: each error is a ``ConfigError``
    naming the file, the line and the key.  Subclasses add their document's shape."""

    def __init__(self, path: str, yaml: Any) -> None:
        self.path = path
        self.yaml = yaml

    def fail(self, node: Any, key: Optional[str], problem: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None and getattr(node, "start_mark", None) else None
        return ConfigError(self.path, problem, line=line, key=key)

    def is_null(self, node: Any) -> bool:
        return isinstance(node, self.yaml.ScalarNode) and node.tag.endswith(":null")

    def mapping(self, node: Any, key: Optional[str], allowed: Optional[Sequence[str]]) -> Dict[str, Tuple[Any, Any]]:
        """``{key: (key_node, value_node)}``; rejects non-mappings, non-scalar keys, merge keys, duplicates and keys
        outside ``allowed`` (None: any).  A key is taken as written (``0000:41:00.0`` stays text)."""
        if not isinstance(node, self.yaml.MappingNode):
            expect = f" with keys {', '.join(allowed)}" if allowed else ""
            raise self.fail(node, key, f"must be a mapping{expect}")
        out: Dict[str, Tuple[Any, Any]] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, self.yaml.ScalarNode):
                raise self.fail(knode, key, "keys must be plain strings")
            k = str(knode.value)
            full = f"{key}.{k}" if key else k
            if k == "<<":
                raise self.fail(knode, full, "merge keys (<<) are not supported")
            if allowed is not None and k not in allowed:
                raise self.fail(knode, full, f"unknown key; expected one of: {', '.join(allowed)}")
            if k in out:
                raise self.fail(knode, full, "duplicate key")
            out[k] = (knode, vnode)
        return out

    def scalar(self, node: Any, key: str) -> Any:
        """A single value with YAML's implicit types (str, int, float, bool, null, timestamp)."""
        if not isinstance(node, self.yaml.ScalarNode):
            raise self.fail(node, key, "must be a single value, not a list or mapping")
        loader = self.yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except Exception as e:  # an implicit type the constructor cannot build (2001-13-45)
            raise self.fail(node, key, f"{node.value!r} is not a valid value ({' '.join(str(e).split())})") from None
        finally:
            loader.dispose()

    def integer(self, node: Any, key: str, minimum: int = 0) -> int:
        v = self.scalar(node, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.fail(node, key, f"must be an integer >= {minimum}")
        return v

    def boolean(self, node: Any, key: str) -> bool:
        v = self.scalar(node, key)
        if not isinstance(v, bool):
            raise self.fail(node, key, "must be true or false")
        return v

    def string(self, node: Any, key: str) -> str:
        """A non-empty string, stripped (a number is refused; the desired state's parser keeps its text)."""
        v = self.scalar(node, key)
        if not isinstance(v, str) or not v.strip():
            raise self.fail(node, key, "expected a non-empty string")
        return v.strip()

    def strings(self, node: Any, key: str) -> Tuple[str, ...]:
        """A string or a list of strings (a single value is a list of one)."""
        items = node.value if isinstance(node, self.yaml.SequenceNode) else [node]
        if isinstance(node, self.yaml.SequenceNode) and not items:
            raise self.fail(node, key, "expected at least one value")
        out = []
        for item in items:
            v = self.scalar(item, key)
            if isinstance(v, bool) or v is None:
                raise self.fail(item, key, "expected a string")
            out.append(str(v).strip())
        return tuple(out)

    def choice(self, node: Any, key: str, enum: Any) -> Any:
        v = self.scalar(node, key)
        try:
            return enum(str(v).strip().lower())
        except ValueError:
            raise self.fail(node, key, f"expected one of {', '.join(m.value for m in enum)}, not {v!r}") from None

    def size(self, node: Any, key: str) -> int:
        """MiB from ``16384`` (MiB), ``16G``, ``16GiB``, ``512M``."""
        v = self.scalar(node, key)
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
        mt = _SIZE_RE.match(str(v)) if isinstance(v, str) else None
        if not mt:
            raise self.fail(node, key, f"expected a size such as 16G, 512M or a number of MiB, not {v!r}")
        return int(mt.group(1)) * _UNIT[mt.group(2).upper()]

    def version(self, top: Dict[str, Tuple[Any, Any]], root: Any) -> int:
        """The one ``version`` rule: present, and the integer 1 written as ``1`` (not ``true``, ``"1"``, ``v1``,
        ``0x1`` or ``1.0``)."""
        if "version" not in top:
            raise self.fail(root, "version", f"is required: add 'version: {VERSION}'")
        vnode = top["version"][1]
        v = self.scalar(vnode, "version")
        if isinstance(v, bool) or not isinstance(v, int) or v != VERSION or vnode.value != str(VERSION):
            raise self.fail(
                vnode,
                "version",
                f"unsupported version {vnode.value!r}; this vgpuctl reads version: {VERSION} (an unquoted integer)",
            )
        return v


# --- JSON ----------------------------------------------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def parse_json(text: "str | bytes", path: str, *, error: ErrorFactory = StateError) -> Any:
    """A strict JSON document: no NaN/Infinity, no duplicate keys; nesting too deep for the decoder is an error
    too (its ``RecursionError`` is caught here, before it can become a traceback)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:
        raise error(path, f"is not valid JSON: {' '.join(str(e).split())}") from None


def read_json(
    path: "os.PathLike[str] | str",
    *,
    error: ErrorFactory = StateError,
    limit: int = RECORD_LIMIT,
    follow: bool = False,
    missing_ok: bool = True,
) -> Any:
    """The strict JSON document in ``path`` (read as ``fsutil.read_text`` reads), or None if it does not exist and
    ``missing_ok``.  Every problem is ``error(path, problem)``: ``StateError`` for vgpuctl's own records by default.
    """
    text = read_text(path, limit=limit, error=error, follow=follow, missing_ok=missing_ok)
    return None if text is None else parse_json(text, os.fspath(path), error=error)
