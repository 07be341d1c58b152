"""Prometheus metrics of the reconciling service: an HTTP endpoint and/or a node_exporter textfile.

Off by default; ``vgpuctl service --metrics-address 127.0.0.1:9835`` (a bare port binds 127.0.0.1) and/or
``--metrics-textfile /var/lib/node_exporter/textfile_collector/vgpuctl.prom`` turn it on.  ``prometheus_client``
(extra ``metrics``) is imported only then.  After every reconcile pass the service takes a ``Snapshot`` (a pure
function of the inventory, the policy, who uses what and NVML's per-vGPU figures); scrapes and the textfile show
the latest one, so instances that went away disappear from the series.  The textfile is written atomically
(temporary file in the same directory, fsync, rename), as node_exporter requires.

Series (names and units as Prometheus recommends):

=================================================  =======  =====================================================
vgpuctl_instances{parent,type,type_name,state}     gauge    instances; state is in_use (a process or domain uses
                                                            it) or idle
vgpuctl_instances_in_use                           gauge    instances in use
vgpuctl_capacity_remaining{gpu,type,type_name}     gauge    how many more of an allowed type fit on the GPU now
vgpuctl_gpu_framebuffer_free_bytes{gpu}            gauge    NVIDIA: framebuffer not held by a vGPU
vgpuctl_gpu_framebuffer_unusable_bytes{gpu}        gauge    ... of which the largest allowed profile cannot use
vgpuctl_fragmentation_ratio                        gauge    unusable / free over the host (``vgpuctl status``)
vgpuctl_reconcile_runs_total                       counter  reconcile passes
vgpuctl_reconcile_failures_total                   counter  passes that raised or had a failed step
vgpuctl_reconcile_duration_seconds                 summary  duration of the passes
vgpuctl_reconcile_converged                        gauge    1 when the last pass left the host converged
vgpuctl_reconcile_last_converge_timestamp_seconds  gauge    Unix time of the last pass that converged
vgpuctl_vgpu_framebuffer_used_bytes{uuid,gpu}      gauge    NVML: framebuffer the guest uses (running vGPUs)
vgpuctl_vgpu_utilization_ratio{uuid,gpu,engine}    gauge    NVML: sm, memory, encoder, decoder utilization, 0..1
vgpuctl_vgpu_licensed{uuid,gpu,state}              gauge    NVML: 1 licensed, 0 not (state: unlicensed,
                                                            unlicensed-restricted, ...); absent where unknown
vgpuctl_vgpu_license_expiry_seconds{uuid,gpu}      gauge    NVML: Unix time the license expires (valid expiry
                                                            only; a permanent license has none)
=================================================  =======  =====================================================

The ``vgpuctl_vgpu_*`` series exist only where NVML answers (an NVIDIA vGPU host with ``nvidia-ml-py``), for the
vGPUs a VM runs (NVML lists no others); a vGPU whose license NVML cannot tell has no license series.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .errors import InvalidInput, VgpuctlError
from .model import Inventory, Vendor

log = logging.getLogger("vgpuctl.metrics")

DEFAULT_HOST = "127.0.0.1"
MIB = 1024 * 1024

Labels = Tuple[Tuple[str, str], ...]


def parse_address(text: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT`` or ``PORT`` (on 127.0.0.1) -> (host, port)."""
    t = text.strip()
    host, _, port = t.rpartition(":")
    if not _:
        host, port = "", t
    host = host.strip("[]") or DEFAULT_HOST
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"metrics address {text!r}: expected HOST:PORT, [IPv6]:PORT or PORT (0-65535)")
    return host, int(port)


