"""The libvirt side against the test driver (and the simulated mtty host where devices are created/destroyed)."""

import json
import subprocess
import sys

import pytest

from vgpuctl.errors import (
    AttachedElsewhere,
    DeviceInUse,
    DomainNotFound,
    LibvirtConnectError,
    LibvirtRefused,
    NotAttached,
    TemplateError,
)
from vgpuctl.host import Host
from vgpuctl.lifecycle import Lifecycle, ProcessHolders
from vgpuctl.virt.templates import Templates
from vgpuctl.virt import Attachments, DomainUsers, ManagedVgpu, Virt, metadata_xml, parse_domain, resolve_scope, Scope

from .conftest import ODD_NAME, U_DB, U_FREE, U_WEB

ODD = "a'b\"c<d>e&f"


def test_scope_default_is_current():
    assert resolve_scope(live=False, config=False, running=True) == Scope(True, False)
    assert resolve_scope(live=False, config=False, running=False) == Scope(False, True)
    assert resolve_scope(live=True, config=True, running=False).flags == 3


def test_metadata_round_trips_through_libvirt_with_special_characters(virt):
    entry = ManagedVgpu(U_FREE, parent="mtty", type_id=ODD, backend="mdev")
    md = metadata_xml([entry])
    assert "<d>" not in md
    dom = virt.lookup(ODD_NAME)
    ns = '<vgpuctl:vgpus xmlns:vgpuctl="https://vgpuctl.dev/xmlns/1"'
    prefixed = md.replace("<vgpus", ns).replace("</vgpus>", "</vgpuctl:vgpus>").replace("<vgpu ", "<vgpuctl:vgpu ")
    xml = dom.XMLDesc(2).replace("<memory", "<metadata>" + prefixed + "</metadata><memory", 1)
    virt.conn.defineXML(xml)  # persistent change, as redefinition (the test driver has no attachDeviceFlags)
    info = virt.info(virt.lookup(ODD_NAME))
    assert info.name == ODD_NAME
    assert info.config.managed == (entry,)
    # and the setMetadata path, which the test driver does implement
    virt.set_managed(virt.lookup(ODD_NAME), ODD_NAME, [entry, ManagedVgpu(U_DB, "mtty", "mtty-2")], Scope(False, True))
    assert sorted(m.type_id for m in virt.info(virt.lookup(ODD_NAME)).config.managed) == sorted([ODD, "mtty-2"])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "<domain/>",
        "<node><name>x</name></node>",
        "<!DOCTYPE d [<!ENTITY x 'y'>]><domain><name>&x;</name></domain>",
        "<domain><name>",
    ],
)
def test_parse_domain_refuses_garbage(text):
    with pytest.raises(ValueError):
        parse_domain(text)


def test_pci_hostdev_identity():
    dx = parse_domain(
        "<domain><name>v</name><devices><hostdev mode='subsystem' type='pci'><source>"
        "<address domain='0x0000' bus='0x41' slot='0x00' function='0x4'/></source></hostdev>"
        "</devices></domain>"
    )
    assert dx.devices == ("0000:41:00.4",)


def test_unreachable_libvirtd_is_a_clear_error(tmp_path):
    uri = f"qemu:///system?socket={tmp_path}/nothing-here"
    with pytest.raises(LibvirtConnectError) as e:
        Virt.open(uri)
    assert e.value.uri == uri and e.value.exit_code == 12
    assert "\n" not in str(e.value) and "--connect none" in str(e.value)


def test_unknown_domain(virt):
    with pytest.raises(DomainNotFound) as e:
        virt.lookup("nope")
    assert e.value.domain == "nope"


def test_snapshot_users(virt):
    snap = virt.snapshot()
    assert [u.describe() for u in snap.uses(U_WEB)] == ["domain 'web1' (running)"]
    (db,) = snap.uses(U_DB)
    assert db.stale and not db.running
    assert snap.uses(U_FREE) == ()


