"""Every ``*_forward_backward`` gradient against central differences of its loss, in float64.

For each loss the scalar checked is phi(x) = sum_i g_i loss_i(x), g the upstream gradient
of the drawn reduction (what the fused call's gradient is the derivative of).  Inputs are
small (a few rows and classes) and moderate (standard normal, x1 or x3; cosines in
[-0.8, 0.8]; features of norm in [0.5, 2]), and kept away from the points where a loss is
not smooth: the multi-class hinge's kinks, ArcFace's fallback switch, cos = +-1, and
SphereFace's branch thresholds cos(j pi / m).

``checks.assert_matches_central_differences`` picks the step and the tolerance from a
bound M3 on the third derivative along each coordinate and the size F of the terms the
loss is computed from (truncation h^2 M3 / 6 plus rounding 64 U64 F / h); each test
derives its M3 next to it.  The softmax-loss bound ``softmax_loss_third_derivative`` is
derived in ``checks.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from softmaxlab import kernels

from .checks import THIRD_LSE, assert_matches_central_differences, run_loss, softmax_loss_third_derivative, unmodified
from .strategies import class_arrays, class_indices, probability_rows, row_scales, seeds, upstream, with_layout

pytestmark = pytest.mark.usefixtures("one_numba_thread")

SMALL_LOGITS = class_arrays(regimes=("normal",), dtype=np.float64, classes=st.integers(1, 6), max_rows=4,
                            last_axis=True)
SMOOTHING = st.sampled_from([0.0, 0.1]) | st.floats(0.0, 1.0)
LARGEST_STEP = 2.0**-8  # checks.choose_step never takes a larger one


def _objective(function, grad_output, *fixed_after, **options):
    """phi(v) = sum_i g_i loss_i(v, *fixed_after): what the fused gradient is the derivative of."""
    weights = np.asarray(grad_output, dtype=np.float64)
    return lambda value: float(np.sum(weights * np.asarray(function(value, *fixed_after, **options), dtype=np.float64)))


def _per_entry(case, per_row: np.ndarray) -> np.ndarray:
    """A per-row bound repeated over the classes, arranged as the case's input."""
    return case.like(np.repeat(per_row[:, None], case.classes, axis=1))


def _spread(rows: np.ndarray) -> np.ndarray:
    return rows.max(axis=1) - rows.min(axis=1)


# ---- softmax cross-entropy family ----------------------------------------------------------------


