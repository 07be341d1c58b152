"""The hostile cases that need devices that really come and go: the data-loss case of issue 19 (an unreadable
desired-state file must stop ``apply``, never shrink the desired state) and the libvirt hook fuzzed with generated
domain XML and argument vectors (it must check before its first write and record before it returns).

Runs on the FUSE simulated host (marked ``sim``), in process.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpuctl.errors import EXIT_CODES

from .conftest import assert_refused, invoke, snapshot

pytestmark = pytest.mark.sim

KEEP = "aaaaaaaa-0000-4000-8000-00000000beef"
DOM_UUID = "6695eb01-f6a4-8304-79aa-97f2502e10ff"


@pytest.fixture
def sim(sim_pool):
    return sim_pool.fresh("mtty")


def instances(sim):
    from vgpuctl.host import Host

    return {i.uuid for i in Host(sim.paths).inventory().instances}


# --- family 2, the data-loss case -----------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["symlink-loop", "main-is-dir"])
def test_apply_never_destroys_what_an_unreadable_file_declares(sim, how):
    cfg = sim.paths.config_dir
    (cfg / "conf.d").mkdir(parents=True)
    (cfg / "vgpuctl.yaml").write_text("version: 1\n")
    keep = cfg / "conf.d" / "keep.yaml"
    keep.write_text(f"version: 1\ninstances:\n  keep:\n    uuid: {KEEP}\n    type: mtty-1\n    parent: mtty\n")
    run = invoke(sim.root, "apply")
    assert run.code == 0, run.stderr
    assert KEEP in instances(sim)
    if how == "symlink-loop":
        keep.unlink()
        keep.symlink_to("keep.yaml")
    else:
        (cfg / "vgpuctl.yaml").unlink()
        (cfg / "vgpuctl.yaml").mkdir()
    for command in (["plan"], ["check"], ["apply"]):
        before = snapshot(sim.paths.state_dir)
        line = assert_refused(invoke(sim.root, *command), code=8)
        assert str(cfg) in line
        assert snapshot(sim.paths.state_dir) == before
        assert KEEP in instances(sim), f"{command} destroyed the device an unreadable file declares"


# --- family 9: the hook ---------------------------------------------------------------------------------------------
def hook_of(sim):
    from vgpuctl.hook import Hook
    from vgpuctl.host import Host
    from vgpuctl.lifecycle import Lifecycle, ProcessHolders

    host = Host(sim.paths)
    err = io.StringIO()
    return Hook(Lifecycle(host, lock_timeout=1, usage_checks=[ProcessHolders(host)]), sim.paths, err=err), err


def domain_xml(vgpus, *, name="guest", uuid=DOM_UUID, extra=""):
    devs = "".join(
        f"<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='{u}'/></source></hostdev>"
        for u, _, _ in vgpus
    )
    md = "".join(f"<vgpuctl:vgpu uuid='{u}' parent='{p}' type='{t}' backend='mdev'/>" for u, p, t in vgpus)
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>{uuid}</uuid>{extra}<metadata>"
        f"<vgpuctl:vgpus xmlns:vgpuctl='https://vgpuctl.dev/xmlns/1'>{md}</vgpuctl:vgpus></metadata>"
        f"<devices>{devs}</devices></domain>"
    )


NEW = "bbbbbbbb-0000-4000-8000-000000000001"


def test_a_domain_uuid_that_is_not_a_uuid_creates_nothing(sim):
    h, err = hook_of(sim)
    before = instances(sim)
    xml = domain_xml([(NEW, "mtty", "mtty-1")], uuid="not-a-uuid")
    assert h.run(["qemu", "guest", "prepare", "begin", "-"], lambda: xml) == 12
    assert instances(sim) == before and err.getvalue().count("\n") == 1


@pytest.mark.parametrize("how", ["file", "symlink", "world-writable"])
def test_an_unusable_hook_state_dir_creates_nothing(sim, how):
    d = sim.paths.run_dir / "hook"
    if d.is_dir():
        d.rmdir()
    d.parent.mkdir(parents=True, exist_ok=True)
    if how == "file":
        d.write_text("")
    elif how == "symlink":
        (sim.paths.run_dir / "elsewhere").mkdir(exist_ok=True)
        d.symlink_to(sim.paths.run_dir / "elsewhere")
    else:
        d.mkdir()
        d.chmod(0o777)
    h, err = hook_of(sim)
    before = instances(sim)
    try:
        code = h.run(["qemu", "guest", "prepare", "begin", "-"], lambda: domain_xml([(NEW, "mtty", "mtty-1")]))
        assert code == 8, err.getvalue()
        assert instances(sim) == before and err.getvalue().count("\n") == 1
    finally:
        if d.is_symlink() or d.is_file():
            d.unlink()
        else:
            d.chmod(0o755)
            d.rmdir()


_uuids = st.one_of(
    st.sampled_from(
        [
            NEW,
            NEW.upper(),
            "bbbbbbbb-0000-4000-8000-000000000002",
            "",
            "x",
            "../../etc",
            "0000:3b:00.0",
            "'",
            "&amp;",
            "\u00e9",
        ]
    ),
    st.uuids().map(str),
)
_vgpu = st.tuples(
    _uuids,
    st.sampled_from(["mtty", "", "nope", "../mtty", "mtty/x"]),
    st.sampled_from(["mtty-1", "mtty-2", "", "nope", "../x"]),
)
_dom_uuid = st.one_of(st.just(DOM_UUID), st.uuids().map(str), st.sampled_from(["", "x", "../../x", DOM_UUID.upper()]))
_extra = st.sampled_from(["", "<title>x</title>", "<metadata/>", "<devices/>", "<!-- c -->", "<uuid>2</uuid>"])
_ops = st.sampled_from(
    [
        ("prepare", "begin"),
        ("release", "end"),
        ("start", "begin"),
        ("stopped", "end"),
        ("migrate", "begin"),
        ("prepare", "end"),
    ]
)


def _xml_text(vgpus, dom_uuid, extra, junk):
    x = domain_xml(vgpus, uuid=dom_uuid, extra=extra)
    return x if not junk else x[: len(x) // 2] + junk


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    vgpus=st.lists(_vgpu, max_size=3),
    dom_uuid=_dom_uuid,
    extra=_extra,
    junk=st.sampled_from(["", "<", "&x;", "<!DOCTYPE d [<!ENTITY e 'x'>]>", "\x00"]),
    op=_ops,
    argv_tail=st.lists(st.text(max_size=5), max_size=3),
    fail=st.sampled_from(["", "ENOSPC", "EIO"]),
)
def test_fuzzed_hook_calls_never_leak_a_vgpu(sim, vgpus, dom_uuid, extra, junk, op, argv_tail, fail):
    """Whatever libvirt (or someone) hands the hook, a start either records every vGPU it made or rolls them back,
    and the matching stop frees what the start recorded: prepare then release leaves the host as it was."""
    h, err = hook_of(sim)
    before = instances(sim)
    xml = _xml_text(vgpus, dom_uuid, extra, junk)
    if fail:
        sim.fail_next("create", fail)
    code = h.run(["qemu", "guest", op[0], op[1], *argv_tail], lambda: xml)
    sim.clear_failures()
    assert code == 0 or (code >= 2 and code in EXIT_CODES), (code, err.getvalue())
    lines = err.getvalue().splitlines()
    assert all(ln.startswith("vgpuctl hook: ") for ln in lines)
    assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue(), err.getvalue()
    made = instances(sim) - before
    if made:
        # everything made is recorded for this domain, so the release frees it
        assert code == 0 and op in (("prepare", "begin"), ("migrate", "begin"))  # the two calls that create
        assert set(h.records.load(dom_uuid)) >= made
        h.run(["qemu", "guest", "release", "end", "-"], lambda: xml)
        assert instances(sim) == before, err.getvalue()
    for p in list((sim.paths.run_dir / "hook").glob("*.json")) if (sim.paths.run_dir / "hook").is_dir() else []:
        p.unlink()
    for u in instances(sim) - before:  # leave the module's host as it was for the next example
        Path(sim.paths.mdev_devices / u / "remove").write_text("1")
    assert not os.path.exists(sim.root / "etc" / "passwd")
