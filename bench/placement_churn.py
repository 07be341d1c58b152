#!/usr/bin/env python3
"""Placement under churn: the share of vGPU requests admitted by vgpuctl's placement against two baselines, and the
time one placement decision takes.  Printed as figures and ratios, never asserted.

A seeded stream of arrivals (mixed Q profiles, small ones more frequent) and departures (exponential lifetimes) runs
against an in-memory 8-GPU host shaped like the simulator's T4 and A16 profiles, once per policy, with the same stream:

* vgpuctl   ``placement.place`` with the default policy (pack, fragmentation-aware tie-break);
* first-fit the first GPU, in address order, that the vendor's rules allow;
* round-robin one type per card (what KubeVirt's mediatedDevicesConfiguration does): the profile list is dealt to the
  GPUs round-robin once, up front, and a request only goes to a GPU dealt its profile.

All three use the same feasibility rules (``Decision.verdicts``) and the same host simulation (``placement.apply``
/ ``release``), so they differ only in the choice.

Against them an offline bound for the same stream, with hindsight: no policy, online or offline, admits more.  Each
GPU model is a pool of its GPUs' framebuffer; a request is live from its arrival to its departure, and at every step
the admitted live GB must fit the pool.  Dropping the per-GPU rules (one type per GPU, max_instance) and letting a
request be admitted in part only loosens that, so its optimum bounds every policy from above:

* GB: the relaxation is a fractional interval packing with one profit per GB, which admitting by earliest departure
  solves exactly (the k-track interval scheduling greedy, per GB);
* requests: the linear program max sum(x_i) s.t. sum(GB_i x_i over the live requests) <= pool GB at every step,
  0 <= x_i <= 1, bounded from above by its Lagrangian dual (``bound_requests``; no solver needed).

The gap to the bound is fragmentation (whole GPUs a type cannot share) plus the bound's looseness; the best online
policy of the three is printed beside it.  Run: ``python bench/placement_churn.py [--seed N] [--arrivals N]``.
"""

from __future__ import annotations

import argparse
import heapq
import importlib.util
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vgpuctl.model import Inventory  # noqa: E402
from vgpuctl.placement import Decision, Request, apply, place, release  # noqa: E402
from vgpuctl.policy import Policy  # noqa: E402

_spec = importlib.util.spec_from_file_location("placement_hosts", REPO / "tests" / "placement" / "placement_hosts.py")
hosts = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(hosts)  # type: ignore[union-attr]

SIZES = (("1Q", 0.30), ("2Q", 0.30), ("4Q", 0.20), ("8Q", 0.15), ("16Q", 0.05))
MEAN_GB = sum(int(s[:-1]) * w for s, w in SIZES)

Chooser = Callable[[Inventory, Decision], Optional[Tuple[str, str]]]


def build(kind: str) -> Tuple[Inventory, Sequence[str]]:
    """(inventory, models) for an 8-GPU host."""
    if kind == "t4x8":
        return hosts.t4_host(8), ("T4",)
    if kind == "a16x2":
        return hosts.a16_host(2), ("A16",)
    return hosts.host(
        *(hosts.t4(f"0000:{0x10 + i:02x}:00.0", numa=0) for i in range(4)),
        *(hosts.a16_gpu(f"0000:{0x80 + i:02x}:00.0", numa=1) for i in range(4)),
    ), ("T4", "A16")


def stream(seed: int, arrivals: int, models: Sequence[str], mean_life: float) -> List[Tuple[int, str, float]]:
    """[(arrival step, profile, lifetime in steps)], one arrival per step."""
    rng = random.Random(seed)
    sizes, weights = zip(*SIZES)
    out = []
    for step in range(arrivals):
        size = rng.choices(sizes, weights)[0]
        out.append((step, f"{rng.choice(list(models))}-{size}", rng.expovariate(1.0 / mean_life)))
    return out


def choose_vgpuctl(inv: Inventory, d: Decision) -> Optional[Tuple[str, str]]:
    return (d.parent, d.type_id) if d.placed else None  # type: ignore[return-value]


def choose_first_fit(inv: Inventory, d: Decision) -> Optional[Tuple[str, str]]:
    ok = sorted((v for v in d.verdicts if v.feasible), key=lambda v: v.gpu)
    return (ok[0].parent, ok[0].type_id) if ok else None  # type: ignore[return-value]


