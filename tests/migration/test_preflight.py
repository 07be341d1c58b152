"""The migration pre-flight's rules on in-memory hosts shaped like the simulator's (no host, no FUSE)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "placement"))

from placement_hosts import host, t4, t4_host, uid, with_instances  # noqa: E402

from vgpuctl.migration import Fit, SourceFacts, TargetFacts, board_of, check, verdict  # noqa: E402
from vgpuctl.policy import Policy  # noqa: E402
from vgpuctl.virt import DomainXml, ManagedVgpu  # noqa: E402

SRC = "0000:af:00.0"  # the source's GPU: another address than any GPU here


def domain(*vgpus, tenant=None):
    """A domain whose hostdevs reference ``vgpus`` ((uuid, type id, type name)), described by vgpuctl metadata."""
    return DomainXml(
        name="render-1",
        uuid="11111111-2222-4333-8444-555555555555",
        devices=tuple(u for u, _, _ in vgpus),
        managed=tuple(ManagedVgpu(u, SRC, t, "mdev", n) for u, t, n in vgpus if t),
        tenant=tenant,
    )


def test_fits_keeps_the_uuid_and_says_where():
    (f,) = check(domain((uid(1), "nvidia-232", "NVIDIA T4-4Q")), t4_host(2), Policy())
    assert f.fit is Fit.FITS and f.keeps_uuid and f.target_uuid == uid(1)
    assert f.parent in ("0000:10:00.0", "0000:11:00.0") and f.gpu == f.parent


def test_a_uuid_taken_here_gets_a_fresh_one():
    inv = with_instances(t4_host(1), [("0000:10:00.0", "nvidia-232", uid(1))])
    (f,) = check(domain((uid(1), "nvidia-232", "NVIDIA T4-4Q")), inv, Policy(), new_uuid=[uid(9)])
    assert f.fit is Fit.FITS and f.target_uuid == uid(9) and not f.keeps_uuid
    assert uid(1) in f.reason


def test_no_such_type_is_incompatible_and_names_what_is_offered():
    (f,) = check(domain((uid(1), "nvidia-999", "NVIDIA T4-32Q")), t4_host(1), Policy())
    assert f.fit is Fit.INCOMPATIBLE and "nvidia-999" in f.reason and "T4-4Q" in f.reason


def test_same_id_another_name_is_another_vgpu_manager():
    (f,) = check(domain((uid(1), "nvidia-232", "NVIDIA T4-8Q")), t4_host(1), Policy())
    assert f.fit is Fit.INCOMPATIBLE and "vGPU managers differ" in f.reason


def test_h100_h200_h800_never_migrate_between_each_other():
    inv = host(t4("0000:10:00.0", types=(("nvidia-1000", "H200-4C", 4096, 20),)))
    (f,) = check(domain((uid(1), "nvidia-1000", "NVIDIA H100-4C")), inv, Policy())
    assert f.fit is Fit.INCOMPATIBLE and "H100, H200, H800" in f.reason
    assert board_of("NVIDIA H200-1-18C") == "H200" and board_of("GRID T4-2Q") == "T4"
    assert board_of("Single port serial") is None


def test_driver_versions_must_be_equal_where_both_are_known():
    d = domain((uid(1), "nvidia-232", "NVIDIA T4-4Q"))
    (f,) = check(d, t4_host(1), Policy(), source=SourceFacts("550.54.10"), target=TargetFacts("550.90.05"))
    assert f.fit is Fit.INCOMPATIBLE and "550.54.10" in f.reason and "550.90.05" in f.reason
    (same,) = check(d, t4_host(1), Policy(), source=SourceFacts("550.54.10"), target=TargetFacts("550.54.10"))
    assert same.fit is Fit.FITS
    (unknown,) = check(d, t4_host(1), Policy(), source=SourceFacts(None), target=TargetFacts("550.54.10"))
    assert unknown.fit is Fit.FITS  # nothing to compare against: the CLI says so on stderr


def test_a_full_host_is_no_capacity_with_the_placement_refusals():
    inv = with_instances(t4_host(1), [("0000:10:00.0", "nvidia-233", uid(5)), ("0000:10:00.0", "nvidia-233", uid(6))])
    (f,) = check(domain((uid(1), "nvidia-233", "NVIDIA T4-8Q")), inv, Policy())
    assert f.fit is Fit.NO_CAPACITY and "0000:10:00.0" in f.reason


def test_type_mix_on_the_only_gpu_is_no_capacity_not_incompatible():
    inv = with_instances(t4_host(1), [("0000:10:00.0", "nvidia-231", uid(5))])
    (f,) = check(domain((uid(1), "nvidia-232", "NVIDIA T4-4Q")), inv, Policy())
    assert f.fit is Fit.NO_CAPACITY and "type-mix" in f.reason


def test_two_vgpus_are_placed_one_after_the_other():
    inv = t4_host(1)  # one T4: room for two T4-8Q, not three
    d = domain(*((uid(i), "nvidia-233", "NVIDIA T4-8Q") for i in (1, 2, 3)))
    fits = check(d, inv, Policy())
    assert [f.fit for f in fits] == [Fit.FITS, Fit.FITS, Fit.NO_CAPACITY]
    assert verdict(fits) is Fit.NO_CAPACITY
    assert verdict(fits[:2]) is Fit.FITS


def test_a_vgpu_without_metadata_cannot_be_judged():
    d = DomainXml(name="x", uuid="11111111-2222-4333-8444-555555555555", devices=(uid(1),))
    (f,) = check(d, t4_host(1), Policy())
    assert f.fit is Fit.INCOMPATIBLE and "metadata" in f.reason


def test_incompatible_outranks_no_capacity():
    inv = with_instances(t4_host(1), [("0000:10:00.0", "nvidia-234", uid(5))])
    fits = check(domain((uid(1), "nvidia-234", "NVIDIA T4-16Q"), (uid(2), "nvidia-999", None)), inv, Policy())
    assert [f.fit for f in fits] == [Fit.NO_CAPACITY, Fit.INCOMPATIBLE]
    assert verdict(fits) is Fit.INCOMPATIBLE


@pytest.mark.parametrize("backend", ["nvidia-vf"])
def test_per_vf_vgpus_are_refused_with_the_reason(backend):
    d = DomainXml(
        name="x",
        uuid="11111111-2222-4333-8444-555555555555",
        devices=("0000:af:00.4",),
        managed=(ManagedVgpu("0000:af:00.4", "0000:af:00.4", "nvidia-232", backend, "NVIDIA T4-4Q"),),
    )
    (f,) = check(d, t4_host(1), Policy())
    assert f.fit is Fit.INCOMPATIBLE and "VF" in f.reason
