#!/usr/bin/env bash
# The demo: set up, start a simulated host with two NVIDIA T4 GPUs, and walk through inventory, create (including
# one refused for lack of capacity), list and destroy, then stop the simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"

ROOT=$(mktemp -d /tmp/vgpuctl-demo.XXXXXX)
# the simulated host has no libvirtd and no NVIDIA driver user space (NVML): tell vgpuctl not to look for them
export VGPUCTL_ROOT="$ROOT" VGPUCTL_LIBVIRT_URI=none VGPUCTL_NVML=off
cleanup() { vgpuctl-sim stop "$ROOT" >/dev/null 2>&1 || true; rm -rf "$ROOT"; }
trap cleanup EXIT

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B= N=; fi
step() { printf '\n%s$ %s%s\n' "$B" "$*" "$N"; }
run() { step "$@"; "$@"; }

run vgpuctl-sim start t4x2 "$ROOT"
run vgpuctl parents
run vgpuctl types --parent 0000:3b:00.0
step "vgpuctl create --parent 0000:3b:00.0 --type T4-8Q   (twice: a 16 GB T4 holds two 8Q)"
a=$(vgpuctl create --parent 0000:3b:00.0 --type T4-8Q)
b=$(vgpuctl create --parent 0000:3b:00.0 --type T4-8Q)
step "vgpuctl create --parent 0000:3b:00.0 --type T4-8Q   (a third: no capacity, exit 4)"
rc=0; vgpuctl create --parent 0000:3b:00.0 --type T4-8Q || rc=$?
echo "exit code $rc"
step "vgpuctl create --parent 0000:3b:00.0 --type T4-2Q   (another type on the same GPU: NVIDIA allows one type per GPU)"
rc=0; vgpuctl create --parent 0000:3b:00.0 --type T4-2Q || rc=$?
echo "exit code $rc"
run vgpuctl create --parent 0000:d8:00.0 --type T4-2Q --uuid 5A0E4A7C-1B1F-4C39-9B53-0C6B7F2C6D01
run vgpuctl list
run vgpuctl types --parent 0000:3b:00.0
run vgpuctl list --json --parent 0000:d8:00.0
for u in "$a" "$b" 5a0e4a7c-1b1f-4c39-9b53-0c6b7f2c6d01; do run vgpuctl destroy "$u"; done
run vgpuctl list
run vgpuctl-sim stop "$ROOT"
