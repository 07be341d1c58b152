"""Print the host's enabled apt 'deb' entries for one Debian suite (and its -updates and -security suites) in
one-line sources.list format, for mmdebstrap: the fresh root uses the mirror this machine already uses.

Reads /etc/apt/sources.list, /etc/apt/sources.list.d/*.list and *.sources (deb822).  Usage: host-sources.py SUITE
"""
import glob, os, re, sys
suite = sys.argv[1]
want = re.compile(r"^%s(-updates|-security)?$" % re.escape(suite))
out = []
def emit(types, uris, suites, comps, signed):
    if "deb" not in types:
        return
    for u in uris:
        for s in suites:
            if want.match(s):
                opt = " [signed-by=%s]" % signed if signed else ""
                line = "deb%s %s %s %s" % (opt, u, s, " ".join(comps))
                if line not in out:
                    out.append(line)
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
for f in files:
    if not os.path.isfile(f):
        continue
    for line in open(f):
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^(deb)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        opts = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
        emit(["deb"], [m.group(3)], [m.group(4)], m.group(5).split(), opts.get("signed-by"))
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(f).read()):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, val = line.partition(":")
            key = key.strip().lower()
            fields[key] = val.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by", "")
        if signed and not signed.startswith("/"):
            signed = ""   # an inline key block: the chroot's debian-archive-keyring has to do
        emit(fields.get("types", "").split(), fields.get("uris", "").split(), fields.get("suites", "").split(),
             fields.get("components", "").split(), signed)
print("\n".join(out))
