"""The placement engine, rule by rule and refusal by refusal, on in-memory inventories."""

import pytest

from placement_hosts import a16_gpu, host, mdev_other, mixed_host, t4, t4_host, uid, with_instances
from vgpuctl.errors import AmbiguousType, UnknownType
from vgpuctl.placement import (
    Consumer,
    GpuKind,
    MixMode,
    Refusal,
    Request,
    Usage,
    apply,
    gpu_states,
    place,
    release,
    resolve_type,
)
from vgpuctl.policy import AntiAffinityGroup, GpuRule, NumaMode, Policy, Quota, Selector, Strategy

T4A, T4B = "0000:10:00.0", "0000:11:00.0"
DEFAULT = Policy()


def reasons(d):
    return {g: r for g, r, _ in d.refusals()}


# --- type names ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["nvidia-231", "NVIDIA-231", "T4-2Q", "t4-2q", "NVIDIA T4-2Q", " nvidia t4-2Q "])
def test_type_by_id_or_profile_name_case_insensitive(name):
    found = resolve_type(t4_host(2), name)
    assert {t.type_id for t in found} == {"nvidia-231"} and len(found) == 2


def test_grid_prefix_name():
    inv = host(t4(T4A, prefix="GRID "))
    assert place(inv, DEFAULT, Request(type="GRID T4-2Q")).type_id == "nvidia-231"


def test_unknown_type_lists_known():
    with pytest.raises(UnknownType) as e:
        resolve_type(t4_host(1), "T4-3Q")
    assert "T4-2Q" in e.value.known


def test_ambiguous_type_lists_candidates():
    inv = host(mdev_other("mtty", [("mtty-1", "Single port serial", 24), ("mtty-2", "Dual port serial", 12)]))
    with pytest.raises(AmbiguousType) as e:
        resolve_type(inv, "serial")
    assert len(e.value.candidates) == 2 and e.value.exit_code == 2
    assert resolve_type(inv, "mtty-2")[0].type_id == "mtty-2"


# --- kinds and capacity rules ----------------------------------------------------------------------------------
def test_gpu_kinds():
    inv = host(t4(T4A), a16_gpu("0000:86:00.0", vfs=4), mdev_other("mtty", [("mtty-1", None, 4)]))
    kinds = {g.gpu: g.kind for g in gpu_states(inv)}
    assert kinds == {T4A: GpuKind.TIME_SLICED, "0000:86:00.0": GpuKind.SRIOV, "mtty": GpuKind.OTHER}


def test_time_sliced_one_type_per_gpu_and_max_instance():
    inv = host(t4(T4A))
    for n in range(4):
        d = place(inv, DEFAULT, Request(type="T4-4Q"))
        assert d.parent == T4A
        inv = apply(inv, parent=d.parent, type_id=d.type_id, uuid=uid(n))
    assert reasons(place(inv, DEFAULT, Request(type="T4-4Q"))) == {T4A: "full"}
    assert reasons(place(inv, DEFAULT, Request(type="T4-2Q"))) == {T4A: "type-mix"}
    assert inv.type_on(T4A, "nvidia-232").available == 0 and inv.type_on(T4A, "nvidia-231").available == 0
    inv = release(inv, uid(0))
    assert inv.type_on(T4A, "nvidia-232").available == 1
    for n in range(1, 4):
        inv = release(inv, uid(n))
    assert inv.type_on(T4A, "nvidia-231").available == 8  # empty again: every type back


def test_sriov_one_per_vf_counted_per_gpu():
    pf = "0000:86:00.0"
    inv = host(a16_gpu(pf, vfs=16))
    used = []
    for n in range(4):  # A16-4Q: max_instance 4 per physical GPU, although 16 VFs exist
        d = place(inv, DEFAULT, Request(type="A16-4Q"))
        assert d.gpu == pf and d.parent not in used
        used.append(d.parent)
        inv = apply(inv, parent=d.parent, type_id=d.type_id, uuid=uid(n))
    assert reasons(place(inv, DEFAULT, Request(type="A16-4Q"))) == {pf: "full"}
    assert reasons(place(inv, DEFAULT, Request(type="A16-2Q"))) == {pf: "type-mix"}
    assert all(t.available == 0 for t in inv.types if t.parent in used)


def test_sriov_vf_limit():
    pf = "0000:86:00.0"
    inv = host(a16_gpu(pf, vfs=2))
    inv = with_instances(inv, [("0000:86:00.4", "nvidia-701", uid(1)), ("0000:86:00.5", "nvidia-701", uid(2))])
    assert reasons(place(inv, DEFAULT, Request(type="A16-1Q"))) == {pf: "full"}


