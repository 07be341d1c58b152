"""``vgpuctl-sim``: run a simulated vGPU host (a FUSE sysfs) under a root directory.

vgpuctl-sim start PROFILE ROOT      mount at ROOT/sys in a daemon; returns once the mount answers
vgpuctl-sim stop ROOT               unmount and wait for the daemon (idempotent)
vgpuctl-sim status ROOT             profile and pid, or exit 3 when not running
vgpuctl-sim profiles                shipped profiles
vgpuctl-sim materialize PROFILE ROOT   write the static tree as plain files (no daemon)
vgpuctl-sim ctl ROOT fail-next TARGET ERRNO | unregister PARENT | register PARENT | reboot
                     | remove-block-seconds N | events
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from vgpuctl.errors import VgpuctlError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vgpuctl-sim", description="Simulated vGPU host (FUSE sysfs) for vgpuctl tests.")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    s = sub.add_parser("start", help="mount PROFILE at ROOT/sys in a daemon")
    s.add_argument("profile", help="shipped profile name or path to a YAML file")
    s.add_argument("root")
    s.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for the mount (default 20)")
    s = sub.add_parser("stop", help="unmount ROOT/sys and wait for the daemon")
    s.add_argument("root")
    s = sub.add_parser("status", help="print profile and pid of the simulator at ROOT")
    s.add_argument("root")
    sub.add_parser("profiles", help="list shipped profiles")
    s = sub.add_parser("materialize", help="write PROFILE's static tree under ROOT/sys as plain files")
    s.add_argument("profile")
    s.add_argument("root")
    s = sub.add_parser("ctl", help="test controls of a running simulator")
    s.add_argument("root")
    s.add_argument(
        "action", choices=["fail-next", "unregister", "register", "reboot", "remove-block-seconds", "events"]
    )
    s.add_argument("args", nargs="*")
    s = sub.add_parser("_serve")  # the daemon itself
    s.add_argument("profile")
    s.add_argument("root")
    return p


_CTL_ARGS = {"fail-next": 2, "unregister": 1, "register": 1, "reboot": 0, "remove-block-seconds": 1, "events": 0}


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (VgpuctlError, RuntimeError) as e:
        print(f"vgpuctl-sim: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"vgpuctl-sim: {e.filename + ': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from vgpuctl.sim import daemon
    from vgpuctl.sim.profile import list_profiles, load_profile

    if args.cmd == "start":
        pid = daemon.start(args.profile, args.root, timeout=args.timeout)
        print(f"vgpusim: {args.root}/sys mounted, pid {pid}")
        return 0
    if args.cmd == "stop":
        daemon.stop(args.root)
        return 0
    if args.cmd == "status":
        st = daemon.status(args.root)
        if st is None:
            print("not running")
            return 3
        print(f"profile: {st[0]}\npid: {st[1]}")
        return 0
    if args.cmd == "profiles":
        for name in list_profiles():
            print(f"{name}\t{load_profile(name).summary}")
        return 0
    if args.cmd == "materialize":
        print(daemon.materialize(args.profile, args.root))
        return 0
    if args.cmd == "ctl":
        return _ctl(args)
    if args.cmd == "_serve":
        return daemon.serve_main(args.profile, args.root)
    raise AssertionError(args.cmd)


def _ctl(args: argparse.Namespace) -> int:
    from vgpuctl.sim.control import SimHost

    want = _CTL_ARGS[args.action]
    if len(args.args) != want:
        print(f"vgpuctl-sim: ctl {args.action} takes {want} argument(s)", file=sys.stderr)
        return 2
    sim = SimHost.attach(args.root)
    a = args.args
    if args.action == "fail-next":
        sim.fail_next(a[0], a[1])
    elif args.action == "unregister":
        sim.unregister(a[0])
    elif args.action == "register":
        sim.register(a[0])
    elif args.action == "reboot":
        sim.reboot()
    elif args.action == "remove-block-seconds":
        sim.set_remove_block_seconds(float(a[0]))
    elif args.action == "events":
        print("\n".join(sim.events()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
