#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vgpuctl developers
# Apache License 2.0 (see LICENSE in the vgpuctl repository)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vgpu_config
short_description: Converge a vGPU host to a whole desired state with vgpuctl plan/apply
version_added: 0.1.0
description:
  - Writes a vgpuctl desired-state document (inline O(config) or a file O(src) on the managed host) to O(dest),
    one of the files vgpuctl reads (I(root)/etc/vgpuctl/vgpuctl.yaml or I(root)/etc/vgpuctl/conf.d/*.yaml), then
    runs C(vgpuctl apply --json); owned instances the desired state does not list are destroyed, missing ones
    created, attachments made.
  - Without O(config) and O(src), the files already on the host are applied as they are.
  - The new document is planned (C(vgpuctl plan --json)) before it is written, so a document vgpuctl rejects
    (unknown key, unknown type, more instances pinned to a GPU than it holds) fails the task with vgpuctl's
    message and changes nothing.
  - The schema of the document is in docs/desired-state.md of the vgpuctl repository (C(version) V(1) and
    C(instances) keyed by name, each with C(type), C(parent) or C(placement), optional C(uuid), C(domain),
    C(attach)).
options:
  config:
    description:
      - The desired-state document as data.  C(version) V(1) is added when missing.
      - It is written as JSON (a subset of YAML) under a one-line header, so the same data always gives the same
        bytes.
    type: dict
  src:
    description:
      - A desired-state file on the managed host, written to O(dest) byte for byte.
    type: path
  dest:
    description:
      - The desired-state file to manage; must be I(root)/etc/vgpuctl/vgpuctl.yaml or a C(.yaml) file in
        I(root)/etc/vgpuctl/conf.d.  A relative path is taken relative to I(root)/etc/vgpuctl.
    type: path
    default: vgpuctl.yaml
  state:
    description:
      - V(present) writes O(config) or O(src) to O(dest) and applies.
      - V(absent) removes O(dest) (if it exists) and applies what the remaining files ask for.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - vgpuctl.vgpu.vgpuctl
attributes:
  check_mode:
    support: full
    description:
      - Runs C(vgpuctl plan --json --config FILE ...) on the host without writing the new document - the files
        vgpuctl will read, with a temporary copy of the new document in place of O(dest).  The task is changed exactly when the file or the host would change, and fails
        with exit code 13 when vgpuctl apply would (blocked actions - in use, type unknown, no placement, no
        libvirt; more creates of a type on a parent than it has available).
  diff_mode:
    support: full
    description: The desired-state file's text, and the host's instances (C(uuid type on parent)) before and after.
author:
  - vgpuctl developers
notes:
  - C(vgpuctl apply) destroys every instance vgpuctl owns that the desired state does not list, including ones
    made by M(vgpuctl.vgpu.vgpu_instance) or C(vgpuctl create).  Manage a host with one or the other.
"""

EXAMPLES = r"""
- name: Inference hosts - four T4-4Q per host, placed by the policy, two attached to VMs
  vgpuctl.vgpu.vgpu_config:
    config:
      version: 1
      instances:
        infer-a:
          type: T4-4Q
          parent: "0000:3b:00.0"
          domain: infer-a
        infer-b:
          type: T4-4Q
          placement: {numa_node: 1}

- name: A team's drop-in, next to the main file
  vgpuctl.vgpu.vgpu_config:
    dest: conf.d/team-b.yaml
    src: /srv/vgpu/team-b.yaml

- name: Remove the drop-in (its instances are destroyed if nothing uses them)
  vgpuctl.vgpu.vgpu_config:
    dest: conf.d/team-b.yaml
    state: absent

- name: Re-apply whatever the host's files say (e.g. after a driver update)
  vgpuctl.vgpu.vgpu_config:
"""

RETURN = r"""
dest:
  description: The desired-state file managed.
  returned: always
  type: str
  sample: /etc/vgpuctl/vgpuctl.yaml
file_changed:
  description: Whether the desired-state file was (or in check mode would be) written or removed.
  returned: always
  type: bool
actions:
  description:
    - vgpuctl's action records (schema C(vgpuctl.action/v1)) - C(op) create/destroy/attach, C(uuid), C(parent),
      C(type_id), C(name), C(blocked) and C(detail) - from C(vgpuctl apply --json) (with C(outcome) done, failed,
      blocked) or, in check mode, from C(vgpuctl plan --json).
  returned: always
  type: list
  elements: dict
  sample:
    - {op: create, uuid: 9b2f1d4e-0c55-5e7e-8a0e-2b3f6f1f1b7c, parent: "0000:3b:00.0", type_id: nvidia-232,
       name: infer-a, blocked: null, outcome: done}
before:
  description: The host's instances before (uuid, parent, type_id, owned).
  returned: always
  type: list
  elements: dict
after:
  description: The host's instances after the run; in check mode, as vgpuctl's plan predicts them.
  returned: always
  type: list
  elements: dict
converged:
  description: Whether the host matches the desired state after the run (check mode - would match).
  returned: always
  type: bool
rc:
  description: vgpuctl's exit code when it failed (13 not converged, 8 invalid desired state, ...).
  returned: failure
  type: int
  sample: 13
msg:
  description: vgpuctl's one-line error message on failure.
  returned: failure
  type: str
  sample: "the host does not match the desired state: 1 action(s) left (1 blocked, 0 failed); see the list above"
"""

import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vgpuctl.vgpu.plugins.module_utils.vgpuctl import (
    COMMON_ARGS,
    RC_NOT_CONVERGED,
    Vgpuctl,
    VgpuctlError,
    fail,
)

ARGUMENT_SPEC = dict(
    config=dict(type="dict"),
    src=dict(type="path"),
    dest=dict(type="path", default="vgpuctl.yaml"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
    **COMMON_ARGS,
)
RULES = dict(
    mutually_exclusive=[("config", "src")],
)
#: The document planned when removing O(dest) leaves no desired-state file: vgpuctl's empty desired state.
EMPTY = b"version: 1\n"
HEADER = b"# Managed by Ansible (vgpuctl.vgpu.vgpu_config); vgpuctl desired state, see docs/desired-state.md\n"


def render(config):
    doc = dict(config)
    ordered = {"version": doc.pop("version", 1)}
    ordered.update(doc)
    return HEADER + json.dumps(ordered, indent=2, sort_keys=False).encode("utf-8") + b"\n"


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (IOError, OSError):
        return None


def instance_lines(records):
    return "".join(
        "%s %s on %s\n" % (r.get("uuid"), r.get("type_id"), r.get("parent"))
        for r in sorted(records or [], key=lambda r: r.get("uuid") or "")
    )


def action_line(a):
    if a.get("op") == "attach":
        text = "~ attach %s to %s (%s)" % (a.get("uuid"), a.get("domain"), a.get("mode"))
    else:
        text = "%s %s %s %s on %s" % (
            {"create": "+", "destroy": "-"}.get(a.get("op"), "?"),
            a.get("op"),
            a.get("uuid"),
            a.get("type_id"),
            a.get("parent") or "?",
        )
    if a.get("blocked"):
        text += " [blocked: %s: %s]" % (a["blocked"], a.get("detail") or "")
    return text


class ConfigTask(object):
    def __init__(self, module, cli):
        self.module = module
        self.cli = cli
        p = module.params
        self.root = p["root"] or os.environ.get("VGPUCTL_ROOT") or "/"
        self.config_dir = os.path.join(os.path.abspath(self.root), "etc", "vgpuctl")
        self.dest_rel = self._dest_rel(p["dest"])
        self.dest = os.path.join(self.config_dir, self.dest_rel)
        self.old = read_bytes(self.dest)
        self.new = self._new_content()

    def _dest_rel(self, dest):
        full = dest if os.path.isabs(dest) else os.path.join(self.config_dir, dest)
        rel = os.path.relpath(os.path.normpath(full), self.config_dir)
        parts = rel.split(os.sep)
        ok = parts == ["vgpuctl.yaml"] or (
            len(parts) == 2 and parts[0] == "conf.d" and parts[1].endswith(".yaml") and not parts[1].startswith(".")
        )
        if not ok:
            self.module.fail_json(
                msg="dest %s is not a file vgpuctl reads: use %s/vgpuctl.yaml or %s/conf.d/NAME.yaml"
                % (dest, self.config_dir, self.config_dir),
                rc=2,
            )
        return rel

    def _new_content(self):
        p = self.module.params
        if p["state"] == "absent":
            return None
        if p["config"] is not None:
            return render(p["config"])
        if p["src"]:
            data = read_bytes(p["src"])
            if data is None:
                self.module.fail_json(msg="src %s cannot be read" % p["src"], rc=2)
            return data
        return self.old  # apply the files as they are

    @property
    def file_changed(self):
        return self.new != self.old

    # --- plan --------------------------------------------------------------------------------------------------
    def plan(self):
        """vgpuctl's plan for the new document, against the real host: C(plan --config) with the files vgpuctl will
        read once O(dest) is written (or removed), the new document standing in a temporary file for O(dest)."""
        if not self.file_changed:
            return self.cli.run("plan")
        fd, tmp = tempfile.mkstemp(prefix="vgpu_config.", suffix=".yaml")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.new if self.new is not None else EMPTY)
            files = self.files_after(tmp)
            args = ["plan"]
            for path in files or [tmp]:  # no file left at all: an empty desired state
                args += ["--config", path]
            try:
                return self.cli.run(*args)
            except VgpuctlError as e:
                e.msg = e.msg.replace(tmp, self.dest)  # vgpuctl's message names the file the document goes to
                raise
        finally:
            os.unlink(tmp)

    def files_after(self, new_path):
        """The desired-state files vgpuctl reads once O(dest) is written or removed, in its merge order (the main
        file, then conf.d/*.yaml by name), with ``new_path`` in O(dest)'s place."""
        files = {}
        main = os.path.join(self.config_dir, "vgpuctl.yaml")
        if os.path.isfile(main):
            files[main] = main
        dropins = os.path.join(self.config_dir, "conf.d")
        if os.path.isdir(dropins):
            for name in os.listdir(dropins):
                path = os.path.join(dropins, name)
                if name.endswith(".yaml") and not name.startswith(".") and os.path.isfile(path):
                    files[path] = path
        files.pop(self.dest, None)
        if self.new is not None:
            files[self.dest] = new_path
        return [files[k] for k in sorted(files, key=lambda k: (k != main, k))]

    def predicted_failures(self, doc):
        """Actions the real apply would leave undone: blocked ones, and creates beyond a type's available count
        on a parent that loses nothing first (vgpuctl's plan does not count capacity)."""
        actions = doc.get("actions", [])
        blocked = [a for a in actions if a.get("blocked")]
        runnable = [a for a in actions if not a.get("blocked")]
        freed = set(a.get("parent") for a in runnable if a.get("op") == "destroy")
        wanted = {}
        for a in runnable:
            if a.get("op") == "create" and a.get("parent") not in freed:
                wanted.setdefault((a["parent"], a["type_id"]), []).append(a)
        failing = []
        if wanted:
            avail = dict(((t["parent"], t["type_id"]), t.get("available") or 0) for t in self.cli.types())
            for key, creates in sorted(wanted.items()):
                failing += creates[avail.get(key, 0) :]
        return blocked, failing

    # --- the one place that writes -------------------------------------------------------------------------------
    def write(self):
        if self.new is None:
            os.unlink(self.dest)
            return
        directory = os.path.dirname(self.dest)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".vgpu_config.")
        with os.fdopen(fd, "wb") as f:
            f.write(self.new)
        os.chmod(tmp, 0o644)
        self.module.atomic_move(tmp, self.dest)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True, **RULES)
    task = ConfigTask(module, Vgpuctl(module))
    result = dict(changed=False, dest=task.dest, file_changed=task.file_changed)
    try:
        plan = task.plan()  # validates the new document before anything is written
        if module.check_mode:
            result.update(
                changed=task.file_changed or bool(plan.get("changed")),
                actions=plan.get("actions", []),
                before=plan.get("before", []),
                after=plan.get("after", []),
                converged=not plan.get("actions"),
            )
            blocked, failing = task.predicted_failures(plan)
            _diff(module, task, result)
            if blocked or failing:
                left = len(blocked) + len(failing)
                module.fail_json(
                    msg="the host does not match the desired state: %d action(s) left (%d blocked, %d failed); see "
                    "the list above" % (left, len(blocked), len(failing)),
                    rc=RC_NOT_CONVERGED,
                    predicted=True,
                    blocked=[action_line(a) for a in blocked + failing],
                    **result,
                )
            module.exit_json(**result)
        if task.file_changed:
            task.write()
        try:
            applied = task.cli.run("apply")
        except VgpuctlError as e:
            data = e.data if isinstance(e.data, dict) else {}
            result.update(
                changed=task.file_changed or bool(data.get("changed")),
                actions=data.get("actions", []),
                before=data.get("before", []),
                after=data.get("after", []),
                converged=False,
            )
            _diff(module, task, result)
            remaining = data.get("remaining", [])
            module.fail_json(
                msg=e.msg, rc=e.rc, cmd=e.cmd, stderr=e.stderr, blocked=[action_line(a) for a in remaining], **result
            )
        result.update(
            changed=task.file_changed or bool(applied.get("changed")),
            actions=applied.get("actions", []),
            before=applied.get("before", []),
            after=applied.get("after", []),
            converged=bool(applied.get("converged")),
        )
        _diff(module, task, result)
    except VgpuctlError as e:
        fail(module, e, **result)
    module.exit_json(**result)


def _diff(module, task, result):
    if not module._diff:
        return
    result["diff"] = [
        dict(
            before_header=task.dest,
            after_header=task.dest,
            before=(task.old or b"").decode("utf-8", "replace"),
            after=(task.new or b"").decode("utf-8", "replace"),
        ),
        dict(
            before_header="vgpu instances",
            after_header="vgpu instances",
            before=instance_lines(result.get("before")),
            after=instance_lines(result.get("after")),
        ),
    ]


if __name__ == "__main__":
    main()
