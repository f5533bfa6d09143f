"""Whether log_softmax_backward's float32 write pays for its explicit loop and its prefetch of the next row.

The kernel reduces a row (sum of dy, max of y: memory-bound), then writes it (dx = dy -
exp(y) S, the exp in float64: bound by its multiplies, ``pass_costs.py``).  Its write is
the explicit vector loop ``vector.row_exp_product_difference32``, which also prefetches
the same block of the next row (``rows.next_row_block``), so that the next reduce finds it
in cache.  This script builds the kernel three times with ``make_row_kernel`` from the
kernel's own reduce and merge, with three writes:

* ``hint``: the kernel's own (``_softmax._write_log_softmax_backward``: the loop with the
  next row's blocks, ``rows.next_row_block``);
* ``no hint``: the same loop, with nothing ahead;
* ``scalar``: the scalar loop LLVM vectorizes (``rows._scalar_exp_product_difference``),
  which strided rows take, and which the kernel ran before the explicit loop.

All three give ``softmaxlab.kernels.log_softmax_backward``'s bits (checked).  Each is
timed ``--rounds`` times in rotation, p50 of 30 calls a round, on ``--threads`` Numba
threads.

Run: ``python benchmarks/write_prefetch.py [--rounds 5] [--threads 2]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from timing import call_seconds, rounds_and_threads

SHAPES = ((512, 32000), (64, 262144), (4096, 1000))


def _kernels():
    from softmaxlab.kernels._config import JIT_OPTIONS, STRICT_FASTMATH
    from softmaxlab.kernels._driver.rows import make_row_kernel
    from softmaxlab.kernels._numerics.rows import (
        _scalar_exp_product_difference,
        merge_sum_and_max,
        reduce_sum_and_max,
        store_exp_product_difference,
    )

    from softmaxlab.kernels._softmax import _write_log_softmax_backward

    # the rows of the benchmark have a finite max: the other two leave out the kernel's
    # branch for an all -inf row
    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def unhinted(y, dy, out, i, start, stop, block_total, block_largest, total, largest):
        store_exp_product_difference(y[i, start:stop], dy[i, start:stop], out[i, start:stop], total,
                                     y[i, 0:0], dy[i, 0:0])

    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def scalar(y, dy, out, i, start, stop, block_total, block_largest, total, largest):
        _scalar_exp_product_difference(y[i, start:stop], dy[i, start:stop], out[i, start:stop], total)

    writes = {"hint": _write_log_softmax_backward, "no hint": unhinted, "scalar": scalar}
    return {name: make_row_kernel(reduce_sum_and_max, merge_sum_and_max, write) for name, write in writes.items()}


def main(argv=None) -> int:
    args = rounds_and_threads(__doc__.splitlines()[0], 5, "rotations of the three", argv)
    from softmaxlab.kernels import log_softmax, log_softmax_backward
    from softmaxlab.kernels._config import block_schedule

    kernels = _kernels()
    for shape in SHAPES:
        rng = np.random.default_rng(0)
        y = log_softmax((rng.standard_normal(shape) * 3).astype(np.float32))
        dy = rng.standard_normal(shape).astype(np.float32)
        expected = log_softmax_backward(y, dy)
        out = np.empty_like(y)
        block, split = block_schedule(shape[0], shape[1], y.itemsize)
        for kernel in kernels.values():
            kernel(y, dy, out, block, split)
            np.testing.assert_array_equal(out.view(np.int32), expected.view(np.int32))
        medians = {name: [] for name in kernels}
        for round_ in range(args.rounds):
            names = list(kernels)
            for name in names[round_ % 3:] + names[: round_ % 3]:
                kernel = kernels[name]
                seconds = call_seconds(lambda: kernel(y, dy, out, block, split), 30)
                medians[name].append(np.median(seconds) * 1e3)
        print(f"{shape[0]} x {shape[1]} float32, {args.threads} threads, p50 per round (ms):")
        for name, values in medians.items():
            print(f"  {name:8s} " + " ".join(f"{value:.2f}" for value in values)
                  + f"; median {np.median(values):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
