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


@pytest.mark.parametrize("err", [
    errors.AttachedElsewhere("u1", ["web"]),
    errors.GpuBusy("0000:4a:00.0", "scheduler", ["0000:4a:00.4"]),
    errors.ForeignManaged("u1", "/etc/mdevctl.d/p/u1", "auto"),
    errors.ProfileLimit("gold", "acme", 2, 2, "profiles.yaml:3"),
    errors.SriovDisabled("0000:4a:00.0"),
])
def test_message_args_and_str_agree(err):
    assert err.args == (err.message,)
    assert str(err) == " ".join(err.message.split()) and err.message


def test_subclasses_carry_their_own_fields_not_a_parents_fakes():
    e = errors.ProfileLimit("gold", "acme", 2, 2)
    assert e.exit_code == 4 and not isinstance(e, errors.NoCapacity) and not hasattr(e, "parent")
    assert (e.profile, e.tenant, e.held, e.limit) == ("gold", "acme", 2, 2)
    g = errors.GpuBusy("0000:4a:00.0", "scheduler", ["vm1"])
    assert g.exit_code == 6 and not hasattr(g, "uuid") and (g.gpu, g.setting, g.running) == (
        "0000:4a:00.0", "scheduler", ("vm1",))
    s = errors.SriovDisabled("0000:4a:00.0")
    assert s.exit_code == 3 and not isinstance(s, errors.UnknownParent) and s.gpu == "0000:4a:00.0"
    a = errors.AttachedElsewhere("u1", ["web"])
    assert isinstance(a, errors.DeviceInUse) and a.holders == ("domain 'web'",) and "already attached" in str(a)
