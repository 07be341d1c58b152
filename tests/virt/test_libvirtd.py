"""Against a real (private) libvirtd: CONFIG attach/detach to shut-off domains, metadata, the in-use guard.

Live attach, starting a domain with the device and refusing a second running domain need vfio: they belong to the
real-kernel stage, which can reuse ``tests/virt/libvirtd.py``.
"""

import json
import xml.etree.ElementTree as ET

import pytest

from .conftest import ODD_NAME, U_FREE

pytestmark = pytest.mark.libvirtd

SKELETON = """<domain type='qemu'><name>{name}</name><memory>131072</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>"""


@pytest.fixture
def domains(libvirtd):
    from vgpuctl.virt import Virt

    names = [ODD_NAME, "second"]
    with Virt.open(libvirtd.uri) as v:
        for n in names:
            esc = n.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            v.conn.defineXML(SKELETON.format(name=esc))
        yield v
        for d in v.conn.listAllDomains(0):
            d.undefine()


def config_of(v, name):
    return v.info(v.lookup(name)).config


def test_attach_detach_config_with_metadata(cli, libvirtd, domains):
    v = domains
    r = cli("attach", ODD_NAME, "--uuid", U_FREE, "--json", connect=libvirtd.uri)
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["config"], out["live"], out["changed"], out["created"]) == (True, False, True, False)
    cfg = config_of(v, ODD_NAME)
    assert cfg.devices == (U_FREE,) and [m.uuid for m in cfg.managed] == [U_FREE]
    raw = v.lookup(ODD_NAME).XMLDesc(2)
    assert ET.fromstring(raw).find("metadata/{https://vgpuctl.dev/xmlns/1}vgpus") is not None

    assert (
        json.loads(cli("attach", ODD_NAME, "--uuid", U_FREE, "--json", connect=libvirtd.uri).stdout)["changed"] is False
    )
    r = cli("attach", "second", "--uuid", U_FREE, connect=libvirtd.uri)
    assert r.exit_code == 6 and repr(ODD_NAME) in r.stderr
    r = cli("destroy", U_FREE, connect=libvirtd.uri)
    assert r.exit_code == 6
    r = cli("attach", ODD_NAME, "--uuid", U_FREE, "--live", connect=libvirtd.uri)
    assert r.exit_code == 12 and "not running" in r.stderr

    r = cli("detach", ODD_NAME, connect=libvirtd.uri)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split() == [U_FREE]
    cfg = config_of(v, ODD_NAME)
    assert cfg.devices == () and cfg.managed == ()
    assert cli("destroy", U_FREE, connect=libvirtd.uri).exit_code == 0


def test_create_attach_then_detach_destroy(cli, libvirtd, domains, sim):
    r = cli("attach", "second", "--parent", "mtty", "--type", "mtty-2", "--json", connect=libvirtd.uri)
    assert r.exit_code == 0, r.stderr
    new = json.loads(r.stdout)["uuid"]
    assert config_of(domains, "second").devices == (new,)
    r = cli("list", "--json", connect=libvirtd.uri)
    rec = {x["uuid"]: x for x in json.loads(r.stdout)}[new]
    assert (rec["domains"], rec["running"]) == (["second"], False)
    r = cli("detach", "second", "--uuid", new, "--destroy", connect=libvirtd.uri)
    assert r.exit_code == 0, r.stderr
    assert new not in {x["uuid"] for x in json.loads(cli("list", "--json", connect=libvirtd.uri).stdout)}
