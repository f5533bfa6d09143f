"""Exact references of the margin family (mpmath at 50 digits only).

``normalized_linear`` (cos = x_hat W_hat^T and its backward), the margin cross-entropies
on cosines (combined margin, NormFace, CosFace, ArcFace: :func:`exact_margin`),
L-Softmax / SphereFace (:func:`exact_large_margin`) and the center loss and its update
(:func:`exact_center`).  The definitions are the kernels' (``kernels/_cosine_margins.py``,
``docs/proofs/margins.md``); whole results are cached by their inputs
(``engine.cached_result``), as one input feeds a forward and a forward-backward entry.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np

from .engine import MpRow, cached_result, to_exact, to_mpf_matrix


def _mp_norm(vector):
    return mpmath.sqrt(mpmath.fdot(vector, vector))


def _softmax_row(logits):
    """(log-sum-exp, probabilities) of a row of finite mpf logits; probabilities as exp(z - lse)."""
    lse = MpRow(logits).lse
    return lse, [mpmath.exp(z - lse) for z in logits]




def margin_target_mp(c, dtype, m1, m2, m3):
    """(f(c), f'(c)) of the target's cosine ``c`` (an mpf) at the caller's mpmath precision, with
    the definitions of kernels/_cosine_margins.py: c clamped to [-1, 1]; with m1 = 1 and m2 > 0 the
    arc branch where c > cos(pi - m2), else c - m2 sin m2 - m3; f' at c clamped to [-c_max, c_max],
    c_max = nextafter(1, 0) in ``dtype`` (the kernel's input dtype)."""
    mult, add, sub = (mpmath.mpf(float(v)) for v in (m1, m2, m3))
    dtype = np.dtype(dtype)
    c_max = mpmath.mpf(float(np.nextafter(dtype.type(1), dtype.type(0))))
    c = min(max(c, mpmath.mpf(-1)), mpmath.mpf(1))
    c_slope = min(max(c, -c_max), c_max)
    if mult == 1 and (add == 0 or float(c) <= math.cos(math.pi - float(m2))):
        return c - add * mpmath.sin(add) - sub, mpmath.mpf(1)
    value = mpmath.cos(mult * mpmath.acos(c) + add) - sub
    return value, mult * mpmath.sin(mult * mpmath.acos(c_slope) + add) / mpmath.sqrt(1 - c_slope ** 2)


def margin_rows_mp(cos, target, s, m1, m2, m3, dtype=None):
    """Per-row losses and d loss_i / d cos_i (lists of mpf) of margin_cross_entropy, at the
    caller's mpmath precision; ``cos`` (rows, classes): an array, or rows of mpf (exact
    cosines) with ``dtype`` the kernel's input dtype; ``target`` (rows,).  The target's
    f and f' are :func:`margin_target_mp`'s."""
    scale = mpmath.mpf(float(s))
    dtype = cos.dtype if dtype is None else dtype
    rows = cos if isinstance(cos, list) else to_mpf_matrix(cos)
    losses, gradients = [], []
    for row, label in zip(rows, target):
        value, slope = margin_target_mp(row[label], dtype, m1, m2, m3)
        logits = [scale * v for v in row]
        logits[label] = scale * value
        lse, probabilities = _softmax_row(logits)
        losses.append(lse - logits[label])
        row_gradient = [scale * a for a in probabilities]
        row_gradient[label] = scale * slope * (probabilities[label] - 1)
        gradients.append(row_gradient)
    return losses, gradients


def exact_margin(cos, target, s, m1, m2, m3):
    """(mean loss, dcos) as Exact of margin_cross_entropy(reduction="mean", grad_output=1)
    (``margin_rows_mp``)."""

    def compute():
        rows = cos.shape[0]
        losses, gradients = margin_rows_mp(cos, target, s, m1, m2, m3)
        gradient = [g / rows for row_gradient in gradients for g in row_gradient]
        return to_exact([mpmath.fsum(losses) / rows], ()), to_exact(gradient, cos.shape)

    return cached_result((cos, target, s, m1, m2, m3), compute)


def _psi_mp(c, m):
    """psi from its definition in theta (arccos: an independent path from the kernel's Chebyshev form)
    and dpsi/dc = (-1)^k m U_{m-1}(c)."""
    theta = mpmath.acos(c)
    branch = min(int(mpmath.floor(m * theta / mpmath.pi)), m - 1)
    sign = -1 if branch % 2 else 1
    return sign * mpmath.cos(m * theta) - 2 * branch, sign * m * mpmath.chebyu(m - 1, c)


def _large_margin_state(x, W, target, m, lambda_, normalize_weights):
    """The mpmath quantities of the L-Softmax / SphereFace gradient, cached by the inputs.

    A dict: ``features`` and ``weights`` (w = W / |W| or W) as mpf rows, ``raw_norms`` |W_j|,
    ``w_norms`` (1 or |W_j|), ``losses``, ``gradient`` G = dL/dz per row with the target's
    column set to 0, and ``target_terms`` per row (G_iy, alpha, radial, |x_i|): the target
    logit's gradient is G_iy (alpha w_y + radial / |x_i|^2 x_i) in x and
    G_iy (alpha x_i + radial / |w_y|^2 w_y) in w (docs/proofs/margins.md#large-margin-target-logit-gradient).
    """

    def compute():
        features, raw = to_mpf_matrix(x), to_mpf_matrix(W)
        raw_norms = [_mp_norm(w) for w in raw]
        weights = [[v / n for v in w] for w, n in zip(raw, raw_norms)] if normalize_weights else raw
        w_norms = [mpmath.mpf(1)] * len(raw) if normalize_weights else raw_norms
        lam = mpmath.mpf(float(lambda_))
        rows = len(features)
        losses, gradient, target_terms = [], [], []
        for row, label in zip(features, target):
            norm = _mp_norm(row)
            logits = [mpmath.fdot(row, w) for w in weights]
            dot = logits[label]
            c = min(max(dot / (norm * w_norms[label]), mpmath.mpf(-1)), mpmath.mpf(1))
            psi, slope = _psi_mp(c, m)
            logits[label] = (lam * dot + norm * w_norms[label] * psi) / (1 + lam)
            lse, probabilities = _softmax_row(logits)
            losses.append(lse - logits[label])
            g = [a / rows for a in probabilities]
            g_target = (probabilities[label] - 1) / rows
            g[label] = mpmath.mpf(0)
            gradient.append(g)
            alpha = (lam + slope) / (1 + lam)
            radial = (psi - slope * c) * norm * w_norms[label] / (1 + lam)
            target_terms.append((g_target, alpha, radial, norm))
        return dict(features=features, weights=weights, raw_norms=raw_norms, w_norms=w_norms, losses=losses,
                    gradient=gradient, target_terms=target_terms)

    return cached_result(("large-margin-state", x, W, target, m, lambda_, normalize_weights), compute)


def exact_large_margin(x, W, target, m, lambda_, normalize_weights):
    """(mean loss, dx, dW) as Exact of large_margin_cross_entropy_forward_backward.

    G = dL/dz (the target column apart); dx_i = sum_{j != y} G_ij w_j + G_iy dz_y/dx_i and
    dw_j = sum_{i: y_i != j} G_ij x_i + sum_{i: y_i = j} G_iy dz_y/dw (w = W or W / |W|),
    with the target logit's gradient of docs/proofs/margins.md#large-margin-target-logit-gradient;
    SphereFace's dW through W / |W| by projection.
    """

    def compute():
        state = _large_margin_state(x, W, target, m, lambda_, normalize_weights)
        features, weights, gradient = state["features"], state["weights"], state["gradient"]
        w_norms, target_terms = state["w_norms"], state["target_terms"]
        rows, classes, dims = len(features), len(weights), len(features[0])
        columns = [[w[e] for w in weights] for e in range(dims)]
        dx = []
        for i, (row, label) in enumerate(zip(features, target)):
            g_target, alpha, radial, norm = target_terms[i]
            dx.extend(mpmath.fdot(gradient[i], columns[e])
                      + g_target * (alpha * weights[label][e] + radial / norm ** 2 * row[e]) for e in range(dims))
        feature_columns = [[row[e] for row in features] for e in range(dims)]
        dweights = []
        for j in range(classes):
            column = [gradient[i][j] for i in range(rows)]
            dweights.append([mpmath.fdot(column, feature_columns[e]) for e in range(dims)])
        for i, (row, label) in enumerate(zip(features, target)):
            g_target, alpha, radial, norm = target_terms[i]
            dweights[label] = [d + g_target * (alpha * row[e] + radial / w_norms[label] ** 2 * weights[label][e])
                               for e, d in enumerate(dweights[label])]
        if normalize_weights:
            for j, (unit, n) in enumerate(zip(weights, state["raw_norms"])):
                along = mpmath.fdot(unit, dweights[j])
                dweights[j] = [(dweights[j][e] - along * unit[e]) / n for e in range(dims)]
        return (to_exact([mpmath.fsum(state["losses"]) / rows], ()), to_exact(dx, x.shape),
                to_exact([v for w in dweights for v in w], W.shape))

    return cached_result((x, W, target, m, lambda_, normalize_weights), compute)


def units_and_norms(matrix):
    """(rows / their norms, the norms) of a matrix of mpf rows, at the caller's precision."""
    norms = [_mp_norm(v) for v in matrix]
    return [[v / n for v in row] for row, n in zip(matrix, norms)], norms


def normalized_linear_backward_mp(features, weights, upstream):
    """(dx, dW) flat (C order) lists of mpf of normalized_linear's backward: mpf rows of x, W and
    of the upstream gradient g = dL/dcos; dx_i = (P_i - (xhat_i . P_i) xhat_i) / |x_i| with
    P = g W_hat, and dW likewise with g^T X_hat."""
    (x_units, x_norms), (w_units, w_norms) = units_and_norms(features), units_and_norms(weights)
    dims = len(features[0])

    def tangent(projection, unit, norm):
        along = mpmath.fdot(unit, projection)
        return [(p - along * u) / norm for p, u in zip(projection, unit)]

    dx = []
    for i, unit in enumerate(x_units):
        projection = [mpmath.fdot(upstream[i], [w[e] for w in w_units]) for e in range(dims)]
        dx.extend(tangent(projection, unit, x_norms[i]))
    dW = []
    for j, unit in enumerate(w_units):
        column = [row[j] for row in upstream]
        projection = [mpmath.fdot(column, [u[e] for u in x_units]) for e in range(dims)]
        dW.extend(tangent(projection, unit, w_norms[j]))
    return dx, dW


def cosines_mp(features, weights):
    """The cosines x_i . W_j / (|x_i| |W_j|) of mpf rows, as rows of mpf, at the caller's precision."""
    x_units, w_units = units_and_norms(features)[0], units_and_norms(weights)[0]
    return [[mpmath.fdot(u, w) for w in w_units] for u in x_units]


def exact_normalized_linear(x, W, grad_cos=None):
    """cos as Exact, or (dx, dW) as Exact when ``grad_cos`` is given."""

    def compute():
        features, weights = to_mpf_matrix(x), to_mpf_matrix(W)
        if grad_cos is None:
            return to_exact([c for row in cosines_mp(features, weights) for c in row], (x.shape[0], W.shape[0]))
        dx, dW = normalized_linear_backward_mp(features, weights, to_mpf_matrix(grad_cos))
        return to_exact(dx, x.shape), to_exact(dW, W.shape)

    key = (x, W) if grad_cos is None else (x, W, grad_cos)
    return cached_result(key, compute)


def exact_center(x, target, centers, alpha=None):
    """(mean loss, dx, dcenters) as Exact, or the updated centers when ``alpha`` is given."""

    def compute():
        features, middles = to_mpf_matrix(x), to_mpf_matrix(centers)
        rows, dims = len(features), len(features[0])
        if alpha is not None:
            rate = mpmath.mpf(float(alpha))
            updated = [list(c) for c in middles]
            for j in set(int(t) for t in target):
                members = [i for i in range(rows) if target[i] == j]
                for e in range(dims):
                    total = mpmath.fsum(middles[j][e] - features[i][e] for i in members)
                    updated[j][e] = middles[j][e] - rate * total / (1 + len(members))
            return to_exact([v for c in updated for v in c], centers.shape)
        losses, dx = [], []
        dcenters = [[mpmath.mpf(0)] * dims for _ in middles]
        for i, label in enumerate(target):
            difference = [a - b for a, b in zip(features[i], middles[label])]
            losses.append(mpmath.fdot(difference, difference) / 2)
            dx.extend(d / rows for d in difference)
            dcenters[label] = [c - d / rows for c, d in zip(dcenters[label], difference)]
        return (to_exact([mpmath.fsum(losses) / rows], ()), to_exact(dx, x.shape),
                to_exact([v for c in dcenters for v in c], centers.shape))

    return cached_result((x, target, centers, alpha), compute)


# ---- term magnitudes of the gradients (the condition-aware error of ``metrics.py``) -----------------


def _unit_rows(matrix):
    """(rows / their norms, the norms) in float64."""
    matrix = np.asarray(matrix, dtype=np.float64)
    norms = np.sqrt((matrix * matrix).sum(axis=1, keepdims=True))
    return matrix / norms, norms


def _tangent_scale(projection_terms, unit, norm):
    """(Q + (|u| . Q) |u|) / |v|: the terms of (P - (u . P) u) / |v| for |P| <= Q termwise."""
    along = (np.abs(unit) * projection_terms).sum(axis=1, keepdims=True)
    return (projection_terms + along * np.abs(unit)) / norm


def normalized_linear_gradient_scales(x, W, grad_cos):
    """The term magnitudes of (dx, dW) of normalized_linear_backward, in float64.

    dx_i = (P_i - (x_hat_i . P_i) x_hat_i) / |x_i| with P = G W_hat, and dW likewise with
    G^T X_hat: each matrix product is bounded by the product of absolute values (|G| |W_hat|),
    the projection by the same with |x_hat|.
    """
    x_unit, x_norm = _unit_rows(x)
    w_unit, w_norm = _unit_rows(W)
    upstream = np.abs(np.asarray(grad_cos, dtype=np.float64))
    dx = _tangent_scale(upstream @ np.abs(w_unit), x_unit, x_norm)
    dW = _tangent_scale(upstream.T @ np.abs(x_unit), w_unit, w_norm)
    return dx, dW


def margin_gradient_scale(cos, target, s, m1, m2, m3):
    """The term magnitudes of dcos of margin_cross_entropy (mean, grad_output 1), in float64.

    dcos_ij = (s / N) a_ij off the target and (s / N) f'(c) (a_iy - 1) at it (a the
    softmax of the margin logits, f the target's margin function): the scales are
    (s / N) a_ij and (s / N) |f'(c)| (a_iy + 1).  Both are read off the exact gradient:
    a_ij = N |dcos_ij| / s, and with r = 1 - a_iy = sum_{j != y} a_ij the target's is
    |dcos_iy| (2 - r) / r; NaN where r is 0 in float64 (no term apart from the target's).
    """
    gradient = np.abs(exact_margin(cos, target, s, m1, m2, m3)[1].hi)
    rows = gradient.shape[0]
    chosen = (np.arange(rows), np.asarray(target))
    others = gradient.copy()
    others[chosen] = 0
    rest = others.sum(axis=1) * rows / float(s)  # r = 1 - a_y, exact sum of positive terms to float64
    scale = others
    with np.errstate(divide="ignore", invalid="ignore"):
        scale[chosen] = np.where(rest > 0, gradient[chosen] * (2 - rest) / rest, np.nan)
    return scale


def large_margin_gradient_scales(x, W, target, m, lambda_, normalize_weights):
    """The term magnitudes of (dx, dW) of large_margin_cross_entropy (mean), in float64.

    dx_i = sum_{j != y} G_ij w_j + G_iy (alpha w_y + radial / |x_i|^2 x_i) (the terms of
    :func:`_large_margin_state`): every product by its absolute values, and G_iy =
    (a_iy - 1) / N by its own terms, (a_iy + 1) / N.  dw_j likewise with the x_i; for
    SphereFace's W / |W| the projection as in :func:`normalized_linear_gradient_scales`.
    """
    state = _large_margin_state(x, W, target, m, lambda_, normalize_weights)
    rows = len(state["features"])
    target = np.asarray(target)
    others = np.abs(np.array([[float(g) for g in row] for row in state["gradient"]]))  # 0 at the target
    weights = np.array([[float(v) for v in w] for w in state["weights"]])
    w_norms = np.array([float(n) for n in state["w_norms"]])
    features = np.abs(np.asarray(x, dtype=np.float64))
    g_target, alpha, radial, x_norm = (np.array([float(v) for v in column]) for column in zip(*[
        (g + mpmath.mpf(2) / rows, abs(a), abs(r), n) for g, a, r, n in state["target_terms"]]))
    magnitudes = np.abs(weights)
    dx = others @ magnitudes + g_target[:, None] * (alpha[:, None] * magnitudes[target]
                                                    + (radial / x_norm**2)[:, None] * features)
    dw = others.T @ features
    np.add.at(dw, target, g_target[:, None] * (alpha[:, None] * features
                                                + (radial / w_norms[target] ** 2)[:, None] * magnitudes[target]))
    if normalize_weights:
        dw = _tangent_scale(dw, weights, np.array([[float(n)] for n in state["raw_norms"]]))
    return dx, dw


def center_gradient_scales(x, target, centers):
    """The term magnitudes of (dx, dcenters) of center_loss (mean), in float64:
    dx_i = (x_i - c_y) / N has (|x_i| + |c_y|) / N, and dc_j = -sum_{y_i = j} (x_i - c_j) / N
    the sum of the same over its rows."""
    x, centers = np.abs(np.asarray(x, dtype=np.float64)), np.abs(np.asarray(centers, dtype=np.float64))
    target = np.asarray(target)
    dx = (x + centers[target]) / x.shape[0]
    dcenters = np.zeros_like(centers)
    np.add.at(dcenters, target, dx)
    return dx, dcenters
