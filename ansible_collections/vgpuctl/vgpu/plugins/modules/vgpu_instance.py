#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vgpuctl developers
# Apache License 2.0 (see LICENSE in the vgpuctl repository)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vgpu_instance
short_description: One vGPU instance present or absent, optionally attached to a libvirt domain
version_added: 0.1.0
description:
  - Makes sure one vGPU instance (a mediated device) exists with the given type, on the given parent or on the
    parent vgpuctl's placement policy picks, or that it does not exist.
  - Runs C(vgpuctl list --json) to see the host, then at most one of C(vgpuctl create), C(vgpuctl place) +
    C(vgpuctl create), C(vgpuctl attach), C(vgpuctl destroy) or C(vgpuctl detach).
  - An existing instance with another type or on another parent is not replaced (that would destroy a device a VM
    may need); the task fails and says so.
  - Instances created here are owned by vgpuctl.  On a host that also has a desired state (M(vgpuctl.vgpu.vgpu_config),
    the vgpuctl service), C(vgpuctl apply) destroys owned instances the desired state does not list; manage an
    instance with one of the two, not both.
options:
  state:
    description:
      - V(present) creates the instance if it does not exist (and attaches it to O(domain)).
      - V(absent) destroys it if it exists (detaching it from O(domain) first when given).
    type: str
    choices: [present, absent]
    default: present
  uuid:
    description:
      - The instance's uuid.
    type: str
  name:
    description:
      - Derive the uuid from this name, exactly as vgpuctl does for a desired-state instance without C(uuid), so a
        name always means the same device.
    type: str
  type:
    description:
      - Type id (V(nvidia-231)), name (V(GRID T4-2Q)) or profile (V(T4-2Q)).  Required with O(state=present).
    type: str
  parent:
    description:
      - Parent device, a PCI address (V(0000:3b:00.0)) or a name (V(mtty)).
      - Without O(parent), C(vgpuctl place) picks one under the host's placement policy, using O(placement).
    type: str
  placement:
    description:
      - Placement request for C(vgpuctl place) when O(parent) is not given.
    type: dict
    suboptions:
      tenant:
        description: Tenant label for quotas and reserved GPUs.
        type: str
      numa_node:
        description: Only parents on this NUMA node (the placement policy's V(require) mode).
        type: int
      group:
        description: Anti-affinity group label.
        type: str
  domain:
    description:
      - libvirt domain the instance is attached to (C(vgpuctl attach)); needs libvirt (not O(libvirt_uri=none)).
      - With O(state=absent) the instance is detached from it (C(vgpuctl detach)) before it is destroyed.
    type: str
  attach:
    description:
      - Which definition of O(domain) gets the device; V(both) is C(--config --live).
      - Default V(config) (the persistent definition).
    type: str
    choices: [live, config, both]
  foreign:
    description:
      - With O(state=absent), also destroy a device vgpuctl did not create (C(vgpuctl destroy --foreign)).
    type: bool
    default: false
  force:
    description:
      - With O(state=absent), destroy even though a domain definition that is not running still references the
        device (C(vgpuctl destroy --force)).  Never overrides a running domain or a process holding the device.
    type: bool
    default: false
extends_documentation_fragment:
  - vgpuctl.vgpu.vgpuctl
attributes:
  check_mode:
    support: full
    description:
      - Predicts the real run from the host's records, including the failures vgpuctl would report (unknown parent
        or type, no capacity, uuid taken, not owned, in use) with the exit code vgpuctl would return.
  diff_mode:
    support: full
    description: Before and after of the instance record (uuid, parent, type_id, owned, domains).
author:
  - vgpuctl developers
"""

EXAMPLES = r"""
- name: A T4-2Q vGPU on the first GPU, uuid derived from its name
  vgpuctl.vgpu.vgpu_instance:
    name: web-1
    type: T4-2Q
    parent: "0000:3b:00.0"

- name: A vGPU wherever the placement policy puts it, attached to a VM's persistent definition
  vgpuctl.vgpu.vgpu_instance:
    uuid: 0f4c7b0e-5a3d-4c1e-9b1a-1f2e3d4c5b6a
    type: nvidia-231
    placement:
      tenant: team-a
      numa_node: 0
    domain: web-1
    attach: config

- name: Gone (refused while a VM or process uses it)
  vgpuctl.vgpu.vgpu_instance:
    uuid: 0f4c7b0e-5a3d-4c1e-9b1a-1f2e3d4c5b6a
    state: absent
"""

RETURN = r"""
uuid:
  description: The instance's uuid (derived from O(name) when given).
  returned: always
  type: str
  sample: 0f4c7b0e-5a3d-4c1e-9b1a-1f2e3d4c5b6a
instance:
  description:
    - The instance's C(vgpuctl list --json) record after the task; in check mode the predicted record; empty when
      absent.
  returned: always
  type: dict
  sample: {uuid: 0f4c7b0e-5a3d-4c1e-9b1a-1f2e3d4c5b6a, parent: "0000:3b:00.0", type_id: nvidia-231, owned: true}