def round_robin_chooser(inv: Inventory, models: Sequence[str]) -> Chooser:
    """Deal each model's profiles to its GPUs round-robin, once; a request may use only a GPU dealt its profile."""
    dealt: Dict[str, str] = {}
    from vgpuctl.placement import gpu_states

    for model in models:
        gpus = [g.gpu for g in gpu_states(inv) if g.model == model]
        for i, gpu in enumerate(gpus):
            dealt[gpu] = f"{model}-{SIZES[i % len(SIZES)][0]}".lower()

    def choose(inv: Inventory, d: Decision) -> Optional[Tuple[str, str]]:
        want = d.request.type.lower()
        ok = [v for v in d.verdicts if v.feasible and dealt.get(v.gpu) == want]
        ok.sort(key=lambda v: v.gpu)
        return (ok[0].parent, ok[0].type_id) if ok else None  # type: ignore[return-value]

    return choose


def churn(
    inv: Inventory, reqs: Sequence[Tuple[int, str, float]], choose: Chooser, times: Optional[List[float]] = None
) -> Tuple[int, int]:
    """(admitted, admitted GB) for the stream under one chooser; ``times`` collects each decision's seconds."""
    policy = Policy()
    live: List[Tuple[float, str]] = []  # (departure time, uuid)
    admitted = gb = 0
    for n, (step, profile, life) in enumerate(reqs):
        while live and live[0][0] <= step:
            _, uuid = heapq.heappop(live)
            inv = release(inv, uuid)
        t0 = time.perf_counter()
        d = place(inv, policy, Request(type=profile))
        pick = choose(inv, d)
        if times is not None:
            times.append(time.perf_counter() - t0)
        if pick is None:
            continue
        uuid = f"00000000-0000-0000-0000-{n:012d}"
        inv = apply(inv, parent=pick[0], type_id=pick[1], uuid=uuid)
        heapq.heappush(live, (step + life, uuid))
        admitted += 1
        gb += int(profile.split("-")[1][:-1])
    return admitted, gb


def pools(inv: Inventory, models: Sequence[str]) -> Dict[str, int]:
    """{model: GB of its GPUs' framebuffer}."""
    from vgpuctl.placement import gpu_states

    out: Dict[str, int] = {}
    for g in gpu_states(inv):
        if g.model in models and g.total_fb:
            out[g.model] = out.get(g.model, 0) + g.total_fb // 1024
    return out


