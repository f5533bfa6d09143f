"""The margin losses: normalized logits, NormFace / CosFace / ArcFace (InsightFace's combined
margin) on cosines, and L-Softmax / A-Softmax (SphereFace) on features and weights.

Three pieces:

* ``normalized_linear(x, W)``: the cosines ``cos_ij = x_i . W_j / (|x_i| |W_j|)`` and
  ``normalized_linear_backward``, the gradients through both L2 normalizations.  The
  matrix products are NumPy's BLAS (``np.matmul``); the norms, the normalization and the
  gradient's correction terms (the projections that remove the radial components) are
  Numba kernels.
* ``margin_cross_entropy(cos, target, s, m1, m2, m3)`` and its presets ``normface``,
  ``cosface`` (AM-Softmax) and ``arcface``: cross-entropy of the logits ``s cos_ij``
  where the target's logit is ``s f(cos_iy)``.  ``f`` and ``f'`` are evaluated once per row
  (float64, NumPy); the (rows, classes) work is one row kernel built by
  ``_rows.make_row_kernel``: a block pass that reduces each block to its largest logit and
  its sum of exponentials *excluding the target* (the target's logit is not ``s cos``), a
  pairwise merge, and a block write of ``dcos``.
* ``large_margin_cross_entropy(x, W, target, m, lambda_, normalize_weights)``: the logits
  ``x_i . W_j`` (``|x_i| cos_ij`` for SphereFace, whose weights are normalized), the
  target's replaced by ``(lambda |W_y||x| cos + |W_y||x| psi(theta)) / (1 + lambda)`` with
  ``psi`` from the Chebyshev polynomial of ``cos(theta)`` (no arccos) and the target's
  cosine from a compensated dot product; the same row kernel (scale 1) gives dL/dlogits,
  and the true gradients in x and W follow by two matrix products and the target's extra
  terms.

Why the target is left out of the block sums: writing the sum as ``others + e_y``, with
``others = sum_{j != y} e^(z_j - M)``, gives the loss and the target's gradient without
cancellation.  If the target holds the maximum (M = z_y) the loss is ``log1p(others)``,
exact however small; otherwise it is at least log 2 and an absolute error of a few ulp
is a relative one.  And ``a_y - 1 = -others / S`` exactly (no ``a_y - 1`` rounding to 0
when ``a_y`` is within an ulp of 1).

float32 inputs are computed in float64 inside the loops and rounded once when stored;
for float64 inputs the logit ``s cos_j`` is carried exactly as a product pair (FMA), so
``exp(s cos_j - M)`` has only the exponential's error, and the target's ``s f(c)`` is a pair
too (exact for NormFace and CosFace; with an angular margin the rounding of cos m, sin m and
the square root remains, about s ulp).  Measured against mpmath (tests/kernels/test_margins.py):
float32 loss and dcos within 0.5 ULP; float64 within 1.2 ULP (loss) and 8.5 ULP (dcos).  The exponential is the kernels'
own (``_exp.py``); row blocks of a fixed size independent of the thread count keep every
result bit-identical for any number of threads.

Proof book: ``docs/proofs/margins.md`` (normalized-linear gradient, combined-margin
derivative, margin cross-entropy gradient, the ArcFace derivative at the ends and its
fallback, psi and the Chebyshev form, the large-margin target gradient).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH, block_schedule
from ._exp import exp64_pair, exp_f32_wide, two_sum
from ._rows import SUM_CHUNK, block_max, cast_like, fma, make_row_kernel, maxnum, pairwise_sum
from ._validation import (
    check_class_indices,
    check_float_array,
    check_grad_output,
    check_real_scalar,
    check_reduction,
)

__all__ = [
    "normalized_linear",
    "normalized_linear_backward",
    "margin_cross_entropy",
    "margin_cross_entropy_forward_backward",
    "normface",
    "normface_forward_backward",
    "cosface",
    "cosface_forward_backward",
    "arcface",
    "arcface_forward_backward",
    "large_margin_cross_entropy",
    "large_margin_cross_entropy_forward_backward",
]

PAGE = "docs/proofs/margins.md"


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
# rows = (targets int64, target_high f64, target_low f64, target_slopes f64, upstream f64, scale f64):
#   z_ij = scale * a_ij for j != y_i, z_iy = target_high[i] + target_low[i] (already scaled,
#   an unevaluated pair), dz_iy / da_iy = scale * target_slopes[i], upstream[i] = dLoss / dloss_i.


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _sum_exp_scaled(values, scale, shift):
    """sum_j exp(scale * values[j] - shift) in float64, chunked as ``_rows.SUM_CHUNK``."""
    total = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        partial = 0.0
        for j in range(chunk.shape[0]):
            partial += exp_scaled_difference(values, chunk[j], scale, shift)
        total += partial
    return total


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _has_nan(values):
    for j in range(values.shape[0]):
        if values[j] != values[j]:
            return True
    return False


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce_without_target(logits, rows, out, i, start, stop):
    """(m_b, t_b) of a block over its non-target entries: m_b = max_j s a_j, t_b = sum_j e^(s a_j - m_b).

    The target (if it lies in the block) splits the block into two slices, each looped
    from 0.  A block with nothing but -inf (or nothing at all) gives (-inf, 0), or
    (-inf, NaN) if it holds a NaN; +inf entries (not cosines) give NaN.
    """
    values = logits[i, start:stop]
    scale = rows[5]
    local = rows[0][i] - start
    if 0 <= local < values.shape[0]:
        left = values[:local]
        right = values[local + 1 :]
    else:
        left = values
        right = values[:0]
    largest = max(block_max(left), block_max(right))
    if largest == -np.inf:
        return largest, np.nan if (_has_nan(left) or _has_nan(right)) else 0.0
    if largest == np.inf:
        return largest, np.nan
    shift = scale * largest
    return shift, _sum_exp_scaled(left, scale, shift) + _sum_exp_scaled(right, scale, shift)


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
    terms = np.empty(blocks)
    for k in range(blocks):
        if partial[k, 0] == -np.inf or not math.isfinite(largest):
            terms[k] = partial[k, 1] if largest == -np.inf else np.nan
        else:
            high, low = two_sum(partial[k, 0], -largest)
            terms[k] = partial[k, 1] * exp64_pair(high, low)
    return largest, pairwise_sum(terms)


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
    targets, target_high, target_low, target_slopes, upstream, scale = rows
    gradient, losses, target_gradients = out
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


def _margin_rows(logits, targets, target_high, target_low, target_slopes, upstream, scale, with_gradient,
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
        gradient = np.empty_like(logits) if out is None else out
    else:
        gradient = np.empty((0, 0), dtype=logits.dtype)
    rows = (targets, target_high, target_low, target_slopes, upstream, float(scale))
    _margin_rows_kernel(logits, rows, (gradient, losses, target_gradients), block, split)
    if not with_gradient:
        return losses, None, None
    return losses, gradient, target_gradients


# ---- normalized_linear ---------------------------------------------------------------------


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _sum_of_squares(values, scale):
    total = 0.0
    for j in range(values.shape[0]):
        value = np.float64(values[j]) * scale
        total += value * value
    return total


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _largest_magnitude(values):
    largest = 0.0
    for j in range(values.shape[0]):
        largest = maxnum(largest, abs(np.float64(values[j])))
    return largest


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _row_norms_kernel(x, norms):
    # |x_i| = 2^e sqrt(sum_d (x_id 2^-e)^2), 2^e ~ max_d |x_id|: the scaling by a power of
    # two is exact and keeps the sum of squares from overflowing or underflowing
    for i in prange(x.shape[0]):
        values = x[i]
        largest = _largest_magnitude(values)
        if largest == 0.0 or not math.isfinite(largest):
            norms[i] = math.sqrt(_sum_of_squares(values, 1.0))  # 0, inf or NaN
        else:
            exponent = math.frexp(largest)[1]
            norms[i] = math.sqrt(_sum_of_squares(values, math.ldexp(1.0, -exponent))) * math.ldexp(1.0, exponent)


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _normalize_rows_kernel(x, norms, out):
    for i in prange(x.shape[0]):
        values = x[i]
        destination = out[i]
        norm = norms[i]
        # x_hat_id = x_id / |x_i|  (float64, rounded once to the dtype)
        for j in range(values.shape[0]):
            destination[j] = np.float64(values[j]) / norm


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _clamp_to_unit_kernel(cosines):
    for i in prange(cosines.shape[0]):
        row = cosines[i]
        one = cast_like(row, 1.0)
        minus_one = cast_like(row, -1.0)
        # |cos| <= 1 exactly; the products of unit vectors may round past it (NaN passes)
        for j in range(row.shape[0]):
            value = row[j]
            row[j] = one if value > one else (minus_one if value < minus_one else value)


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _dot64(first, second):
    total = 0.0
    for j in range(first.shape[0]):
        total += np.float64(first[j]) * np.float64(second[j])
    return total


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _tangent_kernel(projected, unit, norms, out):
    # d/dv of a function of v_hat = v / |v|, given p = its gradient in v_hat:
    # dv = (p - (v_hat . p) v_hat) / |v|     (docs/proofs/margins.md#normalized-linear-gradient:
    # dx_e = sum_j g_j (W_je / (|x||W_j|) - cos_j x_e / |x|^2), with p = sum_j g_j W_hat_j)
    for i in prange(projected.shape[0]):
        radial = _dot64(unit[i], projected[i])
        gradient = projected[i]
        direction = unit[i]
        destination = out[i]
        norm = norms[i]
        for j in range(gradient.shape[0]):
            destination[j] = (np.float64(gradient[j]) - radial * np.float64(direction[j])) / norm


def _product_over_classes(upstream: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """upstream @ rows for upstream (N, C) and rows (C, D), summed over the C classes, C-contiguous.

    Computed as (rows^T upstream^T)^T: the same product, but NumPy's OpenBLAS picks a much
    faster schedule for it when C is long and N, D are short (measured with 2 threads at
    256 x 93431 x 512, float32: 0.44 s instead of 1.0-3.2 s).
    """
    return np.ascontiguousarray(np.matmul(rows.T, upstream.T).T)


def _checked_norms(name: str, values: np.ndarray) -> np.ndarray:
    """Row norms (float64) of a C-contiguous 2-D array; ValueError names the first zero row."""
    norms = np.empty(values.shape[0])
    _row_norms_kernel(values, norms)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise ValueError(
            f"{name} row {int(zero[0])} has norm 0: its cosines are undefined "
            f"(normalized_linear divides by |{name}_i|; give it a non-zero row)"
        )
    return norms


def _unit_rows(values: np.ndarray, norms: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    _normalize_rows_kernel(values, norms, out)
    return out


def _features_and_weights(x, W, x_name="x", w_name="W"):
    """Validated (x rows, W) as C-contiguous 2-D arrays of one dtype, and x's leading shape."""
    x = check_float_array(x_name, x)
    W = check_float_array(w_name, W)
    if W.ndim != 2:
        raise ValueError(f"{w_name} must be 2-D (classes, features) like torch.nn.Linear.weight, got shape {W.shape}")
    if W.dtype != x.dtype:
        raise TypeError(f"{w_name} must have the dtype of {x_name} ({x.dtype}), got {W.dtype}")
    if x.shape[-1] != W.shape[1]:
        raise ValueError(
            f"{w_name} must have {x.shape[-1]} columns (the features of {x_name}, shape {x.shape}), "
            f"got shape {W.shape}"
        )
    if W.shape[0] < 1 or W.shape[1] < 1:
        raise ValueError(f"{w_name} must have at least one class and one feature, got shape {W.shape}")
    rows = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    return rows, np.ascontiguousarray(W), x.shape[:-1]