def test_heterogeneous_equal_size_and_mixed_size():
    pf = "0000:86:00.0"
    eq = Usage.of(modes={pf: MixMode.EQUAL_SIZE})
    inv = apply(host(a16_gpu(pf)), parent="0000:86:00.4", type_id="nvidia-702", uuid=uid(1), usage=eq)  # A16-2Q
    assert place(inv, DEFAULT, Request(type="A16-2B"), usage=eq).placed  # same 2 GB size, other series
    assert reasons(place(inv, DEFAULT, Request(type="A16-4Q"), usage=eq)) == {pf: "type-mix"}
    assert reasons(place(inv, DEFAULT, Request(type="A16-2B"))) == {pf: "type-mix"}  # homogeneous: no
    mixed = Usage.of(modes={pf: MixMode.MIXED_SIZE})
    inv = apply(host(a16_gpu(pf)), parent="0000:86:00.4", type_id="nvidia-702", uuid=uid(1), usage=mixed)
    d = place(inv, DEFAULT, Request(type="A16-8Q"), usage=mixed)
    assert d.placed
    inv = apply(inv, parent=d.parent, type_id=d.type_id, uuid=uid(2), usage=mixed)  # 2 + 8 of 16 GB
    assert reasons(place(inv, DEFAULT, Request(type="A16-8Q"), usage=mixed)) == {pf: "full"}
    assert place(inv, DEFAULT, Request(type="A16-4Q"), usage=mixed).placed


def test_other_vendor_trusts_host_available():
    inv = host(mdev_other("mtty", [("mtty-1", "Single port serial", 1)]))
    d = place(inv, DEFAULT, Request(type="mtty-1"))
    assert d.parent == "mtty"
    inv = apply(inv, parent="mtty", type_id="mtty-1", uuid=uid(1))
    assert reasons(place(inv, DEFAULT, Request(type="mtty-1"))) == {"mtty": "full"}


def test_host_available_is_an_upper_bound():
    parents, types = t4(T4A)
    types = [t if t.type_id != "nvidia-231" else t.__class__(**{**t.__dict__, "available": 0}) for t in types]
    inv = host((parents, types))
    assert reasons(place(inv, DEFAULT, Request(type="T4-2Q"))) == {T4A: "full"}


def test_real_host_type_mix_reported_as_type_mix():
    """A real NVIDIA host reports 0 for other types once one is in use: the reason is the mix, not fullness."""
    inv = with_instances(host(t4(T4A)), [(T4A, "nvidia-230", uid(1))])
    assert reasons(place(inv, DEFAULT, Request(type="T4-16Q"))) == {T4A: "type-mix"}


def test_not_offered():
    inv = mixed_host()
    r = reasons(place(inv, DEFAULT, Request(type="T4-2Q")))
    assert set(r.values()) == {"not-offered"} and len(r) == 4


# --- strategies and fragmentation ------------------------------------------------------------------------------
def test_pack_fills_the_fullest_gpu_that_fits():
    inv = with_instances(t4_host(3, numa_split=False), [("0000:11:00.0", "nvidia-231", uid(1))])
    assert place(inv, DEFAULT, Request(type="T4-2Q")).gpu == "0000:11:00.0"


def test_spread_takes_the_least_loaded():
    pol = Policy(default=GpuRule(name="default", strategy=Strategy.SPREAD))
    inv = with_instances(t4_host(3, numa_split=False), [("0000:10:00.0", "nvidia-231", uid(1))])
    d = place(inv, pol, Request(type="T4-2Q"))
    assert d.gpu == "0000:11:00.0" and d.strategy is Strategy.SPREAD


def test_tie_break_keeps_capacity_for_other_profiles():
    """Two empty T4s tie on fullness; the one whose allowed profiles lose least wins (here: only 2Q allowed on B)."""
    pol = Policy(rules=(GpuRule(name="both", match=Selector(pci=(T4A, T4B))),))
    inv = t4_host(2, numa_split=False)
    assert place(inv, pol, Request(type="T4-2Q")).gpu == T4A  # equal loss: name order
    inv = host(t4(T4A, numa=0), t4(T4B, numa=0, types=(("nvidia-231", "T4-2Q", 2048, 8),)))
    d = place(inv, pol, Request(type="T4-2Q"))
    assert d.gpu == T4B  # A would lose every other profile
    assert d.verdicts[0].loss < d.verdicts[1].loss


def test_policy_order_is_fill_order():
    pol = Policy(
        rules=(GpuRule(name="second", match=Selector(pci=(T4B,))), GpuRule(name="first", match=Selector(pci=(T4A,))))
    )
    inv = t4_host(2, numa_split=False)
    assert place(inv, pol, Request(type="T4-2Q")).gpu == T4B


def test_deterministic():
    def build():
        return with_instances(
            mixed_host(), [("0000:3b:00.0", "nvidia-231", uid(1)), ("0000:86:00.4", "nvidia-701", uid(2))]
        )

    a = place(build(), DEFAULT, Request(type="A16-1Q", numa_nodes=(1,)))
    b = place(build(), DEFAULT, Request(type="A16-1Q", numa_nodes=(1,)))
    assert a == b and a.parent == "0000:86:00.5"


