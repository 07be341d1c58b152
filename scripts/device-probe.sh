#!/usr/bin/env bash
# Read-only probe of vgpuctl's NVML paths on a real NVIDIA machine: prints what vgpuctl and NVML see, changes
# nothing.  Most NVIDIA machines are not vGPU hosts; the probe then shows vgpuctl's "not a vGPU host" paths.
#
#   scripts/device-probe.sh [OUTPUT-FILE]      # also copies everything printed to OUTPUT-FILE
#
# What it runs (each step bounded by a timeout, each failure reported and the probe goes on; exit status 0):
#   - the driver: /sys/module/nvidia/version, NVML's nvmlSystemGetDriverVersion, and whether they agree;
#   - per GPU NVML sees: name, UUID, PCI bus id, virtualization mode, MIG mode (current and pending) and, in MIG
#     mode, the GPU instance profiles with their sizes and the GPU instances that exist (placement);
#   - vgpuctl doctor (where this vgpuctl has it), parents, list, sched show, hetero show (--connect none).
# Only NVML Get/query calls and vgpuctl's read-only commands: no Set*, Create*, Destroy*, Reset*, no sysfs write,
# no nvidia-smi option that changes anything.  VGPUCTL_ROOT (default /) is honoured for vgpuctl's own reads.
set -u
cd "$(dirname "$0")/.." || exit 0
OUT_FILE="${1:-}"
if [ -n "$OUT_FILE" ]; then
  exec > >(tee "$OUT_FILE") 2>&1
fi
STEP_TIMEOUT="${VGPUCTL_PROBE_TIMEOUT:-60}"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

section() { printf '\n=== %s\n' "$*"; }
run_step() {  # run_step TITLE CMD...: bounded, never fatal; prints the exit status
  local title="$1"; shift
  section "$title"
  printf '$ %s\n' "$*"
  timeout --kill-after=5 "$STEP_TIMEOUT" "$@" 2>&1
  local rc=$?
  printf '[exit %s]\n' "$rc"
}

section "host"
printf 'date: %s\nkernel: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -r)"
if [ -r /sys/module/nvidia/version ]; then
  printf 'nvidia module: %s\n' "$(cat /sys/module/nvidia/version)"
else
  printf 'nvidia module: not loaded (no /sys/module/nvidia/version)\n'
fi
for m in nvidia_vgpu_vfio nvidia_drm nvidia_uvm; do
  if [ -d "/sys/module/$m" ]; then printf 'module %s: loaded\n' "$m"; else printf 'module %s: not loaded\n' "$m"; fi
done
printf 'vgpuctl: %s\n' "$("$PY" -c 'import vgpuctl; print(getattr(vgpuctl, "__version__", "?"))' 2>&1)"
printf 'nvidia-ml-py: %s\n' "$("$PY" -c 'import importlib.metadata as m; print(m.version("nvidia-ml-py"))' 2>&1 | tail -1)"

section "NVML (read-only queries)"
timeout --kill-after=5 "$STEP_TIMEOUT" "$PY" -m vgpuctl.probe 2>&1
printf '[exit %s]\n' "$?"

VG=("$PY" -m vgpuctl.cli --connect none)
if "${VG[@]}" doctor --help >/dev/null 2>&1; then
  run_step "vgpuctl doctor" "${VG[@]}" doctor
else
  section "vgpuctl doctor"
  echo "this vgpuctl has no doctor command"
fi
run_step "vgpuctl parents" "${VG[@]}" parents
run_step "vgpuctl parents --json" "${VG[@]}" parents --json
run_step "vgpuctl list" "${VG[@]}" list
run_step "vgpuctl sched show" "${VG[@]}" sched show
run_step "vgpuctl hetero show" "${VG[@]}" hetero show
section "done (read only: nothing was changed)"
exit 0
