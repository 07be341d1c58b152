"""The pure parts of placement's libvirt side: domain XML labels, NUMA nodes, cpusets, consumers."""

import pytest

from vgpuctl.placement import Consumer
from vgpuctl.virt.domxml import (
    DomainInfo,
    ManagedVgpu,
    Snapshot,
    consumers_from,
    facts_of,
    metadata_xml,
    parse_cpuset,
    parse_domain,
)

NS = "https://vgpuctl.dev/xmlns/1"


def test_parse_cpuset():
    assert parse_cpuset("0-3,^2,8") == (0, 1, 3, 8)
    assert parse_cpuset("1") == (1,)
    for bad in ("a", "3-1", "1-"):
        with pytest.raises(ValueError):
            parse_cpuset(bad)


def test_metadata_round_trip_escapes_the_tenant():
    md = metadata_xml(
        [ManagedVgpu("aaaaaaaa-0000-4000-8000-000000000001", "mtty", "mtty-1")], tenant="a<&>b", groups=["db"]
    )
    body = md.replace("<vgpus>", f'<vgpuctl:vgpus xmlns:vgpuctl="{NS}">').replace("</vgpus>", "</vgpuctl:vgpus>")
    x = parse_domain(
        f"<domain><name>d</name><metadata>{body}</metadata>"
        "<numatune><memory nodeset='0,2-3'/></numatune>"
        "<cputune><vcpupin vcpu='0' cpuset='5'/></cputune></domain>"
    )
    assert (x.tenant, x.groups, x.memory_nodes, x.vcpu_cpus) == ("a<&>b", ("db",), (0, 2, 3), (5,))
    assert x.managed[0].parent == "mtty"
    assert metadata_xml([]) == "<vgpus />"  # no tenant, no entries: as before


def test_facts_and_consumers():
    x = parse_domain("<domain><name>d</name><vcpu cpuset='4-5'>2</vcpu></domain>")
    info = DomainInfo("d", "u", running=False, persistent=True, config=x)
    f = facts_of(info, {4: 1, 5: 1}, "/sys/devices/system/node")
    assert f.numa_nodes == (1,) and f.numa_from == ("vcpupin",)
    f = facts_of(info, None, "/sys/devices/system/node")
    assert f.numa_nodes == () and "no cpulist files" in f.notes[0]


def test_consumers_prefer_a_running_domain(tmp_path):
    from vgpuctl.sim import materialize
    from vgpuctl.host import Host
    from vgpuctl.paths import HostPaths

    u = "aaaaaaaa-0000-4000-8000-000000000001"
    materialize("t4x2", tmp_path, instances=[("0000:3b:00.0", "nvidia-223", u)])
    inv = Host(HostPaths.from_root(tmp_path)).inventory()
    hd = f"<devices><hostdev mode='subsystem' type='mdev'><source><address uuid='{u}'/></source></hostdev></devices>"
    off = parse_domain(f"<domain><name>a</name>{hd}</domain>")
    on = parse_domain(
        f"<domain><name>b</name><metadata><vgpuctl:vgpus xmlns:vgpuctl='{NS}'><tenant>t</tenant>"
        f"</vgpuctl:vgpus></metadata>{hd}</domain>"
    )
    snap = Snapshot(
        "test:///x", (DomainInfo("a", "1", False, True, config=off), DomainInfo("b", "2", True, False, live=on))
    )
    assert consumers_from(snap, inv) == {u: Consumer(domain="b", tenant="t")}
