"""Fixtures for the Ansible collection tests: real ansible-playbook against localhost and the simulated host."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTION = REPO / "ansible_collections" / "vgpuctl" / "vgpu"
BIN = Path(sys.executable).parent


def ansible_missing():
    try:
        import ansible  # noqa: F401
    except ImportError:
        return "ansible-core is not installed in this interpreter (pip install -e '.[test]' installs it)"
    if not (BIN / "ansible-playbook").exists():
        return "ansible-playbook is not next to %s" % sys.executable
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "ansible: runs ansible-playbook / ansible-doc from ansible-core")


def pytest_collection_modifyitems(config, items):
    missing = ansible_missing()
    for item in items:
        if "ansible" in item.keywords and missing:
            item.add_marker(pytest.mark.skip(reason=missing))


def ansible_env(tmp_path):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("VGPUCTL_", "ANSIBLE_")):
            del env[k]
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(REPO),
        ANSIBLE_LOCAL_TEMP=str(tmp_path / ".ansible-local"),
        ANSIBLE_REMOTE_TEMP=str(tmp_path / ".ansible-remote"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_DEPRECATION_WARNINGS="0",
        ANSIBLE_LOCALHOST_WARNING="0",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="0",
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
    )
    return env


class Playbook:
    """Run tasks in one ansible-playbook on localhost; return each task's registered result, in order."""

    def __init__(self, tmp_path, root):
        self.tmp_path = tmp_path
        self.root = root
        self.runs = 0
        self.seconds = 0.0

    def __call__(self, *tasks):
        self.runs += 1
        n = self.runs
        out = self.tmp_path / ("results-%d.json" % n)
        body = []
        for i, t in enumerate(tasks):
            t = dict(t)
            t.setdefault("name", "step %d" % i)
            t["register"] = "r%d" % i
            t["ignore_errors"] = True
            t.setdefault("diff", True)
            body.append(t)
        regs = "{" + ", ".join("'r%d': r%d" % (i, i) for i in range(len(tasks))) + "}"
        body.append(
            {
                "name": "results",
                "ansible.builtin.copy": {"content": "{{ %s | to_json }}" % regs, "dest": str(out)},
                "check_mode": False,
                "diff": False,
            }
        )
        play = [
            {
                "hosts": "localhost",
                "gather_facts": False,
                "module_defaults": {"group/vgpuctl.vgpu.vgpu": {"root": str(self.root), "libvirt_uri": "none"}},
                "tasks": body,
            }
        ]
        path = self.tmp_path / ("play-%d.yml" % n)
        path.write_text(json.dumps(play, indent=1))
        t0 = time.monotonic()
        p = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(path)],
            env=ansible_env(self.tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.seconds += time.monotonic() - t0
        assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
        res = json.loads(out.read_text())
        return [res["r%d" % i] for i in range(len(tasks))]


@pytest.fixture
def host(tmp_path):
    """A started t4x2 simulated host with no desired state; ``host.play(...)`` runs tasks against it."""
    from vgpuctl.sim import SimHost

    root = tmp_path / "root"
    with SimHost("t4x2", root) as sim:
        sim.root = root
        sim.play = Playbook(tmp_path, root)
        yield sim


def vgpuctl(root, *args, check=True):
    p = subprocess.run(
        [str(BIN / "vgpuctl"), "--root", str(root), "--connect", "none", *args], capture_output=True, text=True
    )
    if check:
        assert p.returncode == 0, p.stderr
    return p


def snapshot(sim):
    """What must not change when nothing should: the host's instances, the state file, vgpuctl's config files."""
    state = sim.root / "var" / "lib" / "vgpuctl" / "state.json"
    etc = sim.root / "etc" / "vgpuctl"
    files = {}
    if etc.is_dir():
        for p in sorted(etc.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(etc))] = p.read_bytes()
    return dict(instances=sorted(sim.instances()), state=state.read_bytes() if state.exists() else None, etc=files)
