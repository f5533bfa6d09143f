"""L-Softmax and A-Softmax (SphereFace): a multiplicative angular margin on features and weights.

``large_margin_cross_entropy(x, W, target, m, lambda_, normalize_weights)``: the logits
``x_i . W_j`` (``|x_i| cos_ij`` for SphereFace, whose weights are normalized), the
target's replaced by ``(lambda |W_y||x| cos + |W_y||x| psi(theta)) / (1 + lambda)`` with
``psi`` from the Chebyshev polynomial of ``cos(theta)`` (no arccos) and the target's
cosine from a compensated dot product; the margin row kernel (``_margin_rows.py``, scale 1)
gives dL/dlogits, and the true gradients in x and W follow by two matrix products and the
target's extra terms.

Proof book: ``docs/proofs/margins.md`` (psi and the Chebyshev form, the large-margin
target gradient).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._config import JIT_OPTIONS, STRICT_FASTMATH
from ._driver.reduction import reduce_losses, row_scales
from ._margin_rows import margin_rows
from ._normalized_linear import checked_norms, features_and_weights, product_over_classes, tangent_kernel, unit_rows
from ._numerics.eft import two_product, two_sum
from ._validation import check_class_indices, check_float_array, check_real_scalar, check_reduction

__all__ = ["large_margin_cross_entropy", "large_margin_cross_entropy_forward_backward"]

PAGE = "docs/proofs/margins.md"


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
            product, product_error = two_product(np.float64(features[j]), np.float64(weights[j]))
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
    x, W, _ = features_and_weights(x, W)
    count = x.shape[0]
    if count < 1:
        raise ValueError(f"x must have at least one row, got shape {x.shape}")
    targets = check_class_indices("target", target, (count,), W.shape[0])
    upstream = row_scales(grad_output, reduction, count, (count,), per_row=True) if with_gradient else np.zeros(count)

    x_norms = checked_norms("x", x)
    raw_w_norms = checked_norms("W", W)
    weights = unit_rows(W, raw_w_norms) if normalize_weights else W
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
    losses, gradient, target_gradients = margin_rows(
        logits, targets, target_logits, np.zeros(count), np.ascontiguousarray(alpha), upstream, 1.0, with_gradient,
        out=logits)
    loss = reduce_losses(losses, reduction, (count,), x.dtype, count)
    if not with_gradient:
        return loss
    # gradient = dL/dz with the target column times alpha: dx = G' W, dW = G'^T x, plus the radial terms
    dx = product_over_classes(gradient, weights)
    _add_scaled_self_kernel(dx, target_gradients * radial / x_norms ** 2, x)
    dW = np.matmul(gradient.T, x)
    _add_scaled_rows(dW, targets, target_gradients * radial / w_norms[targets] ** 2, weights)
    if normalize_weights:
        # through W_hat = W / |W|: dW = (q - (W_hat . q) W_hat) / |W|
        projected = dW
        dW = np.empty_like(projected)
        tangent_kernel(projected, weights, raw_w_norms, dW)
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
