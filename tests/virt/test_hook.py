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
    devs = "".join(
        f"<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='{u}'/></source></hostdev>"
        for u, _ in vgpus
    )
    md = "".join(f"<vgpuctl:vgpu uuid='{u}' parent='mtty' type='{t}' backend='mdev'/>" for u, t in vgpus)
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>{DOM_UUID}</uuid><metadata>"
        f"<vgpuctl:vgpus xmlns:vgpuctl='https://vgpuctl.dev/xmlns/1'>{md}</vgpuctl:vgpus></metadata>"
        f"<devices>{devs}</devices></domain>"
    )


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


@pytest.mark.parametrize(
    "argv, xml, code",
    [
        ([], "", 0),
        (["qemu"], "", 0),
        (["lxc", "guest", "prepare", "begin", "-"], "junk", 0),
        (["qemu", "guest", "prepare", "begin", "-"], "junk<", 12),
        (["qemu", "guest", "prepare", "begin", "-"], "", 12),
        (["qemu", "other", "prepare", "begin", "-"], domain_xml(), 12),
        (["qemu", "guest", "release", "end", "-"], "junk<", 0),
        (["qemu", "guest", "release", "end", "-"], "<domain><name>guest</name></domain>", 0),
    ],
)
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
    r = cli(
        "hook",
        "qemu",
        "guest",
        "prepare",
        "begin",
        "-",
        input=domain_xml((NEW1, "mtty-1")),
        connect="qemu:///system?socket=/nonexistent",
    )
    assert r.exit_code == 0, r.stderr
    r = cli("hook", "qemu", "guest", "release", "end", "-", input=domain_xml((NEW1, "mtty-1")))
    assert r.exit_code == 0, r.stderr
    r = cli("hook", "--bogus", "x")
    assert r.exit_code == 0


# --- migrate begin: the destination of a live migration ------------------------------------------------------------
def migrating_xml(*vgpus, parent="0000:af:00.0"):
    """A domain arriving from a source host whose vGPU parent does not exist here."""
    return domain_xml(*vgpus).replace("parent='mtty'", f"parent='{parent}'")


def test_migrate_begin_creates_here_rewrites_the_parent_and_release_frees_it(hook):
    h, err, host = hook
    out = io.StringIO()
    h.out = out
    xml = migrating_xml((NEW1, "mtty-1"))
    assert h.run(["qemu", "guest", "migrate", "begin", "-"], lambda: xml) == 0, err.getvalue()
    assert NEW1 in present(host)
    new = out.getvalue()
    assert new and "parent='mtty'" in new and "0000:af:00.0" not in new and NEW1 in new
    assert new.replace("parent='mtty'", "parent='0000:af:00.0'") == xml  # otherwise libvirt's own text
    # libvirt then starts the domain from the new XML: prepare finds the vGPU there and makes nothing
    assert h.run(["qemu", "guest", "prepare", "begin", "-"], lambda: new) == 0
    assert err.getvalue().count("created") == 1
    # the migration fails or the domain later stops here: release frees what the migration made
    assert h.run(["qemu", "guest", "release", "end", "-"], lambda: new) == 0
    assert NEW1 not in present(host)


def test_migrate_begin_gives_a_fresh_uuid_when_the_uuid_is_taken_here(hook, sim):
    h, err, host = hook
    from .conftest import U_FREE

    out = io.StringIO()
    h.out = out
    xml = domain_xml((U_FREE, "mtty-1"))  # U_FREE exists here already (someone else's)
    before = present(host)
    assert U_FREE in before
    assert h.run(["qemu", "guest", "migrate", "begin", "-"], lambda: xml) == 0, err.getvalue()
    new = out.getvalue()
    assert U_FREE not in new
    (made,) = present(host) - before
    assert made in new and "is taken here" in err.getvalue()
    assert h.run(["qemu", "guest", "release", "end", "-"], lambda: new) == 0
    assert made not in present(host) and U_FREE in present(host)  # someone else's vGPU is left alone


def test_migrate_begin_refuses_what_does_not_fit_and_makes_nothing(hook):
    h, err, host = hook
    out = io.StringIO()
    h.out = out
    before = present(host)
    xml = domain_xml((NEW1, "nvidia-999"))
    assert h.run(["qemu", "guest", "migrate", "begin", "-"], lambda: xml) == 15
    assert present(host) == before and out.getvalue() == ""
    assert err.getvalue().count("\n") == 1 and "cannot migrate to this host" in err.getvalue()


def test_migrate_begin_rolls_back_when_the_kernel_refuses(hook, sim):
    h, err, host = hook
    h.out = io.StringIO()
    sim.fail_next("create", "ENOSPC")
    before = present(host)
    assert h.run(["qemu", "guest", "migrate", "begin", "-"], lambda: migrating_xml((NEW1, "mtty-1"))) == 4
    assert present(host) == before and h.out.getvalue() == ""


def test_migrate_begin_of_a_domain_without_hook_vgpus_prints_nothing(hook):
    h, err, host = hook
    h.out = io.StringIO()
    assert h.run(["qemu", "guest", "migrate", "begin", "-"], lambda: domain_xml()) == 0
    assert h.out.getvalue() == "" and err.getvalue() == ""
