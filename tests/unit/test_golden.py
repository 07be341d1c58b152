"""The golden-file rule (tests/golden.py): a missing file fails, only VGPUCTL_REGEN_GOLDEN=1 writes one."""

from __future__ import annotations

import pytest

from golden import REGEN_VAR, assert_golden


def test_a_missing_golden_file_fails_and_is_not_written(tmp_path, monkeypatch):
    monkeypatch.delenv(REGEN_VAR, raising=False)
    path = tmp_path / "golden" / "list.txt"
    with pytest.raises(AssertionError, match="is missing"):
        assert_golden(path, "text\n")
    assert not path.exists()


def test_a_different_text_fails(tmp_path, monkeypatch):
    monkeypatch.delenv(REGEN_VAR, raising=False)
    path = tmp_path / "list.txt"
    path.write_text("old\n")
    with pytest.raises(AssertionError, match="differs"):
        assert_golden(path, "new\n")
    assert path.read_text() == "old\n"
    assert_golden(path, "old\n")


def test_regen_writes_only_when_asked(tmp_path, monkeypatch):
    path = tmp_path / "golden" / "list.txt"
    monkeypatch.setenv(REGEN_VAR, "1")
    assert_golden(path, "new\n")
    assert path.read_text() == "new\n"
    monkeypatch.setenv(REGEN_VAR, "0")
    with pytest.raises(AssertionError):
        assert_golden(path, "newer\n")
