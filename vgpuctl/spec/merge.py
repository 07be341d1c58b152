"""Merging parsed documents into one desired state: an instance name, uuid or GPU given twice is a ``ConfigError``,
and ``profile:`` names are bound to their ``profiles.yaml`` definitions."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, List, Sequence, Tuple

from ..errors import ConfigError
from .schema import DesiredGpu, DesiredInstance, DesiredState


def bind_profiles(instances: Sequence[DesiredInstance], config_dir: "os.PathLike[str] | str") -> List[DesiredInstance]:
    """Attach each ``profile:`` to its definition in ``profiles.yaml``; an unknown profile, or more instances of a
    profile than a tenant's limit, is a ``ConfigError`` at the instance's ``profile`` line."""
    from ..profile_limits import check_desired_limits
    from ..profiles import load_profiles, profiles_path

    profiles = load_profiles(profiles_path(config_dir))
    out = []
    for d in instances:
        if d.profile:
            found = profiles.find(d.profile)
            if found is None:
                known = ", ".join(profiles.names()) or f"none: {profiles_path(config_dir)} defines no profile"
                raise ConfigError(
                    d.mark.path,
                    f"unknown profile {d.profile!r} (defined: {known})",
                    line=d.line_of("profile"),
                    key=f"instances.{d.name}.profile",
                )
            d = replace(d, profile_def=found)
        out.append(d)
    check_desired_limits(profiles, DesiredState(instances=tuple(out)))
    return out


def merge(
    instances: Sequence[DesiredInstance], *, files: Tuple[str, ...] = (), gpus: Sequence[DesiredGpu] = ()
) -> DesiredState:
    seen_gpus: Dict[str, DesiredGpu] = {}
    for g in gpus:
        if g.gpu in seen_gpus:
            first = seen_gpus[g.gpu]
            raise ConfigError(
                g.mark.path,
                f"GPU {g.gpu} is already configured at {first.mark.path}:{first.mark.line}",
                line=g.mark.line,
                key=f"gpus.{g.gpu}",
            )
        seen_gpus[g.gpu] = g
    seen_names: Dict[str, DesiredInstance] = {}
    seen_uuids: Dict[str, DesiredInstance] = {}
    for d in instances:
        if d.name in seen_names:
            first = seen_names[d.name]
            raise ConfigError(
                d.mark.path,
                f"instance {d.name} is already defined at {first.mark.path}:{first.mark.line}",
                line=d.mark.line,
                key=f"instances.{d.name}",
            )
        if d.uuid in seen_uuids:
            first = seen_uuids[d.uuid]
            raise ConfigError(
                d.mark.path,
                f"uuid {d.uuid} is also used by instance {first.name} ({first.mark.path}:{first.mark.line})",
                line=d.line_of("uuid"),
                key=f"instances.{d.name}.uuid",
            )
        seen_names[d.name] = d
        seen_uuids[d.uuid] = d
    return DesiredState(instances=tuple(instances), files=files, gpus=tuple(gpus))
