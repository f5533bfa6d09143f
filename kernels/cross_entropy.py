"""Softmax cross-entropy with PyTorch's semantics, forward and gradient in one fused kernel.

``cross_entropy(logits, target, weight=, ignore_index=, reduction=, label_smoothing=)``
follows ``torch.nn.functional.cross_entropy`` for class-index and class-probability
targets, with every option combined.  ``cross_entropy_forward_backward`` returns the
loss and dL/dlogits from one parallel kernel and no other (rows, classes) temporary:
per block of 32 KiB, a pass for the max and one that computes e_j = exp(z_j - m_b),
sums them and stores them in the gradient's block (the block is in L1 by then); after
the row's (max, sum) merge, a pass that scales the stored e_j in place into the gradient
(one exponential per element, as ``softmax`` does).  The logits are read from memory
once, the gradient written once; ``cross_entropy`` alone skips the stores and the last
pass.

The per-row loss, for a row z with C classes, class weights w (all 1 without ``weight``)
and label smoothing eps, is ``sum_c tw_c (LSE(z) - z_c)`` with the weighted target

* class index y:          tw_c = (1 - eps) w_y [c = y] + eps w_c / C
* class probabilities p:  tw_c = w_c ((1 - eps) p_c + eps / C)

and its gradient is ``dL/dz_j = TW a_j - tw_j`` with ``a = softmax(z)`` and
``TW = sum_c tw_c`` (proof book: ``docs/proofs/cross_entropy.md``, sections
"cross-entropy gradient, soft target" and "label smoothing"; for TW = 1 it is a - y).

How the kernel keeps its accuracy:

* ``LSE(z) - z_c = (M - z_c) + log1p(T)`` with M the row max and T = S - 1 summed
  without cancellation: the terms equal to M (each exp(0) = 1 exactly) are counted, not
  summed, for float64 rows and, where T < 1/16, for float32 rows
  (``_rows.max_sum_exp_stored``; above that T = S - 1 of the plain sum is accurate to
  2**-36).  A target that
  holds the max then has loss log1p(T), exact however small (e.g. 1000 e^-30), and
  ``a_y - 1 = -T / S`` with no ``a_y - 1`` rounding to 0.
* The smoothing term ``sum_c w_c (M - z_c)`` is a sum of non-negative terms, per block
  around the block's max and merged, never ``C LSE - sum z`` (which cancels for large
  logits).
* ``x - max`` enters the exponential exactly (``two_sum``); float32 rows take their
  exponentials in float32 arithmetic (``_exp.exp32``, 0.87 ULP), stored in the gradient's
  block (or, for the loss alone, in one block of scratch per thread, so that
  ``cross_entropy`` and ``cross_entropy_forward_backward`` give the same loss bit for bit),
  and everything else in float64.

The row driver (``make_loss_kernel``) is ``_rows.make_row_kernel`` generalized to a
state of ``width`` floats per block (the smoothing and the distillation losses need
more than a pair): blocks of a fixed size, reduced, merged per row in a fixed order
and written, either row by row or, for fewer rows than threads, as (row, block) tasks
spread over threads.  Both schedules do the same arithmetic in the same order: the
results are bit-identical for any number of threads.

Edges (DESIGN.md, "Semantics at the edges"): a target logit of -inf gives +inf loss and
a finite gradient; a row of all -inf gives +inf loss and zero gradient; NaN stays in its
row; ignored rows have zero loss and zero gradient and do not count anywhere (also not in
the smoothing term, nor in the mean's denominator); a mean over nothing (every row
ignored, every target weight 0, or an empty batch) is 0 with zero gradient (PyTorch
returns NaN there); a masked logit (-inf) whose smoothed target weight is 0 adds 0, not
0 * inf = NaN.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH, block_schedule
from ._exp import exp64_pair, two_sum
from ._rows import (
    SUM_CHUNK,
    block_max,
    chunked_sum,
    exp_difference_for,
    infinite_block_pair,
    max_sum_exp_stored,
    merge_max_sum_exp,
    pairwise_sum,
    scaled_exp_sum,
    scale_shift_in_place,
)
from ._validation import (
    check_class_indices_counted,
    check_class_weight,
    check_float_array,
    check_grad_output,
    check_real_scalar,
    check_reduction,
)

__all__ = ["cross_entropy", "cross_entropy_forward_backward"]

PAGE = "docs/proofs/cross_entropy.md"


# ---- the row driver ------------------------------------------------------------------------


@njit(inline="always", **JIT_OPTIONS)
def no_fused_loss_row(logits, args, grad, row_loss, i, write):
    """``make_loss_kernel``'s default ``fused_row``: no row is handled in one piece."""
    return False


