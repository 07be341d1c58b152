# The Debian packages (vgpuctl, cockpit-vgpuctl) on a clean Debian 12 root (docs/packaging.md): build it with Debian's tools (lintian errors
# fail), install it with apt, and use it as an operator would: --version, doctor against a simulated host, the
# unit under systemd-analyze verify, the libvirt hook for an unknown domain; then apt-get remove destroys no vGPU.
# Runs inside tests/freshroot/run's root, from the exported tree, after the README's commands (so .venv has
# vgpuctl-sim for the simulated host, which the package leaves out).
set -euo pipefail
# (no 'grep -q' at the end of a pipe: it stops reading at the first match, the writer dies of SIGPIPE, and
# pipefail makes that a failure)
export DEBIAN_FRONTEND=noninteractive
apt() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
say() { echo "50-debian-package: $*" >&2; }
sim=/tmp/fr-deb-host
cleanup() { .venv/bin/vgpuctl-sim stop "$sim" >/dev/null 2>&1 || true; }
trap cleanup EXIT

scripts/build-deb.sh
debs=(dist/vgpuctl_*_all.deb dist/cockpit-vgpuctl_*_all.deb)
say "lintian: $(grep -c '^E:' dist/lintian.txt || true) errors, $(grep -c '^W:' dist/lintian.txt || true) warnings"
apt install -y -qq "${debs[@]/#/./}" >/tmp/fr-deb-apt.log 2>&1 || { tail -20 /tmp/fr-deb-apt.log >&2; exit 1; }

# 0. the web console page: Cockpit's bridge finds it where the package put it
[ -s /usr/share/cockpit/vgpuctl/manifest.json ] || { say "no /usr/share/cockpit/vgpuctl/manifest.json"; exit 1; }
cockpit-bridge --packages | grep '^vgpuctl\b' >/dev/null || { say "cockpit-bridge --packages does not list vgpuctl"; exit 1; }

# 1. the packaged CLI, on Debian's python3
[ "$(command -v vgpuctl)" = /usr/bin/vgpuctl ] || { say "vgpuctl on PATH is $(command -v vgpuctl)"; exit 1; }
head -1 /usr/bin/vgpuctl | grep '^#! */usr/bin/python3' >/dev/null || { say "/usr/bin/vgpuctl does not run Debian's python3"; exit 1; }
/usr/bin/vgpuctl --version
dpkg -L vgpuctl | grep -x /etc/libvirt/hooks/qemu.d/vgpuctl >/dev/null
grep -qx /etc/libvirt/hooks/qemu.d/vgpuctl /var/lib/dpkg/info/vgpuctl.conffiles
for f in /usr/share/man/man1/vgpuctl.1.gz /usr/share/bash-completion/completions/vgpuctl \
         /usr/share/zsh/vendor-completions/_vgpuctl /usr/share/fish/vendor_completions.d/vgpuctl.fish \
         /usr/share/doc/vgpuctl/examples/vgpuctl.yaml; do
  [ -s "$f" ] || { say "missing: $f"; exit 1; }
done
zcat /usr/share/man/man1/vgpuctl-create.1.gz | grep -- '--parent' >/dev/null \
  || { say "vgpuctl-create(1) does not document --parent"; exit 1; }

# 2. against a simulated host: what an operator sees, and doctor
.venv/bin/vgpuctl-sim start t4x2 "$sim" >/dev/null
V=(/usr/bin/vgpuctl --root "$sim" --connect none)
"${V[@]}" parents | grep 0000:3b:00.0 >/dev/null
if "${V[@]}" --help | grep -w doctor >/dev/null; then
  rc=0; "${V[@]}" doctor >/tmp/fr-deb-doctor.txt || rc=$?
  cat /tmp/fr-deb-doctor.txt >&2
  grep -Eq '^(ok|warn|fail)\b' /tmp/fr-deb-doctor.txt || { say "doctor printed no check line (rc $rc)"; exit 1; }
  grep -q Traceback /tmp/fr-deb-doctor.txt && exit 1
else
  say "this tree has no 'vgpuctl doctor' yet"; exit 1
fi

# 3. the unit, as systemd reads it
command -v systemd-analyze >/dev/null || apt install -y -qq --no-install-recommends systemd >/dev/null
systemd-analyze verify /lib/systemd/system/vgpuctl.service

# 4. the hook: an unknown domain with no vGPU is let through (exit 0), garbage arguments too
xml='<domain><name>fr-unknown</name><uuid>5c3b1f2e-0d4a-4e7b-9c61-1a2b3c4d5e6f</uuid></domain>'
echo "$xml" | /etc/libvirt/hooks/qemu.d/vgpuctl fr-unknown prepare begin -
echo "$xml" | /etc/libvirt/hooks/qemu.d/vgpuctl fr-unknown release end -
/etc/libvirt/hooks/qemu.d/vgpuctl </dev/null fr-unknown started begin -

# 5. apt-get remove destroys no vGPU and leaves vgpuctl's state; the kept hook conffile is then a no-op
u=$("${V[@]}" create --parent 0000:3b:00.0 --type T4-2Q)
before=$(.venv/bin/vgpuctl --root "$sim" --connect none list --json)
state=$(sha256sum "$sim/var/lib/vgpuctl/state.json")
apt-get -o DPkg::Lock::Timeout=600 remove -y -qq cockpit-vgpuctl vgpuctl >/dev/null
[ ! -e /usr/bin/vgpuctl ] || { say "/usr/bin/vgpuctl is still there after remove"; exit 1; }
after=$(.venv/bin/vgpuctl --root "$sim" --connect none list --json)
[ "$before" = "$after" ] || { say "the host's vGPUs changed across apt-get remove"; exit 1; }
echo "$after" | grep "$u" >/dev/null
[ "$state" = "$(sha256sum "$sim/var/lib/vgpuctl/state.json")" ] || { say "state.json changed across remove"; exit 1; }
echo "$xml" | /etc/libvirt/hooks/qemu.d/vgpuctl fr-unknown prepare begin -
say "ok: built, lintian clean, installed, used, removed with $u kept"