def host_samples(
    inventory: Inventory,
    policy: Any,
    *,
    users: Mapping[str, Sequence[str]],
    vgpus: Optional[Mapping[str, Any]] = None,
) -> Dict[str, List[Tuple[Labels, float]]]:
    """The host-describing series (instances, capacity, framebuffer, NVML) as a pure function of its inputs."""
    from .status import host_status

    out: Dict[str, List[Tuple[Labels, float]]] = {}
    counts: Dict[Labels, int] = {}
    for i in inventory.instances:
        t = inventory.type_on(i.parent, i.type_id)
        key = (
            ("parent", i.parent),
            ("type", i.type_id),
            ("type_name", (t.profile if t else None) or i.type_id),
            ("state", "in_use" if users.get(i.uuid) else "idle"),
        )
        counts[key] = counts.get(key, 0) + 1
    out["vgpuctl_instances"] = sorted((k, float(v)) for k, v in counts.items())
    out["vgpuctl_instances_in_use"] = [((), float(sum(1 for i in inventory.instances if users.get(i.uuid))))]
    st = host_status(inventory, policy)
    cap: List[Tuple[Labels, float]] = []
    free: List[Tuple[Labels, float]] = []
    unusable: List[Tuple[Labels, float]] = []
    for g in st.gpus:
        for c in g.capacity:
            cap.append(((("gpu", g.gpu), ("type", c.type_id), ("type_name", c.profile or c.type_id)), float(c.left)))
        if g.unusable_mib is not None:
            free.append(((("gpu", g.gpu),), float((g.free_mib or 0) * MIB)))
            unusable.append(((("gpu", g.gpu),), float(g.unusable_mib * MIB)))
    out["vgpuctl_capacity_remaining"] = cap
    out["vgpuctl_gpu_framebuffer_free_bytes"] = free
    out["vgpuctl_gpu_framebuffer_unusable_bytes"] = unusable
    out["vgpuctl_fragmentation_ratio"] = [((), float(st.fragmentation))]
    if vgpus:
        fb: List[Tuple[Labels, float]] = []
        util: List[Tuple[Labels, float]] = []
        for uuid, v in sorted(vgpus.items()):
            gpu = inventory.gpu_of_instance(uuid) or ""
            if getattr(v, "fb_used_mib", None) is not None:
                fb.append(((("uuid", uuid), ("gpu", gpu)), float(v.fb_used_mib * MIB)))
            for engine, attr in (
                ("sm", "sm_util"),
                ("memory", "mem_util"),
                ("encoder", "enc_util"),
                ("decoder", "dec_util"),
            ):
                value = getattr(v, attr, None)
                if value is not None:
                    util.append(((("uuid", uuid), ("gpu", gpu), ("engine", engine)), value / 100.0))
        out["vgpuctl_vgpu_framebuffer_used_bytes"] = fb
        out["vgpuctl_vgpu_utilization_ratio"] = util
        licensed: List[Tuple[Labels, float]] = []
        expiry: List[Tuple[Labels, float]] = []
        for uuid, v in sorted(vgpus.items()):
            lic = getattr(v, "license", None)
            if lic is None or lic.licensed is None:
                continue
            gpu = inventory.gpu_of_instance(uuid) or ""
            licensed.append(((("uuid", uuid), ("gpu", gpu), ("state", lic.state)), 1.0 if lic.licensed else 0.0))
            if lic.expiry is not None:
                expiry.append(((("uuid", uuid), ("gpu", gpu)), float(lic.expiry)))
        out["vgpuctl_vgpu_licensed"] = licensed
        out["vgpuctl_vgpu_license_expiry_seconds"] = expiry
    return out


HELP = {
    "vgpuctl_instances": "vGPU instances by parent, type and state (in_use or idle)",
    "vgpuctl_instances_in_use": "vGPU instances a process or libvirt domain uses",
    "vgpuctl_capacity_remaining": "How many more of an allowed type fit on the GPU now",
    "vgpuctl_gpu_framebuffer_free_bytes": "GPU framebuffer held by no vGPU",
    "vgpuctl_gpu_framebuffer_unusable_bytes": "Free GPU framebuffer the largest allowed profile cannot use",
    "vgpuctl_fragmentation_ratio": "Share of the host's free framebuffer unusable for the largest allowed profiles",
    "vgpuctl_reconcile_converged": "1 when the last reconcile pass left the host converged",
    "vgpuctl_reconcile_last_converge_timestamp_seconds": "Unix time of the last reconcile pass that converged",
    "vgpuctl_vgpu_framebuffer_used_bytes": "Framebuffer used inside a running vGPU (NVML)",
    "vgpuctl_vgpu_utilization_ratio": "vGPU engine utilization, 0 to 1 (NVML)",
    "vgpuctl_vgpu_licensed": "1 when the running vGPU holds a license, 0 when not (NVML; absent where unknown)",
    "vgpuctl_vgpu_license_expiry_seconds": "Unix time the vGPU's license expires (NVML; valid expiries only)",
}


class _Collector:
    """A prometheus_client collector over the exporter's latest samples."""

    def __init__(self, exporter: "MetricsExporter") -> None:
        self.exporter = exporter

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

        ex = self.exporter
        with ex.lock:
            samples = {k: list(v) for k, v in ex.samples.items()}
            runs, failures, total_s = ex.runs, ex.failures, ex.duration_sum
        yield CounterMetricFamily("vgpuctl_reconcile_runs", "Reconcile passes of the service", value=runs)
        yield CounterMetricFamily(
            "vgpuctl_reconcile_failures", "Reconcile passes that raised or had a failed step", value=failures
        )
        yield SummaryMetricFamily(
            "vgpuctl_reconcile_duration_seconds",
            "Duration of the reconcile passes",
            count_value=runs,
            sum_value=total_s,
        )
        for name in sorted(samples):
            rows = samples[name]
            names = [k for k, _ in rows[0][0]] if rows else []
            fam = GaugeMetricFamily(name, HELP.get(name, name), labels=names)
            for labels, value in rows:
                fam.add_metric([v for _, v in labels], value)
            yield fam


