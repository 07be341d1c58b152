"""configfile.compose_yaml with libyaml composes the same nodes, and refuses the same documents with the same
errors, as PyYAML's Python loader (the strict StrictLoader), which it falls back to without libyaml."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpuctl import configfile
from vgpuctl.errors import ConfigError

pytestmark = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml: one loader only")


def outcome(text, monkeypatch, libyaml):
    with monkeypatch.context() as m:
        m.setattr(yaml, "__with_libyaml__", libyaml)
        try:
            _, node = configfile.compose_yaml(text, "f.yaml")
        except ConfigError as e:
            return ("error", str(e))
    return ("node", shape(node))


def shape(node):
    if node is None:
        return None
    line = node.start_mark.line
    if isinstance(node, yaml.ScalarNode):
        return ("s", node.tag, node.value, node.style or None, line)  # libyaml: "" for plain, Python: None
    if isinstance(node, yaml.SequenceNode):
        return ("q", node.tag, line, [shape(n) for n in node.value])
    return ("m", node.tag, line, [(shape(k), shape(v)) for k, v in node.value])


FIXED = [
    "version: 1\ninstances:\n  a: {type: T4-2Q, parent: '0000:3b:00.0'}\n",
    "",
    "# only a comment\n",
    "a: !!int 3\n",
    "a: [!x y]\n",
    "- !<tag:yaml.org,2002:str> x\n",
    "a: &x 1\nb: *x\n",
    "a: " + "[" * 32 + "]" * 32 + "\n",
    "a: " + "[" * 31 + "]" * 31 + "\n",
    "a: " + "{b: " * 40 + "1" + "}" * 40,
    "x: " + "[" * 5000 + "]" * 5000 + "\n",
    "a: b: c\n",
    "a: 'unterminated\n",
    "\x07: bell\n",
    "a:\n\t- tab\n",
    "a: 1\na: 2\n",
    "\n\ufeff\n",
    "a: 1\n\ufeffb: 2\n",
    "--- 1\n--- 2\n",
    "1\n--- !!int 3\n",
    "? [a, b]\n: c\n",
    "a: |\n  text\n  more\n",
    "<<: {a: 1}\n",
]


@pytest.mark.parametrize("text", FIXED)
def test_fixed_documents_compose_or_fail_alike(text, monkeypatch):
    assert outcome(text, monkeypatch, True) == outcome(text, monkeypatch, False)


_scalar = st.sampled_from(
    [
        "1",
        "x",
        "'q'",
        '"d"',
        "~",
        "!!int 3",
        "!t v",
        "&a 1",
        "*a",
        "2001-13-45",
        "[",
        "]",
        "{",
        "}",
        ":",
        "- ",
        "? ",
        "|",
        ">",
        "#c",
        "\t",
        "\r",
        "\x85",
        "\u2028",
        "\ufeff",
        "\u00e9",
        "\x00",
        "%YAML 1.1",
        "---",
        "...",
        "\\",
    ]
)
_text = st.lists(st.tuples(st.sampled_from(["", "  ", "    "]), st.lists(_scalar, max_size=5)), max_size=8).map(
    lambda lines: "".join(ind + " ".join(toks) + "\n" for ind, toks in lines)
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_text)
def test_generated_documents_compose_or_fail_alike(text, monkeypatch):
    assert outcome(text, monkeypatch, True) == outcome(text, monkeypatch, False)
