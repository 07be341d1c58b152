#!/usr/bin/env python3
"""Write man pages generated from the CLI's own help: vgpuctl(1) and vgpuctl-COMMAND(1) for every command.

Usage: gen-man.py OUTDIR.  The Debian package build runs it (debian/rules); the pages carry the same help text as
docs/cli.md and docs/commands/*.md (scripts/gen-docs.py), so neither can drift from the CLI.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import sys
from pathlib import Path

import click

import vgpuctl
from vgpuctl.cli import COMMANDS, cli
from vgpuctl.errors import EXIT_CODES

_spec = importlib.util.spec_from_file_location("gen_docs", Path(__file__).resolve().parent / "gen-docs.py")
gen_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_docs)  # type: ignore[union-attr]


def roff(text: str) -> str:
    """Text for a no-fill block: backslashes escaped, and no line may start a request (. or ')."""
    out = []
    for line in text.replace("\\", "\\e").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def page(title: str, summary: str, body: str, see_also: list) -> str:
    # reproducible builds: dpkg-buildpackage sets SOURCE_DATE_EPOCH from debian/changelog
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    day = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc) if epoch else datetime.datetime.now()
    date = day.date().isoformat()
    head = [
        f'.TH {title.upper()} 1 "{date}" "vgpuctl {vgpuctl.__version__}" "vgpuctl manual"',
        ".SH NAME",
        f"{title} \\- {summary}",
        ".SH SYNOPSIS AND OPTIONS",
        ".nf",
        roff(body),
        ".fi",
        ".SH EXIT STATUS",
    ]
    for code, meaning in sorted(EXIT_CODES.items()):
        head += [".TP", f"\\fB{code}\\fR", roff(meaning)]
    head += [
        ".SH ENVIRONMENT",
        "Every option can also be set from the environment: the global options from the variables named in",
        "their help, a command's options from VGPUCTL_<COMMAND>_<OPTION>, and \\-\\-json from VGPUCTL_JSON=1.",
        ".SH SEE ALSO",
        ", ".join(f"\\fB{name}\\fR(1)" for name in see_also) + ", /usr/share/doc/vgpuctl/",
    ]
    return "\n".join(head) + "\n"


def first_line(cmd: click.Command) -> str:
    text = (cmd.short_help or cmd.help or "").strip().splitlines()
    return (text[0].rstrip(".") if text else "").replace("\\", "\\e")


def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    root = click.Context(cli, info_name="vgpuctl", **cli.context_settings)
    names = sorted(COMMANDS)
    (outdir / "vgpuctl.1").write_text(
        page(
            "vgpuctl",
            "manage virtual GPUs on KVM/libvirt hosts",
            gen_docs.help_text(cli, "vgpuctl"),
            [f"vgpuctl-{n}" for n in names],
        )
    )
    for name in names:
        cmd = cli.get_command(root, name)
        (outdir / f"vgpuctl-{name}.1").write_text(
            page(
                f"vgpuctl-{name}",
                first_line(cmd) or f"vgpuctl {name}",
                gen_docs.help_text(cmd, name, root),
                ["vgpuctl"],
            )
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: gen-man.py OUTDIR")
    main(Path(sys.argv[1]))
