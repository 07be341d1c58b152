"""Typed errors and their exit codes.

Library code raises these; only the CLI turns them into a one-line message and an exit code.  Each class carries its
exit code, and fields that tests and callers can inspect without parsing the message.  The table of exit codes is
documented in docs/exit-codes.md; tests keep the two in step.

Over 500 lines on purpose: one short class per error, grouped by exit code, is the catalogue callers and
scripts/gen-docs.py read in one place; splitting it by code would scatter that table.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Iterable, Optional, Sequence


class VgpuctlError(Exception):
    """Base of every error vgpuctl reports on purpose."""

    exit_code = 1
    #: short machine-readable name used in --json error output
    kind = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split())


# --- bad input (2) -------------------------------------------------------------------------------------------------
class InvalidInput(VgpuctlError):
    """Input that can never be right: a malformed UUID, a parent name with '/', an option out of range."""

    exit_code = 2
    kind = "invalid-input"


class BadUuid(InvalidInput):
    kind = "bad-uuid"

    def __init__(self, value: str) -> None:
        super().__init__(
            f"{value!r} is not a UUID: expected 8-4-4-4-12 hex digits, e.g. 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
        )
        self.value = value


class BadParentName(InvalidInput):
    kind = "bad-parent-name"

    def __init__(self, value: str) -> None:
        super().__init__(
            f"{value!r} is not a parent device name: give a PCI address (0000:3b:00.0) or a plain device name "
            "(mtty), without '/' or '..'"
        )
        self.value = value


class AmbiguousType(InvalidInput):
    kind = "ambiguous-type"

    def __init__(self, name: str, candidates: Sequence[str]) -> None:
        self.candidates = tuple(candidates)
        super().__init__(f"type {name!r} is ambiguous: it names {', '.join(self.candidates)}; give the type id instead")
        self.name = name


# --- something named does not exist (3) ----------------------------------------------------------------------------
class NotFound(VgpuctlError):
    exit_code = 3
    kind = "not-found"


class UnknownParent(NotFound):
    kind = "unknown-parent"

    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        hint = f"; known parents: {', '.join(known)}" if known else "; no parent is registered for vGPUs on this host"
        super().__init__(f"parent {name} is not registered for mediated devices{hint}")
        self.name = name
        self.known = tuple(known)


class SriovDisabled(NotFound):
    """An NVIDIA GPU that could host vendor-VFIO vGPUs has no SR-IOV VFs enabled.  Not an ``UnknownParent``: the
    GPU is there, it has no parents yet (its ``gpu`` is named, no list of known parents is made up)."""

    kind = "sriov-disabled"

    def __init__(self, gpu: str) -> None:
        super().__init__(
            f"GPU {gpu} has no SR-IOV virtual functions enabled, so it can host no vGPUs; enable them with: "
            f"/usr/lib/nvidia/sriov-manage -e {gpu} (needed after every boot)",
        )
        self.gpu = gpu


class UnknownType(NotFound):
    kind = "unknown-type"

    def __init__(self, type_id: str, parent: Optional[str], known: Sequence[str] = ()) -> None:
        where = f" on parent {parent}" if parent else ""
        hint = f"; types there: {', '.join(known)}" if known else ""
        super().__init__(f"type {type_id} is not offered{where}{hint}")
        self.type_id = type_id
        self.parent = parent
        self.known = tuple(known)


class UnknownInstance(NotFound):
    kind = "unknown-instance"

    def __init__(self, uuid: str) -> None:
        super().__init__(f"no vGPU instance {uuid} exists on this host (see 'vgpuctl list')")
        self.uuid = uuid


# --- capacity (4) --------------------------------------------------------------------------------------------------
class NoCapacity(VgpuctlError):
    exit_code = 4
    kind = "no-capacity"

    def __init__(self, type_id: str, parent: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"no available instances of {type_id} on {parent}{extra}; destroy one or choose another parent"
        )
        self.type_id = type_id
        self.parent = parent


class TypeConflict(NoCapacity):
    """The NVIDIA driver refused a type that conflicts with the types its GPU already hosts (EINVAL)."""

    kind = "type-conflict"

    def __init__(self, type_id: str, parent: str) -> None:
        VgpuctlError.__init__(
            self,
            f"{type_id} cannot be created on {parent}: it conflicts with the vGPU types its GPU already hosts "
            "(the driver said EINVAL); use the GPU's current type or size, or another GPU",
        )
        self.type_id = type_id
        self.parent = parent


class TypeMix(NoCapacity):
    """The GPU's type-mixing rule keeps the type off it: another type runs there (the kernel only says that the
    type has no available instances)."""

    kind = "type-mix"

    def __init__(self, type_id: str, gpu: str, holds: str, rule: str) -> None:
        VgpuctlError.__init__(self, f"GPU {gpu} runs {holds}; {rule}; free it or choose another GPU")
        self.type_id = type_id
        self.parent = gpu
        self.gpu = gpu
        self.holds = holds
        self.rule = rule


class CreateRefused(VgpuctlError):
    """The parent's driver refused a create with EINVAL although vgpuctl wrote a well-formed uuid it chose or
    checked itself: the parent's state forbids the type now, it is not the uuid."""

    exit_code = 9
    kind = "create-refused"

    def __init__(self, path: str, type_id: str, parent: str) -> None:
        super().__init__(
            f"the driver of {parent} refused to create a {type_id} (writing {path} failed: EINVAL); the uuid is "
            f"valid, so {parent}'s current state forbids this type: see 'vgpuctl status' for what it runs"
        )
        self.path = path
        self.type_id = type_id
        self.parent = parent
        self.errno = _errno.EINVAL


