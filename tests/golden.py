"""Golden files: ``assert_golden(path, text)`` compares ``text`` with the file at ``path``.

A missing golden file FAILS (a deleted or never-committed file must not turn green); ``VGPUCTL_REGEN_GOLDEN=1``
is the explicit opt-in that (re)writes every golden file a run compares, after which ``git diff`` shows what changed.
"""

from __future__ import annotations

import os
from pathlib import Path

REGEN_VAR = "VGPUCTL_REGEN_GOLDEN"


def regenerating() -> bool:
    return os.environ.get(REGEN_VAR) == "1"


def assert_golden(path: Path, text: str) -> None:
    if regenerating():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"golden file {path} is missing ({REGEN_VAR}=1 writes it; then commit it)"
    assert text == path.read_text(), f"{path.name} differs from the golden file ({REGEN_VAR}=1 rewrites it)"
