"""The loss driver and the block helpers the softmax losses share.

``make_loss_kernel`` is the row driver (``rows.py``) generalized to a state of ``width``
floats per block and per row, kept in two arrays (``partial`` (rows, blocks, width) and
``stats`` (rows, width)) that the block functions index with named columns: the
cross-entropy with label smoothing keeps 5 floats a block, distillation 8, and a row's
loss and gradient factors are read by every block's write.  A separate driver because
the softmax kernels' pair travels in registers (``rows.py``), which is faster for them,
and these kernels also fill a row loss, sum it and may write a gradient or nothing.

Blocks of a fixed size are reduced, merged per row in a fixed order and written, either
row by row or, for fewer rows than threads, as (row, block) tasks spread over threads.
Both schedules do the same arithmetic in the same order: the results are bit-identical
for any number of threads.

``args`` is a namedtuple of the loss' other inputs (Numba compiles attribute access to
the same code as a tuple's index).  ``run_loss_kernel`` calls a kernel and reduces its
row losses (``reduction.py``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS, STRICT_FASTMATH, block_schedule
from .._outputs import new_output_like
from .._validation import check_float_array
from .._numerics.eft import two_sum
from .._numerics.exp import exp64_pair
from .._numerics.rows import (
    block_max,
    chunked_sum,
    exp_difference_for,
    infinite_block_pair,
    merge_max_sum_exp,
    scaled_exp_sum,
)
from .reduction import reduce_losses

__all__ = [
    "make_loss_kernel",
    "run_loss_kernel",
    "merge_pair",
    "logit_rows",
    "NO_WEIGHT",
    "upstream_at",
    "exp_slot",
    "reduce_scaled",
    "block_factor",
    "exp_scaled",
    "target_minus_one",
    "infinite_index",
]

# The kernels' weight without a ``weight`` argument: never read, never written.
NO_WEIGHT = np.ones(1)


# ---- the driver ------------------------------------------------------------------------------


@njit(inline="always", **JIT_OPTIONS)
def no_fused_loss_row(logits, args, grad, row_loss, i, write):
    """``make_loss_kernel``'s default ``fused_row``: no row is handled in one piece."""
    return False


