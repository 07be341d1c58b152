"""The qemu hook: on-demand vGPUs at prepare/begin, destroyed at release/end; bounded; never aborts a stop."""
import io
import time

import pytest

from vgpuctl.host import Host
from vgpuctl.hook import Hook
from vgpuctl.lifecycle import Lifecycle, ProcessHolders
from vgpuctl.state import HostLock

NEW1 = "bbbbbbbb-0000-4000-8000-000000000001"
NEW2 = "bbbbbbbb-0000-4000-8000-000000000002"
DOM_UUID = "6695eb01-f6a4-8304-79aa-97f2502e10ff"


def domain_xml(*vgpus, name="guest"):
    devs = "".join(f"<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='{u}'/>"
                   "</source></hostdev>" for u, _ in vgpus)
    md = "".join(f"<vgpuctl:vgpu uuid='{u}' parent='mtty' type='{t}' backend='mdev'/>" for u, t in vgpus)
    return (f"<domain type='kvm'><name>{name}</name><uuid>{DOM_UUID}</uuid><metadata>"
            f"<vgpuctl:vgpus xmlns:vgpuctl='https://vgpuctl.dev/xmlns/1'>{md}</vgpuctl:vgpus></metadata>"
            f"<devices>{devs}</devices></domain>")


@pytest.fixture
def hook(sim):
    host = Host(sim.paths)
    err = io.StringIO()
    h = Hook(Lifecycle(host, lock_timeout=1, usage_checks=[ProcessHolders(host)]), sim.paths, err=err)
    return h, err, host


def present(host):
    return {i.uuid for i in host.inventory().instances}


def test_prepare_creates_release_destroys_only_its_own(hook):
    h, err, host = hook
    xml = domain_xml((NEW1, "mtty-1"), (NEW2, "mtty-2"))
    assert h.run(["qemu", "guest", "prepare", "begin", "-"], lambda: xml) == 0
    assert {NEW1, NEW2} <= present(host)
    assert "created " + NEW1 in err.getvalue()
    assert h.run(["qemu", "guest", "start", "begin", "-"], lambda: xml) == 0  # other operations: nothing
    assert h.run(["qemu", "guest", "release", "end", "-"], lambda: xml) == 0
    assert not {NEW1, NEW2} & present(host)


def test_release_keeps_vgpus_it_did_not_create(hook, sim):
    h, _, host = hook
    from .conftest import U_FREE
    xml = domain_xml((U_FREE, "mtty-1"))
    assert h.run(["qemu", "guest", "prepare", "begin", "-"], lambda: xml) == 0
    assert h.run(["qemu", "guest", "release", "end", "-"], lambda: xml) == 0
    assert U_FREE in present(host)


def test_failed_prepare_rolls_back_and_aborts_the_start(hook, sim):
    h, err, host = hook
    sim.fail_next("create", "ENOSPC")
    xml = domain_xml((NEW1, "mtty-1"))
    assert h.run(["qemu", "guest", "prepare", "begin", "-"], lambda: xml) == 4
    assert NEW1 not in present(host)
    assert err.getvalue().count("\n") == 1 and "error:" in err.getvalue()


@pytest.mark.parametrize("argv, xml, code", [
    ([], "", 0),
    (["qemu"], "", 0),
    (["lxc", "guest", "prepare", "begin", "-"], "junk", 0),
    (["qemu", "guest", "prepare", "begin", "-"], "junk<", 12),
    (["qemu", "guest", "prepare", "begin", "-"], "", 12),
    (["qemu", "other", "prepare", "begin", "-"], domain_xml(), 12),
    (["qemu", "guest", "release", "end", "-"], "junk<", 0),
    (["qemu", "guest", "release", "end", "-"], "<domain><name>guest</name></domain>", 0),
])
def test_garbage_is_one_log_line_and_aborts_only_a_start(hook, argv, xml, code):
    h, err, _ = hook
    assert h.run(argv, lambda: xml) == code
    assert err.getvalue().count("\n") <= 1


def test_bounded_time_when_the_host_lock_is_held(hook, sim):
    h, err, host = hook
    xml = domain_xml((NEW1, "mtty-1"))
    with HostLock(sim.paths, 1):
        t = time.monotonic()
        code = h.run(["qemu", "guest", "prepare", "begin", "-"], lambda: xml, timeout=3)
        assert time.monotonic() - t < 3.5
    assert code != 0 and NEW1 not in present(host)


def test_hook_cli_never_asks_libvirt(cli):
    r = cli("hook", "qemu", "guest", "prepare", "begin", "-", input=domain_xml((NEW1, "mtty-1")),
            connect="qemu:///system?socket=/nonexistent")
    assert r.exit_code == 0, r.stderr
    r = cli("hook", "qemu", "guest", "release", "end", "-", input=domain_xml((NEW1, "mtty-1")))
    assert r.exit_code == 0, r.stderr
    r = cli("hook", "--bogus", "x")
    assert r.exit_code == 0
