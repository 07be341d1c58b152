"""Desired-state files: strict parsing, merging in name order, errors with file, line and key."""

import subprocess
import sys
import textwrap

import pytest

from vgpuctl.errors import ConfigError
from vgpuctl.spec import AttachMode, derive_uuid, load, parse, validate

from helpers import inventory

GOOD = """\
version: 1
instances:
  web-1:
    type: T4-2Q
    parent: 0000:3B:00.0
    domain: web-1
    attach: both
  db:
    uuid: 83B8F4F2-509F-382F-3C1E-E6BFE0FA1001
    type: mtty-1
    placement: {tenant: a, numa_node: 0}
"""


def write(root, name, text):
    p = root / "etc" / "vgpuctl" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def test_parse_good():
    ds = parse(GOOD, path="x.yaml")
    web, db = ds.instances
    assert web.name == "web-1" and web.parent == "0000:3b:00.0" and web.uuid == derive_uuid("web-1")
    assert web.uuid_derived and web.attach is AttachMode.BOTH and web.domain == "web-1"
    assert db.uuid == "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001" and not db.uuid_derived
    assert db.parent is None and db.placement.tenant == "a" and db.placement.numa_node == 0
    assert db.mark.line == 8


def test_derived_uuid_is_stable():
    assert derive_uuid("web-1") == derive_uuid("web-1") != derive_uuid("web-2")
    assert derive_uuid("web-1") == "a7005217-970f-5b0f-813a-4a3ddc82ee01"  # pinned: derived uuids must never change


@pytest.mark.parametrize(
    "text,line,key",
    [
        ("version: 1\nbogus: 1\n", 2, "bogus"),
        ("version: 2\n", 1, "version"),
        ("instances: {}\n", 1, "version"),
        (
            "version: 1\ninstances:\n  a:\n    type: mtty-1\n    parent: mtty\n    colour: red\n",
            6,
            "instances.a.colour",
        ),
        ("version: 1\ninstances:\n  a:\n    parent: mtty\n", 4, "instances.a.type"),
        ("version: 1\ninstances:\n  a:\n    type: mtty-1\n", 4, "instances.a"),
        ("version: 1\ninstances:\n  a:\n    type: mtty-1\n    parent: mtty\n    uuid: nope\n", 6, "instances.a.uuid"),
        ("version: 1\ninstances:\n  a:\n    type: mtty-1\n    parent: ../x\n", 5, "instances.a.parent"),
        (
            "version: 1\ninstances:\n  a:\n    type: mtty-1\n    parent: mtty\n    attach: live\n",
            6,
            "instances.a.attach",
        ),
        ("version: 1\ninstances:\n  a: {type: t, parent: p}\n  a: {type: t, parent: p}\n", 4, "instances.a"),
        (
            "version: 1\ninstances:\n  a: {type: t, parent: p, uuid: 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001}\n"
            "  b: {type: t, parent: p, uuid: 83B8F4F2-509F-382F-3C1E-E6BFE0FA1001}\n",
            4,
            "instances.b.uuid",
        ),
        ("version: 1\ninstances: [a]\n", 2, "instances"),
        ("version: 1\n  x: : :\n", 2, None),
    ],
)
def test_strict_errors(text, line, key):
    with pytest.raises(ConfigError) as e:
        parse(text, path="f.yaml")
    assert (e.value.path, e.value.line, e.value.key) == ("f.yaml", line, key)


def test_merge_in_name_order_and_duplicates_across_files(tmp_path):
    write(tmp_path, "vgpuctl.yaml", "version: 1\ninstances:\n  a: {type: mtty-1, parent: mtty}\n")
    write(tmp_path, "conf.d/20-b.yaml", "version: 1\ninstances:\n  c: {type: mtty-1, parent: mtty}\n")
    write(tmp_path, "conf.d/10-a.yaml", "version: 1\ninstances:\n  b: {type: mtty-1, parent: mtty}\n")
    write(tmp_path, "conf.d/notes.txt", "ignored")
    ds = load(tmp_path / "etc" / "vgpuctl")
    assert [d.name for d in ds.instances] == ["a", "b", "c"]
    dup = write(tmp_path, "conf.d/30-dup.yaml", "version: 1\ninstances:\n\n  a: {type: mtty-2, parent: mtty}\n")
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "etc" / "vgpuctl")
    assert (e.value.path, e.value.line, e.value.key) == (str(dup), 4, "instances.a")


def test_no_files_is_empty(tmp_path):
    assert load(tmp_path / "etc" / "vgpuctl").instances == ()


