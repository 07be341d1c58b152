"""License state per vGPU (NVML nvmlVgpuInstanceGetLicenseInfo_v2) in ``list``, ``status`` and the Prometheus
series, against the h200 simulator and the fake NVML; "unknown" where NVML cannot tell."""

from __future__ import annotations

import calendar
import json

import pytest
from click.testing import CliRunner

from vgpuctl.cli import cli as group

from .fake_nvml import FakeNvml

pytestmark = pytest.mark.sim
GPU = "0000:4a:00.0"
EXPIRY = (2027, 1, 31, 12, 30, 5)
EXPIRY_S = calendar.timegm(EXPIRY + (0, 0, 0))


def ok(sim, *args):
    r = CliRunner().invoke(group, ["--root", str(sim.root), "--connect", "none", "--lock-timeout", "2", *args])
    assert r.exit_code == 0, (r.stdout, r.stderr, r.exception)
    return r


@pytest.fixture
def nvml(host, monkeypatch):
    return FakeNvml(host).install(monkeypatch)


@pytest.fixture
def three(host, nvml):
    """Three H200X-8C vGPUs: a licensed one with an expiry, an unlicensed running one, one no VM runs."""
    a, b, c = (ok(host, "create", "-p", GPU, "-t", "H200X-8C").stdout.strip() for _ in range(3))
    nvml.start_vm(a, "vm-a")
    nvml.start_vm(b, "vm-b")
    nvml.set_license(a, licensed=True, state=5, expiry=EXPIRY)
    nvml.set_license(b, licensed=False, state=3)  # NVML_GRID_LICENSE_STATE_UNLICENSED_RESTRICTED
    return a, b, c


def test_list_shows_license_per_vgpu(host, three):
    a, b, c = three
    recs = {r["uuid"]: r for r in json.loads(ok(host, "list", "--json").stdout)}
    assert (recs[a]["license"], recs[a]["licensed"], recs[a]["license_expiry_seconds"]) == ("licensed", True, EXPIRY_S)
    assert recs[a]["license_expiry"] == "2027-01-31T12:30:05Z"
    assert (recs[b]["license"], recs[b]["licensed"], recs[b]["license_expiry"]) == (
        "unlicensed-restricted",
        False,
        None,
    )
    # no VM runs c: NVML does not list it, so it cannot tell
    assert (recs[c]["license"], recs[c]["licensed"], recs[c]["license_expiry"]) == ("unknown", None, None)
    lines = ok(host, "list").stdout.splitlines()
    assert "LICENSE" in lines[0] and "LICENSE_EXPIRY" in lines[0]
    row = {ln.split()[0]: ln for ln in lines[1:]}
    assert "licensed" in row[a] and "2027-01-31T12:30:05Z" in row[a]
    assert "unlicensed-restricted" in row[b] and "unknown" in row[c]


def test_permanent_license_and_old_driver(host, nvml, monkeypatch):
    a = ok(host, "create", "-p", GPU, "-t", "H200X-8C").stdout.strip()
    nvml.start_vm(a, "vm-a")
    nvml.set_license(a, licensed=True, state=5, expiry_status=4)  # NVML_GRID_LICENSE_EXPIRY_PERMANENT
    (r,) = json.loads(ok(host, "list", "--json").stdout)
    assert (r["license"], r["license_expiry"], r["license_expiry_seconds"]) == ("licensed", "permanent", None)
    nvml.missing.add("nvmlVgpuInstanceGetLicenseInfo_v2")  # a driver without the call: error 13
    (r,) = json.loads(ok(host, "list", "--json").stdout)
    assert (r["license"], r["licensed"], r["vm_id"]) == ("unknown", None, "vm-a")


def test_status_shows_license_per_holder(host, three):
    a, b, c = three
    recs = json.loads(ok(host, "status", "--json").stdout)
    insts = {i["uuid"]: i for g in recs if g["schema"] == "vgpuctl.status-gpu/v1" for i in g["instances"]}
    assert (insts[a]["license"], insts[a]["license_expiry"]) == ("licensed", "2027-01-31T12:30:05Z")
    assert insts[b]["license"] == "unlicensed-restricted" and insts[c]["license"] == "unknown"
    text = ok(host, "status").stdout
    assert f"{a}" in text and "license licensed until 2027-01-31T12:30:05Z" in text
    assert "license unlicensed-restricted" in text and "license unknown" in text


def test_status_of_other_vendors_has_no_license(sim_factory):
    sim = sim_factory("gvtg")
    ok(sim, "create", "-p", "0000:00:02.0", "-t", "i915-GVTg_V5_4")
    recs = json.loads(ok(sim, "status", "--json").stdout)
    (inst,) = [i for g in recs if g["schema"] == "vgpuctl.status-gpu/v1" for i in g["instances"]]
    assert inst["license"] is None


def test_license_metrics(host, three):
    pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from vgpuctl import metrics, nvml
    from vgpuctl.policy import Policy

    a, b, c = three
    from vgpuctl.host import Host

    inv = Host(host.paths).inventory()
    gpus, _ = nvml.gather(inv)
    _, details = nvml.enrich(inv, gpus, nvml.placements_of(host.paths, inv))
    ex = metrics.MetricsExporter(textfile=None)
    ex.start()
    ex.samples = metrics.host_samples(inv, Policy(), users={}, vgpus=details)
    got = {}
    for fam in text_string_to_metric_families(ex.render().decode()):
        for s in fam.samples:
            got.setdefault(s.name, {})[s.labels.get("uuid")] = (s.labels, s.value)
    assert got["vgpuctl_vgpu_licensed"][a] == ({"uuid": a, "gpu": GPU, "state": "licensed"}, 1.0)
    assert (
        got["vgpuctl_vgpu_licensed"][b][1] == 0.0
        and got["vgpuctl_vgpu_licensed"][b][0]["state"] == "unlicensed-restricted"
    )
    assert c not in got["vgpuctl_vgpu_licensed"]  # unknown: no series rather than a guess
    assert got["vgpuctl_vgpu_license_expiry_seconds"] == {a: ({"uuid": a, "gpu": GPU}, float(EXPIRY_S))}


def test_license_of_struct():
    """The pure mapping from NVML's struct: state names, expiry only when valid, unknown when NVML says unknown."""
    import pynvml

    from vgpuctl.nvml import license_of

    info = pynvml.c_nvmlVgpuLicenseInfo_t()
    assert not license_of(info).known and license_of(info).state == "unknown"
    info.isLicensed, info.currentState = 1, 5
    info.licenseExpiry.status = 1  # invalid expiry: none shown
    info.licenseExpiry.year, info.licenseExpiry.month, info.licenseExpiry.day = 2027, 1, 31
    lic = license_of(info)
    assert (lic.licensed, lic.state, lic.expiry) == (True, "licensed", None)
    info.licenseExpiry.status = 2
    assert license_of(info).expiry == calendar.timegm((2027, 1, 31, 0, 0, 0, 0, 0, 0))
    info.isLicensed, info.currentState = 0, 2
    assert license_of(info).state == "unlicensed-unrestricted"
