#!/usr/bin/env bash
# Set up everything vgpuctl's demo and tests need on a Debian 12 host (run as root): Debian packages, then a
# virtual environment in .venv with vgpuctl installed editable.  Idempotent and quick when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  fuse3 libfuse3-3          # the simulated host is a FUSE filesystem
  python3-venv python3-dev gcc pkg-config
  libvirt-dev               # libvirt-python builds against it
  libvirt-daemon-system     # real libvirtd for the libvirt tests
  qemu-system-x86           # libvirtd probes /usr/bin/qemu-system-x86_64 before it defines a domain
  mdevctl hyperfine         # benchmarks compare against mdevctl
  cockpit-ws cockpit-bridge # the web console page (cockpit/) is tested through Debian's Cockpit ...
  chromium chromium-driver  # ... in headless Chromium (tests/cockpit)
  git                       # ansible-test sanity runs in a git repository (tests/ansible)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pip's and setuptools' chatter goes to .venv/setup.log; on a failure its end is shown
quiet() {
  if ! "$@" >>.venv/setup.log 2>&1; then
    echo "setup: '$*' failed; the end of .venv/setup.log:" >&2
    tail -n 40 .venv/setup.log >&2
    return 1
  fi
}

# Debian's interpreter (python3-venv above), not whatever python3 comes first on PATH (pyenv, a conda env, ...)
PY=${PYTHON:-/usr/bin/python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.vgpuctl-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  quiet .venv/bin/python -m pip install -q --upgrade pip
  quiet .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
