#!/usr/bin/env bash
# Set up everything and run the whole test suite: the default suite (unit, simulated host, libvirt, Ansible),
# then the real-kernel stage (a QEMU guest with the kernel's sample mdev drivers).  Extra arguments go to pytest.
# VGPUCTL_SKIP_REALKERNEL=1 skips the second stage.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
if [ "${VGPUCTL_SKIP_REALKERNEL:-0}" != 1 ] && [ -x tests/realkernel/run ]; then
  tests/realkernel/run
fi
