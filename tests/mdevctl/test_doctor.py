"""``vgpuctl doctor``'s mdevctl checks on the simulated host, with definitions written by Debian's real mdevctl and
its real udev rule (whose /usr/sbin/mdevctl does not exist on Debian 12)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vgpuctl.doctor import Context, Status, run_checks
from vgpuctl.paths import HostPaths

from .realtool import Mdevctl, unusable_reason, vgpuctl

pytestmark = [pytest.mark.sim, pytest.mark.skipif(bool(unusable_reason()), reason=unusable_reason() or "-")]

UA = "aaaaaaaa-0000-4000-8000-00000000000a"
UB = "bbbbbbbb-0000-4000-8000-00000000000b"
RULE = Path("/usr/lib/udev/rules.d/60-mdevctl.rules")


def results(root, name):
    return run_checks(Context(paths=HostPaths.from_root(root), connect="none"), [name])


def test_double_managed_and_bad_files_and_the_udev_rule(sim_factory):
    sim = sim_factory("mtty")
    md = Mdevctl(sim.root)
    assert [r.status for r in results(sim.root, "mdevctl-double")] == [Status.NA]
    md.run("define", "-u", UA, "-p", "mtty", "-t", "mtty-1", "--auto")
    md.run("start", "-u", UA)
    (cfg := sim.root / "etc" / "vgpuctl").mkdir(parents=True)
    (cfg / "vgpuctl.yaml").write_text(f"version: 1\ninstances:\n  web: {{uuid: {UA}, type: mtty-1, parent: mtty}}\n")
    (r,) = results(sim.root, "mdevctl-double")
    assert r.status is Status.FAIL and r.subject == UA and "web" in r.seen
    assert r.fix.startswith(f"vgpuctl adopt --from-mdevctl --undefine {UA}")
    assert [x.status for x in results(sim.root, "mdevctl-files")] == [Status.OK]
    (md.etc / "mtty" / UB).write_text('{"mdev_type": "mtty-1", "sta')
    (bad,) = results(sim.root, "mdevctl-files")
    assert bad.status is Status.WARN and bad.subject.endswith(UB)
    # the udev rule, as Debian ships it, under the root
    if not RULE.exists():
        pytest.skip("mdevctl's udev rule is not installed here")
    rules = sim.root / "usr/lib/udev/rules.d"
    rules.mkdir(parents=True)
    shutil.copy(RULE, rules / RULE.name)
    (u,) = results(sim.root, "mdevctl-udev")
    assert u.status is Status.WARN and "/usr/sbin/mdevctl" in u.seen and "/etc/udev/rules.d" in u.fix
    (sim.root / "usr/bin").mkdir(parents=True)
    (sim.root / "usr/bin/mdevctl").touch()
    local = sim.root / "etc/udev/rules.d"
    local.mkdir(parents=True)
    (local / RULE.name).write_text(RULE.read_text().replace("/usr/sbin/mdevctl", "/usr/bin/mdevctl"))
    assert [x.status for x in results(sim.root, "mdevctl-udev")] == [Status.OK]
    # once adopted, nothing is double-managed any more
    (md.etc / "mtty" / UB).unlink()
    vgpuctl(sim.root, "adopt", "--from-mdevctl", "--undefine", check=0)
    assert [x.status for x in results(sim.root, "mdevctl-double")] == [Status.NA]
