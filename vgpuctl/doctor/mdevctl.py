"""Checks of vgpuctl beside mdevctl: instances both tools manage, definition files vgpuctl cannot trust, and
mdevctl's udev rule (Debian 12's calls a binary that does not exist, so its auto-start never happens)."""

from __future__ import annotations

import os
import re
from typing import List

from ..errors import VgpuctlError
from . import Context, Result, check

RULE = "60-mdevctl.rules"
RULE_DIRS = ("etc/udev/rules.d", "run/udev/rules.d", "usr/lib/udev/rules.d", "lib/udev/rules.d")


def _definitions(ctx: Context):  # type: ignore[no-untyped-def]
    from ..host import mdevctl

    def read():  # type: ignore[no-untyped-def]
        defs = mdevctl.read_definitions(ctx.paths)
        try:
            parents = [p.name for p in ctx.inventory().parents]
        except Exception:  # the parents line reports an unreadable sysfs
            return defs
        has_type = lambda p, t: os.path.isdir(ctx.paths.mdev_bus / p / "mdev_supported_types" / t)  # noqa: E731
        return mdevctl.Definitions(defs.definitions, defs.problems + mdevctl.check(defs, parents, has_type))

    return ctx.fact("mdevctl-definitions", read)


@check(
    "mdevctl-double",
    "no instance is both in vgpuctl's desired state and in an mdevctl auto-start definition "
    "(both tools would manage it; plan blocks it foreign-managed)",
    "vgpuctl adopt --from-mdevctl --undefine UUID (vgpuctl keeps it), or drop it from the desired state",
)
def double_managed(ctx: Context) -> List[Result]:
    from ..spec import load

    defs = _definitions(ctx)
    if not defs.definitions:
        return [Result.na("mdevctl-double", f"no mdevctl definitions in {ctx.rel(ctx.paths.root / 'etc/mdevctl.d')}")]
    try:
        desired = {d.uuid: d.name for d in load(ctx.paths.config_dir).instances}
    except VgpuctlError:
        return [Result.na("mdevctl-double", "the desired state is unreadable (see the desired-state line)")]
    out = []
    for d in defs.definitions:
        if d.uuid in desired and d.auto:
            out.append(
                Result.fail(
                    "mdevctl-double",
                    f"instance {desired[d.uuid]} ({d.uuid}) is also defined by mdevctl ({d.label}, "
                    f"{ctx.rel(d.path)}): plan leaves it alone, blocked foreign-managed",
                    f"vgpuctl adopt --from-mdevctl --undefine {d.uuid} (vgpuctl keeps it), or remove instance "
                    f"{desired[d.uuid]} from the desired state (mdevctl keeps it)",
                    subject=d.uuid,
                )
            )
    if out:
        return out
    both = sum(1 for d in defs.definitions if d.uuid in desired)
    extra = f" ({both} with an agreeing manual definition)" if both else ""
    return [
        Result.ok(
            "mdevctl-double",
            f"{len(defs.definitions)} mdevctl definition(s), none also managed by vgpuctl's desired state{extra}",
        )
    ]


@check(
    "mdevctl-files",
    "every file under /etc/mdevctl.d is a definition vgpuctl can read (JSON, a registered parent "
    "that offers the type, no symlink)",
    "fix or remove the file named ('mdevctl list --defined' shows the rest)",
)
def files(ctx: Context) -> List[Result]:
    defs = _definitions(ctx)
    if not defs.problems:
        if not defs.definitions:
            return [Result.na("mdevctl-files", "no mdevctl definitions")]
        return [Result.ok("mdevctl-files", f"{len(defs.definitions)} definition(s), all readable")]
    return [
        Result.warn(
            "mdevctl-files",
            p.problem,
            f"fix or remove {ctx.rel(p.path)} (mdevctl define/undefine)",
            subject=ctx.rel(p.path),
        )
        for p in defs.problems
    ]


@check(
    "mdevctl-udev",
    "mdevctl's udev rule runs a binary that exists, so its auto-start definitions come back when a parent registers",
    "copy the rule to /etc/udev/rules.d/60-mdevctl.rules with the path of 'command -v mdevctl'",
)
def udev_rule(ctx: Context) -> Result:
    defs = _definitions(ctx)
    auto = [d for d in defs.definitions if d.auto]
    rule = next((ctx.paths.root / d / RULE for d in RULE_DIRS if (ctx.paths.root / d / RULE).is_file()), None)
    if rule is None:
        return Result.na("mdevctl-udev", "mdevctl's udev rule is not installed")
    try:
        text = rule.read_text(errors="replace")
    except OSError as e:
        return Result.warn("mdevctl-udev", f"{ctx.rel(rule)} cannot be read ({e.strerror})", f"check {ctx.rel(rule)}")
    runs = {
        p
        for line in text.splitlines()
        if not line.lstrip().startswith("#")
        for p in re.findall(r"(/[^\s'\"]*/mdevctl)(?=\s)", line)
    }
    missing = sorted(p for p in runs if not os.path.exists(os.path.join(ctx.paths.root, p.lstrip("/"))))
    if not missing:
        return Result.ok("mdevctl-udev", f"{ctx.rel(rule)} runs an installed mdevctl")
    seen = f"{ctx.rel(rule)} runs {', '.join(missing)}, which does not exist: mdevctl's auto-start never happens"
    if not auto:
        return Result.ok("mdevctl-udev", seen + " (no auto-start definition relies on it)")
    return Result.warn(
        "mdevctl-udev",
        f"{seen}; {len(auto)} auto-start definition(s) will not come back at boot",
        "sed 's|/usr/sbin/mdevctl|/usr/bin/mdevctl|g' /usr/lib/udev/rules.d/60-mdevctl.rules > "
        "/etc/udev/rules.d/60-mdevctl.rules (or vgpuctl adopt --from-mdevctl --undefine)",
    )
