"""Exact references of the fused linear cross-entropy: the logits x W^T + b taken exactly.

``exact_linear_cross_entropy`` (mpmath at 50 digits): every logit z_ij = sum_k x_ik W_jk
+ b_j is an exact sum of exact products (a float32 or float64 product has at most 106
bits, the 166 bits of 50 digits hold a sum of them), soft-capped (c tanh(z / c)) at 50
digits, then the loss and G = dloss/dz of :func:`losses.cross_entropy_mp` (z-loss
included), G times the soft cap's 1 - tanh^2, and dx = G W, dW = G^T x, db = sum_i G_i,
again as exact sums.  Its cost is about 3 N C D products at 50 digits: the accuracy shapes.

``float64_linear_cross_entropy``: for the shapes mpmath cannot reach (a row of 2^20
classes), float32 inputs only: the logits as float64 dot products of exact float64
products (relative error at most D u_64 of the sum of |x_ik W_jk|, below 1e-12 float32
ULP for D <= 512), the loss from the long-double engine's cross-entropy
(``losses._longdouble_cross_entropy``), dx and dW as float64 matrix products of the
long-double G rounded to float64.  Every step's error is below 1e-6 of a float32 ULP of the
result (the condition of the products aside, which is the kernel's too), so it serves as
the exact value for float32 outputs; it is not used for float64 outputs.

``exact_linear_margin_cross_entropy`` (mpmath at 50 digits): the fused margin loss on exact
cosines: x_i . W_j / (|x_i| |W_j|) from exact sums and 50-digit norms, then the margin
family's own references on them (``margins.margin_rows_mp``: the loss and g = dL/dcos;
``margins.normalized_linear_backward_mp``: dx and dW through the normalizations).

``float64_linear_margin_cross_entropy``: the same for float32 inputs at any size.  The
cosines as float64 dot products over float64 norms (an error of at most (D + 2) u_64 = 2e-15
for D <= 16, the accuracy shapes' D), the target's f(c) and f'(c) at 50 digits
(``margins.margin_target_mp``, one per row), the logits s c and s f(c_y) rounded to float64
(an absolute error of at most s (D + 3) u_64 = 1.4e-13 at s = 64: a relative change below
3e-13 of every probability), the loss and dL/dz from the long-double cross-entropy, and
A = s dL/dz (f'(c_y) at the target) / (|x_i| |W_j|) with its products and tangent parts in
float64 (a relative error of at most (C + D + 8) u_64 of their terms, 1.2e-10 for a row of
2^20 classes).  Every error is below 0.01 of a float32 ULP of the result's terms.

``linear_margin_gradient_scales``: the term magnitudes of dx and dW (the condition-aware
error of ``metrics.py``), normalized_linear_backward's for the reference's dL/dcos.
"""

from __future__ import annotations

import mpmath
import numpy as np

from ..metrics import Exact
from .engine import LONGDOUBLE_ENGINE, MPMATH_DIGITS, MPMATH_ENGINE, cached_result, to_exact, to_mpf, to_mpf_matrix
from .losses import cross_entropy_mp
from .margins import (
    cosines_mp,
    margin_rows_mp,
    margin_target_mp,
    normalized_linear_backward_mp,
    normalized_linear_gradient_scales,
)


def _products(left, right):
    """rows of left (n x d) times rows of right (m x d), transposed: n x m exact sums (mpf)."""
    return [[mpmath.fsum(a * b for a, b in zip(row, column)) for column in right] for row in left]


def exact_linear_cross_entropy(x, linear_weight, target, *, linear_bias=None, weight=None, ignore_index=-100,
                               reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None, grad_output=1.0):
    """(loss, dx, dW[, db]) of ``kernels.linear_cross_entropy_forward_backward`` as Exact pairs."""
    rows, features = np.shape(x)
    classes = np.shape(linear_weight)[0]
    with mpmath.workdps(MPMATH_DIGITS):
        inputs = to_mpf_matrix(x)
        weights = to_mpf_matrix(linear_weight)
        logits = _products(inputs, weights)
        if linear_bias is not None:
            bias = [to_mpf(value) for value in linear_bias]
            logits = [[value + b for value, b in zip(row, bias)] for row in logits]
        slopes = None
        if softcap is not None:
            cap = to_mpf(softcap)
            tanhs = [[mpmath.tanh(value / cap) for value in row] for row in logits]
            logits = [[cap * t for t in row] for row in tanhs]
            slopes = [[1 - t * t for t in row] for row in tanhs]
        loss, grads = cross_entropy_mp(logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                                       label_smoothing=label_smoothing, grad_output=grad_output, z_loss=z_loss)
        if slopes is not None:
            grads = [[g * s for g, s in zip(row, slope)] for row, slope in zip(grads, slopes)]
        columns = [list(column) for column in zip(*weights)]  # W^T: features x classes
        dx = _products(grads, columns)
        grads_t = [list(column) for column in zip(*grads)]
        inputs_t = [list(column) for column in zip(*inputs)]
        dW = _products(grads_t, inputs_t)
        outputs = [loss, to_exact([v for row in dx for v in row], (rows, features)),
                   to_exact([v for row in dW for v in row], (classes, features))]
        if linear_bias is not None:
            outputs.append(to_exact([mpmath.fsum(column) for column in grads_t], (classes,)))
    return tuple(outputs)


