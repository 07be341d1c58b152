"""Checks of vgpuctl itself: its state file and journal, its lock, its service unit, and the desired state."""

from __future__ import annotations

import os
import shutil
from typing import List

from ..errors import VgpuctlError
from . import Context, Result, check, file_problem

UNIT = "vgpuctl.service"
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system", "usr/local/lib/systemd/system")


def _unsafe_fix(path: str, problem: str) -> str:
    if "symlink" in problem or "not a" in problem:
        return f"move {path} aside (vgpuctl makes a plain one); never point it elsewhere"
    return f"chmod o-w {path}"


@check(
    "state",
    "vgpuctl's state file var/lib/vgpuctl/state.json (and its directory): a plain file, not a symlink, "
    "not world-writable, and it parses",
    "chmod o-w FILE, or move a corrupt file aside and re-adopt with --foreign",
)
def state(ctx: Context) -> Result:
    from ..state import StateStore

    for path, is_dir in ((ctx.paths.state_dir, True), (ctx.paths.state_file, False)):
        problem = file_problem(path, want_dir=is_dir)
        if problem:
            return Result.fail("state", f"{path} {problem}", _unsafe_fix(os.fspath(path), problem))
    if not ctx.paths.state_file.exists():
        return Result.ok("state", f"no {ctx.paths.state_file} yet (vgpuctl writes it on its first change)")
    try:
        st = StateStore(ctx.paths).load()
    except VgpuctlError as e:
        return Result.fail(
            "state",
            str(e),
            f"move {ctx.paths.state_file} aside, then re-adopt devices (vgpuctl apply, or destroy --foreign)",
        )
    return Result.ok("state", f"{ctx.paths.state_file}: {len(st.owned)} owned device(s)")


@check(
    "journal",
    "no intent left in the state file's journal by a run that died (the next locked command settles it)",
    "vgpuctl apply (or any create/destroy) settles it under the lock",
)
def journal(ctx: Context) -> Result:
    from ..state import StateStore

    try:
        st = StateStore(ctx.paths).load()
    except VgpuctlError:
        return Result.na("journal", "the state file is unreadable (see the state line)")
    if st.pending:
        ops = ", ".join(f"{p.op} {p.uuid}" for p in st.pending[:3]) + (" ..." if len(st.pending) > 3 else "")
        return Result.warn(
            "journal",
            f"{len(st.pending)} unfinished intent(s) from a run that died: {ops}",
            "vgpuctl apply (or any create/destroy) settles them under the lock",
        )
    return Result.ok("journal", "empty: no run was interrupted")


@check(
    "lock",
    "the lock run/vgpuctl/lock (and its directory): a plain file, not a symlink, not world-writable",
    "remove it (vgpuctl makes a plain one), or chmod o-w it",
)
def lock(ctx: Context) -> Result:
    for path, is_dir in ((ctx.paths.run_dir, True), (ctx.paths.lock_file, False)):
        problem = file_problem(path, want_dir=is_dir)
        if problem:
            fix = (
                f"rm {path} (vgpuctl makes a plain one when it next locks)"
                if not is_dir and "world" not in problem
                else _unsafe_fix(os.fspath(path), problem)
            )
            return Result.fail("lock", f"{path} {problem}", fix)
    if not ctx.paths.lock_file.exists():
        return Result.ok("lock", f"no {ctx.paths.lock_file} yet (made by the first locked command)")
    return Result.ok("lock", f"{ctx.paths.lock_file}: a plain file")


def _has_desired_state(ctx: Context) -> bool:
    from ..spec import spec_files

    return bool(spec_files(ctx.paths.config_dir))


@check(
    "service",
    "the vgpuctl service unit is installed and enabled (systemctl; without it, the unit file and its "
    "multi-user.target.wants link under the root)",
    "systemctl enable --now vgpuctl.service",
)
def service(ctx: Context) -> Result:
    from .nvidia import unit_state

    wanted = _has_desired_state(ctx)
    state, how = unit_state(ctx, UNIT) if shutil.which("systemctl") else (None, "no systemctl")
    if state is None:  # no systemctl: look for the unit file and its enablement link under the root
        files = [d for d in UNIT_DIRS if (ctx.paths.root / d / UNIT).is_file()]
        link = ctx.paths.root / "etc/systemd/system/multi-user.target.wants" / UNIT
        state = "not-found" if not files else ("enabled" if os.path.lexists(link) else "disabled")
        how = "unit files"
    bad = Result.fail if wanted else Result.warn
    why = "the desired state in etc/vgpuctl is not kept across reboots" if wanted else "no desired state yet"
    if state == "not-found":
        return bad(
            "service",
            f"{UNIT} is not installed ({why})",
            "install vgpuctl's package (it ships the unit), or copy systemd/vgpuctl.service to "
            "/etc/systemd/system/, then systemctl enable --now vgpuctl.service",
        )
    if state in ("enabled", "enabled-runtime", "active", "reloading", "activating"):
        return Result.ok("service", f"{UNIT} {state}")
    if how == "systemd":
        return bad("service", f"{UNIT} is {state}, not running ({why})", "systemctl enable --now vgpuctl.service")
    return bad(
        "service", f"{UNIT} is {state}, so it does not start at boot ({why})", "systemctl enable --now vgpuctl.service"
    )


