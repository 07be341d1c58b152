"""The desired state's ``domain``/``attach`` through the CLI: plan -> apply -> check on the simulated host and
libvirt's test driver (and, marked ``libvirtd``, a real private libvirtd).

The test driver keeps its domains per connection, and libvirt 9.0's lacks attachDeviceFlags/detachDeviceFlags.  So
``shared`` gives every ``Virt.open`` of the test URI one connection (the commands of a test see each other's
changes), and does CONFIG-only device changes as redefinition of the persistent XML, which is what libvirtd does
for a CONFIG attach.  Everything else is vgpuctl's own code path.
"""

import json
import re
import shutil

import pytest

from vgpuctl.host import Host
from vgpuctl.state import Intent, State

from .conftest import DRIVER_FILE, ODD_NAME, U_DB, U_FREE, U_WEB

SPEC = """\
version: 1
instances:
  web: {{uuid: {web}, type: mtty-1, parent: mtty, domain: web1, attach: both}}
  db: {{uuid: {db}, type: mtty-1, parent: mtty, domain: db}}
  free: {{uuid: {free}, type: mtty-1, parent: mtty{free_domain}}}
{extra}"""


def spec(free_domain=ODD_NAME, free_attach="config", extra=""):
    fd = f", domain: {json.dumps(free_domain)}, attach: {free_attach}" if free_domain else ""
    return SPEC.format(web=U_WEB, db=U_DB, free=U_FREE, free_domain=fd, extra=extra)


def configure(sim, text):
    p = sim.paths.config_dir / "vgpuctl.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


class _Shared:
    """A connection whose close() leaves it open (the test closes it)."""

    def __init__(self, conn):
        self._conn = conn

    def close(self):
        return 0

    def __getattr__(self, name):
        return getattr(self._conn, name)


@pytest.fixture
def shared(tmp_path, monkeypatch):
    import libvirt

    from vgpuctl import virt as vmod

    copy = tmp_path / "testnode.xml"
    shutil.copy(DRIVER_FILE, copy)
    uri = "test://" + str(copy)
    conn = libvirt.open(uri)
    real_open = vmod.Virt.open.__func__

    def open_(cls, u, *, readonly=False, timeout=None):
        return cls(_Shared(conn), u) if u == uri else real_open(cls, u, readonly=readonly, timeout=timeout)

    monkeypatch.setattr(vmod.Virt, "open", classmethod(open_))

    orig_attach, orig_detach = libvirt.virDomain.attachDeviceFlags, libvirt.virDomain.detachDeviceFlags

    def attach(dom, xml, flags=0):
        if flags != libvirt.VIR_DOMAIN_AFFECT_CONFIG:
            return orig_attach(dom, xml, flags)
        text = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        if "</devices>" in text:
            text = text.replace("</devices>", xml + "</devices>", 1)
        else:
            text = text.replace("</domain>", "<devices>" + xml + "</devices></domain>", 1)
        dom.connect().defineXML(text)
        return 0

    def detach(dom, xml, flags=0):
        if flags != libvirt.VIR_DOMAIN_AFFECT_CONFIG:
            return orig_detach(dom, xml, flags)
        ident = re.search(r"uuid=['\"]([^'\"]+)", xml).group(1)
        text = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        text = re.sub(r"<hostdev\b.*?</hostdev>", lambda m: "" if ident in m.group(0) else m.group(0), text, flags=re.S)
        dom.connect().defineXML(text)
        return 0

    monkeypatch.setattr(libvirt.virDomain, "attachDeviceFlags", attach)
    monkeypatch.setattr(libvirt.virDomain, "detachDeviceFlags", detach)
    yield uri, conn
    conn.close()


@pytest.fixture
def run(cli, shared):
    uri, _ = shared

    def go(*args):
        return cli(*args, connect=uri)

    return go


def config_of(conn, name):
    from vgpuctl.virt import parse_domain

    return parse_domain(conn.lookupByName(name).XMLDesc(2))


def acts(doc):
    return [(a["op"], a["uuid"], a["domain"], a["mode"], a["blocked"]) for a in doc["actions"]]


