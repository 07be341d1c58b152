"""Capacity invariants of the simulated host under random create/remove sequences."""

from __future__ import annotations


from hypothesis import given, settings
from hypothesis import strategies as st

from vgpuctl.sim.machine import Machine, SimError
from vgpuctl.sim.profile import load_profile

PROFILES = {name: load_profile(name) for name in ("t4x2", "samples", "gvtg", "a16")}

ops = st.lists(st.tuples(st.booleans(), st.integers(0, 10_000), st.integers(0, 10_000)), max_size=40)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(PROFILES)), steps=ops)
def test_create_succeeds_exactly_when_available(name, steps):
    m = Machine(PROFILES[name])
    parents = [p.name for p in m.parents()]
    serial = 0
    for is_create, a, b in steps:
        if is_create or not m.instances:
            parent = parents[a % len(parents)]
            types = m.functions[parent].model.types
            type_id = types[b % len(types)].id
            before = m.available(parent, type_id)
            serial += 1
            uuid = f"00000000-0000-0000-0000-{serial:012d}"
            try:
                m.create(parent, type_id, uuid.encode())
                assert before >= 1
                assert m.available(parent, type_id) <= before - 1 or m.functions[parent].physfn is not None
            except SimError as e:
                assert before == 0
                assert e.errno == m.functions[parent].model.full_errno
        else:
            uuid = sorted(m.instances)[a % len(m.instances)]
            m.remove_now(uuid)
        for p in parents:
            for t in m.functions[p].model.types:
                assert m.available(p, t.id) >= 0
        groups = [i.group for i in m.instances.values()]
        assert len(groups) == len(set(groups))
    # removing everything gives every type its starting capacity back
    fresh = Machine(PROFILES[name])
    for uuid in list(m.instances):
        m.remove_now(uuid)
    for p in parents:
        for t in m.functions[p].model.types:
            assert m.available(p, t.id) == fresh.available(p, t.id)
