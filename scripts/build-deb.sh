#!/usr/bin/env bash
# Build vgpuctl's Debian package from the committed tree (git archive HEAD, never the working tree) with Debian's
# own tools (dpkg-buildpackage, debhelper, pybuild), then run lintian on it.  The .deb lands in dist/.
# Outside a git checkout (an exported tree, as the fresh-root stage has) the tree itself is the source, less what
# setup and the tests leave in it (.venv, dist, caches).
#   scripts/build-deb.sh            build + lintian (fails on lintian errors)
# Needs root for apt only when the build dependencies are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

BUILD_DEPS=(build-essential fakeroot debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools
            python3-click lintian)
missing=()
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "build-deb: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/vgpuctl"
if git rev-parse --verify -q HEAD >/dev/null 2>&1; then
  git archive HEAD | tar -x -C "$work/vgpuctl"
else
  tar -c --exclude=./.venv --exclude=./dist --exclude='./tests/*/.cache' --exclude='__pycache__' \
      --exclude='*.egg-info' --exclude=./build . | tar -x -C "$work/vgpuctl"
fi
version=$(dpkg-parsechangelog -l debian/changelog -S Version)
# Debian's own python3 and tools only (a pyenv or venv python first on PATH is not what the package runs on)
(cd "$work/vgpuctl" && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
  tail -n 40 "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed" >&2
  exit 1
}
mkdir -p dist
for pkg in vgpuctl cockpit-vgpuctl; do
  cp "$work/${pkg}_${version}_all.deb" "dist/${pkg}_${version}_all.deb"
  echo "build-deb: built dist/${pkg}_${version}_all.deb" >&2
done
# lintian: errors fail the build; warnings and the rest are printed for a person to read.
lintian --tag-display-limit 0 --display-info "$work/vgpuctl_${version}_amd64.changes" | tee dist/lintian.txt >&2 || true
if grep -q '^E:' dist/lintian.txt; then
  echo "build-deb: lintian reported errors (dist/lintian.txt)" >&2
  exit 1
fi
echo "build-deb: lintian: $(grep -c '^E:' dist/lintian.txt) errors, $(grep -c '^W:' dist/lintian.txt) warnings," \
     "$(grep -c '^I:' dist/lintian.txt) info" >&2
