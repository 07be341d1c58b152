"""The desired state: which vGPU instances this host should have, read from ``etc/vgpuctl``.

Files: ``etc/vgpuctl/vgpuctl.yaml`` (optional) and then ``etc/vgpuctl/conf.d/*.yaml`` in name order.  Every file has
``version: 1``; their ``instances`` are merged into one set, and an instance name defined twice (in one file or two)
is an error.  Parsing is strict: unknown keys, wrong types, duplicate uuids or names are ``ConfigError``s naming the
file, the line and the key, raised before anything on the host is touched.  The schema is in docs/desired-state.md::

    version: 1
    instances:
      web-1:                            # the instance's name: [A-Za-z0-9_.-]+, unique over all files
        uuid: 0f4c...                   # optional: derived from the name when absent (uuid5, stable forever)
        type: T4-2Q                     # type id (nvidia-231) or name/profile (GRID T4-2Q, T4-2Q) ...
        profile: gold                   # ... or a service profile of profiles.yaml (exactly one of the two)
        parent: "0000:3b:00.0"          # a parent device ...
        placement: {tenant: a, numa_node: 0}   # ... or a placement request (exactly one of the two)
        domain: web-1                   # optional: libvirt domain to attach the device to
        attach: config                  # live | config | both (default config); only with domain
        params: {frame_rate_limiter: 0} # NVIDIA vgpu_params (vgpuctl.vgpu_params); {} clears; default: the
                                        # profile's, else not managed
    gpus:                               # optional: GPU-wide NVIDIA settings, converged through NVML
      "0000:4a:00.0":                   # a physical GPU's PCI address, unique over all files
        scheduler: {policy: equal-share, timeslice_ms: 2}   # best-effort | equal-share | fixed-share
        heterogeneous: false            # heterogeneous vGPU mode (mixed-size types)
        mig: {mode: on, instances: [3g.71gb, 4g.71gb]}   # MIG mode and GPU instances (vgpuctl.gpuwide)
        sriov: {vfs: 16}                # or {enabled: true}: the GPU's VFs, enabled at every boot

Checks that need the host (the type is offered, pinned instances fit a parent) are in ``validate``; the planner
never raises for them but shows the instance as blocked, so the service keeps running while a driver loads.
PyYAML is imported only when a file is parsed: read-only commands such as ``vgpuctl list`` never load it.

The package, by job (each module imports only those listed above it):

- ``schema``: the data (``DesiredState``, ``DesiredInstance``, ``DesiredGpu``) and the schema's constants;
- ``merge``: documents into one desired state (names, uuids and GPUs unique), ``profile:`` bound to profiles.yaml;
- ``parse``: one document, strictly (``parse``);
- ``files``: which files, read and merged (``load``, ``load_files``, ``spec_files``);
- ``validation``: against the host's inventory (``desired_type``, ``bind``, ``vf_issues``, ``validate``);
- ``export``: ``vgpuctl export``'s document.

Callers import from ``vgpuctl.spec``; the names below are its interface (``NAME_RE`` is ``model.NAME_RE``).
"""

from __future__ import annotations

from ..model import NAME_RE
from .export import export_doc, render_doc
from .files import load, load_files, spec_files
from .merge import bind_profiles, merge
from .parse import parse
from .schema import (
    DROPIN_DIR,
    MAIN_FILE,
    SCHED_POLICIES,
    SPEC_VERSION,
    UUID_NAMESPACE,
    AttachMode,
    DesiredGpu,
    DesiredInstance,
    DesiredScheduler,
    DesiredState,
    Mark,
    PlacementRequest,
    derive_uuid,
)
from .validation import (
    ambiguity,
    bind,
    desired_type,
    host_parent,
    no_type_reason,
    suggest_vf,
    validate,
    vf_issues,
    vf_parent,
)

__all__ = [
    "DROPIN_DIR",
    "MAIN_FILE",
    "NAME_RE",
    "SCHED_POLICIES",
    "SPEC_VERSION",
    "UUID_NAMESPACE",
    "AttachMode",
    "DesiredGpu",
    "DesiredInstance",
    "DesiredScheduler",
    "DesiredState",
    "Mark",
    "PlacementRequest",
    "ambiguity",
    "bind",
    "bind_profiles",
    "derive_uuid",
    "desired_type",
    "export_doc",
    "host_parent",
    "load",
    "load_files",
    "merge",
    "no_type_reason",
    "parse",
    "render_doc",
    "spec_files",
    "suggest_vf",
    "validate",
    "vf_issues",
    "vf_parent",
]
