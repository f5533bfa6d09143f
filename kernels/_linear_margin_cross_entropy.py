"""Fused margin cross-entropy on cosine logits: ``margin_cross_entropy(normalized_linear(x, W), target)``
without the (rows, classes) cosines.

The face-recognition losses (NormFace, CosFace / AM-Softmax, ArcFace and InsightFace's
combination) at class counts where the cosines and their gradient would be the largest
arrays of the step.  The fixed product tiles of the fused linear cross-entropy
(``_linear_cross_entropy._logit_tile``, ``product_loop``) with the margin row kernel's
arithmetic (``_margin_rows``: the target's logit kept apart from the sums):

* the products P_ij = x_i . W_j are BLAS's, per fixed tile, in the inputs' dtype (float64
  with ``precision="float64"``), and the cosines c_ij = P_ij (1/|x_i|) (1/|W_j|) are formed
  in float64 inside the kernels and clamped to [-1, 1], as :func:`normalized_linear`'s are;
* the target's cosine is not taken from the tile: it is x_i . W_y by Dot2 (compensated,
  ``_normalized_linear.compensated_dot``) divided by |x_i| |W_y| with the product as an
  exact pair, the error of ``normalized_linear``'s float64 path, because f(c) and f'(c)
  (ArcFace's slope near theta = pi - m) amplify an error of c;
* pass 1 keeps, per row and product tile, the largest non-target logit s c and the sum of
  e^(s c - m) over the non-target classes (``_margin_rows.reduce_without``'s pair), taken
  as soon as BLAS has written the tile, and N C / 128 bytes of pairs; the tiles are merged
  in tile order (``_merge_without_target``) and the target joined (``_with_target``): loss
  and a_y - 1 without cancellation.  It needs one product tile; with the gradient, when all
  the products fit in ``memory_budget``, it keeps each tile for pass 2, which then reads
  them instead of recomputing them (the same bits);
* pass 2 overwrites each product tile with A_ij = dL/dc_ij / (|x_i| |W_j|), where
  dL/dc_ij = g s a_ij (j != y) and g s f'(c_iy) (a_iy - 1); then
  v_i = sum_j A_ij W_j and u_j = sum_i A_ij x_i (the tiles' products summed in float64),
  and the gradients through the two normalizations are their tangent parts
  (``docs/proofs/linear_cross_entropy.md``, ``docs/proofs/margins.md#normalized-linear-gradient``):

      dx_i = v_i - (xhat_i . v_i) xhat_i,      dW_j = u_j - (What_j . u_j) What_j.

Nothing depends on ``memory_budget`` (it decides only whether the products are kept) or on
Numba's thread count (BLAS's own is another matter: ``docs/design.md``): the same fixed
product tiles, the same tile-order merges and float64 sums, kernels that compute each row
alone; the tests check bit-identity over budgets and thread counts.

Error bound in terms of the inputs.  A BLAS product P_ij in a dtype of unit roundoff u,
accumulated over D features in any order, is within gamma_D sum_k |x_ik W_jk| <= gamma_D
|x_i| |W_j| of x_i . W_j (gamma_D = D u / (1 - D u); Higham 2002, Accuracy and Stability of
Numerical Algorithms, section 3.1, and Cauchy-Schwarz), so every non-target cosine is within
delta = gamma_D + 4 u_64 of the exact one (the reciprocals and the two products in float64
add the 4 u_64); the target's is within a few u_64 (Dot2).  The loss is a function of the
logits s c whose partial derivatives sum to at most 2 in absolute value, so it is within
2 s delta of the margin cross-entropy of the exact cosines, beyond the margin row kernel's own
rounding (``_margin_rows``); ``tests/kernels/test_linear_margin_cross_entropy.py`` checks
this and the gradients' corresponding bound against the unfused composition.

The norms are ``normalized_linear``'s (float64, scaled by a power of two; compensated for
float64 inputs).  A zero row of ``x`` or ``linear_weight`` raises ValueError (its cosines are
undefined); NaN in the inputs gives NaN in the rows it reaches.

References: F. Wang et al., "NormFace", 2017; H. Wang et al., "CosFace", 2018; J. Deng et
al., "ArcFace", 2019 (the combined margin); E. Wijmans et al., "Cut your losses in
large-vocabulary language models", 2024 (the fused, chunked loss).
"""