def normalized_linear(x, W):
    r"""Cosine logits: the linear layer of L2-normalized features and weights.

    .. math:: \cos\theta_{ij} = \frac{x_i \cdot W_j}{\|x_i\|\,\|W_j\|}

    Args:
        x: features, float32 or float64, shape (..., D); not modified.
        W: class weights, shape (C, D) like ``torch.nn.Linear.weight``, ``x``'s dtype.

    Returns:
        cos, shape (..., C), ``x``'s dtype, clamped to [-1, 1] (the exact value lies there;
        rounding of the product of unit vectors can step past it by a few ulp).

    Raises:
        ValueError if a row of ``x`` or ``W`` has norm 0 (its cosines are undefined; no
        epsilon is added).  NaN or inf in a row gives NaN in that row's cosines.

    The norms are computed in float64 with an exact power-of-two scaling (no overflow or
    underflow of the squares); the rows are normalized in float64 and rounded once; the
    product is ``np.matmul`` (BLAS) in the input dtype.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import normalized_linear
        >>> normalized_linear(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, -2.0]]))
        array([[ 0.6, -0.8]])

    Reference: F. Wang et al., "NormFace: L2 hypersphere embedding for face verification",
    2017; docs/proofs/margins.md#normalized-linear-gradient.
    """
    rows, W, leading = _features_and_weights(x, W)
    x_unit = _unit_rows(rows, _checked_norms("x", rows))
    w_unit = _unit_rows(W, _checked_norms("W", W))
    cosines = np.matmul(x_unit, w_unit.T)
    _clamp_to_unit_kernel(cosines)
    return cosines.reshape(leading + (W.shape[0],))


