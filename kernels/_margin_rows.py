"""The row kernel of the margin losses: softmax cross-entropy with the target's logit apart.

Used by the cosine margins (``_cosine_margins.py``: NormFace, CosFace, ArcFace and their
combination) and by L-Softmax / SphereFace (``_large_margin.py``).  The logits are
``s a_ij`` for a source ``a`` (cosines, or ``x_i . W_j``), except the target's, given per
row as an unevaluated pair ``z_y = high + low`` with its slope; one row kernel built by
the row driver (``_driver/rows.py``): a block pass that reduces each block to its
largest logit and its sum of exponentials *excluding the target*, a pairwise merge, and
a block write of dL/da.

Why the target is left out of the block sums: writing the sum as ``others + e_y``, with
``others = sum_{j != y} e^(z_j - M)``, gives the loss and the target's gradient without
cancellation.  If the target holds the maximum (M = z_y) the loss is ``log1p(others)``,
exact however small; otherwise it is at least log 2 and an absolute error of a few ulp
is a relative one.  And ``a_y - 1 = -others / S`` exactly (no ``a_y - 1`` rounding to 0
when ``a_y`` is within an ulp of 1).

float32 inputs are computed in float64 inside the loops and rounded once when stored;
for float64 inputs the logit ``s a_j`` is carried exactly as a product pair (FMA), so
``exp(s a_j - M)`` has only the exponential's error.  Row blocks of a fixed size
independent of the thread count keep every result bit-identical for any number of threads.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH, block_schedule
from ._driver.rows import make_row_kernel
from ._numerics.eft import fma, two_sum
from ._numerics.exp import exp64_pair, exp_f32_wide
from ._numerics.rows import SUM_CHUNK, block_max, has_nan, pairwise_sum
from ._outputs import new_output_like

__all__ = ["MarginRows", "MarginOutputs", "exp_scaled_difference", "margin_rows"]


# ---- exp(s v - M) for an element v of a row ----------------------------------------------


def exp_scaled_difference(values, value, scale, shift):
    """exp(scale * value - shift) for an element of ``values`` (JIT only); a float64.

    float32 rows: the product and the difference in float64 (exact to 2**-53, far below
    float32's precision).  float64 rows: ``scale * value`` is carried as an exact pair
    (the product and its FMA residual) and the difference as ``two_sum``, so only the
    exponential rounds.
    """
    raise NotImplementedError("exp_scaled_difference is only callable from JIT code")


@overload(exp_scaled_difference)
def _exp_scaled_difference(values, value, scale, shift):
    if values.dtype == types.float32:
        return lambda values, value, scale, shift: exp_f32_wide(scale * np.float64(value) - shift)

    def exp_scaled_difference64(values, value, scale, shift):
        product = scale * value
        product_low = fma(scale, value, -product)
        high, low = two_sum(product, -shift)
        return exp64_pair(high, low + product_low)

    return exp_scaled_difference64


# ---- the row kernel of the margin losses ---------------------------------------------------
#
# a = logits source (rows, classes): cosines, or x . W_j for the large-margin losses.
# z_ij = scale * a_ij for j != y_i, z_iy = target_high[i] + target_low[i] (already scaled,
# an unevaluated pair), dz_iy / da_iy = scale * target_slopes[i], upstream[i] = dLoss / dloss_i.

MarginRows = namedtuple(
    "MarginRows",
    [
        "targets",  # int64 (rows,)
        "target_high",  # float64 (rows,): z_y = target_high + target_low
        "target_low",  # float64 (rows,)
        "target_slopes",  # float64 (rows,): dz_y / da_y = scale * target_slopes
        "upstream",  # float64 (rows,): dLoss / dloss_i (``reduction.row_scales``, per row)
        "scale",  # float64, s
    ],
)

MarginOutputs = namedtuple(
    "MarginOutputs",
    [
        "gradient",  # (rows, classes) of the logits' dtype, dL/da; (0, 0) for the loss alone
        "losses",  # float64 (rows,)
        "target_gradients",  # float64 (rows,), dL/dz_y
    ],
)


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _sum_exp_scaled(like, values, scale, shift):
    """sum_j exp(scale * values[j] - shift) in float64, chunked as ``_numerics.rows.SUM_CHUNK``,
    each term as ``exp_scaled_difference`` takes it for rows of ``like``'s dtype."""
    total = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        partial = 0.0
        for j in range(chunk.shape[0]):
            partial += exp_scaled_difference(like, chunk[j], scale, shift)
        total += partial
    return total


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce_without_target(logits, rows, out, i, start, stop):
    """(m_b, t_b) of a block over its non-target entries: m_b = max_j s a_j, t_b = sum_j e^(s a_j - m_b).

    The target (if it lies in the block) splits the block into two slices, each looped
    from 0.  A block with nothing but -inf (or nothing at all) gives (-inf, 0), or
    (-inf, NaN) if it holds a NaN; +inf entries (not cosines) give NaN.
    """
    values = logits[i, start:stop]
    return reduce_without(values, values, rows.targets[i] - start, rows.scale)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def reduce_without(like, values, local, scale):
    """(m, t) over ``values`` without entry ``local`` (none when out of range): m = max_j s v_j,
    t = sum_j e^(s v_j - m), the terms as ``exp_scaled_difference`` takes them for rows of
    ``like``'s dtype.  The excluded entry splits the values into two slices, each looped from
    0.  Nothing but -inf (or nothing at all) gives (-inf, 0), or (-inf, NaN) with a NaN; a +inf
    entry (not a cosine) gives NaN."""
    if 0 <= local < values.shape[0]:
        left = values[:local]
        right = values[local + 1 :]
    else:
        left = values
        right = values[:0]
    largest = max(block_max(left), block_max(right))
    if largest == -np.inf:
        return largest, np.nan if (has_nan(left) or has_nan(right)) else 0.0
    if largest == np.inf:
        return largest, np.nan
    shift = scale * largest
    return shift, _sum_exp_scaled(like, left, scale, shift) + _sum_exp_scaled(like, right, scale, shift)


@njit(**JIT_OPTIONS)
def _merge_without_target(logits, i, partial):
    """(M_o, S_o) of a row's non-target entries: M_o = max_b m_b, S_o = sum_b t_b e^(m_b - M_o) (pairwise)."""
    blocks = partial.shape[0]
    if blocks == 1:
        return partial[0, 0], partial[0, 1]
    largest = -np.inf
    for k in range(blocks):
        if partial[k, 0] > largest:
            largest = partial[k, 0]
    return largest, others_sum(partial, largest)


@njit(**JIT_OPTIONS)
def others_sum(partial, largest):
    """sum_b t_b e^(m_b - M) over the blocks' (m_b, t_b), pairwise, for M = ``largest`` >= every m_b
    (a shard of the classes passes the global M: ``softmaxlab.distributed``)."""
    blocks = partial.shape[0]
    terms = np.empty(blocks)
    for k in range(blocks):
        if not math.isfinite(largest):
            terms[k] = partial[k, 1] if largest == -np.inf else np.nan
        elif partial[k, 0] == -np.inf:
            # a block of nothing but the target (t = 0) or with a NaN (t = NaN): e^(-inf) t = t
            terms[k] = partial[k, 1]
        else:
            high, low = two_sum(partial[k, 0], -largest)
            terms[k] = partial[k, 1] * exp64_pair(high, low)
    return pairwise_sum(terms)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _with_target(others_shift, others_total, target_high, target_low):
    """(M, 1/S, loss, a_y - 1) from the non-target (M_o, S_o) and the target logit z_y = high + low.

    loss = log(sum_j e^(z_j)) - z_y  (docs/proofs/margins.md#margin-cross-entropy-gradient)

    * high > M_o: M = high, others = S_o e^(M_o - z_y), loss = log1p(others),
      a_j = e^(z_j - M) e^(-low) / (1 + others);
    * otherwise M = M_o, e_y = e^(z_y - M), S = S_o + e_y,
      loss = (M - z_y) + log1p((S_o - 1) + e_y)  (>= log 2 here), a_j = e^(z_j - M) / S;
    * a_y - 1 = -others / S, without cancellation.
    """
    if target_high > others_shift:
        others = 0.0
        if others_total != 0.0:
            high, low = two_sum(others_shift, -target_high)
            others = others_total * exp64_pair(high, low - target_low)
        total = 1.0 + others
        return target_high, exp64_pair(-target_low, 0.0) / total, math.log1p(others), -others / total
    high, low = two_sum(target_high, -others_shift)
    target_exp = exp64_pair(high, low + target_low)
    total = others_total + target_exp
    loss = ((others_shift - target_high) - target_low) + math.log1p((others_total - 1.0) + target_exp)
    return others_shift, 1.0 / total, loss, -others_total / total


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_scaled_softmax(values, destination, scale, shift, factor):
    # dz_j = factor * e^(s a_j - M),  factor = g s / S  (j != y; the target is overwritten)
    for j in range(values.shape[0]):
        destination[j] = factor * exp_scaled_difference(values, values[j], scale, shift)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_margin_rows(logits, rows, out, i, start, stop, block_shift, block_total, others_shift, others_total):
    """Write a block of dL/dlogits (skipped when ``out[0]`` is empty: the loss alone) and, from
    the first block, the row's loss and dL/dz_y."""
    targets, target_high, target_low, target_slopes, upstream, scale = (
        rows.targets, rows.target_high, rows.target_low, rows.target_slopes, rows.upstream, rows.scale)
    gradient, losses, target_gradients = out.gradient, out.losses, out.target_gradients
    shift, inverse_total, loss, target_minus_one = _with_target(others_shift, others_total, target_high[i],
                                                                target_low[i])
    target_gradient = upstream[i] * target_minus_one
    if gradient.shape[0] != 0:
        # dL/da_j = g s a_j (j != y),  dL/da_y = g s f'(a_y) (a_y - 1)
        # (docs/proofs/margins.md#margin-cross-entropy-gradient)
        _write_scaled_softmax(logits[i, start:stop], gradient[i, start:stop], scale, shift,
                              upstream[i] * scale * inverse_total)
        if 0 <= targets[i] - start < stop - start:
            gradient[i, targets[i]] = scale * target_slopes[i] * target_gradient
    if start == 0:
        losses[i] = loss
        target_gradients[i] = target_gradient


# One kernel for the loss alone and for the loss with its gradient (one compilation per dtype).
_margin_rows_kernel = make_row_kernel(_reduce_without_target, _merge_without_target, _write_margin_rows)


def margin_rows(logits, targets, target_high, target_low, target_slopes, upstream, scale, with_gradient,
                 out=None):
    """Run the row kernel on C-contiguous ``logits`` (rows, classes).

    Returns the per-row losses (float64) and, with ``with_gradient``, dL/dlogits (written to
    ``out``, which may be ``logits`` itself) and dL/dz_y per row (float64).
    """
    rows_count, classes = logits.shape
    block, split = block_schedule(rows_count, classes, logits.itemsize)
    losses = np.empty(rows_count)
    target_gradients = np.empty(rows_count)
    if with_gradient:
        gradient = new_output_like(logits) if out is None else out
    else:
        gradient = np.empty((0, 0), dtype=logits.dtype)
    rows = MarginRows(targets, target_high, target_low, target_slopes, upstream, float(scale))
    _margin_rows_kernel(logits, rows, MarginOutputs(gradient, losses, target_gradients), block, split)
    if not with_gradient:
        return losses, None, None
    return losses, gradient, target_gradients
