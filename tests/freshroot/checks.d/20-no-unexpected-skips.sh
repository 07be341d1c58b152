# A Debian package that setup.sh forgets often fails no test: the test skips ("libvirtd is not installed ...").
# So every skip of the README commands' pytest runs on the fresh root must have a reason that
# tests/freshroot/expected-skips allows (one extended regular expression per line, matched against the reason;
# blank lines and lines starting with # are ignored). A reason it does not allow fails this check.
set -euo pipefail
allow=tests/freshroot/expected-skips
logs=$(awk -F'\t' '$2 !~ /^check / {print $1}' "$FRESHROOT_LOGS/steps")
# pytest -ra: "SKIPPED [3] tests/x/test_y.py:12: reason"
reasons=$(cat $logs | tr -d '\r' | sed -nE 's/^SKIPPED \[([0-9]+)\] [^ ]+: (.*)$/\1\t\2/p')
patterns=$(grep -vE '^[[:space:]]*(#|$)' "$allow" || true)
bad=0 total=0
while IFS=$'\t' read -r count reason; do
    [ -n "$reason" ] || continue
    total=$((total + count))
    if [ -n "$patterns" ] && printf '%s\n' "$reason" | grep -qEf <(printf '%s\n' "$patterns"); then
        continue
    fi
    echo "unexpected skip on the fresh root ($count test(s)): $reason" >&2
    bad=1
done <<<"$reasons"
if [ "$bad" = 1 ]; then
    echo "a package missing from scripts/setup.sh? Add it there; if this skip is right on every fresh Debian 12 host, add its reason to $allow" >&2
    exit 1
fi
echo "skips on the fresh root: $total, every one expected"
