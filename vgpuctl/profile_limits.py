"""Who holds which service profile, and the per-tenant limits (``limits:`` of profiles.yaml).

The holders are what the desired-state files say (``profile:`` with ``placement.tenant``: ``desired_assignments``,
checked by ``check_desired_limits`` when the files are read) and, for ``create``/``attach --profile``, the records
in ``var/lib/vgpuctl/profiles.json`` (``AssignmentStore``; ``check_limit`` runs under its lock before the create)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from .configfile import config_error, read_json
from .errors import ConfigError, InvalidInput, ProfileLimit
from .fsutil import FileLock, ensure_dirs, write_atomic
from .profiles import Profile, Profiles

ASSIGNMENTS_FILE = "profiles.json"
ASSIGNMENTS_SCHEMA = "vgpuctl.profile-assignments/v1"


@dataclass(frozen=True)
class Assignment:
    uuid: str
    profile: str
    tenant: Optional[str] = None


def count_held(assignments: Iterable[Assignment], *, profile: str, tenant: str) -> int:
    return len({a.uuid for a in assignments if a.profile == profile and a.tenant == tenant})


def check_limit(profiles: Profiles, profile: Profile, tenant: Optional[str], assignments: Iterable[Assignment]) -> None:
    """Raise ``ProfileLimit`` when one more vGPU of ``profile`` would exceed ``tenant``'s limit; a limited profile
    needs a tenant (``InvalidInput``)."""
    if not profile.limited:
        return
    if tenant is None:
        raise InvalidInput(f"profile {profile.name} is limited per tenant: say whose vGPU it is (--tenant)")
    limit = profile.limit_for(tenant)
    if limit is None:
        return
    held = count_held(assignments, profile=profile.name, tenant=tenant)
    if held + 1 > limit:
        raise ProfileLimit(profile.name, tenant, held, limit, profiles.where(profile))


class AssignmentStore:
    """``var/lib/vgpuctl/profiles.json``: which instance ``create``/``attach --profile`` made for which profile and
    tenant.  Written atomically (temporary file, fsync, rename); ``lock()`` serialises check-create-record."""

    def __init__(self, paths: Any) -> None:
        self.root = paths.root
        self.path = Path(paths.state_dir) / ASSIGNMENTS_FILE
        self.lock_path = Path(paths.run_dir) / "profiles.lock"

    def load(self, present: Optional[Iterable[str]] = None) -> Tuple[Assignment, ...]:
        """The recorded assignments; with ``present``, only those whose instance still exists."""
        doc = read_json(self.path, error=config_error)
        if doc is None:
            return ()
        if (
            not isinstance(doc, dict)
            or doc.get("schema") != ASSIGNMENTS_SCHEMA
            or not isinstance(doc.get("instances"), dict)
        ):
            raise ConfigError(os.fspath(self.path), f"not a {ASSIGNMENTS_SCHEMA} document")
        keep = set(present) if present is not None else None
        out = []
        for uuid, v in sorted(doc["instances"].items()):
            if keep is not None and uuid not in keep:
                continue
            if isinstance(v, dict) and isinstance(v.get("profile"), str):
                out.append(Assignment(uuid, v["profile"], v.get("tenant")))
        return tuple(out)

    def record(self, a: Assignment, present: Iterable[str]) -> None:
        """Add ``a`` and drop the assignments of instances that no longer exist."""
        keep = {x.uuid: x for x in self.load(present)}
        keep[a.uuid] = a
        doc = {
            "schema": ASSIGNMENTS_SCHEMA,
            "instances": {u: {"profile": x.profile, "tenant": x.tenant} for u, x in sorted(keep.items())},
        }
        ensure_dirs(self.path.parent, below=self.root)
        write_atomic(self.path, json.dumps(doc, indent=2) + "\n")

    def lock(self, timeout: float) -> FileLock:
        return FileLock(self.lock_path, timeout, mode=0o600, root=self.root)


def desired_assignments(desired: Any) -> Tuple[Assignment, ...]:
    """Assignments the desired state makes: its instances with a ``profile``, with their placement tenant."""
    out = []
    for d in getattr(desired, "instances", ()):
        if getattr(d, "profile", None):
            tenant = d.placement.tenant if d.placement is not None else None
            out.append(Assignment(d.uuid, d.profile, tenant))
    return tuple(out)


def check_desired_limits(profiles: Profiles, desired: Any) -> None:
    """``ConfigError`` at the first desired instance that takes a tenant past its profile limit."""
    held: Dict[Tuple[str, Optional[str]], int] = {}
    for d in desired.instances:
        if not d.profile:
            continue
        p = profiles.find(d.profile)
        if p is None or not p.limited:
            continue
        tenant = d.placement.tenant if d.placement is not None else None
        key = f"instances.{d.name}"
        if tenant is None:
            raise ConfigError(
                d.mark.path,
                f"profile {p.name} is limited per tenant: give placement.tenant",
                line=d.line_of("profile"),
                key=f"{key}.placement.tenant",
            )
        limit = p.limit_for(tenant)
        held[(p.name, tenant)] = held.get((p.name, tenant), 0) + 1
        if limit is not None and held[(p.name, tenant)] > limit:
            raise ConfigError(
                d.mark.path,
                f"tenant {tenant} would hold {held[(p.name, tenant)]} vGPUs of profile {p.name}, "
                f"which allows {limit} ({profiles.where(p)})",
                line=d.line_of("profile"),
                key=f"{key}.profile",
            )