actions:
  description: What was done (or, in check mode, would be done), as C(vgpuctl) command lines without global options.
  returned: always
  type: list
  elements: str
  sample: ["create --parent 0000:3b:00.0 --type nvidia-231 --uuid 0f4c7b0e-5a3d-4c1e-9b1a-1f2e3d4c5b6a"]
rc:
  description: vgpuctl's exit code when it failed (see docs/exit-codes.md), or the one it would return in check mode.
  returned: failure
  type: int
  sample: 4
msg:
  description: vgpuctl's one-line error message on failure.
  returned: failure
  type: str
  sample: no available instances of nvidia-233 on 0000:3b:00.0 (available_instances is 0); destroy one or choose another parent
"""

import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vgpuctl.vgpu.plugins.module_utils.vgpuctl import (
    COMMON_ARGS,
    RC_EXISTS,
    RC_IN_USE,
    RC_NO_CAPACITY,
    RC_NOT_FOUND,
    RC_NOT_OWNED,
    Vgpuctl,
    VgpuctlError,
    canonical_uuid,
    derive_uuid,
    fail,
    instance_view,
    resolve_type,
)

ARGUMENT_SPEC = dict(
    state=dict(type="str", choices=["present", "absent"], default="present"),
    uuid=dict(type="str"),
    name=dict(type="str"),
    type=dict(type="str"),
    parent=dict(type="str"),
    placement=dict(
        type="dict",
        options=dict(
            tenant=dict(type="str"),
            numa_node=dict(type="int"),
            group=dict(type="str"),
        ),
    ),
    domain=dict(type="str"),
    attach=dict(type="str", choices=["live", "config", "both"]),
    foreign=dict(type="bool", default=False),
    force=dict(type="bool", default=False),
    **COMMON_ARGS,
)
RULES = dict(
    mutually_exclusive=[("uuid", "name"), ("parent", "placement")],
    required_one_of=[("uuid", "name")],
    required_if=[("state", "present", ("type",))],
    required_by=dict(attach=("domain",)),
)
ATTACH_FLAGS = {"config": ["--config"], "live": ["--live"], "both": ["--config", "--live"]}
PCI_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


class Refusal(Exception):
    """A failure predicted from the host's records: the message and exit code vgpuctl gives for it.

    ``command``: the vgpuctl command that refuses it.  A real run runs that command anyway, so that the task fails
    with vgpuctl's own message and exit code (and succeeds if the host changed meanwhile); check mode reports the
    prediction.  Refusals without a command are the module's own (nothing in vgpuctl would refuse them)."""

    def __init__(self, msg, rc, command=None):
        super(Refusal, self).__init__(msg)
        self.msg = msg
        self.rc = rc
        self.command = command


def canonical_parent(name):
    """As vgpuctl spells a parent: PCI addresses with their domain, lowercase; other names as given."""
    m = PCI_RE.match(name.strip())
    if not m:
        return name
    return ("%s:%s:%s.%s" % (m.group(1) or "0000", m.group(2), m.group(3), m.group(4))).lower()


