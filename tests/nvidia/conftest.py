import pytest


@pytest.fixture(scope="module")
def h200(tmp_path_factory):
    from vgpuctl.sim import SimHost

    sim = SimHost("h200", tmp_path_factory.mktemp("h200")).start()
    yield sim
    sim.stop()


@pytest.fixture
def host(h200):
    """The h200 simulator, reset: no vGPUs, no state file."""
    h200.reboot()
    if h200.paths.state_file.exists():
        h200.paths.state_file.unlink()
    return h200
