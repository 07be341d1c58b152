"""Building blocks of the fast core tests: a memory host over a simulator machine under a temporary root, and a
crash injector that stops every later durable step once it fires (as kill -9 would)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional

from vgpuctl.host.memory import machine_at, memory_host
from vgpuctl.lifecycle import Lifecycle


class Crash(BaseException):
    """The process died here: nothing after it happens (no roll-back, no save)."""


class Crasher:
    """Counts durable steps (a state save, a host write) of one lifecycle and raises ``Crash`` at the ``at``-th and
    at every one after it, so that a crashed run's ``except`` clauses cannot repair anything."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.n = 0
        self.kinds: List[str] = []

    @property
    def fired(self) -> bool:
        return self.n >= self.at

    def wrap(self, fn: Callable, kind: str) -> Callable:
        def inner(*a, **kw):
            if self.fired:
                raise Crash()
            out = fn(*a, **kw)
            self.n += 1
            self.kinds.append(kind)
            if self.fired:
                raise Crash()
            return out

        return inner

    def arm(self, lc: Lifecycle) -> Lifecycle:
        lc.store.save = self.wrap(lc.store.save, "save")  # type: ignore[method-assign]
        for b in lc.host.backends:
            for name in ("write_create", "write_remove"):
                setattr(b, name, self.wrap(getattr(b, name), "write"))
        return lc


def configure(root: Path, text: str) -> None:
    p = root / "etc" / "vgpuctl" / "vgpuctl.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, p)


class MemHost:
    """A simulator machine and a root directory; ``lifecycle()`` is a fresh process's view of them."""

    def __init__(self, profile: str, root: Path) -> None:
        self.root = Path(root)
        self.machine = machine_at(profile, self.root)

    def host(self):
        return memory_host(self.machine, self.root)

    def lifecycle(self, crasher: Optional[Crasher] = None, lock_timeout: float = 1.0) -> Lifecycle:
        lc = Lifecycle(self.host(), lock_timeout=lock_timeout)
        return crasher.arm(lc) if crasher is not None else lc

    def instances(self) -> List[str]:
        m = self.machine
        return sorted([u for u, i in m.instances.items() if not i.removing] + [v for v, t in m.vf_type.items() if t])

    def group_file(self, uuid: str) -> str:
        m = self.machine
        inst = m.instances.get(uuid)
        group = inst.group if inst is not None else m.functions[uuid].group
        return m.group_file(group)  # type: ignore[arg-type,return-value]