def make_loss_kernel(reduce_block, merge_row, write_block, width, fused_row=no_fused_loss_row):
    """A parallel kernel ``kernel(logits, args, grad, row_loss, block, split, write)``.

    ``partial`` (rows, blocks, width) holds each block's state and ``stats`` (rows, width)
    each row's; the three functions index them directly (array views cost a reference
    count each, which was measured at ~240 ns per row in an earlier version):

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

    ``args`` is a tuple of the loss' other inputs.  With ``split`` the (row, block) tasks
    are spread over threads, otherwise whole rows are; the arithmetic is the same either
    way (it is ``_rows.make_row_kernel`` generalized to ``width`` floats per block).
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
                _row_task(logits, args, grad, row_loss, np.int64(i), block, partial, stats, write)  # see _rows
        # here, not np.sum afterwards: row_loss is still in cache, and np.sum's Python layers were
        # not (17 us after a large kernel, measured)
        return chunked_sum(row_loss)

    return kernel


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def merge_pair(x, i, partial, column):
    """The row's (M, T) from the blocks' (m_b, t_b) in ``partial[i, :, column:column + 2]``.

    A single block with a finite max is its own row; otherwise ``_rows.merge_max_sum_exp``.
    """
    if partial.shape[1] == 1 and math.isfinite(partial[i, 0, column]):
        return partial[i, 0, column], partial[i, 0, column + 1]
    return merge_max_sum_exp(x, i, partial[i, :, column : column + 2])


def run_loss_kernel(kernel, rows, args, write, reduction, denominator, shape):
    """Call a ``make_loss_kernel`` kernel on (rows, classes) logits: (loss, grad of ``shape`` or None).

    The loss is reduced as ``reduction`` asks (``reduce_row_losses``) and has the logits'
    dtype; ``shape`` is the logits' shape (the batch's is ``shape[:-1]``).
    """
    block, split = block_schedule(rows.shape[0], rows.shape[1], rows.dtype.itemsize)
    if write:
        grad = np.empty_like(rows)
    else:
        # forward only: one block of scratch per thread (``exp_slot``), so that the loss
        # takes the same exponentials, stored as the fused kernel stores them in the
        # gradient, and comes out bit-identical to the fused kernel's
        grad = np.empty((numba.get_num_threads(), min(block, rows.shape[1])), dtype=rows.dtype)
    row_loss = np.empty(rows.shape[0])
    total = kernel(rows, args, grad, row_loss, block, split, write)
    loss = reduce_row_losses(row_loss, total, reduction, denominator, shape[:-1], rows.dtype)
    return loss, (grad.reshape(shape) if write else None)


# ---- block helpers (shared with distillation.py and classic_losses.py) ---------------------


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def fill(destination, value):
    for j in range(destination.shape[0]):
        destination[j] = value


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def has_nan(values):
    for j in range(values.shape[0]):
        if values[j] != values[j]:
            return True
    return False


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

    As ``_rows.reduce_max_sum_exp`` (distillation's temperature-scaled rows): a block of
    only -inf gives (-inf, -1), or NaN as t_b if it holds a NaN; a block holding +inf gives
    (inf, 0) and the merge (``_rows.merge_max_sum_exp``, which looks at the row's
    elements) settles the row.  T counts the ties (the max's exp(0) = 1 exactly): summed,
    the 1 would round every small term at ulp(1) and swamp a T of 1e-10.
    """
    largest = block_max(values) * scale
    if not math.isfinite(largest):
        return infinite_block_pair(values, largest)
    return largest, scaled_exp_sum(values, scale, largest, values)


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


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _gap(anchor, value):
    return anchor - np.float64(value)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _weighted_gap(weight, anchor, value):
    # w (anchor - z), and 0 where w = 0: a masked logit (-inf) of weight 0 adds nothing
    return weight * (anchor - np.float64(value)) if weight != 0.0 else 0.0


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _probability_weight(probability, weight, keep, uniform):
    # tw_c = w_c ((1 - eps) p_c + eps / C)
    return weight * (keep * np.float64(probability) + uniform)


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _gap_sums(values, weights, anchor, weighted):
    """(sum_j w_j (anchor - z_j), sum_j w_j) over a block (w = 1 unless ``weighted``); float64."""
    total = 0.0
    weight_total = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        partial = 0.0
        if weighted:
            weight_chunk = weights[base : base + SUM_CHUNK]
            for j in range(chunk.shape[0]):
                partial += _weighted_gap(weight_chunk[j], anchor, chunk[j])
                weight_total += weight_chunk[j]
        else:
            for j in range(chunk.shape[0]):
                partial += _gap(anchor, chunk[j])
        total += partial
    if not weighted:
        weight_total = np.float64(values.shape[0])
    return total, weight_total


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _probability_gap_sums(values, probabilities, weights, anchor, keep, uniform, weighted):
    """(sum_j tw_j (anchor - z_j), sum_j tw_j) over a block, tw_j = w_j ((1 - eps) p_j + eps/C)."""
    total = 0.0
    weight_total = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        probability_chunk = probabilities[base : base + SUM_CHUNK]
        partial = 0.0
        if weighted:
            weight_chunk = weights[base : base + SUM_CHUNK]
            for j in range(chunk.shape[0]):
                target_weight = _probability_weight(probability_chunk[j], weight_chunk[j], keep, uniform)
                partial += _weighted_gap(target_weight, anchor, chunk[j])
                weight_total += target_weight
        else:
            for j in range(chunk.shape[0]):
                target_weight = _probability_weight(probability_chunk[j], 1.0, keep, uniform)
                partial += _weighted_gap(target_weight, anchor, chunk[j])
                weight_total += target_weight
        total += partial
    return total, weight_total


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_gaps(largest, partial, i):
    """sum_c tw_c (M - z_c) from the blocks' (anchor_b, d_b, TW_b) in ``partial[i, :, 2:5]``.

    d_b = sum_{c in b} tw_c (anchor_b - z_c), so the row's sum is
    sum_b d_b + (M - anchor_b) TW_b: non-negative terms, summed pairwise.
    """
    blocks = partial.shape[1]
    if blocks == 1:
        shift = largest - partial[i, 0, 2]
        return partial[i, 0, 3] + (shift * partial[i, 0, 4] if shift != 0.0 else 0.0)
    terms = np.empty(blocks)
    for k in range(blocks):
        shift = largest - partial[i, k, 2]
        terms[k] = partial[i, k, 3] + (shift * partial[i, k, 4] if shift != 0.0 else 0.0)
    return pairwise_sum(terms)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _weighted_infinity(weight):
    """The limit of weight * (+inf): +inf, -inf, or 0 for a zero weight."""
    if weight > 0.0:
        return np.inf
    if weight < 0.0:
        return -np.inf
    return 0.0 if weight == 0.0 else np.nan


