"""The fixed cost of a row: logsumexp per row at row lengths from 16 to 2000, rows in cache.

A row kernel's time per row is about a + b * classes; ``a`` is what a row costs besides its
elements (the reductions' last steps, the log, the partial last vector).  This script times
float32 ``logsumexp`` on 256,000 elements (1 MB, in the core's L2) split into rows of
``--lengths`` classes, on ``--threads`` Numba threads (default 1), and prints ns per row and
per element (p50 of ``--calls`` calls after one untimed).  Compare two commits by running it
on each.

Run: ``python benchmarks/row_overhead.py [--threads 1] [--calls 400]``.
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import call_seconds

ELEMENTS = 256_000


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 100, 250, 500, 1000, 2000])
    args = parser.parse_args(argv)
    import numba

    from softmaxlab.kernels import logsumexp

    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"float32 logsumexp, {ELEMENTS} elements, {args.threads} thread(s), p50 of {args.calls} calls")
    for classes in args.lengths:
        rows = ELEMENTS // classes
        x = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
        seconds = float(np.median(call_seconds(lambda: logsumexp(x), args.calls)))
        print(f"  {rows:6d} x {classes:<5d} {1e9 * seconds / rows:8.1f} ns per row {1e9 * seconds / x.size:7.3f} ns per element")


if __name__ == "__main__":
    main()
