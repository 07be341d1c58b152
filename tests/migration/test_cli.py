"""``vgpuctl migrate check`` as an operator runs it on a candidate target: the simulated t4x2 host, the domain XML
from a file, stdin or a source libvirt (the test driver), and the bad input it must refuse without a change."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.sim

VGPUCTL = [sys.executable, "-m", "vgpuctl.cli"]
T4 = "0000:3b:00.0"
U1 = "aaaaaaaa-0000-4000-8000-000000000001"
U2 = "aaaaaaaa-0000-4000-8000-000000000002"


def domain_xml(*vgpus, name="render-1", test_driver=False):
    """Domain XML whose hostdevs reference ``vgpus`` ((uuid, type id, type name or None)) from the source host."""
    entries = "".join(
        f'<vgpuctl:vgpu uuid="{u}" parent="0000:af:00.0" type="{t}" backend="mdev"'
        + (f' name="{n}"' if n else "")
        + "/>"
        for u, t, n in vgpus
    )
    devs = "".join(
        f"<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='{u}'/></source></hostdev>"
        for u, _, _ in vgpus
    )
    head = "<domain type='test'>" if test_driver else "<domain type='kvm'>"
    return (
        f"{head}<name>{name}</name><uuid>11111111-2222-4333-8444-555555555555</uuid>"
        f'<metadata><vgpuctl:vgpus xmlns:vgpuctl="https://vgpuctl.dev/xmlns/1">{entries}</vgpuctl:vgpus>'
        f"</metadata><memory>1048576</memory><os><type arch='x86_64'>hvm</type></os><devices>{devs}</devices>"
        "</domain>"
    )


@pytest.fixture
def sim(sim_pool):
    return sim_pool.fresh("t4x2")


def run(sim, *args, stdin=None):
    env = dict(os.environ, VGPUCTL_ROOT=str(sim.root), VGPUCTL_LIBVIRT_URI="none", VGPUCTL_LOCK_TIMEOUT="10")
    return subprocess.run(VGPUCTL + list(args), input=stdin, capture_output=True, text=True, env=env, timeout=60)


def host_state(sim):
    state = sim.paths.state_file.read_bytes() if sim.paths.state_file.exists() else b""
    return sim.instances(), {t: sim.available(T4, t) for t in ("nvidia-231", "nvidia-232", "nvidia-233")}, state


def write(tmp_path, text, name="dom.xml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_a_fitting_domain_says_where_and_keeps_its_uuid(sim, tmp_path):
    before = host_state(sim)
    p = run(sim, "migrate", "check", "--xml", write(tmp_path, domain_xml((U1, "nvidia-232", "GRID T4-4Q"))), "--json")
    assert p.returncode == 0, p.stderr
    (rec,) = json.loads(p.stdout)
    assert rec["schema"] == "vgpuctl.migration-check/v1"
    assert (rec["fit"], rec["type_id"], rec["type_name"], rec["target_uuid"], rec["keeps_uuid"]) == (
        "fits",
        "nvidia-232",
        "GRID T4-4Q",
        U1,
        True,
    )
    assert rec["parent"] in (T4, "0000:af:00.0".replace("af", "d8"))
    assert "all 1 vGPU(s) fit" in p.stderr and "--source-driver" in p.stderr
    assert host_state(sim) == before  # a pre-flight creates nothing


def test_xml_from_stdin_and_a_table(sim):
    p = run(sim, "migrate", "check", "--xml", "-", stdin=domain_xml((U1, "nvidia-231", "GRID T4-2Q")))
    assert p.returncode == 0, p.stderr
    header, row = p.stdout.splitlines()
    assert header.split()[:4] == ["VGPU", "TYPE", "NAME", "FIT"] and row.split()[0] == U1 and "fits" in row


def test_a_full_target_is_exit_4_and_changes_nothing(sim, tmp_path):
    for gpu in (T4, "0000:d8:00.0"):
        for _ in range(2):
            assert run(sim, "create", "--parent", gpu, "--type", "T4-8Q").returncode == 0
    before = host_state(sim)
    p = run(sim, "migrate", "check", "--xml", write(tmp_path, domain_xml((U1, "nvidia-232", "GRID T4-4Q"))))
    assert p.returncode == 4, p.stderr
    (err,) = p.stderr.strip().splitlines()
    assert err.startswith("vgpuctl: error: this host cannot take domain 'render-1' now:") and "type-mix" in err
    assert "no-capacity" in p.stdout
    assert host_state(sim) == before


def test_another_board_is_exit_15(sim, tmp_path):
    p = run(sim, "migrate", "check", "--xml", write(tmp_path, domain_xml((U1, "nvidia-232", "NVIDIA A16-4Q"))))
    assert p.returncode == 15, p.stderr
    (err,) = p.stderr.strip().splitlines()
    assert "cannot migrate to this host" in err and "A16" in err and "T4" in err


def test_an_unknown_type_is_exit_15(sim, tmp_path):
    p = run(sim, "migrate", "check", "--xml", write(tmp_path, domain_xml((U1, "nvidia-999", None))))
    assert p.returncode == 15 and "offers no type nvidia-999" in p.stderr


def test_a_different_driver_version_is_exit_15(sim, tmp_path):
    version = sim.root / "sys" / "module" / "nvidia" / "version"
    if not version.exists():
        pytest.skip("this simulator profile has no sys/module/nvidia/version")
    here = version.read_text().strip()
    xml = write(tmp_path, domain_xml((U1, "nvidia-232", "GRID T4-4Q")))
    assert run(sim, "migrate", "check", "--xml", xml, "--source-driver", here).returncode == 0
    p = run(sim, "migrate", "check", "--xml", xml, "--source-driver", "1.2.3")
    assert p.returncode == 15 and "1.2.3" in p.stderr and here in p.stderr


def test_two_vgpus_second_one_short(sim, tmp_path):
    assert run(sim, "create", "--parent", T4, "--type", "T4-16Q").returncode == 0
    xml = domain_xml((U1, "nvidia-234", "GRID T4-16Q"), (U2, "nvidia-234", "GRID T4-16Q"))
    p = run(sim, "migrate", "check", "--xml", write(tmp_path, xml), "--json")
    assert p.returncode == 4
    assert [r["fit"] for r in json.loads(p.stdout)] == ["fits", "no-capacity"]


def test_domain_read_from_the_source_libvirt(sim, tmp_path):
    pytest.importorskip("libvirt")
    node = tmp_path / "source.xml"
    node.write_text("<node>" + domain_xml((U1, "nvidia-231", "GRID T4-2Q"), test_driver=True) + "</node>")
    p = run(sim, "migrate", "check", "--domain", "render-1", "--source", f"test://{node}", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["fit"] == "fits"
    missing = run(sim, "migrate", "check", "--domain", "nope", "--source", f"test://{node}")
    assert missing.returncode == 12 and "nope" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args,stdin,code,words",
    [
        (["--xml", "-"], "this is not XML", 2, "unusable"),
        (
            ["--xml", "-"],
            "<domain><name>x</name><uuid>11111111-2222-4333-8444-555555555555</uuid></domain>",
            2,
            "no vGPU",
        ),
        (["--xml", "-"], domain_xml(("not-a-uuid", "nvidia-231", None)), 2, "no vGPU"),
        (["--xml", "/nonexistent/dom.xml"], None, 2, "cannot read"),
        ([], None, 2, "exactly one of"),
        (["--xml", "-", "--domain", "x"], "", 2, "exactly one of"),
        (["--domain", "x"], None, 2, "needs --source"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(sim, args, stdin, code, words):
    before = host_state(sim)
    p = run(sim, "migrate", "check", *args, stdin=stdin)
    assert p.returncode == code, p.stderr
    (err,) = p.stderr.strip().splitlines()
    assert err.startswith("vgpuctl: error: ") and words in err
    assert p.stdout == "" and host_state(sim) == before
