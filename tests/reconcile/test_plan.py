"""The planner: unit cases and property tests of its safety rules and of convergence."""

from hypothesis import given, settings
from hypothesis import strategies as st

from vgpuctl.model import Instance, Inventory, sorted_inventory
from dataclasses import replace

from vgpuctl.plan import Block, DomainAttachment, Op, PlacementFailure, plan
from vgpuctl.spec import AttachMode
from vgpuctl.state import ORIGIN_APPLY, ORIGIN_CREATE, ORIGIN_HOOK, ORIGINS, Owned, State

from helpers import PARENTS, desired, inventory, state, want

U1 = "00000000-0000-0000-0000-000000000001"
U2 = "00000000-0000-0000-0000-000000000002"


def ops(p):
    return [(str(a.op), a.uuid, a.parent, a.type_id, str(a.block) if a.block else None) for a in p.actions]


def test_empty_host_creates_in_file_order():
    d = desired(want("a", "mtty-1"), want("b", "T4-2Q", parent="0000:3b:00.0"))
    p = plan(inventory(), state(), d)
    assert ops(p) == [
        ("create", d.instances[0].uuid, "mtty", "mtty-1", None),
        ("create", d.instances[1].uuid, "0000:3b:00.0", "nvidia-231", None),
    ]


def test_converged_is_empty():
    d = desired(want("a", "Single port serial", uuid=U1))
    assert plan(inventory([(U1, "mtty", "mtty-1")]), state([(U1, "mtty", "mtty-1")]), d).empty


def test_foreign_match_counts_and_foreign_extra_is_left_alone():
    inv = inventory([(U1, "mtty", "mtty-1"), (U2, "mtty", "mtty-2")])
    assert plan(inv, state(), desired(want("a", "mtty-1", uuid=U1))).empty


def test_owned_undesired_destroyed_unless_in_use():
    inv = inventory([(U1, "mtty", "mtty-1")])
    st_ = state([(U1, "mtty", "mtty-1")])
    assert ops(plan(inv, st_, desired())) == [("destroy", U1, "mtty", "mtty-1", None)]
    p = plan(inv, st_, desired(), users={U1: ["pid 7 (qemu)"]})
    assert ops(p) == [("destroy", U1, "mtty", "mtty-1", "in-use")] and "pid 7" in p.actions[0].detail


def test_retype_owned_and_foreign_conflict():
    inv = inventory([(U1, "mtty", "mtty-1")])
    d = desired(want("a", "mtty-2", uuid=U1))
    assert ops(plan(inv, state([(U1, "mtty", "mtty-1")]), d)) == [
        ("destroy", U1, "mtty", "mtty-1", None),
        ("create", U1, "mtty", "mtty-2", None),
    ]
    assert ops(plan(inv, state([(U1, "mtty", "mtty-1")]), d, users={U1: ["x"]})) == [
        ("destroy", U1, "mtty", "mtty-1", "in-use"),
        ("create", U1, "mtty", "mtty-2", "depends"),
    ]
    assert ops(plan(inv, state(), d)) == [("create", U1, "mtty", "mtty-2", "foreign")]


def test_missing_parent_waits_and_unknown_type_blocks():
    d = desired(want("a", "mtty-1", parent="0000:99:00.0"), want("b", "nope"))
    p = plan(inventory(), state(), d)
    assert [a.block for a in p.actions] == [Block.PARENT_MISSING, Block.TYPE_UNKNOWN]
    assert Block.PARENT_MISSING.retryable and not Block.TYPE_UNKNOWN.retryable


def test_placement_without_engine_and_with_one():
    d = desired(want("a", "mtty-1", parent=None))
    assert plan(inventory(), state(), d).actions[0].block is Block.NO_PLACEMENT
    seen = {}

    def placer(inv, todo, creates, destroys):
        seen["args"] = ([x.name for x in todo], list(creates), list(destroys))
        return {"a": "mtty"}

    p = plan(inventory(), state(), d, placer=placer)
    assert ops(p) == [("create", d.instances[0].uuid, "mtty", "mtty-1", None)]
    p = plan(inventory(), state(), d, placer=lambda *a: {"a": PlacementFailure("full")})
    assert p.actions[0].block is Block.NO_PLACEMENT and p.actions[0].detail == "full"


def test_attach_without_libvirt_is_blocked_and_with_it_planned_once():
    d = desired(want("a", "mtty-1", uuid=U1, domain="vm1"))
    inv, st_ = inventory([(U1, "mtty", "mtty-1")]), state([(U1, "mtty", "mtty-1")])
    p = plan(inv, st_, d)
    assert ops(p) == [("attach", U1, "mtty", "mtty-1", "libvirt")] and p.actions[0].detail == "libvirt not configured"
    assert ops(plan(inv, st_, d, attachments={})) == [("attach", U1, "mtty", "mtty-1", None)]
    assert plan(inv, st_, d, attachments={U1: frozenset({recorded("vm1")})}).empty
    p = plan(inv, st_, d, libvirt_error="libvirt unreachable: down")
    assert p.actions[0].block is Block.LIBVIRT_DOWN and p.actions[0].block.retryable


