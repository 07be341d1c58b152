"""The composition root: the one place that builds vgpuctl's object graph for one command or one service pass.

From ``Settings`` (``--root``, ``--connect``, the timeouts, ``--nvml``) an ``App`` builds, once each and on first
use: the ``Host`` (sysfs through ``HostPaths``), ONE libvirt connection (``virt.conn.Libvirt``, passed to everything
that talks to libvirt: the in-use check, the observation step, attach and detach), the ``Lifecycle``, the placement
policy and the ``Reconciler``.  ``commands/*``, the service (through ``commands.reconcile``) and doctor's desired-state
check take theirs from here.  (Two readers connect on their own, on purpose: ``migrate --from`` reads another host's
libvirt, and doctor's libvirt probe asks whether a connection can be made at all.)

Importing this module imports neither libvirt nor NVML nor jinja2: each is loaded when first used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional

from .paths import HostPaths

if TYPE_CHECKING:
    from .apply import Reconciler
    from .host import Host
    from .lifecycle import Lifecycle
    from .policy import Policy
    from .virt.attach import Attachments
    from .virt.conn import Libvirt


@dataclass(frozen=True)
class Settings:
    root: str = "/"
    connect: str = "qemu:///system"
    lock_timeout: float = 30.0
    nvml: str = "auto"  #: "auto": ask NVML where the host has NVIDIA GPUs; "off": never
    libvirt_timeout: float = 5.0  #: the bound on one read of libvirt (``virt.conn.DEFAULT_TIMEOUT``)

    @property
    def paths(self) -> HostPaths:
        return HostPaths.from_root(self.root)


class App:
    """One command's (or one service pass's) collaborators, each built once, on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.paths = settings.paths
        self._host: Optional["Host"] = None
        self._libvirt: Optional["Libvirt"] = None

    @property
    def host(self) -> "Host":
        if self._host is None:
            from .host import Host

            self._host = Host(self.paths)
        return self._host

    @property
    def libvirt(self) -> Optional["Libvirt"]:
        """The one libvirt connection (opened when first used); None with ``--connect none``."""
        if self.settings.connect == "none":
            return None
        if self._libvirt is None:
            from .virt.conn import Libvirt

            self._libvirt = Libvirt(self.settings.connect, timeout=self.settings.libvirt_timeout)
        return self._libvirt

    def lifecycle(self, *, stale_ok: bool = False) -> "Lifecycle":
        """A Lifecycle with the checks that say who uses a device: processes holding it always; libvirt domains
        referencing it, unless ``--connect none``.  ``stale_ok`` (``destroy --force``) stops counting a domain whose
        *definition* alone references the device; a running domain that has it still counts."""
        from .lifecycle import Lifecycle, ProcessHolders, UsageCheck

        checks: List[UsageCheck] = [ProcessHolders(self.host)]
        if self.libvirt is not None:
            from .virt.conn import DomainUsers

            checks.append(DomainUsers(self.libvirt, include_stale=not stale_ok))
        return Lifecycle(self.host, lock_timeout=self.settings.lock_timeout, usage_checks=checks)

    def policy(self, policy_file: Optional[str] = None) -> "Policy":
        """The placement policy: ``policy_file`` (which must exist), else ``etc/vgpuctl/policy.yaml`` or the
        built-in default."""
        from .policy import load_policy, policy_path

        if policy_file:
            return load_policy(policy_file, missing_ok=False, follow=True)
        return load_policy(policy_path(self.paths.config_dir), missing_ok=True)

    def attachments(self) -> "Attachments":
        """Attach and detach on the one connection, read-write (``vgpuctl attach``/``detach``)."""
        from .virt.attach import Attachments
        from .virt.templates import Templates

        assert self.libvirt is not None, "attach and detach need libvirt"
        return Attachments(self.libvirt.connection(write=True), self.lifecycle(), Templates(self.paths))

    def reconciler(self) -> "Reconciler":
        """The reconciler over this App's lifecycle and libvirt, with the placement engine where it exists."""
        from .apply import Reconciler

        lc = self.lifecycle()
        attachments = None
        if self.libvirt is not None:
            from .virt.attach import AttachmentSource

            attachments = AttachmentSource(self.libvirt, lc)
        return Reconciler(
            lc, policy=self._placement_policy(), libvirt=self.libvirt, attachments=attachments, nvml=self.settings.nvml
        )

    def _placement_policy(self) -> Optional["Policy"]:
        try:
            from . import placement  # noqa: F401  (the placement engine; without it only pinned parents work)
        except ImportError:
            return None
        from .policy import load_policy, policy_path

        return load_policy(policy_path(self.paths.config_dir))
