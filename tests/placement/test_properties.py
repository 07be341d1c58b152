"""Property tests: random hosts, policies and request sequences never break the rules, and decide deterministically."""

from typing import Dict, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement_hosts import A16_TYPES, T4_TYPES, a16_gpu, host, t4
from vgpuctl.errors import UnknownType
from vgpuctl.model import Inventory
from vgpuctl.placement import Consumer, MixMode, Request, Usage, apply, gpu_states, place, release
from vgpuctl.policy import GpuRule, Policy, Quota, Selector, Strategy

PROFILES = [p for _, p, _, _ in T4_TYPES] + [p for _, p, _, _ in A16_TYPES]
MAX = {i: m for i, _, _, m in T4_TYPES + A16_TYPES}
FB = {i: f for i, _, f, _ in T4_TYPES + A16_TYPES}


@st.composite
def hosts(draw) -> Inventory:
    n_t4 = draw(st.integers(0, 3))
    n_a16 = draw(st.integers(0 if n_t4 else 1, 3))
    parts = [t4(f"0000:{0x10 + i:02x}:00.0", numa=draw(st.sampled_from([0, 1, None]))) for i in range(n_t4)]
    parts += [a16_gpu(f"0000:{0x80 + i:02x}:00.0", numa=1, vfs=draw(st.sampled_from([4, 8, 16]))) for i in range(n_a16)]
    return host(*parts)


@st.composite
def policies(draw) -> Policy:
    strat = draw(st.sampled_from(list(Strategy)))
    series = draw(st.sampled_from([None, ("Q",), ("Q", "B"), ("C",)]))
    rules = ()
    if draw(st.booleans()):
        rules = (GpuRule(name="a16", match=Selector(models=("a16",)), strategy=draw(st.sampled_from(list(Strategy)))),)
    quotas = (
        ("t0", Quota(max_instances=draw(st.integers(0, 6)))),
        ("*", Quota(max_framebuffer_mib=draw(st.sampled_from([4096, 16384, 65536])))),
    )
    return Policy(rules=rules, default=GpuRule(name="default", strategy=strat, series=series), quotas=quotas)


events = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.sampled_from(PROFILES),
            st.sampled_from([None, "t0", "t1"]),
            st.sampled_from([(), (0,), (1,)]),
        ),
        st.tuples(st.just("del"), st.integers(0, 1000)),
    ),
    max_size=40,
)


def check_invariants(inv: Inventory, usage: Usage, policy: Policy) -> None:
    per_gpu: Dict[str, Dict[str, int]] = {}
    per_vf: Dict[str, int] = {}
    for i in inv.instances:
        p = inv.parent(i.parent)
        per_gpu.setdefault(p.gpu, {}).setdefault(i.type_id, 0)
        per_gpu[p.gpu][i.type_id] += 1
        if p.is_vf:
            per_vf[p.name] = per_vf.get(p.name, 0) + 1
    for gpu, counts in per_gpu.items():
        assert len(counts) == 1, f"type mix on {gpu}: {counts}"  # homogeneous: one type per physical GPU
        for tid, n in counts.items():
            assert n <= MAX[tid], f"{gpu}: {n} x {tid} > max_instance"
    assert all(n == 1 for n in per_vf.values()), "two vGPUs on one VF"
    vfs = {}
    for p in inv.parents:
        if p.is_vf:
            vfs[p.gpu] = vfs.get(p.gpu, 0) + 1
    for gpu, counts in per_gpu.items():
        if gpu in vfs:
            assert sum(counts.values()) <= vfs[gpu]
    assert all(t.available >= 0 for t in inv.types)
    tenants: Dict[str, List[str]] = {}
    for i in inv.instances:
        c = usage.consumer(i.uuid)
        if c and c.tenant:
            tenants.setdefault(c.tenant, []).append(i.type_id)
    for tenant, tids in tenants.items():
        q = policy.quota(tenant)
        if q and q.max_instances is not None:
            assert len(tids) <= q.max_instances
        if q and q.max_framebuffer_mib is not None:
            assert sum(FB[t] for t in tids) <= q.max_framebuffer_mib


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hosts(), policies(), events)
def test_sequences_never_break_the_rules(inv, policy, evs):
    usage = Usage()
    live: List[str] = []
    for n, ev in enumerate(evs):
        if ev[0] == "add":
            _, profile, tenant, nodes = ev
            req = Request(type=profile, tenant=tenant, numa_nodes=nodes, domain=f"vm{n}")
            try:
                d = place(inv, policy, req, usage=usage)
            except Exception as e:  # a profile of a model the host lacks
                assert type(e).__name__ == "UnknownType"
                continue
            assert d == place(inv, policy, req, usage=usage)  # deterministic
            if d.placed:
                uuid = f"00000000-0000-0000-0000-{n:012d}"
                t = inv.type_on(d.parent, d.type_id)
                assert t is not None and t.available > 0  # the host agreed there was room
                inv = apply(inv, parent=d.parent, type_id=d.type_id, uuid=uuid, usage=usage)
                usage = usage.with_consumer(uuid, Consumer(domain=f"vm{n}", tenant=tenant))
                live.append(uuid)
            else:
                assert all(v.reason is not None for v in d.verdicts)
        elif live:
            uuid = live.pop(ev[1] % len(live))
            inv = release(inv, uuid, usage=usage)
            usage = usage.without(uuid)
        check_invariants(inv, usage, policy)


