# -*- coding: utf-8 -*-
# Copyright: vgpuctl developers
# Apache License 2.0 (see LICENSE in the vgpuctl repository)
"""Run the vgpuctl CLI on the managed host and read its JSON records.

Every module talks to the host only through ``Vgpuctl``: it builds ``vgpuctl [--root R] [--connect U] ... --json``,
parses stdout, and turns a non-zero exit into ``fail_json`` with vgpuctl's one-line stderr message (``msg``) and its
exit code (``rc``).  Python 3.9 syntax (the managed host's interpreter may be old).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import sys
import uuid as uuidlib

#: Options every module shares (see the doc fragment ``vgpuctl.vgpu.vgpuctl``).
COMMON_ARGS = dict(
    vgpuctl_path=dict(type="path", default="vgpuctl"),
    root=dict(type="path"),
    libvirt_uri=dict(type="str"),
    lock_timeout=dict(type="float"),
)

#: The uuid5 namespace vgpuctl derives a desired instance's uuid from its name with (vgpuctl/spec/schema.py,
#: ``UUID_NAMESPACE``; vgpuctl promises never to change it).  tests/ansible checks that both agree.
UUID_NAMESPACE = uuidlib.UUID("6f0b3f63-3a51-4d8e-9d0c-7e1b5a2c9a40")

#: vgpuctl's exit codes (docs/exit-codes.md) that the modules predict in check mode.
RC_NOT_FOUND = 3
RC_NO_CAPACITY = 4
RC_EXISTS = 5
RC_IN_USE = 6
RC_NOT_OWNED = 7
RC_NOT_CONVERGED = 13
RC_MIGRATION_INCOMPATIBLE = 15


def derive_uuid(name):
    """The uuid vgpuctl gives the desired instance ``name`` when its file gives none."""
    return str(uuidlib.uuid5(UUID_NAMESPACE, "vgpuctl-instance:" + name))


def canonical_uuid(value):
    try:
        return str(uuidlib.UUID(value))
    except (ValueError, TypeError, AttributeError):
        return None


class VgpuctlError(Exception):
    """vgpuctl exited non-zero: ``msg`` is its one-line error, ``rc`` its exit code, ``data`` its JSON if any."""

    def __init__(self, msg, rc, cmd, stdout="", stderr="", data=None):
        super(VgpuctlError, self).__init__(msg)
        self.msg = msg
        self.rc = rc
        self.cmd = cmd
        self.stdout = stdout
        self.stderr = stderr
        self.data = data

    def result(self):
        out = dict(msg=self.msg, rc=self.rc, cmd=self.cmd, stderr=self.stderr)
        if self.data is not None:
            out["vgpuctl"] = self.data
        return out


def error_line(stderr):
    """vgpuctl's one-line error: the last ``vgpuctl: error:`` line, else the last non-empty line."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("vgpuctl: error: "):
            return ln[len("vgpuctl: error: ") :]
    return lines[-1] if lines else "vgpuctl failed without a message"


class Vgpuctl(object):
    """The vgpuctl CLI as the modules see it: one method per command they use."""

    def __init__(self, module):
        self.module = module
        self.path = self._find(module.params["vgpuctl_path"])
        self.root = module.params.get("root")  #: the --root to pass

    def _find(self, name):
        if os.sep in name:
            if os.access(name, os.X_OK):
                return name
            self.module.fail_json(msg="vgpuctl_path %s is not an executable file" % name, rc=127)
        found = self.module.get_bin_path(name)
        if found:
            return found
        beside = os.path.join(os.path.dirname(sys.executable), name)
        if os.access(beside, os.X_OK):
            return beside
        self.module.fail_json(
            msg="%s was not found on PATH nor next to %s; install vgpuctl or set vgpuctl_path" % (name, sys.executable),
            rc=127,
        )

    def argv(self, *args):
        p = self.module.params
        cmd = [self.path]
        if self.root:
            cmd += ["--root", self.root]
        if p.get("libvirt_uri"):
            cmd += ["--connect", p["libvirt_uri"]]
        if p.get("lock_timeout") is not None:
            cmd += ["--lock-timeout", str(p["lock_timeout"])]
        return cmd + list(args)

    def run(self, *args, **kw):
        """Run ``vgpuctl ARGS --json`` and return its parsed stdout; raise ``VgpuctlError`` on a non-zero exit
        (with the parsed stdout, if any, in ``data``: apply and check print their record before exiting 13)."""
        cmd = self.argv(*args) + ["--json"]
        # a VGPUCTL_* variable for a command option (VGPUCTL_CREATE_UUID...) must not change what the module asked
        env = dict(
            (k, "")
            for k in os.environ
            if k.startswith("VGPUCTL_") and k not in ("VGPUCTL_ROOT", "VGPUCTL_LIBVIRT_URI", "VGPUCTL_LOCK_TIMEOUT")
        )
        rc, out, err = self.module.run_command(
            cmd, environ_update=env, check_rc=False, data=kw.get("data"), binary_data=True
        )
        data = None
        if out.strip():
            try:
                data = json.loads(out)
            except ValueError:
                if rc == 0:
                    raise VgpuctlError(
                        "vgpuctl printed something that is not JSON: %s" % out[:200], 1, cmd, out, err
                    ) from None
        if rc != 0:
            raise VgpuctlError(error_line(err), rc, cmd, out, err, data)
        return data

    # --- commands ------------------------------------------------------------------------------------------------
    def parents(self):
        return self.run("parents")

    def types(self, parent=None):
        return self.run("types", *(["--parent", parent] if parent else []))

    def instances(self, parent=None):
        return self.run("list", *(["--parent", parent] if parent else []))

    def migrate_check(self, xml=None, domain=None, source_uri=None, source_driver=None, policy=None):
        """``vgpuctl migrate check``: the domain XML as text (passed on stdin), or a domain read from the source's
        libvirt.  Exit 4 (no capacity now) and 15 (incompatible) are answers: raised with the records in ``data``."""
        args = ["migrate", "check"]
        args += ["--xml", "-"] if xml is not None else ["--domain", domain, "--source", source_uri]
        if source_driver:
            args += ["--source-driver", source_driver]
        if policy:
            args += ["--policy", policy]
        return self.run(*args, data=xml)


def fail(module, err, **extra):
    """Fail the task with a ``VgpuctlError``'s message and exit code."""
    res = err.result()
    res.update(extra)
    module.fail_json(**res)


def type_matches(type_record, wanted):
    """Whether ``wanted`` (an id, a name, or a profile such as T4-2Q) names ``type_record``, as vgpuctl resolves
    types: the id exactly, else the name or its profile (last word) case-insensitively."""
    if wanted == type_record.get("type_id"):
        return True
    key = wanted.strip().lower()
    name = (type_record.get("name") or "").strip().lower()
    profile = name.split()[-1] if name else ""
    return key in (name, profile, (type_record.get("type_id") or "").lower())


def resolve_type(types, parent, wanted):
    """The type record ``wanted`` names on ``parent`` (``types``: vgpuctl's type records), or None."""
    offered = [t for t in types if t.get("parent") == parent]
    for t in offered:
        if t.get("type_id") == wanted:
            return t
    found = [t for t in offered if type_matches(t, wanted)]
    return found[0] if len(found) == 1 else None


def instance_view(rec):
    """The part of an instance record that diff shows (stable keys, no holder pids)."""
    if not rec:
        return {}
    out = dict((k, rec.get(k)) for k in ("uuid", "parent", "type_id", "owned"))
    if rec.get("domains") is not None:
        out["domains"] = sorted(rec["domains"])
    return out
