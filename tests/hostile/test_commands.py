"""The command families of issue 19 on a static host tree, in process: every refusal is one line, a documented exit
code, no traceback, and no change to the host (``conftest.refused``).  Generated argument vectors cover usage errors
and option values for every command."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpuctl.cli import COMMANDS, cli

from .conftest import SPEC_OK, T4, U1, assert_refused, build_host, invoke, refused, snapshot

EMPTY_STATE = json.dumps({"schema": "vgpuctl.state/v1", "owned": [], "pending": []}, indent=1, sort_keys=True) + "\n"


def spec_dir(root: Path) -> Path:
    return root / "etc" / "vgpuctl"


# --- family 2: an unreadable desired-state file is refused, never skipped -------------------------------------------
def _break_conf_d(root: Path, how: str) -> None:
    cfg = spec_dir(root)
    keep = cfg / "conf.d" / "keep.yaml"
    if how == "symlink-loop":
        keep.symlink_to(keep.name)
    elif how == "main-is-dir":
        (cfg / "vgpuctl.yaml").mkdir()
    elif how == "dropin-is-fifo":
        os.mkfifo(keep)
    elif how == "dropin-unreadable-dir":
        keep.mkdir()
    elif how == "conf.d-is-file":
        (cfg / "conf.d").rmdir()
        (cfg / "conf.d").write_text("version: 1\n")
    elif how == "dangling-symlink":
        keep.symlink_to("gone.yaml")
    elif how == "world-writable":
        keep.write_text(SPEC_OK)
        keep.chmod(0o666)


BREAKS = [
    "symlink-loop",
    "main-is-dir",
    "dropin-is-fifo",
    "dropin-unreadable-dir",
    "conf.d-is-file",
    "dangling-symlink",
    "world-writable",
]


@pytest.mark.parametrize("how", BREAKS)
@pytest.mark.parametrize("command", [["plan"], ["check"], ["apply"], ["plan", "--json"]])
def test_unreadable_desired_state_file_stops_plan_apply_check(host, how, command):
    _break_conf_d(host, how)
    line = refused(host, *command, code=8)
    assert str(spec_dir(host)) in line


# --- family 5: vgpuctl's own files of the wrong kind -----------------------------------------------------------------
def _own(root: Path, how: str) -> None:
    state = root / "var/lib/vgpuctl/state.json"
    run = root / "run/vgpuctl"
    if how.startswith("lock") or how == "run-is-file":
        for f in run.iterdir():
            f.unlink()
    if how == "state-dir":
        state.mkdir()
    elif how == "state-fifo":
        os.mkfifo(state)
    elif how == "state-symlink":
        (root / "elsewhere.json").write_text(EMPTY_STATE)
        state.symlink_to(root / "elsewhere.json")
    elif how == "state-world-writable":
        state.write_text(EMPTY_STATE)
        state.chmod(0o666)
    elif how == "state-nan":
        state.write_text('{"schema": "vgpuctl.state/v1", "owned": [], "pending": [], "x": NaN}')
    elif how == "state-deep":
        state.write_text("[" * 200000)
    elif how == "lock-dir":
        (run / "lock").mkdir()
    elif how == "run-is-file":
        run.rmdir()
        run.write_text("")
    elif how == "lock-symlink":
        (run / "lock").symlink_to(root / "planted-target")
    elif how == "lock-fifo":
        os.mkfifo(run / "lock")


OWN = [
    "state-dir",
    "state-fifo",
    "state-symlink",
    "state-world-writable",
    "state-nan",
    "state-deep",
    "lock-dir",
    "run-is-file",
    "lock-symlink",
    "lock-fifo",
]


@pytest.mark.parametrize("how", OWN)
def test_own_files_of_the_wrong_kind_are_refused(host, how):
    _own(host, how)
    line = refused(host, "create", "-p", T4, "-t", "nvidia-231", code=8)
    assert "vgpuctl: error: " + str(host) in line
    assert not (host / "planted-target").exists()  # a planted symlink is never followed, nor its target created


@pytest.mark.parametrize("how", ["state-dir", "state-fifo", "state-symlink", "state-nan"])
def test_read_only_views_refuse_a_broken_state_file_too(host, how):
    _own(host, how)
    refused(host, "list", code=8)


def test_a_root_that_is_a_file_is_a_usage_error(tmp_path):
    f = tmp_path / "root"
    f.write_text("")
    run = invoke(f, "list")
    line = assert_refused(run, code=2)
    assert "--root" in line


def test_create_on_a_root_that_does_not_exist_creates_nothing(tmp_path):
    root = tmp_path / "nowhere"
    assert_refused(invoke(root, "create", "-p", T4, "-t", "T4-2Q"))
    assert not root.exists()


# --- family 3: a type name shared by two types of one parent ---------------------------------------------------------
def test_ambiguous_type_name_is_exit_2_with_and_without_parent(tree):
    root = build_host(tree)
    gpu = next((root / "sys/devices/pci0000:00").glob(T4))
    tree.mdev_type(gpu, "nvidia-931", available=3, name="NVIDIA T4-2Q")  # the same profile, another type id
    for args in (["-p", T4], []):
        line = refused(root, "create", *args, "-t", "T4-2Q", code=2)
        assert "ambiguous" in line and "nvidia-231" in line and "nvidia-931" in line


# --- family 10: the message names the rule and its holder -----------------------------------------------------------
def test_second_type_on_a_time_sliced_t4_names_the_rule_and_its_holder(host):
    line = refused(host, "create", "-p", T4, "-t", "T4-8Q", code=4)
    assert line == (
        f"vgpuctl: error: GPU {T4} runs T4-2Q; NVIDIA time-sliced GPUs run one type at a time; "
        "free it or choose another GPU"
    )


# --- family 7: every float option is finite --------------------------------------------------------------------------
def _all_commands():
    ctx = click.Context(cli)
    for name in sorted(COMMANDS):
        cmd = cli.get_command(ctx, name)
        yield [name], cmd
        if isinstance(cmd, click.Group):
            for sub in sorted(cmd.list_commands(ctx)):
                yield [name, sub], cmd.get_command(ctx, sub)


def test_every_float_option_is_a_finite_float():
    from vgpuctl.options import FiniteFloat

    floats = [
        (path, p.name)
        for path, cmd in [([], cli)] + list(_all_commands())
        for p in cmd.params
        if isinstance(p.type, click.types.FloatParamType) and not isinstance(p.type, FiniteFloat)
    ]
    assert floats == []


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "+inf", "1e999"])
def test_lock_timeout_nan_or_inf_refused_as_option_and_variable(host, value):
    assert "--lock-timeout" in refused(host, "--lock-timeout", value, "list", code=2)
    line = refused(host, "list", code=2, env={"VGPUCTL_LOCK_TIMEOUT": value})
    assert "lock-timeout" in line


# --- family 8: export -o to a path it cannot write -------------------------------------------------------------------
@pytest.mark.parametrize("target", ["missing/dir/out.yaml", "/dev/full", "is-a-dir"])
def test_export_to_an_unwritable_path_is_one_line(host, tmp_path, target):
    (tmp_path / "is-a-dir").mkdir(exist_ok=True)
    out = target if target.startswith("/") else str(tmp_path / target)
    run = invoke(host, "export", "-o", out)
    line = assert_refused(run)
    assert out in line or "is-a-dir" in target


# --- family 11: completion through the environment variable ----------------------------------------------------------
@pytest.mark.parametrize("instruction", ["tcsh_source", "bash_bogus", "powershell_complete", "source", "_"])
def test_completion_variable_with_an_unknown_shell(host, instruction):
    line = refused(host, code=2, env={"_VGPUCTL_COMPLETE": instruction})
    assert "_VGPUCTL_COMPLETE" in line


def test_completion_variable_with_a_known_shell_still_works(host):
    run = invoke(host, env={"_VGPUCTL_COMPLETE": "bash_source"})
    assert run.code == 0 and "complete" in run.stdout


# --- family 12: usage errors are one line naming the option; --help unchanged ---------------------------------------
def test_help_is_unchanged():
    run = invoke(None, "create", "--help")
    assert run.code == 0 and run.stdout.startswith("Usage: ") and "--parent" in run.stdout


def _bad_values(p: click.Parameter):
    t = p.type
    if isinstance(t, click.Choice):
        return st.just("zz-not-a-choice")
    if isinstance(t, click.types.FloatParamType):
        return st.sampled_from(["nan", "inf", "x", "-1e999", ""])
    if isinstance(t, click.types.IntParamType):
        return st.sampled_from(["x", "1.5", "", "nan"])
    return None


def _usage_error_argv():
    """A command path, some of its real flags, then one certain usage error: an unknown option, a bad value for a
    typed option, or an option missing its value."""
    cases = []
    for path, cmd in _all_commands():
        if isinstance(cmd, click.Group):
            continue
        typed = [(p, _bad_values(p)) for p in cmd.params if isinstance(p, click.Option) and not p.is_flag]
        typed = [(p, s) for p, s in typed if s is not None]
        flags = [p.opts[0] for p in cmd.params if isinstance(p, click.Option) and p.is_flag and p.name != "help"]
        if typed or not cmd.context_settings.get("ignore_unknown_options"):
            cases.append((path, typed, flags, cmd))

    @st.composite
    def argv(draw):
        path, typed, flags, cmd = draw(st.sampled_from(cases))
        head = list(path) + draw(st.lists(st.sampled_from(flags), max_size=2, unique=True)) if flags else list(path)
        # the hook takes whatever libvirt passes, so an unknown option is no error there
        kinds = ([] if cmd.context_settings.get("ignore_unknown_options") else ["unknown"]) + (
            ["value", "no-value"] if typed else []
        )
        kind = draw(st.sampled_from(kinds))
        if kind == "unknown":
            bad = ["--" + draw(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=3, max_size=12)) + "-zz"]
        elif kind == "value":
            p, values = draw(st.sampled_from(typed))
            bad = [p.opts[0], draw(values)]
        else:
            p, _ = draw(st.sampled_from(typed))
            bad = [p.opts[0]]
        return path[0] if len(path) == 1 else " ".join(path), head[: len(path)] + bad + head[len(path) :]

    return argv()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(case=_usage_error_argv())
def test_generated_usage_errors_are_one_line_exit_2_and_change_nothing(host, case):
    name, argv = case
    before = snapshot(host)
    run = invoke(host, *argv)
    line = assert_refused(run, code=2)
    assert "see 'vgpuctl" in line and "--help'" in line
    assert snapshot(host) == before


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    args=st.lists(
        st.sampled_from(
            [
                "list",
                "parents",
                "types",
                "status",
                "plan",
                "check",
                "profiles",
                "--json",
                "-p",
                T4,
                "mtty",
                "-t",
                "T4-2Q",
                "nvidia-231",
                U1,
                "--",
                "-",
                "x" * 300,
                "\x00",
                "é",
                "../..",
                "--root",
                "/",
            ]
        ),
        min_size=1,
        max_size=5,
    )
)
def test_generated_read_only_command_lines_keep_the_contract(host, args):
    """Read-only commands with arbitrary words after them: success, or a refusal by the contract; never a
    traceback, never a change to the host."""
    before = snapshot(host)
    run = invoke(host, *args)
    if run.code != 0:
        assert_refused(run)
    else:
        assert run.exception is None or isinstance(run.exception, SystemExit)
    assert snapshot(host) == before
