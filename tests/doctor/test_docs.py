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


def test_every_check_is_registered_once_with_title_and_fix():
    names = [c.name for c in checks()]
    assert len(names) == len(set(names)) >= 14
    assert all(c.title and c.fix for c in checks())


def test_a_crashing_check_is_its_own_fail_line(tmp_path, monkeypatch):
    from vgpuctl import doctor
    from vgpuctl.paths import HostPaths

    def broken(ctx):
        raise KeyError("boom")

    monkeypatch.setattr(doctor, "REGISTRY", list(checks()) + [doctor.Check("broken", "t", "f", broken)])
    monkeypatch.setattr(doctor, "CHECK_MODULES", ())
    rs = doctor.run_checks(doctor.Context(paths=HostPaths.from_root(tmp_path), connect="none"), ["broken", "lock"])
    assert [(r.check, str(r.status)) for r in rs] == [("lock", "ok"), ("broken", "fail")]
    assert "check crashed: KeyError" in rs[1].seen