def make_loss_kernel(reduce_block, merge_row, write_block, width, fused_row=no_fused_loss_row):
    """A parallel kernel ``kernel(logits, args, grad, row_loss, block, split, write)``.

    ``partial`` (rows, blocks, width) holds each block's state and ``stats`` (rows, width)
    each row's; the three functions index them directly, by the loss' named column
    constants (an array view per block would cost a reference count each, ~240 ns a row):

    * ``reduce_block(logits, args, grad, i, k, start, stop, partial, write)`` fills
      ``partial[i, k]`` for the block ``logits[i, start:stop]`` and may store per-element
      values in ``grad``'s block for the write to use;
    * ``merge_row(logits, args, i, partial, stats) -> loss_i`` merges the row's block
      states into ``stats[i]`` and returns the row's loss;
    * ``write_block(logits, args, grad, i, k, start, stop, partial, stats)`` writes the
      block's gradient (only with ``write``).

    ``fused_row(logits, args, grad, row_loss, i, write) -> bool`` (optional, inlined) computes
    a row of one block in one piece and returns False, having written nothing, for a row it
    leaves to the three functions; it must give their results bit for bit.

    ``args`` is a namedtuple of the loss' other inputs.  With ``split`` the (row, block) tasks
    are spread over threads, otherwise whole rows are; the arithmetic is the same either
    way (it is ``rows.make_row_kernel`` generalized to ``width`` floats per block).
    """

    @njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
    def _row_task(logits, args, grad, row_loss, i, block, partial, stats, write):
        classes = logits.shape[1]
        blocks = partial.shape[1]
        if blocks == 1 and fused_row(logits, args, grad, row_loss, i, write):
            return
        for k in range(blocks):
            reduce_block(logits, args, grad, i, k, k * block, min(classes, (k + 1) * block), partial, write)
        row_loss[i] = merge_row(logits, args, i, partial, stats)
        if write:
            for k in range(blocks):
                write_block(logits, args, grad, i, k, k * block, min(classes, (k + 1) * block), partial, stats)

    @njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def kernel(logits, args, grad, row_loss, block, split, write):
        """Fills ``row_loss`` (and ``grad`` with ``write``) and returns the row losses' sum."""
        rows, classes = logits.shape
        blocks = max(1, (classes + block - 1) // block)
        partial = np.empty((rows, blocks, width))
        stats = np.empty((rows, width))
        if split:
            for task in prange(rows * blocks):
                i, k = task // blocks, task % blocks
                reduce_block(logits, args, grad, i, k, k * block, min(classes, (k + 1) * block), partial, write)
            # fewer rows than threads: merged on this thread, between the two parallel passes
            # (a parallel region of its own would add a barrier for a few microseconds of work)
            for i in range(rows):
                row_loss[i] = merge_row(logits, args, i, partial, stats)
            if write:
                for task in prange(rows * blocks):
                    i, k = task // blocks, task % blocks
                    write_block(logits, args, grad, i, k, k * block, min(classes, (k + 1) * block), partial, stats)
        else:
            for i in prange(rows):
                _row_task(logits, args, grad, row_loss, np.int64(i), block, partial, stats, write)  # see rows.py
        # here, not np.sum afterwards: row_loss is still in cache, and np.sum's Python layers were
        # not (17 us after a large kernel, measured)
        return chunked_sum(row_loss)

    return kernel


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def merge_pair(x, i, partial, column):
    """The row's (M, T) from the blocks' (m_b, t_b) in ``partial[i, :, column:column + 2]``.

    A single block with a finite max is its own row; otherwise ``_numerics.rows.merge_max_sum_exp``.
    """
    if partial.shape[1] == 1 and math.isfinite(partial[i, 0, column]):
        return partial[i, 0, column], partial[i, 0, column + 1]
    return merge_max_sum_exp(x, i, partial[i, :, column : column + 2])


def run_loss_kernel(kernel, rows, args, write, reduction, denominator, shape):
    """Call a ``make_loss_kernel`` kernel on (rows, classes) logits: (loss, grad of ``shape`` or None).

    The loss is reduced as ``reduction`` asks (``reduction.reduce_losses``) and has the logits'
    dtype; ``shape`` is the logits' shape (the batch's is ``shape[:-1]``).
    """
    block, split = block_schedule(rows.shape[0], rows.shape[1], rows.dtype.itemsize)
    if write:
        grad = new_output_like(rows)
    else:
        # forward only: one block of scratch per thread (``exp_slot``), so that the loss
        # takes the same exponentials, stored as the fused kernel stores them in the
        # gradient, and comes out bit-identical to the fused kernel's
        grad = np.empty((numba.get_num_threads(), min(block, rows.shape[1])), dtype=rows.dtype)
    row_loss = np.empty(rows.shape[0])
    total = kernel(rows, args, grad, row_loss, block, split, write)
    loss = reduce_losses(row_loss, reduction, shape[:-1], rows.dtype, denominator, total)
    return loss, (grad.reshape(shape) if write else None)


# ---- inputs and the upstream gradient ---------------------------------------------------------


def logit_rows(logits):
    """Validated logits as C-contiguous (rows, classes), and the batch shape."""
    logits = check_float_array("logits", logits)
    if logits.shape[-1] < 1:
        raise ValueError(f"logits must have at least one class on its last axis, got shape {logits.shape}")
    rows = np.ascontiguousarray(logits.reshape(-1, logits.shape[-1]))
    return logits, rows, logits.shape[:-1]


@njit(inline="always", **JIT_OPTIONS)
def upstream_at(row_scale, i):
    """Row i's dLoss/dloss_i from ``reduction.row_scales``' array (one per row, or one for all)."""
    return row_scale[i] if row_scale.shape[0] != 1 else row_scale[0]


# ---- block helpers ---------------------------------------------------------------------------


# inline: a call that returns a view increments and decrements the reference count of
# ``grad``, an atomic on one cache line that both threads share (2.5% at 4096 x 1000, 2 threads)
@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def exp_slot(grad, i, start, stop, write):
    """Where a block's e_j go: the gradient's block, or (forward only) this thread's scratch row."""
    if write:
        return grad[i, start:stop]
    return grad[numba.get_thread_id(), 0 : stop - start]


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _scaled(value, scale):
    return np.float64(value) * scale


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def reduce_scaled(values, scale):
    """(m_b, t_b) of a block of ``scale * values`` (scale > 0): max and sum exp(. - m_b) - 1.

    As ``_numerics.rows.reduce_max_sum_exp`` (distillation's temperature-scaled rows): a block of
    only -inf gives (-inf, -1), or NaN as t_b if it holds a NaN; a block holding +inf gives
    (inf, 0) and the merge (``_numerics.rows.merge_max_sum_exp``, which looks at the row's
    elements) settles the row.  T counts the ties (the max's exp(0) = 1 exactly): summed,
    the 1 would round every small term at ulp(1) and swamp a T of 1e-10.
    """
    largest = block_max(values) * scale
    if not math.isfinite(largest):
        return infinite_block_pair(values, largest)
    return largest, scaled_exp_sum(values, scale, largest, values, values[:0])


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def block_factor(block_largest, largest):
    """exp(m_b - M) in float64 (1 for the blocks holding the max), m_b - M taken exactly."""
    if block_largest == largest:
        return 1.0
    high, low = two_sum(block_largest, -largest)
    return exp64_pair(high, low)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp_scaled(values, value, scale, shift):
    """exp(scale * value - shift) for an element ``value`` of ``values``, as a float64."""
    return exp_difference_for(values, _scaled(value, scale), shift)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def target_minus_one(values, label_value, largest, total):
    """a_y - 1 for a_y = exp(z_y - M) / (1 + T), without cancellation when z_y = M (then -T / S).

    ``values`` is any array of the logits' dtype (it selects the exponential's accuracy)."""
    if np.float64(label_value) == largest:
        return -total / (1.0 + total)
    return exp_scaled(values, label_value, 1.0, largest) / (1.0 + total) - 1.0


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def infinite_index(row):
    """Index of the first +inf of a row (-1 if none)."""
    for j in range(row.shape[0]):
        if row[j] == np.inf:
            return j
    return -1
