"""The generated docs match the CLI and the error table; every error class's exit code is documented."""

import importlib.util
import inspect
from pathlib import Path

import pytest

from vgpuctl import errors

REPO = Path(__file__).resolve().parents[2]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen-docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _generated():
    return sorted(_gen().FILES)


@pytest.mark.parametrize("fname", _generated())
def test_generated_docs_are_current(fname):
    want = _gen().FILES[fname]()
    have = (REPO / "docs" / fname).read_text()
    assert have == want, f"docs/{fname} is stale: run .venv/bin/python scripts/gen-docs.py"


def test_every_error_exit_code_is_documented():
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.VgpuctlError):
            assert cls.exit_code in errors.EXIT_CODES, cls


def test_every_command_has_a_page_and_no_page_is_stale():
    from vgpuctl.cli import COMMANDS

    pages = {p.name for p in (REPO / "docs" / "commands").glob("*.md")}
    assert pages == {f"{name}.md" for name in COMMANDS}, "run scripts/gen-docs.py"
