"""Service profiles as data: strict parsing, resolution per GPU model, placement over models, tenant limits, and
``profile:`` in the desired state.  No host: inventories shaped like the simulator's T4 and A16 profiles."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "placement"))

from placement_hosts import a16_gpu, t4  # noqa: E402

from vgpuctl.errors import ConfigError, InvalidInput, ProfileLimit, UnknownProfile  # noqa: E402
from vgpuctl.model import SchedulerPolicy, sorted_inventory  # noqa: E402
from vgpuctl.placement import place  # noqa: E402
from vgpuctl.policy import Policy  # noqa: E402
from vgpuctl.profile_limits import Assignment, check_limit  # noqa: E402
from vgpuctl.profiles import parse_profiles, profile_request  # noqa: E402

GOOD = """\
version: 1
profiles:
  gold:
    description: 4 GB workstation vGPU with a display
    series: Q
    framebuffer: 4G
    display: true
    ramfb: true
    scheduler: fixed-share
    limits:
      per_tenant: 2
      tenants: {acme: 3}
  silver:
    type: [T4-2Q, A16-2Q]
  bronze:
    type: nvidia-230
"""


def mixed_inventory():
    ps, ts = [], []
    for addr, numa in (("0000:3b:00.0", 0), ("0000:d8:00.0", 1)):
        p, t = t4(addr, numa=numa)
        ps += p
        ts += t
    p, t = a16_gpu("0000:86:00.0", vfs=4)
    return sorted_inventory(ps + p, ts + t, [])


def test_parse_good():
    ps = parse_profiles(GOOD, path="profiles.yaml")
    assert ps.names() == ("gold", "silver", "bronze")
    gold = ps.get("gold")
    assert (gold.series, gold.framebuffer_mib, gold.display, gold.ramfb) == ("Q", 4096, True, True)
    assert gold.scheduler is SchedulerPolicy.FIXED_SHARE
    assert gold.limit_for("acme") == 3 and gold.limit_for("other") == 2 and gold.line == 3
    assert ps.get("silver").types == ("T4-2Q", "A16-2Q")
    with pytest.raises(UnknownProfile) as e:
        ps.get("platinum")
    assert e.value.known == ("gold", "silver", "bronze")


@pytest.mark.parametrize(
    "body,line,key",
    [
        ("  x:\n    type: T4-2Q\n    series: Q\n", 6, "profiles.x.series"),
        ("  x:\n    series: Q\n", 5, "profiles.x.framebuffer"),
        ("  x:\n    framebuffer: 4G\n", 5, "profiles.x.series"),
        ("  x:\n    description: nothing\n", 5, "profiles.x"),
        ("  x:\n    type: T4-2Q\n    display: false\n    ramfb: true\n", 7, "profiles.x.ramfb"),
        ("  x:\n    type: T4-2Q\n    colour: red\n", 6, "profiles.x.colour"),
        ("  x:\n    series: Z\n    framebuffer: 1G\n", 5, "profiles.x.series"),
        ("  x:\n    type: T4-2Q\n    scheduler: fastest\n", 6, "profiles.x.scheduler"),
        ("  x:\n    type: T4-2Q\n    limits: {per_tenant: 0}\n", 6, "profiles.x.limits.per_tenant"),
        ("  x:\n    type: T4-2Q\n    limits: {per_tenant: 1, tenants: {'*': 2}}\n", 6, "profiles.x.limits.tenants.*"),
        ("  x:\n    type: T4-2Q\n  x:\n    type: T4-1Q\n", 6, "profiles.x"),
        ("  -bad:\n    type: T4-2Q\n", 4, "profiles.-bad"),
    ],
)
def test_contradictory_or_unknown_is_a_config_error_with_line_and_key(body, line, key):
    text = "version: 1\n# comment\nprofiles:\n" + body
    with pytest.raises(ConfigError) as e:
        parse_profiles(text, path="p.yaml")
    assert (e.value.path, e.value.line, e.value.key) == ("p.yaml", line, key), str(e.value)


def test_version_is_required():
    with pytest.raises(ConfigError) as e:
        parse_profiles("profiles: {}\n", path="p.yaml")
    assert e.value.key == "version"


def test_series_and_size_resolve_per_gpu_model():
    inv = mixed_inventory()
    gold = parse_profiles(GOOD).get("gold")
    assert gold.type_on(inv, "0000:3b:00.0").profile == "T4-4Q"
    vf = next(p.name for p in inv.parents if p.is_vf)
    assert gold.type_on(inv, vf).profile == "A16-4Q"
    assert gold.type_ids(inv) == ("nvidia-232", "nvidia-703")
    silver = parse_profiles(GOOD).get("silver")
    assert silver.type_on(inv, "0000:3b:00.0").profile == "T4-2Q" and silver.type_on(inv, vf).profile == "A16-2Q"
    bronze = parse_profiles(GOOD).get("bronze")
    assert bronze.type_on(inv, vf) is None and bronze.type_ids(inv) == ("nvidia-230",)


def test_placement_takes_the_profile_on_any_model():
    inv = mixed_inventory()
    gold = parse_profiles(GOOD).get("gold")
    d = place(inv, Policy(), profile_request(gold, inv))
    assert d.placed
    feasible = {v.gpu: v.type_id for v in d.verdicts if v.feasible}
    assert feasible == {"0000:3b:00.0": "nvidia-232", "0000:d8:00.0": "nvidia-232", "0000:86:00.0": "nvidia-703"}
    # a profile the host has no type for: every GPU says it offers none
    missing = parse_profiles("version: 1\nprofiles:\n  big: {series: Q, framebuffer: 48G}\n").get("big")
    d = place(inv, Policy(), profile_request(missing, inv))
    assert not d.placed and {r for _, r, _ in d.refusals()} == {"not-offered"}


def test_tenant_limits_refuse_with_the_reason():
    ps = parse_profiles(GOOD, path="profiles.yaml")
    gold = ps.get("gold")
    held = [Assignment("u1", "gold", "t1"), Assignment("u2", "gold", "t1"), Assignment("u3", "silver", "t1")]
    check_limit(ps, gold, "t2", held)  # another tenant: fine
    check_limit(ps, gold, "acme", held + [Assignment("u4", "gold", "acme")] * 2)  # acme may hold 3
    with pytest.raises(ProfileLimit) as e:
        check_limit(ps, gold, "t1", held)
    assert (e.value.exit_code, e.value.profile, e.value.tenant, e.value.held, e.value.limit) == (4, "gold", "t1", 2, 2)
    assert "profiles.yaml:3" in str(e.value)
    with pytest.raises(InvalidInput):
        check_limit(ps, gold, None, held)
    check_limit(ps, ps.get("silver"), None, held)  # unlimited profiles need no tenant


def _config(tmp_path, spec: str):
    d = tmp_path / "etc"
    d.mkdir()
    (d / "profiles.yaml").write_text(GOOD)
    (d / "vgpuctl.yaml").write_text(spec)
    return d


def test_desired_state_profile(tmp_path):
    from vgpuctl.spec import desired_type, load, validate

    d = _config(
        tmp_path,
        "version: 1\ninstances:\n  vdi-1: {profile: gold, placement: {tenant: t1}}\n"
        "  vdi-2: {profile: silver, parent: '0000:86:00.4'}\n",
    )
    ds = load(d)
    one, two = ds.instances
    assert one.profile == "gold" and one.profile_def.framebuffer_mib == 4096
    inv = mixed_inventory()
    validate(ds, inv)
    assert desired_type(inv, "0000:3b:00.0", one) == "nvidia-232"
    assert desired_type(inv, "0000:86:00.4", two) == "nvidia-702"


@pytest.mark.parametrize(
    "spec,line,key",
    [
        ("version: 1\ninstances:\n  a:\n    profile: platinum\n    parent: mtty\n", 4, "instances.a.profile"),
        (
            "version: 1\ninstances:\n  a:\n    type: T4-2Q\n    profile: gold\n    parent: mtty\n",
            5,
            "instances.a.profile",
        ),
        ("version: 1\ninstances:\n  a: {profile: gold, parent: mtty}\n", 3, "instances.a.placement.tenant"),
        (
            "version: 1\ninstances:\n"
            + "".join(f"  v{i}: {{profile: gold, placement: {{tenant: t}}}}\n" for i in range(3)),
            5,
            "instances.v2.profile",
        ),
    ],
)
def test_desired_state_profile_errors(tmp_path, spec, line, key):
    from vgpuctl.spec import load

    d = _config(tmp_path, spec)
    with pytest.raises(ConfigError) as e:
        load(d)
    assert (e.value.path.endswith("vgpuctl.yaml"), e.value.line, e.value.key) == (True, line, key), str(e.value)


def test_plan_places_a_profile_instance_on_the_model_it_resolves_to(tmp_path):
    from vgpuctl.apply import policy_placer
    from vgpuctl.paths import HostPaths
    from vgpuctl.plan import plan
    from vgpuctl.policy import load_policy, policy_path
    from vgpuctl.spec import load
    from vgpuctl.state import State

    d = _config(tmp_path, "version: 1\ninstances:\n  vdi-1: {profile: gold, placement: {tenant: t1}}\n")
    inv = mixed_inventory()
    paths = HostPaths(root=tmp_path / "root")
    p = plan(inv, State(), load(d), placer=policy_placer(load_policy(policy_path(paths.config_dir))))
    (a,) = p.actions
    assert a.block is None and a.type_id in ("nvidia-232", "nvidia-703")