# ---- class-index targets -------------------------------------------------------------------
#
# args = (target int64 (rows,), weight float64 (classes,) or (1,),
#         row_scale float64 (rows,) or (1,) (``upstream_at``), ignore_index int64, smoothing float64,
#         weighted bool, weight_total float64, margin float64, smooth_hinge bool)
# state per block: m_b, t_b, anchor_b, d_b = sum_c w_c (anchor_b - z_c), W_b = sum_c w_c
# stats per row: M, T, TW, gradient factor (1, or the smooth hinge's sigma(u + m) / sigma(u)), unused
#
# The same kernel computes the smooth hinge of classic_losses.py (smooth_hinge=True, no
# weights, no smoothing): softplus(LSE_{j != y} z_j - z_y + m) is a function of the
# cross-entropy l = log(1 + e^u), u = LSE_{j != y} z_j - z_y (seed 001), see
# ``_smooth_hinge_of_cross_entropy``.


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _smooth_hinge_of_cross_entropy(loss, margin):
    """(softplus(u + m), sigma(u + m) / sigma(u)) for the cross-entropy ``loss`` l = softplus(u) >= 0.

    e^u = expm1(l), so softplus(u + m) = log1p(e^m expm1(l)) and the gradient's factor
    sigma(u + m) / sigma(u) = e^m (1 + expm1(l)) / (1 + e^m expm1(l)): no log/exp round trip
    through u (which would cost |u| ulps for a tiny l, u = log l), and the limit e^m at
    l = 0 comes out directly.  For a large l or m (e^m expm1(l) could overflow) u is formed
    as l + log1p(-e^-l) (no cancellation there) and softplus(u + m) = (u + m) + log1p(e^-(u+m)).
    """
    if loss != loss:
        return np.nan, np.nan
    if loss < 30.0 and margin < 30.0:
        grown = math.expm1(loss)
        scaled = math.exp(margin) * grown
        return math.log1p(scaled), math.exp(margin) * (1.0 + grown) / (1.0 + scaled)
    u = loss + math.log1p(-math.exp(-loss)) if loss != np.inf else np.inf
    if u >= 0.0:
        ratio = (1.0 + math.exp(-u)) / (1.0 + math.exp(-u - margin))
    else:
        ratio = (math.exp(u) + 1.0) / (math.exp(u) + math.exp(-margin))
    return _softplus(u + margin), ratio


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _index_finite_loss(logits, args, i, largest, total, gaps):
    """(loss, TW, gradient factor) of a kept row whose max M is finite; ``gaps`` = sum_c w_c (M - z_c)."""
    target, weight, row_scale, ignore_index, smoothing, weighted, weight_total, margin, smooth_hinge = args
    label = target[i]
    label_weight = weight[label] if weighted else 1.0
    hard = (1.0 - smoothing) * label_weight  # tw_y without the uniform part
    uniform = smoothing / logits.shape[1]  # eps / C, times w_c for every class
    log_total = math.log1p(total)
    # L = (1 - eps) w_y (LSE - z_y) + eps/C sum_c w_c (LSE - z_c),  LSE - z_c = (M - z_c) + log1p(T)
    loss = hard * ((largest - np.float64(logits[i, label])) + log_total) if hard != 0.0 else 0.0
    # uniform, not eps: an eps below C * 2**-1074 makes eps/C 0 (as the gradient takes it), and
    # 0 * (a masked logit's +inf gap) would be NaN
    if uniform != 0.0:
        loss += uniform * (gaps + weight_total * log_total)
    factor = 1.0
    if smooth_hinge:
        loss, factor = _smooth_hinge_of_cross_entropy(loss, margin)
    return loss, hard + uniform * weight_total, factor  # TW = sum_c tw_c


