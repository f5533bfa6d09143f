"""Row-reduction machinery shared by the kernels: block reductions, exact merges and the
parallel driver that cuts long rows across threads.

Every kernel of the softmax family has the same shape on a (rows, classes) array:

1. reduce: each block of a row is reduced to a pair of floats (for softmax, the
   block's max m_b and s_b = sum_j exp(x_j - m_b));
2. merge: the pairs of a row are combined into the row's pair, in a fixed order
   (for softmax the online normalizer of Milakov & Gimelshein 2018:
   M = max_b m_b,  S = sum_b s_b * exp(m_b - M));
3. write: each block of the output is written from the row's pair.

Each block function works on the views ``x[i, start:stop]`` and loops from 0: with a
loop index that LLVM can prove non-negative, Numba's wrap-around of negative indices
disappears and the loop vectorizes (looping ``range(start, stop)`` on the whole row
was measured 4x slower).

Blocks have ``block`` elements (``_config.BLOCK_BYTES``), whatever the thread count.
Short rows are one block.  ``make_row_kernel`` builds one parallel kernel from the
three functions.  It runs the blocks either row by row (one thread per row: the row
stays in cache between the reduce and the write) or, when there are fewer rows than
threads, as a flat list of (row, block) tasks so that one long row is shared between
threads.  Both schedules do the same arithmetic in the same order, so the result is
bit-identical for any number of threads and either schedule.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from ._config import REDUCTION_FASTMATH, STRICT_FASTMATH
from ._exp import exp64, exp64_pair, exp_f32_wide, two_sum

# Reduced pairs per block, and the row pair produced by the merge.
PAIR = 2

# Sums run in float64 (float32 inputs are widened), over chunks of SUM_CHUNK elements
# that LLVM spreads over 4 x 8 lanes: each term passes through at most 8 additions in
# its lane and 5 in the tree that joins the lanes, then the chunk sums of a block are
# added (at most 32 of them) and the blocks of a row are merged pairwise.  The error
# bound therefore grows with log(row length), not with the row length.
SUM_CHUNK = 256


@intrinsic
def maxnum(typingctx, a, b):
    """IEEE maxNum: the larger of a and b, and the other one if either is NaN.

    A loop ``m = maxnum(m, x[j])`` vectorizes (LLVM recognizes the reduction without
    needing the ``nnan`` flag), where ``m = x if x > m else m`` does not.  NaN is
    skipped here on purpose: a NaN in a row reaches the output through the sum of
    exponentials instead.
    """
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, signature, args):
        value_type = args[0].type
        function = builder.module.declare_intrinsic(
            "llvm.maxnum", [value_type], ir.FunctionType(value_type, [value_type, value_type])
        )
        return builder.call(function, args)

    return a(a, b), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with a single rounding (llvm.fma; one instruction on FMA hardware)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        value_type = args[0].type
        function = builder.module.declare_intrinsic(
            "llvm.fma", [value_type], ir.FunctionType(value_type, [value_type] * 3)
        )
        return builder.call(function, args)

    return a(a, b, c), codegen


def cast_like(values, value):
    """``value`` converted to the dtype of ``values`` (JIT only)."""
    raise NotImplementedError("cast_like is only callable from JIT code")


@overload(cast_like)
def _cast_like(values, value):
    if values.dtype == types.float32:
        return lambda values, value: np.float32(value)
    return lambda values, value: np.float64(value)


def exp_for(values, value):
    """exp(value) for a float64 ``value``, to the accuracy of ``values``' dtype (JIT only).

    float32 rows: ``exp_f32_wide`` (float32 accuracy, computed in float64); float64
    rows: ``exp64``.  The result is a float64 either way: float32 kernels round it once
    when they store it.
    """
    raise NotImplementedError("exp_for is only callable from JIT code")


@overload(exp_for)
def _exp_for(values, value):
    if values.dtype == types.float32:
        return lambda values, value: exp_f32_wide(value)
    return lambda values, value: exp64(value)


def exp_difference_for(values, value, shift):
    """exp(value - shift) as if the subtraction were exact (JIT only); a float64.

    ``value`` is an element of ``values`` and ``shift`` a float64 holding a value of
    ``values``' dtype (a row maximum).  For float32 rows the difference is exact in
    float64; for float64 rows its rounding error, recovered by ``two_sum``, is folded
    into the exponential's argument.
    """
    raise NotImplementedError("exp_difference_for is only callable from JIT code")


@overload(exp_difference_for)
def _exp_difference_for(values, value, shift):
    if values.dtype == types.float32:
        return lambda values, value, shift: exp_f32_wide(np.float64(value) - shift)

    def exp_difference64(values, value, shift):
        high, low = two_sum(value, -shift)
        return exp64_pair(high, low)

    return exp_difference64


# ---- the block reductions ---------------------------------------------------------------


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def block_max(values):
    """max(values) as a float64, skipping NaN; -inf for an empty or all-NaN block."""
    largest = cast_like(values, -np.inf)
    for j in range(values.shape[0]):
        largest = maxnum(largest, values[j])
    return np.float64(largest)


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def sum_exp_minus_one(values, largest, destination, store):
    """T = sum_j exp(values[j] - largest) - 1 for largest = max(values), in float64.

    Without ``store`` (logsumexp, log_softmax: T feeds log1p, whose result can be as
    small as T) T is computed without cancellation: the entries below the max are
    summed and the entries equal to it (each contributing exp(0) = 1) are counted,
    T = sum + (count - 1), so log S = log1p(T) stays accurate for a dominant class down
    to the smallest subnormal.  (Forming T = S - 1 by subtraction costs ~1e-16
    absolute: 1e34 ULP for a float32 log-probability of -1e-40, measured.)  With
    ``store`` (softmax's first pass: each exp is also written to ``destination``,
    rounded to its dtype) only S's relative accuracy matters, a_j = e_j / S, and
    T = S - 1 is formed directly: counting the ties there measured 22% slower.  The
    difference values[j] - largest is exact (``exp_difference_for``).  NaN entries
    reach T.  Chunked as described at ``SUM_CHUNK``.
    """
    total = 0.0
    ties = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        written = destination[base : base + SUM_CHUNK]
        partial = 0.0
        for j in range(chunk.shape[0]):
            e = exp_difference_for(values, chunk[j], largest)
            if store:
                written[j] = e
                partial += e
            else:
                value = np.float64(chunk[j])
                partial += e if value != largest else 0.0
                ties += 1.0 if value == largest else 0.0
        total += partial
    if store:
        return total - 1.0
    return total + (ties - 1.0)


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def reduce_max_sum_exp(x, unused, out, i, start, stop):
    """The (m_b, t_b) pair of a block: its max and t_b = sum_j exp(x_j - m_b) - 1.

    A block of only -inf gives t_b = -1 (its sum is 0), or NaN if it holds a NaN; a
    block holding +inf gives (inf, 0) and the merge settles its row.
    """
    values = x[i, start:stop]
    largest = block_max(values)
    if largest == -np.inf:
        for j in range(values.shape[0]):
            if values[j] != values[j]:
                return largest, np.nan
        return largest, -1.0
    if largest == np.inf:
        return largest, 0.0
    return largest, sum_exp_minus_one(values, largest, values, False)


@njit(cache=False)
def pairwise_sum(terms):
    """Sum of a 1-D float64 array by repeated halving (it is overwritten); error O(log n)."""
    count = terms.shape[0]
    if count == 0:
        return 0.0
    while count > 1:
        half = count // 2
        for k in range(half):
            terms[k] = terms[2 * k] + terms[2 * k + 1]
        if count % 2:
            terms[half] = terms[count - 1]
            half += 1
        count = half
    return terms[0]


@njit(cache=False)
def merge_max_sum_exp(x, i, partial):
    """Merge the (m_b, t_b) pairs of row i into (M, T), S = 1 + T = sum_b (1 + t_b) e^(m_b - M).

    The first block holding the maximum contributes t_b, every other block
    (1 + t_b) exp(m_b - M), summed pairwise.  Rows whose maximum is infinite are
    settled by looking at their elements:

    * M = -inf (every entry -inf or NaN): T = -1 (S = 0), or NaN if the row has a NaN;
    * M = +inf: T = (number of +inf entries) - 1, or NaN if the row has a NaN.
    """
    blocks = partial.shape[0]
    largest = -np.inf
    for k in range(blocks):
        if partial[k, 0] > largest:
            largest = partial[k, 0]
    if math.isfinite(largest):
        if blocks == 1:
            return largest, partial[0, 1]
        terms = np.empty(blocks)
        first = True
        for k in range(blocks):
            if first and partial[k, 0] == largest:
                terms[k] = partial[k, 1]
                first = False
            else:
                high, low = two_sum(partial[k, 0], -largest)
                terms[k] = (1.0 + partial[k, 1]) * exp64_pair(high, low)
        return largest, pairwise_sum(terms)
    row = x[i]
    count = -1.0
    for j in range(row.shape[0]):
        value = row[j]
        if value != value:
            return largest, np.nan
        if value == np.inf:
            count += 1.0
    return largest, count


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def reduce_sum_product(y, dy, out, i, start, stop):
    """(sum_j y_j dy_j, 0) over a block, in float64 (softmax backward)."""
    y_values = y[i, start:stop]
    dy_values = dy[i, start:stop]
    total = 0.0
    for j in range(y_values.shape[0]):
        total += np.float64(y_values[j]) * np.float64(dy_values[j])
    return total, 0.0


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def reduce_sum_and_max(y, dy, out, i, start, stop):
    """(sum_j dy_j, max_j y_j) over a block, in float64 (log-softmax backward)."""
    dy_values = dy[i, start:stop]
    total = 0.0
    for j in range(dy_values.shape[0]):
        total += np.float64(dy_values[j])
    return total, block_max(y[i, start:stop])


@njit(cache=False)
def merge_sum_and_max(x, i, partial):
    """(sum of the first members, max of the second members) of a row's pairs."""
    largest = -np.inf
    for k in range(partial.shape[0]):
        if partial[k, 1] > largest:
            largest = partial[k, 1]
    return pairwise_sum(partial[:, 0].copy()), largest