@given(data=st.data())
def test_cross_entropy_gradient_matches_central_differences(data):
    case = data.draw(SMALL_LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    batch, classes = case.x.shape[:-1], case.classes
    probabilities = data.draw(st.booleans(), label="probability targets")
    weight = rng.uniform(0.1, 3.0, classes) if data.draw(st.booleans(), label="weighted") else None
    smoothing = data.draw(SMOOTHING, label="label_smoothing")
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    class_weight = np.ones(classes) if weight is None else weight
    if probabilities:
        target = case.like(probability_rows(rng, case.rows.shape, np.float64))
        p = case.rows_of(target)
        target_totals = (class_weight * ((1.0 - smoothing) * p + smoothing / classes)).sum(axis=1)
        denominator = case.rows.shape[0]
    else:
        target = class_indices(rng, batch, classes)
        labels = target.reshape(-1)
        target_totals = (1.0 - smoothing) * class_weight[labels] + smoothing * class_weight.sum() / classes
        denominator = class_weight[labels].sum() if weight is not None else labels.size
    options = dict(weight=weight, label_smoothing=smoothing)
    _, _, (grad,) = run_loss(kernels.cross_entropy, (case.x, target), options, reduction, grad_output)
    # L_i = sum_c t_c (LSE - z_c): d^3 L_i / dz_j^3 = TW_i a_j (1 - a_j)(1 - 2 a_j) <= TW_i / (6 sqrt 3)
    scales = np.abs(row_scales(reduction, grad_output, batch, denominator)) * target_totals
    magnitude = float(np.sum(scales * (_spread(case.rows) + math.log(classes) + 1.0)))
    objective = _objective(kernels.cross_entropy, grad_output, target, reduction=reduction, **options)
    assert_matches_central_differences(objective, case.x, grad, _per_entry(case, scales * THIRD_LSE), magnitude)


@given(data=st.data())
def test_distillation_gradient_matches_central_differences(data):
    case = data.draw(SMALL_LOGITS, label="student")
    rng = data.draw(seeds(), label="rng")
    batch, classes = case.x.shape[:-1], case.classes
    teacher_rows = 3.0 * rng.standard_normal(case.rows.shape)
    teacher = case.like(teacher_rows)
    hard = data.draw(st.booleans(), label="with target")
    target = (class_indices(rng, batch, classes),) if hard else ()
    temperature = data.draw(st.sampled_from([1.0, 4.0]) | st.floats(0.5, 8.0), label="temperature")
    alpha = data.draw(st.sampled_from([0.0, 0.9, 1.0]) | st.floats(0.0, 1.0), label="alpha")
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    options = dict(temperature=temperature, alpha=alpha)
    _, _, (grad,) = run_loss(kernels.distillation_loss, (case.x, teacher) + target, options, reduction, grad_output)
    # soft c KL(p || softmax(z/T)) = c sum_c p_c (LSE(z/T) - z_c/T) + const: third derivative in z_j
    # <= c / T^3 / (6 sqrt 3); the hard (1 - alpha) CE: (1 - alpha) / (6 sqrt 3)
    soft = alpha * temperature**2 if hard else temperature**2
    hard_weight = 1.0 - alpha if hard else 0.0
    scales = np.abs(row_scales(reduction, grad_output, batch, case.rows.shape[0]))
    third = scales * THIRD_LSE * (soft / temperature**3 + hard_weight)
    sizes = (np.abs(case.rows).max(axis=1) + np.abs(teacher_rows).max(axis=1)) / temperature + 2 * math.log(classes)
    magnitude = float(np.sum(scales * ((soft + hard_weight) * (sizes + _spread(case.rows) + 1.0))))
    objective = _objective(kernels.distillation_loss, grad_output, teacher, *target, reduction=reduction, **options)
    assert_matches_central_differences(objective, case.x, grad, _per_entry(case, third), magnitude)


@given(data=st.data())
def test_smooth_hinge_gradient_matches_central_differences(data):
    case = data.draw(SMALL_LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    batch = case.x.shape[:-1]
    target = class_indices(rng, batch, case.classes)
    margin = data.draw(st.sampled_from([0.0, 1.0]) | st.floats(-2.0, 2.0), label="margin")
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    _, _, (grad,) = run_loss(kernels.smooth_hinge, (case.x, target), dict(margin=margin), reduction, grad_output)
    # softplus(u + m), u = LSE_{i != y} z_i - z_y: along z_j, u' in [-1, 1], |u''| <= 1/4,
    # |u'''| <= 1/(6 sqrt 3); softplus' <= 1, '' <= 1/4, ''' <= 1/(6 sqrt 3):
    # |sp''' u'^3 + 3 sp'' u' u'' + sp' u'''| <= 0.0962 + 3/16 + 0.0962 < 0.4
    scales = np.abs(row_scales(reduction, grad_output, batch, case.rows.shape[0]))
    magnitude = float(np.sum(scales * (_spread(case.rows) + math.log(case.classes) + abs(margin) + 1.0)))
    objective = _objective(kernels.smooth_hinge, grad_output, target, reduction=reduction, margin=margin)
    assert_matches_central_differences(objective, case.x, grad, _per_entry(case, 0.4 * scales), magnitude)


@given(data=st.data())
def test_multiclass_hinge_gradient_matches_central_differences_away_from_the_kinks(data):
    case = data.draw(SMALL_LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    batch, classes = case.x.shape[:-1], case.classes
    target = class_indices(rng, batch, classes)
    margin = data.draw(st.sampled_from([1.0, 0.0]) | st.floats(-1.0, 3.0), label="margin")
    # move every hinge at least 2**-5 away from its kink (z_j - z_y + m = 0): a step of at most
    # 2**-8 in one logit then never crosses one, and the loss is linear along it (M3 = 0)
    rows = case.rows.copy()
    labels = target.reshape(-1)
    hinges = rows - rows[np.arange(rows.shape[0]), labels][:, None] + margin
    near = np.abs(hinges) < 2.0**-5
    near[np.arange(rows.shape[0]), labels] = False
    rows[near] += 2.0**-4
    x = case.like(rows)
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    _, _, (grad,) = run_loss(kernels.multiclass_hinge, (x, target), dict(margin=margin), reduction, grad_output)
    scales = np.abs(row_scales(reduction, grad_output, batch, rows.shape[0]))
    magnitude = float(np.sum(scales * classes * (2.0 * np.abs(rows).max(axis=1) + abs(margin) + 1.0)))
    objective = _objective(kernels.multiclass_hinge, grad_output, target, reduction=reduction, margin=margin)
    assert_matches_central_differences(objective, x, grad, 0.0, magnitude)


# ---- elementwise losses -------------------------------------------------------------------------


def _elementwise_scales(reduction, grad_output, shape):
    if reduction == "none":
        return np.abs(np.broadcast_to(np.asarray(grad_output, dtype=np.float64), shape))
    count = int(np.prod(shape, dtype=np.int64))
    return np.full(shape, abs(float(grad_output)) / (count if reduction == "mean" else 1))


@pytest.mark.parametrize("loss", ["binary_cross_entropy", "quadratic_cost"])
@given(data=st.data())
def test_elementwise_loss_gradients_match_central_differences(loss, data):
    case = data.draw(SMALL_LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    shape, classes = case.x.shape, case.classes
    target = case.like(rng.random(case.rows.shape))
    reduction, grad_output = data.draw(upstream(shape), label="upstream")
    scales = _elementwise_scales(reduction, grad_output, shape)
    if loss == "quadratic_cost":
        # (y - sigma)^2 / 2: |d^3| <= 3 |sigma'| |sigma''| + |sigma - y| |sigma'''| <= 3/4 0.0962 + 1/8 < 0.2
        _, _, (grad,) = run_loss(kernels.quadratic_cost, (case.x, target), {}, reduction, grad_output)
        objective = _objective(kernels.quadratic_cost, grad_output, target, reduction=reduction)
        third, magnitude = 0.2 * scales, float(np.sum(scales))
    else:
        weight = rng.uniform(0.0, 3.0, classes) if data.draw(st.booleans(), label="weighted") else None
        pos_weight = rng.uniform(0.0, 3.0, classes) if data.draw(st.booleans(), label="pos_weight") else None
        options = dict(weight=weight, pos_weight=pos_weight)
        function = kernels.binary_cross_entropy_with_logits
        _, _, (grad,) = run_loss(function, (case.x, target), options, reduction, grad_output)
        objective = _objective(function, grad_output, target, reduction=reduction, **options)
        # w (p_w y sp(-x) + (1 - y) sp(x)): |sp'''| <= 1/(6 sqrt 3)
        w = np.broadcast_to(np.ones(1) if weight is None else weight, shape)
        positive = np.broadcast_to(np.ones(1) if pos_weight is None else pos_weight, shape)
        factor = scales * w * (positive * target + (1.0 - target))
        third, magnitude = THIRD_LSE * factor, float(np.sum(factor * (np.abs(case.x) + 1.0)))
    assert_matches_central_differences(objective, case.x, grad, third, magnitude)


# ---- margin losses on cosines --------------------------------------------------------------------

MARGIN_FAMILY = ("margin_cross_entropy", "normface", "cosface", "arcface")


def _margin_options(data, family):
    """(options of the call, the combined margin (m1, m2, m3) they mean)."""
    s = data.draw(st.sampled_from([1.0, 8.0, 30.0, 64.0]) | st.floats(0.5, 64.0), label="s")
    if family == "normface":
        return dict(s=s), (1.0, 0.0, 0.0)
    if family == "cosface":
        m = data.draw(st.sampled_from([0.35, 0.0]) | st.floats(-0.5, 1.0), label="m")
        return dict(s=s, m=m), (1.0, 0.0, m)
    if family == "arcface":
        m = data.draw(st.sampled_from([0.5, 0.0]) | st.floats(0.0, 1.5), label="m")
        return dict(s=s, m=m), (1.0, m, 0.0)
    margins = (data.draw(st.sampled_from([1.0, 0.9, 1.35, 2.0, 4.0]), label="m1"),
               data.draw(st.floats(0.0, 1.0), label="m2"), data.draw(st.floats(-0.5, 0.5), label="m3"))
    return dict(s=s, m1=margins[0], m2=margins[1], m3=margins[2]), margins


def _margin_derivative_bounds(c, m1, m2):
    """Bounds on |f'|, |f''|, |f'''| of the target's f(c) = cos(m1 arccos c + m2) - m3 near c.

    With theta = arccos c, phi = m1 theta + m2, d theta / dc = -1 / sin theta:
    f' = m1 sin phi / sin theta; f'' = -m1 (m1 cos phi sin theta - sin phi cos theta) / sin^3 theta;
    f''' <= m1 |1 - m1^2| / sin^3 theta + 3 m1 (m1 + 1) / sin^5 theta.  sin theta is taken at
    |c| + 2**-8 (the largest step).  In ArcFace's fallback region, or without an angular margin
    (m1 = 1, m2 = 0), f is c minus a constant: (1, 0, 0).
    """
    linear = m1 == 1.0 and (m2 == 0.0 or c <= math.cos(math.pi - m2))
    if linear:
        return 1.0, 0.0, 0.0
    sine = math.sqrt(1.0 - (abs(c) + LARGEST_STEP) ** 2)
    return (m1 / sine, m1 * (m1 + 1.0) / sine**3,
            m1 * abs(1.0 - m1**2) / sine**3 + 3.0 * m1 * (m1 + 1.0) / sine**5)


@pytest.mark.parametrize("family", MARGIN_FAMILY)
@given(data=st.data())
def test_margin_loss_gradients_match_central_differences(family, data):
    rng = data.draw(seeds(), label="rng")
    rows, classes = data.draw(st.integers(1, 4), label="rows"), data.draw(st.integers(1, 6), label="classes")
    options, (m1, m2, m3) = _margin_options(data, family)
    cosines = rng.uniform(-0.8, 0.8, (rows, classes))
    target = class_indices(rng, (rows,), classes)
    if m1 == 1.0 and m2 > 0.0:
        # keep the target cosine 1/32 away from ArcFace's switch cos(pi - m2), where f jumps
        switch = math.cos(math.pi - m2)
        targets = cosines[np.arange(rows), target]
        cosines[np.arange(rows), target] = np.where(np.abs(targets - switch) < 2.0**-5,
                                                    np.clip(targets + 2.0**-4, -0.8, 0.8), targets)
        assume(np.all(np.abs(cosines[np.arange(rows), target] - switch) >= 2.0**-5))
    cos = with_layout(cosines, data.draw(st.sampled_from(["contiguous", "transposed", "strided"])), 1)
    reduction, grad_output = data.draw(upstream((rows,)), label="upstream")
    function = getattr(kernels, family)
    _, _, (dcos,) = run_loss(function, (cos, target), options, reduction, grad_output)
    s = options["s"]
    scales = np.abs(row_scales(reduction, grad_output, (rows,), rows))
    # non-target cosines: z_j = s c_j, M3 = s^3 / (6 sqrt 3); the target: z_y = s f(c), ranges
    # (s|f'|, s|f''|, s|f'''|) in ``softmax_loss_third_derivative``
    third = np.repeat((scales * THIRD_LSE * s**3)[:, None], classes, axis=1)
    for i, label in enumerate(target):
        first, second, third_f = _margin_derivative_bounds(cosines[i, label], m1, m2)
        third[i, label] = scales[i] * softmax_loss_third_derivative(s * first, s * second, s * third_f)
    logit_size = s * (2.0 + abs(m3) + m2 + abs(m1))
    magnitude = float(np.sum(scales * (2.0 * logit_size + math.log(classes) + 1.0)))
    assert_matches_central_differences(_objective(function, grad_output, target, reduction=reduction, **options),
                                       cos, dcos, third, magnitude, name="cos")


# ---- L-Softmax and SphereFace --------------------------------------------------------------------


def _chebyshev_bounds(m: int):
    """(max |psi|, max |T_m'|, |T_m''|, |T_m'''|) on [-1, 1]: psi in [1 - 2m, 1], and Markov's
    inequality for the Chebyshev polynomial, |T_m^(k)| <= T_m^(k)(1) = prod_{j<k} (m^2 - j^2)/(2j + 1)."""
    square = m * m
    return 2.0 * m - 1.0, float(square), square * (square - 1) / 3.0, square * (square - 1) * (square - 4) / 15.0


def _target_logit_bounds(other_norm: float, radius: float, m: int, lambda_: float):
    """Bounds on the first three derivatives of z_y = (lambda v.w + |w||v| psi(c)) / (1 + lambda)
    along one coordinate of v (|v| >= radius along the step, |w| = other_norm fixed).

    r = |v + t e|: |r'| <= 1, |r''| <= 1/r, |r'''| <= 3/r^2.  (1/r)^(k) <= k!/r^(k+1) (Legendre),
    so c = (v.w_hat)/r has |c'| <= 2/r, |c''| <= 4/r^2, |c'''| <= 12/r^3; psi(c) with the
    Chebyshev bounds P0..P3 on its branch (Faa di Bruno): q' <= 2 P1/r, q'' <= (4 P2 + 4 P1)/r^2,
    q''' <= (8 P3 + 24 P2 + 12 P1)/r^3; the product with A = |w| r and the linear term lambda v.w.
    """
    p0, p1, p2, p3 = _chebyshev_bounds(m)
    scale = other_norm / (1.0 + lambda_)
    return (scale * (lambda_ + p0 + 2.0 * p1), scale * (p0 + 8.0 * p1 + 4.0 * p2) / radius,
            scale * (3.0 * p0 + 30.0 * p1 + 36.0 * p2 + 8.0 * p3) / radius**2)


def _sphere_target_bounds(feature_norm: float, radius: float, m: int, lambda_: float):
    """SphereFace's z_y = |x| (lambda c + psi(c)) / (1 + lambda) along one coordinate of W_y (|W_y| >= radius):
    the bounds of c and psi(c) above, times |x| / (1 + lambda)."""
    _, p1, p2, p3 = _chebyshev_bounds(m)
    scale = feature_norm / (1.0 + lambda_)
    return (scale * (2.0 * lambda_ + 2.0 * p1) / radius, scale * (4.0 * lambda_ + 4.0 * p2 + 4.0 * p1) / radius**2,
            scale * (12.0 * lambda_ + 8.0 * p3 + 24.0 * p2 + 12.0 * p1) / radius**3)


def _unit_rows(rng, rows, features):
    values = rng.standard_normal((rows, features))
    return values / np.linalg.norm(values, axis=1, keepdims=True) * rng.uniform(0.5, 2.0, (rows, 1))


def _large_margin_third_derivatives(x, W, target, m, lambda_, normalize, scales):
    """M3 for every coordinate of x and of W (see ``_target_logit_bounds``)."""
    step = LARGEST_STEP
    x_norms, w_norms = np.linalg.norm(x, axis=1), np.linalg.norm(W, axis=1)
    weights = W / w_norms[:, None] if normalize else W
    third_x = np.empty_like(x)
    third_w = np.zeros_like(W)
    for i, label in enumerate(target):
        others = np.abs(np.delete(weights, label, axis=0))
        first, second, third = _target_logit_bounds(1.0 if normalize else w_norms[label], x_norms[i] - step, m,
                                                    lambda_)
        for k in range(x.shape[1]):
            largest = max(first, others[:, k].max(initial=0.0))
            third_x[i, k] = scales[i] * softmax_loss_third_derivative(2.0 * largest, second, third)
        for j in range(W.shape[0]):
            radius = w_norms[j] - step
            if j == label:
                bounds = (_sphere_target_bounds(x_norms[i], radius, m, lambda_) if normalize
                          else _target_logit_bounds(x_norms[i], radius, m, lambda_))
                third_w[j] += scales[i] * softmax_loss_third_derivative(*bounds)
            elif normalize:  # z_ij = |x_i| c_ij(W_j)
                third_w[j] += scales[i] * softmax_loss_third_derivative(
                    x_norms[i] * 2.0 / radius, x_norms[i] * 4.0 / radius**2, x_norms[i] * 12.0 / radius**3)
            else:  # z_ij = x_i . W_j, linear
                third_w[j] += scales[i] * THIRD_LSE * np.abs(x[i]) ** 3
    return third_x, third_w


@given(data=st.data())
def test_large_margin_gradients_match_central_differences(data):
    rng = data.draw(seeds(), label="rng")
    rows, classes = data.draw(st.integers(1, 3), label="rows"), data.draw(st.integers(1, 4), label="classes")
    features = data.draw(st.integers(2, 4), label="features")
    m = data.draw(st.integers(1, 4), label="m")
    lambda_ = data.draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 5.0), label="lambda_")
    normalize = data.draw(st.booleans(), label="normalize_weights")
    x, W = _unit_rows(rng, rows, features), _unit_rows(rng, classes, features)
    target = class_indices(rng, (rows,), classes)
    # the target cosine 0.02 away from psi's branch thresholds cos(j pi / m) (psi'' jumps there) and
    # from +-1: a step moves c by at most 2**-8 * 2 / 0.5 < 0.016
    cosines = np.einsum("ij,ij->i", x, W[target]) / (np.linalg.norm(x, axis=1) * np.linalg.norm(W[target], axis=1))
    thresholds = np.cos(np.arange(1, m) * math.pi / m)
    assume(np.all(np.abs(cosines) <= 0.95))
    assume(np.all(np.abs(cosines[:, None] - thresholds[None, :]) >= 0.02))
    reduction, grad_output = data.draw(upstream((rows,)), label="upstream")
    options = dict(m=m, lambda_=lambda_, normalize_weights=normalize)
    _, _, (dx, dW) = run_loss(kernels.large_margin_cross_entropy, (x, W, target), options, reduction, grad_output)
    scales = np.abs(row_scales(reduction, grad_output, (rows,), rows))
    third_x, third_w = _large_margin_third_derivatives(x, W, target, m, lambda_, normalize, scales)
    logit_size = np.linalg.norm(x, axis=1) * np.linalg.norm(W, axis=1).max() * (2 * m + lambda_)
    magnitude = float(np.sum(scales * (2.0 * logit_size + math.log(classes) + 1.0)))
    def loss_of_weights(weights, *rest, **keywords):
        return kernels.large_margin_cross_entropy(x, weights, *rest, **keywords)

    assert_matches_central_differences(
        _objective(kernels.large_margin_cross_entropy, grad_output, W, target, reduction=reduction, **options), x, dx,
        third_x, magnitude, name="x")
    assert_matches_central_differences(
        _objective(loss_of_weights, grad_output, target, reduction=reduction, **options), W, dW, third_w, magnitude,
        name="W")


# ---- center loss and normalized_linear ------------------------------------------------------------


@given(data=st.data())
def test_center_loss_gradients_match_central_differences(data):
    rng = data.draw(seeds(), label="rng")
    rows, classes, features = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)),
                               data.draw(st.integers(1, 4)))
    x, centers = rng.standard_normal((rows, features)), rng.standard_normal((classes, features))
    target = class_indices(rng, (rows,), classes)
    reduction, grad_output = data.draw(upstream((rows,)), label="upstream")
    _, _, (dx, dcenters) = run_loss(kernels.center_loss, (x, target, centers), {}, reduction, grad_output)
    # a quadratic: the central difference has no truncation error (M3 = 0), only rounding on terms
    # of size (|x_i| + |c|)^2
    scales = np.abs(row_scales(reduction, grad_output, (rows,), rows))
    magnitude = float(np.sum(scales * (np.abs(x).sum(axis=1) + np.abs(centers[target]).sum(axis=1) + 1.0) ** 2))

    def loss_of_centers(value, **keywords):
        return kernels.center_loss(x, target, value, **keywords)

    objective = _objective(kernels.center_loss, grad_output, target, centers, reduction=reduction)
    assert_matches_central_differences(objective, x, dx, 0.0, magnitude, name="x")
    assert_matches_central_differences(_objective(loss_of_centers, grad_output, reduction=reduction), centers, dcenters,
                                       0.0, magnitude, name="centers")