@settings(max_examples=60, deadline=None)
@given(hosts(), st.lists(st.sampled_from(PROFILES), min_size=1, max_size=30))
def test_fill_then_empty_restores_capacity(inv, profiles):
    start = inv
    uuids: List[str] = []
    offered = {t.profile for p in inv.parents for t in inv.types_on(p.name)}
    for n, prof in enumerate(profiles):
        if prof not in offered:  # a profile of a model the host lacks: the typed error, nothing placed
            with pytest.raises(UnknownType):
                place(inv, Policy(), Request(type=prof))
            continue
        d = place(inv, Policy(), Request(type=prof))
        # an empty host has room for every profile it offers: the first offered request is always placed
        assert d.placed or uuids, [(v.parent, v.reason) for v in d.verdicts]
        if d.placed:
            u = f"00000000-0000-0000-0000-{n:012d}"
            inv = apply(inv, parent=d.parent, type_id=d.type_id, uuid=u)
            uuids.append(u)
    for u in reversed(uuids):
        inv = release(inv, u)
    assert inv == start
    assert bool(uuids) == bool(offered.intersection(profiles))  # something was filled whenever it could be


def _fresh(inv: Inventory) -> Inventory:
    """The same inventory without any table a previous one handed on."""
    return Inventory(parents=inv.parents, types=inv.types, instances=inv.instances)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hosts(), policies(), events, st.sampled_from(list(MixMode)))
def test_tables_handed_on_by_apply_and_release_equal_fresh_ones(inv, policy, evs, mode):
    """place() keeps its per-GPU tables on the inventory and apply()/release() hand them on with only the changed
    GPU recomputed: every decision, verdicts included, equals the decision on a fresh copy of the same inventory."""
    usage = Usage.of(modes={p.gpu: mode for p in inv.parents[:1]})
    live: List[str] = []
    for n, ev in enumerate(evs):
        if ev[0] == "add":
            req = Request(type=ev[1], tenant=ev[2], numa_nodes=ev[3], domain=f"vm{n}")
            try:
                d = place(inv, policy, req, usage=usage)
            except Exception:
                continue
            fresh = place(_fresh(inv), policy, req, usage=usage)
            assert (d.placed, d.parent, d.type_id, d.strategy) == (
                fresh.placed,
                fresh.parent,
                fresh.type_id,
                fresh.strategy,
            )
            assert d.verdicts == fresh.verdicts and d == fresh
            assert gpu_states(inv, usage) == gpu_states(_fresh(inv), usage)
            if d.placed:
                uuid = f"00000000-0000-0000-0000-{n:012d}"
                inv = apply(inv, parent=d.parent, type_id=d.type_id, uuid=uuid, usage=usage)
                usage = usage.with_consumer(uuid, Consumer(domain=f"vm{n}", tenant=ev[2]))
                live.append(uuid)
        elif live:
            uuid = live.pop(ev[1] % len(live))
            inv = release(inv, uuid, usage=usage)
            usage = usage.without(uuid)
    assert gpu_states(inv, usage) == gpu_states(_fresh(inv), usage)
