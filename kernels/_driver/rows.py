"""The row driver: one parallel kernel from a block reduce, a row merge and a block write.

``make_row_kernel`` serves the kernels whose state is a pair of floats per block and per
row (softmax, log_softmax, logsumexp, their backwards, the margin losses' rows), passed
as values: the pair lives in registers between the three functions, and the one-block
row runs without touching ``partial``.  The loss driver (``losses.py``) keeps a state of
``width`` floats in arrays instead, which these kernels do not need and would pay for
(a store and a load per value, and a second array); that is why there are two drivers.

Blocks have ``block`` elements (``_config.BLOCK_BYTES``), whatever the thread count.
Short rows are one block.  The kernel runs the blocks either row by row (one thread per
row: the row stays in cache between the reduce and the write) or, when there are fewer
rows than threads, as a flat list of (row, block) tasks so that one long row is shared
between threads.  Both schedules do the same arithmetic in the same order, so the result
is bit-identical for any number of threads and either schedule.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS, STRICT_FASTMATH

__all__ = ["make_row_kernel", "no_fused_row", "PAIR"]

# Floats per block and per row: the reduced pair and the row pair of the merge.
PAIR = 2


@njit(inline="always", **JIT_OPTIONS)
def no_fused_row(a, b, out, i):
    """``make_row_kernel``'s default ``fused_row``: no row is handled in one piece."""
    return False


def make_row_kernel(reduce_block, merge_row, write_block, fused_row=no_fused_row):
    """A parallel kernel ``kernel(a, b, out, block, split)`` over (rows, classes) arrays.

    ``reduce_block(a, b, out, i, start, stop) -> (p0, p1)`` (it may write ``out``),
    ``merge_row(a, i, partial[i]) -> (s0, s1)``,
    ``write_block(a, b, out, i, start, stop, p0, p1, s0, s1)`` with the block's own pair
    (p0, p1) and the row's (s0, s1).  ``b`` is a second input of ``a``'s shape (pass
    ``a`` when there is none).  With ``split`` the (row, block) tasks are spread over
    threads; otherwise whole rows are.

    ``fused_row(a, b, out, i) -> bool`` (optional, ``inline="always"``) computes a whole
    row of one block in one piece, without the block pair and the merge, and returns
    False, having written nothing, for a row it leaves to the three functions (a row
    whose max is infinite, say).  It must give their results bit for bit.  softmax's and
    log_softmax's are 2-7% faster than the three at 4096 x 1000 (measured side by side).
    """

    @njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def kernel(a, b, out, block, split):
        rows, classes = a.shape
        blocks = max(1, (classes + block - 1) // block)
        partial = np.empty((rows, blocks, PAIR))
        if split:
            for task in prange(rows * blocks):
                _reduce_task(a, b, out, task // blocks, task % blocks, block, partial)
            stats = np.empty((rows, PAIR))
            for i in prange(rows):
                stats[i, 0], stats[i, 1] = merge_row(a, np.int64(i), partial[i])
            for task in prange(rows * blocks):
                i = task // blocks
                _write_task(a, b, out, i, task % blocks, block, partial, stats[i, 0], stats[i, 1])
        else:
            for i in prange(rows):
                # np.int64: prange's index is unsigned, the split path's signed; one type
                # for both compiles each block function once per dtype (about 30% less compile time)
                _row_task(a, b, out, np.int64(i), block, partial)

    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def _reduce_task(a, b, out, i, k, block, partial):
        start = k * block
        stop = min(a.shape[1], start + block)
        partial[i, k, 0], partial[i, k, 1] = reduce_block(a, b, out, i, start, stop)

    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def _write_task(a, b, out, i, k, block, partial, s0, s1):
        start = k * block
        stop = min(a.shape[1], start + block)
        write_block(a, b, out, i, start, stop, partial[i, k, 0], partial[i, k, 1], s0, s1)

    @njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
    def _row_task(a, b, out, i, block, partial):
        blocks = partial.shape[1]
        if blocks == 1:
            # the common case, without the block loops (5% faster at 1000 classes)
            if fused_row(a, b, out, i):
                return
            start = np.int64(0)  # not the literal 0: the same signature as the block loops
            p0, p1 = reduce_block(a, b, out, i, start, a.shape[1])
            partial[i, 0, 0] = p0
            partial[i, 0, 1] = p1
            s0, s1 = merge_row(a, i, partial[i])
            write_block(a, b, out, i, start, a.shape[1], p0, p1, s0, s1)
            return
        for k in range(blocks):
            _reduce_task(a, b, out, i, k, block, partial)
        s0, s1 = merge_row(a, i, partial[i])
        for k in range(blocks):
            _write_task(a, b, out, i, k, block, partial, s0, s1)

    return kernel
