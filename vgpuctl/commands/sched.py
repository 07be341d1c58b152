"""``vgpuctl sched`` and ``vgpuctl hetero``: NVIDIA's time-slice scheduler and heterogeneous mode, through NVML."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import click

from ..errors import GpuBusy
from ..host import TypeScope
from ..model import SchedulerPolicy, canonical_parent_name
from ..state import HostLock
from ..options import FiniteFloat
from ._common import Settings, build_lifecycle, info, json_option, record, render, settings

SCHED_SCHEMA = "vgpuctl.scheduler/v1"
SCHED_COLUMNS = [
    ("GPU", "gpu"),
    ("NAME", "name"),
    ("VGPU_HOST", "vgpu_host"),
    ("POLICY", "policy"),
    ("TIMESLICE_MS", "timeslice_ms"),
    ("SUPPORTED", "supported"),
    ("RANGE_MS", "timeslice_range_ms"),
    ("HETEROGENEOUS", "heterogeneous"),
]


def _gpu_arg(value: str) -> str:
    canon = canonical_parent_name(value)
    if canon is None or ":" not in canon:
        raise click.BadParameter(f"{value!r} is not a PCI address (e.g. 0000:4a:00.0)")
    return canon


def _running_on(s: Settings, gpu: str, nv: Any, *, existing: bool) -> List[str]:
    """What blocks a GPU-wide change: NVML's active vGPUs, vGPUs a process holds open, and (``existing``) any vGPU
    instance on the GPU at all."""
    lc = build_lifecycle(Settings(root=s.root, connect="none", lock_timeout=s.lock_timeout, nvml="off"))
    inv = lc.host.inventory(types=TypeScope.NONE)  # parents and instances only: no type tables
    on_gpu = [i for i in inv.instances if (inv.parent(i.parent) and inv.parent(i.parent).gpu == gpu)]  # type: ignore
    out = [f"NVML vGPU {v}" for v in nv.active_vgpus(gpu)]
    held = lc.users(on_gpu)
    out += [f"{u} ({', '.join(w)})" for u, w in sorted(held.items())]
    if existing:
        out += [i.uuid for i in on_gpu if i.uuid not in held]
    return out


_Show = Callable[[Any], List[Dict[str, Any]]]


def _per_gpu(gpu: Optional[str], rec: Callable[[Any, str, Any], Dict[str, Any]]) -> _Show:
    """For ``show``: a function of NVML that makes ``rec(nv, pci, gpu_info)`` for ``gpu`` (default: every NVIDIA GPU
    NVML sees); a GPU asked for by name that is not a vGPU host is an error (``NotVgpuHost``)."""
    gpus = [_gpu_arg(gpu)] if gpu else None

    def show(nv: Any) -> List[Dict[str, Any]]:
        out = []
        for pci in gpus if gpus is not None else nv.all_gpus():
            g = nv.gpu(pci, types=False, vgpus=False)
            if gpus is not None and not g.vgpu_host:
                nv.host_handle(pci)  # raises NotVgpuHost for a GPU asked for by name
            out.append(rec(nv, pci, g))
        return out

    return show


def _sched_record(sc: Any, gpu_info: Any) -> Dict[str, Any]:
    def ms(us: Optional[float]) -> Optional[float]:
        return None if us is None else us / 1000

    return record(
        SCHED_SCHEMA,
        gpu=gpu_info.pci,
        name=gpu_info.name,
        uuid=gpu_info.uuid,
        vgpu_host=gpu_info.vgpu_host,
        virt_mode=gpu_info.virt_mode,
        policy=sc.policy if sc else None,
        arr_mode=sc.arr_mode if sc else None,
        timeslice_ms=ms(sc.timeslice_us) if sc else None,
        supported=list(sc.supported) if sc else [],
        timeslice_range_ms=(
            f"{ms(sc.min_timeslice_us):g}..{ms(sc.max_timeslice_us):g}"
            if sc and sc.min_timeslice_us is not None and sc.max_timeslice_us is not None
            else None
        ),
        heterogeneous=sc.heterogeneous if sc else None,
    )


def _while_idle(
    s: Any, pci: str, what: str, change: Callable[[Any, Any], Dict[str, Any]], *, existing: bool
) -> Callable[[Any], Dict[str, Any]]:
    """An NVML action that makes ``change(nv, gpu)`` under the host lock, once the GPU is known to be a vGPU host
    with no vGPU running on it (``existing``: with no vGPU at all), else ``GpuBusy`` naming ``what``."""

    def act(nv: Any) -> Dict[str, Any]:
        with HostLock(s.paths, s.lock_timeout):
            g = nv.gpu(pci, types=False, vgpus=False)
            nv.host_handle(pci)
            busy = _running_on(s, pci, nv, existing=existing)
            if busy:
                raise GpuBusy(pci, what, busy)
            return change(nv, g)

    return act


# --- sched ---------------------------------------------------------------------------------------------------------
@click.group()
def sched() -> None:
    """NVIDIA vGPU time-slice scheduler per GPU (NVML): show, or set while no vGPU runs on the GPU."""


@sched.command("show")
@click.argument("gpu", required=False)
@json_option
def sched_show(gpu: Optional[str], as_json: bool) -> None:
    """Policy, time slice, supported policies and range of one GPU (default: every NVIDIA GPU NVML sees)."""
    from ..nvml import required

    recs = required(_per_gpu(gpu, lambda nv, pci, g: _sched_record(nv.scheduler(pci) if g.vgpu_host else None, g)))
    render(recs, SCHED_COLUMNS, as_json=as_json, empty="no NVIDIA GPU found by NVML")
    for r in recs:
        if not r["vgpu_host"]:
            info(f"GPU {r['gpu']} ({r['name']}) is not a vGPU host: it has no vGPU scheduler")


@sched.command("set")
@click.argument("gpu")
@click.option("--policy", required=True, type=click.Choice([p.value for p in SchedulerPolicy]))
@click.option(
    "--timeslice",
    type=FiniteFloat(min=0, min_open=True),
    metavar="MS",
    help="Time slice in milliseconds (equal-share, fixed-share); within the GPU's range.",
)
@json_option
def sched_set(gpu: str, policy: str, timeslice: Optional[float], as_json: bool) -> None:
    """Set the GPU's vGPU scheduler; refused while any vGPU on it runs (NVIDIA allows changes only then).  Not
    persistent: the driver forgets it when its module reloads."""
    from ..nvml import required

    s = settings()
    pci = _gpu_arg(gpu)

    def change(nv: Any, g: Any) -> Dict[str, Any]:
        nv.set_scheduler(pci, policy, timeslice)
        return _sched_record(nv.scheduler(pci), g)

    rec = required(_while_idle(s, pci, "vGPU scheduler", change, existing=False))
    render([rec], SCHED_COLUMNS, as_json=as_json)


# --- hetero --------------------------------------------------------------------------------------------------------
HETERO_COLUMNS = [("GPU", "gpu"), ("NAME", "name"), ("VGPU_HOST", "vgpu_host"), ("HETEROGENEOUS", "heterogeneous")]


@click.group()
def hetero() -> None:
    """NVIDIA heterogeneous vGPU mode per GPU (mixed-size types on one GPU; NVML): show, or set on an empty GPU."""


@hetero.command("show")
@click.argument("gpu", required=False)
@json_option
def hetero_show(gpu: Optional[str], as_json: bool) -> None:
    """Whether each GPU (default: every NVIDIA GPU NVML sees) is in heterogeneous mode."""
    from ..nvml import required

    def rec(nv: Any, pci: str, g: Any) -> Dict[str, Any]:
        return record(
            "vgpuctl.heterogeneous/v1",
            gpu=pci,
            name=g.name,
            vgpu_host=g.vgpu_host,
            heterogeneous=nv.heterogeneous(pci) if g.vgpu_host else None,
        )

    render(required(_per_gpu(gpu, rec)), HETERO_COLUMNS, as_json=as_json, empty="no NVIDIA GPU found by NVML")


@hetero.command("set")
@click.argument("gpu")
@click.argument("mode", type=click.Choice(["on", "off"]))
@json_option
def hetero_set(gpu: str, mode: str, as_json: bool) -> None:
    """Turn heterogeneous mode on or off; refused while the GPU hosts any vGPU (NVML would say IN_USE)."""
    from ..nvml import required

    s = settings()
    pci = _gpu_arg(gpu)

    def change(nv: Any, g: Any) -> Dict[str, Any]:
        nv.set_heterogeneous(pci, mode == "on")
        return record(
            "vgpuctl.heterogeneous/v1", gpu=pci, name=g.name, vgpu_host=True, heterogeneous=nv.heterogeneous(pci)
        )

    render(
        [required(_while_idle(s, pci, "heterogeneous mode", change, existing=True))], HETERO_COLUMNS, as_json=as_json
    )


__all__: Sequence[str] = ["sched", "hetero"]
