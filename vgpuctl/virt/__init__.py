"""libvirt's side of vgpuctl, in layers (docs/architecture.md):

* ``domxml``: pure domain XML: parse a domain, write vgpuctl's metadata, and derive the facts placement and the
  planner take from a ``Snapshot`` of every domain.  No libvirt, no I/O.
* ``conn``: the connection (``Virt``, opened once and passed in), the bounded wait on libvirtd, the usage check.
  The only module that imports libvirt, and only when a connection is opened.
* ``attach``: attach and detach, the reconciler's ``AttachmentSource``, the attach lock.
* ``templates``: the jinja2 device templates that render a vGPU's ``<hostdev>``.

The names below are the package's public ones (docs/libvirt.md names ``vgpuctl.virt.reachability``); code inside
vgpuctl imports from the module that defines a name.
"""

from __future__ import annotations

from .attach import AttachmentSource, AttachResult, Attachments, DetachResult, VirtLock, check_multi_vgpu
from .conn import DEFAULT_TIMEOUT, DomainUsers, Libvirt, Reachability, Virt, bounded, mdev_nodedevs, reachability
from .domxml import (
    DomainInfo,
    DomainUse,
    DomainXml,
    ManagedVgpu,
    NodeDev,
    Scope,
    Snapshot,
    domain_attachments,
    match_xml,
    metadata_xml,
    nodedev_name,
    parse_cpuset,
    parse_domain,
    resolve_scope,
)

__all__ = [
    "AttachResult",
    "AttachmentSource",
    "Attachments",
    "DEFAULT_TIMEOUT",
    "DetachResult",
    "DomainInfo",
    "DomainUse",
    "DomainUsers",
    "DomainXml",
    "ManagedVgpu",
    "NodeDev",
    "Reachability",
    "Scope",
    "Snapshot",
    "Virt",
    "VirtLock",
    "Libvirt",
    "bounded",
    "check_multi_vgpu",
    "domain_attachments",
    "match_xml",
    "mdev_nodedevs",
    "metadata_xml",
    "nodedev_name",
    "parse_cpuset",
    "parse_domain",
    "reachability",
    "resolve_scope",
]
