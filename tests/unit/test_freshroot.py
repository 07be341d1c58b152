"""The fresh-machine stage's own logic, without building a root: the apt sources it takes from the host, the commands
it reads from the README, and the skip check it runs after them (tests/freshroot/, docs/freshroot.md)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STAGE = REPO / "tests" / "freshroot"


def host_sources(root: Path, suite: str = "bookworm") -> list:
    p = subprocess.run(
        [sys.executable, str(STAGE / "host-sources.py"), suite, str(root)], capture_output=True, text=True, check=True
    )
    return p.stdout.splitlines()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_sources_come_from_the_hosts_deb822_and_one_line_files(tmp_path):
    d = tmp_path / "etc/apt/sources.list.d"
    write(
        d / "debian.sources",
        """Types: deb deb-src
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates trixie
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main

Enabled: no
Types: deb
URIs: http://off.example/debian
Suites: bookworm
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main
""",
    )
    write(
        tmp_path / "etc/apt/sources.list",
        "deb [arch=amd64] http://old.example/debian bookworm main # hi\n"
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://other.example/ubuntu jammy main\n",
    )
    write(d / "thirdparty.list.disabled-by-someone", "deb http://disabled.example/x bookworm main\n")
    write(
        d / "nodesource.sources",
        "Types: deb\nURIs: https://node.example/node_20.x\nSuites: nodistro\nComponents: main\n",
    )
    assert host_sources(tmp_path) == [
        "deb http://old.example/debian bookworm main",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian bookworm "
        "main contrib",
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian "
        "bookworm-updates main contrib",
        "deb http://mirror.example/debian-security bookworm-security main",
    ]


def test_no_entry_for_the_suite_prints_nothing(tmp_path):
    write(tmp_path / "etc/apt/sources.list", "deb http://m.example/debian trixie main\n")
    assert host_sources(tmp_path) == []


def stage_copy(tmp_path: Path, readme: str) -> Path:
    """The stage script in a tree of its own whose README.md is ``readme``."""
    (tmp_path / "tests" / "freshroot").mkdir(parents=True)
    shutil.copy(STAGE / "run", tmp_path / "tests" / "freshroot" / "run")
    (tmp_path / "README.md").write_text(readme)
    return tmp_path / "tests" / "freshroot" / "run"


def test_the_commands_are_the_readmes():
    p = subprocess.run([str(STAGE / "run"), "--print-commands"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["./scripts/demo.sh", "./scripts/test.sh"]


def test_a_readme_edit_changes_the_commands(tmp_path):
    run = stage_copy(
        tmp_path,
        "# x\n\n## Two commands (as root)\n\ntext\n\n```sh\n./a.sh --x   # one\n\n"
        "  ./b.sh\n```\n\n```sh\n./not-this.sh\n```\n",
    )
    p = subprocess.run([str(run), "--print-commands"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["./a.sh --x", "./b.sh"]


def test_a_readme_without_the_block_is_a_set_up_error(tmp_path):
    run = stage_copy(tmp_path, "# x\n\n## Two commands\n\nnone here\n\n## Next\n\n```sh\n./other.sh\n```\n")
    p = subprocess.run([str(run), "--print-commands"], capture_output=True, text=True)
    assert p.returncode == 2
    assert "no commands found in README.md" in p.stderr


def skip_check(tmp_path: Path, log: str):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "01.log").write_text(log)
    (logs / "02.log").write_text("SKIPPED [1] tests/x.py:1: only a check's own output, not read\n")
    (logs / "steps").write_text(f"{logs}/01.log\t./scripts/test.sh\n{logs}/02.log\tcheck 10-x.sh\n")
    return subprocess.run(
        ["bash", str(STAGE / "checks.d" / "20-no-unexpected-skips.sh")],
        cwd=REPO,
        env={**os.environ, "FRESHROOT_LOGS": str(logs)},
        capture_output=True,
        text=True,
    )


def test_skip_check_allows_the_expected_skips(tmp_path):
    p = skip_check(
        tmp_path,
        "..s..\n=== short test summary info ===\n"
        "SKIPPED [26] tests/realkernel/test_smoke.py:12: real-kernel test: runs only inside "
        "the QEMU guest (tests/realkernel/run)\n1 passed, 26 skipped\n",
    )
    assert p.returncode == 0, p.stderr
    assert "skips on the fresh root: 26, every one expected" in p.stdout


@pytest.mark.parametrize(
    "reason",
    [
        "libvirtd is not installed (apt-get install libvirt-daemon-system)",
        "ansible-test sanity needs git",
    ],
)
def test_skip_check_fails_on_a_skip_for_a_missing_tool(tmp_path, reason):
    p = skip_check(
        tmp_path,
        "SKIPPED [26] tests/realkernel/test_smoke.py:12: real-kernel test: runs only inside "
        f"the QEMU guest (tests/realkernel/run)\nSKIPPED [2] tests/virt/libvirtd.py:99: {reason}\n",
    )
    assert p.returncode == 1
    assert f"unexpected skip on the fresh root (2 test(s)): {reason}" in p.stderr