def _intervals(reqs: Sequence[Tuple[int, str, float]], model: str) -> List[Tuple[int, int, int]]:
    """[(first step, last step, GB)]: the integer steps at which the request would be live (it leaves before the
    first arrival at or after its departure time, as ``churn`` releases it)."""
    out = []
    for step, profile, life in reqs:
        if profile.split("-")[0] == model:
            last = step + max(int(-(-(step + life) // 1)) - step - 1, 0)  # steps t with step <= t < step + life
            out.append((step, max(last, step), int(profile.split("-")[1][:-1])))
    return out


def bound_gb(reqs: Sequence[Tuple[int, str, float]], pool: Dict[str, int]) -> int:
    """The most GB any policy could admit: fractional interval packing per model pool, earliest departure first."""
    total = 0
    horizon = len(reqs) + 1
    for model, cap in pool.items():
        free = [cap] * (horizon + 1)
        for first, last, gb in sorted(_intervals(reqs, model), key=lambda r: (r[1], r[0])):
            last = min(last, horizon)
            take = min([gb] + free[first : last + 1])
            if take > 0:
                for t in range(first, last + 1):
                    free[t] -= take
                total += take
    return total


def bound_requests(reqs: Sequence[Tuple[int, str, float]], pool: Dict[str, int]) -> float:
    """An upper bound on the admitted requests: the Lagrangian dual of the LP max sum(x_i) s.t. the live GB fit the
    pool at every step, 0 <= x_i <= 1.  For any prices lam_t >= 0 per GB-step,
    sum_t lam_t * pool + sum_i max(0, 1 - GB_i * sum_{t live} lam_t) >= the LP optimum >= any policy's count;
    prices are one lam on the steps whose offered load exceeds the pool (0 where nothing can be refused), lam
    scanned on a fine grid, the least bound kept."""
    total = 0.0
    horizon = len(reqs) + 1
    for model, cap in pool.items():
        iv = _intervals(reqs, model)
        offered = [0] * (horizon + 1)
        for first, last, gb in iv:
            for t in range(first, min(last, horizon) + 1):
                offered[t] += gb
        tight = [1 if o > cap else 0 for o in offered]
        prefix = [0]
        for x in tight:
            prefix.append(prefix[-1] + x)
        spans = [(gb * (prefix[min(last, horizon) + 1] - prefix[first])) for first, last, gb in iv]
        n_tight = prefix[-1]
        best = float(len(iv))  # lam = 0: every request
        for k in range(1, 4001):
            lam = 10 ** (-5 + 5 * k / 4000)  # 1e-5 .. 1
            b = lam * cap * n_tight + sum(max(0.0, 1.0 - lam * w) for w in spans)
            best = min(best, b)
        total += best
    return total


def decision_time(seed: int, samples: int) -> Tuple[float, int, int]:
    """Median seconds per ``place`` on a 16-GPU host (8 T4 + 2 A16 boards) half full; (median, GPUs, parents)."""
    inv = hosts.host(
        *(hosts.t4(f"0000:{0x10 + i:02x}:00.0", numa=i // 4) for i in range(8)),
        *(hosts.a16_gpu(f"0000:{0x80 + i:02x}:00.0", numa=i // 4) for i in range(8)),
    )
    rng = random.Random(seed)
    policy = Policy()
    n = 0
    while len(inv.instances) < 60:
        model = rng.choice(("T4", "A16"))
        d = place(inv, policy, Request(type=f"{model}-{rng.choice(('1Q', '2Q', '4Q'))}"))
        if d.placed:
            inv = apply(inv, parent=d.parent, type_id=d.type_id, uuid=f"00000000-0000-0000-0000-{n:012d}")  # type: ignore[arg-type]
        n += 1
    times = []
    for _ in range(samples):
        req = Request(type=f"{rng.choice(('T4', 'A16'))}-{rng.choice([s for s, _ in SIZES])}")
        t0 = time.perf_counter()
        d = place(inv, policy, req)
        _ = d.parent, d.type_id  # what apply reads: the choice, not the explanation
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len({p.gpu for p in inv.parents}), len(inv.parents)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--arrivals", type=int, default=3000)
    ap.add_argument("--load", type=float, default=1.15, help="offered load: mean live GB over host GB")
    ap.add_argument("--samples", type=int, default=1000)
    a = ap.parse_args(argv)
    print(
        f"churn: seed {a.seed}, {a.arrivals} arrivals, offered load {a.load:.2f}, profiles "
        + ", ".join(f"{s} {w:.0%}" for s, w in SIZES)
    )
    print("admitted share of requests, and of the GB they asked for; bound: offline, with hindsight (see above)")
    print(
        f"{'host':14} {'vgpuctl':>8} {'1st-fit':>8} {'rr/card':>8} {'bound':>8} {'vs 1st-fit':>11} "
        f"{'vs rr/card':>11} {'vs best':>8} {'vs bound':>9}"
    )
    churn_times: List[float] = []
    for kind in ("t4x8", "a16x2", "mixed"):
        inv, models = build(kind)
        total_gb = 16 * 8
        reqs = stream(a.seed, a.arrivals, models, mean_life=a.load * total_gb / MEAN_GB)
        res = {
            "vgpuctl": churn(inv, reqs, choose_vgpuctl, churn_times),
            "first-fit": churn(inv, reqs, choose_first_fit),
            "round-robin": churn(inv, reqs, round_robin_chooser(inv, models)),
        }
        pool = pools(inv, models)
        bounds = (bound_requests(reqs, pool), bound_gb(reqs, pool))
        offered_gb = sum(int(p.split("-")[1][:-1]) for _, p, _ in reqs)
        for unit, idx, total in (("requests", 0, len(reqs)), ("GB", 1, offered_gb)):
            share = {k: v[idx] / total for k, v in res.items()}
            best = max(share["first-fit"], share["round-robin"])
            b = bounds[idx] / total if bounds[idx] is not None else None
            print(
                f"{kind + ' ' + unit:14} {share['vgpuctl']:8.1%} {share['first-fit']:8.1%} "
                f"{share['round-robin']:8.1%} " + (f"{b:8.1%}" if b else f"{'n/a':>8}") + " "
                f"{share['vgpuctl'] / share['first-fit']:10.3f}x {share['vgpuctl'] / share['round-robin']:10.3f}x "
                f"{share['vgpuctl'] / best:7.3f}x " + (f"{share['vgpuctl'] / b:8.3f}x" if b else f"{'n/a':>9}")
            )
    med, gpus, parents = decision_time(a.seed, a.samples)
    print(
        f"decision time: median {med * 1e6:.1f} us per place() on a {gpus}-GPU host ({parents} parents, "
        f"60 instances), {a.samples} samples"
    )
    print(
        f"decision time under churn (the inventory changed by apply/release before most calls): median "
        f"{statistics.median(churn_times) * 1e6:.1f} us over {len(churn_times)} decisions on 8-GPU hosts"
    )


if __name__ == "__main__":
    main()