@given(seeds(), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4))
def test_normalized_linear_backward_matches_central_differences(rng, rows, classes, features):
    x, W = _unit_rows(rng, rows, features), _unit_rows(rng, classes, features)
    grad_cos = rng.standard_normal((rows, classes))
    with unmodified(x, W, grad_cos):
        dx, dW = kernels.normalized_linear_backward(x, W, grad_cos)
    # phi = sum_ij G_ij cos_ij; along x_ik, cos_ij = c with |c'''| <= 12 / |x_i|^3 (see
    # _target_logit_bounds), so M3 = sum_j |G_ij| 12 / (|x_i| - step)^3; the same for W_jk
    weights = np.abs(grad_cos)
    radius_x = np.linalg.norm(x, axis=1) - LARGEST_STEP
    radius_w = np.linalg.norm(W, axis=1) - LARGEST_STEP
    third_x = np.repeat((weights.sum(axis=1) * 12.0 / radius_x**3)[:, None], features, axis=1)
    third_w = np.repeat((weights.sum(axis=0) * 12.0 / radius_w**3)[:, None], features, axis=1)
    magnitude = float(weights.sum()) * features
    def cosines_of_weights(value):
        return kernels.normalized_linear(x, value)

    assert_matches_central_differences(_objective(kernels.normalized_linear, grad_cos, W), x, dx, third_x, magnitude,
                                       name="x")
    assert_matches_central_differences(_objective(cosines_of_weights, grad_cos), W, dW, third_w, magnitude, name="W")