def normalized_linear_backward(x, W, grad_cos):
    r"""Gradients of a function of ``cos = normalized_linear(x, W)`` with respect to x and W.

    With :math:`g_{ij} = \partial L / \partial \cos\theta_{ij}`,
    :math:`\hat x_i = x_i / \|x_i\|` and :math:`\hat W_j = W_j / \|W_j\|`:

    .. math::
        dx_i = \frac{p_i - (\hat x_i \cdot p_i)\,\hat x_i}{\|x_i\|},\quad p_i = \sum_j g_{ij} \hat W_j;
        \qquad
        dW_j = \frac{q_j - (\hat W_j \cdot q_j)\,\hat W_j}{\|W_j\|},\quad q_j = \sum_i g_{ij} \hat x_i

    (the proof book's :math:`dx_e = \sum_j g_j (W_{je}/(\|x\|\|W_j\|) - \cos_j x_e/\|x\|^2)`,
    with :math:`\sum_j g_j \cos_j = \hat x \cdot p`).

    Args:
        x: features (..., D), float32 or float64; not modified.
        W: weights (C, D), ``x``'s dtype.
        grad_cos: the upstream gradient, shape (..., C) (``normalized_linear``'s output
            shape), ``x``'s dtype.

    Returns:
        (dx, dW) shaped like ``x`` and ``W``.  ``p`` and ``q`` are ``np.matmul`` products
        in the input dtype; the projections are computed in float64 and rounded once.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import normalized_linear_backward
        >>> dx, dW = normalized_linear_backward(np.array([[2.0, 0.0]]), np.array([[1.0, 1.0]]),
        ...                                     np.array([[1.0]]))
        >>> dx
        array([[0.        , 0.35355339]])

    Reference: Wang et al. 2017 (NormFace) section 3.2; docs/proofs/margins.md#normalized-linear-gradient.
    """
    rows, W, leading = _features_and_weights(x, W)
    grad_cos = check_float_array("grad_cos", grad_cos)
    expected = leading + (W.shape[0],)
    if grad_cos.shape != expected:
        raise ValueError(f"grad_cos must have the shape of normalized_linear(x, W) {expected}, got {grad_cos.shape}")
    if grad_cos.dtype != rows.dtype:
        raise TypeError(f"grad_cos must have the dtype of x ({rows.dtype}), got {grad_cos.dtype}")
    upstream = np.ascontiguousarray(grad_cos.reshape(-1, W.shape[0]))
    x_norms, w_norms = _checked_norms("x", rows), _checked_norms("W", W)
    x_unit, w_unit = _unit_rows(rows, x_norms), _unit_rows(W, w_norms)
    dx = np.empty_like(rows)
    dW = np.empty_like(W)
    _tangent_kernel(_product_over_classes(upstream, w_unit), x_unit, x_norms, dx)
    _tangent_kernel(np.matmul(upstream.T, x_unit), w_unit, w_norms, dW)
    return dx.reshape(leading + (W.shape[1],)), dW


# ---- the margin function f and its derivative, per row (float64) ---------------------------


