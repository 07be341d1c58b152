"""The planner's capacity prediction for pinned creates and its GPU-wide settings (``gpus:``): pure unit tests."""

from vgpuctl.model import BackendKind, Instance, Parent, VgpuType, sorted_inventory
from vgpuctl.placement import MixMode
from vgpuctl.plan import Block, GpuObservation, Op, plan
from vgpuctl.spec import DesiredGpu, DesiredScheduler, DesiredState, Mark

from helpers import state, want

GPU = "0000:3b:00.0"
NV = "0x10de"


def t4(instances=()):
    """One NVIDIA T4, time-sliced on the physical function: T4-1Q (max 16) and T4-2Q (max 8), one type per GPU."""
    p = Parent(name=GPU, vendor_id=NV)
    ts = [
        VgpuType(
            parent=GPU, type_id="nvidia-230", name="GRID T4-1Q", available=16, max_instance=16, framebuffer_mib=1024
        ),
        VgpuType(
            parent=GPU, type_id="nvidia-231", name="GRID T4-2Q", available=8, max_instance=8, framebuffer_mib=2048
        ),
    ]
    insts = [Instance(uuid=u, parent=GPU, type_id=t) for u, t in instances]
    if insts:  # the host's counts as the kernel would report them
        n = {t: sum(1 for _, x in instances if x == t) for _, t in instances}
        ts = [
            VgpuType(
                parent=GPU,
                type_id=x.type_id,
                name=x.name,
                max_instance=x.max_instance,
                framebuffer_mib=x.framebuffer_mib,
                available=(x.max_instance - n.get(x.type_id, 0)) if x.type_id in n else 0,
            )
            for x in ts
        ]
    return sorted_inventory([p], ts, insts)


def vf_host(instances=()):
    """One vendor-VFIO GPU (two VFs) with 8C (max 2) and 4C (max 4)."""
    pf = "0000:4a:00.0"
    vfs = [
        Parent(name=f"0000:4a:00.{n}", vendor_id=NV, physical_gpu=pf, is_vf=True, backend=BackendKind.NVIDIA_VF)
        for n in (4, 5)
    ]
    ts = [
        VgpuType(
            parent=v.name,
            type_id=t,
            name=name,
            available=0 if any(p == v.name for _, p, _ in instances) else 1,
            max_instance=m,
            framebuffer_mib=fb,
        )
        for v in vfs
        for t, name, m, fb in (("nvidia-1", "H-8C", 2, 8192), ("nvidia-2", "H-4C", 4, 4096))
    ]
    insts = [Instance(uuid=u, parent=p, type_id=t, backend=BackendKind.NVIDIA_VF) for u, p, t in instances]
    return sorted_inventory(vfs, ts, insts)


def desired(*items, gpus=()):
    return DesiredState(instances=tuple(items), gpus=tuple(gpus))


def blocks(p):
    return [(str(a.op), a.name, str(a.block) if a.block else None) for a in p.actions]


U = [f"00000000-0000-0000-0000-{n:012d}" for n in range(20)]


# --- capacity -----------------------------------------------------------------------------------------------------
def test_two_types_pinned_to_one_time_sliced_gpu_block_the_second():
    d = desired(want("a", "T4-2Q", parent=GPU), want("b", "T4-1Q", parent=GPU))
    p = plan(t4(), state(), d)
    assert blocks(p) == [("create", "a", None), ("create", "b", "type-mix")]
    assert "T4-2Q" in p.actions[1].detail and "[blocked: type-mix: " in p.actions[1].line()
    assert not Block.TYPE_MIX.retryable


def test_beyond_max_instance_counting_existing_foreign_devices():
    inv = t4([(U[i], "nvidia-231") for i in range(7)])  # 7 of 8 taken by devices vgpuctl does not own
    d = desired(want("a", "T4-2Q", parent=GPU), want("b", "T4-2Q", parent=GPU))
    assert blocks(plan(inv, state(), d)) == [("create", "a", None), ("create", "b", "no-capacity")]


def test_planned_destroys_free_capacity_first():
    inv = t4([(U[0], "nvidia-230")])
    owned = state([(U[0], GPU, "nvidia-230")])
    d = desired(want("a", "T4-2Q", parent=GPU))
    p = plan(inv, owned, d)
    assert [(str(a.op), a.block) for a in p.actions] == [("destroy", None), ("create", None)]
    # the old device in use: its destroy is blocked, so the new type cannot fit next to it
    p = plan(inv, owned, d, users={U[0]: ["pid 1 (qemu)"]})
    assert [(str(a.op), str(a.block)) for a in p.actions] == [("destroy", "in-use"), ("create", "type-mix")]


def test_placer_sees_only_the_creates_that_fit():
    seen = {}

    def placer(inv, todo, creates, destroys):
        seen["creates"] = [c[0] for c in creates]
        return {}

    d = desired(want("a", "T4-2Q", parent=GPU), want("b", "T4-1Q", parent=GPU), want("c", "T4-1Q", parent=None))
    plan(t4(), state(), d, placer=placer)
    assert seen["creates"] == [d.instances[0].uuid]


