"""The shared toolkit's small promises: NVML reasons said once, error classes that carry the fields they claim
(``str(e)`` and ``e.args`` agree), and one rule for an ambiguous type name on every path that resolves one."""

from __future__ import annotations

import pytest

from vgpuctl import errors
from vgpuctl.nvml import reason_for


def test_reason_for_says_an_unknown_code_once():
    assert reason_for(99, "x") == "NVML error 99 in x"
    assert reason_for(99) == "NVML error 99"
    assert reason_for(9, "nvmlInit") == "NVML error 9 in nvmlInit: the NVIDIA kernel driver is not loaded"
    assert reason_for(None, "nvmlInit") == "NVML error in nvmlInit (no error code)"


@pytest.mark.parametrize(
    "err",
    [
        errors.AttachedElsewhere("u1", ["web"]),
        errors.GpuBusy("0000:4a:00.0", "scheduler", ["0000:4a:00.4"]),
        errors.ForeignManaged("u1", "/etc/mdevctl.d/p/u1", "auto"),
        errors.ProfileLimit("gold", "acme", 2, 2, "profiles.yaml:3"),
        errors.SriovDisabled("0000:4a:00.0"),
    ],
)
def test_message_args_and_str_agree(err):
    assert err.args == (err.message,)
    assert str(err) == " ".join(err.message.split()) and err.message


def test_subclasses_carry_their_own_fields_not_a_parents_fakes():
    e = errors.ProfileLimit("gold", "acme", 2, 2)
    assert e.exit_code == 4 and not isinstance(e, errors.NoCapacity) and not hasattr(e, "parent")
    assert (e.profile, e.tenant, e.held, e.limit) == ("gold", "acme", 2, 2)
    g = errors.GpuBusy("0000:4a:00.0", "scheduler", ["vm1"])
    assert (
        g.exit_code == 6
        and not hasattr(g, "uuid")
        and (g.gpu, g.setting, g.running) == ("0000:4a:00.0", "scheduler", ("vm1",))
    )
    s = errors.SriovDisabled("0000:4a:00.0")
    assert s.exit_code == 3 and not isinstance(s, errors.UnknownParent) and s.gpu == "0000:4a:00.0"
    a = errors.AttachedElsewhere("u1", ["web"])
    assert isinstance(a, errors.DeviceInUse) and a.holders == ("domain 'web'",) and "already attached" in str(a)


# --- one rule for an ambiguous type name ---------------------------------------------------------------------------
# A T4 whose driver lists one profile under two names (GRID T4-2Q and NVIDIA T4-2Q, as a driver upgrade can leave
# them): "T4-2Q" names two types there.  Every path says so (AmbiguousType's words, exit 2 from the CLI paths).
def _twice():
    from vgpuctl.model import Parent, VgpuType, sorted_inventory

    p = "0000:3b:00.0"
    types = [
        VgpuType(parent=p, type_id="nvidia-1", name="GRID T4-2Q", available=4),
        VgpuType(parent=p, type_id="nvidia-2", name="NVIDIA T4-2Q", available=4),
    ]
    return sorted_inventory([Parent(name=p, pci=True)], types, [])


def _desired(body: str):
    from vgpuctl.spec import parse

    return parse("version: 1\ninstances:\n  web-1:\n" + body, path="test.yaml")


@pytest.mark.parametrize("where", ['    parent: "0000:3b:00.0"\n', "    placement: {}\n"])
def test_desired_state_says_ambiguous_not_not_offered(where):
    from vgpuctl.spec import validate

    with pytest.raises(errors.ConfigError) as e:
        validate(_desired("    type: T4-2Q\n" + where), _twice())
    assert "is ambiguous: it names nvidia-1 (GRID T4-2Q), nvidia-2 (NVIDIA T4-2Q)" in str(e.value)
    assert e.value.key == "instances.web-1.type"


def test_plan_blocks_an_ambiguous_pinned_type_with_the_ambiguity():
    from vgpuctl.plan import Block, plan
    from vgpuctl.state import State

    p = plan(_twice(), State(), _desired('    type: T4-2Q\n    parent: "0000:3b:00.0"\n'))
    (a,) = [a for a in p.actions if a.name == "web-1"]
    assert a.block is Block.TYPE_UNKNOWN and "is ambiguous: it names nvidia-1" in a.detail, a


def test_profile_type_on_refuses_an_ambiguous_name_instead_of_taking_the_first():
    from vgpuctl.profiles import parse_profiles

    prof = parse_profiles("version: 1\nprofiles:\n  gold: {type: [T4-2Q]}\n").get("gold")
    inv = _twice()
    with pytest.raises(errors.AmbiguousType):
        prof.type_on(inv, "0000:3b:00.0")
    with pytest.raises(errors.AmbiguousType):
        prof.type_ids(inv)
    assert prof.types_here(inv) == ()  # views leave the parent out instead of failing