def derivative_limit(dtype) -> float:
    """c_max = nextafter(1, 0) in ``dtype``, as a float64: where ArcFace's f' is evaluated at c = 1.

    docs/proofs/margins.md#arcface-derivative-at-the-ends: f'(c) = cos m + sin m c / sqrt(1 - c^2)
    is unbounded as c -> 1; the derivative is taken at min(c, c_max), the largest
    representable input below 1 (1 - 2**-24 for float32, 1 - 2**-53 for float64), so every
    c < 1 keeps its exact derivative and c = 1 gets the finite f'(c_max).
    """
    dtype = np.dtype(dtype)
    return float(np.nextafter(dtype.type(1.0), dtype.type(0.0)))


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _two_product(a, b):
    """(p, e) with p = fl(a b) and p + e = a b exactly (FMA)."""
    product = a * b
    return product, fma(a, b, -product)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _sine_of_angle(c):
    """sqrt(1 - c^2) as sqrt((1 - c)(1 + c)): 1 - c is exact for c >= 1/2."""
    return math.sqrt((1.0 - c) * (1.0 + c))


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _combined_margin_kernel(cosines, scale, m1, m2, m3, c_max, high, low, slopes):
    """Per row: z_y = s f(c) as a pair (high + low) and f'(c), for the target cosines c.

    * m1 = 1, m2 = 0 (NormFace, CosFace): f(c) = c - m3, f' = 1; z_y is exact (two_sum, FMA).
    * m1 = 1, m2 > 0 (ArcFace, ArcFace + CosFace): f(c) = c cos m2 - sin m2 sqrt(1 - c^2) - m3
      where c > cos(pi - m2) (theta + m2 < pi), else InsightFace's fallback
      f(c) = c - m2 sin m2 - m3 (f' = 1), which keeps f increasing in c
      (docs/proofs/margins.md#arcface-fallback: the value jumps by cos m2 + m2 sin m2 - 1 there);
      f'(c) = cos m2 + sin m2 c / sqrt(1 - c^2) at min(c, c_max)
      (docs/proofs/margins.md#arcface-derivative-at-the-ends).  Products and sums are kept as
      pairs; what remains is the rounding of cos m2, sin m2 and the square root.
    * otherwise: f(c) = cos(m1 arccos c + m2) - m3 and f'(c) = m1 sin(m1 theta + m2) / sin theta
      at c clamped to [-c_max, c_max] (docs/proofs/margins.md#combined-margin-derivative); no
      fallback.

    c is clamped to [-1, 1] first (NaN passes).  Scalar libm calls: one row at a time.
    """
    cos_m, sin_m = math.cos(m2), math.sin(m2)
    switch = math.cos(math.pi - m2)  # InsightFace's th
    for i in range(cosines.shape[0]):
        c = cosines[i]
        c = 1.0 if c > 1.0 else (-1.0 if c < -1.0 else c)
        c_slope = c_max if c > c_max else (-c_max if c < -c_max else c)
        if m1 == 1.0 and (m2 == 0.0 or c <= switch):
            # f(c) = c - m2 sin m2 - m3 (m2 sin m2 = 0 without an angular margin), f' = 1
            value, value_low = two_sum(c, -(m2 * sin_m))
            value, extra = two_sum(value, -m3)
            value_low += extra
            slope = 1.0
        elif m1 == 1.0:
            # f(c) = c cos m - sin m sqrt((1 - c)(1 + c)) - m3
            first, first_low = _two_product(c, cos_m)
            second, second_low = _two_product(sin_m, _sine_of_angle(c))
            value, value_low = two_sum(first, -second)
            value, extra = two_sum(value, -m3)
            value_low += extra + (first_low - second_low)
            slope = cos_m + sin_m * c_slope / _sine_of_angle(c_slope)
        else:
            value = math.cos(m1 * math.acos(c) + m2) - m3
            value_low = 0.0
            slope = m1 * math.sin(m1 * math.acos(c_slope) + m2) / _sine_of_angle(c_slope)
        product, product_low = _two_product(scale, value)
        product_low += scale * value_low
        high[i] = product + product_low
        low[i] = product_low - (high[i] - product)
        slopes[i] = slope


def combined_margin_target(cos_target, s, m1, m2, m3, c_max):
    """(high, low, slope): z_y = s f(c) = high + low and f'(c) for the target cosines (float64).

    See ``_combined_margin_kernel``; c_max from :func:`derivative_limit`.
    """
    cos_target = np.ascontiguousarray(cos_target, dtype=np.float64)
    high, low, slope = (np.empty_like(cos_target) for _ in range(3))
    _combined_margin_kernel(cos_target, float(s), float(m1), float(m2), float(m3), float(c_max), high, low, slope)
    return high, low, slope


# ---- margin cross-entropy on cosines ---------------------------------------------------------


def _check_margins(s, m1, m2, m3):
    s = check_real_scalar("s", s, minimum=0.0, include_minimum=False)
    m1 = check_real_scalar("m1", m1, minimum=0.0, include_minimum=False)
    m2 = check_real_scalar("m2", m2, minimum=0.0, maximum=math.pi, include_maximum=False)
    m3 = check_real_scalar("m3", m3)
    return s, m1, m2, m3


def _cosine_rows(cos, target):
    cos = check_float_array("cos", cos)
    rows = np.ascontiguousarray(cos.reshape(-1, cos.shape[-1])) if cos.shape[-1] else cos
    if cos.size == 0:
        raise ValueError(f"cos must have at least one row and one class, got shape {cos.shape}")
    targets = check_class_indices("target", target, cos.shape[:-1], cos.shape[-1]).reshape(-1)
    return cos, rows, targets