# --- policy refusals -------------------------------------------------------------------------------------------
def test_not_allowed_by_types_or_series():
    pol = Policy(
        rules=(
            GpuRule(name="vdi", match=Selector(pci=(T4A,)), series=("Q",)),
            GpuRule(name="c", match=Selector(pci=(T4B,)), types=("t4-4c",)),
        )
    )
    inv = t4_host(2, numa_split=False)
    assert reasons(place(inv, pol, Request(type="T4-4C"))) == {T4A: "not-allowed"}
    assert reasons(place(inv, pol, Request(type="T4-2Q"))) == {T4B: "not-allowed"}


def test_reserved_and_reserved_for():
    pol = Policy(
        rules=(
            GpuRule(name="gold", match=Selector(pci=(T4A,)), reserved=True, reserved_for=("gold",)),
            GpuRule(name="off", match=Selector(pci=(T4B,)), reserved=True),
        )
    )
    inv = t4_host(2, numa_split=False)
    assert set(reasons(place(inv, pol, Request(type="T4-2Q"))).values()) == {"reserved"}
    d = place(inv, pol, Request(type="T4-2Q", tenant="gold"))
    assert d.gpu == T4A and reasons(d) == {T4B: "reserved"}


def test_quota_instances_and_framebuffer():
    inv = t4_host(2, numa_split=False)
    inv = with_instances(inv, [(T4A, "nvidia-231", uid(1)), (T4A, "nvidia-231", uid(2))])
    usage = Usage.of({uid(1): Consumer(domain="vm1", tenant="acme"), uid(2): Consumer(domain="vm2", tenant="acme")})
    pol = Policy(quotas=(("acme", Quota(max_instances=2)), ("*", Quota(max_framebuffer_mib=4096))))
    assert set(reasons(place(inv, pol, Request(type="T4-2Q", tenant="acme"), usage=usage)).values()) == {"quota"}
    assert place(inv, pol, Request(type="T4-4Q", tenant="other"), usage=usage).placed
    assert set(reasons(place(inv, pol, Request(type="T4-8Q", tenant="other"), usage=usage)).values()) == {"quota"}
    assert place(inv, pol, Request(type="T4-8Q"), usage=usage).placed  # no tenant: no quota


@pytest.mark.parametrize("mode,placed_on", [(NumaMode.PREFER, "0000:11:00.0"), (NumaMode.IGNORE, "0000:10:00.0")])
def test_numa_prefer_and_ignore(mode, placed_on):
    inv = t4_host(2)  # 10 on node 0, 11 on node 1
    assert place(inv, Policy(numa=mode), Request(type="T4-2Q", numa_nodes=(1,))).gpu == placed_on


def test_numa_prefer_falls_back_to_remote():
    inv = with_instances(t4_host(2), [("0000:11:00.0", "nvidia-234", uid(1))])  # node 1 full
    d = place(inv, DEFAULT, Request(type="T4-2Q", numa_nodes=(1,)))
    assert d.gpu == "0000:10:00.0" and "remote" in d.chosen.detail


def test_numa_require():
    inv = with_instances(t4_host(2), [("0000:11:00.0", "nvidia-234", uid(1))])
    d = place(inv, DEFAULT, Request(type="T4-2Q", numa_nodes=(1,), numa=NumaMode.REQUIRE))
    assert reasons(d) == {"0000:10:00.0": "numa", "0000:11:00.0": "type-mix"}
    assert place(inv, Policy(numa=NumaMode.REQUIRE), Request(type="T4-2Q", numa_nodes=(0,))).placed


def test_anti_affinity_by_policy_glob_and_label():
    inv = with_instances(t4_host(2, numa_split=False), [(T4A, "nvidia-231", uid(1))])
    usage = Usage.of({uid(1): Consumer(domain="db-1")})
    pol = Policy(anti_affinity=(AntiAffinityGroup(name="db", domains=("db-*",)),))
    d = place(inv, pol, Request(type="T4-2Q", domain="db-2"), usage=usage)
    assert d.gpu == T4B and reasons(d) == {T4A: "anti-affinity"}
    assert place(inv, pol, Request(type="T4-2Q", domain="db-1"), usage=usage).gpu == T4A  # itself is no conflict
    assert place(inv, pol, Request(type="T4-2Q", domain="web"), usage=usage).gpu == T4A
    usage = Usage.of({uid(1): Consumer(domain="x", groups=("g",))})
    assert place(inv, Policy(), Request(type="T4-2Q", domain="y", groups=("g",)), usage=usage).gpu == T4B


def test_refusal_values_are_the_documented_set():
    assert {r.value for r in Refusal} == {
        "full",
        "type-mix",
        "not-allowed",
        "not-offered",
        "numa",
        "quota",
        "reserved",
        "anti-affinity",
    }