# --- attach / detach on the simulated host --------------------------------------------------------------------------
@pytest.fixture
def attachments(sim, uri, virt):
    lc = Lifecycle(Host(sim.paths), lock_timeout=2, usage_checks=[ProcessHolders(Host(sim.paths)), DomainUsers(uri)])
    return Attachments(virt, lc, Templates(sim.paths))


def uuids(a):
    return sorted(i.uuid for i in a.lc.host.inventory().instances)


def test_attach_unknown_domain(attachments):
    with pytest.raises(DomainNotFound):
        attachments.attach("nope", uuid=U_FREE)


def test_attach_refuses_a_vgpu_another_domain_has(attachments):
    with pytest.raises(AttachedElsewhere) as e:
        attachments.attach(ODD_NAME, uuid=U_DB)
    assert e.value.domains == ("db",) and e.value.exit_code == 6


def test_attach_that_libvirt_rejects_rolls_the_create_back(attachments, sim):
    before = uuids(attachments)
    with pytest.raises(LibvirtRefused) as e:  # the test driver has no attachDeviceFlags: a real rejection
        attachments.attach(ODD_NAME, parent="mtty", type_id="mtty-2")
    assert e.value.domain == ODD_NAME
    assert uuids(attachments) == before
    assert set(attachments.lc.read()[1].owned) == set(before)


def test_broken_template_creates_nothing(attachments, sim):
    d = sim.paths.config_dir / "templates"
    d.mkdir(parents=True)
    (d / "mdev-hostdev.xml.j2").write_text("<hostdev/><hostdev/>")
    before = uuids(attachments)
    with pytest.raises(TemplateError):
        attachments.attach(ODD_NAME, parent="mtty", type_id="mtty-1")
    assert uuids(attachments) == before


def test_attach_what_is_attached_and_recorded_changes_nothing(attachments):
    r = attachments.attach("web1", uuid=U_WEB)
    assert (r.changed, r.created, r.scope) == (False, False, Scope(True, False))


def test_detach_nothing_attached(attachments):
    with pytest.raises(NotAttached):
        attachments.detach(ODD_NAME)
    with pytest.raises(NotAttached):
        attachments.detach("db", uuid=U_FREE)


def test_live_attach_to_shut_off_domain_is_refused_before_any_change(attachments):
    before = uuids(attachments)
    with pytest.raises(LibvirtRefused):
        attachments.attach("db", parent="mtty", type_id="mtty-1", live=True)
    assert uuids(attachments) == before


# --- CLI: inventory and the in-use guard ----------------------------------------------------------------------------
def test_list_shows_domains(cli, golden):
    r = cli("list")
    assert r.exit_code == 0, r.stderr
    golden("list.txt", r.stdout)
    r = cli("list", "--json")
    recs = {x["uuid"]: x for x in json.loads(r.stdout)}
    assert (recs[U_WEB]["domains"], recs[U_WEB]["running"]) == (["web1"], True)
    assert (recs[U_DB]["domains"], recs[U_DB]["running"]) == (["db"], False)
    assert (recs[U_FREE]["domains"], recs[U_FREE]["running"]) == ([], False)
    golden("list.json", r.stdout)
    r = cli("list", "--json", connect="none")
    assert json.loads(r.stdout)[0]["domains"] is None


def test_destroy_guard(cli):
    r = cli("destroy", U_WEB)
    assert r.exit_code == DeviceInUse.exit_code and "web1" in r.stderr
    r = cli("destroy", "--force", U_WEB)  # a running domain: never overridden
    assert r.exit_code == DeviceInUse.exit_code
    r = cli("destroy", U_DB)
    assert r.exit_code == DeviceInUse.exit_code and "'db' (defined, shut off)" in r.stderr
    r = cli("destroy", "--force", U_DB)  # a stale definition: --force overrides it
    assert r.exit_code == 0, r.stderr
    r = cli("destroy", U_FREE)
    assert r.exit_code == 0, r.stderr


