"""Normalized logits: the cosines between features and class weights, and their gradients.

``normalized_linear(x, W)`` is ``cos_ij = x_i . W_j / (|x_i| |W_j|)`` and
``normalized_linear_backward`` the gradients through both L2 normalizations.  The matrix
products are NumPy's BLAS (``np.matmul``); the norms, the normalization and the gradient's
correction terms (the projections that remove the radial components) are Numba kernels.
The helpers for norms and unit rows serve L-Softmax / SphereFace too (``_large_margin.py``).

Proof book: ``docs/proofs/margins.md`` (normalized-linear gradient).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH
from ._numerics.rows import cast_like, maxnum
from ._validation import check_float_array

__all__ = ["normalized_linear", "normalized_linear_backward"]

PAGE = "docs/proofs/margins.md"


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
def tangent_kernel(projected, unit, norms, out):
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


def product_over_classes(upstream: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """upstream @ rows for upstream (N, C) and rows (C, D), summed over the C classes, C-contiguous.

    Computed as (rows^T upstream^T)^T: the same product, but NumPy's OpenBLAS picks a much
    faster schedule for it when C is long and N, D are short (measured with 2 threads at
    256 x 93431 x 512, float32: 0.44 s instead of 1.0-3.2 s).
    """
    return np.ascontiguousarray(np.matmul(rows.T, upstream.T).T)


def checked_norms(name: str, values: np.ndarray) -> np.ndarray:
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


def unit_rows(values: np.ndarray, norms: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    _normalize_rows_kernel(values, norms, out)
    return out


def features_and_weights(x, W, x_name="x", w_name="W"):
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
    rows, W, leading = features_and_weights(x, W)
    x_unit = unit_rows(rows, checked_norms("x", rows))
    w_unit = unit_rows(W, checked_norms("W", W))
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
    rows, W, leading = features_and_weights(x, W)
    grad_cos = check_float_array("grad_cos", grad_cos)
    expected = leading + (W.shape[0],)
    if grad_cos.shape != expected:
        raise ValueError(f"grad_cos must have the shape of normalized_linear(x, W) {expected}, got {grad_cos.shape}")
    if grad_cos.dtype != rows.dtype:
        raise TypeError(f"grad_cos must have the dtype of x ({rows.dtype}), got {grad_cos.dtype}")
    upstream = np.ascontiguousarray(grad_cos.reshape(-1, W.shape[0]))
    x_norms, w_norms = checked_norms("x", rows), checked_norms("W", W)
    x_unit, w_unit = unit_rows(rows, x_norms), unit_rows(W, w_norms)
    dx = np.empty_like(rows)
    dW = np.empty_like(W)
    tangent_kernel(product_over_classes(upstream, w_unit), x_unit, x_norms, dx)
    tangent_kernel(np.matmul(upstream.T, x_unit), w_unit, w_norms, dW)
    return dx.reshape(leading + (W.shape[1],)), dW
