"""Option types every command shares.  Kept apart from ``cli`` so that command modules import them cheaply."""

from __future__ import annotations

import math
from typing import Any, Optional

import click


class FiniteFloat(click.FloatRange):
    """A ``click.FloatRange`` that also refuses NaN and infinity (``--lock-timeout nan`` would wait forever: NaN
    compares false with every bound).  Every float option of vgpuctl uses this type; a test walks the commands."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv
