"""The ``vgpuctl`` command line: parse, call the library, render.  Nothing else lives here.

Sub-commands are imported only when invoked (``COMMANDS`` maps each name to ``module:function``), so that
``vgpuctl list`` does not pay for libvirt, jinja2 or YAML.  Every option can also come from the environment:
the global ones from the variables named in their help, the others from ``VGPUCTL_<COMMAND>_<OPTION>``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any, List, Optional

import click

from . import __version__
from .errors import InvalidInput, VgpuctlError
from .options import FiniteFloat

#: click >= 8.2 shows a group's help, when it is called without a sub-command, by raising this UsageError; click 8.1
#: (Debian 12's python3-click) prints the help and exits instead, so there nothing matches
_NO_ARGS_IS_HELP: Any = getattr(click.exceptions, "NoArgsIsHelpError", ())

COMMANDS = {
    "parents": "vgpuctl.commands.inventory:parents",
    "types": "vgpuctl.commands.inventory:types",
    "list": "vgpuctl.commands.inventory:list_instances",
    "create": "vgpuctl.commands.create:create",
    "destroy": "vgpuctl.commands.create:destroy",
    "place": "vgpuctl.commands.place:place",
    "defrag": "vgpuctl.commands.place:defrag",
    "plan": "vgpuctl.commands.reconcile:plan_cmd",
    "apply": "vgpuctl.commands.reconcile:apply",
    "check": "vgpuctl.commands.reconcile:check",
    "export": "vgpuctl.commands.reconcile:export",
    "adopt": "vgpuctl.commands.coexist:adopt",
    "service": "vgpuctl.commands.reconcile:service",
    "attach": "vgpuctl.commands.attach:attach",
    "detach": "vgpuctl.commands.attach:detach",
    "domains": "vgpuctl.commands.attach:domains",
    "hook": "vgpuctl.commands.attach:hook",
    "profiles": "vgpuctl.commands.profiles:profiles",
    "status": "vgpuctl.commands.status:status",
    "completion": "vgpuctl.commands.status:completion",
    "sched": "vgpuctl.commands.sched:sched",
    "hetero": "vgpuctl.commands.sched:hetero",
    "migrate": "vgpuctl.commands.migrate:migrate",
    "doctor": "vgpuctl.commands.doctor:doctor",
}


def usage_line(e: click.UsageError) -> str:
    """A click usage error as one line: the command, click's own message (it names the option), and the fix."""
    path = e.ctx.command_path if e.ctx is not None else "vgpuctl"
    sub = path.split(" ", 1)[1] + ": " if " " in path else ""
    msg = " ".join(e.format_message().split()).rstrip(".")
    return f"vgpuctl: error: {sub}{msg[:1].lower() + msg[1:]}; see '{path} --help'"


def _usage_exit(e: click.UsageError) -> "click.exceptions.Exit":
    click.echo(usage_line(e), err=True)
    return click.exceptions.Exit(InvalidInput.exit_code)


#: The shells click can complete for; ``_VGPUCTL_COMPLETE`` must be one of ``{shell}_source``/``{shell}_complete``.
COMPLETION_SHELLS = ("bash", "zsh", "fish")


def _check_completion(complete_var: Optional[str], prog_name: Optional[str]) -> None:
    """The environment-variable form of completion with an unknown shell or instruction: one line, exit 2."""
    import os

    var = complete_var or f"_{(prog_name or 'vgpuctl').replace('-', '_').upper()}_COMPLETE"
    instruction = os.environ.get(var)
    if not instruction:
        return
    shell, _, action = instruction.partition("_")
    if shell not in COMPLETION_SHELLS or action not in ("source", "complete"):
        click.echo(
            f"vgpuctl: error: {var}={instruction!r} is not a completion instruction; use one of "
            f"{', '.join(s + '_source' for s in COMPLETION_SHELLS)} (or run 'vgpuctl completion SHELL')",
            err=True,
        )
        sys.exit(InvalidInput.exit_code)


