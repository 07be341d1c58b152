#!/usr/bin/env python3
"""Every benchmark of bench/README.md in one run, one after the other, each printing its rows with the baselines it
measured in the same run.  Needs root, /dev/fuse, hyperfine and mdevctl (``scripts/setup.sh``).

    sudo .venv/bin/python bench/all.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = (
    (
        "placement: place() decision time, churn admission against first-fit, round-robin and an offline bound",
        ["placement_churn.py"],
    ),
    ("converge: apply of 128 vs the raw loop and mdevctl start; check/list; the service's reaction", ["converge.py"]),
    (
        "list --json against mdevctl and python+click, on the FUSE simulator and on a plain directory copy",
        ["list_vs_mdevctl.py", "--runs", "20"],
    ),
    (
        "the simulator's cost: FUSE requests per inventory, and each reader on FUSE against a plain directory copy",
        ["sim_roundtrips.py"],
    ),
)


def main() -> int:
    rc = 0
    for title, cmd in BENCHES:
        print(f"\n=== {title}", flush=True)
        rc |= subprocess.run([sys.executable, str(HERE / cmd[0])] + cmd[1:]).returncode
    return rc


if __name__ == "__main__":
    sys.exit(main())
