"""Strict parsing of one desired-state document (``parse``): the schema of docs/desired-state.md over
``configfile.NodeReader``.  No merging across files, no host checks."""

from __future__ import annotations

from typing import Any, List

from ..configfile import NodeReader, compose_yaml
from ..errors import ConfigError
from ..model import NAME_RE, canonical_parent_name, canonical_uuid
from .merge import merge
from .schema import (
    SCHED_POLICIES,
    AttachMode,
    DesiredGpu,
    DesiredInstance,
    DesiredScheduler,
    DesiredState,
    Mark,
    PlacementRequest,
    derive_uuid,
)

_TOP_KEYS = ("version", "instances", "gpus")
_GPU_KEYS = ("scheduler", "heterogeneous", "mig", "sriov")
_SCHED_KEYS = ("policy", "timeslice_ms")
_INSTANCE_KEYS = ("uuid", "type", "profile", "parent", "placement", "domain", "attach", "params")
_PLACEMENT_KEYS = ("tenant", "numa_node")


def parse(text: str, *, path: str = "<spec>") -> DesiredState:
    """Parse one desired-state document (no merging, no host checks)."""
    yaml, root = compose_yaml(text, path)
    return _Parser(path, yaml).document(root)


class _Parser(NodeReader):
    """The desired-state schema over ``configfile.NodeReader``'s strict helpers."""

    def string(self, node: Any, key: str) -> str:
        v = self.scalar(node, key)
        if isinstance(v, bool) or v is None or isinstance(v, (list, dict)):
            raise self.fail(node, key, "must be a string")
        if not isinstance(v, str):
            v = node.value  # numbers and the like: keep what was written (a type id "63" stays "63")
        if not v.strip():
            raise self.fail(node, key, "must not be empty")
        return v

    def document(self, root: Any) -> DesiredState:
        if root is None:
            raise ConfigError(self.path, "is empty; it needs at least 'version: 1'", line=1)
        top = self.mapping(root, None, _TOP_KEYS)
        self.version(top, root)
        instances: List[DesiredInstance] = []
        if "instances" in top:
            inode = top["instances"][1]
            if isinstance(inode, self.yaml.ScalarNode) and inode.tag.endswith(":null"):
                pass  # "instances:" with nothing under it
            else:
                for name, (knode, vnode) in self.mapping(inode, "instances", None).items():
                    instances.append(self.instance(name, knode, vnode))
        gpus: List[DesiredGpu] = []
        if "gpus" in top:
            gnode = top["gpus"][1]
            if not (isinstance(gnode, self.yaml.ScalarNode) and gnode.tag.endswith(":null")):
                for name, (knode, vnode) in self.mapping(gnode, "gpus", None).items():
                    gpus.append(self.gpu(name, knode, vnode))
        return merge(instances, files=(self.path,), gpus=gpus)

    def gpu(self, name: str, knode: Any, node: Any) -> DesiredGpu:
        canon = canonical_parent_name(name)
        if canon is None or ":" not in canon:
            raise self.fail(knode, f"gpus.{name}", f'{name!r} is not a PCI address (e.g. "0000:4a:00.0")')
        key = f"gpus.{canon}"
        fields = self.mapping(node, key, _GPU_KEYS)
        if not fields:
            raise self.fail(node, key, f"give at least one of: {', '.join(_GPU_KEYS)}")
        lines = tuple((k, kn.start_mark.line + 1) for k, (kn, _) in fields.items())
        sched = self.scheduler(fields["scheduler"][1], f"{key}.scheduler") if "scheduler" in fields else None
        hetero = None
        if "heterogeneous" in fields:
            v = self.scalar(fields["heterogeneous"][1], f"{key}.heterogeneous")
            if not isinstance(v, bool):
                raise self.fail(fields["heterogeneous"][1], f"{key}.heterogeneous", "must be true or false")
            hetero = v
        if hetero and sched is not None and sched.policy == "fixed-share":
            raise self.fail(
                fields["scheduler"][1],
                f"{key}.scheduler.policy",
                "fixed-share is not available in heterogeneous mode (best-effort or equal-share)",
            )
        from .. import gpuwide

        mig = gpuwide.parse_mig(self, fields["mig"][1], f"{key}.mig") if "mig" in fields else None
        sriov = gpuwide.parse_sriov(self, fields["sriov"][1], f"{key}.sriov") if "sriov" in fields else None
        return DesiredGpu(
            gpu=canon,
            scheduler=sched,
            heterogeneous=hetero,
            mig=mig,
            sriov=sriov,
            mark=Mark(self.path, knode.start_mark.line + 1),
            key_lines=lines,
        )

    def scheduler(self, node: Any, key: str) -> DesiredScheduler:
        f = self.mapping(node, key, _SCHED_KEYS)
        if "policy" not in f:
            raise self.fail(node, f"{key}.policy", f"is required: one of {', '.join(SCHED_POLICIES)}")
        policy = self.string(f["policy"][1], f"{key}.policy")
        if policy not in SCHED_POLICIES:
            raise self.fail(f["policy"][1], f"{key}.policy", f"must be one of: {', '.join(SCHED_POLICIES)}")
        ms = None
        if "timeslice_ms" in f:
            vnode = f["timeslice_ms"][1]
            v = self.scalar(vnode, f"{key}.timeslice_ms")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise self.fail(vnode, f"{key}.timeslice_ms", "must be a number of milliseconds > 0")
            if policy == "best-effort":
                raise self.fail(vnode, f"{key}.timeslice_ms", "best-effort has no time slice; drop timeslice_ms")
            ms = float(v)
        return DesiredScheduler(policy=policy, timeslice_ms=ms)

    def instance(self, name: str, knode: Any, node: Any) -> DesiredInstance:
        key = f"instances.{name}"
        if not NAME_RE.fullmatch(name):
            raise self.fail(knode, key, "instance names are 1-64 of A-Z a-z 0-9 _ . - (not starting with . or -)")
        fields = self.mapping(node, key, _INSTANCE_KEYS)
        lines = tuple((k, kn.start_mark.line + 1) for k, (kn, _) in fields.items())
        profile = None
        if "type" in fields and "profile" in fields:
            raise self.fail(fields["profile"][0], f"{key}.profile", "give 'type' or 'profile', not both")
        if "profile" in fields:
            profile = self.string(fields["profile"][1], f"{key}.profile").strip()
            vtype = f"profile {profile}"
        elif "type" not in fields:
            raise self.fail(
                node,
                f"{key}.type",
                "is required (a type id such as nvidia-231 or a name such as T4-2Q), "
                "or a service profile ('profile: gold')",
            )
        else:
            vtype = self.string(fields["type"][1], f"{key}.type")
        uuid, derived = None, False
        if "uuid" in fields:
            raw = self.string(fields["uuid"][1], f"{key}.uuid")
            uuid = canonical_uuid(raw)
            if uuid is None:
                raise self.fail(fields["uuid"][1], f"{key}.uuid", f"{raw!r} is not a UUID (8-4-4-4-12 hex digits)")
        else:
            uuid, derived = derive_uuid(name), True
        parent = placement = None
        if ("parent" in fields) == ("placement" in fields):
            raise self.fail(node, key, "give exactly one of 'parent' and 'placement'")
        if "parent" in fields:
            raw = self.string(fields["parent"][1], f"{key}.parent")
            parent = canonical_parent_name(raw)
            if parent is None:
                raise self.fail(fields["parent"][1], f"{key}.parent", f"{raw!r} is not a PCI address or device name")
        else:
            placement = self.placement(fields["placement"][1], f"{key}.placement")
        domain = self.string(fields["domain"][1], f"{key}.domain") if "domain" in fields else None
        attach = AttachMode.CONFIG
        if "attach" in fields:
            if domain is None:
                raise self.fail(fields["attach"][0], f"{key}.attach", "needs 'domain'")
            raw = self.string(fields["attach"][1], f"{key}.attach")
            try:
                attach = AttachMode(raw)
            except ValueError:
                raise self.fail(
                    fields["attach"][1], f"{key}.attach", f"must be one of: {', '.join(m.value for m in AttachMode)}"
                ) from None
        params = None
        if "params" in fields:
            from ..vgpu_params import from_node

            params = from_node(self, fields["params"][1], f"{key}.params")
        return DesiredInstance(
            name=name,
            uuid=uuid,
            type=vtype,
            parent=parent,
            placement=placement,
            domain=domain,
            attach=attach,
            uuid_derived=derived,
            mark=Mark(self.path, knode.start_mark.line + 1),
            key_lines=lines,
            profile=profile,
            params=params,
        )

    def placement(self, node: Any, key: str) -> PlacementRequest:
        if isinstance(node, self.yaml.ScalarNode) and node.tag.endswith(":null"):
            return PlacementRequest()
        f = self.mapping(node, key, _PLACEMENT_KEYS)
        return PlacementRequest(
            tenant=self.string(f["tenant"][1], f"{key}.tenant") if "tenant" in f else None,
            numa_node=self.integer(f["numa_node"][1], f"{key}.numa_node") if "numa_node" in f else None,
        )