def test_validate_against_host():
    inv = inventory()
    validate(parse(GOOD.replace("T4-2Q", "nvidia-231"), path="x"), inv)
    with pytest.raises(ConfigError) as e:
        validate(parse("version: 1\ninstances:\n  a:\n    type: mtty-9\n    parent: mtty\n", path="x"), inv)
    assert (e.value.line, e.value.key) == (4, "instances.a.type")
    with pytest.raises(ConfigError) as e:
        validate(parse("version: 1\ninstances:\n  a:\n    type: nope\n    placement: {}\n", path="x"), inv)
    assert e.value.key == "instances.a.type"
    # a parent that is not registered (yet) is not an error: its instances wait
    validate(parse("version: 1\ninstances:\n  a: {type: x, parent: '0000:99:00.0'}\n", path="x"), inv)


def test_validate_capacity_with_max_instance():
    from dataclasses import replace

    inv = inventory()
    inv = type(inv)(parents=inv.parents, types=tuple(replace(t, max_instance=2) for t in inv.types))
    text = "version: 1\ninstances:\n" + "".join(f"  i{n}: {{type: mtty-1, parent: mtty}}\n" for n in range(3))
    with pytest.raises(ConfigError) as e:
        validate(parse(text, path="x"), inv)
    assert (e.value.line, e.value.key) == (5, "instances.i2.parent")


def test_list_does_not_import_yaml():
    code = (
        "import sys; from vgpuctl.cli import cli\n"
        "try:\n    cli.main(['--root', '/nonexistent', 'list'], standalone_mode=False)\nexcept SystemExit: pass\n"
        "print('yaml' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


# --- gpus: GPU-wide settings --------------------------------------------------------------------------------------
GPUS = """\
version: 1
gpus:
  4A:00.0:
    scheduler: {policy: equal-share, timeslice_ms: 2}
    heterogeneous: false
  "0000:ca:00.0":
    scheduler:
      policy: best-effort
"""


def test_parse_gpus():
    a, b = parse(GPUS, path="x.yaml").gpus
    assert (a.gpu, a.scheduler.policy, a.scheduler.timeslice_ms, a.heterogeneous) == (
        "0000:4a:00.0",
        "equal-share",
        2.0,
        False,
    )
    assert (b.gpu, b.scheduler.text(), b.heterogeneous, b.mark.line) == ("0000:ca:00.0", "best-effort", None, 6)


@pytest.mark.parametrize(
    "text,line,key",
    [
        ("version: 1\ngpus:\n  nope:\n    heterogeneous: true\n", 3, "gpus.nope"),
        ("version: 1\ngpus:\n  4a:00.0:\n    colour: red\n", 4, "gpus.0000:4a:00.0.colour"),
        ("version: 1\ngpus:\n  4a:00.0: {}\n", 3, "gpus.0000:4a:00.0"),
        ("version: 1\ngpus:\n  4a:00.0:\n    heterogeneous: yes please\n", 4, "gpus.0000:4a:00.0.heterogeneous"),
        ("version: 1\ngpus:\n  4a:00.0:\n    scheduler: {timeslice_ms: 2}\n", 4, "gpus.0000:4a:00.0.scheduler.policy"),
        ("version: 1\ngpus:\n  4a:00.0:\n    scheduler: {policy: fair}\n", 4, "gpus.0000:4a:00.0.scheduler.policy"),
        (
            "version: 1\ngpus:\n  4a:00.0:\n    scheduler:\n      policy: equal-share\n      timeslice_ms: 0\n",
            6,
            "gpus.0000:4a:00.0.scheduler.timeslice_ms",
        ),
        (
            "version: 1\ngpus:\n  4a:00.0:\n    scheduler:\n      policy: best-effort\n      timeslice_ms: 2\n",
            6,
            "gpus.0000:4a:00.0.scheduler.timeslice_ms",
        ),
        (
            "version: 1\ngpus:\n  4a:00.0:\n    scheduler: {policy: fixed-share}\n    heterogeneous: true\n",
            4,
            "gpus.0000:4a:00.0.scheduler.policy",
        ),
        (
            "version: 1\ngpus:\n  4a:00.0: {heterogeneous: true}\n  0000:4A:00.0: {heterogeneous: true}\n",
            4,
            "gpus.0000:4a:00.0",
        ),
    ],
)
def test_gpus_errors_name_file_line_key(text, line, key):
    with pytest.raises(ConfigError) as e:
        parse(text, path="g.yaml")
    assert (e.value.path, e.value.line, e.value.key) == ("g.yaml", line, key), str(e.value)


def test_gpu_configured_in_two_files(tmp_path):
    write(tmp_path, "vgpuctl.yaml", "version: 1\ngpus:\n  4a:00.0: {heterogeneous: true}\n")
    write(tmp_path, "conf.d/10-x.yaml", "version: 1\ngpus:\n  4a:00.0: {heterogeneous: false}\n")
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "etc" / "vgpuctl")
    assert (
        e.value.path.endswith("10-x.yaml") and e.value.key == "gpus.0000:4a:00.0" and "vgpuctl.yaml:3" in str(e.value)
    )
