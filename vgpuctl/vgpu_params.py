"""NVIDIA vGPU plugin parameters (``nvidia/vgpu_params``): validation, the file's text, and the host's copy.

NVIDIA's vGPU manager reads a vGPU's plugin parameters from ``nvidia/vgpu_params`` under the mdev device
(``sys/bus/mdev/devices/<uuid>/nvidia/vgpu_params``) or, on the vendor-VFIO path, under the VF
(``sys/bus/pci/devices/<VF>/nvidia/vgpu_params``) when the VM starts.  Per NVIDIA's Virtual GPU Software User Guide
("Setting vGPU Plugin Parameters on a Linux with KVM Hypervisor"): the file takes a comma-separated list of
``name=value`` pairs (``echo "frame_rate_limiter=0, disable_vnc=1" > vgpu_params``), a change takes effect at the
next VM start, and what was set is cleared all at once by writing a space (``echo " " > vgpu_params``).  Writes
therefore add to what is set; vgpuctl makes the file hold exactly the desired set by clearing it first.

The parameters the guide documents, and the only keys vgpuctl accepts (``KNOWN``):

- ``frame_rate_limiter``: 0 turns the frame-rate limiter off (section "Setting vGPU Plugin Parameters ...", and
  "Disabling the Frame Rate Limiter");
- ``disable_vnc``: 1 turns the console VNC of the vGPU off (same section);
- ``enable_uvm``: 1 enables unified memory (sections "Enabling Unified Memory for a vGPU");
- ``enable_debugging``: 1 enables the CUDA debuggers (section "Enabling NVIDIA CUDA Toolkit Debuggers");
- ``enable_profiling``: 1 enables the CUDA profilers (section "Enabling NVIDIA CUDA Toolkit Profilers").

Values are small non-negative integers (0/1 for the switches).  A parameter file is bounded by sysfs's one page:
at most ``MAX_TEXT`` bytes in all (the driver documents no smaller limit; an assumption, not measured).
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any, Dict, Iterable, Optional, Tuple

from .errors import DeviceInUse, HostIOError, InvalidInput, UnknownInstance

#: documented key -> the values it takes (a regular expression) and what they mean, for the error messages
KNOWN: Dict[str, Tuple[str, str]] = {
    "frame_rate_limiter": (r"[0-9]{1,4}", "0 turns the frame-rate limiter off"),
    "disable_vnc": (r"[01]", "1 turns the vGPU's console VNC off"),
    "enable_uvm": (r"[01]", "1 enables unified memory"),
    "enable_debugging": (r"[01]", "1 enables the CUDA debuggers"),
    "enable_profiling": (r"[01]", "1 enables the CUDA profilers"),
}
MAX_TEXT = 4095  #: bytes one write to a sysfs attribute can carry (PAGE_SIZE - 1)
FILE = "vgpu_params"

Params = Tuple[Tuple[str, str], ...]  #: sorted (key, value) pairs; () is "none set"


class ParamsError(InvalidInput):
    """A vGPU parameter vgpuctl cannot write: unknown key, malformed value, newline, too long."""

    kind = "bad-vgpu-param"


def known_list() -> str:
    return ", ".join(sorted(KNOWN))


def validate(items: Iterable[Tuple[str, object]]) -> Params:
    """Check ``(key, value)`` pairs against the documented parameters; the canonical sorted tuple, or
    ``ParamsError`` naming the key and what to fix."""
    out: Dict[str, str] = {}
    for key, value in items:
        k = str(key)
        if "\n" in k or "\r" in k:
            raise ParamsError(f"vGPU parameter name {k!r} contains a newline")
        if k not in KNOWN:
            raise ParamsError(f"unknown vGPU parameter {k!r}; NVIDIA documents: {known_list()}")
        if isinstance(value, bool):
            value = int(value)
        v = str(value)
        if "\n" in v or "\r" in v:
            raise ParamsError(f"vGPU parameter {k}: the value contains a newline")
        pattern, meaning = KNOWN[k]
        if not re.fullmatch(pattern, v):
            raise ParamsError(f"vGPU parameter {k}={v!r} is not valid: expected a value matching {pattern} ({meaning})")
        if k in out and out[k] != v:
            raise ParamsError(f"vGPU parameter {k} is given twice ({out[k]} and {v})")
        out[k] = v
    params = tuple(sorted(out.items()))
    if len(render(params).encode()) > MAX_TEXT:
        raise ParamsError(f"vGPU parameters are longer than {MAX_TEXT} bytes")
    return params


def parse_option(values: Iterable[str]) -> Params:
    """``create --param KEY=VALUE`` (repeatable) -> validated parameters."""
    pairs = []
    for raw in values:
        if "\n" in raw or "\r" in raw:
            raise ParamsError(f"--param {raw!r}: contains a newline (one KEY=VALUE per --param)")
        key, eq, value = raw.partition("=")
        if not eq or not key.strip():
            raise ParamsError(f"--param {raw!r}: expected KEY=VALUE (known keys: {known_list()})")
        pairs.append((key.strip(), value.strip()))
    return validate(pairs)


def render(params: Params) -> str:
    """The text vgpuctl writes: ``disable_vnc=1, frame_rate_limiter=0`` (NVIDIA's comma-separated form)."""
    return ", ".join(f"{k}={v}" for k, v in params)


def parse_text(text: Optional[str]) -> Optional[Params]:
    """What a ``vgpu_params`` file reads as, as parameters; None where it cannot be read (no such file).  Items
    are separated by commas, spaces or newlines; an item without ``=`` is kept with an empty value (so it differs
    from anything vgpuctl would write, and is replaced)."""
    if text is None:
        return None
    out: Dict[str, str] = {}
    for item in re.split(r"[,\s]+", text.strip()):
        if item:
            k, _, v = item.partition("=")
            out[k] = v
    return tuple(sorted(out.items()))


def text_of(params: Optional[Params]) -> str:
    """For plan lines and tables: ``disable_vnc=1, frame_rate_limiter=0``, ``(none)``, or ``?`` (unknown)."""
    if params is None:
        return "?"
    return render(params) or "(none)"


# --- the host's copy -------------------------------------------------------------------------------------------
def path_of(paths: object, instance: Any) -> "os.PathLike[str]":
    """``nvidia/vgpu_params`` of an instance: under the VF (vendor VFIO) or the mdev device."""
    from .model import BackendKind

    if instance.backend is BackendKind.NVIDIA_VF:
        return paths.pci_devices / instance.uuid / "nvidia" / FILE  # type: ignore[attr-defined,no-any-return]
    return paths.mdev_devices / instance.uuid / "nvidia" / FILE  # type: ignore[attr-defined,no-any-return]


def read(paths: object, instance: object) -> Optional[Params]:
    """The parameters set on the instance now; None where it has no ``vgpu_params`` (not an NVIDIA vGPU)."""
    from .host.sysfs import read_attr

    return parse_text(read_attr(path_of(paths, instance)))


def write(paths: object, instance: Any, params: Params) -> None:
    """Make the instance's parameters exactly ``params``: clear (a space), then write the set (if any).  The
    caller has checked that no VM runs the vGPU (they take effect at its next start)."""
    from .host.sysfs import write_attr

    path = path_of(paths, instance)
    uuid = instance.uuid
    for text in (" ", render(params)) if params else (" ",):
        try:
            write_attr(path, text)
        except FileNotFoundError:
            raise UnknownInstance(uuid) from None
        except OSError as e:
            code = e.errno or errno.EIO
            if code == errno.EBUSY:
                raise DeviceInUse(uuid, ["the driver refused vgpu_params while the vGPU is open (EBUSY)"]) from None
            raise HostIOError(os.fspath(path), code, action=f"writing vGPU parameters {text_of(params)!r} to") from None
    now = read(paths, instance)
    if now is not None and now != params:
        raise HostIOError(
            os.fspath(path),
            errno.EIO,
            action=f"vGPU parameters did not stick (reads {text_of(now)!r}, wrote {text_of(params)!r}):",
        )


def from_node(parser: Any, node: object, key: str) -> Params:
    """``params:`` of a desired instance or a service profile (a YAML mapping node of a spec/profiles parser):
    validated parameters; ``{}`` (or an empty value) is the empty set, which clears what the vGPU has."""
    yaml = parser.yaml
    fail = parser.fail
    if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
        return ()
    if not isinstance(node, yaml.MappingNode):
        raise fail(node, key, f"expected a mapping of vGPU parameter to value ({known_list()}); {{}} clears them")
    pairs: list = []
    for knode, vnode in node.value:
        name = knode.value if isinstance(knode, yaml.ScalarNode) else None
        where = f"{key}.{name}" if isinstance(name, str) else key
        if not isinstance(name, str) or not isinstance(vnode, yaml.ScalarNode):
            raise fail(knode, where, "expected 'name: value' pairs with plain values")
        if any(name == k for k, _ in pairs):
            raise fail(knode, where, "duplicate key")
        value = vnode.value
        if vnode.tag.endswith(":bool"):
            value = "1" if value.lower() in ("true", "yes", "on") else "0"
        try:
            validate([(name, value)])
        except ParamsError as e:
            raise fail(vnode if name in KNOWN else knode, where, e.message) from None
        pairs.append((name, value))
    try:
        return validate(pairs)
    except ParamsError as e:
        raise fail(node, key, e.message) from None
