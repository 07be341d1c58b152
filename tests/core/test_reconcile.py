"""``Reconciler`` over the in-memory host: the journal's crash recovery at every durable step of a converge (the
FUSE test ``tests/reconcile/test_sim.py::test_kill9_right_after_every_journal_write`` ported), at seeded random
steps of a sequence of config edits, and the planner's properties held against the machine's own rules instead of a
perfect host.  No root, no FUSE."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from memhost import Crash, Crasher, MemHost, configure

from vgpuctl.apply import Reconciler
from vgpuctl.plan import Op, plan
from vgpuctl.state import Owned, State

CONFIG = """\
version: 1
instances:
  a: {type: mtty-1, parent: mtty}
  b: {type: Dual port serial, parent: mtty}
  c: {type: mtty-1, parent: mtty, uuid: 83B8F4F2-509F-382F-3C1E-E6BFE0FA1001}
"""
CONFIG2 = (
    "version: 1\ninstances:\n  x: {type: mtty-2, parent: mtty}\n  c: {type: mtty-2, parent: mtty,"
    " uuid: 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001}\n"
)


def settled(mh: MemHost) -> Reconciler:
    """The next ordinary run: it converges, and what it owns is what exists."""
    rec = Reconciler(mh.lifecycle())
    res = rec.apply(rec.desired())
    assert res.converged
    st_ = rec.store.load()
    assert set(st_.owned) == set(mh.instances()) and st_.pending == ()
    return rec


def test_crash_right_after_every_journal_write(tmp_path):
    """As the FUSE test: crash right after the k-th durable state save or sysfs write, for every k of a full
    converge (a batch journals all its intents in one save, then writes them back to back); here also of the
    re-converge to a second config (destroys and re-types), and no roll-back runs after the crash."""
    for text, expect in ((CONFIG, ["save", "write", "write", "write", "save"]), (CONFIG2, None)):
        k = 0
        while True:
            k += 1
            mh = MemHost("mtty", tmp_path / f"{len(text)}-{k}")
            if text is CONFIG2:
                configure(mh.root, CONFIG)
                settled(mh)
            configure(mh.root, text)
            crasher = Crasher(k)
            rec = Reconciler(mh.lifecycle(crasher))
            try:
                rec.apply(rec.desired())
            except Crash:
                settled(mh)
                continue
            assert not crasher.fired
            kinds = crasher.kinds
            break
        if expect is not None:
            assert kinds == expect and k == len(kinds) + 1
        else:
            assert kinds.count("write") == 5 and k == len(kinds) + 1  # 3 destroys, 2 creates


def test_crash_at_seeded_random_steps_of_config_edits_never_leaks(tmp_path):
    """One machine, 100 runs alternating between two configs, each crashed at a seeded random durable step (or
    not at all); after every tenth, an ordinary run converges and every device is owned and desired."""
    rng = random.Random(20240611)
    mh = MemHost("mtty", tmp_path)
    crashed = 0
    for n in range(1, 101):
        configure(mh.root, (CONFIG, CONFIG2)[n % 2])
        crasher = Crasher(rng.randint(1, 12))
        rec = Reconciler(mh.lifecycle(crasher))
        try:
            rec.apply(rec.desired())
        except Crash:
            crashed += 1
        if n % 10 == 0:
            rec = settled(mh)
            obs = rec.observe(rec.desired())
            assert obs.plan.empty
    assert crashed >= 50


PARENT_TYPES = ("mtty-1", "mtty-2", "Single port serial", "Dual port serial", "nvidia-1")
POOL = [f"00000000-0000-4000-8000-{n:012d}" for n in range(10)]


@st.composite
def worlds(draw):
    """Existing mdevs (each owned or foreign, some held open by this process), stale ownership records and a
    desired state of instances, some pinned to a parent that does not exist."""
    existing = {
        u: draw(st.sampled_from(("mtty-1", "mtty-2")))
        for u in draw(st.lists(st.sampled_from(POOL), unique=True, max_size=8))
    }
    owned = {u for u in existing if draw(st.booleans())}
    stale = draw(st.lists(st.sampled_from(POOL), unique=True, max_size=2))
    held = {u for u in existing if draw(st.integers(0, 3)) == 0}
    wanted = []
    for n, u in enumerate(draw(st.lists(st.sampled_from(POOL), unique=True, max_size=8))):
        parent = draw(st.sampled_from(("mtty", "mtty", "0000:99:00.0")))
        wanted.append((f"i{n}", draw(st.sampled_from(PARENT_TYPES)), parent, u))
    return existing, owned | {u for u in stale if u not in existing}, held, wanted


def _yaml(wanted) -> str:
    lines = ["version: 1", "instances:" if wanted else "instances: {}"]
    lines += [f"  {n}: {{type: {t}, parent: '{p}', uuid: {u}}}" for n, t, p, u in wanted]
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None)
@given(worlds())
def test_applying_a_plan_on_the_machine_converges_and_spares_foreign_and_held(world):
    """The planner's properties (``tests/reconcile/test_plan.py``) with the machine's capacity and refusals in
    place of a perfect host: after one apply, planning again finds nothing runnable and no new block, foreign
    devices are never destroyed, and held ones are still there."""
    existing, owned, held, wanted = world
    with tempfile.TemporaryDirectory() as d:
        mh = MemHost("mtty", Path(d))
        m = mh.machine
        for u, t in existing.items():
            m.create("mtty", t, u.encode())
        lc = mh.lifecycle()
        lc.store.save(State(owned={u: Owned(u, "mtty", existing.get(u, "mtty-1")) for u in sorted(owned)}))
        configure(mh.root, _yaml(wanted))
        files = [open(mh.group_file(u)) for u in sorted(held)]
        try:
            rec = Reconciler(lc)
            first = rec.observe(rec.desired()).plan
            rec.apply(rec.desired())
            after = set(mh.instances())
            foreign = set(existing) - owned
            assert foreign <= after
            assert held <= after
            for a in first.actions:
                if a.op is Op.DESTROY:
                    assert a.uuid in owned
            again = rec.observe(rec.desired()).plan
            assert again.runnable == ()
            assert {(a.op, a.uuid) for a in again.blocked} <= {(a.op, a.uuid) for a in first.blocked}
            assert rec.store.load().pending == ()
        finally:
            for f in files:
                f.close()


def test_plan_is_pure_over_the_memory_inventory(tmp_path):
    """The planner needs no host: an inventory the memory backend read is a value like any other."""
    mh = MemHost("mtty", tmp_path)
    configure(mh.root, CONFIG)
    rec = Reconciler(mh.lifecycle())
    inv = mh.host().inventory()
    p = plan(inv, State(), rec.desired())
    assert [a.op for a in p.actions] == [Op.CREATE] * 3 and mh.instances() == []
