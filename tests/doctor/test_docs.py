"""docs/doctor.md and ``vgpuctl doctor --help`` (hence docs/commands/doctor.md) list every registered check."""
from pathlib import Path

from vgpuctl.doctor import checks

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_check_is_in_the_doctor_page_and_the_command_page():
    page = (DOCS / "doctor.md").read_text()
    generated = (DOCS / "commands" / "doctor.md").read_text()
    for c in checks():
        assert f"| `{c.name}` |" in page, c.name
        assert f"{c.name}: {c.title}" in generated, c.name