class NoPlacement(NoCapacity):
    """No GPU can take a request under the placement policy; ``refusals`` says why, per physical GPU."""

    kind = "no-placement"

    def __init__(self, type_id: str, refusals: Sequence["tuple[str, str, str]"] = ()) -> None:
        #: (gpu, reason, detail) per physical GPU, reason being a placement.Refusal value ("full", "type-mix", ...)
        self.refusals = tuple(refusals)
        why = "; ".join(f"{g}: {r}" + (f" ({d})" if d else "") for g, r, d in self.refusals) or "no vGPU-capable GPU"
        VgpuctlError.__init__(self, f"no GPU can take a {type_id}: {why}")
        self.type_id = type_id
        self.parent = None  # type: ignore[assignment]  # no single parent: every GPU refused


class UnknownProfile(NotFound):
    """``--profile`` names no profile of ``profiles.yaml``."""

    kind = "unknown-profile"

    def __init__(self, name: str, path: Optional[str], known: Sequence[str] = ()) -> None:
        where = path or "the configuration (no profiles.yaml)"
        hint = f"; defined: {', '.join(known)}" if known else ""
        super().__init__(f"no service profile {name!r} in {where}{hint} (see 'vgpuctl profiles')")
        self.name = name
        self.path = path
        self.known = tuple(known)


class ProfileLimit(VgpuctlError):
    """The tenant already holds as many vGPUs of the profile as its limit allows.  Exit 4 like ``NoCapacity``, but
    not one: no parent ran out of room (it has no ``type_id`` or ``parent`` to give)."""

    exit_code = NoCapacity.exit_code
    kind = "profile-limit"

    def __init__(self, profile: str, tenant: str, held: int, limit: int, where: str = "") -> None:
        at = f" ({where})" if where else ""
        super().__init__(
            f"tenant {tenant} already holds {held} of at most {limit} vGPUs of profile {profile}{at}; "
            "destroy one of them first, or raise the limit"
        )
        self.profile = profile
        self.tenant = tenant
        self.held = held
        self.limit = limit


# --- conflicts with what exists (5) --------------------------------------------------------------------------------
class AlreadyExists(VgpuctlError):
    exit_code = 5
    kind = "already-exists"

    def __init__(self, uuid: str, parent: Optional[str] = None) -> None:
        where = f" on parent {parent}" if parent else ""
        super().__init__(f"a device with uuid {uuid} already exists{where}; pick another uuid or omit --uuid")
        self.uuid = uuid
        self.parent = parent


# --- device in use (6) ---------------------------------------------------------------------------------------------
class DeviceInUse(VgpuctlError):
    exit_code = 6
    kind = "in-use"

    def __init__(self, uuid: str, holders: Iterable[str], message: Optional[str] = None) -> None:
        self.holders = tuple(holders)
        super().__init__(
            message
            or (
                f"device {uuid} is in use by {', '.join(self.holders)}; stop or detach the VM first (nothing was changed)"
            )
        )
        self.uuid = uuid


