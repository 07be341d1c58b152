"""Print the host's enabled apt 'deb' entries for one Debian suite (and its -updates and -security suites) in
one-line sources.list format, for mmdebstrap: the fresh root uses the mirror this machine already uses.

Reads /etc/apt/sources.list, /etc/apt/sources.list.d/*.list and *.sources (deb822); other files there (a
``.disabled`` suffix) are not apt's either.  ``Enabled: no`` stanzas are skipped, ``Signed-By`` paths are kept
(an inline key block is dropped: the root's debian-archive-keyring signs Debian's archive).

Usage: host-sources.py SUITE [ROOT]   (ROOT: read ROOT/etc/apt instead of /etc/apt)
"""

import glob
import os
import re
import sys
from typing import Dict, List


def one_line_entries(text: str):
    """(types, uris, suites, components, signed_by) of each ``deb`` line of a sources.list."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        opts = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
        yield [m.group(1)], [m.group(3)], [m.group(4)], m.group(5).split(), opts.get("signed-by", "")


def deb822_entries(text: str):
    """The same for each stanza of a deb822 .sources file."""
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: Dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += "\n" + line.strip()
                continue
            key, _, val = line.partition(":")
            key = key.strip().lower()
            fields[key] = val.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by", "")
        if not signed.startswith("/"):
            signed = ""
        yield (
            fields.get("types", "").split(),
            fields.get("uris", "").split(),
            fields.get("suites", "").split(),
            fields.get("components", "").split(),
            signed,
        )


def sources(suite: str, root: str = "/") -> List[str]:
    apt = os.path.join(root, "etc/apt")
    want = re.compile(r"^%s(-updates|-security)?$" % re.escape(suite))
    entries = []
    for f in [os.path.join(apt, "sources.list")] + sorted(glob.glob(os.path.join(apt, "sources.list.d/*.list"))):
        if os.path.isfile(f):
            with open(f) as fh:
                entries += one_line_entries(fh.read())
    for f in sorted(glob.glob(os.path.join(apt, "sources.list.d/*.sources"))):
        with open(f) as fh:
            entries += deb822_entries(fh.read())
    out: List[str] = []
    for types, uris, suites, comps, signed in entries:
        if "deb" not in types or not comps:
            continue
        for uri in uris:
            for s in suites:
                if want.match(s):
                    opt = " [signed-by=%s]" % signed if signed else ""
                    line = "deb%s %s %s %s" % (opt, uri, s, " ".join(comps))
                    if line not in out:
                        out.append(line)
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__.strip().splitlines()[-1])
    for entry in sources(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "/"):
        print(entry)
