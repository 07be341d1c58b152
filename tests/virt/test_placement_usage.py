"""Placement with what libvirt knows: existing VMs' tenants count toward quotas, their domains toward anti-affinity,
a domain's numatune/vCPU pinning gives the request's NUMA nodes.  libvirt's test driver (tests/data/virt/
placement-node.xml) over the simulated two-T4 host (0000:3b:00.0 on NUMA node 0, 0000:d8:00.0 on node 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vgpuctl.cli import cli as group

NODE_FILE = Path(__file__).resolve().parents[1] / "data" / "virt" / "placement-node.xml"
URI = "test://" + str(NODE_FILE)
T4A, T4B = "0000:3b:00.0", "0000:d8:00.0"
U_ACME = "bbbbbbbb-0000-4000-8000-000000000001"  # on T4A, used by acme-1 (tenant acme, group label web)
U_PLAIN = "bbbbbbbb-0000-4000-8000-000000000002"  # domain plain has it, without vgpuctl metadata
POLICY = """version: 1
quotas:
  acme: {max_instances: 1}
anti_affinity:
  - name: acme-vms
    domains: ["acme-*"]
"""


def run(root, *args, connect=URI):
    return CliRunner().invoke(
        group, ["--root", str(root), "--connect", connect, "--nvml", "off", "--lock-timeout", "2", *args]
    )


def place(root, *args, connect=URI):
    r = run(root, "place", "--type", "T4-2B", "--explain", "--json", *args, connect=connect)
    recs = json.loads(r.stdout) if r.stdout.strip() else []
    return r, (recs[0] if recs else {}), {v["gpu"]: v["verdict"] for v in recs[1:]}


@pytest.fixture(scope="module")
def host(sim_pool):
    """One simulated t4x2 host for the module (placement only reads it): U_ACME on T4A, the policy above."""
    sim = sim_pool.fresh("t4x2", "placement-usage")
    r = run(sim.root, "create", "-p", T4A, "-t", "nvidia-223", "--uuid", U_ACME, connect="none")
    assert r.exit_code == 0, r.output
    (sim.root / "etc" / "vgpuctl").mkdir(parents=True, exist_ok=True)
    (sim.root / "etc" / "vgpuctl" / "policy.yaml").write_text(POLICY)
    return sim.root


def test_quota_counts_the_tenants_existing_vms(host):
    r, d, verdicts = place(host, "--tenant", "acme")
    assert r.exit_code == 4, r.output
    assert d["placed"] is False and verdicts == {T4A: "quota", T4B: "quota"}
    assert "has 1 of 1 instances" in d["refusals"][0]["detail"]
    # the tenant comes from the domain's metadata too
    r, d, verdicts = place(host, "--domain", "acme-1")
    assert r.exit_code == 4 and d["tenant"] == "acme" and set(verdicts.values()) == {"quota"}


def test_anti_affinity_refuses_the_gpu_of_a_group_member(host):
    r, d, verdicts = place(host, "--domain", "acme-2")
    assert r.exit_code == 0, r.output
    assert d["parent"] == T4B and verdicts[T4A] == "anti-affinity"
    # a group label in a member's metadata counts like a policy glob
    r, d, verdicts = place(host, "--domain", "other", "--group", "web")
    assert r.exit_code == 0 and d["parent"] == T4B and verdicts[T4A] == "anti-affinity"


def test_numatune_picks_the_gpu_on_the_domains_node(host):
    r, d, verdicts = place(host, "--domain", "numa1")
    assert r.exit_code == 0, r.output
    assert d["parent"] == T4B and d["numa_nodes"] == [1] and d["numa_from"] == ["numatune"]
    r, d, _ = place(host, "--domain", "numa1", "--numa-node", "0")  # --numa-node overrides
    assert d["parent"] == T4A and d["numa_nodes"] == [0] and d["numa_from"] == ["--numa-node"]


def test_pinning_without_cpulist_files_is_said_in_explain(host):
    r, d, _ = place(host, "--domain", "pinned")
    assert r.exit_code == 0 and d["numa_nodes"] == [] and d["parent"] == T4A
    assert "vCPU pinning of 'pinned' not used: no cpulist files" in r.stderr


def test_connect_none_is_unchanged(host):
    for args in (("--tenant", "acme"), ("--domain", "acme-2"), ("--domain", "numa1")):
        r, d, verdicts = place(host, *args, connect="none")
        assert r.exit_code == 0, r.output
        assert d["parent"] == T4A and set(verdicts.values()) == {"ok"} and d["numa_from"] == []


def test_vcpu_pinning_maps_through_the_hosts_cpulists(tmp_path):
    from vgpuctl.sim import materialize

    materialize("t4x2", tmp_path)
    for node, cpus in ((0, "0-3"), (1, "4-7")):
        d = tmp_path / "sys" / "devices" / "system" / "node" / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
    r, d, _ = place(tmp_path, "--domain", "pinned")
    assert r.exit_code == 0, r.output
    assert d["parent"] == T4B and d["numa_nodes"] == [1] and d["numa_from"] == ["vcpupin"]


def test_create_and_attach_place_for_the_domain_and_record_its_tenant(sim_pool):
    from vgpuctl.errors import TenantMismatch
    from vgpuctl.host import Host
    from vgpuctl.lifecycle import Lifecycle
    from vgpuctl.virt.templates import Templates
    from vgpuctl.virt import Attachments, Virt

    sim = sim_pool.fresh("t4x2")
    r = run(sim.root, "create", "-t", "T4-2B", "--domain", "numa1", "--uuid", U_PLAIN, "--json")  # node 1
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["parent"] == T4B
    # attach --type without --parent places for the domain (its NUMA node); the test driver then refuses the
    # attach (it has no attachDeviceFlags) and the create is rolled back
    r = run(sim.root, "attach", "numa1", "--type", "T4-2B", "--config")
    assert r.exit_code == 12 and "attach a device" in r.output
    assert [i.uuid for i in Host(sim.paths).inventory().instances] == [U_PLAIN]
    # the tenant goes into vgpuctl's metadata (the test driver forgets between connections: check through one)
    lc = Lifecycle(Host(sim.paths), lock_timeout=2)
    with Virt.open(URI) as v:
        a = Attachments(v, lc, Templates(sim.paths))
        res = a.attach("plain", uuid=U_PLAIN, live=True, tenant="beta")  # attached already: only recorded
        assert res.changed and not res.created
        x = v.info(v.lookup("plain")).live
        assert x.tenant == "beta" and [m.uuid for m in x.managed] == [U_PLAIN]
        assert not a.attach("plain", uuid=U_PLAIN, live=True, tenant="beta").changed
        assert not a.attach("plain", uuid=U_PLAIN, live=True).changed  # no --tenant: the recorded one stays
        with pytest.raises(TenantMismatch) as e:
            a.attach("plain", uuid=U_PLAIN, live=True, tenant="gamma")
        assert e.value.exit_code == 2 and e.value.recorded == "beta"


def test_reconciler_placer_sees_existing_vms(host):
    from vgpuctl.apply import policy_placer
    from vgpuctl.app import App, Settings
    from vgpuctl.observe import usage_of
    from vgpuctl.spec import DesiredInstance

    ctx = App(Settings(root=str(host), connect=URI, nvml="off"))
    inv = ctx.host.inventory()
    want = DesiredInstance(name="web2", uuid="cccccccc-0000-4000-8000-000000000001", type="T4-2B", domain="acme-2")
    usage = usage_of(ctx.libvirt.observed(), inv)  # the observation, handed to the placer as data
    assert policy_placer(ctx.policy(), usage=usage)(inv, [want], [], []) == {"web2": T4B}
    assert policy_placer(ctx.policy())(inv, [want], [], []) == {"web2": T4A}


def test_apply_takes_tenant_and_numa_from_the_domain(host):
    """The desired state's placement request is completed from its domain's XML, as ``place --domain`` completes
    its own: numa1's numatune (node 1) picks T4B; acme-1's tenant label (acme, at its quota of 1) refuses."""
    from vgpuctl.app import App, Settings
    from vgpuctl.spec import DesiredInstance, DesiredState

    rec = App(Settings(root=str(host), connect=URI, nvml="off", lock_timeout=2)).reconciler()
    numa = DesiredInstance(name="n", uuid="cccccccc-0000-4000-8000-000000000002", type="T4-2B", domain="numa1")
    acme = DesiredInstance(name="a", uuid="cccccccc-0000-4000-8000-000000000003", type="T4-2B", domain="acme-1")
    (a,) = [a for a in rec.observe(DesiredState(instances=(numa,))).plan.actions if str(a.op) == "create"]
    assert (a.uuid, a.block, a.parent) == (numa.uuid, None, T4B)
    (a,) = [a for a in rec.observe(DesiredState(instances=(acme,))).plan.actions if str(a.op) == "create"]
    assert a.block is not None and "quota" in a.detail, a
    # the same requests placed without the domains' facts land on the first GPU, unrefused
    r = run(host, "place", "--type", "T4-2B", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["parent"] == T4A, r.output


def test_reconciler_plan_reads_libvirt_once(host, monkeypatch):
    """The placer's usage comes from the snapshot the plan's attachments read: one read of the domains per plan."""
    from vgpuctl import virt
    from vgpuctl.commands._common import Settings
    from vgpuctl.commands.reconcile import build_reconciler
    from vgpuctl.spec import DesiredInstance, DesiredState

    reads = []
    real = virt.Virt.snapshot
    monkeypatch.setattr(virt.Virt, "snapshot", lambda self: reads.append(1) or real(self))
    rec = build_reconciler(Settings(root=str(host), connect=URI, nvml="off", lock_timeout=2))
    want = DesiredInstance(name="web2", uuid="cccccccc-0000-4000-8000-000000000001", type="T4-2B", domain="acme-2")
    obs = rec.observe(DesiredState(instances=(want,)))
    assert [a.parent for a in obs.plan.actions if a.uuid == want.uuid and str(a.op) == "create"] == [T4B]
    assert len(reads) == 1