def _index_finite_gradient(logits, args, destination, start, total, target_total, scale, block):
    """A block's gradient but the target's, row max M finite, from its stored e_j and ``block`` = exp(m_b - M).

    The target entry is left to the caller (``_index_target_gradient``): written here, the
    write was lost when this function was inlined into ``_index_row`` (Numba's IR inliner;
    the gradient came out as softmax's, caught by test_every_option_combination_matches_torch).
    """
    target, weight, row_scale, ignore_index, smoothing, weighted, weight_total, margin, smooth_hinge = args
    uniform = scale * smoothing / logits.shape[1]  # g eps / C
    # g TW exp(m_b - M) / S
    factor = scale * target_total * block / (1.0 + total)
    # dL/dz_j = g (TW a_j - tw_j),  a_j = e_j exp(m_b - M) / S,  tw_j = eps w_j / C  (j != y)
    # with e_j = exp(z_j - m_b) stored by the reduce (a_j - y_j without smoothing;
    # docs/proofs/cross_entropy.md#label-smoothing)
    if weighted and smoothing != 0.0:
        weights = weight[start : start + destination.shape[0]]
        for j in range(destination.shape[0]):
            destination[j] = factor * np.float64(destination[j]) - uniform * weights[j]
    else:
        scale_shift_in_place(destination, factor, 0.0, uniform)


# inlined into the fused row (2% at 4096 x 1000 float32, measured); called from the block path,
# whose rows of several blocks do not feel a call per block
_index_finite_gradient_inline = njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)(_index_finite_gradient)
_index_finite_gradient = njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)(_index_finite_gradient)


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _index_target_gradient(logits, args, destination, i, largest, total, target_total, scale):
    """dL/dz_y of a kept row with a finite max: g (TW (a_y - 1) + eps/C (W - w_y)), a_y - 1 = -T/S when z_y = M.

    ``destination`` is the gradient's block, as ``_index_finite_gradient`` takes it (its
    type, shared, compiles ``target_minus_one`` once)."""
    target, weight, row_scale, ignore_index, smoothing, weighted, weight_total, margin, smooth_hinge = args
    label = target[i]
    label_weight = weight[label] if weighted else 1.0
    difference = target_minus_one(destination, logits[i, label], largest, total)
    return scale * (target_total * difference + smoothing / logits.shape[1] * (weight_total - label_weight))


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _index_row(logits, args, grad, row_loss, i, write):
    """A kept row of one block with a finite max in one piece (``make_loss_kernel``'s ``fused_row``).

    The arithmetic of ``_reduce_index``, ``_merge_index`` and ``_write_index`` for such a
    row (its block is the row: m_b = M, anchor M, the gaps unshifted), without the block
    state: 4-5% faster than the three at 4096 x 1000 float32, 7-9% with label smoothing
    (measured side by side, 1 and 2 threads).
    """
    target, weight, row_scale, ignore_index, smoothing, weighted, weight_total, margin, smooth_hinge = args
    label = target[i]
    if label == ignore_index:
        return False
    values = logits[i]
    classes = values.shape[0]
    destination = exp_slot(grad, i, 0, classes, write)
    largest, total = max_sum_exp_stored(values, destination)
    if not math.isfinite(largest):
        return False
    if smoothing == 0.0 and not weighted and not smooth_hinge:
        # the default options, spelled out: the general expressions below with tw = onehot(y),
        # TW = 1 and no uniform part, which they give exactly (2.5-3% faster at 4096 x 1000
        # float32, measured; a shift of 0 known here saves the gradient loop its branch)
        row_loss[i] = (largest - np.float64(values[label])) + math.log1p(total)
        if write:
            scale = upstream_at(row_scale, i)
            # dL/dz_j = g a_j (j != y), g (a_y - 1);  a_y - 1 + 0.0: the general expression's +0
            # for a row whose T is 0
            scale_shift_in_place(destination, scale / (1.0 + total), 0.0, 0.0)
            grad[i, label] = scale * (target_minus_one(destination, values[label], largest, total) + 0.0)
        return True
    gaps = _gap_sums(values, weight[0:classes], largest, weighted)[0] if smoothing != 0.0 else 0.0
    loss, target_total, factor = _index_finite_loss(logits, args, i, largest, total, gaps)
    row_loss[i] = loss
    if write:
        scale = upstream_at(row_scale, i) * factor
        _index_finite_gradient_inline(logits, args, destination, 0, total, target_total, scale, 1.0)
        grad[i, label] = _index_target_gradient(logits, args, destination, i, largest, total, target_total, scale)
    return True