def recorded(domain, live=False, config=True, running=False):
    return DomainAttachment(
        domain, running=running, live=live, config=config, recorded_live=live, recorded_config=config
    )


def test_attach_modes_need_the_device_and_vgpuctl_record_in_each_definition():
    inv, st_ = inventory([(U1, "mtty", "mtty-1")]), state([(U1, "mtty", "mtty-1")])
    by_hand = DomainAttachment("vm1", running=True, live=True, config=True)  # virsh attach-device: no record
    for mode, att, empty in [
        (AttachMode.CONFIG, recorded("vm1"), True),
        (AttachMode.LIVE, recorded("vm1"), False),
        (AttachMode.BOTH, recorded("vm1", live=True, running=True), True),
        (AttachMode.BOTH, recorded("vm1", live=False, running=True), False),
        (AttachMode.CONFIG, by_hand, False),  # adopted: apply records it
    ]:
        d = desired(replace(want("a", "mtty-1", uuid=U1, domain="vm1"), attach=mode))
        p = plan(inv, st_, d, attachments={U1: frozenset({att})})
        assert p.empty is empty, (mode, att)
        if not empty:
            assert [(str(a.op), a.domain, a.mode, a.block) for a in p.actions] == [("attach", "vm1", mode, None)]


def test_detach_only_what_vgpuctl_attached_and_before_the_attach_elsewhere():
    inv, st_ = inventory([(U1, "mtty", "mtty-1")]), state([(U1, "mtty", "mtty-1")])
    old = recorded("old", live=True, running=True)
    p = plan(inv, st_, desired(want("a", "mtty-1", uuid=U1, domain="new")), attachments={U1: frozenset({old})})
    assert [(str(a.op), a.domain, str(a.mode), a.block) for a in p.actions] == [
        ("detach", "old", "both", None),
        ("attach", "new", "config", None),
    ]
    assert p.actions[0].line() == f"~ detach {U1} from old (both) (a; desired in domain new)"
    # the domain dropped: detach, nothing attached
    p = plan(inv, st_, desired(want("a", "mtty-1", uuid=U1)), attachments={U1: frozenset({old})})
    assert [(str(a.op), a.domain, a.why) for a in p.actions] == [("detach", "old", "no domain desired")]
    # an attachment vgpuctl did not make is never detached; an attach elsewhere waits for it
    by_hand = DomainAttachment("other", config=True)
    assert plan(inv, st_, desired(want("a", "mtty-1", uuid=U1)), attachments={U1: frozenset({by_hand})}).empty
    p = plan(inv, st_, desired(want("a", "mtty-1", uuid=U1, domain="new")), attachments={U1: frozenset({by_hand})})
    assert [(str(a.op), a.block) for a in p.actions] == [("attach", Block.IN_USE)]
    assert "'other'" in p.actions[0].detail
    # an instance dropped from the desired state keeps its domain: no detach, and its destroy is blocked in use
    p = plan(inv, st_, desired(), users={U1: ["domain 'old' (running)"]}, attachments={U1: frozenset({old})})
    assert ops(p) == [("destroy", U1, "mtty", "mtty-1", "in-use")]


def test_the_hooks_attachment_is_never_detached_by_the_plan():
    """An instance the libvirt hook made for a running domain, written into the desired state without a domain (as
    ``export`` writes it), must not be hot-unplugged from that VM: the hook's attachments are the hook's."""
    inv, st_ = inventory([(U1, "mtty", "mtty-1")]), state([(U1, "mtty", "mtty-1")], origin=ORIGIN_HOOK)
    hooked = recorded("guest", live=True, running=True)
    p = plan(inv, st_, desired(want("a", "mtty-1", uuid=U1)), attachments={U1: frozenset({hooked})}, on_demand={U1})
    assert p.empty, [a.line() for a in p.actions]
    # an attach elsewhere waits for the hook's domain to let it go, as for an attachment made by hand
    p = plan(
        inv,
        st_,
        desired(want("a", "mtty-1", uuid=U1, domain="new")),
        attachments={U1: frozenset({hooked})},
        on_demand={U1},
    )
    assert [(str(a.op), a.block) for a in p.actions] == [("attach", Block.IN_USE)] and "'guest'" in p.actions[0].detail
    # the same attachment made by apply (not the hook's) is detached as before
    p = plan(inv, st_, desired(want("a", "mtty-1", uuid=U1)), attachments={U1: frozenset({hooked})})
    assert [(str(a.op), a.domain) for a in p.actions] == [("detach", "guest")]


