"""Reading vgpuctl's YAML configuration files: one place for the I/O and YAML errors every config file shares.

Each config module (``spec``, ``policy``, ``profiles``) keeps its own strict schema parser over the composed node
tree (whose marks give the line numbers in its errors); this module only turns the file into that tree.
"""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

from .errors import ConfigError


def read_config(path: "os.PathLike[str] | str", *, missing_ok: bool = True) -> Optional[str]:
    """The file's text; None if it does not exist and ``missing_ok``; a ``ConfigError`` naming the file otherwise."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError(p, "no such file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(p, f"not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise ConfigError(p, f"cannot read: {e.strerror}") from None


def compose_yaml(text: str, path: str) -> Tuple[Any, Any]:
    """``(yaml module, root node)`` of a YAML document (the root is None for an empty one).

    PyYAML is imported here, lazily: commands that read no config file never pay for it."""
    import yaml

    try:
        return yaml, yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError(path, f"not valid YAML: {e.problem or e.context}", line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise ConfigError(path, f"not valid YAML: {e}") from None
