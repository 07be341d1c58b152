"""The vgpuctl.vgpu Ansible collection, driven by real ansible-playbook against localhost and the simulated host.

Every module runs the sequence: check mode (changed, nothing touched), real run (changed), check mode again and real
run again (neither changed, nothing touched).  Failures (no capacity, unknown type, in use) fail with vgpuctl's
one-line message and exit code, in check mode too.
"""

import ast
import json
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import BIN, COLLECTION, REPO, ansible_env, snapshot, vgpuctl

pytestmark = pytest.mark.ansible

P1, P2 = "0000:3b:00.0", "0000:d8:00.0"
U1 = "6a1a4a5e-1111-4c1e-9b1a-000000000001"
MODULES = ("vgpu_info", "vgpu_instance", "vgpu_config", "vgpu_migration_check")


def ok(r, changed):
    assert not r.get("failed"), r.get("msg")
    assert r["changed"] is changed, r
    return r


def failed(r, rc, text):
    assert r.get("failed"), r
    assert r["rc"] == rc, r
    assert text in r["msg"], r["msg"]
    return r


# --- static: docs, build, uuid derivation ---------------------------------------------------------------------------
def test_ansible_doc_renders_every_module(tmp_path):
    env = ansible_env(tmp_path)
    for m in MODULES:
        p = subprocess.run([str(BIN / "ansible-doc"), "vgpuctl.vgpu." + m], env=env, capture_output=True, text=True)
        assert p.returncode == 0 and "ERROR" not in p.stderr, p.stderr
        assert "OPTIONS" in p.stdout and "EXAMPLES" in p.stdout and "RETURN VALUES" in p.stdout
        p = subprocess.run(
            [str(BIN / "ansible-doc"), "--json", "vgpuctl.vgpu." + m], env=env, capture_output=True, text=True
        )
        doc = json.loads(p.stdout)["vgpuctl.vgpu." + m]
        assert doc["doc"]["options"]["vgpuctl_path"]["default"] == "vgpuctl"  # the shared doc fragment
        assert doc["return"] and doc["examples"]


def _blocks(path):
    tree = ast.parse(path.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") in (
            "DOCUMENTATION",
            "EXAMPLES",
            "RETURN",
            "ARGUMENT_SPEC",
        ):
            out[node.targets[0].id] = node
    return out


def test_doc_blocks_are_yaml_and_match_the_argument_spec():
    """The YAML lint ansible-test sanity would do (validate-modules needs network installs here)."""
    for m in MODULES:
        path = COLLECTION / "plugins" / "modules" / (m + ".py")
        blocks = _blocks(path)
        doc = yaml.safe_load(blocks["DOCUMENTATION"].value.value)
        assert doc["module"] == m
        assert isinstance(yaml.safe_load(blocks["EXAMPLES"].value.value), list)
        assert isinstance(yaml.safe_load(blocks["RETURN"].value.value), dict)
        for name, opt in doc["options"].items():
            assert isinstance(opt["description"], (str, list)) and "type" in opt, (m, name)
        # every option in the argument spec is documented (here or in the doc fragment), with the same type
        sys.path.insert(0, str(REPO))
        try:
            mod = __import__("ansible_collections.vgpuctl.vgpu.plugins.modules." + m, fromlist=["ARGUMENT_SPEC"])
            frag = __import__("ansible_collections.vgpuctl.vgpu.plugins.doc_fragments.vgpuctl", fromlist=["x"])
        finally:
            sys.path.remove(str(REPO))
        documented = dict(doc["options"])
        documented.update(yaml.safe_load(frag.ModuleDocFragment.DOCUMENTATION)["options"])
        assert set(mod.ARGUMENT_SPEC) == set(documented), m
        for name, spec in mod.ARGUMENT_SPEC.items():
            assert spec["type"] == documented[name]["type"], (m, name)
            assert spec.get("default") == documented[name].get("default"), (m, name)
            assert spec.get("choices") == documented[name].get("choices"), (m, name)


