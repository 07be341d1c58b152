#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vgpuctl developers
# Apache License 2.0 (see LICENSE in the vgpuctl repository)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vgpu_info
short_description: Parents, vGPU types with capacity, and instances of a vGPU host
version_added: 0.1.0
description:
  - Reads the managed host with C(vgpuctl parents --json), C(vgpuctl types --json) and C(vgpuctl list --json) and
    returns the records as they are, for use in later tasks.
  - Never changes anything; runs the same in check mode.
options:
  parent:
    description:
      - Only this parent device (PCI address such as V(0000:3b:00.0), or a name such as V(mtty)).
    type: str
  gather:
    description:
      - Which record lists to read; leaving one out saves a vgpuctl run.
    type: list
    elements: str
    choices: [parents, types, instances]
    default: [parents, types, instances]
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
- name: Read the host's vGPU inventory
  vgpuctl.vgpu.vgpu_info:
  register: vgpu

- name: Free T4-2Q slots per parent
  ansible.builtin.debug:
    msg: "{{ vgpu.types | selectattr('name', 'search', 'T4-2Q$') | items2dict(key_name='parent', value_name='available') }}"

- name: Instances used by a VM right now
  ansible.builtin.debug:
    msg: "{{ vgpu.instances | selectattr('used_by') | map(attribute='uuid') | list }}"

- name: Only the types of one GPU, against a simulated host
  vgpuctl.vgpu.vgpu_info:
    parent: "0000:3b:00.0"
    gather: [types]
    root: /tmp/simhost
    libvirt_uri: none
"""

RETURN = r"""
parents:
  description: C(vgpuctl parents --json) records (schema C(vgpuctl.parent/v1)); empty when not gathered.
  returned: always
  type: list
  elements: dict
  sample:
    - {schema: vgpuctl.parent/v1, parent: "0000:3b:00.0", backend: mdev, vendor: nvidia, numa_node: 0,
       driver: nvidia, gpu: "0000:3b:00.0", is_vf: false, types: 17, instances: 1}
types:
  description:
    - C(vgpuctl types --json) records (schema C(vgpuctl.type/v1)), one per type and parent, with C(available) and
      C(max_instance) instances, C(framebuffer_mib) and C(num_heads).
  returned: always
  type: list
  elements: dict
  sample:
    - {schema: vgpuctl.type/v1, parent: "0000:3b:00.0", type_id: nvidia-231, name: GRID T4-2Q, available: 8,
       max_instance: 8, framebuffer_mib: 2048, num_heads: 4}
instances:
  description:
    - C(vgpuctl list --json) records (schema C(vgpuctl.instance/v1)); C(owned) says whether vgpuctl created it,
      C(used_by) which processes hold it, C(domains) and C(running) which libvirt domains reference it (null with
      O(libvirt_uri=none)).
  returned: always
  type: list
  elements: dict
  sample:
    - {schema: vgpuctl.instance/v1, uuid: 0f4c7b0e-5a3d-4c1e-9b1a-1f2e3d4c5b6a, parent: "0000:3b:00.0",
       type_id: nvidia-231, type_name: GRID T4-2Q, owned: true, domains: [web-1], running: true, used_by: []}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vgpuctl.vgpu.plugins.module_utils.vgpuctl import COMMON_ARGS, Vgpuctl, VgpuctlError, fail

ARGUMENT_SPEC = dict(
    parent=dict(type="str"),
    gather=dict(
        type="list",
        elements="str",
        choices=["parents", "types", "instances"],
        default=["parents", "types", "instances"],
    ),
    **COMMON_ARGS,
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    cli = Vgpuctl(module)
    parent = module.params["parent"]
    gather = module.params["gather"]
    result = dict(changed=False, parents=[], types=[], instances=[])
    try:
        if "parents" in gather:
            result["parents"] = [p for p in cli.parents() if not parent or p.get("parent") == parent]
        if "types" in gather:
            result["types"] = cli.types(parent)
        if "instances" in gather:
            result["instances"] = cli.instances(parent)
    except VgpuctlError as e:
        fail(module, e)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
