# -*- coding: utf-8 -*-
# Copyright: vgpuctl developers
# Apache License 2.0 (see LICENSE in the vgpuctl repository)
"""Options every vgpuctl.vgpu module shares: where vgpuctl is and which host it looks at."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  vgpuctl_path:
    description:
      - The C(vgpuctl) executable on the managed host.
      - A bare name is looked up on E(PATH), then next to the Python interpreter that runs the module (a
        virtual environment's C(bin) directory).
    type: path
    default: vgpuctl
  root:
    description:
      - Host root passed as C(vgpuctl --root); sysfs is I(root)/sys, the state file I(root)/var/lib/vgpuctl, the
        desired-state files I(root)/etc/vgpuctl.
      - Only for tests (a simulated host) and unusual hosts; when unset vgpuctl's own default (C(/) or
        E(VGPUCTL_ROOT)) applies.
    type: path
  libvirt_uri:
    description:
      - libvirt URI passed as C(vgpuctl --connect); V(none) disables libvirt (no domain checks, no attaching).
      - When unset vgpuctl's own default (V(qemu:///system) or E(VGPUCTL_LIBVIRT_URI)) applies.
    type: str
  lock_timeout:
    description:
      - Seconds a changing vgpuctl command waits for another vgpuctl's host lock (C(vgpuctl --lock-timeout)).
    type: float
requirements:
  - vgpuctl on the managed host (the modules run it with C(--json) and parse its records).
notes:
  - Errors from vgpuctl fail the task with vgpuctl's one-line message in RV(msg) and its exit code in RV(rc)
    (see docs/exit-codes.md in the vgpuctl repository).
  - These modules can be put in a C(module_defaults) group as C(group/vgpuctl.vgpu.vgpu).
"""