def _check_root(value: str) -> str:
    """``--root`` must be a directory where it exists (one that does not exist reads as an empty host, and nothing
    is created under it)."""
    import os

    if os.path.lexists(value) and not os.path.isdir(value):
        raise click.BadParameter(f"{value} is not a directory: give the host's root (/, or a simulated host's)")
    return value


class LazyGroup(click.Group):
    """The top-level group: commands imported when invoked, typed errors and usage errors as one line each.

    Usage errors (an unknown option, a bad value, a missing argument), wherever click raises them in the command
    tree, are printed as one ``vgpuctl: error:`` line naming the option and the fix, with exit 2; ``--help`` and a
    group called without a sub-command still show click's help."""

    def main(
        self,
        args: Any = None,
        prog_name: Optional[str] = None,
        complete_var: Optional[str] = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        _check_completion(complete_var, prog_name)
        return super().main(args, prog_name, complete_var, standalone_mode, **extra)

    def make_context(
        self, info_name: Optional[str], args: List[str], parent: Optional[click.Context] = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            if isinstance(e, _NO_ARGS_IS_HELP):
                raise
            raise _usage_exit(e) from None

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VgpuctlError as e:
            click.echo(f"vgpuctl: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except click.UsageError as e:
            if isinstance(e, _NO_ARGS_IS_HELP):
                raise
            raise _usage_exit(e) from None


@click.group(
    name="vgpuctl",
    cls=LazyGroup,
    context_settings={"auto_envvar_prefix": "VGPUCTL", "help_option_names": ["-h", "--help"]},
)
@click.option(
    "--root",
    envvar="VGPUCTL_ROOT",
    default="/",
    show_default=True,
    metavar="DIR",
    callback=lambda ctx, param, value: _check_root(value),
    help="Host root: sysfs is DIR/sys, state DIR/var/lib/vgpuctl, config DIR/etc/vgpuctl. [env VGPUCTL_ROOT]",
)
@click.option(
    "--connect",
    envvar="VGPUCTL_LIBVIRT_URI",
    default="qemu:///system",
    show_default=True,
    metavar="URI",
    help="libvirt URI; 'none' disables libvirt. [env VGPUCTL_LIBVIRT_URI]",
)
@click.option(
    "--lock-timeout",
    envvar="VGPUCTL_LOCK_TIMEOUT",
    type=FiniteFloat(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a mutating command waits for another vgpuctl's lock. [env VGPUCTL_LOCK_TIMEOUT]",
)
@click.option(
    "--libvirt-timeout",
    envvar="VGPUCTL_LIBVIRT_TIMEOUT",
    type=FiniteFloat(min=0, min_open=True),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="How long one read of libvirt (or one connect) may take before libvirt counts as unreachable. "
    "[env VGPUCTL_LIBVIRT_TIMEOUT]",
)
@click.option(
    "--nvml",
    envvar="VGPUCTL_NVML",
    type=click.Choice(["auto", "off"]),
    default="auto",
    show_default=True,
    help="auto: add NVIDIA NVML details where the host has NVIDIA GPUs; off: sysfs only. [env VGPUCTL_NVML]",
)
@click.option("-v", "--verbose", count=True, help="Log more on stderr (-v info, -vv debug).")
@click.version_option(__version__, prog_name="vgpuctl")
@click.pass_context
def cli(
    ctx: click.Context, root: str, connect: str, lock_timeout: float, libvirt_timeout: float, nvml: str, verbose: int
) -> None:
    """Manage virtual GPUs (mediated devices) on this host."""
    from .commands._common import Settings

    logging.basicConfig(
        stream=sys.stderr,
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="vgpuctl: %(levelname)s: %(message)s",
    )
    ctx.obj = Settings(
        root=root, connect=connect, lock_timeout=lock_timeout, nvml=nvml, libvirt_timeout=libvirt_timeout
    )


def main() -> None:
    cli.main(prog_name="vgpuctl")


if __name__ == "__main__":
    main()