def test_create_on_a_gpu_of_vfs_says_ambiguous_not_no_capacity():
    from vgpuctl.lifecycle import _offers

    with pytest.raises(errors.AmbiguousType):
        _offers(_twice(), "0000:3b:00.0", "T4-2Q")
    assert _offers(_twice(), "0000:3b:00.0", "nvidia-2") and not _offers(_twice(), "0000:3b:00.0", "T4-8Q")


def test_every_resolver_agrees_on_the_one_rule():
    from vgpuctl.model import find_type
    from vgpuctl.placement import resolve_type

    inv = _twice()
    for resolve in (lambda: find_type(inv, "0000:3b:00.0", "t4-2q"), lambda: resolve_type(inv, "T4-2Q")):
        with pytest.raises(errors.AmbiguousType) as e:
            resolve()
        assert e.value.exit_code == 2 and e.value.candidates == ("nvidia-1 (GRID T4-2Q)", "nvidia-2 (NVIDIA T4-2Q)")


# --- one atomic write ----------------------------------------------------------------------------------------------
def test_mdevctl_restore_uses_the_one_atomic_write(tmp_path):
    """Putting back mdevctl's definition goes through ``fsutil.replace_atomic``: a fresh temporary name each time,
    so a stale file (here a symlink) left at the old fixed name ``<uuid>.vgpuctl-restore`` no longer fails it."""
    import os

    from vgpuctl.host.mdevctl import Definition, restore_definition

    path = tmp_path / "mdevctl.d" / "mtty" / "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
    path.parent.mkdir(parents=True)
    os.symlink("/nonexistent", str(path) + ".vgpuctl-restore")
    d = Definition(uuid=path.name, parent="mtty", path=str(path), type_id="mtty-1", start="manual")
    restore_definition(d, b'{"mdev_type": "mtty-1", "start": "manual"}\n')
    assert path.read_bytes() == b'{"mdev_type": "mtty-1", "start": "manual"}\n'
    assert sorted(os.listdir(path.parent)) == sorted([path.name, path.name + ".vgpuctl-restore"])


# --- Inventory helpers ---------------------------------------------------------------------------------------------
def test_inventory_helpers():
    from vgpuctl.model import BackendKind, Instance, Parent, sorted_inventory

    gpu = "0000:4a:00.0"
    vfs = [
        Parent(name=f"0000:4a:00.{n}", backend=BackendKind.NVIDIA_VF, pci=True, physical_gpu=gpu, is_vf=True)
        for n in (4, 5)
    ]
    inv = sorted_inventory(
        vfs + [Parent(name="mtty")],
        [],
        [
            Instance(uuid="0000:4a:00.4", parent="0000:4a:00.4", type_id="nvidia-1", backend=BackendKind.NVIDIA_VF),
            Instance(uuid="83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", parent="mtty", type_id="mtty-1"),
            Instance(uuid="83b8f4f2-509f-382f-3c1e-e6bfe0fa1002", parent="gone", type_id="mtty-1"),
        ],
    )
    assert inv.find_parent("0000:4A:00.5") is vfs[1] and inv.find_parent("MTTY").name == "mtty"
    assert inv.find_parent(None) is None and inv.find_parent("0000:4a:00.6") is None
    assert inv.gpu_of("0000:4a:00.5") == gpu and inv.gpu_of("mtty") == "mtty" and inv.gpu_of("gone") == "gone"
    assert inv.gpu_of_instance("0000:4a:00.4") == gpu
    assert inv.gpu_of_instance("83b8f4f2-509f-382f-3c1e-e6bfe0fa1002") is None
    assert [i.uuid for i in inv.instances_on_gpu(gpu)] == ["0000:4a:00.4"]
    assert inv.used_parents() == {"0000:4a:00.4", "mtty", "gone"}
    assert inv.instance("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001").parent == "mtty" and inv.instance("x") is None


def test_the_desired_state_parses_params():
    """``params:`` is parsed by ``vgpu_params`` from inside the ``spec`` package (a lazy import that the split of
    spec.py once pointed at ``vgpuctl.spec.vgpu_params``)."""
    d = _desired('    type: T4-2Q\n    parent: "0000:3b:00.0"\n    params: {frame_rate_limiter: 0}\n')
    assert d.instances[0].params == (("frame_rate_limiter", "0"),)


def test_one_spelling_of_scheduler_policies_and_names():
    """The desired state, profiles, NVML and ``sched set --policy`` share ``model.SchedulerPolicy``; desired
    instances and profiles share ``model.NAME_RE``; profiles read nodes with ``configfile.NodeReader``, not the
    policy's parser."""
    from vgpuctl import model, nvml, profiles, spec
    from vgpuctl.commands.sched import sched_set
    from vgpuctl.configfile import NodeReader

    values = tuple(p.value for p in model.SchedulerPolicy)
    assert spec.SCHED_POLICIES == values and tuple(nvml.POLICIES) == values
    (opt,) = [o for o in sched_set.params if o.name == "policy"]
    assert tuple(opt.type.choices) == values
    assert spec.NAME_RE is model.NAME_RE and profiles.NAME_RE is model.NAME_RE
    assert profiles._Parser.__mro__[1] is NodeReader
