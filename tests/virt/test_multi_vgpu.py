"""Several vGPUs in one VM: NVIDIA's multi-vGPU rule at attach (same board type and series), and the shipped
templates turning display/ramfb on for at most one vGPU per domain; libvirt's test driver and the mixed (T4 + A16)
simulator."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from vgpuctl.errors import InvalidInput, MultiVgpuConflict
from vgpuctl.host import Host
from vgpuctl.lifecycle import Lifecycle, ProcessHolders
from vgpuctl.model import Instance, VgpuType
from vgpuctl.paths import HostPaths
from vgpuctl.virt.templates import Templates
from vgpuctl.virt import Attachments, DomainUsers, parse_domain

from .test_templates import define_and_start

T4, A16VF = "0000:3b:00.0", "0000:86:00.4"
DOMAIN = """<domain type='test'><name>multi</name><memory>131072</memory><os><type arch='x86_64'>hvm</type></os>
<devices><hostdev mode='subsystem' type='mdev' model='vfio-pci' display='on'><source><address uuid='{u}'/></source>
</hostdev><graphics type='vnc'/></devices></domain>"""


@pytest.fixture
def mixed(sim_factory, virt, uri):
    sim = sim_factory("mixed")
    host = Host(sim.paths)
    lc = Lifecycle(host, lock_timeout=2, usage_checks=[ProcessHolders(host), DomainUsers(uri)])
    first = lc.create(parent=T4, type_id="T4-4Q")
    virt.conn.defineXML(DOMAIN.format(u=first.uuid))
    return sim, lc, Attachments(virt, lc, Templates(sim.paths)), first


@pytest.mark.sim
@pytest.mark.parametrize(
    "parent, vtype, why",
    [
        (A16VF, "A16-4Q", "another board"),
        (T4, "T4-4C", "another series"),
    ],
)
def test_attach_refuses_a_second_vgpu_the_rule_forbids(mixed, parent, vtype, why):
    sim, lc, att, first = mixed
    before = sorted(i.uuid for i in lc.host.inventory().instances)
    with pytest.raises(MultiVgpuConflict) as ei:
        att.attach("multi", parent=parent, type_id=vtype, config=True)
    msg = str(ei.value)
    assert "same board type and series" in msg and first.uuid in msg and "\n" not in msg
    assert ei.value.exit_code == InvalidInput.exit_code
    assert sorted(i.uuid for i in lc.host.inventory().instances) == before  # nothing created


@pytest.mark.sim
def test_same_board_and_series_passes_the_rule(mixed):
    from vgpuctl.lifecycle import find_type
    from vgpuctl.virt import check_multi_vgpu

    sim, lc, att, first = mixed
    inv = lc.host.inventory()
    t4q = find_type(inv, T4, "T4-4Q")
    a16q = find_type(inv, A16VF, "A16-4Q")
    again = Instance("aaaaaaaa-0000-4000-8000-00000000000a", T4, t4q.type_id)
    check_multi_vgpu(inv, again, t4q, [first.uuid], domain="multi")  # same board (T4), same series (Q): allowed
    other = Instance("aaaaaaaa-0000-4000-8000-00000000000b", A16VF, a16q.type_id)
    with pytest.raises(MultiVgpuConflict):
        check_multi_vgpu(inv, other, a16q, [first.uuid], domain="multi")


def test_parse_domain_sees_which_vgpu_has_the_display():
    dx = parse_domain(DOMAIN.format(u="aaaaaaaa-0000-4000-8000-000000000001"))
    assert dx.displays == ("aaaaaaaa-0000-4000-8000-000000000001",)


def test_second_vgpu_renders_display_and_ramfb_off(tmp_path, virt):
    t = Templates(HostPaths.from_root(tmp_path))
    mt = VgpuType("mtty", "mtty-1", name="Single port serial", device_api="vfio-pci", available=2)
    a = Instance("aaaaaaaa-0000-4000-8000-000000000003", "mtty", "mtty-1")
    b = Instance("aaaaaaaa-0000-4000-8000-000000000002", "mtty", "mtty-1")
    first = t.for_instance(a, mt, domain="d", display=True, ramfb=True)
    second = t.for_instance(b, mt, domain="d", display=True, ramfb=True, display_taken=True)
    assert (ET.fromstring(first.xml).get("display"), ET.fromstring(first.xml).get("ramfb")) == ("on", "on")
    assert (ET.fromstring(second.xml).get("display"), ET.fromstring(second.xml).get("ramfb")) == ("off", "off")
    info = define_and_start(virt, "two-vgpus", first.xml + second.xml)  # libvirt takes the pair
    assert info.running and sorted(info.live.devices) == sorted([a.uuid, b.uuid])
