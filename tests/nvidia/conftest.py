import pytest


@pytest.fixture
def host(sim_pool):
    """The session's h200 simulator, reset (tests/conftest.py reset_sim): no vGPUs, no vgpuctl files."""
    return sim_pool.fresh("h200")