from __future__ import annotations

from collections import namedtuple

import numba
import numpy as np
from numba import njit

from ._config import JIT_OPTIONS, STRICT_FASTMATH
from ._cosine_margins import _check_margins, combined_margin_target, derivative_limit
from ._driver.reduction import reduce_losses, row_scales
from ._driver.threads import run_row_blocks
from ._linear_cross_entropy import (
    DEFAULT_MEMORY_BUDGET,
    PRODUCT_TILE,
    ROW_TILE,
    _aligned_empty,
    _logit_tile,
    _tiles,
    check_precision,
    product_loop,
)
from ._margin_rows import _merge_without_target, _with_target, exp_scaled_difference, reduce_without
from ._normalized_linear import _divide_by_product, _dot64, compensated_dot, features_and_weights, row_norms
from ._validation import check_class_indices, check_float_array, check_real_scalar, check_reduction

__all__ = ["linear_margin_cross_entropy", "linear_margin_cross_entropy_forward_backward"]

PAGE = "docs/proofs/linear_cross_entropy.md"

#: What the tile kernels read per row and class: labels, 1/|x_i|, 1/|W_j|, the scale s, and whether
#: the values are cosines, clamped to [-1, 1].  L-Softmax (``_large_margin``) passes its raw
#: products x_i . W_j as unclamped values with factors of 1 and s = 1.
Cosines = namedtuple("Cosines", ["targets", "x_inverse", "w_inverse", "scale", "clamped"], defaults=(True,))