def _upstream_per_row(reduction, grad_output, shape, count):
    upstream = check_grad_output("grad_output", grad_output, reduction, shape)
    if reduction == "none":
        return np.ascontiguousarray(upstream.reshape(-1))
    value = float(upstream) / count if reduction == "mean" else float(upstream)
    return np.full(count, value)


def _reduce_losses(losses, reduction, shape, dtype):
    if reduction == "none":
        return losses.reshape(shape).astype(dtype)
    total = float(np.sum(losses))  # float64, pairwise (NumPy), independent of the threads
    return np.asarray(total / losses.shape[0] if reduction == "mean" else total, dtype=dtype)


def _margin_cross_entropy(cos, target, s, m1, m2, m3, reduction, grad_output, with_gradient):
    s, m1, m2, m3 = _check_margins(s, m1, m2, m3)
    reduction = check_reduction("reduction", reduction)
    cos, rows, targets = _cosine_rows(cos, target)
    count = rows.shape[0]
    upstream = _upstream_per_row(reduction, grad_output, cos.shape[:-1], count) if with_gradient else np.zeros(count)
    high, low, slope = combined_margin_target(rows[np.arange(count), targets], s, m1, m2, m3,
                                              derivative_limit(rows.dtype))
    losses, gradient, _ = _margin_rows(rows, targets, high, low, slope, upstream, s, with_gradient)
    loss = _reduce_losses(losses, reduction, cos.shape[:-1], cos.dtype)
    if not with_gradient:
        return loss
    return loss, gradient.reshape(cos.shape)


def margin_cross_entropy(cos, target, *, s, m1=1.0, m2=0.0, m3=0.0, reduction="mean"):
    r"""Cross-entropy of cosine logits with InsightFace's combined margin on the target.

    .. math::
        \ell_i = -\log \frac{e^{s f(\cos\theta_{iy_i})}}{e^{s f(\cos\theta_{iy_i})} + \sum_{j \ne y_i} e^{s \cos\theta_{ij}}},
        \qquad f(c) = \cos(m_1 \arccos c + m_2) - m_3

    With m1 = 1 and m2 > 0 (ArcFace) InsightFace's monotonic fallback applies where
    theta + m2 > pi: f(c) = c - m2 sin m2 - m3 (see :func:`arcface`).  The target cosine
    is clamped to [-1, 1] before f; the others are used as given.

    Args:
        cos: cosines (..., C), float32 or float64 (e.g. :func:`normalized_linear`); not modified.
        target: integer class indices, shape ``cos.shape[:-1]``, in [0, C).
        s: the scale, > 0.
        m1, m2, m3: the multiplicative angular (m1 > 0), additive angular (0 <= m2 < pi)
            and additive cosine margins.
        reduction: "mean" (over the rows), "sum" or "none".

    Returns:
        The loss, ``cos``'s dtype: a 0-d array, or shape ``cos.shape[:-1]`` for "none".

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import margin_cross_entropy
        >>> cos = np.array([[0.8, 0.1, -0.2]])
        >>> round(float(margin_cross_entropy(cos, np.array([0]), s=10.0, m3=0.3)), 6)
        0.019045

    Reference: J. Deng et al., "ArcFace: Additive angular margin loss for deep face
    recognition", 2019 (the combined margin, section 3.3); docs/proofs/margins.md.
    """
    return _margin_cross_entropy(cos, target, s, m1, m2, m3, reduction, 1.0, False)


def margin_cross_entropy_forward_backward(cos, target, *, s, m1=1.0, m2=0.0, m3=0.0, reduction="mean",
                                          grad_output=1.0):
    r"""(loss, dcos) of :func:`margin_cross_entropy` in one fused pass.

    .. math::
        \frac{\partial L}{\partial \cos\theta_{ij}} = g_i\, s\,(a_{ij} - \delta_{jy_i})\,
        \bigl(1 + \delta_{jy_i}(f'(\cos\theta_{ij}) - 1)\bigr)

    with a = softmax of the margin logits and g_i the upstream gradient of row i's loss
    (``grad_output`` / rows for "mean").  f' is finite everywhere: at c = 1 the ArcFace
    derivative is taken at c_max = nextafter(1, 0) in the input dtype
    (:func:`derivative_limit`, docs/proofs/margins.md#arcface-derivative-at-the-ends);
    in the fallback region it is 1.

    Args:
        cos, target, s, m1, m2, m3, reduction: as :func:`margin_cross_entropy`.
        grad_output: dL/dloss: a scalar ("mean", "sum"), or an array of the loss' shape ("none").

    Returns:
        (loss, dcos): the loss as :func:`margin_cross_entropy` and dcos shaped like ``cos``.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import margin_cross_entropy_forward_backward
        >>> loss, dcos = margin_cross_entropy_forward_backward(np.array([[1.0, 0.0]]), np.array([0]),
        ...                                                    s=2.0, m2=0.5)
        >>> bool(np.isfinite(dcos).all())
        True

    Reference: Deng et al. 2019; docs/proofs/margins.md#margin-cross-entropy-gradient.
    """
    return _margin_cross_entropy(cos, target, s, m1, m2, m3, reduction, grad_output, True)


