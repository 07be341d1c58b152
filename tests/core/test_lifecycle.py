"""``Lifecycle`` over the in-memory host: preconditions before the first write, typed refusals that change nothing,
the journal settled after a crash at every durable step.  No root, no FUSE: milliseconds per test."""

from __future__ import annotations

import pytest
from memhost import Crash, Crasher, MemHost

from vgpuctl.errors import AlreadyExists, DeviceInUse, NoCapacity, NotOwned, SriovDisabled, TypeMix, UnknownInstance

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
T4 = "0000:3b:00.0"
L40S_PF, L40S_VF0, L40S_VF1 = "0000:41:00.0", "0000:41:00.4", "0000:41:00.5"


def snapshot(mh: MemHost):
    lc = mh.lifecycle()
    st = lc.store.load()
    return mh.instances(), sorted(st.owned), st.pending


def test_create_destroy_records_ownership(tmp_path):
    mh = MemHost("mtty", tmp_path)
    lc = mh.lifecycle()
    inst = lc.create(parent="mtty", type_id="mtty-2", uuid=U1.upper())
    assert inst.uuid == U1 and mh.instances() == [U1]
    assert set(lc.store.load().owned) == {U1}
    assert lc.destroy(U1).uuid == U1
    assert snapshot(mh) == ([], [], ())


def test_refusals_change_nothing(tmp_path):
    mh = MemHost("t4x2", tmp_path)
    lc = mh.lifecycle()
    lc.create(parent=T4, type_id="nvidia-231", uuid=U1)
    before = snapshot(mh)
    with pytest.raises(AlreadyExists):
        lc.create(parent=T4, type_id="nvidia-231", uuid=U1)
    with pytest.raises(TypeMix):  # a T4 runs one type at a time
        lc.create(parent=T4, type_id="nvidia-222", uuid=U2)
    with pytest.raises(UnknownInstance):
        lc.destroy(U2)
    assert snapshot(mh) == before
    mh.machine.create(T4, "nvidia-231", U2.encode())  # someone else's device
    with pytest.raises(NotOwned):
        lc.destroy(U2)
    for _ in range(6):
        lc.create(parent=T4, type_id="nvidia-231")
    with pytest.raises(NoCapacity):
        lc.create(parent=T4, type_id="nvidia-231")


def test_an_open_device_is_not_destroyed(tmp_path):
    mh = MemHost("mtty", tmp_path)
    lc = mh.lifecycle()
    lc.create(parent="mtty", type_id="mtty-1", uuid=U1)
    before = snapshot(mh)
    with open(mh.group_file(U1)):
        with pytest.raises(DeviceInUse) as e:
            lc.destroy(U1)
        assert e.value.uuid == U1 and "pid" in " ".join(e.value.holders)
    assert snapshot(mh) == before
    lc.destroy(U1)
    assert mh.instances() == []


def test_a_gpu_name_picks_a_free_vf_that_nobody_holds(tmp_path):
    mh = MemHost("l40s", tmp_path)
    lc = mh.lifecycle()
    inv = lc.host.inventory()
    tid = inv.types_on(L40S_VF0)[0].type_id
    with open(mh.group_file(L40S_VF0)):  # a VM holds the first VF
        inst = lc.create(parent=L40S_PF, type_id=tid)
    assert inst.uuid == inst.parent == L40S_VF1
    with pytest.raises(DeviceInUse):  # pinned to a held VF
        with open(mh.group_file(L40S_VF0)):
            lc.create(parent=L40S_VF0, type_id=tid)
    assert mh.instances() == [L40S_VF1]


def test_a_gpu_without_vfs_says_so(tmp_path):
    mh = MemHost("l40s", tmp_path)
    mh.machine.set_numvfs(L40S_PF, b"0")
    with pytest.raises(SriovDisabled):
        mh.lifecycle().create(parent=L40S_PF, type_id="nvidia-1")


@pytest.mark.parametrize("profile,parent,type_id", [("mtty", "mtty", "mtty-1"), ("l40s", L40S_VF0, None)])
def test_crash_at_every_durable_step_is_settled_by_the_next_run(tmp_path, profile, parent, type_id):
    """Create, then destroy; crash after the k-th state save or host write for every k.  The next lifecycle's
    locked read settles the journal: every device is owned or was never made, nothing is pending."""
    k = 0
    while True:
        k += 1
        mh = MemHost(profile, tmp_path / f"k{k}")
        tid = type_id or mh.host().inventory().types_on(parent)[0].type_id
        crasher = Crasher(k)
        lc = mh.lifecycle(crasher)
        try:
            inst = lc.create(parent=parent, type_id=tid, uuid=None if profile == "l40s" else U1)
            lc.destroy(inst.uuid)
        except Crash:
            pass
        if not crasher.fired:
            assert crasher.kinds == ["save", "write", "save", "save", "write", "save"]
            break
        nxt = mh.lifecycle()
        inv, st = nxt.read()
        with pytest.raises(UnknownInstance):  # any locked operation settles the journal first
            nxt.destroy(U2)
        st = nxt.store.load()
        assert st.pending == ()
        assert sorted(st.owned) == mh.instances()
        for u in mh.instances():  # what survived is owned, and can be destroyed
            nxt.destroy(u)
        assert snapshot(mh) == ([], [], ())
    assert k == 7