def test_vendor_vfio_one_vgpu_per_vf_and_mixing_by_mode():
    inv = vf_host()
    d = desired(want("a", "H-8C", parent="0000:4a:00.4"), want("b", "H-4C", parent="0000:4a:00.4"))
    p = plan(inv, state(), d)
    assert blocks(p) == [("create", "a", None), ("create", "b", "no-capacity")] and "one per VF" in p.actions[1].detail
    d = desired(want("a", "H-8C", parent="0000:4a:00.4"), want("b", "H-4C", parent="0000:4a:00.5"))
    # equal-size (NVML says heterogeneous mode is off): 8C and 4C cannot share the GPU
    p = plan(inv, state(), d, modes={"0000:4a:00.0": MixMode.EQUAL_SIZE})
    assert blocks(p) == [("create", "a", None), ("create", "b", "type-mix")]
    # mode not known: predicted permissively (the host stays the judge)
    assert plan(inv, state(), d).blocked == ()


def test_blocked_capacity_stays_blocked_after_the_rest_converges():
    d = desired(want("a", "T4-2Q", parent=GPU, uuid=U[1]), want("b", "T4-1Q", parent=GPU, uuid=U[2]))
    inv = t4([(U[1], "nvidia-231")])
    p = plan(inv, state([(U[1], GPU, "nvidia-231")]), d)
    assert blocks(p) == [("create", "b", "type-mix")]


# --- GPU-wide settings --------------------------------------------------------------------------------------------
PF = "0000:4a:00.0"


def sched_gpu(policy="equal-share", ms=2.0, hetero=None):
    return DesiredGpu(
        gpu=PF,
        scheduler=DesiredScheduler(policy, ms) if policy else None,
        heterogeneous=hetero,
        mark=Mark("test.yaml", 3),
    )


def seen(**kw):
    base = dict(
        policy="best-effort",
        timeslice_us=None,
        supported=("best-effort", "equal-share", "fixed-share"),
        min_timeslice_us=1000,
        max_timeslice_us=30000,
        heterogeneous=False,
    )
    base.update(kw)
    return {PF: GpuObservation(PF, **base)}


def test_sched_action_planned_and_converged():
    d = desired(gpus=[sched_gpu()])
    p = plan(vf_host(), state(), d, gpus=seen())
    (a,) = p.actions
    assert (a.op, a.parent, a.block, a.uuid) == (Op.SCHED, PF, None, "")
    assert a.line() == f"~ sched GPU {PF} best-effort -> equal-share 2ms (desired)"
    assert plan(vf_host(), state(), d, gpus=seen(policy="equal-share", timeslice_us=2000)).empty
    # a policy without time slice leaves the driver's time slice alone
    d = desired(gpus=[sched_gpu(ms=None)])
    assert plan(vf_host(), state(), d, gpus=seen(policy="equal-share", timeslice_us=5000)).empty


def test_sched_blocked_while_a_vgpu_runs_and_when_nvml_cannot_tell():
    d = desired(gpus=[sched_gpu()])
    (a,) = plan(vf_host(), state(), d, gpus=seen(running=("NVML vGPU 1",))).actions
    assert a.block is Block.IN_USE and "NVML vGPU 1" in a.detail
    (a,) = plan(vf_host(), state(), d).actions
    assert a.block is Block.NVML and a.block.retryable
    (a,) = plan(vf_host(), state(), d, gpus={PF: GpuObservation(PF, unavailable="NVML not usable: no lib")}).actions
    assert a.block is Block.NVML and a.detail == "NVML not usable: no lib"
    assert a.line().endswith("[blocked: nvml: NVML not usable: no lib]")


def test_sched_checked_against_capabilities():
    (a,) = plan(vf_host(), state(), desired(gpus=[sched_gpu(ms=50)]), gpus=seen()).actions
    assert a.block is Block.UNSUPPORTED and "1..30 ms" in a.detail
    (a,) = plan(
        vf_host(),
        state(),
        desired(gpus=[sched_gpu("fixed-share")]),
        gpus=seen(supported=("best-effort", "equal-share")),
    ).actions
    assert a.block is Block.UNSUPPORTED


def test_hetero_needs_an_empty_gpu_and_goes_before_the_creates():
    inst = [(U[0], "0000:4a:00.4", "nvidia-1")]
    d = desired(want("x", "H-4C", parent="0000:4a:00.5"), gpus=[sched_gpu(policy=None, hetero=True)])
    p = plan(vf_host(inst), state(), d, gpus=seen())
    assert [(str(a.op), str(a.block) if a.block else None) for a in p.actions] == [
        ("hetero", "in-use"),
        ("create", "type-mix"),
    ]
    assert U[0] in p.actions[0].detail
    # owned and undesired: destroyed first, then the mode, then the create under the new mode
    p = plan(vf_host(inst), state([inst[0]]), d, gpus=seen())
    assert [(str(a.op), a.block) for a in p.actions] == [("destroy", None), ("hetero", None), ("create", None)]
    assert p.actions[1].line() == f"~ hetero GPU {PF} off -> on (desired)"