def test_galaxy_build(tmp_path):
    p = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", str(COLLECTION), "--output-path", str(tmp_path)],
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "vgpuctl-vgpu-0.1.0.tar.gz").is_file()


#: ansible-test sanity tests that install their requirements into a fresh venv from the network (offline here: they
#: fail with "does not have pip available"); the ansible-doc and YAML tests above stand in for them.
NEEDS_NETWORK = ("ansible-doc", "import", "pep8", "pylint", "runtime-metadata", "validate-modules", "yamllint")


def test_ansible_test_sanity_offline_subset(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("ansible-test sanity needs git")
    copy = tmp_path / "ansible_collections" / "vgpuctl" / "vgpu"
    shutil.copytree(COLLECTION, copy, ignore=shutil.ignore_patterns("__pycache__", "*.tar.gz", "tests"))
    subprocess.run(["git", "init", "-q", "."], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    skips = [a for t in NEEDS_NETWORK for a in ("--skip-test", t)]
    p = subprocess.run(
        [str(BIN / "ansible-test"), "sanity", "--local", "--python", "%d.%d" % sys.version_info[:2], *skips],
        cwd=copy,
        env=ansible_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert 'Running sanity test "compile"' in p.stdout + p.stderr


def test_module_code_is_python39():
    for path in sorted((COLLECTION / "plugins").rglob("*.py")):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def test_name_derived_uuid_is_vgpuctls():
    from vgpuctl.spec import derive_uuid

    sys.path.insert(0, str(REPO))
    try:
        from ansible_collections.vgpuctl.vgpu.plugins.module_utils import vgpuctl as mu
    finally:
        sys.path.remove(str(REPO))
    for name in ("web-1", "a", "Z_9.x"):
        assert mu.derive_uuid(name) == derive_uuid(name)


# --- vgpu_info ------------------------------------------------------------------------------------------------------
@pytest.mark.sim
def test_info(host):
    u = host.create(P1, "nvidia-231")  # made behind vgpuctl's back: not owned
    before = snapshot(host)
    check, real, only = host.play(
        {"vgpuctl.vgpu.vgpu_info": {}, "check_mode": True},
        {"vgpuctl.vgpu.vgpu_info": {}},
        {"vgpuctl.vgpu.vgpu_info": {"parent": P2, "gather": ["types"]}},
    )
    assert snapshot(host) == before
    for r in (check, real):
        ok(r, False)
        assert [p["parent"] for p in r["parents"]] == [P1, P2]
        assert [(i["uuid"], i["owned"], i["type_name"]) for i in r["instances"]] == [(u, False, "GRID T4-2Q")]
        t2q = {t["parent"]: t for t in r["types"] if t["type_id"] == "nvidia-231"}
        assert (t2q[P1]["available"], t2q[P2]["available"], t2q[P2]["max_instance"]) == (7, 8, 8)
    assert ok(only, False)["parents"] == [] and only["instances"] == []
    assert {t["parent"] for t in only["types"]} == {P2}


# --- vgpu_instance --------------------------------------------------------------------------------------------------
PINNED = {"uuid": U1, "type": "T4-2Q", "parent": P1}
PLACED = {"name": "placed-1", "type": "nvidia-233", "placement": {"numa_node": 1}}


def _both(state, check):
    return [{"vgpuctl.vgpu.vgpu_instance": dict(a, state=state), "check_mode": check} for a in (PINNED, PLACED)]


@pytest.mark.sim
def test_instance_present_then_absent(host):
    from vgpuctl.spec import derive_uuid

    u2 = derive_uuid("placed-1")
    empty = snapshot(host)

    # check mode: changed, predicted record and diff, nothing touched
    c1, c2 = host.play(*_both("present", True))
    assert snapshot(host) == empty
    assert ok(c1, True)["actions"] == ["create --parent %s --type nvidia-231 --uuid %s" % (P1, U1)]
    assert c1["diff"] == {"before": {}, "after": {"uuid": U1, "parent": P1, "type_id": "nvidia-231", "owned": True}}
    assert ok(c2, True)["uuid"] == u2 and c2["instance"]["parent"] == P2  # NUMA node 1: the second T4

    # real run: exactly what check mode said
    r1, r2 = host.play(*_both("present", False))
    assert ok(r1, True)["instance"] == c1["instance"] and r1["diff"] == c1["diff"]
    assert ok(r2, True)["instance"] == c2["instance"] and r2["actions"] == c2["actions"]
    assert sorted(host.instances()) == sorted([U1, u2])
    owned = json.loads((host.root / "var/lib/vgpuctl/state.json").read_text())["owned"]
    assert sorted(o["uuid"] for o in owned) == sorted([U1, u2])
    created = snapshot(host)

    # again, check and real: nothing to do, nothing touched; then absent in check mode
    results = host.play(*_both("present", True), *_both("present", False), *_both("absent", True))
    assert snapshot(host) == created
    for r in results[:4]:
        assert ok(r, False)["actions"] == []
    a1, a2 = results[4:]
    assert ok(a1, True)["actions"] == ["destroy " + U1] and a1["diff"]["after"] == {}
    assert ok(a2, True)["actions"] == ["destroy " + u2]

    # absent for real, then again in check mode and for real
    results = host.play(*_both("absent", False), *_both("absent", True), *_both("absent", False))
    assert [r["changed"] for r in results] == [True, True, False, False, False, False]
    assert all(not r.get("failed") for r in results)
    assert host.instances() == []


@pytest.mark.sim
def test_instance_failures(host):
    full = [host.create(P2, "nvidia-233") for _ in range(2)]  # the second T4 is full of T4-8Q (foreign)
    held = vgpuctl(host.root, "create", "-p", P1, "-t", "T4-2Q").stdout.strip()  # owned, then held by a "VM"
    direct = {
        "capacity": vgpuctl(host.root, "create", "-p", P2, "-t", "T4-8Q", "-u", U1, check=False),
        "unknown": vgpuctl(host.root, "create", "-p", P1, "-t", "T4-99Q", "-u", U1, check=False),
    }
    before = snapshot(host)
    tasks = []
    for check in (True, False):
        tasks += [
            {"vgpuctl.vgpu.vgpu_instance": {"uuid": U1, "type": "T4-8Q", "parent": P2}, "check_mode": check},
            {"vgpuctl.vgpu.vgpu_instance": {"uuid": U1, "type": "T4-99Q", "parent": P1}, "check_mode": check},
            {"vgpuctl.vgpu.vgpu_instance": {"uuid": held, "state": "absent"}, "check_mode": check},
            {"vgpuctl.vgpu.vgpu_instance": {"uuid": full[0], "state": "absent"}, "check_mode": check},
            {"vgpuctl.vgpu.vgpu_instance": {"uuid": held, "type": "T4-8Q"}, "check_mode": check},
        ]
    with host.hold(held):
        results = host.play(*tasks)
    assert snapshot(host) == before
    checked, real = results[:5], results[5:]
    for rs in (checked, real):
        failed(rs[0], 4, "no available instances of nvidia-233 on " + P2)
        failed(rs[1], 3, "type T4-99Q is not offered on parent " + P1)
        failed(rs[2], 6, "device %s is in use by pid" % held)
        failed(rs[3], 7, "was not created by vgpuctl")
        failed(rs[4], 5, "already taken by nvidia-231")
        assert not any(r["changed"] for r in rs)
    # a real run's message and exit code are vgpuctl's own, word for word
    assert (real[0]["msg"], real[0]["rc"]) == (direct["capacity"].stderr.strip()[len("vgpuctl: error: ") :], 4)
    assert (real[1]["msg"], real[1]["rc"]) == (direct["unknown"].stderr.strip()[len("vgpuctl: error: ") :], 3)
    # check mode predicts the same message where the module can (capacity, unknown type)
    assert checked[0]["msg"] == real[0]["msg"] and checked[1]["msg"] == real[1]["msg"]


# --- vgpu_config ----------------------------------------------------------------------------------------------------
DESIRED = {
    "version": 1,
    "instances": {
        "web-1": {"type": "T4-2Q", "parent": P1},
        "web-2": {"type": "T4-2Q", "placement": {"numa_node": 1}},
    },
}


def _config(check, **args):
    return {"vgpuctl.vgpu.vgpu_config": dict({"config": DESIRED}, **args), "check_mode": check}


@pytest.mark.sim
def test_config_apply(host):
    from vgpuctl.spec import derive_uuid

    w1, w2 = derive_uuid("web-1"), derive_uuid("web-2")
    dest = host.root / "etc" / "vgpuctl" / "vgpuctl.yaml"
    empty = snapshot(host)

    (c,) = host.play(_config(True))
    assert snapshot(host) == empty
    assert ok(c, True)["file_changed"] is True and c["converged"] is False
    assert [(a["op"], a["uuid"], a["parent"], a["type_id"]) for a in c["actions"]] == [
        ("create", w1, P1, "nvidia-231"),
        ("create", w2, P2, "nvidia-231"),
    ]
    assert c["diff"][0]["before"] == "" and '"web-1"' in c["diff"][0]["after"]
    assert c["diff"][1]["after"] == "".join(sorted("%s nvidia-231 on %s\n" % x for x in ((w1, P1), (w2, P2))))

    (r,) = host.play(_config(False))
    assert ok(r, True)["converged"] is True and r["diff"] == c["diff"]
    assert [(a["op"], a["uuid"], a["outcome"]) for a in r["actions"]] == [
        ("create", w1, "done"),
        ("create", w2, "done"),
    ]
    assert sorted(host.instances()) == sorted([w1, w2])
    assert vgpuctl(host.root, "check").returncode == 0  # vgpuctl itself agrees the host converged
    assert dest.read_bytes().startswith(b"# Managed by Ansible")
    converged = snapshot(host)

    # again: nothing to write, nothing to do; then a drop-in that adds one instance, in check mode
    dropin = {"version": 1, "instances": {"batch-1": {"type": "T4-2Q", "parent": P2}}}
    again = host.play(
        _config(True),
        _config(False),
        {"vgpuctl.vgpu.vgpu_config": {"config": dropin, "dest": "conf.d/batch.yaml"}, "check_mode": True},
    )
    assert snapshot(host) == converged
    for x in again[:2]:
        assert ok(x, False)["file_changed"] is False and x["converged"] is True and x["actions"] == []
    d = ok(again[2], True)
    assert [(a["op"], a["name"]) for a in d["actions"]] == [("create", "batch-1")]

    # the drop-in for real, then removing it again (check, real, real again)
    results = host.play(
        {"vgpuctl.vgpu.vgpu_config": {"config": dropin, "dest": "conf.d/batch.yaml"}},
        {"vgpuctl.vgpu.vgpu_config": {"dest": "conf.d/batch.yaml", "state": "absent"}, "check_mode": True},
        {"vgpuctl.vgpu.vgpu_config": {"dest": "conf.d/batch.yaml", "state": "absent"}},
        {"vgpuctl.vgpu.vgpu_config": {"dest": "conf.d/batch.yaml", "state": "absent"}},
    )
    for x, changed in zip(results, (True, True, True, False)):
        ok(x, changed)
    assert [(a["op"], a["name"]) for a in results[1]["actions"]] == [("destroy", None)]
    assert snapshot(host) == converged


@pytest.mark.sim
def test_config_failures(host):
    from vgpuctl.spec import derive_uuid

    held_spec = {"version": 1, "instances": {"held": {"type": "T4-2Q", "parent": P2}}}
    (setup,) = host.play({"vgpuctl.vgpu.vgpu_config": {"config": held_spec, "dest": "conf.d/held.yaml"}})
    ok(setup, True)
    held = derive_uuid("held")
    host.create(P1, "nvidia-230")  # a foreign T4-1Q: nothing else fits on the first T4 now
    bad_type = {"version": 1, "instances": {"x": {"type": "T4-99Q", "parent": P1}}}
    too_many = {"version": 1, "instances": dict(("x%d" % i, {"type": "T4-8Q", "parent": P2}) for i in range(3))}
    no_room = {"version": 1, "instances": {"big": {"type": "T4-8Q", "parent": P1}}}
    before = snapshot(host)
    tasks = []
    for check in (True, False):
        tasks += [
            {"vgpuctl.vgpu.vgpu_config": {"config": bad_type}, "check_mode": check},
            {"vgpuctl.vgpu.vgpu_config": {"config": too_many}, "check_mode": check},
        ]
    for args in ({"dest": "conf.d/held.yaml", "state": "absent"}, {"config": no_room}):
        tasks += [{"vgpuctl.vgpu.vgpu_config": args, "check_mode": True}, {"vgpuctl.vgpu.vgpu_config": args}]
    with host.hold(held):
        rs = host.play(*tasks)
    for r in (rs[0], rs[2]):  # rejected before anything is written: vgpuctl's message, exit 8
        failed(r, 8, "parent %s does not offer type T4-99Q" % P1)
        assert r["msg"].startswith(
            str(host.root / "etc" / "vgpuctl" / "vgpuctl.yaml")
        )  # the real path, not the temporary file
    for r in (rs[1], rs[3]):
        failed(r, 8, "3 instances of nvidia-233 pinned to %s, which holds at most 2" % P2)
    # in use: removing the drop-in would destroy a device a VM holds; check mode predicts apply's exit 13 and message
    chk, real = rs[4], rs[5]
    failed(chk, 13, "1 action(s) left (1 blocked, 0 failed)")
    assert chk["msg"] == real["msg"] and real["rc"] == 13 and chk["changed"] and real["changed"]
    assert chk["blocked"] == real["blocked"] and "in-use: in use by pid" in real["blocked"][0]
    # no capacity: vgpuctl's plan blocks the create (the T4 holds another type); the held destroy is still blocked
    chk, real = rs[6], rs[7]
    failed(chk, 13, "2 action(s) left (2 blocked, 0 failed)")
    assert chk["msg"] == real["msg"] and real["rc"] == 13 and chk["blocked"] == real["blocked"]
    assert [a["outcome"] for a in real["actions"]] == ["blocked", "blocked"]
    assert "type-mix" in real["blocked"][1]
    after = snapshot(host)
    assert after["instances"] == before["instances"]  # nothing created or destroyed
    assert set(after["etc"]) == {"vgpuctl.yaml"}  # only the real runs wrote: the drop-in is gone, the new file there


# --- the example fleet in docs/ansible ------------------------------------------------------------------------------
EXAMPLE = REPO / "docs" / "ansible"


def test_example_fleet_files_are_valid_for_vgpuctl(tmp_path):
    from vgpuctl.policy import load_policy
    from vgpuctl.spec import parse

    for group in ("t4_inference", "a16_vdi"):
        gv = yaml.safe_load((EXAMPLE / "group_vars" / (group + ".yml")).read_text())
        policy = tmp_path / group / "policy.yaml"
        policy.parent.mkdir()
        policy.write_text(yaml.safe_dump(gv["vgpu_policy"]))
        load_policy(policy)
        parse(json.dumps(gv["vgpu_desired"]), path=group)


@pytest.mark.sim
def test_example_site_playbook_on_a_t4_host(host):
    """docs/ansible/site.yml for one T4 host of the example inventory, pointed at the simulated t4x2 host."""

    def run(*extra):
        return subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(EXAMPLE / "inventory.yml"),
                str(EXAMPLE / "site.yml"),
                "--limit",
                "infer-01.example.net",
                "-e",
                "ansible_connection=local",
                "-e",
                "vgpuctl_root=%s" % host.root,
                "-e",
                "vgpuctl_libvirt_uri=none",
                *extra,
            ],
            env=ansible_env(host.root.parent),
            capture_output=True,
            text=True,
            timeout=120,
        )

    check = run("--check", "--diff")
    assert check.returncode == 0, check.stdout[-3000:]
    assert host.instances() == [] and "changed=3" in check.stdout  # directory, policy, desired state: nothing made
    real = run()
    assert real.returncode == 0, real.stdout[-3000:]
    assert len(host.instances()) == 4 and "changed=3" in real.stdout
    again = run("--check")
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout[-3000:]


# --- vgpu_migration_check -------------------------------------------------------------------------------------------
MIG_UUID = "aaaaaaaa-0000-4000-8000-000000000001"


def _migrating_domain(type_id, type_name):
    return (
        "<domain type='kvm'><name>render-1</name><uuid>11111111-2222-4333-8444-555555555555</uuid><metadata>"
        '<vgpuctl:vgpus xmlns:vgpuctl="https://vgpuctl.dev/xmlns/1"><vgpuctl:vgpu uuid="%s" parent="0000:af:00.0"'
        ' type="%s" backend="mdev" name="%s"/></vgpuctl:vgpus></metadata><devices>'
        "<hostdev mode='subsystem' type='mdev' model='vfio-pci'><source><address uuid='%s'/></source></hostdev>"
        "</devices></domain>" % (MIG_UUID, type_id, type_name, MIG_UUID)
    )


@pytest.mark.sim
def test_migration_check_answers_and_never_changes_anything(host):
    fits_xml = _migrating_domain("nvidia-232", "GRID T4-4Q")
    for p in (P1, P2):
        vgpuctl(host.root, "create", "--parent", p, "--type", "T4-16Q")
    before = snapshot(host)
    full, bad_board, bad_xml = host.play(
        {"vgpuctl.vgpu.vgpu_migration_check": {"xml": fits_xml}, "check_mode": True},
        {"vgpuctl.vgpu.vgpu_migration_check": {"xml": _migrating_domain("nvidia-232", "NVIDIA A16-4Q")}},
        {"vgpuctl.vgpu.vgpu_migration_check": {"xml": "not xml"}},
    )
    assert ok(full, False)["fits"] is False and full["fit"] == "no-capacity" and full["exit_code"] == 4
    assert full["vgpus"][0]["fit"] == "no-capacity" and "type-mix" in full["reason"]
    assert ok(bad_board, False)["fit"] == "incompatible" and bad_board["exit_code"] == 15
    failed(bad_xml, 2, "unusable")
    assert snapshot(host) == before
    for u in host.instances():
        vgpuctl(host.root, "destroy", u)
    (fits,) = host.play({"vgpuctl.vgpu.vgpu_migration_check": {"xml": fits_xml}})
    assert ok(fits, False)["fits"] is True and fits["vgpus"][0]["target_uuid"] == MIG_UUID
    assert fits["vgpus"][0]["parent"] in (P1, P2)


@pytest.mark.sim
def test_example_migrate_playbook_chooses_a_target_in_check_mode(host, tmp_path):
    """docs/ansible/migrate.yml with localhost as the only candidate, the domain XML given, in check mode."""
    inv = tmp_path / "inv.yml"
    inv.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {"source": {}},  # the source: this machine too, not a candidate
                    "children": {"vgpu_hosts": {"hosts": {"localhost": {}}}},
                }
            }
        )
    )

    def run(xml):
        return subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(inv),
                str(EXAMPLE / "migrate.yml"),
                "--check",
                "-e",
                "ansible_connection=local",
                "-e",
                "vgpuctl_root=%s" % host.root,
                "-e",
                "vgpuctl_libvirt_uri=none",
                "-e",
                json.dumps({"migrate_xml": xml, "migrate_domain": "render-1", "migrate_source": "source"}),
            ],
            env=ansible_env(host.root.parent),
            capture_output=True,
            text=True,
            timeout=120,
        )

    before = snapshot(host)
    good = run(_migrating_domain("nvidia-232", "GRID T4-4Q"))
    assert good.returncode == 0, good.stdout[-3000:]
    assert "render-1 goes to localhost" in good.stdout
    none = run(_migrating_domain("nvidia-999", "GRID T4-99Q"))
    assert none.returncode != 0 and "no candidate host can take render-1" in none.stdout, none.stdout[-3000:]
    assert "incompatible" in none.stdout
    assert snapshot(host) == before
