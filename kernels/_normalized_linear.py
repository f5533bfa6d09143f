"""Normalized logits: the cosines between features and class weights, and their gradients.

``normalized_linear(x, W)`` is ``cos_ij = x_i . W_j / (|x_i| |W_j|)`` and
``normalized_linear_backward`` the gradients through both L2 normalizations.  The matrix
products are NumPy's BLAS (``np.matmul``), in float64 for float32 inputs (the unit rows'
and the sums' rounding is then far below a float32 ulp, which a float32 product's
rounding is not: it is many ulp of the small cosines and gradient entries), and for float64
gradients in short runs joined pairwise (``chunked_product``); the norms, the
normalization and the gradient's correction terms (the projections that remove the radial
components) are Numba kernels.
The helpers for norms and unit rows serve L-Softmax / SphereFace too (``_large_margin.py``).

Proof book: ``docs/proofs/margins.md`` (normalized-linear gradient).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH
from ._driver.threads import run_row_blocks
from ._numerics.eft import fma, two_product, two_sum
from ._numerics.rows import maxnum
from ._outputs import new_output
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


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _compensated_norm(values, scale):
    # sqrt(sum_d (x_d scale)^2) with the sum of squares as an exact-product, two_sum pair and the
    # square root corrected by one Newton step on that pair: within about 0.5 ulp (float64 rows)
    total = 0.0
    error = 0.0
    for j in range(values.shape[0]):
        value = np.float64(values[j]) * scale
        square, square_error = two_product(value, value)
        total, sum_error = two_sum(total, square)
        error += square_error + sum_error
    root = math.sqrt(total)
    if root == 0.0 or not math.isfinite(root):
        return root
    return root + (fma(-root, root, total) + error) / (2.0 * root)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _row_norm(values, compensated):
    # |x| = 2^e sqrt(sum_d (x_d 2^-e)^2), 2^e ~ max_d |x_d|: the scaling by a power of two is
    # exact and keeps the sum of squares from overflowing or underflowing
    largest = _largest_magnitude(values)
    if largest == 0.0 or not math.isfinite(largest):
        return math.sqrt(_sum_of_squares(values, 1.0))  # 0, inf or NaN
    exponent = math.frexp(largest)[1]
    scale = math.ldexp(1.0, -exponent)
    root = _compensated_norm(values, scale) if compensated else math.sqrt(_sum_of_squares(values, scale))
    return root * math.ldexp(1.0, exponent)


# The row kernels below are serial ``nogil`` functions over rows first..last, run on blocks of
# rows by ``_driver/threads.py``'s ``run_row_blocks`` (each row computed alone: the same bits
# for any thread count), not ``prange`` loops: they sit between BLAS products, and GNU
# OpenMP's team and OpenBLAS's threads, each spinning after its own parallel region, took
# the cores from each other (docs/performance.md, "L-Softmax's row kernels").


def _rows(kernel, rows, *args):
    """``kernel`` over ``rows`` rows of the (rows, features) first argument, on row blocks."""
    run_row_blocks(kernel, rows, *args, elements=rows * (args[0].shape[1] if args[0].ndim == 2 else 1))


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _row_norms_rows(first, last, part, x, norms, compensated):
    # compensated: the sum of squares as an exact-product, two_sum pair (within about 0.5 ulp)
    for i in range(first, last):
        norms[i] = _row_norm(x[i], compensated)


def _row_norms_kernel(x, norms):
    _rows(_row_norms_rows, x.shape[0], x, norms, False)


def _compensated_row_norms_kernel(x, norms):
    _rows(_row_norms_rows, x.shape[0], x, norms, True)


def _normalize_rows_kernel(x, norms, out):
    _rows(_normalize_rows, x.shape[0], x, norms, out)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _normalize_rows(first, last, part, x, norms, out):
    for i in range(first, last):
        values = x[i]
        destination = out[i]
        norm = norms[i]
        # x_hat_id = x_id / |x_i|  (float64, rounded once to the dtype)
        for j in range(values.shape[0]):
            destination[j] = np.float64(values[j]) / norm


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _dot64(first, second):
    total = 0.0
    for j in range(first.shape[0]):
        total += np.float64(first[j]) * np.float64(second[j])
    return total


def tangent_kernel(projected, unit, norms, out):
    """out_i = (p_i - (v_hat_i . p_i) v_hat_i) / |v_i| for p = ``projected``, v_hat = ``unit``."""
    _rows(_tangent_rows, projected.shape[0], projected, unit, norms, out)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _tangent_rows(first, last, part, projected, unit, norms, out):
    # d/dv of a function of v_hat = v / |v|, given p = its gradient in v_hat:
    # dv = (p - (v_hat . p) v_hat) / |v|     (docs/proofs/margins.md#normalized-linear-gradient:
    # dx_e = sum_j g_j (W_je / (|x||W_j|) - cos_j x_e / |x|^2), with p = sum_j g_j W_hat_j)
    for i in range(first, last):
        radial = _dot64(unit[i], projected[i])
        gradient = projected[i]
        direction = unit[i]
        destination = out[i]
        norm = norms[i]
        for j in range(gradient.shape[0]):
            destination[j] = (np.float64(gradient[j]) - radial * np.float64(direction[j])) / norm


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _divide_by_product(dot, x_norm, w_norm):
    # dot / (x_norm w_norm) with the product as an exact pair and the quotient corrected once:
    # about half an ulp, where dot / (x_norm * w_norm) rounds twice
    product, product_low = two_product(x_norm, w_norm)
    quotient = dot / product
    return quotient + (fma(-quotient, product, dot) - quotient * product_low) / product


def _clamped_cosines_kernel(cosines, out):
    _rows(_clamped_cosines, cosines.shape[0], cosines, out)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _clamped_cosines(first, last, part, cosines, out):
    # the float64 cosines rounded once to out's dtype and clamped to [-1, 1] (NaN passes)
    for i in range(first, last):
        row = cosines[i]
        destination = out[i]
        for j in range(row.shape[0]):
            value = row[j]
            destination[j] = 1.0 if value > 1.0 else (-1.0 if value < -1.0 else value)


def _cosines_from_dots_kernel(dots, x_norms, w_norms, out):
    _rows(_cosines_from_dots, dots.shape[0], dots, x_norms, w_norms, out)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _cosines_from_dots(first, last, part, dots, x_norms, w_norms, out):
    # cos_ij = (x_i . W_j) / (|x_i| |W_j|), the dot products in float64, rounded once to out's
    # dtype and clamped to [-1, 1] (NaN passes)
    for i in range(first, last):
        row = dots[i]
        destination = out[i]
        x_norm = x_norms[i]
        for j in range(row.shape[0]):
            value = _divide_by_product(row[j], x_norm, w_norms[j])
            destination[j] = 1.0 if value > 1.0 else (-1.0 if value < -1.0 else value)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def compensated_dot(first, second):
    """first . second in float64 by Dot2 (Ogita, Rump & Oishi 2005): every product split
    exactly (FMA), every sum carried with its error (two_sum); as accurate as if computed in
    twice the working precision (JIT)."""
    total = 0.0
    error = 0.0
    for k in range(first.shape[0]):
        product, product_error = two_product(np.float64(first[k]), np.float64(second[k]))
        total, sum_error = two_sum(total, product)
        error += product_error + sum_error
    return total + error


def _recompute_small_cosines_kernel(x, W, x_norms, w_norms, threshold, cosines):
    _rows(_recompute_small_cosines, cosines.shape[0], cosines, x, W, x_norms, w_norms, threshold)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _recompute_small_cosines(first, last, part, cosines, x, W, x_norms, w_norms, threshold):
    # where |cos| < threshold the float64 product's rounding (about u times the largest terms)
    # is many ulp of cos: recompute those entries from a compensated dot product
    for i in range(first, last):
        row = cosines[i]
        features = x[i]
        x_norm = x_norms[i]
        for j in range(row.shape[0]):
            if abs(row[j]) < threshold:
                row[j] = _divide_by_product(compensated_dot(features, W[j]), x_norm, w_norms[j])


def _scaled_rows(values, norms):
    """(values 2^-e_i, norms 2^-e_i) in float64, 2^e_i ~ |values_i|: an exact scaling that keeps
    the products of float64 rows from overflowing or underflowing."""
    scales = np.ldexp(1.0, -np.frexp(norms)[1])
    return values.astype(np.float64) * scales[:, None], norms * scales


# below this |cos|, float64 cosines are recomputed by Dot2: the product's error, about u
# times the terms (u |x| |W| at most), is up to 2^7 ulp of such a cosine
SMALL_COSINE = 2.0 ** -7


def product_over_classes(upstream: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """upstream @ rows for upstream (N, C) and rows (C, D), summed over the C classes, C-contiguous.

    Computed as (rows^T upstream^T)^T: the same product, but NumPy's OpenBLAS picks a much
    faster schedule for it when C is long and N, D are short (measured with 2 threads at
    256 x 93431 x 512, float32: 0.44 s instead of 1.0-3.2 s).
    """
    return np.ascontiguousarray(np.matmul(rows.T, upstream.T).T)


# the length of the runs of terms that one BLAS call sums in ``chunked_product``
PRODUCT_CHUNK = 64


def chunked_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b for a (M, K) and b (K, N), the K terms of each entry summed in runs of PRODUCT_CHUNK.

    Each run is one ``np.matmul`` (BLAS sums it in its own order), and the runs' products are
    added pairwise, in a fixed order (a binary counter: run 2k + 1 joins run 2k, pairs join
    pairs, ...).  A BLAS product sums all K terms of an entry in one long run, and its rounding
    error grows with K; here it grows with PRODUCT_CHUNK + log2(K / PRODUCT_CHUNK).  Used for
    float64 gradients, where that error is many ulp of entries that are small differences.
    """
    shape = (a.shape[0], b.shape[1])
    if a.shape[1] == 0:
        return np.zeros(shape, dtype=np.result_type(a, b))  # an empty sum (an empty batch's dW)
    pending = []  # partial sums, each of 2^k runs, k falling from first to last
    spare = []  # buffers to reuse: a fresh 1 MB array costs its page faults again
    for index, start in enumerate(range(0, a.shape[1], PRODUCT_CHUNK)):
        part = spare.pop() if spare else np.empty(shape, dtype=np.result_type(a, b))
        np.matmul(a[:, start : start + PRODUCT_CHUNK], b[start : start + PRODUCT_CHUNK], out=part)
        count = index + 1
        while count % 2 == 0:
            older = pending.pop()
            np.add(older, part, out=older)
            spare.append(part)
            part = older
            count //= 2
        pending.append(part)
    total = pending.pop()
    while pending:
        older = pending.pop()
        np.add(older, total, out=older)
        total = older
    return total


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