class InstanceTask(object):
    """The desired state of one instance: read the host, decide the vgpuctl commands, run them unless checking."""

    def __init__(self, module, cli):
        self.module = module
        self.cli = cli
        self.p = module.params
        self.uuid = self._uuid()
        self.actions = []  #: vgpuctl argument lists, in the order they run
        self.done = 0  #: how many of them ran

    def _uuid(self):
        if self.p["name"]:
            return derive_uuid(self.p["name"])
        u = canonical_uuid(self.p["uuid"])
        if u is None:
            self.module.fail_json(msg="invalid uuid %r" % self.p["uuid"], rc=2)
        return u

    def current(self):
        for rec in self.cli.instances():
            if rec.get("uuid") == self.uuid:
                return rec
        return None

    def _libvirt(self):
        return (self.p["libvirt_uri"] or "qemu:///system") != "none"

    # --- present -------------------------------------------------------------------------------------------------
    def present(self, before):
        """The record after the run; appends the commands that get there."""
        if before is None:
            parent = self._parent()
            vtype = self._creatable(parent)
            self.actions.append(["create", "--parent", parent, "--type", vtype["type_id"], "--uuid", self.uuid])
            after = dict(
                uuid=self.uuid,
                parent=parent,
                type_id=vtype["type_id"],
                type_name=vtype.get("name"),
                owned=True,
                domains=[] if self._libvirt() else None,
                used_by=[],
            )
        else:
            self._same_device(before)
            after = dict(before)
        domain = self.p["domain"]
        if domain:
            if not self._libvirt():
                raise Refusal(
                    "attaching %s to domain %s needs libvirt, and libvirt_uri is none" % (self.uuid, domain), 2
                )
            if domain not in (after.get("domains") or []):
                self.actions.append(
                    ["attach", domain, "--uuid", self.uuid] + ATTACH_FLAGS[self.p["attach"] or "config"]
                )
                after["domains"] = sorted((after.get("domains") or []) + [domain])
        return after

    def _parent(self):
        if self.p["parent"]:
            return canonical_parent(self.p["parent"])
        args = ["place", "--type", self.p["type"]]
        req = self.p["placement"] or {}
        if req.get("tenant"):
            args += ["--tenant", req["tenant"]]
        if req.get("numa_node") is not None:
            args += ["--numa-node", str(req["numa_node"]), "--numa", "require"]
        if req.get("group"):
            args += ["--group", req["group"]]
        if self.p["domain"]:
            args += ["--domain", self.p["domain"]]
        decision = self.cli.run(*args)  # vgpuctl place changes nothing: the same in check mode
        if isinstance(decision, list):
            decision = decision[0] if decision else {}
        decision = decision if isinstance(decision, dict) else {}
        if not decision.get("placed") or not decision.get("parent"):
            why = "; ".join(
                "%s: %s %s" % (r.get("gpu"), r.get("reason"), r.get("detail") or "")
                for r in decision.get("refusals") or []
            )
            raise Refusal(
                "no GPU can take a vGPU of type %s under the placement policy%s"
                % (self.p["type"], (": " + why) if why else ""),
                RC_NO_CAPACITY,
            )
        return decision["parent"]

    def _creatable(self, parent):
        """vgpuctl create's preconditions on the records: unknown parent or type, no capacity."""
        create = ["create", "--parent", parent, "--type", self.p["type"], "--uuid", self.uuid]
        parents = [r.get("parent") for r in self.cli.parents()]
        if parent not in parents:
            raise Refusal(
                "parent %s is not registered for mediated devices; known parents: %s"
                % (parent, ", ".join(parents) or "none"),
                RC_NOT_FOUND,
                create,
            )
        types = self.cli.types(parent)
        vtype = resolve_type(types, parent, self.p["type"])
        if vtype is None:
            raise Refusal(
                "type %s is not offered on parent %s; types there: %s"
                % (self.p["type"], parent, ", ".join(t["type_id"] for t in types)),
                RC_NOT_FOUND,
                create,
            )
        if (vtype.get("available") or 0) <= 0:
            raise Refusal(
                "no available instances of %s on %s (available_instances is 0); destroy one or choose "
                "another parent" % (vtype["type_id"], parent),
                RC_NO_CAPACITY,
                create,
            )
        return vtype

    def _same_device(self, rec):
        vtype = resolve_type(self.cli.types(rec["parent"]), rec["parent"], self.p["type"])
        parent = canonical_parent(self.p["parent"]) if self.p["parent"] else None
        if vtype is None or vtype["type_id"] != rec["type_id"] or (parent and parent != rec["parent"]):
            raise Refusal(
                "uuid %s is already taken by %s on %s; destroy it first (state: absent) to change its type "
                "or parent" % (self.uuid, rec["type_id"], rec["parent"]),
                RC_EXISTS,
            )

    # --- absent --------------------------------------------------------------------------------------------------
    def absent(self, before):
        if before is None:
            return None
        destroy = (
            ["destroy", self.uuid]
            + (["--foreign"] if self.p["foreign"] else [])
            + (["--force"] if self.p["force"] else [])
        )
        if not before.get("owned") and not self.p["foreign"]:
            raise Refusal(
                "device %s was not created by vgpuctl (use --foreign to destroy it anyway)" % self.uuid,
                RC_NOT_OWNED,
                destroy,
            )
        if before.get("used_by"):
            raise Refusal(
                "device %s is in use by %s; stop or detach the VM first (nothing was changed)"
                % (self.uuid, ", ".join(before["used_by"])),
                RC_IN_USE,
                destroy,
            )
        domain = self.p["domain"]
        if domain and domain in (before.get("domains") or []):
            self.actions.append(["detach", domain, "--uuid", self.uuid] + ATTACH_FLAGS[self.p["attach"] or "config"])
        self.actions.append(destroy)
        return None

    # --- the one place that writes -------------------------------------------------------------------------------
    def execute(self):
        for args in self.actions:
            self.cli.run(*args)
            self.done += 1


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, **RULES)
    task = InstanceTask(module, Vgpuctl(module))
    try:
        before = task.current()
        try:
            after = task.present(before) if module.params["state"] == "present" else task.absent(before)
        except Refusal as e:
            if module.check_mode or e.command is None:
                module.fail_json(
                    msg=e.msg,
                    rc=e.rc,
                    changed=False,
                    uuid=task.uuid,
                    instance=instance_view(before),
                    predicted=module.check_mode,
                )
            task.actions = [e.command]  # let vgpuctl refuse it: its message, its exit code
            after = None
        changed = bool(task.actions)
        if changed and not module.check_mode:
            task.execute()
            after = task.current()
    except VgpuctlError as e:
        fail(module, e, changed=task.done > 0, uuid=task.uuid)
    result = dict(
        changed=changed, uuid=task.uuid, instance=instance_view(after), actions=[" ".join(a) for a in task.actions]
    )
    if module._diff:
        result["diff"] = dict(before=instance_view(before), after=instance_view(after))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
