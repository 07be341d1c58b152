"""The desired-state files under ``etc/vgpuctl`` (``vgpuctl.yaml``, then ``conf.d/*.yaml`` by name): finding them,
reading them strictly (``configfile.read_config``) and merging what they say."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence

from ..configfile import read_config
from ..errors import ConfigError
from .merge import bind_profiles, merge
from .parse import parse
from .schema import DROPIN_DIR, MAIN_FILE, DesiredGpu, DesiredInstance, DesiredState


def spec_files(config_dir: "os.PathLike[str] | str") -> List[Path]:
    """The desired-state files under ``config_dir`` in merge order (main file first, then conf.d by name).

    Every entry that is there counts, whatever its kind: a ``vgpuctl.yaml`` that is a directory, or a
    ``conf.d/*.yaml`` that is a symlink loop, is listed so that reading it refuses the whole desired state
    (``ConfigError``, exit 8).  Skipping it would shrink the desired state, and ``apply`` would destroy what the
    file declares.  Only names starting with ``.`` and names not ending in ``.yaml`` are ignored."""
    base = Path(config_dir)
    files = []
    if os.path.lexists(base / MAIN_FILE):
        files.append(base / MAIN_FILE)
    dropins = base / DROPIN_DIR
    try:
        names = os.listdir(dropins)
    except FileNotFoundError:
        names = []
    except NotADirectoryError:
        if os.path.lexists(base) and not os.path.isdir(base):
            raise ConfigError(os.fspath(base), "is not a directory; move it aside") from None
        raise ConfigError(os.fspath(dropins), "is not a directory; move it aside") from None
    except OSError as e:
        raise ConfigError(os.fspath(dropins), f"cannot be listed: {os.strerror(e.errno or 0)}") from None
    files += sorted(dropins / n for n in names if n.endswith(".yaml") and not n.startswith("."))
    return files


def load(config_dir: "os.PathLike[str] | str") -> DesiredState:
    """Read and merge every desired-state file; no file at all is an empty desired state."""
    return load_files(spec_files(config_dir), config_dir, follow=False)


def load_files(
    paths: "Sequence[os.PathLike[str] | str]", config_dir: "os.PathLike[str] | str", *, follow: bool = True
) -> DesiredState:
    """Read and merge the desired-state files ``paths`` in the order given (``vgpuctl plan --config FILE``), with
    the same strict parsing as ``load``; ``profile:`` names are bound to ``config_dir``'s ``profiles.yaml``.  A
    missing or unreadable file is a ``ConfigError``; no file at all is an empty desired state.  ``follow``: the
    files were named by the user, so a symlink is followed (the files ``load`` finds itself are not)."""
    parsed: List[DesiredInstance] = []
    gpus: List[DesiredGpu] = []
    for p in paths:
        text = read_config(p, missing_ok=False, follow=follow)
        doc = parse(text or "", path=os.fspath(p))
        parsed += doc.instances
        gpus += doc.gpus
    if any(d.profile for d in parsed):
        parsed = bind_profiles(parsed, config_dir)
    return merge(parsed, files=tuple(os.fspath(p) for p in paths), gpus=gpus)