def float64_linear_cross_entropy(x, linear_weight, target, *, grad_output=1.0, reduction="mean"):
    """(loss, dx, dW) for float32 inputs with the default options, at any size (see the module docstring)."""
    from .losses import _longdouble_cross_entropy

    x = np.asarray(x)
    if x.dtype != np.float32:
        raise NotImplementedError(f"the float64 reference measures float32 outputs only, got {x.dtype} inputs")
    wide_x = x.astype(np.float64)
    wide_w = np.asarray(linear_weight).astype(np.float64)
    logits = wide_x @ wide_w.T
    loss, grad = _longdouble_cross_entropy(logits, np.asarray(target), -100, reduction, grad_output)
    g = grad.hi
    dx, dW = g @ wide_w, g.T @ wide_x
    zero = np.zeros
    return (loss, Exact(dx, zero(dx.shape), LONGDOUBLE_ENGINE), Exact(dW, zero(dW.shape), LONGDOUBLE_ENGINE))


def _linear_margin_mp(x, linear_weight, target, s, m1, m2, m3):
    """(mean loss, dx, dW, dL/dcos) as Exact: the margin references on exact cosines, cached."""

    def compute():
        features, weights = to_mpf_matrix(x), to_mpf_matrix(linear_weight)
        losses, gradients = margin_rows_mp(cosines_mp(features, weights), target, s, m1, m2, m3, dtype=x.dtype)
        rows = len(losses)
        upstream = [[g / rows for g in row] for row in gradients]
        dx, dW = normalized_linear_backward_mp(features, weights, upstream)
        return (to_exact([mpmath.fsum(losses) / rows], ()), to_exact(dx, x.shape),
                to_exact(dW, linear_weight.shape), to_exact([g for row in upstream for g in row], (rows, len(weights))))

    return cached_result(("linear-margin", x, linear_weight, target, s, m1, m2, m3), compute)


def exact_linear_margin_cross_entropy(x, linear_weight, target, s, m1, m2, m3):
    """(mean loss, dx, dW) as Exact of ``kernels.linear_margin_cross_entropy_forward_backward``
    (reduction "mean", grad_output 1): the margin references on exact cosines."""
    return _linear_margin_mp(x, linear_weight, target, s, m1, m2, m3)[:3]


def _tangent_part(vectors, matrix, norms):
    """v - (u . v) u per row, u = the row of ``matrix`` over its norm, in float64."""
    units = matrix / norms[:, None]
    return vectors - (units * vectors).sum(axis=1, keepdims=True) * units


def _float64_margin_upstream(x, linear_weight, target, s, m1, m2, m3):
    """(mean loss as Exact, dL/dcos in float64) of float32 inputs: the first steps of
    :func:`float64_linear_margin_cross_entropy` (the module docstring)."""
    from .losses import _longdouble_cross_entropy

    if x.dtype != np.float32:
        raise NotImplementedError(f"the float64 reference measures float32 outputs only, got {x.dtype} inputs")
    wide_x, wide_w = x.astype(np.float64), linear_weight.astype(np.float64)
    x_norms, w_norms = np.linalg.norm(wide_x, axis=1), np.linalg.norm(wide_w, axis=1)
    cosines = np.clip(wide_x @ wide_w.T / x_norms[:, None] / w_norms, -1.0, 1.0)
    with mpmath.workdps(MPMATH_DIGITS):  # the target's cosine from exact sums, its f and f' at 50 digits
        targets = [margin_target_mp(cosines_mp(to_mpf_matrix(x[[i]]), to_mpf_matrix(linear_weight[[label]]))[0][0],
                                    x.dtype, m1, m2, m3) for i, label in enumerate(target)]
    chosen = (np.arange(len(target)), target)
    logits = float(s) * cosines
    logits[chosen] = [float(s) * float(value) for value, _ in targets]
    loss, grad = _longdouble_cross_entropy(logits, target, -100, "mean", 1.0)
    upstream = float(s) * grad.hi  # dL/dc: s dL/dz, times f'(c) at the target
    upstream[chosen] *= [float(slope) for _, slope in targets]
    return loss, upstream


def float64_linear_margin_cross_entropy(x, linear_weight, target, s, m1, m2, m3):
    """(mean loss, dx, dW) for float32 inputs at any size (see the module docstring)."""
    x, linear_weight, target = np.asarray(x), np.asarray(linear_weight), np.asarray(target)
    loss, upstream = _float64_margin_upstream(x, linear_weight, target, s, m1, m2, m3)
    wide_x, wide_w = x.astype(np.float64), linear_weight.astype(np.float64)
    x_norms, w_norms = np.linalg.norm(wide_x, axis=1), np.linalg.norm(wide_w, axis=1)
    scaled = upstream / x_norms[:, None] / w_norms  # A
    dx = _tangent_part(scaled @ wide_w, wide_x, x_norms)
    dW = _tangent_part(scaled.T @ wide_x, wide_w, w_norms)
    zero = np.zeros
    return (loss, Exact(dx, zero(dx.shape), LONGDOUBLE_ENGINE), Exact(dW, zero(dW.shape), LONGDOUBLE_ENGINE))


def linear_margin_gradient_scales(x, linear_weight, target, s, m1, m2, m3, engine=MPMATH_ENGINE):
    """The term magnitudes of (dx, dW) of the fused margin loss (mean), in float64: those of
    normalized_linear_backward (``margins.normalized_linear_gradient_scales``) for its upstream
    gradient dL/dcos, the mpmath reference's, or the float64 one's for the long-double engine."""
    x, linear_weight, target = np.asarray(x), np.asarray(linear_weight), np.asarray(target)
    if engine == LONGDOUBLE_ENGINE:
        upstream = _float64_margin_upstream(x, linear_weight, target, s, m1, m2, m3)[1]
    else:
        upstream = _linear_margin_mp(x, linear_weight, target, s, m1, m2, m3)[3].hi
    return normalized_linear_gradient_scales(x, linear_weight, upstream)


__all__ = ["exact_linear_cross_entropy", "float64_linear_cross_entropy", "exact_linear_margin_cross_entropy",
           "float64_linear_margin_cross_entropy", "linear_margin_gradient_scales"]
