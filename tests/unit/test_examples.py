"""The example configuration shipped in /usr/share/doc/vgpuctl/examples parses with vgpuctl's own strict readers."""

from pathlib import Path

from vgpuctl import spec
from vgpuctl.policy import load_policy
from vgpuctl.profiles import load_profiles

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_desired_state_examples_parse_and_merge():
    desired = spec.load_files([EXAMPLES / "vgpuctl.yaml", EXAMPLES / "conf.d" / "tenant-acme.yaml"], EXAMPLES)
    names = {d.name for d in desired.instances}
    assert names == {"web-1", "web-2", "acme-render-1"}


def test_policy_example_parses():
    policy = load_policy(EXAMPLES / "policy.yaml", missing_ok=False)
    assert dict(policy.quotas)["acme"].max_instances == 4


def test_profiles_example_parses():
    profiles = load_profiles(EXAMPLES / "profiles.yaml", missing_ok=False)
    assert profiles.names() == ("gold", "batch")
