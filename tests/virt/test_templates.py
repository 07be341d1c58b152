"""Device templates: every rendered XML is defined (and started) on libvirt's test driver; bad templates are typed
errors naming file and line; overrides; escaping."""

import os
import xml.etree.ElementTree as ET

import pytest

from vgpuctl.errors import ConfigError, TemplateError
from vgpuctl.model import BackendKind, Instance, VgpuType
from vgpuctl.paths import HostPaths
from vgpuctl.virt.templates import Templates, check_hostdev

from .conftest import ODD_NAME, U_FREE

MTTY = Instance(U_FREE, "mtty", "mtty-1")
MTTY_T = VgpuType("mtty", "mtty-1", name="Single port serial", device_api="vfio-pci", available=1)
VF = Instance("0000:41:00.4", "0000:41:00.4", "nvidia-700", backend=BackendKind.NVIDIA_VF)

SKELETON = """<domain type='test'><name>{name}</name><memory>131072</memory>
<os><type arch='x86_64'>hvm</type></os><devices>{devices}</devices></domain>"""


def define_and_start(virt, name, device_xml):
    """Let libvirt itself validate a device: define a domain holding it, start it, read it back."""
    esc = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    extra = "<graphics type='vnc'/>" if "display='on'" in device_xml else ""
    dom = virt.conn.defineXML(SKELETON.format(name=esc, devices=device_xml + extra))
    dom.create()
    return virt.info(dom)


@pytest.fixture
def templates(tmp_path):
    return Templates(HostPaths.from_root(tmp_path))


def override(tmp_path, name, body):
    d = tmp_path / "etc" / "vgpuctl" / "templates"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(body)
    return d / name


@pytest.mark.parametrize(
    "case, kw",
    [
        ("mdev-default", {}),
        ("mdev-display", {"display": True}),
        ("mdev-no-display", {"display": False}),
        ("mdev-ramfb", {"display": True, "ramfb": True}),
    ],
)
def test_mdev_renders_and_libvirt_accepts(templates, virt, golden, case, kw):
    r = templates.for_instance(MTTY, MTTY_T, domain="guest", **kw)
    golden(f"{case}.xml", r.xml + "\n")
    info = define_and_start(virt, f"t-{case}", r.xml)
    assert info.running and info.live.devices == (U_FREE,)


def test_pci_vf_renders_and_libvirt_accepts(templates, virt, golden):
    r = templates.for_instance(VF, None, domain="guest")
    golden("pci-vf.xml", r.xml + "\n")
    assert ET.fromstring(r.xml).get("managed") == "no"
    info = define_and_start(virt, "t-vf", r.xml)
    assert info.live.devices == ("0000:41:00.4",)


def test_override_wins_and_escapes_every_value(tmp_path, virt):
    path = override(
        tmp_path,
        "mdev-hostdev.xml.j2",
        "<hostdev mode='subsystem' type='mdev' model='{{ model }}'>"
        "<source><address uuid='{{ uuid }}'/></source>"
        "<alias name='ua-{{ domain|length }}'/></hostdev>\n"
        "{# {{ domain }} #}",
    )
    t = Templates(HostPaths.from_root(tmp_path))
    r = t.for_instance(MTTY, MTTY_T, domain=ODD_NAME)
    assert r.template == str(path)
    # the name itself, in an attribute: escaped, parses back to the same string, and libvirt takes it
    path.write_text(
        "<hostdev mode='subsystem' type='mdev' model='vfio-pci' x-name='{{ domain }}'>"
        "<source><address uuid='{{ uuid }}'/></source></hostdev>"
    )
    r = Templates(HostPaths.from_root(tmp_path)).for_instance(MTTY, MTTY_T, domain=ODD_NAME)
    assert ET.fromstring(r.xml).get("x-name") == ODD_NAME
    assert "<1>" not in r.xml


@pytest.mark.parametrize(
    "body, line, fragment",
    [
        ("<hostdev>\n{% if %}\n</hostdev>", 2, "Expected an expression"),
        ("<hostdev>\n\n{{ no_such_name }}</hostdev>", 3, "undefined"),
        ("<hostdev>{{ ''.__class__.__mro__ }}</hostdev>", 1, "unsafe"),
        ("<hostdev><source></hostdev>", None, "not well-formed"),
        ("<hostdev/><hostdev/>", None, "renders 2 <hostdev>"),
        ("<devices><hostdev/></devices>", None, "under <devices>"),
        ("<controller/>", None, "renders 0 <hostdev>"),
        ("<!DOCTYPE x [<!ENTITY a 'b'>]><hostdev>&a;</hostdev>", None, "DOCTYPE"),
    ],
)
def test_broken_template_names_file_and_line(tmp_path, body, line, fragment):
    path = override(tmp_path, "mdev-hostdev.xml.j2", body)
    with pytest.raises(TemplateError) as e:
        Templates(HostPaths.from_root(tmp_path)).for_instance(MTTY, MTTY_T, domain="g")
    assert e.value.path == str(path)
    assert e.value.line == line
    assert fragment in e.value.problem
    assert e.value.exit_code == 8


def test_world_writable_override_refused(tmp_path):
    path = override(tmp_path, "mdev-hostdev.xml.j2", "<hostdev/>")
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError) as e:
        Templates(HostPaths.from_root(tmp_path)).for_instance(MTTY, MTTY_T, domain="g")
    assert e.value.path == str(path)


def test_check_hostdev_accepts_one():
    assert check_hostdev("  <hostdev><source/></hostdev>\n", "x") == "<hostdev><source/></hostdev>"