# --- not ours (7) --------------------------------------------------------------------------------------------------
class NotOwned(VgpuctlError):
    exit_code = 7
    kind = "not-owned"

    def __init__(self, uuid: str) -> None:
        super().__init__(f"device {uuid} was not created by vgpuctl; pass --foreign to act on it anyway")
        self.uuid = uuid


class ForeignManaged(NotOwned):
    """mdevctl defines the device: removing it alone would not last (an auto-start definition brings it back)."""

    kind = "foreign-managed"

    def __init__(self, uuid: str, path: str, start: Optional[str]) -> None:
        if start == "manual":
            back = "mdevctl keeps its definition ('mdevctl start' makes it again)"
        elif start == "auto":
            back = "mdevctl will bring it back at boot (its definition starts it automatically)"
        else:
            back = "mdevctl may bring it back at boot (vgpuctl cannot read its definition)"
        VgpuctlError.__init__(
            self,
            f"device {uuid} is defined by mdevctl ({path}): {back}; pass --undefine to remove "
            "mdevctl's definition too (nothing was changed)",
        )
        self.uuid = uuid
        self.path = path
        self.start = start


# --- vgpuctl's own state or config is broken (8) -------------------------------------------------------------------
class StateError(VgpuctlError):
    exit_code = 8
    kind = "state"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class ConfigError(VgpuctlError):
    """A configuration file is invalid; carries file, line and key where known."""

    exit_code = 8
    kind = "config"

    def __init__(self, path: str, problem: str, *, line: Optional[int] = None, key: Optional[str] = None) -> None:
        loc = path if line is None else f"{path}:{line}"
        what = f" {key}:" if key else ""
        super().__init__(f"{loc}:{what} {problem}")
        self.path = path
        self.line = line
        self.key = key
        self.problem = problem


# --- the host said no (9) ------------------------------------------------------------------------------------------
class HostIOError(VgpuctlError):
    exit_code = 9
    kind = "host-io"

    def __init__(self, path: str, err: int, action: str = "write") -> None:
        name = _errno.errorcode.get(err, str(err))
        super().__init__(f"{action} {path} failed: {name} ({os.strerror(err)})")
        self.path = path
        self.errno = err
        self.action = action


class OutputError(HostIOError):
    """A file the user asked vgpuctl to write (``export -o``) cannot be written."""

    kind = "output"

    def __init__(self, path: str, err: int) -> None:
        VgpuctlError.__init__(
            self,
            f"cannot write {path}: {_errno.errorcode.get(err, str(err))} ({os.strerror(err)}); "
            "choose another --output (its directory must exist), or '-' for stdout",
        )
        self.path = path
        self.errno = err
        self.action = "write"


class ParentGone(VgpuctlError):
    exit_code = 10
    kind = "parent-gone"

    def __init__(self, parent: str) -> None:
        super().__init__(f"parent {parent} went away (driver unloading or device removed); retry when it is back")
        self.parent = parent


# --- concurrency (11) ----------------------------------------------------------------------------------------------
class LockTimeout(VgpuctlError):
    exit_code = 11
    kind = "lock-timeout"

    def __init__(self, path: str, seconds: float) -> None:
        super().__init__(f"another vgpuctl holds {path} (waited {seconds:g} s); retry, or raise --lock-timeout")
        self.path = path


# --- libvirt (12) --------------------------------------------------------------------------------------------------
class LibvirtError(VgpuctlError):
    exit_code = 12
    kind = "libvirt"


class LibvirtUnavailable(LibvirtError):
    """A Python module the libvirt integration needs (libvirt-python, jinja2) is not installed."""

    kind = "libvirt-unavailable"

    def __init__(self, module: str) -> None:
        super().__init__(
            f"the Python module {module} is not installed; install it with: pip install 'vgpuctl[libvirt]' "
            "(or pass --connect none to work without libvirt)"
        )
        self.module = module


class LibvirtConnectError(LibvirtError):
    """libvirtd is unreachable or refused the connection."""

    kind = "libvirt-connect"

    def __init__(self, uri: str, detail: str) -> None:
        super().__init__(
            f"cannot connect to libvirt at {uri}: {detail}; start libvirtd (systemctl start libvirtd), "
            "check --connect / VGPUCTL_LIBVIRT_URI, or pass --connect none to work without libvirt"
        )
        self.uri = uri
        self.detail = detail


