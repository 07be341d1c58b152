#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vgpuctl developers
# Apache License 2.0 (see LICENSE in the vgpuctl repository)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vgpu_migration_check
short_description: Ask a candidate target host whether it can take a migrating domain's vGPUs
version_added: 0.1.0
description:
  - Runs C(vgpuctl migrate check) on the managed host (the candidate target) and returns, for every vGPU of the
    domain, whether it fits there, where it would land, and why not (see docs/migration.md).
  - A host that cannot take the domain is an answer, not a failure; the task fails only when the check itself could
    not run (bad XML, vgpuctl missing, the source's libvirt unreachable).
  - Never changes anything; runs the same in check mode. The migration itself stays with C(virsh migrate --live).
options:
  xml:
    description:
      - The domain XML from the source host (C(virsh dumpxml DOMAIN) there). Exactly one of O(xml) and O(domain).
    type: str
  domain:
    description:
      - The domain's name, read from the source's libvirt at O(source_uri) (read-only).
    type: str
  source_uri:
    description:
      - The source host's libvirt URI, with O(domain), for example V(qemu+ssh://src.example/system).
    type: str
  source_driver:
    description:
      - The source's NVIDIA vGPU manager version; NVIDIA migrates only between equal versions.
    type: str
  policy:
    description:
      - A placement policy file on the target instead of its C(/etc/vgpuctl/policy.yaml).
    type: path
extends_documentation_fragment:
  - vgpuctl.vgpu.vgpuctl
attributes:
  check_mode:
    support: full
    description: Reads only; the same result in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to diff.
author:
  - vgpuctl developers
"""

EXAMPLES = r"""
- name: Read the domain XML on the source
  ansible.builtin.command: virsh dumpxml render-1
  delegate_to: "{{ source_host }}"
  register: dumped
  changed_when: false

- name: Ask every candidate host
  vgpuctl.vgpu.vgpu_migration_check:
    xml: "{{ dumped.stdout }}"
    source_driver: "550.54.10"
  register: preflight

- name: The hosts that can take it
  ansible.builtin.debug:
    msg: "{{ ansible_play_hosts | map('extract', hostvars, 'preflight') | selectattr('fits') | list | length }}"
"""

RETURN = r"""
fits:
  description: Whether every vGPU of the domain fits on this host now.
  returned: always
  type: bool
fit:
  description:
    - The domain's answer, V(fits), V(no-capacity) (the type is offered but no GPU has room now) or V(incompatible)
      (this host cannot run it at all, for example no such type, another vGPU manager version or board).
  returned: always
  type: str
  sample: fits
vgpus:
  description: C(vgpuctl migrate check --json) records (schema C(vgpuctl.migration-check/v1)), one per vGPU.
  returned: always
  type: list
  elements: dict
  sample:
    - {schema: vgpuctl.migration-check/v1, uuid: aaaaaaaa-0000-4000-8000-000000000001, type_id: nvidia-232,
       type_name: GRID T4-4Q, fit: fits, parent: "0000:3b:00.0", gpu: "0000:3b:00.0",
       target_uuid: aaaaaaaa-0000-4000-8000-000000000001, keeps_uuid: true, reason: null}
reason:
  description: vgpuctl's one-line message when the domain does not fit; empty when it fits.
  returned: always
  type: str
exit_code:
  description: vgpuctl's exit code when the domain does not fit, 4 (no capacity now) or 15 (incompatible).
  returned: when the domain does not fit
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vgpuctl.vgpu.plugins.module_utils.vgpuctl import (
    COMMON_ARGS,
    RC_MIGRATION_INCOMPATIBLE,
    RC_NO_CAPACITY,
    Vgpuctl,
    VgpuctlError,
    fail,
)

ARGUMENT_SPEC = dict(
    xml=dict(type="str"),
    domain=dict(type="str"),
    source_uri=dict(type="str"),
    source_driver=dict(type="str"),
    policy=dict(type="path"),
    **COMMON_ARGS,
)


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
        required_one_of=[("xml", "domain")],
        mutually_exclusive=[("xml", "domain")],
        required_together=[("domain", "source_uri")],
    )
    p = module.params
    cli = Vgpuctl(module)
    try:
        records = cli.migrate_check(
            xml=p["xml"],
            domain=p["domain"],
            source_uri=p["source_uri"],
            source_driver=p["source_driver"],
            policy=p["policy"],
        )
        module.exit_json(changed=False, fits=True, fit="fits", vgpus=records or [], reason="")
    except VgpuctlError as e:
        if e.rc in (RC_NO_CAPACITY, RC_MIGRATION_INCOMPATIBLE) and isinstance(e.data, list):
            fit = "incompatible" if e.rc == RC_MIGRATION_INCOMPATIBLE else "no-capacity"
            module.exit_json(changed=False, fits=False, fit=fit, vgpus=e.data, reason=e.msg, exit_code=e.rc)
        fail(module, e)


if __name__ == "__main__":
    main()
