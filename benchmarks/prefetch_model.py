"""Whether the exp loop's prefetch of the next block pays: the many-row softmax rebuilt from the kernels' pieces, with and without it.

The float32 row kernels read a row of more than one block (``BLOCK_BYTES``) block by
block: the block's max pass (``block_max``) waits on memory, then its exp loop
(``vector.row_exp32_store``) computes from L1.  The loop can prefetch a line of the block
read next per vector (its ``ahead``); the kernels give it ``rows.following_block``: the next
block of the row, or for a row of one block the next row (which measured no gain on a Zen 4
and 25% on a Zen 3: ``docs/performance.md``).  This script times, in one process on the Numba threads,
a softmax made of the kernels' own steps (max, exponentials stored, their float64 sum, the
blocks merged, the scale in place; results equal to ``softmaxlab.kernels.softmax`` bit for
bit, checked) with the hint off and on, in alternation, ``--rounds`` times: p50 of 40
calls each, for rows of many blocks and for rows of one block, where "on" hints the next
row as a following block would.

Run: ``python benchmarks/prefetch_model.py [--rounds 6] [--threads 2]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from timing import call_seconds, rounds_and_threads

SHAPES = ((512, 32000), (64, 262144), (4096, 1000))


def _model():
    from softmaxlab.kernels._config import REDUCTION_FASTMATH, block_length
    from softmaxlab.kernels._numerics.rows import block_max, following_block, scale_shift_in_place
    from softmaxlab.kernels._numerics.vector import row_exp32_store
    from softmaxlab.kernels._softmax import _softmax_factor

    block = block_length(4)

    @njit(fastmath=REDUCTION_FASTMATH)
    def block_pair(values, destination, ahead):
        largest = block_max(values)
        row_exp32_store(values, np.float32(largest), destination, ahead)
        total = 0.0
        for j in range(destination.shape[0]):
            total += np.float64(destination[j])
        return largest, total - 1.0

    @njit
    def ahead_of(x, i, start, stop, hint):
        if not hint:
            return x[i, 0:0]
        if start == 0 and stop == x.shape[1] and i + 1 < x.shape[0]:
            return x[i + 1]  # a row of one block: the next row, which following_block leaves out
        return following_block(x, i, start, stop)

    @njit(parallel=True)
    def softmax(x, out, hint):
        rows, classes = x.shape
        blocks = (classes + block - 1) // block
        for i in prange(rows):
            maxima = np.empty(blocks)
            sums = np.empty(blocks)
            for k in range(blocks):
                start, stop = k * block, min(classes, (k + 1) * block)
                maxima[k], sums[k] = block_pair(x[i, start:stop], out[i, start:stop], ahead_of(x, i, start, stop, hint))
            largest = maxima.max()
            first = np.argmax(maxima)
            total = sums[first]  # the block of the max contributes t_b, the others (1 + t_b) e^(m_b - M)
            for k in range(blocks):
                if k != first:
                    total += (1.0 + sums[k]) * np.exp(maxima[k] - largest)
            for k in range(blocks):
                start, stop = k * block, min(classes, (k + 1) * block)
                high, low = _softmax_factor(maxima[k], largest, total)
                scale_shift_in_place(out[i, start:stop], high, low, 0.0)

    return softmax


def main(argv=None) -> int:
    args = rounds_and_threads(__doc__.splitlines()[0], 6, "alternations of off and on", argv)
    from softmaxlab.kernels import softmax as reference

    model = _model()
    for shape in SHAPES:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        out = np.empty(shape, np.float32)
        for hint in (False, True):
            model(x, out, hint)
            if shape[1] > 8192:  # rows of several blocks: the kernel's arithmetic, merge order aside
                np.testing.assert_allclose(out, reference(x), rtol=2e-7, atol=0)
            else:
                np.testing.assert_array_equal(out, reference(x))
        medians = {False: [], True: []}
        for round_ in range(args.rounds):
            for hint in (False, True) if round_ % 2 == 0 else (True, False):
                medians[hint].append(np.median(call_seconds(lambda: model(x, out, hint), 40)) * 1e3)
        for hint in (False, True):
            print(f"{shape[0]} x {shape[1]} hint {'on ' if hint else 'off'}: p50 per round (ms) "
                  + " ".join(f"{value:.2f}" for value in medians[hint])
                  + f"; median {np.median(medians[hint]):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
