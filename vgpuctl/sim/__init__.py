"""A simulated vGPU host: a FUSE filesystem that behaves like a Linux 6.1 kernel's sysfs for a hardware profile.

``vgpuctl-sim start PROFILE ROOT`` (or ``SimHost``) mounts it at ROOT/sys; ``materialize`` writes a profile's
static tree as plain files.  See ``vgpuctl/sim/profile.py`` for the profile schema and ROOT/sys/.vgpusim/README
(``machine.CONTROL_README``) for the test controls.
"""

from __future__ import annotations

from vgpuctl.sim.control import SimHost
from vgpuctl.sim.daemon import materialize
from vgpuctl.sim.profile import list_profiles, load_profile

__all__ = ["SimHost", "materialize", "list_profiles", "load_profile"]