# per-row state of pass 2: the logits' shift M, 1/S, a_y - 1, and dL/dz_y's factor g s f'(c_y)
STATE_SHIFT, STATE_INVERSE_TOTAL, STATE_TARGET_MINUS_ONE, STATE_TARGET_FACTOR = 0, 1, 2, 3


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _cosine(product, x_inverse, w_inverse):
    """c = P (1/|x|) (1/|W|) in float64, clamped to [-1, 1] (NaN passes)."""
    c = np.float64(product) * x_inverse * w_inverse
    return 1.0 if c > 1.0 else (-1.0 if c < -1.0 else c)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _values_into(row, products, x_inverse, w_inverse, clamped):
    """row_j = P_j (1/|x|) (1/|W_j|) in float64, clamped as cosines if ``clamped``: one loop for
    each case (a test of ``clamped`` inside the loop kept it from vectorizing)."""
    if clamped:
        for j in range(row.shape[0]):
            row[j] = _cosine(products[j], x_inverse, w_inverse[j])
    else:
        for j in range(row.shape[0]):
            row[j] = np.float64(products[j]) * x_inverse * w_inverse[j]


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _cosine_tile_statistics(first, last, part, products, row0, col0, cosines, partial, scratch):
    """Per row first..last of the product tile ``products`` (rows row0.., classes col0.., tile k =
    col0 / PRODUCT_TILE): partial[i, k] = (s m, sum_j e^(s c_j - s m)) over its non-target classes,
    m their largest cosine (``_margin_rows.reduce_without``'s pair, (-inf, 0) for none).
    ``scratch[part]`` holds the row's cosines."""
    cols = products.shape[1]
    k = col0 // PRODUCT_TILE
    # w_inverse sliced to the tile, indexed from 0: an index known to be non-negative lets the
    # loops vectorize
    w_inverse = cosines.w_inverse[col0 : col0 + cols]
    for r in range(first, last):
        i = row0 + r
        row = scratch[part, :cols]
        _values_into(row, products[r], cosines.x_inverse[i], w_inverse, cosines.clamped)
        partial[i, k, 0], partial[i, k, 1] = reduce_without(products, row, cosines.targets[i] - col0, cosines.scale)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_margin_rows(first, last, part, partial, target_high, target_low, losses, state):
    """Row i's loss and state from its tiles' pairs and its target logit z_y = high + low."""
    for i in range(first, last):
        others_shift, others_total = _merge_without_target(partial, i, partial[i])
        join_target(i, others_shift, others_total, target_high, target_low, losses, state)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def join_target(i, others_shift, others_total, target_high, target_low, losses, state):
    """Row i's loss and state (M, 1/S, a_y - 1) from its non-target (M_o, S_o) and z_y = high + low
    (``_margin_rows._with_target``)."""
    shift, inverse_total, loss, target_minus_one = _with_target(others_shift, others_total, target_high[i],
                                                                target_low[i])
    losses[i] = loss
    state[i, STATE_SHIFT] = shift
    state[i, STATE_INVERSE_TOTAL] = inverse_total
    state[i, STATE_TARGET_MINUS_ONE] = target_minus_one


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _gradient_into(values, x_inverse, w_inverse, factor, scale, shift, clamped):
    """values_j <- factor e^(s c_j - M) (1/|x|) (1/|W_j|) for c_j from values_j as ``_values_into``
    takes it, one loop for each case."""
    if clamped:
        for j in range(values.shape[0]):
            c = _cosine(values[j], x_inverse, w_inverse[j])
            values[j] = factor * exp_scaled_difference(values, c, scale, shift) * x_inverse * w_inverse[j]
    else:
        for j in range(values.shape[0]):
            c = np.float64(values[j]) * x_inverse * w_inverse[j]
            values[j] = factor * exp_scaled_difference(values, c, scale, shift) * x_inverse * w_inverse[j]


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _cosine_tile_gradient(first, last, part, products, row0, col0, cosines, upstream, state):
    """Overwrite rows first..last of the product tile with A_ij = dL/dc_ij (1/|x_i|) (1/|W_j|):
    dL/dc_ij = g_i s a_ij (j != y), g_i s f'(c_y) (a_y - 1) (``docs/proofs/margins.md``)."""
    cols = products.shape[1]
    scale = cosines.scale
    w_inverse = cosines.w_inverse[col0 : col0 + cols]  # indexed from 0, as in the statistics
    for r in range(first, last):
        i = row0 + r
        x_inverse = cosines.x_inverse[i]
        shift = state[i, STATE_SHIFT]
        factor = upstream[i] * scale * state[i, STATE_INVERSE_TOTAL]
        values = products[r]
        _gradient_into(values, x_inverse, w_inverse, factor, scale, shift, cosines.clamped)
        label = cosines.targets[i] - col0
        if 0 <= label < cols:
            values[label] = (upstream[i] * state[i, STATE_TARGET_FACTOR] * state[i, STATE_TARGET_MINUS_ONE]
                             * x_inverse * cosines.w_inverse[col0 + label])


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _tangent_part(first, last, part, projected, rows, inverse_norms, out):
    """out_i = p_i - (vhat_i . p_i) vhat_i, vhat_i = rows_i / |rows_i|: p_i without its radial part
    (float64, rounded once to ``out``'s dtype)."""
    for i in range(first, last):
        inverse = inverse_norms[i]
        radial = _dot64(rows[i], projected[i]) * inverse
        for e in range(out.shape[1]):
            out[i, e] = projected[i, e] - radial * (np.float64(rows[i, e]) * inverse)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _target_cosines(first, last, part, x, W, targets, x_norms, w_norms, out):
    """c_iy = (x_i . W_y by Dot2) / (|x_i| |W_y|), clamped to [-1, 1]."""
    for i in range(first, last):
        label = targets[i]
        c = _divide_by_product(compensated_dot(x[i], W[label]), x_norms[i], w_norms[label])
        out[i] = 1.0 if c > 1.0 else (-1.0 if c < -1.0 else c)