# The block functions are calls, not inlined: each is used twice in the kernel (row and split
# schedules), and inlined they made the kernel's compile 17 s instead of 12 (float32, measured);
# the rows that take them (several blocks, or not fused) spend far longer in their loops.
@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce_index(logits, args, grad, i, k, start, stop, partial, write):
    target, weight, row_scale, ignore_index, smoothing, weighted, weight_total, margin, smooth_hinge = args
    if target[i] == ignore_index:
        return
    values = logits[i, start:stop]
    # e_j = exp(z_j - m_b) stored in the gradient's block (the write scales it in place), or in
    # scratch for the loss alone (the same T either way)
    largest, total = max_sum_exp_stored(values, exp_slot(grad, i, start, stop, write))
    partial[i, k, 0] = largest
    partial[i, k, 1] = total
    if smoothing != 0.0:
        anchor = largest if math.isfinite(largest) else 0.0
        partial[i, k, 2] = anchor
        partial[i, k, 3], partial[i, k, 4] = _gap_sums(values, weight[start:stop], anchor, weighted)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_index(logits, args, i, partial, stats):
    target, weight, row_scale, ignore_index, smoothing, weighted, weight_total, margin, smooth_hinge = args
    label = target[i]
    stats[i, 3] = 1.0
    if label == ignore_index:
        return 0.0
    classes = logits.shape[1]
    largest, total = merge_pair(logits, i, partial, 0)
    stats[i, 0] = largest
    stats[i, 1] = total
    if math.isfinite(largest):
        gaps = _merge_gaps(largest, partial, i) if smoothing != 0.0 else 0.0
        loss, stats[i, 2], stats[i, 3] = _index_finite_loss(logits, args, i, largest, total, gaps)
        return loss
    label_weight = weight[label] if weighted else 1.0
    hard = (1.0 - smoothing) * label_weight  # tw_y without the uniform part
    uniform = smoothing / classes  # eps / C, times w_c for every class
    stats[i, 2] = hard + uniform * weight_total  # TW = sum_c tw_c
    if total != total:  # a NaN in the row
        loss = np.nan
    elif largest == -np.inf:  # every logit -inf: LSE - z_c = +inf for every class
        loss = _weighted_infinity(hard) + (_weighted_infinity(uniform * weight_total) if smoothing != 0.0 else 0.0)
    elif total != 0.0:  # several +inf: softmax has no limit
        loss = np.nan
    else:
        # exactly one +inf, at k: softmax is one-hot at k, LSE - z_k -> 0, LSE - z_c = +inf elsewhere
        k = infinite_index(logits[i])
        loss = 0.0 if label == k else _weighted_infinity(hard)
        if smoothing != 0.0:
            loss += _weighted_infinity(uniform * (weight_total - (weight[k] if weighted else 1.0)))
    if smooth_hinge:
        loss, stats[i, 3] = _smooth_hinge_of_cross_entropy(loss, margin)
    return loss


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_index(logits, args, grad, i, k, start, stop, partial, stats):
    target, weight, row_scale, ignore_index, smoothing, weighted, weight_total, margin, smooth_hinge = args
    destination = grad[i, start:stop]
    label = target[i]
    if label == ignore_index:
        fill(destination, 0.0)
        return
    largest, total, target_total = stats[i, 0], stats[i, 1], stats[i, 2]
    scale = upstream_at(row_scale, i) * stats[i, 3]
    uniform = scale * smoothing / logits.shape[1]  # g eps / C
    label_weight = weight[label] if weighted else 1.0
    if math.isfinite(largest):
        block_largest = partial[i, k, 0]
        if not math.isfinite(block_largest):
            fill(destination, 0.0)  # a block of only -inf: e_j = 0 (nothing was stored), factor 0
        factor = block_factor(block_largest, largest) if math.isfinite(block_largest) else 0.0
        _index_finite_gradient(logits, args, destination, start, total, target_total, scale, factor)
        if start <= label < stop:
            grad[i, label] = _index_target_gradient(logits, args, destination, i, largest, total, target_total, scale)
        return
    if largest == np.inf and total == 0.0:
        # one +inf: softmax is one-hot there, dL/dz_j = g (TW [z_j = inf] - tw_j)
        values = logits[i, start:stop]
        for j in range(values.shape[0]):
            one_hot = target_total if values[j] == np.inf else 0.0
            destination[j] = scale * one_hot - uniform * (weight[start + j] if weighted else 1.0)
        if start <= label < stop:
            one_hot = target_total if values[label - start] == np.inf else 0.0
            destination[label - start] = scale * (one_hot - (1.0 - smoothing) * label_weight) - uniform * label_weight
        return
    # every logit -inf: zero gradient (DESIGN's convention); NaN or several +inf: NaN
    fill(destination, 0.0 if (largest == -np.inf and total == -1.0) else np.nan)