def row_norms(name: str, values: np.ndarray) -> np.ndarray:
    """``checked_norms``, compensated for float64 rows: their rounding would be an ulp or two of
    every cosine."""
    norms = checked_norms(name, values)
    if values.dtype == np.float64:
        _compensated_row_norms_kernel(values, norms)
    return norms


def unit_rows(values: np.ndarray, norms: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    _normalize_rows_kernel(values, norms, out)
    return out


def _unit_rows64(values: np.ndarray, norms: np.ndarray) -> np.ndarray:
    out = new_output(values.shape, np.float64)
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
    underflow of the squares; compensated for float64 inputs).  float32 inputs: the unit
    rows x_i / |x_i| and W_j / |W_j| in float64, their product one ``np.matmul`` (BLAS) in
    float64, rounded once to float32.  float64 inputs: the dot products of the rows (scaled
    by powers of two) in one ``np.matmul``, each divided by |x_i| |W_j| with the product
    carried exactly; the cosines with
    |cos| < 2^-7, where the product's rounding (about u |x| |W|) is many ulp of the result,
    are recomputed from a compensated (Dot2) dot product.  Measured against mpmath
    (``softmaxlab accuracy --kernels normalized_linear``, 32 x 1000, D = 16): float32 within
    0.5 ULP (correctly rounded); float64 within 88 ULP elementwise (the near-zero cosines
    just above 2^-7) and 3.04 ULP of the row's largest cosine.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import normalized_linear
        >>> normalized_linear(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, -2.0]]))
        array([[ 0.6, -0.8]])

    Reference: F. Wang et al., "NormFace: L2 hypersphere embedding for face verification",
    2017; docs/proofs/margins.md#normalized-linear-gradient.
    """
    rows, W, leading = features_and_weights(x, W)
    x_norms, w_norms = row_norms("x", rows), row_norms("W", W)
    if rows.dtype == np.float32:
        # the unit rows in float64 (one rounding each, 2^-53), then their float64 product is the
        # cosines: its rounding, about D 2^-53 at most, is far below a float32 ulp of any cosine
        # above 2^-20, and the divisions are one per entry of x and W, not one per cosine
        x_unit, w_unit = _unit_rows64(rows, x_norms), _unit_rows64(W, w_norms)
        cosines64 = np.matmul(x_unit, w_unit.T, out=new_output((rows.shape[0], W.shape[0]), np.float64))
        cosines = np.empty(cosines64.shape, dtype=np.float32)
        _clamped_cosines_kernel(cosines64, cosines)
    else:
        scaled_x, scaled_x_norms = _scaled_rows(rows, x_norms)
        scaled_w, scaled_w_norms = _scaled_rows(W, w_norms)
        cosines = np.matmul(scaled_x, scaled_w.T)
        _cosines_from_dots_kernel(cosines, scaled_x_norms, scaled_w_norms, cosines)
        _recompute_small_cosines_kernel(scaled_x, scaled_w, scaled_x_norms, scaled_w_norms, SMALL_COSINE, cosines)
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
        (dx, dW) shaped like ``x`` and ``W``.  ``p`` and ``q`` are BLAS products in float64:
        for float32 inputs one ``np.matmul`` each, of the float64 unit rows and the upstream
        gradient converted; for float64 inputs summed in runs of ``PRODUCT_CHUNK`` terms joined
        pairwise (``chunked_product``).  The projections are computed in float64 and rounded
        once.  Measured against mpmath (``softmaxlab accuracy --kernels
        normalized_linear_backward``, 32 x 1000, D = 16): float32 within 0.5 ULP (correctly
        rounded); float64 up to 1.2e4 (dx) and 2.7e4 (dW) ULP elementwise, where an entry is
        a small difference of the products' terms, and 5.0 (dx) and 5.8 (dW) ULP of the row's
        largest entry.

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
    if rows.dtype == np.float32:
        # float32: the unit rows and the products in float64 (the products' rounding in float32
        # is many ulp of the small entries of dx and dW), rounded once by tangent_kernel
        x_unit, w_unit = _unit_rows64(rows, x_norms), _unit_rows64(W, w_norms)
        upstream = upstream.astype(np.float64)
        p = product_over_classes(upstream, w_unit)
        q = np.matmul(upstream.T, x_unit)
    else:
        # float64: the sums over classes (p) and rows (q) in runs of PRODUCT_CHUNK terms joined
        # pairwise; one long BLAS run is many ulp of dx's and dW's small entries at 1000 classes
        x_unit, w_unit = unit_rows(rows, x_norms), unit_rows(W, w_norms)
        p = np.ascontiguousarray(chunked_product(w_unit.T, upstream.T).T)
        q = np.ascontiguousarray(chunked_product(upstream.T, x_unit))
    dx = np.empty_like(rows)
    dW = np.empty_like(W)
    tangent_kernel(p, x_unit, x_norms, dx)
    tangent_kernel(q, w_unit, w_norms, dW)
    return dx.reshape(leading + (W.shape[1],)), dW