def target_cosines(x, linear_weight, targets, x_norms, w_norms):
    """c_iy for the rows' targets (``_target_cosines``), float64 (rows,); ``targets`` index
    ``linear_weight``'s rows."""
    out = np.empty(x.shape[0])
    run_row_blocks(_target_cosines, x.shape[0], x, linear_weight, targets, x_norms, w_norms, out)
    return out


def cosine_statistics(x_work, linear_weight, cosines, keep_bytes=0):
    """Pass 1: (partial, product, kept): per row and product tile of ``linear_weight`` the
    non-target pair (``_cosine_tile_statistics``; ``cosines.targets`` index these classes, -1
    for none), the aligned product buffer for pass 2, and the tiles' products for pass 2
    (``product_loop``'s ``kept``) when all of them fit in ``keep_bytes``, else None.

    Each product tile's pairs are taken as soon as BLAS has written it, while it is in cache,
    in the order of pass 2 (class tiles outer, row tiles inner).  Without keeping, pass 1
    needs one product tile; kept, each tile has its own 64-byte aligned place in one buffer,
    laid out as the product buffer is, so pass 2 reads the bits it would have recomputed."""
    rows = x_work.shape[0]
    classes = linear_weight.shape[0]
    partial = np.zeros((rows, max(1, -(-classes // PRODUCT_TILE)), 2))
    scratch = np.empty((numba.get_num_threads(), min(classes, PRODUCT_TILE)))
    tiles = [(row_tile, cols) for cols in _tiles(0, classes, PRODUCT_TILE) for row_tile in _tiles(0, rows, ROW_TILE)]
    step = 64 // x_work.itemsize  # each kept tile starts on 64 bytes, as the product buffer does
    places = np.cumsum([0] + [-(-(r[1] - r[0]) * (c[1] - c[0]) // step) * step for r, c in tiles])
    kept = None
    if places[-1] * x_work.itemsize <= keep_bytes:
        kept, store = {}, _aligned_empty(int(places[-1]), x_work.dtype)
        product = None
    else:
        product = _aligned_empty(min(max(rows, 1), ROW_TILE) * min(max(classes, 1), PRODUCT_TILE), x_work.dtype)
    for (row_tile, cols), place in zip(tiles, places):
        buffer = product if kept is None else store[place:]
        tile = _logit_tile(x_work, linear_weight, None, row_tile, cols, buffer)
        if kept is not None:
            kept[(row_tile[0], cols[0])] = tile
        run_row_blocks(_cosine_tile_statistics, tile.shape[0], tile, row_tile[0], cols[0], cosines, partial, scratch)
    return partial, product, kept


def cosine_gradients(x_work, linear_weight, dtype, product, cosines, upstream, state, kept=None):
    """Pass 2: (v in float64, grad_linear_weight in ``dtype``): A per product tile
    (``_cosine_tile_gradient``), v = A W summed over the class tiles, and each class tile's
    u = A^T x reduced to its tangent part (``tangent_part``)."""

    def finish(cols, summed, out):
        tangent_part(summed, linear_weight[cols[0] : cols[1]], cosines.w_inverse[cols[0] : cols[1]], out)

    projected, grad_weight, _ = product_loop(x_work, linear_weight, None, dtype, product, _cosine_tile_gradient,
                                             (cosines, upstream, state), finish=finish, kept=kept)
    return projected, grad_weight


def tangent_part(projected, rows, inverse_norms, out):
    """out_i = p_i - (vhat_i . p_i) vhat_i for vhat_i = rows_i / |rows_i| (``_tangent_part``)."""
    run_row_blocks(_tangent_part, projected.shape[0], projected, rows, inverse_norms, out)
    return out


def margin_options(s, m1, m2, m3, reduction, precision, memory_budget):
    """The checked (s, m1, m2, m3, reduction, budget)."""
    s, m1, m2, m3 = _check_margins(s, m1, m2, m3)
    reduction = check_reduction("reduction", reduction)
    check_precision(precision)
    budget = check_real_scalar("memory_budget", memory_budget, integer=True, minimum=1)
    return s, m1, m2, m3, reduction, budget


def _linear_margin_cross_entropy(x, linear_weight, target, s, m1, m2, m3, reduction, memory_budget, precision,
                                 grad_output, write):
    s, m1, m2, m3, reduction, budget = margin_options(s, m1, m2, m3, reduction, precision, memory_budget)
    x = check_float_array("x", x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (rows, features), got shape {x.shape}")
    x, linear_weight, _ = features_and_weights(x, linear_weight, "x", "linear_weight")
    rows, features = x.shape
    if rows < 1:
        raise ValueError(f"x must have at least one row, got shape {x.shape}")
    classes = linear_weight.shape[0]
    targets = check_class_indices("target", target, (rows,), classes)
    upstream = row_scales(grad_output, reduction, rows, (rows,), per_row=True) if write else np.zeros(rows)
    dtype = x.dtype
    x_norms, w_norms = row_norms("x", x), row_norms("linear_weight", linear_weight)

    # the target's cosine, f(c) as a pair and f'(c) (``_cosine_margins.combined_margin_target``)
    high, low, slope = combined_margin_target(target_cosines(x, linear_weight, targets, x_norms, w_norms), s, m1,
                                              m2, m3, derivative_limit(dtype))
    x_work = np.ascontiguousarray(x, dtype=np.float64 if precision == "float64" else dtype)
    cosines = Cosines(targets, 1.0 / x_norms, 1.0 / w_norms, s)

    # pass 1: per row and product tile the non-target pairs, merged per row with the target
    partial, product, kept = cosine_statistics(x_work, linear_weight, cosines, budget if write else 0)
    losses = np.empty(rows)
    state = np.empty((rows, 4))
    run_row_blocks(_merge_margin_rows, rows, partial, high, low, losses, state)
    loss = reduce_losses(losses, reduction, (rows,), dtype, rows)
    if not write:
        return loss, None

    # pass 2: A per product tile; v = A W and u = A^T x in float64, then their tangent parts
    state[:, STATE_TARGET_FACTOR] = s * slope
    projected, grad_weight = cosine_gradients(x_work, linear_weight, dtype, product, cosines, upstream, state, kept)
    return loss, (tangent_part(projected, x, cosines.x_inverse, np.empty_like(x)), grad_weight)


def linear_margin_cross_entropy(x, linear_weight, target, *, s, m1=1.0, m2=0.0, m3=0.0, reduction="mean",
                                memory_budget=DEFAULT_MEMORY_BUDGET, precision="input"):
    r"""Margin cross-entropy of the cosines between features and class weights, without forming them.

    Equal to ``margin_cross_entropy(normalized_linear(x, linear_weight), target, s=s, m1=m1,
    m2=m2, m3=m3, reduction=reduction)``:

    .. math::
        \ell_i = -\log \frac{e^{s f(c_{iy_i})}}{e^{s f(c_{iy_i})} + \sum_{j \ne y_i} e^{s c_{ij}}},\quad
        c_{ij} = \frac{x_i \cdot W_j}{\|x_i\|\,\|W_j\|},\quad f(c) = \cos(m_1 \arccos c + m_2) - m_3

    The presets: NormFace (m2 = m3 = 0), CosFace / AM-Softmax (m3 > 0, e.g. s = 64,
    m3 = 0.35), ArcFace (m2 > 0, e.g. s = 64, m2 = 0.5, with InsightFace's fallback where
    theta + m2 > pi, as :func:`arcface`).  Computed one product tile of at most 1024 rows by
    2048 classes at a time (with the gradient, all kept for the backward pass when they fit in
    ``memory_budget``); the products x_i . W_j are BLAS's in the inputs' dtype (float32
    products for float32 inputs) or, with ``precision="float64"``, in float64; the target's
    cosine is a compensated dot product.
    Results do not depend on ``memory_budget`` or Numba's thread count (the module docstring);
    BLAS's own thread count can change the gradients' last bits (``docs/design.md``).

    Args:
        x: features, float32 or float64, shape (N, D); not modified.
        linear_weight: class weights (C, D) of ``x``'s dtype (a ``torch.nn.Linear``'s
            ``weight``); not modified.
        target: integer class indices (N,) in [0, C).
        s: the scale, > 0.
        m1, m2, m3: the multiplicative angular (m1 > 0), additive angular (0 <= m2 < pi)
            and additive cosine margins.
        reduction: "mean" (over the rows), "sum" or "none".
        memory_budget: bytes the chunk buffers may take (default 32 MiB), as
            :func:`linear_cross_entropy`'s: the forward takes one product tile whatever the
            budget; with the gradient the N x C products are kept for the backward pass when
            they fit in it, and recomputed otherwise.
        precision: "input" (default) or "float64", the dtype of the products.

    Returns:
        The loss in ``x``'s dtype: a NumPy scalar for "mean" and "sum", shape (N,) for "none".

    Raises:
        ValueError if a row of ``x`` or ``linear_weight`` has norm 0 (its cosines are undefined).

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import linear_margin_cross_entropy
        >>> x = np.array([[3.0, 4.0]])
        >>> W = np.array([[1.0, 0.0], [0.0, -2.0]])
        >>> print(f"{float(linear_margin_cross_entropy(x, W, np.array([0]), s=10.0, m3=0.3)):.6e}")
        1.670156e-05

    Reference: Deng et al. 2019 (ArcFace); Wang et al. 2018 (CosFace); Wang et al. 2017
    (NormFace); docs/proofs/linear_cross_entropy.md.
    """
    loss, _ = _linear_margin_cross_entropy(x, linear_weight, target, s, m1, m2, m3, reduction, memory_budget,
                                           precision, 1.0, False)
    return loss


def linear_margin_cross_entropy_forward_backward(x, linear_weight, target, *, s, m1=1.0, m2=0.0, m3=0.0,
                                                 reduction="mean", memory_budget=DEFAULT_MEMORY_BUDGET,
                                                 precision="input", grad_output=1.0):
    r""":func:`linear_margin_cross_entropy` and its gradients in ``x`` and ``linear_weight``.

    With g_ij = dL/dc_ij (:func:`margin_cross_entropy_forward_backward`'s) and
    A_ij = g_ij / (|x_i| |W_j|), never formed whole:

    .. math::
        v_i = \sum_j A_{ij} W_j,\quad u_j = \sum_i A_{ij} x_i,\qquad
        \frac{\partial L}{\partial x_i} = v_i - (\hat x_i \cdot v_i)\,\hat x_i,\quad
        \frac{\partial L}{\partial W_j} = u_j - (\hat W_j \cdot u_j)\,\hat W_j

    (:func:`normalized_linear_backward`'s gradients, docs/proofs/linear_cross_entropy.md).
    A is rounded once to the products' dtype; v and u are the tiles' BLAS products summed in
    float64, and the tangent parts are formed in float64 and rounded once.

    Args:
        x, linear_weight, target, s, m1, m2, m3, reduction, memory_budget, precision: as
            :func:`linear_margin_cross_entropy`.
        grad_output: dL/dloss: a real number ("mean", "sum"), or an array (N,) ("none").

    Returns:
        ``(loss, grad_input, grad_linear_weight)``, the gradients shaped like ``x`` and
        ``linear_weight`` in their dtype.
    """
    loss, gradients = _linear_margin_cross_entropy(x, linear_weight, target, s, m1, m2, m3, reduction,
                                                   memory_budget, precision, grad_output, True)
    return (loss,) + gradients
