"""Margin cross-entropy on cosines: NormFace, CosFace (AM-Softmax), ArcFace, InsightFace's combination.

``margin_cross_entropy(cos, target, s, m1, m2, m3)`` and its presets ``normface``,
``cosface`` and ``arcface``: cross-entropy of the logits ``s cos_ij`` where the target's
logit is ``s f(cos_iy)``, ``f(c) = cos(m1 arccos c + m2) - m3``.  ``f`` and ``f'`` are
evaluated once per row (float64); the (rows, classes) work is the margin row kernel
(``_margin_rows.py``), which keeps the target apart from the block sums.

For float64 inputs the target's ``s f(c)`` is a pair (exact for NormFace and CosFace;
with an angular margin cos m and sin m are pairs too and the rounding of the square root
remains, up to about s ulp where f(c) cancels).  The measured errors against mpmath, per
regime, are the accuracy tables (``results/accuracy.md``; the largest over the regimes in
the README): with ``softmaxlab accuracy --kernels margin_cross_entropy normface cosface
arcface`` and their ``_forward_backward``, float32 loss and dcos within 0.51 ULP; float64
loss within 1.5 ULP and dcos within 5.1 ULP (cos m and sin m as pairs: ArcFace's dominant
logit would otherwise carry cos m's rounding, tens of ULP).  ArcFace's f'(c) near
theta = pi - m, where it tends to 0, is formed without cancellation
(``test_arcface_slope_near_pi_minus_m_has_no_cancellation``; within 3.8 ULP of mpmath).

Proof book: ``docs/proofs/margins.md`` (combined-margin derivative, margin cross-entropy
gradient, the ArcFace derivative at the ends and its fallback).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from functools import lru_cache

import numpy as np
from numba import njit

from ._config import JIT_OPTIONS, STRICT_FASTMATH
from ._driver.reduction import reduce_losses, row_scales
from ._margin_rows import margin_rows
from ._numerics.eft import two_product, two_sum
from ._validation import check_class_indices, check_float_array, check_real_scalar, check_reduction

__all__ = [
    "margin_cross_entropy",
    "margin_cross_entropy_forward_backward",
    "normface",
    "normface_forward_backward",
    "cosface",
    "cosface_forward_backward",
    "arcface",
    "arcface_forward_backward",
]

PAGE = "docs/proofs/margins.md"


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
def _sine_of_angle(c):
    """sqrt(1 - c^2) as sqrt((1 - c)(1 + c)): 1 - c is exact for c >= 1/2."""
    return math.sqrt((1.0 - c) * (1.0 + c))


@lru_cache(maxsize=64)
def cosine_and_sine_pairs(angle: float) -> tuple[float, float, float, float]:
    """(cos high, cos low, sin high, sin low): cos(angle) and sin(angle) as unevaluated pairs
    (high + low, to about 2**-106), from their Taylor series in ``decimal`` at 40 digits (the
    angle, a float, is exact there), each rounded twice to float64; cached per angle (about
    0.1 ms each)."""
    with localcontext() as context:
        context.prec = 40
        x = Decimal(angle)
        pairs = []
        for term, k in ((Decimal(1), 0), (x, 1)):  # cos: 1 - x^2/2! + ...; sin: x - x^3/3! + ...
            total = term
            while abs(term) > Decimal(10) ** -38:
                k += 2
                term = -term * x * x / (k * (k - 1))
                total += term
            high = float(total)
            pairs += [high, float(total - Decimal(high))]
        return tuple(pairs)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _arc_slope(c, cos_m, cos_m_low, sin_m):
    """ArcFace's f'(c) = cos m + sin m c / sqrt(1 - c^2) = sin(theta + m) / sin(theta).

    Where c < 0 and cos m > 0 the numerator sin theta cos m + c sin m cancels as theta -> pi - m
    (f' -> 0): where it has lost more than half of cos m it is written (cos m - c)(cos m + c) / (sin theta cos m - c sin m) (the
    product with the conjugate is cos^2 m - c^2), whose only small factor cos m + c is exact:
    c + cos m_high is exact (Sterbenz) and cos m's rounding is carried in cos_m_low.
    """
    sine = _sine_of_angle(c)
    slope = cos_m + sin_m * c / sine
    if c < 0.0 and cos_m > 0.0 and slope < 0.5 * cos_m:  # the sum cancels by more than half
        near, near_low = two_sum(cos_m, c)
        return (cos_m - c) * (near + (near_low + cos_m_low)) / (sine * cos_m - c * sin_m) / sine
    return slope


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _combined_margin_kernel(cosines, scale, m1, m2, m3, c_max, margin_pairs, high, low, slopes):
    """Per row: z_y = s f(c) as a pair (high + low) and f'(c), for the target cosines c.

    * m1 = 1, m2 = 0 (NormFace, CosFace): f(c) = c - m3, f' = 1; z_y is exact (two_sum, FMA).
    * m1 = 1, m2 > 0 (ArcFace, ArcFace + CosFace): f(c) = c cos m2 - sin m2 sqrt(1 - c^2) - m3
      where c > cos(pi - m2) (theta + m2 < pi), else InsightFace's fallback
      f(c) = c - m2 sin m2 - m3 (f' = 1), which keeps f increasing in c
      (docs/proofs/margins.md#arcface-fallback: the value jumps by cos m2 + m2 sin m2 - 1 there);
      f'(c) = cos m2 + sin m2 c / sqrt(1 - c^2) at min(c, c_max)
      (docs/proofs/margins.md#arcface-derivative-at-the-ends), without cancellation as
      theta -> pi - m2 (``_arc_slope``).  Products and sums are kept as pairs, cos m2 and
      sin m2 too (``cosine_and_sine_pairs``); what remains is the rounding of the square root.
    * otherwise: f(c) = cos(m1 arccos c + m2) - m3 and f'(c) = m1 sin(m1 theta + m2) / sin theta
      at c clamped to [-c_max, c_max] (docs/proofs/margins.md#combined-margin-derivative); no
      fallback.

    c is clamped to [-1, 1] first (NaN passes).  Scalar libm calls: one row at a time.
    """
    cos_m, cos_m_low, sin_m, sin_m_low = margin_pairs  # cos m2 and sin m2 as pairs (cosine_and_sine_pairs)
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
            # f(c) = c cos m - sin m sqrt((1 - c)(1 + c)) - m3, cos m and sin m as pairs
            sine = _sine_of_angle(c)
            first, first_low = two_product(c, cos_m)
            second, second_low = two_product(sin_m, sine)
            value, value_low = two_sum(first, -second)
            value, extra = two_sum(value, -m3)
            value_low += extra + (first_low - second_low) + (c * cos_m_low - sine * sin_m_low)
            slope = _arc_slope(c_slope, cos_m, cos_m_low, sin_m)
        else:
            value = math.cos(m1 * math.acos(c) + m2) - m3
            value_low = 0.0
            slope = m1 * math.sin(m1 * math.acos(c_slope) + m2) / _sine_of_angle(c_slope)
        product, product_low = two_product(scale, value)
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
    _combined_margin_kernel(cos_target, float(s), float(m1), float(m2), float(m3), float(c_max),
                            cosine_and_sine_pairs(float(m2)), high, low, slope)
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


def _margin_cross_entropy(cos, target, s, m1, m2, m3, reduction, grad_output, with_gradient):
    s, m1, m2, m3 = _check_margins(s, m1, m2, m3)
    reduction = check_reduction("reduction", reduction)
    cos, rows, targets = _cosine_rows(cos, target)
    count = rows.shape[0]
    upstream = (row_scales(grad_output, reduction, count, cos.shape[:-1], per_row=True) if with_gradient
                else np.zeros(count))
    high, low, slope = combined_margin_target(rows[np.arange(count), targets], s, m1, m2, m3,
                                              derivative_limit(rows.dtype))
    losses, gradient, _ = margin_rows(rows, targets, high, low, slope, upstream, s, with_gradient)
    loss = reduce_losses(losses, reduction, cos.shape[:-1], cos.dtype, count)
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
