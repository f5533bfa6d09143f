"""What storing the exponentials gives float32 logsumexp: its kernel with and without a scratch row.

float32 logsumexp stores each block's e_j in a scratch row of its thread
(``_numerics.rows.reduce_max_sum_exp_scratch``), so that the exponentials run in float32
arithmetic, 16 lanes a vector, as log_softmax's do in its output; without a place to store
them they ran through ``exp_f32_wide``, in float64, 8 lanes.  This script times, in one
process on the Numba threads, in alternation, ``--rounds`` times (p50 of 20 calls each),
the float32 benchmark shapes through both kernels (``_softmax._logsumexp_kernel``, the one
float64 rows keep, is the unstored one), and prints the largest difference between their
results in ULPs of float32.

Run: ``python benchmarks/stored_logsumexp.py [--rounds 11] [--threads 2]``.
"""

from __future__ import annotations

import numpy as np
from timing import alternated, rounds_and_threads

SHAPES = [(4096, 1000), (512, 32000), (64, 262144), (1, 4194304)]


def main(argv=None):
    args = rounds_and_threads(__doc__.splitlines()[0], 11, "alternations", argv)
    from softmaxlab.kernels import logsumexp
    from softmaxlab.kernels._softmax import _logsumexp_kernel, _run

    print(f"float32, {args.threads} threads, p50 of 20 calls per round, ms")
    for shape in SHAPES:
        x = (np.random.default_rng(0).standard_normal(shape) * 3).astype(np.float32)
        out = np.empty(shape[0], dtype=np.float32)
        variants = {"unstored": lambda: _run(_logsumexp_kernel, x, x, out), "stored": lambda: logsumexp(x)}
        unstored, stored = variants["unstored"]().copy(), variants["stored"]()
        ulps = np.abs(stored.astype(np.float64) - unstored) / np.spacing(np.abs(unstored))
        times = alternated(variants, args.rounds, 20)
        ratios = np.array(times["unstored"]) / np.array(times["stored"])
        print(f"{shape[0]} x {shape[1]}: " + ", ".join(f"{name} {1e3 * np.median(values):.3f}" for name, values in times.items())
              + f"; unstored / stored per round {ratios.min():.2f}-{ratios.max():.2f}, median {np.median(ratios):.2f}"
              + f"; results differ by at most {ulps.max():.0f} ULP ({np.count_nonzero(ulps)} of {shape[0]} rows)",
              flush=True)


if __name__ == "__main__":
    main()
