"""Block primitives of the row kernels: maxima, sums of exponentials, exact merges.

Every kernel of the softmax family has the same shape on a (rows, classes) array:

1. reduce: each block of a row is reduced to a few floats (for softmax, the block's max
   m_b and t_b = sum_j exp(x_j - m_b) - 1);
2. merge: the blocks' values are combined into the row's, in a fixed order (for softmax
   the online normalizer of Milakov & Gimelshein 2018: M = max_b m_b,
   S = sum_b s_b exp(m_b - M));
3. write: each block of the output is written from the row's values.

This module holds the pieces of steps 1 and 2 and the in-place scaling of step 3
(``scale_shift_in_place``); the drivers that run them in parallel are in ``_driver/``.

Each block function works on the views ``x[i, start:stop]`` and loops from 0: with a
loop index that LLVM can prove non-negative, Numba's wrap-around of negative indices
disappears and the loop vectorizes (looping ``range(start, stop)`` on the whole row
was measured 4x slower).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import get_thread_id, njit, types
from numba.extending import intrinsic, overload

from .._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH
from .eft import fma, two_product, two_sum
from .exp import (
    EXP32_FLOOR_LIMIT,
    EXP64_FLOOR_LIMIT,
    exp32_difference,
    exp32_difference_floored,
    exp64,
    exp64_difference_floored,
    exp64_nonpositive,
    exp64_pair,
    exp_f32_wide,
)
from .vector import (
    VECTOR_BYTES,
    contiguous_float64_row,
    contiguous_float_row,
    row_dot2,
    row_exp32_store,
    row_exp_product_difference32,
    row_gap_sums,
    row_max,
    row_scaled32_stream,
    row_target_gap_sums,
    row_sum2,
)

# Sums run in float64 (float32 inputs are widened), over chunks of SUM_CHUNK elements
# that LLVM spreads over 4 x 8 lanes: each term passes through at most 8 additions in
# its lane and 5 in the tree that joins the lanes, then the chunk sums of a block are
# added (at most 32 of them) and the blocks of a row are merged pairwise.  The error
# bound therefore grows with log(row length), not with the row length.  The backward
# normalizers' float64 rows are the exception: their sums (sum_j y_j dy_j, sum_j dy_j) are
# compensated (``row_dot``, ``row_sum``: Dot2 on 32 lanes, then the blocks in order),
# within about one rounding of the exact sum.
SUM_CHUNK = 256

# float32 rows that store their exponentials sum them plainly and recount the ties only
# when the block's S = 1 + T is below this (T < 1/16, a dominant max): see ``terms_float32``.
RECOUNT_BELOW = 1.0 + 1.0 / 16.0


def sum_chunk_for(values):
    """Length of the chunks a float64 sum over ``values`` runs in (JIT only).

    float64 rows: ``SUM_CHUNK``.  float32 rows: one chunk per block (up to 8192
    elements).  Their outputs are rounded to float32, and a float64 sum of 8192 terms in
    32 lanes has a relative error below 256 * 2**-53 = 2.8e-14, about 5e-7 float32 ULP.
    The chunk loops cost about 10% of softmax's time at 1000 classes (measured).
    """
    raise NotImplementedError("sum_chunk_for is only callable from JIT code")


@overload(sum_chunk_for)
def _sum_chunk_for(values):
    if values.dtype == types.float32:
        return lambda values: max(values.shape[0], 1)
    return lambda values: SUM_CHUNK


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


def cast_like(values, value):
    """``value`` converted to the dtype of ``values`` (JIT only)."""
    raise NotImplementedError("cast_like is only callable from JIT code")


@overload(cast_like)
def _cast_like(values, value):
    if values.dtype == types.float32:
        return lambda values, value: np.float32(value)
    return lambda values, value: np.float64(value)


def _dtype_exp(name, float64_exp, doc):
    """A JIT-only ``name(values, value)``: ``exp_f32_wide(value)`` for float32 ``values``,
    ``float64_exp(value)`` for float64 ones."""

    def dtype_exp(values, value):
        raise NotImplementedError(f"{name} is only callable from JIT code")

    @overload(dtype_exp)
    def _dtype_exp_overload(values, value):
        if values.dtype == types.float32:
            return lambda values, value: exp_f32_wide(value)
        return lambda values, value: float64_exp(value)

    dtype_exp.__name__ = dtype_exp.__qualname__ = name
    dtype_exp.__doc__ = doc
    return dtype_exp


exp_for = _dtype_exp("exp_for", exp64, """exp(value) for a float64 ``value``, to the accuracy of ``values``' dtype (JIT only).

    float32 rows: ``exp_f32_wide`` (float32 accuracy, computed in float64); float64
    rows: ``exp64``.  The result is a float64 either way: float32 kernels round it once
    when they store it.
    """)
exp_nonpositive_for = _dtype_exp(
    "exp_nonpositive_for", exp64_nonpositive,
    """exp(value) for a float64 ``value`` <= 0, as ``exp_for`` gives it, ``exp64_nonpositive`` for float64 rows (JIT only).""")


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


def block_max(values):
    """max(values) as a float64, skipping NaN; -inf for an empty or all-NaN block (JIT only).

    Contiguous rows (every row of the kernels' C-ordered inputs) take the explicit
    vector loop of ``vector.row_max``, one ``maxps`` a vector; others the ``maxnum``
    loop, which LLVM vectorizes with a NaN check per vector (2.3x slower).
    """
    raise NotImplementedError("block_max is only callable from JIT code")


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _strided_max(values):
    largest = cast_like(values, -np.inf)
    for j in range(values.shape[0]):
        largest = maxnum(largest, values[j])
    return np.float64(largest)


# inline, as the dispatch below: the intrinsics' instructions carry their own flags
@overload(block_max, inline="always", jit_options=JIT_OPTIONS)
def _block_max(values):
    if contiguous_float_row(values):
        return lambda values: np.float64(row_max(values))
    return lambda values: _strided_max(values)


def store_exp32_floored(values, largest, destination, ahead):
    """destination[j] = exp32_difference_floored(values[j], largest), float32 (JIT only).

    Contiguous rows take the explicit vector loop of ``vector.row_exp32_store`` (the
    same operations, bit for bit; ``vscalefps`` for the scaling by 2**k on AVX-512; the
    block ``ahead``, read next, prefetched along the way), others LLVM's vectorization of
    the scalar loop.  With the float64 sum after them, at 1000 classes on one thread: 0.31
    ns per element, against 0.38 for the scalar loop.
    """
    raise NotImplementedError("store_exp32_floored is only callable from JIT code")


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _strided_exp32_store(values, largest, destination):
    for j in range(values.shape[0]):
        destination[j] = exp32_difference_floored(values[j], largest)


@overload(store_exp32_floored, inline="always", jit_options=JIT_OPTIONS)
def _store_exp32_floored(values, largest, destination, ahead):
    if contiguous_float_row(values) and contiguous_float_row(destination) and contiguous_float_row(ahead):
        return lambda values, largest, destination, ahead: row_exp32_store(values, largest, destination, ahead)
    return lambda values, largest, destination, ahead: _strided_exp32_store(values, largest, destination)


def store_exp_product_difference(y_values, dy_values, destination, total, largest, ahead_y, ahead_dy):
    """destination[j] = dy_j - exp(y_j) total, exp to the rows' accuracy, one rounding (JIT only).

    In float64 (``exp_for``) and rounded once to the rows' dtype.  ``largest`` is the row's
    max of y: where it is <= 0, as for log-probabilities, float64 rows take
    ``exp64_nonpositive``, the bits of ``exp64`` in fewer operations.  Contiguous float32
    rows take the explicit vector loop of ``vector.row_exp_product_difference32`` (the same
    operations, bit for bit), which prefetches ``ahead_y`` and ``ahead_dy``, the blocks the
    kernel reads next (``next_row_block``); others LLVM's vectorization of the scalar loop.
    """
    raise NotImplementedError("store_exp_product_difference is only callable from JIT code")


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _scalar_exp_product_difference(y_values, dy_values, destination, total, largest):
    if largest <= 0.0:
        for j in range(y_values.shape[0]):
            y = np.float64(y_values[j])
            destination[j] = np.float64(dy_values[j]) - exp_nonpositive_for(y_values, y) * total
        return
    for j in range(y_values.shape[0]):
        destination[j] = np.float64(dy_values[j]) - exp_for(y_values, np.float64(y_values[j])) * total


@overload(store_exp_product_difference, inline="always", jit_options=JIT_OPTIONS)
def _store_exp_product_difference(y_values, dy_values, destination, total, largest, ahead_y, ahead_dy):
    rows = (y_values, dy_values, destination, ahead_y, ahead_dy)
    if all(contiguous_float_row(row) and row.dtype == types.float32 for row in rows):
        return lambda y_values, dy_values, destination, total, largest, ahead_y, ahead_dy: (
            row_exp_product_difference32(y_values, dy_values, destination, np.float64(total), ahead_y, ahead_dy))
    return lambda y_values, dy_values, destination, total, largest, ahead_y, ahead_dy: (
        _scalar_exp_product_difference(y_values, dy_values, destination, total, largest))


@njit(inline="always", **JIT_OPTIONS)
def next_row_block(x, i, start, stop):
    """x[i + 1, start:stop], the block of the next row at the same place; empty for the last row.

    A row kernel that writes row i block by block after reducing it reads row i + 1 next
    (one thread takes consecutive rows): a write loop bound by its arithmetic can prefetch it.
    log_softmax_backward's float32 write does (``store_exp_product_difference``).
    """
    if i + 1 < x.shape[0]:
        return x[i + 1, start:stop]
    return x[i, 0:0]


def _make_exp_sum(store, scaled):
    """Build ``exp_sum(values, scale, largest, destination, ahead) -> T`` for one combination of flags.

    T = sum_j exp(scale values[j] - largest) - 1, in float64, for
    largest = max_j scale values[j].  ``scale values[j]`` is rounded to float64 once
    (without ``scaled``, ``scale`` is ignored and taken as 1); the difference to
    ``largest`` is then exact (``exp_difference_for``).  NaN entries reach T.  With
    ``store`` each e_j is also written to ``destination`` (rounded to its dtype), for a
    write pass to scale in place.  ``ahead``: the block the caller reads next, prefetched by
    the float32 rows' stored exponentials (``vector.row_exp32_store``); empty for none.

    T is computed without cancellation: the entries equal to the max (each exp(0) = 1
    exactly) are counted and the others summed, T = sum + (count - 1).  That is what
    log S = log1p(T) needs (logsumexp, log_softmax, cross-entropy's loss and
    a_y - 1 = -T/S), accurate for a dominant class down to the smallest subnormal;
    forming T = S - 1 by subtraction costs ~1e-16 absolute, 1e34 ULP for a float32
    log-probability of -1e-40 (measured).  softmax needs it too: the lane that holds the
    max's 1 rounds every small term added to it at ulp(1), and S was 4.5 ULP off on
    float64 rows with one dominant logit (softmax 4.94 ULP, measured; 1.3 with the
    count).  float32 rows that store their e_j count only where it matters: they sum
    plainly and sum again with the ties counted when the block's T < 1/16
    (``RECOUNT_BELOW``; above it the plain sum's absolute error, depth * u * S, is under
    17 depth u relative to T, about 2**-36: far below a float32 ULP).  Counting every
    block cost log_softmax and cross-entropy 9% at 1000 classes (measured).

    The loops (``exp_sum.loops``):

    * float32 rows that store (softmax and log_softmax into their output, cross-entropy
      into the gradient, logsumexp into a scratch row, unscaled): the exponentials in
      float32 arithmetic (``exp32_difference_floored``, 16 lanes a vector; for contiguous
      rows the explicit vector loop ``store_exp32_floored``), stored, then summed in
      float64 in a second loop (a third, counting the ties as the stored e_j equal to 1,
      for a dominant max).
    * float64 rows: ``exp64_difference_floored`` (for |largest| < 2**40, every row in
      practice) or ``exp64_pair`` of the ``two_sum``.
    * the rest (float32 rows scaled by a temperature, or not stored): the float64
      evaluation ``exp_f32_wide`` of the float64 difference.

    Chunked as described at ``SUM_CHUNK`` (``sum_chunk_for``); a row of one chunk runs
    one loop, as the chunk loop around it measured 14% slower at 1000 classes.  The
    flags are closure constants, not arguments: passed at run time they cost softmax 7%
    and log_softmax 9% at 1000 classes (measured), LLVM not inlining this function.
    """

    def make_terms_wide(floored):
        # floored (float64 rows with |largest| < EXP64_FLOOR_LIMIT): the cheaper exponential
        # of ``exp64_difference_floored``; a closure constant, as the branch inside the
        # loop kept it scalar (LLVM does not unswitch it)
        @njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
        def terms_wide(values, scale, largest, destination):
            total = 0.0
            ties = 0.0
            for j in range(values.shape[0]):
                value = np.float64(values[j]) * scale if scaled else np.float64(values[j])
                if floored:
                    e = exp64_difference_floored(value, largest)
                else:
                    e = exp_difference_for(values, value, largest)
                if store:
                    destination[j] = e
                total += e if value != largest else 0.0
                ties += 1.0 if value == largest else 0.0
            return total, ties

        return terms_wide

    terms_wide = make_terms_wide(floored=False)
    terms_floored = make_terms_wide(floored=True)

    @njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
    def terms_float32(values, scale, largest, destination, ahead):
        # two loops: e_j = exp32(x_j - m) in float32 arithmetic (16 lanes), stored; then
        # their float64 sum.  In one loop the float64 sum halves the exp's vector width
        # (LLVM picks 8 lanes for both), which measured 25% slower; written on vectors
        # (vector.py) with the conversions to float64 in the exp loop, 12% slower.
        shift = np.float32(largest)
        if abs(shift) < EXP32_FLOOR_LIMIT:  # every row in practice
            store_exp32_floored(values, shift, destination, ahead)
        else:
            for j in range(values.shape[0]):
                destination[j] = exp32_difference(values[j], shift)
        total = 0.0
        for j in range(values.shape[0]):
            total += np.float64(destination[j])
        if total >= RECOUNT_BELOW:
            # T = S - 1 from the plain sum: S's rounding errors are at most depth * u * S,
            # so T's relative error is depth * u * S / T <= 17 depth u for T >= 1/16
            # (about 2**-36 for a block of 8192 terms: far below a float32 ULP)
            return total, 0.0
        # a dominant max (T < 1/16): the lane holding its e = 1 rounds each small term at
        # ulp(1), so T is summed again with the ties counted, not added.  e_j = 1 exactly
        # for the ties (and for |x_j - m| < 2**-25, whose e_j is 1 within 2**-25: T >= 1
        # then, so the count costs T no accuracy)
        total = 0.0
        ties = 0.0
        for j in range(values.shape[0]):
            e = np.float64(destination[j])
            total += e if e != 1.0 else 0.0
            ties += 1.0 if e == 1.0 else 0.0
        return total, ties

    def terms(values, scale, largest, destination, ahead):
        raise NotImplementedError("terms is only callable from JIT code")

    # inline: a dispatch with no arithmetic of its own; as a call it cost the float32 rows'
    # exponentials and sum 5% at 1000 classes (a call passes each array as 7 values)
    @overload(terms, inline="always", jit_options=JIT_OPTIONS)
    def _terms(values, scale, largest, destination, ahead):
        if store and not scaled and values.dtype == destination.dtype == types.float32:
            return lambda values, scale, largest, destination, ahead: terms_float32(values, scale, largest, destination,
                                                                                   ahead)
        if values.dtype == types.float64:

            def terms64(values, scale, largest, destination, ahead):
                if abs(largest) < EXP64_FLOOR_LIMIT:  # every row in practice
                    return terms_floored(values, scale, largest, destination)
                return terms_wide(values, scale, largest, destination)

            return terms64
        return lambda values, scale, largest, destination, ahead: terms_wide(values, scale, largest, destination)

    # STRICT: with reassoc LLVM rewrote total + (ties - 1) as (total + ties) - 1, which
    # cancels (T = 1.8e-13 came out 1.5e-4 off; tests/kernels/test_exp.py guards it)
    # (and not inline="always": inlined, it took its REDUCTION_FASTMATH callers' flags and
    # the rewrite came back)
    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def exp_sum(values, scale, largest, destination, ahead):
        length = sum_chunk_for(values)
        if values.shape[0] <= length:
            total, ties = terms(values, scale, largest, destination, ahead)
        else:
            total = 0.0
            ties = 0.0
            for base in range(0, values.shape[0], length):
                written = destination[base : base + length] if store else destination
                partial, count = terms(values[base : base + length], scale, largest, written, ahead[:0])
                total += partial
                ties += count
        return total + (ties - 1.0)

    exp_sum.loops = (terms_wide, terms_floored, terms_float32)  # for tests/kernels/test_exp.py
    return exp_sum


# softmax, log_softmax and cross-entropy (stored); logsumexp; distillation (scaled by 1/T)
store_exp_sum = _make_exp_sum(store=True, scaled=False)
exp_sum_minus_one = _make_exp_sum(store=False, scaled=False)
scaled_exp_sum = _make_exp_sum(store=False, scaled=True)


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def infinite_block_pair(values, largest):
    """(m_b, t_b) of a block whose max is infinite: (-inf, -1) (sum 0), or NaN as t_b if
    the block holds a NaN; (inf, 0) for a block holding +inf (the merge settles its row)."""
    if largest == -np.inf:
        for j in range(values.shape[0]):
            if values[j] != values[j]:
                return largest, np.nan
        return largest, -1.0
    return largest, 0.0


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def reduce_max_sum_exp(x, unused, out, i, start, stop):
    """The (m_b, t_b) pair of a block: its max and t_b = sum_j exp(x_j - m_b) - 1."""
    values = x[i, start:stop]
    largest = block_max(values)
    if not math.isfinite(largest):
        return infinite_block_pair(values, largest)
    return largest, exp_sum_minus_one(values, 1.0, largest, values, values[:0])


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def max_sum_exp_stored(values, destination, ahead):
    """(m_b, t_b) of a block as ``reduce_max_sum_exp``, each e_j stored in ``destination``.

    Storing is what lets a float32 block take its exponentials in float32 arithmetic
    (``_make_exp_sum``), twice as many per vector: log_softmax stores them in the output
    row it overwrites afterwards, cross-entropy in the gradient's block (or scratch),
    logsumexp in a scratch row of its thread (``reduce_max_sum_exp_scratch``).
    Nothing is stored for a block whose max is infinite.  ``ahead``: the block read next
    (``following_block``), prefetched while the exponentials are computed; empty for none.
    """
    largest = block_max(values)
    if not math.isfinite(largest):
        return infinite_block_pair(values, largest)
    return largest, store_exp_sum(values, 1.0, largest, destination, ahead)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def following_block(x, i, start, stop):
    """The block a row kernel reads after x[i, start:stop]: the next ``stop - start`` entries of
    row i, else the first ones of row i + 1 (the whole next row after a row of one block);
    empty after the last row.

    The rows are read from memory block by block: the exp loop of one block prefetches the
    next (``vector.row_exp32_store``), which its max pass then finds in cache.  The reduces of
    softmax, log_softmax, logsumexp and cross-entropy take it, for rows of one block too
    (``benchmarks/prefetch_model.py``; the figures, per host, in ``docs/performance.md``).
    """
    length = stop - start
    if stop < x.shape[1]:
        return x[i, stop : stop + length]
    if i + 1 < x.shape[0]:
        return x[i + 1, 0:length]
    return x[i, 0:0]


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def reduce_max_sum_exp_via(x, unused, out, i, start, stop):
    """``reduce_max_sum_exp`` with ``out``'s block (of ``x``'s shape) as scratch for the e_j."""
    return max_sum_exp_stored(x[i, start:stop], out[i, start:stop], following_block(x, i, start, stop))


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def reduce_max_sum_exp_scratch(x, scratch, out, i, start, stop):
    """``reduce_max_sum_exp`` with the e_j stored in this thread's row of ``scratch``.

    For a kernel with no output row to store its exponentials in (logsumexp): ``scratch``
    is (threads, block) of ``x``'s dtype, one row per thread of Numba's pool
    (``get_thread_id``, below ``get_num_threads``), so a float32 block takes its
    exponentials in float32 arithmetic as ``max_sum_exp_stored`` does for log_softmax,
    whose T it then equals bit for bit.  Each block is computed by one thread from its
    own elements alone, so the scratch row it lands in changes no result.
    """
    return max_sum_exp_stored(
        x[i, start:stop], scratch[get_thread_id(), : stop - start], following_block(x, i, start, stop)
    )


@njit(**JIT_OPTIONS)
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


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def chunked_sum(values):
    """Sum of a 1-D float64 array (not modified): chunks of ``SUM_CHUNK`` in 4 x 8 lanes, then
    the chunk sums pairwise, so a term passes through O(log n) additions (NumPy's pairwise
    ``np.sum`` has the same order of error)."""
    chunks = max(1, (values.shape[0] + SUM_CHUNK - 1) // SUM_CHUNK)
    terms = np.empty(chunks)
    for k in range(chunks):
        chunk = values[k * SUM_CHUNK : (k + 1) * SUM_CHUNK]
        total = 0.0
        for j in range(chunk.shape[0]):
            total += chunk[j]
        terms[k] = total
    return pairwise_sum(terms)


@njit(**JIT_OPTIONS)
def shifted_sum(partial, largest, first):
    """sum_b (1 + t_b) e^(m_b - M) - [first] over the blocks' (m_b, t_b) in ``partial``, summed pairwise.

    M = ``largest`` is finite and at least every m_b.  With ``first``, the first block whose
    m_b equals M contributes t_b (its 1 e^0 is the "- 1"); without it, every block contributes
    (1 + t_b) e^(m_b - M).  ``merge_max_sum_exp``'s T for its own M; a shard of the classes
    (``softmaxlab.distributed``) passes the global M and ``first`` only where it holds M first.
    """
    blocks = partial.shape[0]
    terms = np.empty(blocks)
    for k in range(blocks):
        if first and partial[k, 0] == largest:
            terms[k] = partial[k, 1]
            first = False
        else:
            high, low = two_sum(partial[k, 0], -largest)
            terms[k] = (1.0 + partial[k, 1]) * exp64_pair(high, low)
    return pairwise_sum(terms)


@njit(**JIT_OPTIONS)
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
        return largest, shifted_sum(partial, largest, True)
    row = x[i]
    count = -1.0
    for j in range(row.shape[0]):
        value = row[j]
        if value != value:
            return largest, np.nan
        if value == np.inf:
            count += 1.0
    return largest, count


# ---- compensated sums of float64 rows (the backward normalizers) ------------------------

# the logical lanes of ``vector.row_dot2``: 4 accumulators of one 8-lane float64 vector
_LANES64 = 4 * (VECTOR_BYTES // 8)


def _make_strided_compensated(product):
    """The scalar twin of ``vector.row_dot2`` (``product``) or ``row_sum2``: the same lanes,
    operations and order, for rows that are not C-contiguous (bit for bit the vector results)."""

    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def strided(a, b):
        totals = np.zeros(_LANES64)
        compensations = np.zeros(_LANES64)
        length = a.shape[0]
        # one more group than the whole groups: the zero-padded last one
        padded = (length // _LANES64 + 1) * _LANES64
        for j in range(padded):
            lane = j % _LANES64
            if j < length:
                if product:
                    term, product_error = two_product(np.float64(a[j]), np.float64(b[j]))
                else:
                    term, product_error = np.float64(a[j]), 0.0
            else:
                term, product_error = 0.0, 0.0
            totals[lane], error = two_sum(totals[lane], term)
            if product:
                error = error + product_error
            compensations[lane] = compensations[lane] + error
        half = _LANES64
        while half > 1:
            half //= 2
            for lane in range(half):
                totals[lane], error = two_sum(totals[lane], totals[lane + half])
                compensations[lane] = compensations[lane] + (error + compensations[lane + half])
        return totals[0], compensations[0]

    return strided


_strided_dot2 = _make_strided_compensated(product=True)
_strided_sum2 = _make_strided_compensated(product=False)


def _gap_weight(probabilities, weights, j, keep, uniform):
    """The weight of term j: w_j, or w_j (keep p_j + uniform) with probabilities (JIT only)."""
    raise NotImplementedError("_gap_weight is only callable from JIT code")


@overload(_gap_weight, inline="always", jit_options=JIT_OPTIONS)
def _gap_weight_overload(probabilities, weights, j, keep, uniform):
    if isinstance(probabilities, types.NoneType):
        if isinstance(weights, types.NoneType):
            return lambda probabilities, weights, j, keep, uniform: 1.0
        return lambda probabilities, weights, j, keep, uniform: weights[j]
    if isinstance(weights, types.NoneType):
        return lambda probabilities, weights, j, keep, uniform: keep * np.float64(probabilities[j]) + uniform
    return lambda probabilities, weights, j, keep, uniform: weights[j] * (keep * np.float64(probabilities[j]) + uniform)


@njit(fastmath=False, **JIT_OPTIONS)
def _strided_gap_sums(values, probabilities, weights, anchor, keep, uniform, plain):
    # the scalar twin of ``vector.row_gap_sums`` (``probabilities`` None) and
    # ``row_target_gap_sums``: their lanes, operations and order (no flags, so no product is
    # fused into a sum, as there), for rows that are not C-contiguous; ``plain``: no weights
    totals = np.zeros(_LANES64)
    weight_totals = np.zeros(_LANES64)
    length = values.shape[0]
    padded = (length // _LANES64 + 1) * _LANES64
    for j in range(padded):
        lane = j % _LANES64
        term, weight = 0.0, 0.0
        if j < length:
            gap = anchor - np.float64(values[j])
            if plain:
                term = gap
            else:
                weight = _gap_weight(probabilities, weights, j, keep, uniform)
                term = weight * gap if weight != 0.0 else 0.0
        totals[lane] = totals[lane] + term
        weight_totals[lane] = weight_totals[lane] + weight
    half = _LANES64
    while half > 1:
        half //= 2
        for lane in range(half):
            totals[lane] = totals[lane] + totals[lane + half]
            weight_totals[lane] = weight_totals[lane] + weight_totals[lane + half]
    if plain:
        return totals[0], np.float64(length)
    return totals[0], weight_totals[0]


def gap_sums(values, weights, anchor):
    """(sum_j w_j (anchor - z_j), sum_j w_j) in an order of their own (JIT only; ``weights`` None: w = 1).

    ``vector.row_gap_sums`` for C-contiguous rows (float64 weights), its scalar twin
    ``_strided_gap_sums`` for others: bit for bit the same sums, whatever kernel calls them.
    """
    raise NotImplementedError("gap_sums is only callable from JIT code")


def target_gap_sums(values, probabilities, weights, anchor, keep, uniform):
    """``gap_sums`` with the weights tw_j = w_j (keep p_j + uniform) of class probabilities (JIT only).

    ``vector.row_target_gap_sums`` for C-contiguous rows, ``_strided_gap_sums`` for others.
    """
    raise NotImplementedError("target_gap_sums is only callable from JIT code")


def _contiguous_weights(weights):
    return isinstance(weights, types.NoneType) or contiguous_float64_row(weights)


@overload(gap_sums, inline="always", jit_options=JIT_OPTIONS)
def _gap_sums_overload(values, weights, anchor):
    if contiguous_float_row(values) and _contiguous_weights(weights):
        return lambda values, weights, anchor: row_gap_sums(values, weights, np.float64(anchor))
    plain = isinstance(weights, types.NoneType)
    return lambda values, weights, anchor: _strided_gap_sums(values, None, weights, np.float64(anchor), 1.0, 0.0, plain)


@overload(target_gap_sums, inline="always", jit_options=JIT_OPTIONS)
def _target_gap_sums_overload(values, probabilities, weights, anchor, keep, uniform):
    if contiguous_float_row(values) and contiguous_float_row(probabilities) and _contiguous_weights(weights):
        return lambda values, probabilities, weights, anchor, keep, uniform: row_target_gap_sums(
            values, probabilities, weights, np.float64(anchor), np.float64(keep), np.float64(uniform))
    return lambda values, probabilities, weights, anchor, keep, uniform: _strided_gap_sums(
        values, probabilities, weights, np.float64(anchor), np.float64(keep), np.float64(uniform), False)


def block_dot2(a, b):
    """sum_j a_j b_j of float64 rows, compensated and rounded once (JIT only).

    Dot2 on 32 lanes (``vector.row_dot2``; its scalar twin for other layouts): the error is
    at most about u |sum| + n^2 u^2 sum_j |a_j b_j|, where the plain float64 sum's is
    about (n / 32 + 5) u sum_j |a_j b_j|.
    """
    raise NotImplementedError("block_dot2 is only callable from JIT code")


@overload(block_dot2, inline="always", jit_options=JIT_OPTIONS)
def _block_dot2(a, b):
    if contiguous_float64_row(a) and contiguous_float64_row(b):
        return lambda a, b: _rounded(row_dot2(a, b))
    return lambda a, b: _rounded(_strided_dot2(a, b))


def block_sum2(values):
    """sum_j values_j of a float64 row, compensated and rounded once (JIT only; see ``block_dot2``)."""
    raise NotImplementedError("block_sum2 is only callable from JIT code")


@overload(block_sum2, inline="always", jit_options=JIT_OPTIONS)
def _block_sum2(values):
    if contiguous_float64_row(values):
        return lambda values: _rounded(row_sum2(values))
    return lambda values: _rounded(_strided_sum2(values, values))


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _rounded(pair):
    """high + low; high alone where it is not finite: an infinite term or an overflow makes
    TwoSum's error inf - inf = NaN, and the sum is then high, the plain sum's inf (or NaN)."""
    high, low = pair
    return high + low if math.isfinite(high) else high


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def compensated_sum(values):
    """sum of a 1-D float64 array in order, compensated (Ogita, Rump & Oishi's Sum2): error about
    u |sum| + n^2 u^2 sum |values|.  For the few blocks of a row."""
    high = 0.0
    low = 0.0
    for k in range(values.shape[0]):
        high, error = two_sum(high, values[k])
        low += error
    return _rounded((high, low))


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _plain_dot(y, dy):
    total = 0.0
    for j in range(y.shape[0]):
        total += np.float64(y[j]) * np.float64(dy[j])
    return total


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _plain_sum(values):
    total = 0.0
    for j in range(values.shape[0]):
        total += np.float64(values[j])
    return total


def row_dot(y, dy):
    """sum_j y_j dy_j in float64 (JIT only): compensated for float64 rows (``block_dot2``);
    float32 rows' products are exact in float64 and their plain sum in 32 lanes is far
    below a float32 ULP (about 2^-40 relative to sum |y_j dy_j| for a block)."""
    raise NotImplementedError("row_dot is only callable from JIT code")


@overload(row_dot, inline="always", jit_options=JIT_OPTIONS)
def _row_dot(y, dy):
    if y.dtype == types.float64:
        return lambda y, dy: block_dot2(y, dy)
    return lambda y, dy: _plain_dot(y, dy)


def row_sum(values):
    """sum_j values_j in float64 (JIT only): compensated for float64 rows (``block_sum2``), plain for float32."""
    raise NotImplementedError("row_sum is only callable from JIT code")


@overload(row_sum, inline="always", jit_options=JIT_OPTIONS)
def _row_sum(values):
    if values.dtype == types.float64:
        return lambda values: block_sum2(values)
    return lambda values: _plain_sum(values)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def reduce_sum_product(y, dy, out, i, start, stop):
    """(sum_j y_j dy_j, 0) over a block, in float64 (softmax backward; ``row_dot``)."""
    return row_dot(y[i, start:stop], dy[i, start:stop]), 0.0


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def reduce_sum_and_max(y, dy, out, i, start, stop):
    """(sum_j dy_j, max_j y_j) over a block, in float64 (log-softmax backward; ``row_sum``)."""
    return row_sum(dy[i, start:stop]), block_max(y[i, start:stop])


@njit(**JIT_OPTIONS)
def merge_sum_and_max(x, i, partial):
    """(sum of the first members, compensated in block order; max of the second members) of a row's pairs."""
    if partial.shape[0] == 1:
        return partial[0, 0], partial[0, 1]  # one block: no copy (an allocation per row)
    largest = -np.inf
    for k in range(partial.shape[0]):
        if partial[k, 1] > largest:
            largest = partial[k, 1]
    return compensated_sum(partial[:, 0]), largest


def scale_shift_in_place(destination, high, low, shift):
    """destination[j] = e_j (high + low) - shift for the e_j stored there (JIT only).

    The float64 factor ``high + low`` (``low`` may be 0) and the float64 ``shift`` are
    applied in the destination's dtype, so that float32 rows run 16 lanes a vector:

    * float32: the factor and the shift are split into float32 pairs (fh + fl, sh + sl,
      each pair exact to about 2**-48 relative), and
      ``fma(e, fh, -sh) + fma(e, fl, -sl)`` is rounded twice, or, for ``shift == 0``,
      ``fma(e, fh, e fl)`` once (softmax's scaling: 0.5 ULP plus 2**-47 relative);
    * float64: ``fma(e, high, fma(e, low, -shift))``.

    With a shift, where e (fh + fl) nearly cancels sh + sl, the first rounding is
    relative to the two terms, not to their difference (the float64 evaluation had the
    same cancellation in its inputs: e_j's own error is relative to the term).
    """
    raise NotImplementedError("scale_shift_in_place is only callable from JIT code")


@overload(scale_shift_in_place, inline="always")
def _scale_shift_in_place(destination, high, low, shift):
    if destination.dtype == types.float32:

        def scale_shift32(destination, high, low, shift):
            high_t, low_t = _float32_pair(high, low)
            if shift == 0.0:
                # a_j = e_j (fh + fl), rounded once
                for j in range(destination.shape[0]):
                    e = destination[j]
                    destination[j] = fma(e, high_t, e * low_t)
                return
            shift_high = np.float32(shift)
            shift_low = np.float32(shift - np.float64(shift_high))
            # e_j (fh + fl) - (sh + sl) = (e_j fh - sh) + (e_j fl - sl)
            for j in range(destination.shape[0]):
                e = destination[j]
                destination[j] = fma(e, high_t, -shift_high) + fma(e, low_t, -shift_low)

        return scale_shift32

    def scale_shift64(destination, high, low, shift):
        for j in range(destination.shape[0]):
            e = destination[j]
            destination[j] = fma(e, high, fma(e, low, -shift))

    return scale_shift64


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _float32_pair(high, low):
    """The float64 factor high + low as float32 fh + fl (exact to about 2**-48 relative)."""
    high_t = np.float32(high)
    return high_t, np.float32((high - np.float64(high_t)) + low)


def stream_scaled(source, destination, high, low):
    """destination[j] = source[j] (high + low), streamed to memory (JIT only).

    ``scale_shift_in_place`` without a shift, bit for bit, reading the e_j from ``source``
    instead of the destination: float32 C-contiguous rows take ``vector.row_scaled32_stream``,
    whose whole aligned vectors are stored non-temporally (not read into the cache first);
    other rows the scalar loop.
    """
    raise NotImplementedError("stream_scaled is only callable from JIT code")


@overload(stream_scaled, inline="always")
def _stream_scaled(source, destination, high, low):
    if destination.dtype == types.float32 and contiguous_float_row(source) and contiguous_float_row(destination):

        def streamed32(source, destination, high, low):
            high_t, low_t = _float32_pair(high, low)
            row_scaled32_stream(source, destination, high_t, low_t)

        return streamed32

    def copied(source, destination, high, low):
        destination[:] = source
        scale_shift_in_place(destination, high, low, 0.0)

    return copied


# ---- small block loops -------------------------------------------------------------------


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def fill(destination, value):
    """destination[j] = value for every j."""
    for j in range(destination.shape[0]):
        destination[j] = value


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def has_nan(values):
    """Whether ``values`` holds a NaN."""
    for j in range(values.shape[0]):
        if values[j] != values[j]:
            return True
    return False
