#!/usr/bin/env bash
# Set up everything and run the whole test suite: the default suite (unit, simulated host, libvirt, Ansible),
# then the real-kernel stage (a QEMU guest with the kernel's sample mdev drivers), then its bookworm-backports
# flavour (kernel 6.12, QEMU 10, libvirt 11 in a guest root of their own: live migration between two libvirtds).
# Extra arguments go to pytest.  VGPUCTL_SKIP_REALKERNEL=1 skips both real-kernel stages; VGPUCTL_REALKERNEL_BPO=0
# skips only the backports one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# two pytest-xdist workers (VGPUCTL_TEST_JOBS, 0: none): much of the suite waits on subprocesses (ansible-playbook,
# libvirtd, Chromium, the service), so a second worker uses the time one leaves idle; later -n arguments win
.venv/bin/python -m pytest -q -p no:cacheprovider -n "${VGPUCTL_TEST_JOBS:-2}" "$@"
if [ "${VGPUCTL_SKIP_REALKERNEL:-0}" != 1 ] && [ -x tests/realkernel/run ]; then
  tests/realkernel/run
  if [ "${VGPUCTL_REALKERNEL_BPO:-1}" = 1 ]; then
    t0=$(date +%s)
    rc=0
    tests/realkernel/run --flavour bookworm-backports || rc=$?
    echo "real-kernel stage, bookworm-backports flavour: $(( $(date +%s) - t0 ))s (exit $rc)" >&2
    [ "$rc" = 0 ] || exit "$rc"
  fi
fi
