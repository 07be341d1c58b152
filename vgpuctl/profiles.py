"""Service profiles: the tiers an operator sells ("gold: a 4 GB workstation vGPU with a display, two per tenant").

A profile says what a VM gets without naming a GPU model: one or more types, or an NVIDIA series and a framebuffer
size that each GPU model resolves to its own type (series Q, 4096 MiB: T4-4Q on a T4, A16-4Q on an A16); device
options for the template (display, ramfb); the scheduler share it is sold with; and how many one tenant may hold.

The profiles live in ``etc/vgpuctl/profiles.yaml`` under the host root.  Parsing is strict, as for the policy:
``version: 1`` is required, unknown keys are rejected, contradictions (a type *and* a series, ``ramfb`` without the
display, ...) are ``ConfigError``s naming the file, the line and the key.  PyYAML is imported only when the file is
parsed.  Schema::

    version: 1
    profiles:
      gold:                          # the profile's name: [A-Za-z0-9_.-], as used by --profile and profile:
        description: 4 GB workstation vGPU with a display
        series: Q                    # NVIDIA series (Q, B, A, C) ...
        framebuffer: 4G              # ... and size: resolved per GPU model (T4-4Q, A16-4Q)
        # type: [T4-4Q, mtty-1]      # ... or explicit types: ids or names; the first one a GPU offers is used
        display: true                # template option: the vGPU is the domain's display
        ramfb: false                 # template option: boot display through ramfb (needs display)
        scheduler: fixed-share       # NVIDIA time-slice policy sold with it: best-effort, equal-share, fixed-share
        params: {frame_rate_limiter: 0}   # NVIDIA vgpu_params the tier sets (vgpuctl.vgpu_params)
        limits:
          per_tenant: 2              # at most this many per tenant ...
          tenants: {acme: 4}         # ... except these tenants ("*" is the same as per_tenant)

Which instance belongs to which profile and tenant, and the tenant limits: ``vgpuctl.profile_limits``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .configfile import NodeReader, compose_yaml, read_config
from .errors import AmbiguousType, ConfigError, UnknownProfile, UnknownType
from .model import NAME_RE, Inventory, SchedulerPolicy, VgpuType, find_type
from .policy import SERIES, type_matches

PROFILES_FILE = "profiles.yaml"


@dataclass(frozen=True)
class Profile:
    name: str
    types: Tuple[str, ...] = ()  #: type ids or names as written, in preference order; empty with series+size
    series: Optional[str] = None  #: NVIDIA series letter, with ``framebuffer_mib``
    framebuffer_mib: Optional[int] = None
    display: Optional[bool] = None  #: None: the template's default
    ramfb: Optional[bool] = None
    scheduler: Optional[SchedulerPolicy] = None  #: the NVIDIA time-slice policy the tier is sold with
    per_tenant: Optional[int] = None
    tenant_limits: Tuple[Tuple[str, int], ...] = ()
    description: str = ""
    line: Optional[int] = None  #: where the profile starts in its file
    #: NVIDIA vGPU plugin parameters the tier sets (``vgpu_params``); None: the profile sets none
    params: Optional[Tuple[Tuple[str, str], ...]] = None

    @property
    def selector(self) -> str:
        """What the profile asks for, for people: ``T4-4Q, A16-4Q`` or ``series Q, 4096 MiB``."""
        if self.types:
            return ", ".join(self.types)
        return f"series {self.series}, {self.framebuffer_mib} MiB"

    def matches(self, vtype: VgpuType) -> bool:
        if self.types:
            return type_matches(vtype, [k.lower() for k in self.types])
        return (vtype.series or "").upper() == self.series and vtype.framebuffer_mib == self.framebuffer_mib

    def type_on(self, inventory: Inventory, parent: str) -> Optional[VgpuType]:
        """The type this profile gets on ``parent``: the first of ``types`` it offers (each resolved by
        ``model.find_type``, so a name meaning two types there is ``AmbiguousType``, as everywhere), else the
        series+size match; None where ``parent`` offers none of them."""
        if self.types:
            for key in self.types:
                try:
                    return find_type(inventory, parent, key)
                except UnknownType:
                    continue
            return None
        hit = sorted((t for t in inventory.types_on(parent) if self.matches(t)), key=lambda t: t.type_id)
        return hit[0] if hit else None

    def types_here(self, inventory: Inventory) -> Tuple[VgpuType, ...]:
        """The types the profile gets on this host, one per type id, for views: a parent where a name of
        ``types`` is ambiguous is left out (``type_on`` says why when it is asked for)."""
        out: Dict[str, VgpuType] = {}
        for p in inventory.parents:
            try:
                t = self.type_on(inventory, p.name)
            except AmbiguousType:
                continue
            if t is not None:
                out.setdefault(t.type_id, t)
        return tuple(out[k] for k in sorted(out))

    def type_ids(self, inventory: Inventory) -> Tuple[str, ...]:
        """Every type id the profile resolves to on this host (one per GPU model, usually); ``AmbiguousType``
        where a name of ``types`` means two types on one parent."""
        return tuple(sorted({t.type_id for p in inventory.parents for t in [self.type_on(inventory, p.name)] if t}))

    def limit_for(self, tenant: Optional[str]) -> Optional[int]:
        limits = dict(self.tenant_limits)
        if tenant is not None and tenant in limits:
            return limits[tenant]
        return limits.get("*", self.per_tenant)

    @property
    def limited(self) -> bool:
        return self.per_tenant is not None or bool(self.tenant_limits)


@dataclass(frozen=True)
class Profiles:
    profiles: Tuple[Profile, ...] = ()
    source: Optional[str] = None  #: the file; None when there is none

    def names(self) -> Tuple[str, ...]:
        return tuple(p.name for p in self.profiles)

    def find(self, name: str) -> Optional[Profile]:
        return next((p for p in self.profiles if p.name == name), None)

    def get(self, name: str) -> Profile:
        p = self.find(name)
        if p is None:
            raise UnknownProfile(name, self.source, self.names())
        return p

    def where(self, p: Profile) -> str:
        """``file:line`` of a profile, for messages."""
        return f"{self.source}:{p.line}" if self.source and p.line else (self.source or "")


# --- loading -------------------------------------------------------------------------------------------------------
def profiles_path(config_dir: "os.PathLike[str] | str") -> Path:
    return Path(config_dir) / PROFILES_FILE


def load_profiles(path: "os.PathLike[str] | str", *, missing_ok: bool = True) -> Profiles:
    text = read_config(path, missing_ok=missing_ok)
    return Profiles() if text is None else parse_profiles(text, path=os.fspath(path))


def parse_profiles(text: str, *, path: str = "<profiles>") -> Profiles:
    yaml, root = compose_yaml(text, path)
    if root is None:
        raise ConfigError(path, "empty file: it needs at least 'version: 1'", line=1)
    return _Parser(path, yaml).document(root)


_PROFILE_KEYS = ("description", "type", "series", "framebuffer", "display", "ramfb", "scheduler", "limits", "params")


class _Parser(NodeReader):
    def document(self, root: Any) -> Profiles:
        top = self.mapping(root, None, ("version", "profiles"))
        self.version(top, root)
        out: List[Profile] = []
        if "profiles" in top:
            pnode = top["profiles"][1]
            if isinstance(pnode, self.yaml.ScalarNode) and pnode.tag.endswith(":null"):
                return Profiles(source=self.path)
            if not isinstance(pnode, self.yaml.MappingNode):
                raise self.fail(pnode, "profiles", "expected a mapping of profile name to profile")
            for k, v in pnode.value:
                name = k.value if isinstance(k, self.yaml.ScalarNode) else None
                key = f"profiles.{name}"
                if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                    raise self.fail(k, key, "profile names are 1-64 of A-Z a-z 0-9 _ . - (not starting with . or -)")
                if any(p.name == name for p in out):
                    raise self.fail(k, key, "duplicate profile")
                out.append(self.profile(name, k, v, key))
        return Profiles(profiles=tuple(out), source=self.path)

    def profile(self, name: str, knode: Any, node: Any, key: str) -> Profile:
        m = self.mapping(node, key, _PROFILE_KEYS)
        types: Tuple[str, ...] = ()
        series = fb = None
        if "type" in m:
            types = self.strings(m["type"][1], f"{key}.type")
            for other in ("series", "framebuffer"):
                if other in m:
                    raise self.fail(m[other][0], f"{key}.{other}", "contradicts 'type': give a type, or series+size")
        else:
            if "series" not in m and "framebuffer" not in m:
                raise self.fail(node, key, "say what the profile gets: 'type', or 'series' with 'framebuffer'")
            for need, other in (("series", "framebuffer"), ("framebuffer", "series")):
                if need not in m:
                    raise self.fail(m[other][0], f"{key}.{need}", f"missing: '{other}' needs '{need}' too")
            series = self.string(m["series"][1], f"{key}.series").upper()
            if series not in SERIES:
                raise self.fail(
                    m["series"][1], f"{key}.series", f"unknown series {series!r}; expected {', '.join(SERIES)}"
                )
            fb = self.size(m["framebuffer"][1], f"{key}.framebuffer")
            if fb <= 0:
                raise self.fail(m["framebuffer"][1], f"{key}.framebuffer", "must be more than 0")
        display = self.boolean(m["display"][1], f"{key}.display") if "display" in m else None
        ramfb = self.boolean(m["ramfb"][1], f"{key}.ramfb") if "ramfb" in m else None
        if ramfb and display is False:
            raise self.fail(
                m["ramfb"][1], f"{key}.ramfb", "contradicts 'display: false': ramfb shows the vGPU's display"
            )
        scheduler = self.choice(m["scheduler"][1], f"{key}.scheduler", SchedulerPolicy) if "scheduler" in m else None
        per_tenant = None
        tenants: List[Tuple[str, int]] = []
        if "limits" in m:
            lnode = m["limits"][1]
            lm = self.mapping(lnode, f"{key}.limits", ("per_tenant", "tenants"))
            if not lm:
                raise self.fail(lnode, f"{key}.limits", "empty: give per_tenant and/or tenants")
            if "per_tenant" in lm:
                per_tenant = self.integer(lm["per_tenant"][1], f"{key}.limits.per_tenant", minimum=1)
            if "tenants" in lm:
                tnode = lm["tenants"][1]
                if not isinstance(tnode, self.yaml.MappingNode) or not tnode.value:
                    raise self.fail(tnode, f"{key}.limits.tenants", "expected a mapping of tenant to a count")
                for tk, tv in tnode.value:
                    tenant = str(self.scalar(tk, f"{key}.limits.tenants")).strip()
                    tkey = f"{key}.limits.tenants.{tenant}"
                    if not tenant or any(t == tenant for t, _ in tenants):
                        raise self.fail(tk, tkey, "duplicate or empty tenant name")
                    tenants.append((tenant, self.integer(tv, tkey, minimum=0)))
            if per_tenant is not None and any(t == "*" for t, _ in tenants):
                raise self.fail(lnode, f"{key}.limits.tenants.*", "contradicts 'per_tenant': give one of the two")
        description = self.string(m["description"][1], f"{key}.description") if "description" in m else ""
        params = None
        if "params" in m:
            from .vgpu_params import from_node

            params = from_node(self, m["params"][1], f"{key}.params")
        return Profile(
            name=name,
            types=types,
            series=series,
            framebuffer_mib=fb,
            display=display,
            ramfb=ramfb,
            scheduler=scheduler,
            per_tenant=per_tenant,
            tenant_limits=tuple(tenants),
            description=description,
            line=knode.start_mark.line + 1,
            params=params,
        )


# --- placement -----------------------------------------------------------------------------------------------------
def profile_request(profile: Profile, inventory: Inventory, **fields: Any) -> Any:
    """A placement ``Request`` for one vGPU of ``profile``: any type it resolves to, one per GPU model."""
    from .placement import Request

    return Request(type=profile.name, any_of=profile.type_ids(inventory), **fields)
