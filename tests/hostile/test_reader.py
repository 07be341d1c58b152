"""Family 1 (YAML) and the JSON records: the one strict reader refuses hostile content with a ``ConfigError`` or
``StateError`` naming the file (and the line, where there is one), never a traceback, a hang or a guess."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpuctl import configfile
from vgpuctl.errors import ConfigError, StateError, VgpuctlError
from vgpuctl.policy import load_policy, parse_policy
from vgpuctl.profiles import parse_profiles
from vgpuctl.spec import parse

PARSERS = {
    "spec": lambda text: parse(text, path="f.yaml"),
    "policy": lambda text: parse_policy(text, path="f.yaml"),
    "profiles": lambda text: parse_profiles(text, path="f.yaml"),
}
VALID = {
    "spec": 'version: 1\ninstances:\n  a:\n    type: T4-2Q\n    parent: "0000:3b:00.0"\n',
    "policy": "version: 1\nnuma: prefer\ndefault:\n  strategy: pack\n  types: [T4-2Q]\n",
    "profiles": "version: 1\nprofiles:\n  gold:\n    type: T4-2Q\n    limits: {per_tenant: 2}\n",
}
TAGS = [
    "!!python/object:os.system",
    "!!python/object/apply:os.system",
    "!!int",
    "!!timestamp",
    "!custom",
    "!",
    "!!binary",
    "!!float",
    "!!str",
    "!!map",
    "!!seq",
    "!<tag:yaml.org,2002:int>",
    "!!set",
]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def refuses(kind: str, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        PARSERS[kind](text)
    assert "\n" not in str(e.value)
    return e.value


@pytest.mark.parametrize("kind", PARSERS)
@pytest.mark.parametrize("tag", TAGS)
def test_every_explicit_tag_is_refused_at_its_line(kind, tag):
    text = VALID[kind] + f'extra: {tag} "abc"\n'
    e = refuses(kind, text)
    assert e.line == text.count("\n") and "tag" in e.problem


@pytest.mark.parametrize("kind", PARSERS)
def test_a_tag_on_the_version_or_deep_inside_is_refused(kind):
    e = refuses(kind, 'version: !!int "abc"\n')
    assert e.line == 1
    e = refuses(kind, VALID[kind].replace("T4-2Q", "!!timestamp 2001-12-14"))
    assert "tag" in e.problem and e.line is not None


@pytest.mark.parametrize("kind", PARSERS)
@pytest.mark.parametrize("version", ["true", "false", '"1"', "v1", "1.0", "0x1", "2", "null", "[1]", "2001-12-14"])
def test_version_is_the_integer_1(kind, version):
    e = refuses(kind, VALID[kind].replace("version: 1", f"version: {version}"))
    assert e.key == "version" and e.line == 1


@pytest.mark.parametrize("kind", PARSERS)
def test_deep_nesting_is_bounded(kind):
    for opener, closer in (("[", "]"), ("{a: ", "}")):
        e = refuses(kind, "version: 1\nx: " + opener * 5000 + closer * 5000 + "\n")
        assert "nested deeper" in e.problem


@pytest.mark.parametrize("kind", PARSERS)
def test_an_implicit_value_the_constructor_cannot_build_is_an_error_at_its_line(kind):
    # YAML 1.1's implicit timestamp matches 2001-13-45, and PyYAML then fails to build it
    text = VALID[kind].replace("T4-2Q", "2001-13-45")
    try:
        PARSERS[kind](text)
    except ConfigError as e:
        assert e.line is not None
    # a scalar where the value is read as a plain one
    refuses(kind, "version: 2001-13-45\n")


# --- generated documents: every parser, random structure and random text --------------------------------------------
_scalar = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(
        [
            "true",
            "no",
            "~",
            "null",
            ".inf",
            ".nan",
            "0x1f",
            "0o7",
            "1_000",
            "2001-13-45",
            "2001-12-14",
            "12:30:00",
            "1e400",
            "'q'",
            '"\\u0000"',
            "<<",
            "&a x",
            "*a",
            "|",
            ">",
            "!!int x",
            "!x y",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12).map(
        lambda t: '"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"'
    ),
)
_keys = st.sampled_from(
    [
        "version",
        "instances",
        "gpus",
        "profiles",
        "default",
        "numa",
        "quotas",
        "anti_affinity",
        "type",
        "parent",
        "uuid",
        "placement",
        "limits",
        "per_tenant",
        "tenants",
        "scheduler",
        "policy",
        "timeslice_ms",
        "heterogeneous",
        "a",
        "0000:3b:00.0",
        "<<",
        "gold",
    ]
)


def _flow(children):
    return st.one_of(
        st.lists(children, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(_keys, children), max_size=4).map(
            lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"
        ),
    )


_value = st.recursive(_scalar, _flow, max_leaves=20)
_doc = st.lists(st.tuples(_keys, _value), max_size=6).map(lambda kv: "".join(f"{k}: {v}\n" for k, v in kv))


@pytest.mark.parametrize("kind", PARSERS)
@FAST
@given(body=_doc, tag=st.sampled_from([""] + TAGS))
def test_generated_documents_parse_or_fail_with_a_config_error(kind, body, tag):
    text = "version: 1\n" + body
    if tag:
        text = text.replace(": ", f": {tag} ", 1)
    try:
        PARSERS[kind](text)
    except ConfigError as e:
        assert e.path == "f.yaml" and "\n" not in str(e)


@pytest.mark.parametrize("kind", PARSERS)
@FAST
@given(raw=st.binary(max_size=200))
def test_generated_bytes_parse_or_fail_with_a_config_error(kind, raw, tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "f.yaml"
    path.write_bytes(raw)
    try:
        text = configfile.read_config(path)
        PARSERS[kind](text or "")
    except ConfigError:
        pass


# --- the files themselves: kind, size, symlinks, world-writable ---------------------------------------------------
def test_policy_from_dev_zero_is_refused_without_reading_it():
    with pytest.raises(ConfigError) as e:
        load_policy("/dev/zero", missing_ok=False, follow=True)
    assert "character device" in e.value.problem


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as e:
        load_policy(fifo)
    assert "FIFO" in e.value.problem


def test_size_is_bounded(tmp_path):
    big = tmp_path / "vgpuctl.yaml"
    big.write_bytes(b"version: 1\n" + b"#" * (2 << 20))  # over the 1 MiB bound
    with pytest.raises(ConfigError) as e:
        configfile.read_config(big)
    assert "larger than" in e.value.problem


def test_symlinks_in_own_dirs_refused_named_files_followed(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_text("version: 1\n")
    link = tmp_path / "policy.yaml"
    link.symlink_to(real)
    with pytest.raises(ConfigError) as e:
        load_policy(link)
    assert "symlink" in e.value.problem
    assert load_policy(link, follow=True) is not None
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    with pytest.raises(ConfigError):
        load_policy(loop, follow=True)


def test_world_writable_refused(tmp_path):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n")
    p.chmod(0o666)
    with pytest.raises(ConfigError) as e:
        load_policy(p)
    assert "world-writable" in e.value.problem


# --- JSON: vgpuctl's own records, and mdevctl's definitions ---------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    ["[" * 100000, '{"a": NaN}', '{"a": Infinity}', '{"a": 1, "a": 2}', "\ud800", '{"a": "\\ud800"', "", "nul\x00l"],
)
def test_strict_json(text):
    with pytest.raises(StateError) as e:
        configfile.parse_json(text, "s.json")
    assert "\n" not in str(e.value)


@FAST
@given(
    raw=st.binary(max_size=300)
    | st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=5),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
        max_leaves=30,
    ).map(lambda v: repr(v).encode())
)
def test_generated_json_loads_or_fails_with_the_callers_error(raw):
    try:
        configfile.parse_json(raw, "d.json", error=ConfigError)
    except ConfigError:
        pass


def test_read_json_is_reusable_with_the_callers_error(tmp_path):
    """``read_json`` serves mdevctl's definition files too: the caller picks the error class."""
    d = tmp_path / "def.json"
    os.mkfifo(d)
    with pytest.raises(ConfigError):
        configfile.read_json(d, error=ConfigError)
    d.unlink()
    d.write_text('{"mdev_type": "nvidia-231", "start": "auto"}')
    assert configfile.read_json(d, error=ConfigError)["start"] == "auto"
    assert issubclass(StateError, VgpuctlError)