def test_cli_errors_are_one_line(cli, tmp_path):
    r = cli("attach", "nope", "--uuid", U_FREE)
    assert r.exit_code == 12 and r.stderr.count("\n") == 1 and "nope" in r.stderr
    r = cli("attach", ODD_NAME, "--uuid", U_WEB)
    assert r.exit_code == 6 and "web1" in r.stderr
    r = cli("destroy", U_FREE, connect=f"qemu:///system?socket={tmp_path}/none")
    assert r.exit_code == 12 and r.stderr.count("\n") == 1 and "cannot connect to libvirt" in r.stderr
    r = cli("list", connect=f"qemu:///system?socket={tmp_path}/none")  # a read-only view degrades instead
    assert r.exit_code == 0 and r.stderr.count("\n") == 1 and "cannot connect to libvirt" in r.stderr
    r = cli("attach", "web1", "--parent", "mtty")
    assert r.exit_code == 2


def test_list_without_libvirt_imports_neither_libvirt_nor_jinja2(tmp_path):
    code = (
        "import sys\nfrom vgpuctl.cli import cli\n"
        f"try:\n cli.main(['--root', {str(tmp_path)!r}, '--connect', 'none', 'list'])\n"
        "except SystemExit:\n pass\nprint(sorted(m for m in ('libvirt', 'jinja2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_metadata_carries_the_type_name_for_another_host_but_not_as_identity():
    """The type's name rides along (a migration target compares it, docs/migration.md); two entries that differ only
    in it are the same entry, so metadata written before names were recorded is never rewritten for it."""
    named = ManagedVgpu(U_FREE, "0000:3b:00.0", "nvidia-232", "mdev", "GRID T4-4Q")
    md = metadata_xml([named])
    assert 'name="GRID T4-4Q"' in md
    ns = '<vgpuctl:vgpus xmlns:vgpuctl="https://vgpuctl.dev/xmlns/1"'
    prefixed = md.replace("<vgpus", ns).replace("</vgpus>", "</vgpuctl:vgpus>").replace("<vgpu ", "<vgpuctl:vgpu ")
    dx = parse_domain(f"<domain><name>x</name><uuid>{U_DB}</uuid><metadata>{prefixed}</metadata></domain>")
    (back,) = dx.managed
    assert back.type_name == "GRID T4-4Q"
    assert back == ManagedVgpu(U_FREE, "0000:3b:00.0", "nvidia-232", "mdev")
    assert "name=" not in metadata_xml([ManagedVgpu(U_FREE, "mtty", "mtty-1")])


def test_domains_lists_what_attach_takes(cli):
    """``domains --json``: libvirt's domains (the web console's attach picker), each with its state and vGPUs."""
    r = cli("domains", "--json")
    assert r.exit_code == 0, r.stderr
    recs = {x["name"]: x for x in json.loads(r.stdout)}
    assert set(recs) == {"web1", "db", ODD_NAME}
    assert all(x["schema"] == "vgpuctl.domain/v1" for x in recs.values())
    assert (recs["web1"]["running"], recs["web1"]["state"], recs["web1"]["vgpus"], recs["web1"]["managed"]) == (
        True,
        "running",
        [U_WEB],
        [U_WEB],
    )
    assert (recs["db"]["running"], recs["db"]["vgpus"], recs["db"]["managed"]) == (False, [U_DB], [])
    assert recs[ODD_NAME]["vgpus"] == [] and recs[ODD_NAME]["uuid"] == "6695eb01-f6a4-8304-79aa-97f2502e1003"
    table = cli("domains").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATE", "PERSISTENT", "VGPUS"]
    assert [ln.split()[0] for ln in table[1:]] == ["db", "we'b\"<1>&", "web1"]


def test_domains_needs_libvirt(cli, tmp_path):
    r = cli("domains", "--json", connect="none")
    assert r.exit_code == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    r = cli("domains", "--json", connect=f"qemu:///system?socket={tmp_path}/none")
    assert r.exit_code == 12 and r.stdout == "" and "cannot connect to libvirt" in r.stderr