class LibvirtTimeout(LibvirtConnectError):
    """libvirtd accepted the connection (or the call) but did not answer within ``--libvirt-timeout``."""

    kind = "libvirt-timeout"

    def __init__(self, uri: str, timeout: float, detail: str = "") -> None:
        detail = detail or f"no answer within {timeout:g} s (libvirtd accepts connections but does not respond)"
        LibvirtError.__init__(
            self,
            f"cannot connect to libvirt at {uri}: {detail}; restart libvirtd (systemctl restart libvirtd), raise "
            "--libvirt-timeout / VGPUCTL_LIBVIRT_TIMEOUT, or pass --connect none to work without libvirt",
        )
        self.uri = uri
        self.detail = detail
        self.timeout = timeout


class DomainNotFound(LibvirtError):
    kind = "domain-not-found"

    def __init__(self, domain: str, uri: str) -> None:
        super().__init__(f"no domain named {domain!r} at {uri} (see 'virsh -c {uri} list --all')")
        self.domain = domain
        self.uri = uri


class LibvirtRefused(LibvirtError):
    """libvirt refused a change (attach, detach, metadata); nothing vgpuctl made is left behind."""

    kind = "libvirt-refused"

    def __init__(self, action: str, domain: str, detail: str) -> None:
        super().__init__(f"libvirt refused to {action} domain {domain!r}: {detail}")
        self.action = action
        self.domain = domain
        self.detail = detail


class HookError(LibvirtError):
    """The libvirt hook could not do its job (bad arguments, bad domain XML, out of time)."""

    kind = "hook"


# --- libvirt-side conflicts and misses (6, 3, 2, 8) ----------------------------------------------------------------
class AttachedElsewhere(DeviceInUse):
    kind = "attached-elsewhere"

    def __init__(self, uuid: str, domains: Iterable[str]) -> None:
        self.domains = tuple(domains)
        super().__init__(
            uuid,
            [f"domain {d!r}" for d in self.domains],
            message=(
                f"device {uuid} is already attached to {', '.join(repr(d) for d in self.domains)}; "
                "detach it there first (nothing was changed)"
            ),
        )


class NotAttached(NotFound):
    kind = "not-attached"

    def __init__(self, domain: str, uuid: Optional[str] = None) -> None:
        what = f"device {uuid}" if uuid else "any vGPU managed by vgpuctl"
        super().__init__(f"domain {domain!r} has no {what} attached (in the live or persistent XML you chose)")
        self.domain = domain
        self.uuid = uuid


class MultiVgpuConflict(InvalidInput):
    """A second NVIDIA vGPU for a domain that NVIDIA's multi-vGPU rule forbids next to one it has."""

    kind = "multi-vgpu"

    def __init__(self, domain: str, uuid: str, vtype: str, other: str, other_type: str) -> None:
        super().__init__(
            f"cannot give domain {domain!r} vGPU {uuid} ({vtype}) next to its {other} ({other_type}): NVIDIA's "
            "multi-vGPU rule wants every vGPU of a VM of the same board type and series (nothing was changed)"
        )
        self.domain = domain
        self.uuid = uuid


class TenantMismatch(InvalidInput):
    """``attach --tenant`` names another tenant than the one the domain's vgpuctl metadata records."""

    kind = "tenant-mismatch"

    def __init__(self, domain: str, recorded: str, given: str) -> None:
        super().__init__(
            f"domain {domain!r} is recorded as tenant {recorded!r}, not {given!r}; a domain has one tenant "
            "(change it with 'virsh metadata', or drop --tenant)"
        )
        self.domain = domain
        self.recorded = recorded
        self.given = given


class TemplateError(ConfigError):
    """A device template is broken: syntax, an undefined name, or XML that is not exactly one <hostdev>."""

    kind = "template"


# --- NVML, NVIDIA's management library (14) ------------------------------------------------------------------------
class NvmlError(VgpuctlError):
    """A command that needs NVML could not use it, or NVML refused; ``code`` is the NVML error number, if any."""

    exit_code = 14
    kind = "nvml"

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.code = code


class NotVgpuHost(NvmlError):
    """The GPU is not in vGPU host mode (``nvmlDeviceGetVirtualizationMode`` is not 3)."""

    kind = "not-vgpu-host"

    def __init__(self, gpu: str, mode: int, mode_name: str) -> None:
        super().__init__(
            f"GPU {gpu} is not a vGPU host (NVML virtualization mode {mode}: {mode_name}); "
            "install and load the NVIDIA vGPU manager to use vGPU scheduling"
        )
        self.gpu = gpu
        self.mode = mode