def normface(cos, target, *, s, reduction="mean"):
    r"""NormFace: cross-entropy of ``s * cos`` (no margin).

    .. math:: \ell_i = -\log \frac{e^{s\cos\theta_{iy_i}}}{\sum_j e^{s\cos\theta_{ij}}}

    Equals pytorch-metric-learning's ``NormalizedSoftmaxLoss`` with s = 1 / temperature.
    Args and returns as :func:`margin_cross_entropy`.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import normface
        >>> round(float(normface(np.array([[0.0, 0.0]]), np.array([1]), s=30.0)), 6)
        0.693147

    Reference: F. Wang et al., "NormFace", 2017 (eq. 4 with the scale s).
    """
    return margin_cross_entropy(cos, target, s=s, reduction=reduction)


def normface_forward_backward(cos, target, *, s, reduction="mean", grad_output=1.0):
    """(loss, dcos) of :func:`normface`: dcos_ij = g_i s (a_ij - delta_{j y_i})."""
    return margin_cross_entropy_forward_backward(cos, target, s=s, reduction=reduction, grad_output=grad_output)


def _check_cosface_margin(m):
    return check_real_scalar("m", m)


def cosface(cos, target, *, s=64.0, m=0.35, reduction="mean"):
    r"""CosFace / AM-Softmax: the target logit is s (cos theta - m).

    .. math:: \ell_i = -\log \frac{e^{s(\cos\theta_{iy_i} - m)}}{e^{s(\cos\theta_{iy_i} - m)} + \sum_{j\ne y_i} e^{s\cos\theta_{ij}}}

    AM-Softmax (F. Wang et al. 2018) is the same loss with s = 30.  Args and returns as
    :func:`margin_cross_entropy` (m3 = m).

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import cosface
        >>> round(float(cosface(np.array([[0.5, 0.2]]), np.array([0]), s=30.0, m=0.35)), 6)
        1.701413

    Reference: H. Wang et al., "CosFace: Large margin cosine loss for deep face
    recognition", 2018; F. Wang et al., "Additive margin softmax for face verification", 2018.
    """
    return margin_cross_entropy(cos, target, s=s, m3=_check_cosface_margin(m), reduction=reduction)


def cosface_forward_backward(cos, target, *, s=64.0, m=0.35, reduction="mean", grad_output=1.0):
    """(loss, dcos) of :func:`cosface`: the target's f' is 1, the margin only shifts the softmax."""
    return margin_cross_entropy_forward_backward(cos, target, s=s, m3=_check_cosface_margin(m),
                                                 reduction=reduction, grad_output=grad_output)


def _check_arcface_margin(m):
    return check_real_scalar("m", m, minimum=0.0, maximum=math.pi, include_maximum=False)


def arcface(cos, target, *, s=64.0, m=0.5, reduction="mean"):
    r"""ArcFace: the target logit is s cos(theta + m), with InsightFace's monotonic fallback.

    .. math::
        f(c) = \begin{cases} c\cos m - \sin m \sqrt{1 - c^2} = \cos(\theta + m) & c > \cos(\pi - m)\\
                             c - m \sin m & \text{otherwise } (\theta + m \ge \pi)\end{cases}

    The fallback keeps the target logit decreasing in theta (``cos(theta + m)`` turns back
    up past pi); it is not continuous: the value jumps by cos m + m sin m - 1 at
    theta = pi - m (docs/proofs/margins.md#arcface-fallback).  pytorch-metric-learning's
    ``ArcFaceLoss`` takes its margin in degrees: ``ArcFaceLoss(margin=28.6)`` is m = 0.4992.

    Args and returns as :func:`margin_cross_entropy` (m2 = m, 0 <= m < pi).

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import arcface
        >>> round(float(arcface(np.array([[1.0, 0.0]]), np.array([0]), s=8.0, m=0.5)), 6)
        0.000893

    Reference: J. Deng et al., "ArcFace", 2019 (eq. 3); InsightFace's arcface_torch
    (``th = cos(pi - m)``, ``mm = sin(pi - m) m``).
    """
    return margin_cross_entropy(cos, target, s=s, m2=_check_arcface_margin(m), reduction=reduction)


def arcface_forward_backward(cos, target, *, s=64.0, m=0.5, reduction="mean", grad_output=1.0):
    """(loss, dcos) of :func:`arcface`.

    The target's derivative f'(c) = cos m + sin m c / sqrt(1 - c^2) (1 in the fallback) is
    evaluated at min(c, c_max), c_max = nextafter(1, 0) in the input dtype: cos exactly 1
    gives a finite gradient (sin m / sqrt(2 delta) about, delta = 2**-24 or 2**-53),
    never NaN, and the margin's gradient is kept (InsightFace's arcface_torch computes the
    margin under ``torch.no_grad()``, i.e. with f' = 1).
    docs/proofs/margins.md#arcface-derivative-at-the-ends.
    """
    return margin_cross_entropy_forward_backward(cos, target, s=s, m2=_check_arcface_margin(m),
                                                 reduction=reduction, grad_output=grad_output)


# ---- L-Softmax and A-Softmax (SphereFace) ------------------------------------------------------


