"""L-Softmax and A-Softmax (SphereFace): a multiplicative angular margin on features and weights.

``large_margin_cross_entropy(x, W, target, m, lambda_, normalize_weights)``: the logits
``x_i . W_j`` (``|x_i| cos_ij`` for SphereFace, whose weights are normalized), the
target's replaced by ``(lambda |W_y||x| cos + |W_y||x| psi(theta)) / (1 + lambda)`` with
``psi`` from the Chebyshev polynomial of ``cos(theta)`` (no arccos) and the target's
cosine from a compensated dot product (from the half chord |x_hat -+ w_hat| near +-1).  The
logits are never formed whole: they go through the fused margin loss's product tiles
(``_linear_margin_cross_entropy.py``, as raw values with s = 1; SphereFace's as the products of
the raw W, scaled by 1 / |W_j| per class in float64), each tile reduced to its
rows' non-target pairs as BLAS writes it and, with the gradient, kept for the backward pass
when all fit in 32 MiB (recomputed otherwise); pass 2 turns each tile into dL/dlogits without
the target's entries, and the true gradients in x and W follow as the tiles' products (G W
summed in float64) and the target's terms, split into tangent and radial parts.

Proof book: ``docs/proofs/margins.md`` (psi and the Chebyshev form, the large-margin
target gradient).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._config import JIT_OPTIONS, STRICT_FASTMATH
from ._driver.reduction import reduce_losses, row_scales
from ._driver.threads import run_row_blocks
from ._linear_cross_entropy import DEFAULT_MEMORY_BUDGET, product_loop
from ._linear_margin_cross_entropy import (STATE_TARGET_FACTOR, STATE_TARGET_MINUS_ONE, Cosines,
                                           _cosine_tile_gradient, _merge_margin_rows, cosine_statistics,
                                           tangent_part)
from ._normalized_linear import checked_norms, compensated_dot, features_and_weights
from ._numerics.eft import fma, two_product
from ._validation import check_class_indices, check_float_array, check_real_scalar, check_reduction

__all__ = ["large_margin_cross_entropy", "large_margin_cross_entropy_forward_backward"]

PAGE = "docs/proofs/margins.md"


def psi_and_slope(c, m, sine_squared=None):
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
    if sine_squared is None:
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


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _target_dots_rows(first, last, part, x, W, targets, out):
    # out_i = x_i . W_{y_i} by Dot2 (compensated_dot).  N dot products only: the target's cosine
    # enters psi, whose slope m^2 at c = 1 would amplify a BLAS rounding 16-fold.
    for i in range(first, last):
        out[i] = compensated_dot(x[i], W[targets[i]])


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _target_chords_rows(first, last, part, x, W, targets, x_norms, w_norms, minus, plus):
    # minus_i = |x_hat - w_hat|^2 = 2 (1 - c),  plus_i = |x_hat + w_hat|^2 = 2 (1 + c),  w = W_{y_i}:
    # 1 -+ c from these has an absolute error of about u |x_hat -+ w_hat| (c itself from the
    # dot product: about u), which matters where c is near +-1 and psi' = +-m^2
    for i in range(first, last):
        features = x[i]
        weights = W[targets[i]]
        x_norm = x_norms[i]
        w_norm = w_norms[targets[i]]
        below = 0.0
        above = 0.0
        for j in range(features.shape[0]):
            x_hat = np.float64(features[j]) / x_norm
            w_hat = np.float64(weights[j]) / w_norm
            below += (x_hat - w_hat) * (x_hat - w_hat)
            above += (x_hat + w_hat) * (x_hat + w_hat)
        minus[i] = below
        plus[i] = above


def _target_cosines(x, W, targets, x_norms, w_norms, raw_dot):
    """(c, (1 - c)(1 + c)) of the targets: c = x.w / (|x||w|) (Dot2) where |c| <= 1/2, else from
    the half chord, c = 1 - |x_hat - w_hat|^2 / 2 (c > 1/2) or |x_hat + w_hat|^2 / 2 - 1 (c < -1/2)."""
    minus, plus = np.empty(x.shape[0]), np.empty(x.shape[0])
    run_row_blocks(_target_chords_rows, x.shape[0], x, W, targets, x_norms, w_norms, minus, plus, elements=x.size)
    dot_cosine = np.clip(raw_dot / (x_norms * w_norms[targets]), -1.0, 1.0)
    near_one, near_minus_one = minus < 1.0, plus < 1.0
    one_minus = np.where(near_one, 0.5 * minus, np.where(near_minus_one, 2.0 - 0.5 * plus, 1.0 - dot_cosine))
    one_plus = np.where(near_one, 2.0 - 0.5 * minus, np.where(near_minus_one, 0.5 * plus, 1.0 + dot_cosine))
    cosine = np.where(near_one, 1.0 - 0.5 * minus, np.where(near_minus_one, 0.5 * plus - 1.0, dot_cosine))
    return np.clip(cosine, -1.0, 1.0), np.maximum(one_minus, 0.0) * np.maximum(one_plus, 0.0)


def _add_target_terms_x(dx, x, W, targets, x_norms, w_norms, cosine, coefficients, alpha, rho):
    run_row_blocks(_target_terms_x_rows, dx.shape[0], dx, x, W, targets, x_norms, w_norms, cosine, coefficients,
                   alpha, rho, elements=dx.size)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _target_terms_x_rows(first, last, part, dx, x, W, targets, x_norms, w_norms, cosine, coefficients, alpha, rho):
    # (rows first..last; run_row_blocks: a prange here ran right after the BLAS products)
    # dx_i += coefficients_i (alpha_i (w_hat - c x_hat) + rho_i x_hat),  w = W_{y_i}: the target
    # logit's gradient split into its tangent and radial parts (no cancellation between them).
    # w_hat - c x_hat = (r w - c x) / |x|, r = |x| / |w|, with r w as an exact pair and one
    # rounding of the (small, where x ~ w) difference: from the rounded x_hat and w_hat it
    # would carry an absolute error of u, as large as itself where x is a multiple of w.
    for i in range(first, last):
        line = dx[i]
        features = x[i]
        weights = W[targets[i]]
        x_norm = x_norms[i]
        w_norm = w_norms[targets[i]]
        c = cosine[i]
        coefficient = coefficients[i]
        slope = alpha[i]
        radial = rho[i]
        ratio = x_norm / w_norm
        for j in range(line.shape[0]):
            feature = np.float64(features[j])
            scaled, scaled_low = two_product(ratio, np.float64(weights[j]))
            tangent = (fma(-c, feature, scaled) + scaled_low) / x_norm
            line[j] = np.float64(line[j]) + coefficient * (slope * tangent + radial * (feature / x_norm))


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _add_target_terms_w(dW, x, W, targets, x_norms, w_norms, cosine, coefficients, alpha, rho):
    # dW_{y_i} += coefficients_i (alpha_i (x_hat - c w_hat) + rho_i w_hat), in row order
    # (sequential: deterministic); x_hat - c w_hat = (x - (c r) w) / |x| with one rounding of
    # the difference (the rounding of c r is along w: removed by SphereFace's projection)
    for i in range(targets.shape[0]):
        target = targets[i]
        line = dW[target]
        features = x[i]
        weights = W[target]
        x_norm = x_norms[i]
        w_norm = w_norms[target]
        c = cosine[i]
        coefficient = coefficients[i]
        slope = alpha[i]
        radial = rho[i]
        along = c * (x_norm / w_norm)
        for j in range(line.shape[0]):
            weight = np.float64(weights[j])
            tangent = fma(-along, weight, np.float64(features[j])) / x_norm
            line[j] = np.float64(line[j]) + coefficient * (slope * tangent + radial * (weight / w_norm))


def _large_margin(x, W, target, m, lambda_, normalize_weights, reduction, grad_output, with_gradient):
    m, lambda_, normalize_weights = _check_large_margin(m, lambda_, normalize_weights)
    reduction = check_reduction("reduction", reduction)
    x = check_float_array("x", x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, features), got shape {x.shape}")
    x, W, _ = features_and_weights(x, W)
    count = x.shape[0]
    if count < 1:
        raise ValueError(f"x must have at least one row, got shape {x.shape}")
    targets = check_class_indices("target", target, (count,), W.shape[0])
    upstream = row_scales(grad_output, reduction, count, (count,), per_row=True) if with_gradient else np.zeros(count)

    x_norms = checked_norms("x", x)
    raw_w_norms = checked_norms("W", W)
    w_norms = np.ones(W.shape[0]) if normalize_weights else raw_w_norms
    # SphereFace's logits x_i . W_j / |W_j|: the products of the raw W, each class scaled by
    # 1 / |W_j| in float64 as its tile is reduced (no rounded copy of W / |W|)
    w_inverse = 1.0 / raw_w_norms if normalize_weights else np.ones(W.shape[0])

    # the target logit (docs/proofs/margins.md#large-margin-target-logit-gradient):
    # z_y = (lambda w.x + |w||x| psi(c)) / (1 + lambda),  c = w.x / (|w||x|),  w = W_y
    # (W_y / |W_y| for SphereFace: its |w| is 1 and w.x = |x| c).  c from the raw W_y and a
    # compensated dot product, not from the BLAS product.
    raw_dot = np.empty(count)
    run_row_blocks(_target_dots_rows, count, x, W, targets, raw_dot, elements=x.size)
    cosine, sine_squared = _target_cosines(x, W, targets, x_norms, raw_w_norms, raw_dot)
    magnitude = x_norms * w_norms[targets]
    dot = x_norms * cosine if normalize_weights else raw_dot
    psi, psi_slope = psi_and_slope(cosine, m, sine_squared)
    target_logits = (lambda_ * dot + magnitude * psi) / (1.0 + lambda_)
    # dz_y/dx = |w| (alpha (w_hat - c x_hat) + rho x_hat),  dz_y/dw = |x| (alpha (x_hat - c w_hat) + rho w_hat):
    # alpha = (lambda + psi') / (1 + lambda),  rho = (lambda c + psi) / (1 + lambda) = z_y / (|w||x|)
    # (docs/proofs/margins.md#large-margin-target-logit-gradient, regrouped into the tangent and
    # radial parts: as alpha w + beta x the two terms are up to m^2 times the result and cancel)
    alpha = (lambda_ + psi_slope) / (1.0 + lambda_)
    rho = (lambda_ * cosine + psi) / (1.0 + lambda_)

    # the logits x_i . W_j (|x_i| cos_ij for SphereFace), one product tile at a time, reduced
    # as the fused margin loss reduces its cosines: unclamped values, row factors of 1, class
    # factors w_inverse, s = 1; the target's entry of dL/dlogits is 0 (slope 0), its dL/dz_y
    # taken per row apart
    values = Cosines(targets, np.ones(count), w_inverse, 1.0, False)
    partial, product, kept = cosine_statistics(x, W, values, DEFAULT_MEMORY_BUDGET if with_gradient else 0)
    losses = np.empty(count)
    state = np.empty((count, 4))
    run_row_blocks(_merge_margin_rows, count, partial, target_logits, np.zeros(count), losses, state)
    loss = reduce_losses(losses, reduction, (count,), x.dtype, count)
    if not with_gradient:
        return loss
    state[:, STATE_TARGET_FACTOR] = 0.0
    target_gradients = upstream * state[:, STATE_TARGET_MINUS_ONE]
    # dx = G W + the target terms (G W summed over the product tiles in float64, rounded once
    # with the terms), dW = G^T x + the target terms (G without its target entries); for
    # SphereFace the tiles carry G_ij / |W_j|, so that these are G (W / |W|) and dW / |W|
    dx, dW, _ = product_loop(x, W, None, x.dtype, product, _cosine_tile_gradient, (values, upstream, state),
                             kept=kept)
    _add_target_terms_x(dx, x, W, targets, x_norms, raw_w_norms, cosine,
                        target_gradients * w_norms[targets], alpha, rho)
    dx = dx.astype(x.dtype, copy=False)
    # SphereFace: the radial part rho w_hat is removed by the projection through W / |W| below
    _add_target_terms_w(dW, x, W, targets, x_norms, raw_w_norms, cosine,
                        target_gradients * x_norms * w_inverse[targets], alpha,
                        np.zeros(count) if normalize_weights else rho)
    if normalize_weights:
        # through W_hat = W / |W|, with q / |W| in dW: dW = (q - (W_hat . q) W_hat) / |W|
        dW = tangent_part(dW, W, w_inverse, np.empty_like(dW))
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

    Accuracy: the non-target logits are BLAS products (one per tile) in the input dtype.  The
    target's cosine is a compensated (Dot2) dot product in float64 from the raw W_y where
    |c| <= 1/2, and the half chord c = 1 - |x_hat - w_hat|^2 / 2 (or |x_hat + w_hat|^2 / 2 - 1)
    beyond, because psi's slope m^2 at c = +-1 would amplify a rounded cosine 16-fold; psi
    takes sin^2 = (1-c)(1+c) from the same chords, so that T_m(c) near +-1 does not cancel.
    The target's gradient is split into its tangent and radial parts
    (:func:`large_margin_cross_entropy_forward_backward`).  Measured against mpmath
    (``softmaxlab accuracy --kernels large_margin_cross_entropy_forward_backward``, SphereFace
    m = 4, 32 x 1000, D = 16, on an Intel Xeon), float32 / float64: loss within 0.37 / 0.99
    ULP; the largest error of dx 2.0 / 2.2 (normal_x3) and 27 / 34 (dominant, x = 3 W_y) ULP
    of its row's largest value, of dW 12 / 11 and 26 / 31 (the float64 figures with 512-bit
    vectors; where LLVM keeps 256-bit vectors the float64 sums add in another order: dx 2.8
    and 40, dW 11 and 31).

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

    With G = dL/dz (per product tile, :math:`G_{ij} = g_i (a_{ij} - \delta_{jy_i})`):

    .. math::
        dx_i = \sum_{j \ne y_i} G_{ij} W_j + G_{iy}\|W_y\|\,(\alpha_i t_i + \rho_i \hat x_i),\qquad
        dW_j = \sum_{i: y_i \ne j} G_{ij} x_i + \sum_{i: y_i = j} G_{iy}\|x_i\|\,(\alpha_i t'_i + \rho_i \hat W_j)

    with the tangent parts :math:`t = \hat W_y - c\,\hat x`, :math:`t' = \hat x - c\,\hat W_y`,
    :math:`\alpha = (\lambda + \psi')/(1+\lambda)`, :math:`\rho = (\lambda c + \psi)/(1+\lambda)`
    (the proof book's :math:`\alpha w + \beta x`, regrouped: written that way the two terms are up
    to m^2 times the result and cancel) and
    :math:`\psi' = (-1)^k T_m'(c)`, a polynomial (finite at c = +-1).  For SphereFace the
    gradient in the normalized weights is carried through ``W / |W|`` by projection.  The
    original SphereFace code back-propagates a normalized pseudo-gradient instead; this is
    the gradient of the loss as defined (checked against autograd and central differences).

    Returns:
        (loss, dx, dW), ``x``'s dtype, dx (N, D), dW (C, D).

    Reference: Liu et al. 2016, 2017; docs/proofs/margins.md#large-margin-target-logit-gradient.
    """
    return _large_margin(x, W, target, m, lambda_, normalize_weights, reduction, grad_output, True)
