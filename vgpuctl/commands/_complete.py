"""Shell-completion callbacks: parents, types, profiles, domains and instances, read cheaply from the host.

Each is called by click while the shell completes a word (``_VGPUCTL_COMPLETE``), before any command runs.  They
must never fail: without a host, a libvirt daemon or a config file they offer nothing.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, List

import click
from click.shell_completion import CompletionItem


def _root(ctx: click.Context) -> str:
    top = ctx.find_root()
    return top.params.get("root") or os.environ.get("VGPUCTL_ROOT") or "/"


def _connect(ctx: click.Context) -> str:
    top = ctx.find_root()
    return top.params.get("connect") or os.environ.get("VGPUCTL_LIBVIRT_URI") or "qemu:///system"


def _safe(fn: Callable[[click.Context], Iterable[Any]]) -> Callable[[click.Context, Any, str], List[CompletionItem]]:
    def complete(ctx: click.Context, param: Any, incomplete: str) -> List[CompletionItem]:
        try:
            items = list(fn(ctx))
        except Exception:  # completion must never print a traceback into the user's shell
            return []
        out, seen = [], set()
        for item in items:
            value, help_ = item if isinstance(item, tuple) else (item, None)
            if value in seen or not str(value).lower().startswith(incomplete.lower()):
                continue
            seen.add(value)
            out.append(CompletionItem(value, help=help_))
        return out

    return complete


def _inventory(ctx: click.Context) -> Any:
    from ..host import Host
    from ..paths import HostPaths

    return Host(HostPaths.from_root(_root(ctx))).inventory()


def _parents(ctx: click.Context) -> Iterable[Any]:
    inv = _inventory(ctx)
    for p in inv.parents:
        yield p.name, f"{p.vendor} {p.device_id or ''}".strip()
    for gpu in sorted({p.gpu for p in inv.parents if p.is_vf}):
        yield gpu, "physical GPU (a free VF is chosen)"


def _types(ctx: click.Context) -> Iterable[Any]:
    inv = _inventory(ctx)
    parent = ctx.params.get("parent")
    for t in inv.types:
        if parent and t.parent != parent:
            continue
        if t.profile:
            yield t.profile, t.type_id
        yield t.type_id, t.name


def _profiles(ctx: click.Context) -> Iterable[Any]:
    from ..paths import HostPaths
    from ..profiles import load_profiles, profiles_path

    for p in load_profiles(profiles_path(HostPaths.from_root(_root(ctx)).config_dir)).profiles:
        yield p.name, p.description or p.selector


def _instances(ctx: click.Context) -> Iterable[Any]:
    for i in _inventory(ctx).instances:
        yield i.uuid, f"{i.type_id} on {i.parent}"


def _domains(ctx: click.Context) -> Iterable[Any]:
    uri = _connect(ctx)
    if uri == "none":
        return []
    from ..virt.conn import Libvirt  # libvirt itself: only when a domain name is completed

    lv = Libvirt(uri)  # one bounded read: a silent libvirtd must not hang the user's shell
    try:
        return sorted(d.name for d in lv.read().domains)
    finally:
        lv.end()


complete_parents = _safe(_parents)
complete_types = _safe(_types)
complete_profiles = _safe(_profiles)
complete_instances = _safe(_instances)
complete_domains = _safe(_domains)