def psi_and_slope(c, m):
    """(psi(c), dpsi/dc) for cosines c (float64) and integer m in 1..4, without arccos.

    psi(theta) = (-1)^k cos(m theta) - 2k on theta in [k pi/m, (k+1) pi/m]
    (docs/proofs/margins.md#sphereface-psi-monotone), cos(m theta) = T_m(c) by the
    Chebyshev polynomial (docs/proofs/margins.md#chebyshev-cos-m-theta), and the branch k
    counts the thresholds cos(j pi / m), j = 1..m-1, that c lies at or below.  psi is
    continuous and so is its derivative (-1)^k T_m'(c) (T_m' = m U_{m-1} vanishes at the
    branch ends), so the side chosen at a threshold does not matter.
    """
    # T_m written with sin^2 theta = (1 - c)(1 + c) (exact factors near c = +-1), so that T_m(c)
    # near +-1 is +-1 minus a small term instead of a difference of terms of size 2^(m-1):
    # T_2 = 1 - 2 s2, T_3 = c (1 - 4 s2), T_4 = 1 - 8 c^2 s2 (the same polynomials)
    sine_squared = (1.0 - c) * (1.0 + c)
    if m == 1:
        polynomial, slope = c, np.ones_like(c)
    elif m == 2:
        polynomial, slope = 1.0 - 2.0 * sine_squared, 4.0 * c
    elif m == 3:
        polynomial, slope = c * (1.0 - 4.0 * sine_squared), 12.0 * c * c - 3.0
    else:
        polynomial, slope = 1.0 - 8.0 * (c * c) * sine_squared, 16.0 * c * (1.0 - 2.0 * sine_squared)
    branch = np.zeros_like(c)
    for j in range(1, m):
        branch += c <= math.cos(j * math.pi / m)
    sign = 1.0 - 2.0 * (branch % 2)
    return sign * polynomial - 2.0 * branch, sign * slope


def _check_large_margin(m, lambda_, normalize_weights):
    m = check_real_scalar("m", m, integer=True)
    if not 1 <= m <= 4:
        raise ValueError(f"m must be an integer in 1..4, got {m} (the Chebyshev forms T_1..T_4 are implemented)")
    lambda_ = check_real_scalar("lambda_", lambda_, minimum=0.0)
    if not isinstance(normalize_weights, (bool, np.bool_)):
        raise TypeError(f"normalize_weights must be a bool, got {type(normalize_weights).__name__}")
    return m, lambda_, bool(normalize_weights)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _target_dots_kernel(x, W, targets, out):
    # out_i = x_i . W_{y_i} by Dot2 (Ogita, Rump & Oishi 2005): every product split exactly
    # (FMA) and every sum carried with its error (two_sum), as accurate as if computed in
    # twice the working precision.  N dot products only: the target's cosine enters psi,
    # whose slope m^2 at c = 1 would amplify a BLAS rounding 16-fold.
    for i in range(x.shape[0]):
        features = x[i]
        weights = W[targets[i]]
        total = 0.0
        error = 0.0
        for j in range(features.shape[0]):
            product, product_error = _two_product(np.float64(features[j]), np.float64(weights[j]))
            total, sum_error = two_sum(total, product)
            error += product_error + sum_error
        out[i] = total + error


@njit(**JIT_OPTIONS)
def _add_scaled_rows(destination, targets, coefficients, rows):
    # destination[t_i] += coefficients_i rows[t_i], in row order (sequential: deterministic)
    for i in range(targets.shape[0]):
        target = targets[i]
        coefficient = coefficients[i]
        line = destination[target]
        source = rows[target]
        for j in range(line.shape[0]):
            line[j] = np.float64(line[j]) + coefficient * np.float64(source[j])


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _add_scaled_self_kernel(destination, coefficients, rows):
    # destination_i += coefficients_i rows_i
    for i in prange(destination.shape[0]):
        line = destination[i]
        source = rows[i]
        coefficient = coefficients[i]
        for j in range(line.shape[0]):
            line[j] = np.float64(line[j]) + coefficient * np.float64(source[j])


def _large_margin(x, W, target, m, lambda_, normalize_weights, reduction, grad_output, with_gradient):
    m, lambda_, normalize_weights = _check_large_margin(m, lambda_, normalize_weights)
    reduction = check_reduction("reduction", reduction)
    x = check_float_array("x", x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, features), got shape {x.shape}")
    x, W, _ = _features_and_weights(x, W)
    count = x.shape[0]
    if count < 1:
        raise ValueError(f"x must have at least one row, got shape {x.shape}")
    targets = check_class_indices("target", target, (count,), W.shape[0])
    upstream = _upstream_per_row(reduction, grad_output, (count,), count) if with_gradient else np.zeros(count)

    x_norms = _checked_norms("x", x)
    raw_w_norms = _checked_norms("W", W)
    weights = _unit_rows(W, raw_w_norms) if normalize_weights else W
    w_norms = np.ones(W.shape[0]) if normalize_weights else raw_w_norms
    logits = np.matmul(x, weights.T)  # x_i . W_j (|x_i| cos_ij for SphereFace)

    # the target logit (docs/proofs/margins.md#large-margin-target-logit-gradient):
    # z_y = (lambda w.x + |w||x| psi(c)) / (1 + lambda),  c = w.x / (|w||x|),  w = W_y
    # (W_y / |W_y| for SphereFace: its |w| is 1 and w.x = |x| c).  c from the raw W_y and a
    # compensated dot product, not from the BLAS product or the rounded normalized W.
    raw_dot = np.empty(count)
    _target_dots_kernel(x, W, targets, raw_dot)
    cosine = np.clip(raw_dot / (x_norms * raw_w_norms[targets]), -1.0, 1.0)
    magnitude = x_norms * w_norms[targets]
    dot = x_norms * cosine if normalize_weights else raw_dot
    psi, psi_slope = psi_and_slope(cosine, m)
    target_logits = (lambda_ * dot + magnitude * psi) / (1.0 + lambda_)
    # dz_y/dx = alpha w + beta_x x,  dz_y/dw = alpha x + beta_w w:
    # alpha = (lambda + psi') / (1 + lambda),  beta = (psi - psi' c) |w||x| / (1 + lambda) / |x|^2 (or / |w|^2)
    alpha = (lambda_ + psi_slope) / (1.0 + lambda_)
    radial = (psi - psi_slope * cosine) * magnitude / (1.0 + lambda_)
    losses, gradient, target_gradients = _margin_rows(
        logits, targets, target_logits, np.zeros(count), np.ascontiguousarray(alpha), upstream, 1.0, with_gradient,
        out=logits)
    loss = _reduce_losses(losses, reduction, (count,), x.dtype)
    if not with_gradient:
        return loss
    # gradient = dL/dz with the target column times alpha: dx = G' W, dW = G'^T x, plus the radial terms
    dx = _product_over_classes(gradient, weights)
    _add_scaled_self_kernel(dx, target_gradients * radial / x_norms ** 2, x)
    dW = np.matmul(gradient.T, x)
    _add_scaled_rows(dW, targets, target_gradients * radial / w_norms[targets] ** 2, weights)
    if normalize_weights:
        # through W_hat = W / |W|: dW = (q - (W_hat . q) W_hat) / |W|
        projected = dW
        dW = np.empty_like(projected)
        _tangent_kernel(projected, weights, raw_w_norms, dW)
    return loss, dx, dW


