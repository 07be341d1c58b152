"""Family 4: a device template that exceeds the sandbox's limits, is not UTF-8, or is not a regular file is a
``ConfigError``/``TemplateError`` (exit 8, one line naming the file), never another exception."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpuctl.errors import ConfigError, VgpuctlError
from vgpuctl.model import BackendKind, Instance
from vgpuctl.paths import HostPaths
from vgpuctl.virt.templates import MDEV_TEMPLATE, Templates

pytest.importorskip("jinja2")

INST = Instance(
    uuid="11111111-2222-3333-4444-555555555555", parent="0000:3b:00.0", type_id="nvidia-231", backend=BackendKind.MDEV
)
HOSTDEV = (
    "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='{{ uuid }}'/></source></hostdev>"
)


def render_override(tmp_path, content):
    paths = HostPaths.from_root(tmp_path)
    d = paths.config_dir / "templates"
    d.mkdir(parents=True, exist_ok=True)
    path = d / MDEV_TEMPLATE
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif callable(content):
        content(path)
    else:
        path.write_text(content)
    return Templates(paths).for_instance(INST, None, domain="vm")


def refused(tmp_path, content) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        render_override(tmp_path, content)
    assert "\n" not in str(e.value) and e.value.exit_code == 8
    return e.value


@pytest.mark.parametrize(
    "body",
    [
        "{% for i in range(10**9) %}x{% endfor %}" + HOSTDEV,  # range too big for the sandbox
        "{{ 'x' * 10**10 }}" + HOSTDEV,  # a string too large to build
        "{{ [1] * 10**10 }}" + HOSTDEV,
        "{{ 9 ** 9 ** 9 }}" + HOSTDEV,  # a number too large to build
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}" + HOSTDEV,  # endless recursion
        "{{ 1 / 0 }}" + HOSTDEV,
        "{{ ''.__class__.__mro__ }}" + HOSTDEV,  # the sandbox refuses internals
        "{{ 'x' * 300000 }}" + HOSTDEV,  # renders more than a device's worth
    ],
)
def test_templates_over_the_sandbox_limits(tmp_path, body):
    e = refused(tmp_path, body)
    assert MDEV_TEMPLATE in e.path


def test_template_not_utf8(tmp_path):
    e = refused(tmp_path, b"\xff\xfe" + HOSTDEV.encode())
    assert "UTF-8" in e.problem


@pytest.mark.parametrize("kind", ["fifo", "dir", "symlink", "big"])
def test_template_of_the_wrong_kind(tmp_path, kind):
    def make(path):
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dir":
            path.mkdir()
        elif kind == "symlink":
            (tmp_path / "t.j2").write_text(HOSTDEV)
            path.symlink_to(tmp_path / "t.j2")
        else:
            path.write_text(HOSTDEV + "<!-- " + "x" * 300000 + " -->")

    refused(tmp_path, make)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.lists(
        st.sampled_from(
            [
                "{{ uuid }}",
                "{{ domain }}",
                "{{ nope }}",
                "{% if %}",
                "{% for x in uuid %}{{ x }}{% endfor %}",
                "{{ 2 ** 70 }}",
                "{{ uuid * 1000 }}",
                "{{ range(200000) | list }}",
                "{% raw %}",
                "{#",
                "<hostdev>",
                "</hostdev>",
                "<!DOCTYPE x>",
                "<![CDATA[x]]>",
                "&",
                "\x00",
                "{{ uuid|int }}",
                "{{ (uuid ~ uuid) * 99999 }}",
                "{{ lipsum(10**6) }}",
                "{{ cycler }}",
                "{{ self }}",
                "{% set x = x %}",
                HOSTDEV,
            ]
        ),
        max_size=6,
    ).map("".join)
)
def test_generated_templates_render_or_fail_with_a_config_error(tmp_path, body):
    try:
        render_override(tmp_path, body)
    except VgpuctlError as e:
        assert isinstance(e, ConfigError) and "\n" not in str(e)


@pytest.mark.parametrize(
    "body",
    [
        # each range() is within the sandbox's bound; nested, they would run for hours
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}" + HOSTDEV,
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j|string|length }}{% endfor %}{% endfor %}"
        + HOSTDEV,
        # a macro loop that never ends within the recursion limit
        "{% macro m(n) %}{% for i in range(100000) %}{{ m(n - 1) if n else '' }}{% endfor %}{% endmacro %}{{ m(3) }}"
        + HOSTDEV,
    ],
)
def test_a_template_that_loops_for_hours_is_stopped(tmp_path, monkeypatch, body):
    import vgpuctl.virt.templates as templates

    monkeypatch.setattr(templates, "RENDER_CPU_SECONDS", 0.1)  # the bound, not its default, is under test
    e = refused(tmp_path, body)
    assert MDEV_TEMPLATE in e.path and "s of CPU" in str(e)


def test_the_cpu_bound_leaves_an_installed_tracer_in_place(tmp_path):
    import sys

    def tracer(frame, event, arg):
        return None

    sys.settrace(tracer)
    try:
        assert "<hostdev" in render_override(tmp_path, HOSTDEV).xml
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)