# ---- the driver --------------------------------------------------------------------------


def make_row_kernel(reduce_block, merge_row, write_block):
    """A parallel kernel ``kernel(a, b, out, block, split)`` over (rows, classes) arrays.

    ``reduce_block(a, b, out, i, start, stop) -> (p0, p1)`` (it may write ``out``),
    ``merge_row(a, i, partial[i]) -> (s0, s1)``,
    ``write_block(a, b, out, i, start, stop, p0, p1, s0, s1)`` with the block's own pair
    (p0, p1) and the row's (s0, s1).  ``b`` is a second input of ``a``'s shape (pass
    ``a`` when there is none).  With ``split`` the (row, block) tasks are spread over
    threads; otherwise whole rows are.
    """

    @njit(parallel=True, fastmath=STRICT_FASTMATH, cache=False)
    def kernel(a, b, out, block, split):
        rows, classes = a.shape
        blocks = max(1, (classes + block - 1) // block)
        partial = np.empty((rows, blocks, PAIR))
        if split:
            for task in prange(rows * blocks):
                _reduce_task(a, b, out, task // blocks, task % blocks, block, partial)
            stats = np.empty((rows, PAIR))
            for i in prange(rows):
                stats[i, 0], stats[i, 1] = merge_row(a, i, partial[i])
            for task in prange(rows * blocks):
                i = task // blocks
                _write_task(a, b, out, i, task % blocks, block, partial, stats[i, 0], stats[i, 1])
        else:
            for i in prange(rows):
                _row_task(a, b, out, i, block, partial)

    @njit(fastmath=STRICT_FASTMATH, cache=False)
    def _reduce_task(a, b, out, i, k, block, partial):
        start = k * block
        stop = min(a.shape[1], start + block)
        partial[i, k, 0], partial[i, k, 1] = reduce_block(a, b, out, i, start, stop)

    @njit(fastmath=STRICT_FASTMATH, cache=False)
    def _write_task(a, b, out, i, k, block, partial, s0, s1):
        start = k * block
        stop = min(a.shape[1], start + block)
        write_block(a, b, out, i, start, stop, partial[i, k, 0], partial[i, k, 1], s0, s1)

    @njit(fastmath=STRICT_FASTMATH, cache=False)
    def _row_task(a, b, out, i, block, partial):
        blocks = partial.shape[1]
        for k in range(blocks):
            _reduce_task(a, b, out, i, k, block, partial)
        s0, s1 = merge_row(a, i, partial[i])
        for k in range(blocks):
            _write_task(a, b, out, i, k, block, partial, s0, s1)

    return kernel
