#!/usr/bin/env bash
# Install vgpuctl's Cockpit page from a source checkout: copies cockpit/ to ROOT/usr/share/cockpit/vgpuctl/
# (ROOT defaults to /; a package build passes its staging directory).  Needs Cockpit (cockpit-ws, cockpit-bridge,
# and cockpit-system for the navigation) and vgpuctl on the PATH of the user's session.  Idempotent.
#   scripts/install-cockpit.sh [ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-/}
dest="${root%/}/usr/share/cockpit/vgpuctl"
files=(manifest.json index.html vgpuctl.js vgpuctl.css)
for f in "${files[@]}"; do
  [ -f "cockpit/$f" ] || { echo "install-cockpit: cockpit/$f is missing" >&2; exit 1; }
done
install -d -m 0755 "$dest"
rm -f "$dest"/*  # files a previous version had and this one does not
for f in "${files[@]}"; do
  install -m 0644 "cockpit/$f" "$dest/$f"
done
echo "install-cockpit: installed ${files[*]} into $dest" >&2
