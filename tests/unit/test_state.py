import json
import os
import subprocess
import sys
import time

import pytest

from vgpuctl.errors import LockTimeout, StateError
from vgpuctl.paths import HostPaths
from vgpuctl.state import SCHEMA, HostLock, Intent, Owned, State, StateStore

A = "aaaaaaaa-0000-0000-0000-000000000001"
B = "bbbbbbbb-0000-0000-0000-000000000002"


@pytest.fixture
def paths(tmp_path):
    return HostPaths.from_root(tmp_path)


def test_missing_state_is_empty(paths):
    assert StateStore(paths).load() == State()


def test_round_trip_and_mode(paths):
    store = StateStore(paths)
    s = State(owned={A: Owned(A, "mtty", "mtty-1", "mdev", 1.5)}, pending=(Intent("create", B, "mtty", "mtty-2"),))
    store.save(s)
    assert store.load() == s
    assert oct(os.stat(paths.state_file).st_mode & 0o777) == "0o644"
    assert json.loads(paths.state_file.read_text())["schema"] == SCHEMA
    assert [f for f in os.listdir(paths.state_dir) if f.startswith(".state.")] == []  # no temp files left


@pytest.mark.parametrize(
    "content",
    [
        "{",
        "[]",
        '{"schema": "other/v9", "owned": [], "pending": []}',
        '{"schema": "vgpuctl.state/v1", "owned": [{"uuid": 1}], "pending": []}',
    ],
)
def test_corrupt_state_is_a_typed_error(paths, content):
    paths.state_dir.mkdir(parents=True)
    paths.state_file.write_text(content)
    with pytest.raises(StateError) as e:
        StateStore(paths).load()
    assert e.value.path == str(paths.state_file)
    assert e.value.exit_code == 8


def test_world_writable_state_refused(paths):
    StateStore(paths).save(State())
    os.chmod(paths.state_file, 0o666)
    with pytest.raises(StateError, match="world-writable"):
        StateStore(paths).load()


def test_symlinked_state_refused(paths, tmp_path):
    paths.state_dir.mkdir(parents=True)
    (tmp_path / "elsewhere.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere.json", paths.state_file)
    with pytest.raises(StateError, match="symlink"):
        StateStore(paths).load()


def test_recover_settles_intents_against_the_host():
    s = State(owned={B: Owned(B, "mtty", "mtty-1")}).with_intent(Intent("create", A, "mtty", "mtty-1"))
    s = s.with_intent(Intent("remove", B, "mtty", "mtty-1"))
    # crash after the create reached the kernel, before the remove did
    r = s.recover([A, B])
    assert set(r.owned) == {A, B} and r.pending == ()
    # crash before the create, after the remove
    r = s.recover([])
    assert r.owned == {} and r.pending == ()


def test_lock_excludes_other_processes(paths):
    code = (
        "import sys, time; from vgpuctl.paths import HostPaths; from vgpuctl.state import HostLock\n"
        f"with HostLock(HostPaths.from_root({str(paths.root)!r})):\n"
        "    print('locked', flush=True); time.sleep(3)\n"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert other.stdout.readline().strip() == b"locked"
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            with HostLock(paths, timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
    finally:
        other.kill()
        other.wait()
    with HostLock(paths, timeout=1):  # free again once the holder is gone
        pass
