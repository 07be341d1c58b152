"""Parse vGPU type descriptions into fields, where the vendor has a format.

Pure functions, no I/O.  Formats:

* NVIDIA (mdev ``description``): ``num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=5120x2880,
  max_instance=8`` (comma separated ``key=value``).
* Intel GVT-g: one ``key: value`` per line: ``low_gm_size: 128MB``, ``high_gm_size: 384MB``, ``fence: 4``,
  ``resolution: 1920x1200``, ``weight: 4``.
* Anything else stays free text (the kernel's mtty sample has no description file at all).
"""

from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SERIES_RE = re.compile(r"-\d+([QBAC])\d*$")  # T4-2Q, H200X-1-18C, and the 4-head T4-2B4
_NV_PAIR_RE = re.compile(r"^\s*([a-z_]+)\s*=\s*(\S.*?)\s*$")
_GVT_LINE_RE = re.compile(r"^\s*([a-z_]+)\s*:\s*(\S.*?)\s*$")
_UNIT_MIB = {"": 1.0 / (1024 * 1024), "K": 1.0 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0 * 1024}


def size_mib(text: str, *, default_unit: str = "") -> Optional[int]:
    """``2048M`` -> 2048, ``16G`` -> 16384, ``128MB`` -> 128; a bare number is bytes unless ``default_unit``."""
    m = _SIZE_RE.match(text)
    if not m:
        return None
    unit = (m.group(2) or default_unit).upper()
    return int(int(m.group(1)) * _UNIT_MIB[unit])


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def series_of(name: Optional[str]) -> Optional[str]:
    """NVIDIA series letter from a type name: ``GRID T4-2Q`` -> Q, ``NVIDIA H200X-1-18C`` -> C."""
    if not name:
        return None
    m = _SERIES_RE.search(name.strip().split()[-1])
    return m.group(1) if m else None


def parse_fields(description: str) -> Tuple[Tuple[str, str], ...]:
    """Recognised ``(key, value)`` pairs, in order; empty for free text."""
    text = description.strip()
    if not text:
        return ()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    gvt = [_GVT_LINE_RE.match(ln) for ln in lines]
    if all(gvt):
        return tuple((m.group(1), m.group(2)) for m in gvt)  # type: ignore[union-attr]
    if "=" in text:
        pairs = [_NV_PAIR_RE.match(p) for p in text.replace("\n", ",").split(",") if p.strip()]
        if all(pairs):
            return tuple((m.group(1), m.group(2)) for m in pairs)  # type: ignore[union-attr]
    return ()


def typed_fields(description: str, name: Optional[str] = None) -> Dict[str, object]:
    """The model's typed fields (``VgpuType`` keyword arguments) from a description and a type name."""
    fields = parse_fields(description)
    d = dict(fields)
    out: Dict[str, object] = {"fields": fields, "series": series_of(name)}
    if "framebuffer" in d:  # NVIDIA
        out["framebuffer_mib"] = size_mib(d["framebuffer"], default_unit="M")
        out["num_heads"] = _int(d.get("num_heads"))
        out["max_resolution"] = d.get("max_resolution")
        out["max_instance"] = _int(d.get("max_instance"))
        out["frl_config"] = _int(d.get("frl_config"))
    elif "low_gm_size" in d or "weight" in d:  # Intel GVT-g: graphics memory = aperture (low) + hidden (high)
        low = size_mib(d.get("low_gm_size", ""), default_unit="M")
        high = size_mib(d.get("high_gm_size", ""), default_unit="M")
        if low is not None or high is not None:
            out["framebuffer_mib"] = (low or 0) + (high or 0)
        out["max_resolution"] = d.get("resolution")
        out["weight"] = _int(d.get("weight"))
    return out
