# The README: "running them again is quick". After the two commands, another ./scripts/setup.sh must find every
# Debian package installed (it prints "setup: installing ..." before any apt-get) and the venv up to date (pip's
# output goes to .venv/setup.log, which must not grow).
set -euo pipefail
before=$(stat -c %s .venv/setup.log)
out=$(./scripts/setup.sh 2>&1)
after=$(stat -c %s .venv/setup.log)
if [ -n "$out" ] || [ "$before" != "$after" ]; then
    printf 'setup.sh, run again, was not a no-op (pip log %s -> %s bytes); it printed:\n%s\n' "$before" "$after" "$out" >&2
    exit 1
fi
echo "setup.sh again: nothing to install"