_index_kernel = make_loss_kernel(_reduce_index, _merge_index, _write_index, 5, _index_row)


# ---- class-probability targets -------------------------------------------------------------
#
# args = (probabilities (rows, classes) of the logits' dtype, weight float64 (classes,) or (1,),
#         row_scale float64 (rows,) or (1,) (``upstream_at``), smoothing float64, weighted bool)
# state per block: m_b, t_b, anchor_b, d_b = sum_c tw_c (anchor_b - z_c), TW_b = sum_c tw_c
# stats per row: M, T, TW, unused, unused


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce_probability(logits, args, grad, i, k, start, stop, partial, write):
    probabilities, weight, row_scale, smoothing, weighted = args
    values = logits[i, start:stop]
    largest, total = max_sum_exp_stored(values, exp_slot(grad, i, start, stop, write))
    anchor = largest if math.isfinite(largest) else 0.0
    partial[i, k, 0] = largest
    partial[i, k, 1] = total
    partial[i, k, 2] = anchor
    partial[i, k, 3], partial[i, k, 4] = _probability_gap_sums(
        values, probabilities[i, start:stop], weight[start:stop], anchor, 1.0 - smoothing,
        smoothing / logits.shape[1], weighted,
    )


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_probability(logits, args, i, partial, stats):
    probabilities, weight, row_scale, smoothing, weighted = args
    largest, total = merge_pair(logits, i, partial, 0)
    target_total = pairwise_sum(partial[i, :, 4].copy()) if partial.shape[1] > 1 else partial[i, 0, 4]
    stats[i, 0] = largest
    stats[i, 1] = total
    stats[i, 2] = target_total
    if math.isfinite(largest):
        # L = sum_c tw_c (LSE - z_c) = sum_c tw_c (M - z_c) + TW log1p(T)
        log_total = math.log1p(total)
        return _merge_gaps(largest, partial, i) + (target_total * log_total if target_total != 0.0 else 0.0)
    if total != total:
        return np.nan
    if largest == -np.inf:
        return _weighted_infinity(target_total)
    if total != 0.0:
        return np.nan
    k = infinite_index(logits[i])
    uniform = smoothing / logits.shape[1]
    target_k = _probability_weight(probabilities[i, k], weight[k] if weighted else 1.0, 1.0 - smoothing, uniform)
    return _weighted_infinity(target_total - target_k)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_probability(logits, args, grad, i, k, start, stop, partial, stats):
    probabilities, weight, row_scale, smoothing, weighted = args
    destination = grad[i, start:stop]
    targets = probabilities[i, start:stop]
    largest, total, target_total = stats[i, 0], stats[i, 1], stats[i, 2]
    scale = upstream_at(row_scale, i)
    keep = scale * (1.0 - smoothing)
    uniform = scale * smoothing / logits.shape[1]
    if math.isfinite(largest):
        block_largest = partial[i, k, 0]
        factor = scale * target_total * block_factor(block_largest, largest) / (1.0 + total)
        if not math.isfinite(block_largest):  # a block of only -inf: e_j = 0, nothing was stored
            factor = 0.0
            fill(destination, 0.0)
        # dL/dz_j = g (TW a_j - tw_j),  a_j = e_j exp(m_b - M) / S,  tw_j = w_j ((1 - eps) p_j + eps / C)
        # (docs/proofs/cross_entropy.md#cross-entropy-gradient-soft-target)
        if weighted:
            weights = weight[start:stop]
            for j in range(destination.shape[0]):
                destination[j] = factor * np.float64(destination[j]) - weights[j] * (
                    keep * np.float64(targets[j]) + uniform
                )
        else:
            for j in range(destination.shape[0]):
                destination[j] = factor * np.float64(destination[j]) - (keep * np.float64(targets[j]) + uniform)
        return
    if largest == np.inf and total == 0.0:
        values = logits[i, start:stop]
        for j in range(values.shape[0]):
            one_hot = scale * target_total if values[j] == np.inf else 0.0
            class_weight = weight[start + j] if weighted else 1.0
            destination[j] = one_hot - class_weight * (keep * np.float64(targets[j]) + uniform)
        return
    fill(destination, 0.0 if (largest == -np.inf and total == -1.0) else np.nan)


