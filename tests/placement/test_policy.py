"""The policy file: schema, strictness, and errors with file, line and key."""

import subprocess
import sys

import pytest

from vgpuctl.errors import ConfigError
from vgpuctl.policy import NumaMode, Policy, Strategy, load_policy, parse_policy

FULL = """\
version: 1
numa: require
default:
  strategy: spread
  series: [q, B]
gpus:
  - name: a16
    match: {model: "A16*", vendor: nvidia, numa_node: [0, 1]}
    types: [A16-2Q, nvidia-703]
  - match:
      pci: ["3b:00.0", "0000:3c:*"]
      device: "0x1EB8"
    reserved_for: [gold]
quotas:
  acme: {max_instances: 4, max_framebuffer: 16G}
  "*": {max_framebuffer: 2048}
anti_affinity:
  - name: db
    domains: ["db-*"]
"""


def test_full_schema():
    p = parse_policy(FULL, path="policy.yaml")
    assert p.numa is NumaMode.REQUIRE and p.default.strategy is Strategy.SPREAD and p.default.series == ("Q", "B")
    a16, gold = p.rules
    assert a16.name == "a16" and a16.match.models == ("a16*",) and a16.match.vendor_ids == ("0x10de",)
    assert a16.types == ("a16-2q", "nvidia-703") and a16.line == 7
    assert gold.name == "gpus[1]" and gold.reserved and gold.reserved_for == ("gold",)
    assert gold.match.pci == ("0000:3b:00.0", "0000:3c:*") and gold.match.device_ids == ("0x1eb8",)
    assert p.quota("acme").max_framebuffer_mib == 16384 and p.quota("other").max_framebuffer_mib == 2048
    assert p.quota(None) is None
    assert p.groups_of("db-7") == ("db",) and p.groups_of("web") == ()


def test_missing_file_is_the_default(tmp_path):
    assert load_policy(tmp_path / "policy.yaml") == Policy()
    with pytest.raises(ConfigError):
        load_policy(tmp_path / "policy.yaml", missing_ok=False)


@pytest.mark.parametrize(
    "text,line,key",
    [
        ("numa: prefer\n", 1, "version"),
        ("version: 2\n", 1, "version"),
        ("version: 1\nstrategy: pack\n", 2, "strategy"),
        ("version: 1\ndefault:\n  strategy: fill\n", 3, "default.strategy"),
        ("version: 1\ndefault:\n  series: [Q, X]\n", 3, "default.series"),
        ("version: 1\ngpus:\n  - match: {pci: 3b:00.0}\n    stratgy: pack\n", 4, "gpus[0].stratgy"),
        ("version: 1\ngpus:\n  - strategy: pack\n", 3, "gpus[0].match"),
        ("version: 1\ngpus:\n  - match: {pci: ../x}\n", 3, "gpus[0].match.pci"),
        ("version: 1\ngpus:\n  - match: {vendor: amd}\n", 3, "gpus[0].match.vendor"),
        ("version: 1\ngpus:\n  - match: {numa_node: -1}\n", 3, "gpus[0].match.numa_node"),
        ("version: 1\nquotas:\n  acme: {max_instances: many}\n", 3, "quotas.acme.max_instances"),
        ("version: 1\nquotas:\n  acme: {max_framebuffer: 3 potatoes}\n", 3, "quotas.acme.max_framebuffer"),
        ("version: 1\nanti_affinity:\n  - domains: [a]\n", 3, "anti_affinity[0].name"),
        ("version: 1\nnuma: prefer\nnuma: require\n", 3, "numa"),
        ("version: 1\ndefault:\n  reserved: false\n  reserved_for: [x]\n", 3, "default.reserved"),
    ],
)
def test_errors_name_file_line_and_key(text, line, key):
    with pytest.raises(ConfigError) as e:
        parse_policy(text, path="/etc/vgpuctl/policy.yaml")
    assert (e.value.path, e.value.line, e.value.key) == ("/etc/vgpuctl/policy.yaml", line, key)
    assert e.value.exit_code == 8


def test_yaml_syntax_error_has_a_line():
    with pytest.raises(ConfigError) as e:
        parse_policy("version: 1\ngpus: [\n", path="p.yaml")
    assert e.value.line is not None


def test_list_does_not_import_yaml():
    code = "import sys; from vgpuctl.cli import cli; import vgpuctl.policy, vgpuctl.placement; print('yaml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