@dataclass
class MetricsExporter:
    """Holds the latest samples and the reconcile counters; serves them over HTTP and/or writes the textfile."""

    address: Optional[str] = None
    textfile: Optional[str] = None
    samples: Dict[str, List[Tuple[Labels, float]]] = field(default_factory=dict)
    runs: int = 0
    failures: int = 0
    duration_sum: float = 0.0
    lock: Any = field(default_factory=threading.Lock)
    bound: Optional[Tuple[str, int]] = None  #: where the HTTP endpoint listens
    _registry: Any = None
    _server: Any = None
    _nvml_note: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return bool(self.address or self.textfile)

    def start(self) -> None:
        try:
            from prometheus_client import CollectorRegistry
        except ImportError:
            raise InvalidInput(
                "metrics need the Python module prometheus_client: pip install 'vgpuctl[metrics]'"
            ) from None
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self))
        if self.address:
            from prometheus_client import start_http_server

            host, port = parse_address(self.address)
            started = start_http_server(port, addr=host, registry=self._registry)
            self._server = started[0] if isinstance(started, tuple) else None
            real = self._server.server_address[1] if self._server is not None else port
            self.bound = (host, real)
            log.info("metrics on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", real)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def observe(self, *, reconciler: Any, result: Any, duration: float, error: Optional[BaseException]) -> None:
        """After one reconcile pass: count it, re-read what the series describe, write the textfile."""
        ok = error is None and result is not None and not result.failed
        converged = result is not None and error is None and result.converged
        try:
            samples = self._host_samples(reconciler, result)
        except Exception as e:  # metrics must never take the service down
            log.warning("metrics: could not describe the host: %s", e)
            samples = None
        with self.lock:
            self.runs += 1
            self.failures += 0 if ok else 1
            self.duration_sum += duration
            if samples is not None:
                last = self.samples.get("vgpuctl_reconcile_last_converge_timestamp_seconds")
                self.samples = samples
                if converged:
                    self.samples["vgpuctl_reconcile_last_converge_timestamp_seconds"] = [((), time.time())]
                elif last:
                    self.samples["vgpuctl_reconcile_last_converge_timestamp_seconds"] = last
            self.samples["vgpuctl_reconcile_converged"] = [((), 1.0 if converged else 0.0)]
        if self.textfile:
            self.write_textfile()

    def _host_samples(self, reconciler: Any, result: Any) -> Dict[str, List[Tuple[Labels, float]]]:
        from .policy import load_policy, policy_path

        inv = result.after.inventory if result is not None else reconciler.host.inventory()
        try:
            policy = load_policy(policy_path(reconciler.host.paths.config_dir))
        except VgpuctlError as e:
            log.warning("metrics: policy ignored (%s); capacity is shown for every type", e)
            from .policy import Policy

            policy = Policy()
        users = reconciler.lifecycle.users(inv.instances) if inv.instances else {}
        return host_samples(inv, policy, users=users, vgpus=self._nvml(inv, reconciler.host.paths))

    def _nvml(self, inv: Inventory, paths: Any = None) -> Optional[Mapping[str, Any]]:
        """Per-vGPU details from NVML (vgpuctl.nvml), where the host has NVIDIA GPUs and NVML answers."""
        if not inv.instances or not any(p.vendor is Vendor.NVIDIA and p.pci for p in inv.parents):
            return None
        try:
            from . import nvml

            gpus, _notes = nvml.gather(inv)
            _inv, details = nvml.enrich(inv, gpus, nvml.placements_of(paths, inv) if paths is not None else None)
            return details
        except Exception as e:  # NvmlUnavailable, ImportError, NvmlError: the vGPU series are left out
            note = str(getattr(e, "reason", None) or e)
            if note != self._nvml_note:
                log.info("metrics: no per-vGPU NVML series: %s", note)
                self._nvml_note = note
            return None

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self._registry)

    def write_textfile(self) -> None:
        from .errors import StateError
        from .fsutil import write_atomic

        assert self.textfile is not None
        try:
            write_atomic(self.textfile, self.render(), durable=False)
        except (OSError, StateError) as e:
            log.warning("metrics: cannot write %s: %s", self.textfile, e)


__all__ = ["MetricsExporter", "host_samples", "parse_address"]