_probability_kernel = make_loss_kernel(_reduce_probability, _merge_probability, _write_probability, 5)


# ---- public API ------------------------------------------------------------------------------


def _logit_rows(logits):
    """Validated logits as C-contiguous (rows, classes), and the batch shape."""
    logits = check_float_array("logits", logits)
    if logits.shape[-1] < 1:
        raise ValueError(f"logits must have at least one class on its last axis, got shape {logits.shape}")
    rows = np.ascontiguousarray(logits.reshape(-1, logits.shape[-1]))
    return logits, rows, logits.shape[:-1]


def reduce_row_losses(row_loss, total, reduction, denominator, batch_shape, dtype):
    """The loss from float64 per-row losses and their sum ``total``: "none" (rounded to
    ``dtype``, a numpy dtype), "sum", or "mean" over ``denominator`` (0 when the denominator
    is 0: the mean over nothing)."""
    if reduction == "none":
        return row_loss.astype(dtype).reshape(batch_shape)
    if reduction == "sum":
        return dtype.type(total)
    return dtype.type(total / denominator if denominator != 0 else 0.0)


def row_scales(grad_output, reduction, denominator, batch_shape):
    """dLoss/dloss_i as float64: g_i per row (rows,) for "none"; for "sum" and "mean" one
    value for every row, (1,): g, or g / denominator (0 for a mean over nothing).  The
    kernels read it with ``upstream_at``."""
    upstream = check_grad_output("grad_output", grad_output, reduction, batch_shape)
    if reduction == "none":
        return np.ascontiguousarray(upstream, dtype=np.float64).reshape(math.prod(batch_shape))
    value = float(upstream)
    if reduction == "mean":
        value = value / denominator if denominator != 0 else 0.0
    return np.array([value])


