"""A reproducible busy neighbour: one process that keeps a share of one CPU busy, for timings under load.

    python benchmarks/busy_neighbour.py --share 0.5 --cpu 1 --seconds 600 &
    softmaxlab bench ... --results-dir busy/     # the timings beside a neighbour
    kill %1

Each period of ``--period`` seconds it spins for ``share * period`` and sleeps for the rest,
pinned to ``--cpu`` (``os.sched_setaffinity``), as another user's process on a shared
machine does: the kernels' threads then find one core partly taken.  It stops by itself
after ``--seconds``.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.5, help="busy fraction of the CPU, in (0, 1] (default 0.5)")
    parser.add_argument("--cpu", type=int, default=1, help="the CPU to occupy (default 1)")
    parser.add_argument("--period", type=float, default=0.01, help="seconds per busy + idle cycle (default 0.01)")
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long (default 600)")
    args = parser.parse_args(argv)
    if not 0 < args.share <= 1:
        parser.error(f"--share must be in (0, 1], got {args.share}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    busy = args.share * args.period
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        start = time.monotonic()
        while time.monotonic() - start < busy:
            pass
        idle = args.period - busy
        if idle > 0:
            time.sleep(idle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
