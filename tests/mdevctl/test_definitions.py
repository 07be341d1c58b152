"""mdevctl's definition files: the pure parser, the bounded reader, and the planner's never-fight rules.

The file format is the one Debian's mdevctl 1.2.0 writes (``test_real_mdevctl.py`` checks the reader against the real
tool's files)."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reconcile"))

from helpers import desired, inventory, state, want  # noqa: E402

from vgpuctl.host import mdevctl  # noqa: E402
from vgpuctl.paths import HostPaths  # noqa: E402
from vgpuctl.plan import Block, Op, plan  # noqa: E402

U1 = "11111111-2222-3333-4444-555555555555"
U2 = "11111111-2222-3333-4444-666666666666"
GPU = "0000:3b:00.0"


def write(root, parent, uuid, doc):
    d = root / "etc" / "mdevctl.d" / parent
    d.mkdir(parents=True, exist_ok=True)
    p = d / uuid
    p.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc, indent=2).encode())
    return p


# --- parser -------------------------------------------------------------------------------------------------------
def test_parse_mdevctl_1x_layout():
    d = mdevctl.parse_definition(
        b'{"mdev_type": "nvidia-231", "start": "auto", "attrs": [{"a": "1"}, {"b": "2"}]}',
        uuid=U1,
        parent=GPU,
        path="/x",
    )
    assert (d.type_id, d.start, d.attrs, d.auto, d.label) == (
        "nvidia-231",
        "auto",
        (("a", "1"), ("b", "2")),
        True,
        "mdevctl:auto",
    )
    m = mdevctl.parse_definition(b'{"mdev_type": "mtty-1", "start": "manual"}', uuid=U1, parent="mtty")
    assert (m.auto, m.label, m.attrs) == (False, "mdevctl:manual", ())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b'{"mdev_type": "nvidia-231", "start": "au',
        b"[]",
        b'{"start": "auto"}',
        b'{"mdev_type": "x"}',
        b'{"mdev_type": "x", "start": "sometimes"}',
        b'{"mdev_type": "../x", "start": "auto"}',
        b'{"mdev_type": "x", "start": "auto", "attrs": {"a": "b"}}',
        b'{"mdev_type": "x", "start": "auto", "attrs": [{"a": 1}]}',
        b'{"mdev_type": "x", "start": "auto", "attrs": [{}]}',
        b"\xff\xfe",
        b"[" * 100000,
    ],
)
def test_parse_refuses_what_is_no_definition(data):
    with pytest.raises(mdevctl.DefinitionError):
        mdevctl.parse_definition(data, uuid=U1, parent=GPU)


def test_definition_json_round_trips():
    d = mdevctl.Definition(U1, GPU, "nvidia-231", "auto", (("k", "v"),), "/p")
    assert mdevctl.parse_definition(mdevctl.definition_json(d).encode(), uuid=U1, parent=GPU, path="/p") == d


# --- reader -------------------------------------------------------------------------------------------------------
def test_reader_reads_every_parent_and_skips_scripts(tmp_path):
    write(tmp_path, GPU, U1, {"mdev_type": "nvidia-231", "start": "auto", "attrs": []})
    write(tmp_path, "MTTY", U2, {"mdev_type": "mtty-1", "start": "manual", "attrs": []})
    (tmp_path / "etc/mdevctl.d/scripts.d/callouts").mkdir(parents=True)
    defs = mdevctl.read_definitions(HostPaths.from_root(tmp_path))
    assert [(d.parent, d.uuid, d.start) for d in defs.definitions] == [(GPU, U1, "auto"), ("MTTY", U2, "manual")]
    assert defs.problems == ()


def test_reader_without_mdevctl_is_empty(tmp_path):
    assert mdevctl.read_definitions(HostPaths.from_root(tmp_path)) == mdevctl.Definitions()


@pytest.mark.parametrize("case", ["corrupt", "truncated", "symlink", "large", "fifo"])
def test_untrusted_file_is_one_problem_and_an_unreadable_definition(tmp_path, case):
    base = tmp_path / "etc" / "mdevctl.d" / GPU
    base.mkdir(parents=True)
    target = tmp_path / "elsewhere"
    target.write_text(json.dumps({"mdev_type": "nvidia-231", "start": "auto"}))
    p = base / U1
    if case == "corrupt":
        p.write_bytes(b"\x00garbage{")
    elif case == "truncated":
        p.write_bytes(b'{\n  "mdev_type": "nvidia-231",\n  "sta')
    elif case == "symlink":
        p.symlink_to(target)
    elif case == "large":
        p.write_bytes(b" " * (mdevctl.MAX_FILE_BYTES + 1))
    else:
        os.mkfifo(p)
    defs = mdevctl.read_definitions(HostPaths.from_root(tmp_path))
    assert len(defs.problems) == 1 and defs.problems[0].path == str(p)
    assert "\n" not in defs.problems[0].line()
    if case == "fifo":
        assert defs.definitions == ()
    else:  # mdevctl may still act on it at boot: vgpuctl counts it, start unknown
        (d,) = defs.definitions
        assert (d.uuid, d.valid, d.auto, d.label) == (U1, False, True, "mdevctl:invalid")


def test_symlinked_parent_directory_is_not_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / U1).write_text(json.dumps({"mdev_type": "nvidia-231", "start": "auto"}))
    (tmp_path / "etc" / "mdevctl.d").mkdir(parents=True)
    (tmp_path / "etc" / "mdevctl.d" / GPU).symlink_to(real)
    defs = mdevctl.read_definitions(HostPaths.from_root(tmp_path))
    assert defs.definitions == () and len(defs.problems) == 1 and "symlink" in defs.problems[0].problem


def test_bad_names_warn(tmp_path):
    write(tmp_path, GPU, "not-a-uuid", {"mdev_type": "nvidia-231", "start": "auto"})
    defs = mdevctl.read_definitions(HostPaths.from_root(tmp_path))
    assert defs.definitions == () and defs.problems[0].path.endswith("not-a-uuid")


def test_check_names_missing_parent_and_unknown_type(tmp_path):
    write(tmp_path, "0000:99:00.0", U1, {"mdev_type": "nvidia-231", "start": "auto"})
    write(tmp_path, GPU, U2, {"mdev_type": "nvidia-999", "start": "auto"})
    defs = mdevctl.read_definitions(HostPaths.from_root(tmp_path))
    problems = mdevctl.check(defs, [GPU], lambda p, t: t == "nvidia-231")
    assert [
        (os.path.basename(os.path.dirname(p.path)), "not registered" in p.problem, "does not offer" in p.problem)
        for p in problems
    ] == [(GPU, False, True), ("0000:99:00.0", True, False)]


def test_remove_and_restore_are_exact(tmp_path):
    p = write(tmp_path, GPU, U1, b'{"mdev_type": "nvidia-231", "start": "auto", "attrs": []}')
    (d,) = mdevctl.read_definitions(HostPaths.from_root(tmp_path)).definitions
    saved = mdevctl.read_bytes(d.path)
    mdevctl.remove_definition(d)
    assert not p.exists()
    mdevctl.remove_definition(d)  # already gone: fine
    mdevctl.restore_definition(d, saved)
    assert p.read_bytes() == saved


# --- planner: never fight -----------------------------------------------------------------------------------------
def defn(uuid, parent="mtty", type_id="mtty-1", start="auto"):
    return mdevctl.Definition(uuid, parent, type_id, start, (), f"/etc/mdevctl.d/{parent}/{uuid}")


def test_desired_and_auto_defined_is_double_managed():
    inv = inventory([(U1, "mtty", "mtty-1")])
    p = plan(inv, state(), desired(want("a", "mtty-1", uuid=U1)), foreign={U1: defn(U1)})
    (a,) = p.actions
    assert (a.op, a.block, a.uuid) == (Op.MANAGE, Block.FOREIGN_MANAGED, U1)
    assert "adopt --from-mdevctl --undefine" in a.detail and not p.runnable
    # without mdevctl's definition the same host is converged
    assert plan(inv, state(), desired(want("a", "mtty-1", uuid=U1))).empty


def test_never_recreates_over_an_auto_definition():
    p = plan(inventory(), state(), desired(want("a", "mtty-1", uuid=U1)), foreign={U1: defn(U1)})
    assert [(a.op, a.block) for a in p.actions] == [(Op.MANAGE, Block.FOREIGN_MANAGED)]


def test_never_retypes_over_a_definition():
    inv = inventory([(U1, "mtty", "mtty-1")])
    owned = state([(U1, "mtty", "mtty-1")])
    for start in ("auto", "manual"):
        p = plan(inv, owned, desired(want("a", "mtty-2", uuid=U1)), foreign={U1: defn(U1, start=start)})
        assert not p.runnable, start
        assert Block.FOREIGN_MANAGED in {a.block for a in p.actions}


def test_never_destroys_an_owned_device_mdevctl_defines():
    inv = inventory([(U1, "mtty", "mtty-1")])
    owned = state([(U1, "mtty", "mtty-1")])
    assert [a.op for a in plan(inv, owned, desired()).runnable] == [Op.DESTROY]
    for start in ("auto", "manual"):
        p = plan(inv, owned, desired(), foreign={U1: defn(U1, start=start)})
        assert [(a.op, a.block) for a in p.actions] == [(Op.DESTROY, Block.FOREIGN_MANAGED)]


def test_manual_definition_that_agrees_is_no_conflict():
    p = plan(inventory(), state(), desired(want("a", "mtty-1", uuid=U1)), foreign={U1: defn(U1, start="manual")})
    assert [(a.op, a.block) for a in p.actions] == [(Op.CREATE, None)]
    other = plan(inventory(), state(), desired(want("a", "mtty-2", uuid=U1)), foreign={U1: defn(U1, start="manual")})
    assert [(a.op, a.block) for a in other.actions] == [(Op.MANAGE, Block.FOREIGN_MANAGED)]


def test_unreadable_definition_counts_as_auto():
    bad = mdevctl.Definition(U1, "mtty", None, None, (), "/etc/mdevctl.d/mtty/" + U1)
    p = plan(inventory(), state(), desired(want("a", "mtty-1", uuid=U1)), foreign={U1: bad})
    assert [(a.op, a.block) for a in p.actions] == [(Op.MANAGE, Block.FOREIGN_MANAGED)]


def test_foreign_device_mdevctl_defines_is_left_alone():
    inv = inventory([(U2, "mtty", "mtty-1")])
    assert plan(inv, state(), desired(), foreign={U2: defn(U2)}).empty