def test_action_lines():
    d = desired(want("a", "mtty-1", uuid=U1))
    (a,) = plan(inventory(), state(), d).actions
    assert a.line() == f"+ create {U1} mtty-1 on mtty (a; desired)"


# --- properties ---------------------------------------------------------------------------------------------------
POOL = [f"00000000-0000-0000-0000-{n:012d}" for n in range(8)]
TYPES = [(p, t) for p, ts in PARENTS.items() for t in ts]
ALL_PARENTS = list(PARENTS) + ["0000:99:00.0"]


@st.composite
def worlds(draw):
    existing = {}
    for u in draw(st.lists(st.sampled_from(POOL), unique=True)):
        existing[u] = draw(st.sampled_from(TYPES))
    owned = {u for u in existing if draw(st.booleans())}
    stale = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=2))  # owned records of vanished devices
    used = {u for u in existing if draw(st.booleans()) and draw(st.booleans())}
    wanted = []
    for n, u in enumerate(draw(st.lists(st.sampled_from(POOL), unique=True))):
        parent = draw(st.sampled_from(ALL_PARENTS))
        t = draw(st.sampled_from(PARENTS.get(parent, ("mtty-1",)) + ("T4-1Q", "Dual port serial")))
        wanted.append(want(f"i{n}", t, parent=parent, uuid=u))
    inv = inventory([(u, p, t) for u, (p, t) in existing.items()])
    st_ = State(
        owned={
            u: Owned(u, *existing.get(u, ("mtty", "mtty-1")), origin=draw(st.sampled_from(ORIGINS)))
            for u in sorted(owned | set(stale))
        }
    )
    return inv, st_, desired(*wanted), {u: ["pid 1 (qemu)"] for u in used}


def simulate(inv: Inventory, st_: State, p) -> "tuple[Inventory, State]":
    """What a perfect host does with the plan's runnable actions."""
    insts = {i.uuid: i for i in inv.instances}
    owned = dict(st_.owned)
    for a in p.runnable:
        if a.op is Op.DESTROY:
            del insts[a.uuid]
            owned.pop(a.uuid)
        elif a.op is Op.CREATE:
            assert a.uuid not in insts
            insts[a.uuid] = Instance(a.uuid, a.parent, a.type_id)
            owned[a.uuid] = Owned(a.uuid, a.parent, a.type_id, origin=ORIGIN_APPLY)
    return sorted_inventory(inv.parents, inv.types, insts.values()), State(owned=owned)


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_applying_a_plan_converges(world):
    inv, st_, d, users = world
    p = plan(inv, st_, d, users=users)
    inv2, st2 = simulate(inv, st_, p)
    again = plan(inv2, st2, d, users=users)
    assert again.runnable == ()
    assert {(a.op, a.uuid) for a in again.blocked} <= {(a.op, a.uuid) for a in p.blocked}
    if not p.blocked:
        assert again.empty


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_foreign_and_in_use_never_destroyed(world):
    inv, st_, d, users = world
    for a in plan(inv, st_, d, users=users).actions:
        if a.op is Op.DESTROY:
            assert a.uuid in st_.owned
            if a.uuid in users:
                assert a.block is Block.IN_USE
            if a.uuid not in d.by_uuid():  # undeclared: only what apply itself made
                assert st_.owned[a.uuid].origin == ORIGIN_APPLY


def test_devices_from_create_or_the_hook_are_not_the_desired_states_to_destroy():
    inv = inventory([(U1, "mtty", "mtty-1")])
    for origin in (ORIGIN_CREATE, ORIGIN_HOOK):
        assert plan(inv, state([(U1, "mtty", "mtty-1")], origin=origin), desired()).empty
    assert ops(plan(inv, state([(U1, "mtty", "mtty-1")], origin=ORIGIN_APPLY), desired())) == [
        ("destroy", U1, "mtty", "mtty-1", None)
    ]
    # declared with another type: the desired state claims that uuid, whoever made it
    d = desired(want("a", "mtty-2", uuid=U1))
    assert [a.op for a in plan(inv, state([(U1, "mtty", "mtty-1")], origin=ORIGIN_CREATE), d).actions] == [
        Op.DESTROY,
        Op.CREATE,
    ]


def test_what_the_hook_made_is_left_to_the_hook_unless_declared():
    inv, st_ = inventory([(U1, "mtty", "mtty-1")]), state([(U1, "mtty", "mtty-1")])
    assert plan(inv, st_, desired(), on_demand={U1}).empty
    assert ops(plan(inv, st_, desired())) == [("destroy", U1, "mtty", "mtty-1", None)]
    # declared with another type: the desired state wins (and its in-use check still applies)
    d = desired(want("a", "mtty-2", uuid=U1))
    assert [a.op for a in plan(inv, st_, d, on_demand={U1}).actions] == [Op.DESTROY, Op.CREATE]