#: blocked reasons that time alone clears, or that say nothing about the desired state itself
_TRANSIENT = ("in-use", "depends", "libvirt-unreachable", "nvml")

#: the fix for each planner block reason (``plan.Block``); ``{t}`` the type, ``{p}`` the parent, ``{u}`` the uuid
_BLOCK_FIX = {
    "parent-missing": "load the parent's driver (see the parents line), or name a parent that exists",
    "type-unknown": "use a type the parent offers: vgpuctl types --parent {p}",
    "no-placement": "see why every GPU refuses: vgpuctl place --type {t} --explain",
    "no-capacity": "vgpuctl status shows what fills the GPU: pin another parent or a smaller type",
    "type-mix": "vgpuctl status shows the GPU's types: use the same type (or size), or another GPU",
    "foreign": "vgpuctl destroy --foreign {u}, or give the instance another uuid",
    "config": "edit the instance as the reason says",
    "libvirt": "set --connect / VGPUCTL_LIBVIRT_URI so the attach can happen",
    "libvirt-unreachable": "start libvirtd (see the libvirt line)",
    "in-use": "stop the VM that uses the device",
    "nvml": "see the nvml line",
    "unsupported": "use a setting the GPU supports: vgpuctl sched show",
    "depends": "fix the blocked action it waits for (another line)",
}


@check(
    "desired-state",
    "the desired state (etc/vgpuctl/vgpuctl.yaml, conf.d/*.yaml) parses and 'vgpuctl plan' can "
    "place every instance (no blocked action)",
    "edit the file and line named, then vgpuctl plan",
)
def desired_state(ctx: Context) -> List[Result]:
    from ..spec import load, spec_files, validate

    files = spec_files(ctx.paths.config_dir)
    if not files:
        return [Result.na("desired-state", f"no desired state ({ctx.paths.config_dir}/vgpuctl.yaml absent)")]
    try:
        desired = load(ctx.paths.config_dir)
    except VgpuctlError as e:
        return [Result.fail("desired-state", str(e), "fix the file and line named, then run vgpuctl plan")]
    from .libvirt import probe

    connect = ctx.connect
    if connect != "none" and not probe(ctx).reachable:
        connect = "none"  # the plan's attaches show blocked; its devices are still judged
    try:
        from ..commands._common import Settings
        from ..commands.reconcile import build_reconciler

        rec = build_reconciler(
            Settings(root=os.fspath(ctx.paths.root), connect=connect, nvml=ctx.nvml, libvirt_timeout=ctx.timeout)
        )
        obs = rec.observe(desired)
        validate(desired, obs.inventory)
    except VgpuctlError as e:
        return [Result.fail("desired-state", str(e), "fix the desired state, then run vgpuctl plan")]
    p = obs.plan
    out = []
    for a in p.blocked:
        block = str(a.block)
        transient = block in _TRANSIENT or (block == "libvirt" and connect != ctx.connect)
        what = a.name or a.uuid or a.parent or "?"
        make = Result.warn if transient else Result.fail
        fix = _BLOCK_FIX.get(block, "vgpuctl plan shows it; change the desired state or the host as it says")
        out.append(
            make(
                "desired-state",
                f"{a.op} {what} blocked: {block}: {a.detail}",
                fix.format(t=a.type_id, p=a.parent or "?", u=a.uuid),
                what,
            )
        )
    if not out:
        n = len(desired.instances)
        todo = f"; {len(p.runnable)} action(s) for vgpuctl apply" if p.runnable else "; the host matches it"
        out.append(Result.ok("desired-state", f"{len(files)} file(s), {n} instance(s), every one placeable{todo}"))
    return out
