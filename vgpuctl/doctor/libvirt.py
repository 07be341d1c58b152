"""Checks of libvirt: libvirtd reachable at the URI (bounded), and its QEMU present (domain capabilities)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from typing import Any, Optional, Tuple

from . import Context, Result, check

START_FIX = "systemctl enable --now libvirtd (or virtqemud.socket), or fix --connect / VGPUCTL_LIBVIRT_URI"


@dataclass(frozen=True)
class Probe:
    """What one bounded conversation with libvirtd found."""

    reachable: bool
    reason: str = ""  #: why not, one line
    fix: str = ""
    version: Optional[str] = None
    #: domain capabilities: (emulator path, domain type, machine, mdev hostdevs supported), or the error text
    emulator: Optional[Tuple[str, str, str, bool]] = None
    caps_error: Optional[str] = None


#: libvirtd probes QEMU's capabilities the first time it is asked (several seconds): that read gets this long at least
QEMU_PROBE_TIMEOUT = 30.0


def _domain_caps(v: Any, found: Probe) -> Probe:
    """libvirt's capabilities (a read-only connection may read them; domain capabilities it may not): the first guest
    whose domain type is kvm or qemu names the emulator libvirt found."""
    try:
        xml = v.conn.getCapabilities()
    except v.lv.libvirtError as e:
        return replace(found, caps_error=" ".join(str(e).split()))
    root = ET.fromstring(xml)
    seen = []
    host_arch = root.findtext("host/cpu/arch")
    guests = sorted(
        root.findall("guest"),
        key=lambda g: g.find("arch") is None or g.find("arch").get("name") != host_arch,  # type: ignore[union-attr]
    )
    for guest in guests:
        arch = guest.find("arch")
        if arch is None:
            continue
        kinds = [d.get("type") for d in arch.findall("domain")]
        emulator = arch.findtext("emulator") or "?"
        seen.append(os.path.basename(emulator))
        if any(k in ("kvm", "qemu") for k in kinds):
            machine = arch.findtext("machine") or "?"
            kind = "kvm" if "kvm" in kinds else "qemu (no KVM: emulated)"
            return replace(found, emulator=(emulator, kind, machine, True))
    what = f"only {', '.join(sorted(set(seen)))}" if seen else "none"
    return replace(found, caps_error=f"libvirt's capabilities list no QEMU guest (emulators: {what})")


def probe(ctx: Context) -> Probe:
    """Whether libvirt answers (``virt.reachability``, bounded by ``ctx.timeout``), then its capabilities (bounded by
    the longer ``QEMU_PROBE_TIMEOUT``, through ``virt.bounded``); read once per run."""

    def make() -> Probe:
        from ..errors import LibvirtConnectError, LibvirtTimeout, LibvirtUnavailable
        from ..virt.conn import Virt, bounded, reachability

        r = reachability(ctx.connect, timeout=ctx.timeout)
        if not r:
            detail = getattr(r.error, "detail", None) or r.reason or "unreachable"
            if r.kind == "libvirt-unavailable":
                return Probe(False, r.reason or detail, "pip install 'vgpuctl[libvirt]' (or --connect none)")
            if r.kind == "libvirt-timeout":
                return Probe(False, f"{ctx.connect}: {detail}", "systemctl restart libvirtd")
            return Probe(False, f"cannot connect to {ctx.connect}: {detail}", START_FIX)
        found = Probe(True, version=r.version)

        def caps() -> Probe:
            with Virt.open(ctx.connect, readonly=True, timeout=None) as v:
                return _domain_caps(v, found)

        try:
            return bounded(ctx.connect, max(ctx.timeout, QEMU_PROBE_TIMEOUT), caps)
        except LibvirtTimeout as e:
            return replace(found, caps_error=f"libvirt's capabilities: {e.detail}")
        except (LibvirtConnectError, LibvirtUnavailable) as e:
            return replace(found, caps_error=str(e))

    return ctx.fact("libvirt", make)


@check("libvirt", "libvirtd answers at the URI (--connect), within the timeout", START_FIX)
def libvirt(ctx: Context) -> Result:
    if ctx.connect == "none":
        return Result.na("libvirt", "libvirt is turned off (--connect none)")
    p = probe(ctx)
    if not p.reachable:
        return Result.fail("libvirt", p.reason, p.fix)
    return Result.ok("libvirt", f"{ctx.connect} answers: libvirt {p.version}")


@check(
    "qemu",
    "libvirt's QEMU is present: its capabilities list a QEMU (kvm or qemu) guest emulator",
    "apt-get install qemu-system-x86, then systemctl restart libvirtd",
)
def qemu(ctx: Context) -> Result:
    if ctx.connect == "none":
        return Result.na("qemu", "libvirt is turned off (--connect none)")
    p = probe(ctx)
    if not p.reachable:
        return Result.na("qemu", "libvirt unreachable (see the libvirt line)")
    if p.emulator is None:
        return Result.fail(
            "qemu",
            f"no usable QEMU: {p.caps_error}",
            "apt-get install qemu-system-x86, then systemctl restart libvirtd",
        )
    path, kind, machine, _ = p.emulator
    return Result.ok("qemu", f"{path} ({kind}, machine {machine})")