class GpuBusy(VgpuctlError):
    """A GPU-wide setting cannot change while vGPUs on that GPU are running.  Exit 6 like ``DeviceInUse``, but the
    GPU is no device with a uuid: ``gpu`` and ``running`` say what is busy."""

    exit_code = DeviceInUse.exit_code
    kind = "gpu-busy"

    def __init__(self, gpu: str, setting: str, running: Iterable[str]) -> None:
        self.running = tuple(running)
        super().__init__(
            f"cannot change the {setting} of GPU {gpu} while vGPUs run on it ({', '.join(self.running)}); "
            "stop those VMs first (nothing was changed)"
        )
        self.gpu = gpu
        self.setting = setting


# --- the host does not match the desired state (13) ----------------------------------------------------------------
class NotConverged(VgpuctlError):
    """``check`` found differences, or ``apply`` could not carry out every action (blocked or failed, listed)."""

    exit_code = 13
    kind = "not-converged"

    def __init__(self, remaining: int, blocked: int = 0, failed: int = 0) -> None:
        super().__init__(
            f"the host does not match the desired state: {remaining} action(s) left"
            f" ({blocked} blocked, {failed} failed); see the list above"
        )
        self.remaining = remaining
        self.blocked = blocked
        self.failed = failed


# --- live migration (4, 15) ----------------------------------------------------------------------------------------
class MigrationNoCapacity(VgpuctlError):
    """This host offers a migrating domain's vGPU types, but cannot take them all now (``migrate check``)."""

    exit_code = 4
    kind = "migration-no-capacity"

    def __init__(self, domain: str, reasons: Sequence[str]) -> None:
        super().__init__(f"this host cannot take domain {domain!r} now: " + "; ".join(reasons))
        self.domain = domain
        self.reasons = tuple(reasons)


class MigrationIncompatible(VgpuctlError):
    """This host cannot run a migrating domain's vGPU at all: no such type, another vGPU manager or board."""

    exit_code = 15
    kind = "migration-incompatible"

    def __init__(self, domain: str, reasons: Sequence[str]) -> None:
        super().__init__(f"domain {domain!r} cannot migrate to this host: " + "; ".join(reasons))
        self.domain = domain
        self.reasons = tuple(reasons)


# --- the host is not ready to run vGPUs (16) -------------------------------------------------------------------------
class HostNotReady(VgpuctlError):
    """``doctor`` found at least one failing check (listed in ``failed``; each line above says what to fix)."""

    exit_code = 16
    kind = "not-ready"

    def __init__(self, failed: Sequence[str]) -> None:
        self.failed = tuple(failed)
        super().__init__(
            f"{len(self.failed)} check(s) failed: {', '.join(self.failed)}; each line above says what to fix"
        )


#: Every exit code, for the docs and the tests that keep docs and code in step.
EXIT_CODES = {
    0: "success",
    1: "unexpected internal error (a bug: please report it with the command line)",
    2: "invalid input or usage: malformed UUID, bad parent name, unknown option, ambiguous type name",
    3: "not found: unknown parent, type or instance",
    4: "no capacity: the type has no available instances on that parent, or no GPU can take it under the policy",
    5: "already exists: the UUID is taken on some parent",
    6: "in use: a process or VM holds the device; nothing was changed",
    7: "not owned: the device was not created by vgpuctl (use --foreign), or mdevctl defines it (use --undefine)",
    8: "vgpuctl's state, configuration or device template is corrupt, unsafe or invalid",
    9: "host I/O error: the kernel refused a sysfs operation, or an output file cannot be written (path and errno "
    "in the message)",
    10: "parent went away during the operation (driver unloading)",
    11: "timed out waiting for the vgpuctl lock held by another process",
    12: "libvirt error: daemon unreachable, domain unknown, or it refused the change",
    13: "not converged: the host differs from the desired state (check), or apply left blocked or failed actions",
    14: "NVML error: a command that needs NVIDIA's management library could not use it, the GPU is not a vGPU host, "
    "or NVML refused the change",
    15: "migration incompatible: this host cannot run the domain's vGPU (no such type, another vGPU manager "
    "version or board)",
    16: "host not ready: 'vgpuctl doctor' found a failing check (each line says what to fix)",
}