@njit(inline="always", **JIT_OPTIONS)
def upstream_at(row_scale, i):
    """Row i's dLoss/dloss_i from ``row_scales``' array (one per row, or one for all)."""
    return row_scale[i] if row_scale.shape[0] != 1 else row_scale[0]


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_NO_WEIGHT = np.ones(1)  # the kernels' weight without ``weight``: never read, never written


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, grad_output, write):
    logits, rows, batch_shape = _logit_rows(logits)
    classes = rows.shape[1]
    reduction = check_reduction("reduction", reduction)
    smoothing = check_real_scalar("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
    ignore_index = check_real_scalar("ignore_index", ignore_index, integer=True, minimum=_INT64_MIN, maximum=_INT64_MAX)
    if weight is None:
        class_weight, weighted = _NO_WEIGHT, False
    else:
        class_weight, weighted = check_class_weight("weight", weight, classes), True
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":
        # class probabilities, one row per row of logits
        if target.shape != logits.shape:
            raise ValueError(
                f"target of a float dtype holds class probabilities and must have the shape of logits "
                f"{logits.shape}, got {target.shape} (class indices need an integer dtype)"
            )
        if target.dtype != logits.dtype:
            raise TypeError(f"target (class probabilities) must have the dtype of logits ({logits.dtype}), got {target.dtype}")
        probabilities = np.ascontiguousarray(target.reshape(rows.shape))
        denominator = rows.shape[0]
        scale = row_scales(grad_output, reduction, denominator, batch_shape)
        args = (probabilities, class_weight, scale, smoothing, weighted)
        loss, grad = run_loss_kernel(_probability_kernel, rows, args, write, reduction, denominator, logits.shape)
    else:
        labels, kept = check_class_indices_counted("target", target, batch_shape, classes, ignore_index)
        labels = labels.reshape(-1)
        denominator = float(np.sum(class_weight[labels[labels != ignore_index]])) if weighted else kept
        scale = row_scales(grad_output, reduction, denominator, batch_shape)
        weight_total = float(np.sum(class_weight)) if weighted else float(classes)
        args = (labels, class_weight, scale, np.int64(ignore_index), smoothing, weighted, weight_total, 0.0, False)
        loss, grad = run_loss_kernel(_index_kernel, rows, args, write, reduction, denominator, logits.shape)
    return loss, grad


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    r"""Softmax cross-entropy between logits and class indices or class probabilities.

    PyTorch's ``torch.nn.functional.cross_entropy`` with the classes on the last axis.
    For a row ``z`` with ``C`` classes and class weights ``w`` (all 1 by default):

    .. math::
        \ell = \sum_c \tilde w_c \,\big(\mathrm{LSE}(z) - z_c\big),\qquad
        \tilde w_c = \begin{cases}
            (1-\varepsilon)\, w_y [c = y] + \varepsilon\, w_c / C & \text{class index } y\\
            w_c \big((1-\varepsilon)\, p_c + \varepsilon / C\big) & \text{probabilities } p
        \end{cases}

    Label smoothing mixes the target with the uniform distribution (seed 000). With
    ``reduction="mean"`` the losses are summed and divided by the sum of ``w_y`` over the
    rows not ignored (class indices) or by the number of rows (probabilities).

    Args:
        logits: float32 or float64 array ``(..., C)``, C >= 1; not modified.
        target: integer class indices of shape ``logits.shape[:-1]`` (any integer dtype),
            or class probabilities of ``logits``' shape and dtype.
        weight: optional float array ``(C,)`` of class weights.
        ignore_index: class-index rows with this label get zero loss and gradient and do
            not count in the mean (or anywhere else, label smoothing included).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        label_smoothing: epsilon in [0, 1].

    Returns:
        The loss in ``logits``' dtype: a scalar, or shape ``logits.shape[:-1]`` for
        ``"none"``.  A mean over nothing (every row ignored, every target weight 0, an
        empty batch) is 0 (PyTorch returns NaN).  A target logit of -inf gives +inf.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import cross_entropy
        >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> round(float(cross_entropy(logits, np.array([0, 2]))), 4)
        0.6691
        >>> round(float(cross_entropy(logits, np.array([0, -100]))), 4)  # second row ignored
        0.2395

    References: C. Szegedy et al., "Rethinking the Inception architecture" (label
    smoothing), 2016; PyTorch's ``cross_entropy`` documentation; the gradient a - y
    (seeds 002, 003), ``docs/proofs/cross_entropy.md``.
    """
    loss, _ = _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, 1.0, False)
    return loss


def cross_entropy_forward_backward(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.0, grad_output=1.0):
    r""":func:`cross_entropy` and its gradient in the logits, from one fused kernel.

    .. math::
        \frac{\partial \ell}{\partial z_j} = \Big(\sum_c \tilde w_c\Big)\,\mathrm{softmax}(z)_j - \tilde w_j

    (``a - y`` for a one-hot target without weights or smoothing; ``a - ((1-eps) y +
    eps/C)`` with smoothing), times ``grad_output`` and the reduction's factor.

    Args:
        logits, target, weight, ignore_index, reduction, label_smoothing: as
            :func:`cross_entropy`.
        grad_output: the upstream gradient dOut/dloss: a real number for ``"mean"`` and
            ``"sum"``; for ``"none"`` a number or a float array of ``logits.shape[:-1]``.

    Returns:
        ``(loss, grad)``: the loss as :func:`cross_entropy` returns it and ``grad`` of
        ``logits``' shape and dtype.  Ignored rows, rows of all -inf and a mean over
        nothing have zero gradient; a target logit of -inf has a finite gradient.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import cross_entropy_forward_backward
        >>> loss, grad = cross_entropy_forward_backward(np.array([[0.0, 0.0]]), np.array([1]))
        >>> grad
        array([[ 0.5, -0.5]])

    References: as :func:`cross_entropy`; fused forward and gradient as in Liger-Kernel's
    cross-entropy, the online normalizer of Milakov & Gimelshein 2018.
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, grad_output, True)