def test_attach_config_apply_check_then_detach(sim, run, shared):
    _, conn = shared
    configure(sim, spec())
    r = run("plan", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    # web1 has its vGPU, recorded, in both definitions; db has U_DB without vgpuctl's record (adopted)
    assert acts(doc) == [("attach", U_DB, "db", "config", None), ("attach", U_FREE, ODD_NAME, "config", None)]
    assert doc["changed"] is True and doc["converged"] is False
    text = run("plan")
    assert f"~ attach {U_FREE} to {ODD_NAME} (config) (free; desired)" in text.stdout.splitlines()

    r = run("apply", "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["converged"] and doc["changed"] and doc["remaining"] == []
    assert [a["outcome"] for a in doc["actions"]] == ["done", "done"]
    odd, db = config_of(conn, ODD_NAME), config_of(conn, "db")
    assert odd.devices == (U_FREE,) and [(m.uuid, m.parent, m.type_id) for m in odd.managed] == [
        (U_FREE, "mtty", "mtty-1")
    ]
    assert db.devices == (U_DB,) and [m.uuid for m in db.managed] == [U_DB]
    assert json.loads(run("plan", "--json").stdout)["actions"] == []
    assert run("check").exit_code == 0
    assert sim.paths.state_file.exists() and json.loads(sim.paths.state_file.read_text())["pending"] == []

    # the domain dropped from 'free': vgpuctl attached it, so it is detached (db's adopted one stays)
    configure(sim, spec(free_domain=None))
    doc = json.loads(run("plan", "--json").stdout)
    assert acts(doc) == [("detach", U_FREE, ODD_NAME, "config", None)]
    assert run("check").exit_code == 13
    r = run("apply")
    assert r.exit_code == 0, r.stderr
    assert f"~ detach {U_FREE} from {ODD_NAME} (config) (free; no domain desired)" in r.stdout
    odd = config_of(conn, ODD_NAME)
    assert odd.devices == () and odd.managed == ()
    assert run("check").exit_code == 0

    # moved to another domain: the detach runs before the attach, which would otherwise find it elsewhere
    configure(sim, spec(free_domain="db"))
    r = run("apply", "--json")
    assert r.exit_code == 0, r.stderr
    assert acts(json.loads(r.stdout)) == [("attach", U_FREE, "db", "config", None)]
    configure(sim, spec(free_domain=ODD_NAME))
    r = run("apply", "--json")
    assert r.exit_code == 0, r.stderr
    assert acts(json.loads(r.stdout)) == [
        ("detach", U_FREE, "db", "config", None),
        ("attach", U_FREE, ODD_NAME, "config", None),
    ]
    assert config_of(conn, "db").devices == (U_DB,) and config_of(conn, ODD_NAME).devices == (U_FREE,)
    assert run("check").exit_code == 0


def test_attach_to_missing_domain_fails_and_the_rest_converges(sim, run, shared):
    _, conn = shared
    configure(
        sim, spec(free_domain="nope", extra="  new: {type: mtty-2, parent: mtty, domain: web1, attach: config}\n")
    )
    r = run("apply", "--json")
    assert r.exit_code == 13 and "Traceback" not in r.stderr
    doc = json.loads(r.stdout)
    out = {(a["op"], a["domain"]): (a["outcome"], a["error"]) for a in doc["actions"]}
    assert out[("attach", "nope")][0] == "failed" and "'nope'" in out[("attach", "nope")][1]
    assert {k: v[0] for k, v in out.items() if k != ("attach", "nope")} == {
        ("create", None): "done",
        ("attach", "db"): "done",
        ("attach", "web1"): "done",
    }
    assert [(a["op"], a["domain"]) for a in doc["remaining"]] == [("attach", "nope")]
    new = next(a["uuid"] for a in doc["actions"] if a["op"] == "create")
    assert new in config_of(conn, "web1").devices
    r = run("apply")
    assert r.exit_code == 13 and "failed" in r.stdout and "nope" in r.stdout and "Traceback" not in r.stderr
    assert run("check").exit_code == 13


def test_live_attach_that_libvirt_refuses_is_a_failed_action(sim, run):
    # the test driver has no live attach; db does not run at all: both refusals, neither a traceback
    configure(sim, spec(free_domain="db", free_attach="live"))
    r = run("apply", "--json")
    assert r.exit_code == 13
    (failed,) = [a for a in json.loads(r.stdout)["actions"] if a["outcome"] == "failed"]
    assert (failed["uuid"], failed["domain"]) == (U_FREE, "db") and "not running" in failed["error"]


def test_an_attachment_vgpuctl_did_not_make_is_never_detached(sim, run, shared):
    _, conn = shared
    configure(sim, spec(free_domain=None).replace(", domain: db", ""))
    assert json.loads(run("plan", "--json").stdout)["actions"] == []
    assert run("apply").exit_code == 0
    assert config_of(conn, "db").devices == (U_DB,)


def test_dropped_instance_keeps_its_domain_and_is_not_destroyed(sim, run, shared):
    _, conn = shared
    configure(sim, spec())
    assert run("apply").exit_code == 0
    configure(
        sim,
        "version: 1\ninstances:\n"
        f"  web: {{uuid: {U_WEB}, type: mtty-1, parent: mtty, domain: web1, attach: both}}\n"
        f"  db: {{uuid: {U_DB}, type: mtty-1, parent: mtty, domain: db}}\n",
    )
    doc = json.loads(run("plan", "--json").stdout)
    assert acts(doc) == [("destroy", U_FREE, None, None, "in-use")]
    assert run("apply").exit_code == 13
    assert U_FREE in {i.uuid for i in Host(sim.paths).inventory().instances}
    assert config_of(conn, ODD_NAME).devices == (U_FREE,)


def test_interrupted_attach_journal_entry_changes_no_ownership():
    intent = Intent("attach", U_FREE, "mtty", "mtty-1")
    s = State().with_intent(intent)
    assert s.recover([U_FREE]) == State() and s.settle(intent, exists=True) == State()


@pytest.mark.libvirtd
def test_desired_state_on_a_real_libvirtd(cli, sim, libvirtd):
    from vgpuctl.virt import Virt

    from .test_libvirtd import SKELETON

    with Virt.open(libvirtd.uri) as v:
        for n in ("first", "second"):
            v.conn.defineXML(SKELETON.format(name=n))
        try:
            configure(
                sim, spec(free_domain="first").replace(", domain: web1, attach: both", "").replace(", domain: db", "")
            )
            r = cli("apply", "--json", connect=libvirtd.uri)
            assert r.exit_code == 0, r.stderr
            assert acts(json.loads(r.stdout)) == [("attach", U_FREE, "first", "config", None)]
            cfg = v.info(v.lookup("first")).config
            assert cfg.devices == (U_FREE,) and [m.uuid for m in cfg.managed] == [U_FREE]
            assert cli("check", connect=libvirtd.uri).exit_code == 0
            configure(
                sim, spec(free_domain="second").replace(", domain: web1, attach: both", "").replace(", domain: db", "")
            )
            r = cli("apply", "--json", connect=libvirtd.uri)
            assert r.exit_code == 0, r.stderr
            assert acts(json.loads(r.stdout)) == [
                ("detach", U_FREE, "first", "config", None),
                ("attach", U_FREE, "second", "config", None),
            ]
            assert v.info(v.lookup("first")).config.devices == ()
            assert v.info(v.lookup("second")).config.devices == (U_FREE,)
            assert cli("check", connect=libvirtd.uri).exit_code == 0
        finally:
            for d in v.conn.listAllDomains(0):
                d.undefine()


def test_hook_made_vgpus_are_not_the_desired_states(sim, run):
    from vgpuctl.hook import HookRecords

    configure(sim, spec())
    assert run("apply").exit_code == 0  # apply claims the declared devices: from now on they are its to destroy
    configure(sim, "\n".join(line for line in spec().splitlines() if "free:" not in line) + "\n")
    assert [(a["op"], a["uuid"]) for a in json.loads(run("plan", "--json").stdout)["actions"]] == [("destroy", U_FREE)]
    HookRecords(sim.paths).save("6695eb01-f6a4-8304-79aa-97f2502e1003", ODD_NAME, [U_FREE])
    assert json.loads(run("plan", "--json").stdout)["actions"] == []
    assert run("apply").exit_code == 0 and run("check").exit_code == 0