def large_margin_cross_entropy(x, W, target, *, m, lambda_=0.0, normalize_weights=False, reduction="mean"):
    r"""L-Softmax (``normalize_weights=False``) and A-Softmax / SphereFace (``True``).

    .. math::
        z_{ij} = x_i \cdot W_j\ (j \ne y_i),\qquad
        z_{iy} = \frac{\lambda\,\|W_y\|\|x_i\|\cos\theta + \|W_y\|\|x_i\|\,\psi(\theta)}{1 + \lambda},\qquad
        \psi(\theta) = (-1)^k \cos(m\theta) - 2k,\ \theta \in [\tfrac{k\pi}{m}, \tfrac{(k+1)\pi}{m}]

    and :math:`\ell_i = -\log \mathrm{softmax}(z_i)_{y_i}`; SphereFace uses
    :math:`W_j / \|W_j\|` in place of :math:`W_j`.  cos(m theta) is the Chebyshev polynomial
    T_m(cos theta) and k is found by comparing cos theta to cos(j pi / m): no arccos.
    lambda is the original code's annealing blend (lambda = 0: the pure margin).

    Args:
        x: features (N, D), float32 or float64; not modified.
        W: class weights (C, D), ``x``'s dtype.
        target: integer class indices (N,) in [0, C).
        m: the integer angular margin, 1..4.
        lambda_: the blend, >= 0.
        normalize_weights: False for L-Softmax, True for SphereFace.
        reduction: "mean", "sum" or "none".

    Returns:
        The loss in ``x``'s dtype (0-d, or (N,) for "none").

    Raises:
        ValueError for m outside 1..4, a zero row of x or W (the angle is undefined).

    Accuracy: the non-target logits are one BLAS product in the input dtype; the target's
    cosine is a compensated (Dot2) dot product in float64 from the raw W_y, because psi's
    slope m^2 at c = 1 would amplify a rounded cosine 16-fold; psi uses sin^2 = (1-c)(1+c)
    so that T_m(c) near +-1 does not cancel.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import large_margin_cross_entropy
        >>> x = np.array([[1.0, 0.0]]); W = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> round(float(large_margin_cross_entropy(x, W, np.array([0]), m=2)), 6)
        0.313262

    Reference: W. Liu et al., "Large-margin softmax loss for convolutional neural networks",
    2016 (eqs. 6-7); W. Liu et al., "SphereFace: Deep hypersphere embedding for face
    recognition", 2017; docs/proofs/margins.md#large-margin-target-logit-gradient.
    """
    return _large_margin(x, W, target, m, lambda_, normalize_weights, reduction, 1.0, False)


def large_margin_cross_entropy_forward_backward(x, W, target, *, m, lambda_=0.0, normalize_weights=False,
                                                reduction="mean", grad_output=1.0):
    r"""(loss, dx, dW) of :func:`large_margin_cross_entropy`: the true gradients.

    With G = dL/dz (one fused row pass, :math:`G_{ij} = g_i (a_{ij} - \delta_{jy_i})`):

    .. math::
        dx_i = \sum_j G'_{ij} W_j + G_{iy}\beta_i x_i,\qquad
        dW_j = \sum_i G'_{ij} x_i + \sum_{i: y_i = j} G_{iy}\beta'_i W_j

    where G' is G with its target entries times :math:`\alpha = (\lambda + \psi')/(1+\lambda)`,
    :math:`\beta = (\psi - \psi' c)\|W_y\|/\|x\|/(1+\lambda)`,
    :math:`\beta' = (\psi - \psi' c)\|x\|/\|W_y\|/(1+\lambda)` and
    :math:`\psi' = (-1)^k T_m'(c)`, a polynomial (finite at c = +-1).  For SphereFace the
    gradient in the normalized weights is carried through ``W / |W|`` by projection.  The
    original SphereFace code back-propagates a normalized pseudo-gradient instead; this is
    the gradient of the loss as defined (checked against autograd and central differences).

    Returns:
        (loss, dx, dW), ``x``'s dtype, dx (N, D), dW (C, D).

    Reference: Liu et al. 2016, 2017; docs/proofs/margins.md#large-margin-target-logit-gradient.
    """
    return _large_margin(x, W, target, m, lambda_, normalize_weights, reduction, grad_output, True)
