"""``vgpuctl place`` and ``defrag --plan`` through the CLI: on a static tree of the simulator's ``mixed`` profile,
and (FUSE) filling the live simulated host in the policy's order."""

import json

import pytest
from click.testing import CliRunner

from vgpuctl.cli import cli

T4A, T4B = "0000:3b:00.0", "0000:d8:00.0"


def run(root, *args, policy=None):
    extra = ["--policy", str(policy)] if policy else []
    return CliRunner().invoke(cli, ["--root", str(root), "--connect", "none", *args, *extra])


@pytest.fixture
def mixed(tmp_path):
    from vgpuctl.sim import materialize

    materialize(
        "mixed",
        tmp_path,
        instances=[
            (T4A, "nvidia-231", "11111111-0000-0000-0000-000000000001"),
            ("0000:86:00.4", "nvidia-701", "11111111-0000-0000-0000-000000000002"),
        ],
    )
    return tmp_path


def test_place_prints_the_parent(mixed):
    r = run(mixed, "place", "--type", "t4-2q")
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == T4A


def test_place_explain_and_json(mixed):
    r = run(mixed, "place", "--type", "NVIDIA T4-4Q", "--explain", "--json")
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)
    assert recs[0]["schema"] == "vgpuctl.placement/v1" and recs[0]["parent"] == T4B
    verdicts = {v["gpu"]: v["verdict"] for v in recs[1:]}
    assert verdicts[T4A] == "type-mix" and verdicts["0000:86:00.0"] == "not-offered" and verdicts[T4B] == "ok"


def test_place_refused_exit_4_with_reasons(mixed):
    r = run(mixed, "place", "--type", "A16-2Q", "--numa-node", "0", "--numa", "require")
    assert r.exit_code == 4
    assert "0000:86:00.0: numa" in r.stderr


def test_policy_from_config_dir_and_errors(mixed):
    cfg = mixed / "etc" / "vgpuctl"
    cfg.mkdir(parents=True, exist_ok=True)
    (cfg / "policy.yaml").write_text(f"version: 1\ngpus:\n  - match: {{pci: '{T4A}'}}\n    reserved: true\n")
    r = run(mixed, "place", "--type", "T4-2Q")
    assert r.exit_code == 0 and r.stdout.strip() == T4B
    (cfg / "policy.yaml").write_text("version: 1\nstrategy: pack\n")
    r = run(mixed, "place", "--type", "T4-2Q")
    assert r.exit_code == 8 and "policy.yaml:2: strategy:" in r.stderr


def test_defrag_plan_prints_moves(tmp_path):
    from vgpuctl.sim import materialize

    materialize(
        "mixed",
        tmp_path,
        instances=[
            (T4A, "nvidia-231", "11111111-0000-0000-0000-000000000001"),
            (T4B, "nvidia-231", "11111111-0000-0000-0000-000000000002"),
            (T4B, "nvidia-231", "11111111-0000-0000-0000-000000000003"),
        ],
    )
    r = run(tmp_path, "defrag", "--plan", "--json")
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)
    assert recs[0]["schema"] == "vgpuctl.defrag-move/v1"
    assert (recs[0]["from_parent"], recs[0]["to_parent"]) == (T4A, T4B)
    assert recs[-1]["freed"] == [T4A]
    assert run(tmp_path, "defrag").exit_code == 2  # --plan is required: it never moves


POLICY = """\
version: 1
gpus:
  - name: first
    match: {pci: "0000:88:00.0"}
  - name: a16
    match: {model: "A16*"}
    strategy: spread
  - name: remote-t4
    match: {pci: "0000:d8:00.0"}
"""


@pytest.mark.sim
def test_simulated_mixed_host_fills_in_policy_order(tmp_path):
    """``create`` without ``--parent`` on the FUSE-simulated mixed host follows the policy: 0000:88 first, the other
    A16 GPUs spread, the remote T4 before the default; then a refusal (exit 4).  One vGPU per GPU (16Q) keeps the
    number of (slow) simulated inventory reads small."""
    from vgpuctl.sim import SimHost

    root = tmp_path / "root"
    with SimHost("mixed", root):
        (root / "etc" / "vgpuctl").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "vgpuctl" / "policy.yaml").write_text(POLICY)
        for profile, want in (
            ("A16-16Q", ["0000:88", "0000:86", "0000:87", "0000:89"]),
            ("T4-16Q", ["0000:d8", "0000:3b"]),
        ):
            got = []
            for _ in range(len(want) + 1):
                r = run(root, "create", "--type", profile, "--json")
                if r.exit_code != 0:
                    assert r.exit_code == 4, r.output
                    break
                got.append(json.loads(r.stdout)["parent"][:7])
            assert got == want


def test_place_several_types_in_one_call(mixed):
    """Repeated --type: each type's decision and verdicts, in the order given (the web console's type picker)."""
    r = run(
        mixed, "place", "--type", "nvidia-232", "--type", "nvidia-231", "--type", "nvidia-232", "--explain", "--json"
    )
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)
    decisions = [x for x in recs if x["schema"] == "vgpuctl.placement/v1"]
    assert [d["type"] for d in decisions] == ["nvidia-232", "nvidia-231"]  # a repeated type is asked once
    i = recs.index(decisions[1])
    first = {v["gpu"]: v["verdict"] for v in recs[1:i]}
    second = {v["gpu"]: (v["verdict"], v["parent"]) for v in recs[i + 1 :]}
    assert first[T4A] == "type-mix" and first[T4B] == "ok"
    assert second[T4A] == ("ok", T4A) and second[T4B] == ("ok", T4B)
    assert len(first) == len(second) == 6
    # as for one type: exit 4 when one of them has no GPU, after every record was printed
    r = run(
        mixed, "place", "--type", "A16-2Q", "--type", "nvidia-231", "--numa-node", "0", "--numa", "require", "--json"
    )
    assert r.exit_code == 4 and "no GPU can take a A16-2Q" in r.stderr
    assert [(d["type"], d["placed"]) for d in json.loads(r.stdout)] == [("A16-2Q", False), ("nvidia-231", True)]


def test_place_type_from_its_variable(mixed, monkeypatch):
    """VGPUCTL_PLACE_TYPE_NAME stays the --type variable; several types are separated by whitespace."""
    monkeypatch.setenv("VGPUCTL_PLACE_TYPE_NAME", "nvidia-232 nvidia-231")
    r = run(mixed, "place", "--json")
    assert r.exit_code == 0, r.output
    assert [d["type"] for d in json.loads(r.stdout)] == ["nvidia-232", "nvidia-231"]
