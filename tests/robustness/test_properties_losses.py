"""Property tests of the losses: non-negativity, gradients that sum to zero, the reductions
of the margin losses to plain softmax cross-entropy, and the other invariants of each loss.

Every property also checks, through ``checks.run_loss``, that the inputs are left
bit-identical and that ``f_forward_backward``'s loss is bit-identical to ``f``'s (one
kernel computes both).  Non-negativity is asserted exactly where the kernel's arithmetic
makes it exact: a sum of non-negative float64 terms (each a difference M - z_c >= 0, a
log1p of a non-negative number, a square...) rounds to a non-negative number, because
rounding is monotonic.  Distillation's KL is a difference of two sums and gets the
derived tolerance of its cancellation instead.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from softmaxlab.kernels import (
    arcface,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_forward_backward,
    center_loss,
    center_update,
    cosface,
    cross_entropy,
    cross_entropy_forward_backward,
    distillation_loss,
    distillation_loss_forward_backward,
    large_margin_cross_entropy,
    margin_cross_entropy,
    multiclass_hinge,
    normalized_linear,
    normalized_linear_backward,
    normface,
    quadratic_cost,
    quadratic_cost_forward_backward,
    smooth_hinge,
    softmax,
)

from softmaxlab.kernels._config import block_length

from .checks import (
    ENTRY_ROUNDINGS,
    EXP_RELATIVE,
    U64,
    assert_bit_identical,
    assert_sums_to_zero,
    gradient_relative_bound,
    run_loss,
    smallest_subnormal,
    softmax_relative_bound,
    spacing,
    summation_depth,
    unit_roundoff,
    unmodified,
)
from .strategies import (
    ALL_REGIMES,
    COSINE_REGIMES,
    INDEX_DTYPES,
    REGIMES,
    class_arrays,
    class_indices,
    dtypes,
    matrices,
    probability_rows,
    row_scales,
    seeds,
    upstream,
)

pytestmark = pytest.mark.usefixtures("one_numba_thread")

SMOOTHING = st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 1.0)
LOGITS = class_arrays(regimes=ALL_REGIMES, last_axis=True)
COSINES = class_arrays(regimes=tuple(COSINE_REGIMES), last_axis=True)


def _assert_non_negative(per_row, loss):
    assert np.all(np.asarray(per_row) >= 0.0), "a per-row loss is negative"
    assert np.all(np.asarray(loss) >= 0.0), "the reduced loss is negative"


def _class_weight(data, rng, classes, dtype):
    """None, or positive class weights (a float array of the logits' dtype)."""
    if not data.draw(st.booleans(), label="weighted"):
        return None
    return rng.uniform(0.1, 3.0, classes).astype(dtype)


def _gradient_sum_bound(rho, scales, target_totals, classes, dtype):
    """Bound on |sum_j dL/dz_j| per row for a fused softmax-loss gradient g (TW a_j - t_j).

    Each entry is within rho |g| (TW a_j + t_j) (``checks.gradient_relative_bound``), the
    target's entry, formed from TW (a_y - 1) and eps/C (W - w_y), within rho |g| 3 TW;
    summed over the row (sum a = 1, sum t = TW): rho |g| (TW + TW + 3 TW) = 5 rho |g| TW,
    plus 2 s_min per entry.
    """
    size = np.abs(scales) * target_totals
    return 5.0 * rho * size + 2.0 * classes * smallest_subnormal(dtype) * (1.0 + size)


# ---- cross-entropy ------------------------------------------------------------------------------


@given(data=st.data())
def test_cross_entropy_with_class_indices_is_non_negative_and_its_gradient_rows_sum_to_zero(data):
    case = data.draw(LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    batch, classes = case.x.shape[:-1], case.classes
    ignore_index = data.draw(st.sampled_from([-100, classes]), label="ignore_index")
    index_dtype = data.draw(st.sampled_from(INDEX_DTYPES if ignore_index >= 0 else INDEX_DTYPES[:2]))
    labels = rng.integers(0, classes, batch)
    ignored = rng.random(batch) < data.draw(st.sampled_from([0.0, 0.3]), label="ignored fraction")
    target = np.where(ignored, ignore_index, labels).astype(index_dtype)
    weight = _class_weight(data, rng, classes, case.dtype)
    smoothing = data.draw(SMOOTHING, label="label_smoothing")
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    options = dict(weight=weight, ignore_index=ignore_index, label_smoothing=smoothing)
    per_row, loss, (grad,) = run_loss(cross_entropy, (case.x, target), options, reduction, grad_output)
    _assert_non_negative(per_row, loss)
    assert grad.shape == case.x.shape and grad.dtype == case.dtype
    # dL/dz_j = g (TW a_j - t_j) sums to g TW (sum a - 1) = 0, TW = (1 - eps) w_y + eps/C sum w
    kept = ~ignored.reshape(-1)
    class_weight = np.ones(classes) if weight is None else weight.astype(np.float64)
    label_weight = np.where(kept, class_weight[labels.reshape(-1)], 0.0)
    denominator = label_weight.sum() if weight is not None else np.count_nonzero(kept)
    scales = row_scales(reduction, grad_output, batch, denominator)
    target_totals = np.where(kept, (1.0 - smoothing) * label_weight + smoothing * class_weight.sum() / classes, 0.0)
    rho = gradient_relative_bound(case.dtype, classes)
    rows = grad.reshape(-1, classes)
    assert np.all(rows[~kept] == 0.0), "an ignored row has a gradient"
    assert_sums_to_zero(rows, _gradient_sum_bound(rho, scales, target_totals, classes, case.dtype),
                        "cross_entropy gradient")


@given(data=st.data())
def test_cross_entropy_with_class_probabilities_is_non_negative_and_its_gradient_rows_sum_to_zero(data):
    case = data.draw(LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    batch, classes = case.x.shape[:-1], case.classes
    probabilities = case.like(probability_rows(rng, case.rows.shape, case.dtype))
    weight = _class_weight(data, rng, classes, case.dtype)
    smoothing = data.draw(SMOOTHING, label="label_smoothing")
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    per_row, loss, (grad,) = run_loss(cross_entropy, (case.x, probabilities),
                                      dict(weight=weight, label_smoothing=smoothing), reduction, grad_output)
    _assert_non_negative(per_row, loss)
    # sum_j (TW a_j - t_j) = TW (sum a - 1) = 0 for any target weights t_j = w_j ((1 - eps) p_j + eps/C)
    class_weight = np.ones(classes) if weight is None else weight.astype(np.float64)
    p = case.rows_of(probabilities).astype(np.float64)
    target_totals = (class_weight * ((1.0 - smoothing) * p + smoothing / classes)).sum(axis=1)
    scales = row_scales(reduction, grad_output, batch, case.rows.shape[0])
    rho = gradient_relative_bound(case.dtype, classes)
    assert_sums_to_zero(grad.reshape(-1, classes), _gradient_sum_bound(rho, scales, target_totals, classes, case.dtype),
                        "cross_entropy gradient (probabilities)")


# ---- distillation ------------------------------------------------------------------------------


def _finite_magnitude(rows: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(rows), np.abs(rows.astype(np.float64)), 0.0).max(axis=1)


def _divergence_error(student_rows, teacher_rows, temperature, dtype, exponentials=True):
    """Bound on the error of the computed KL(p || q) per row (derivation at its use).

    ``exponentials=False`` leaves out the exponentials' error, for rows where the student's
    and the teacher's exponentials are the same numbers (p = q, arguments equal).
    """
    classes = student_rows.shape[1]
    depth = summation_depth(classes, dtype)
    sizes = ((_finite_magnitude(student_rows) + _finite_magnitude(teacher_rows)) / temperature
             + 2 * math.log(classes) + 1)
    relative = 2 * (depth + ENTRY_ROUNDINGS) * U64 + (2 * EXP_RELATIVE[np.dtype(dtype)] if exponentials else 0.0)
    return relative * sizes * (1.0 + unit_roundoff(dtype))


@given(data=st.data())
def test_distillation_loss_is_non_negative_up_to_its_cancellation_and_its_gradient_rows_sum_to_zero(data):
    case = data.draw(LOGITS, label="student")
    rng = data.draw(seeds(), label="rng")
    batch, classes, dtype = case.x.shape[:-1], case.classes, case.dtype
    teacher_kind = data.draw(st.sampled_from(["independent", "close", "same"]), label="teacher")
    if teacher_kind == "independent":
        teacher_rows = REGIMES[data.draw(st.sampled_from(ALL_REGIMES), label="teacher regime")](
            rng, case.rows.shape, dtype)
    elif teacher_kind == "close":  # KL near 0: where its two terms cancel
        teacher_rows = (case.rows + 1e-3 * rng.standard_normal(case.rows.shape)).astype(dtype)
    else:
        teacher_rows = case.rows.copy()
    teacher = case.like(teacher_rows)
    hard = data.draw(st.booleans(), label="with target")
    arguments = (case.x, teacher) + ((class_indices(rng, batch, classes),) if hard else ())
    temperature = data.draw(st.sampled_from([1.0, 2.0, 4.0]) | st.floats(0.25, 8.0), label="temperature")
    alpha = data.draw(st.sampled_from([0.0, 0.9, 1.0]) | st.floats(0.0, 1.0), label="alpha")
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    per_row, loss, (grad,) = run_loss(distillation_loss, arguments,
                                      dict(temperature=temperature, alpha=alpha), reduction, grad_output)
    soft = alpha * temperature**2 if hard else temperature**2
    hard_weight = 1.0 - alpha if hard else 0.0
    # KL(p || q) = sum_c p_c (v_c - z_c)/T - [(M_v - M_z)/T + log S_v - log S_z] >= 0 is a difference
    # of terms of size <= (max|z| + max|v|)/T + 2 log C; each is computed in float64 within
    # (D + ENTRY_ROUNDINGS) U64 relative, the exponentials add EXP_RELATIVE to p and to each S
    # (2 EXP_RELATIVE of the size), and the CE term is a sum of non-negative terms
    tolerance = soft * _divergence_error(case.rows, teacher_rows, temperature, dtype)
    assert np.all(per_row.reshape(-1) >= -tolerance)
    count = case.rows.shape[0]
    reduced = {"none": tolerance.reshape(batch), "sum": tolerance.sum(), "mean": tolerance.sum() / count}
    assert np.all(loss >= -reduced[reduction])
    # dL/dz_j = g [soft/T (q_j - p_j) + hard (a_j - [j = y])]: each piece within rho of its size
    scales = row_scales(reduction, grad_output, batch, count)
    rho = gradient_relative_bound(dtype, classes)
    size = np.abs(scales) * (2.0 * soft / temperature + 3.0 * hard_weight)
    bound = rho * size + 2.0 * classes * smallest_subnormal(dtype) * (1.0 + size)
    assert_sums_to_zero(grad.reshape(-1, classes), bound, "distillation gradient")


# ---- the sigmoid losses --------------------------------------------------------------------------


def _sigmoid_targets(data, rng, case):
    """Targets in [0, 1] arranged as the logits: hard labels 0/1, or soft ones."""
    if data.draw(st.booleans(), label="hard labels"):
        values = (rng.random(case.rows.shape) < 0.5).astype(case.dtype)
    else:
        values = rng.random(case.rows.shape).astype(case.dtype)
    return case.like(values)


def _elementwise_scales(reduction, grad_output, shape):
    """dOut/dl per element (float64, the logits' shape) for the elementwise losses."""
    if reduction == "none":
        return np.broadcast_to(np.asarray(grad_output, dtype=np.float64), shape)
    value = float(grad_output)
    count = int(np.prod(shape, dtype=np.int64))
    return np.full(shape, value / count if reduction == "mean" else value)


@given(data=st.data())
def test_binary_cross_entropy_is_non_negative_and_its_gradient_is_bounded_with_the_target_s_sign(data):
    case = data.draw(LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    shape, classes, dtype = case.x.shape, case.classes, case.dtype
    target = _sigmoid_targets(data, rng, case)
    weight_shape = data.draw(st.sampled_from([None, "class", "row"]), label="weight")
    weight = None
    if weight_shape == "class":
        weight = rng.uniform(0.0, 3.0, classes).astype(dtype)
    elif weight_shape == "row":
        weight = rng.uniform(0.0, 3.0, shape[:-1] + (1,)).astype(dtype)
    pos_weight = rng.uniform(0.0, 3.0, classes).astype(dtype) if data.draw(st.booleans(), label="pos_weight") else None
    reduction, grad_output = data.draw(upstream(shape), label="upstream")
    per_row, loss, (grad,) = run_loss(binary_cross_entropy_with_logits, (case.x, target),
                                      dict(weight=weight, pos_weight=pos_weight), reduction, grad_output)
    _assert_non_negative(per_row, loss)  # w (p_w y sp(-x) + (1 - y) sp(x)): non-negative terms
    # dl/dx = w ((1 - y) sigma(x) - p_w y sigma(-x)): a difference of two terms in [0, (1 - y)] and
    # [0, p_w y], so |dl/dx| <= w max(1 - y, p_w y); float64 evaluation (8 U64), the dtype's rounding
    y = np.asarray(target, dtype=np.float64)
    w = np.broadcast_to(np.ones(1) if weight is None else weight.astype(np.float64), shape)
    positive = np.broadcast_to(np.ones(1) if pos_weight is None else pos_weight.astype(np.float64), shape)
    scales = _elementwise_scales(reduction, grad_output, shape)
    limit = np.abs(scales) * w * np.maximum(1.0 - y, positive * y)
    bound = limit * (1.0 + unit_roundoff(dtype)) * (1.0 + 8 * U64) + smallest_subnormal(dtype)
    assert np.all(np.abs(grad) <= bound)
    signed = grad * np.sign(scales)
    assert np.all(signed[y == 0.0] >= 0.0) and np.all(signed[y == 1.0] <= 0.0)


@given(data=st.data())
def test_quadratic_cost_lies_in_zero_to_one_half_and_its_gradient_within_a_quarter(data):
    case = data.draw(LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    target = _sigmoid_targets(data, rng, case)
    reduction, grad_output = data.draw(upstream(case.x.shape), label="upstream")
    per_row, loss, (grad,) = run_loss(quadratic_cost, (case.x, target), {}, reduction, grad_output)
    # (a - y) = (1 - y) a - y (1 - a) is a difference of two numbers in [0, 1]: |a - y| <= 1 exactly,
    # so 0 <= (a - y)^2 / 2 <= 1/2 exactly
    assert np.all((per_row >= 0.0) & (per_row <= 0.5))
    count = case.x.size
    assert np.all((0.0 <= loss) & (loss <= (0.5 if reduction != "sum" else 0.5 * count)))
    # dl/dx = (a - y) a (1 - a), a (1 - a) <= 1/4 (a and 1 - a computed apart: a few U64 over)
    scales = _elementwise_scales(reduction, grad_output, case.x.shape)
    unit, tiny = unit_roundoff(case.dtype), smallest_subnormal(case.dtype)
    assert np.all(np.abs(grad) <= np.abs(scales) / 4.0 * (1.0 + 16 * U64) * (1.0 + unit) + tiny)


# ---- the classic multi-class losses --------------------------------------------------------------


@given(data=st.data())
def test_multiclass_hinge_is_non_negative_and_its_gradient_is_the_documented_subgradient(data):
    case = data.draw(LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    batch, classes, dtype = case.x.shape[:-1], case.classes, case.dtype
    target = class_indices(rng, batch, classes, data.draw(st.sampled_from(INDEX_DTYPES), label="index dtype"))
    margin = data.draw(st.sampled_from([1.0, 0.0]) | st.floats(-1.0, 3.0), label="margin")
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    per_row, loss, (grad,) = run_loss(multiclass_hinge, (case.x, target), dict(margin=margin), reduction, grad_output)
    _assert_non_negative(per_row, loss)  # a sum of max(., 0)
    # exact: dL/dz_j = g [(z_j - z_y) + m > 0] (j != y; -inf never violates), dL/dz_y = -g * count,
    # with the kernel's float64 arithmetic, g rounded to the dtype
    z = case.rows.astype(np.float64)
    labels = target.reshape(-1).astype(np.int64)
    rows = np.arange(z.shape[0])
    with np.errstate(invalid="ignore"):  # -inf - -inf: NaN, not > 0, as in the kernel
        active = ((z - z[rows, labels][:, None]) + margin > 0.0) & (z != -np.inf)
    active[rows, labels] = False
    scales = row_scales(reduction, grad_output, batch, z.shape[0])
    expected = np.where(active, scales[:, None], 0.0)
    expected[rows, labels] = -(scales * active.sum(axis=1))
    assert_bit_identical(grad.reshape(-1, classes), expected.astype(dtype), "multiclass_hinge gradient")


@given(data=st.data())
def test_smooth_hinge_is_non_negative_its_gradient_rows_sum_to_zero_and_at_zero_margin_it_is_cross_entropy(data):
    case = data.draw(LOGITS, label="logits")
    rng = data.draw(seeds(), label="rng")
    batch, classes, dtype = case.x.shape[:-1], case.classes, case.dtype
    target = class_indices(rng, batch, classes)
    margin = data.draw(st.sampled_from([0.0, 1.0]) | st.floats(-2.0, 2.0), label="margin")
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    per_row, loss, (grad,) = run_loss(smooth_hinge, (case.x, target), dict(margin=margin), reduction, grad_output)
    _assert_non_negative(per_row, loss)  # softplus >= 0
    # dL/dz = g r (a - onehot(y)), r = sigma(u + m) / sigma(u) <= max(1, e^m): sums to zero
    scales = row_scales(reduction, grad_output, batch, case.rows.shape[0])
    rho = gradient_relative_bound(dtype, classes)
    ratio = max(1.0, math.exp(margin))
    assert_sums_to_zero(grad.reshape(-1, classes),
                        _gradient_sum_bound(rho, scales, np.full(scales.shape, ratio), classes, dtype),
                        "smooth_hinge gradient")
    if margin != 0.0:
        return
    # m = 0: softplus(u) = log(1 + e^u) = LSE(z) - z_y.  The kernel computes it from the cross-entropy
    # l as log1p(expm1(l)) (or, for l >= 30, through u = l + log1p(-e^-l)): within 4 U64 (l + 1) of l,
    # then both round to the dtype.  Its gradient factor r is exactly 1 (x / x), so the gradient is
    # the cross-entropy's, bit for bit.
    with unmodified(case.x, target):
        entropy = cross_entropy(case.x, target, reduction="none").astype(np.float64).reshape(-1)
        _, entropy_grad = cross_entropy_forward_backward(case.x, target, reduction=reduction, grad_output=grad_output)
    assert_bit_identical(grad, entropy_grad, "smooth_hinge(margin=0) gradient against cross_entropy's")
    hinge = np.asarray(per_row, dtype=np.float64).reshape(-1)
    infinite = np.isinf(entropy)
    assert np.array_equal(hinge[infinite], entropy[infinite])
    finite = ~infinite
    bound = 4 * U64 * (entropy[finite] + 1.0) + spacing(np.maximum(hinge[finite], entropy[finite]), dtype)
    assert np.all(np.abs(hinge[finite] - entropy[finite]) <= bound)


# ---- the margin losses on cosines ----------------------------------------------------------------

SCALES = (1.0, 2.0, 8.0, 64.0)  # powers of two: s * cos is exact in float64 for either dtype


@given(data=st.data())
def test_margin_presets_at_zero_margin_are_softmax_cross_entropy_of_the_scaled_cosines(data):
    case = data.draw(COSINES, label="cos")
    rng = data.draw(seeds(), label="rng")
    batch, classes, dtype = case.x.shape[:-1], case.classes, case.dtype
    # float32 * 30 has at most 24 + 4 significant bits: exact in float64 too
    s = data.draw(st.sampled_from(SCALES + ((30.0,) if dtype == np.float32 else ())), label="s")
    target = class_indices(rng, batch, classes)
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    arguments = (case.x, target)
    per_row, loss, (dcos,) = run_loss(normface, arguments, dict(s=s), reduction, grad_output)
    _assert_non_negative(per_row, loss)
    # cosface(m=0), arcface(m=0) and the combined margin (1, 0, 0) take the same float operations
    for preset, options in [(cosface, dict(s=s, m=0.0)), (arcface, dict(s=s, m=0.0)),
                            (margin_cross_entropy, dict(s=s, m1=1.0, m2=0.0, m3=0.0))]:
        rows, reduced, (gradient,) = run_loss(preset, arguments, options, reduction, grad_output)
        for actual, expected in [(rows, per_row), (reduced, loss), (gradient, dcos)]:
            assert_bit_identical(actual, expected, f"{preset.__name__} at zero margin against normface")
    # against cross_entropy of the exact float64 logits s cos: both within (D + ENTRY_ROUNDINGS) U64 of
    # the terms (M - z_y) + log1p(T) they add (<= L + range + 1), normface's exponential errs by
    # EXP_RELATIVE in T (<= EXP_RELATIVE in log1p(T) <= L), then it rounds to the dtype
    logits = np.asarray(case.x, dtype=np.float64) * s
    with unmodified(logits, target):
        entropy = cross_entropy(logits, target, reduction="none").reshape(-1)
        _, entropy_grad = cross_entropy_forward_backward(logits, target, reduction=reduction, grad_output=grad_output)
    logit_rows = logits.reshape(-1, classes)
    spread = logit_rows.max(axis=1) - logit_rows.min(axis=1)
    depth = summation_depth(classes, dtype) + summation_depth(classes, np.float64) + 2 * ENTRY_ROUNDINGS
    hinge = np.asarray(per_row, dtype=np.float64).reshape(-1)
    bound = depth * U64 * (entropy + spread + 1.0) + EXP_RELATIVE[dtype] * entropy + spacing(entropy, dtype)
    assert np.all(np.abs(hinge - entropy) <= bound)
    # dcos = s dL/dz: each entry within (rho_dtype + rho_64) s |g| (a_j + 2 [j = y]) of s * CE's gradient
    scales = row_scales(reduction, grad_output, batch, logit_rows.shape[0])
    probabilities = softmax(logit_rows) / (1.0 - softmax_relative_bound(np.float64, classes))
    one_hot = np.zeros_like(probabilities)
    one_hot[np.arange(one_hot.shape[0]), target.reshape(-1)] = 2.0
    rho = gradient_relative_bound(dtype, classes) + gradient_relative_bound(np.float64, classes)
    size = s * np.abs(scales)[:, None] * (probabilities + one_hot)
    expected = s * entropy_grad.reshape(-1, classes)
    error = np.abs(dcos.reshape(-1, classes) - expected)
    assert np.all(error <= rho * size + 2 * smallest_subnormal(dtype) * (1.0 + size))


MARGIN_FAMILY = {function.__name__: function for function in (margin_cross_entropy, cosface, arcface)}


def _margin_options(data, family):
    s = data.draw(st.sampled_from([1.0, 30.0, 64.0]) | st.floats(0.5, 64.0), label="s")
    if family == "cosface":
        return dict(s=s, m=data.draw(st.sampled_from([0.35, 0.0]) | st.floats(-0.5, 1.0), label="m"))
    if family == "arcface":
        return dict(s=s, m=data.draw(st.sampled_from([0.5, 0.0]) | st.floats(0.0, 3.0), label="m"))
    return dict(s=s, m1=data.draw(st.sampled_from([1.0, 0.9, 1.35, 2.0, 4.0]), label="m1"),
                m2=data.draw(st.floats(0.0, 1.0), label="m2"), m3=data.draw(st.floats(-0.5, 0.5), label="m3"))


@pytest.mark.parametrize("family", MARGIN_FAMILY)
@given(data=st.data())
def test_margin_losses_are_non_negative_with_finite_gradients(family, data):
    case = data.draw(COSINES, label="cos")
    rng = data.draw(seeds(), label="rng")
    batch = case.x.shape[:-1]
    target = class_indices(rng, batch, case.classes)
    reduction, grad_output = data.draw(upstream(batch), label="upstream")
    per_row, loss, (dcos,) = run_loss(MARGIN_FAMILY[family], (case.x, target), _margin_options(data, family),
                                      reduction, grad_output)
    _assert_non_negative(per_row, loss)
    # f' is finite everywhere (at c = +-1 it is taken at nextafter(1, 0)), and so is dcos
    assert dcos.shape == case.x.shape and np.all(np.isfinite(dcos))


# ---- L-Softmax and SphereFace ------------------------------------------------------------------


@st.composite
def _features_and_weights(draw, max_rows=6, max_classes=12, max_features=8):
    dtype = np.dtype(draw(dtypes, label="dtype"))
    rows, classes = draw(st.integers(1, max_rows)), draw(st.integers(1, max_classes))
    features = draw(st.integers(1, max_features))
    x = draw(matrices((rows, features), dtype, scales=(1.0, 0.1, 10.0)), label="x")
    W = draw(matrices((classes, features), dtype, scales=(1.0, 0.1, 10.0)), label="W")
    target = class_indices(draw(seeds(), label="rng"), (rows,), classes)
    return x, W, target


@given(data=st.data())
def test_large_margin_cross_entropy_is_non_negative_with_finite_gradients(data):
    x, W, target = data.draw(_features_and_weights(), label="x, W, target")
    options = dict(m=data.draw(st.integers(1, 4), label="m"),
                   lambda_=data.draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 10.0), label="lambda_"),
                   normalize_weights=data.draw(st.booleans(), label="normalize_weights"))
    reduction, grad_output = data.draw(upstream((x.shape[0],)), label="upstream")
    per_row, loss, (dx, dW) = run_loss(large_margin_cross_entropy, (x, W, target), options, reduction, grad_output)
    _assert_non_negative(per_row, loss)
    assert dx.shape == x.shape and dW.shape == W.shape
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dW))


def _gamma(count: int, unit: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): a dot product of n terms errs by <= gamma_n sum |x_k y_k|."""
    return count * unit / (1.0 - count * unit)


@given(data=st.data())
def test_large_margin_cross_entropy_with_m_1_is_softmax_cross_entropy_of_the_linear_logits(data):
    x, W, target = data.draw(_features_and_weights(), label="x, W, target")
    normalize = data.draw(st.booleans(), label="normalize_weights")
    lambda_ = data.draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 10.0), label="lambda_")
    dtype, features = x.dtype, x.shape[1]
    with unmodified(x, W, target):
        per_row = large_margin_cross_entropy(x, W, target, m=1, lambda_=lambda_, normalize_weights=normalize,
                                             reduction="none").astype(np.float64)
    # psi = cos for m = 1 (one branch), so z_y = (lambda x.w + |x||w| cos) / (1 + lambda) = x.w
    weights = W.astype(np.float64)
    if normalize:
        weights = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    logits = x.astype(np.float64) @ weights.T
    entropy = cross_entropy(logits, target, reduction="none")
    # logits: the kernel's BLAS product in the dtype (gamma_D), SphereFace's W / |W| rounded to the
    # dtype (2**-p), the target's Dot2, norms, psi and blend in float64 ((2 D + 12) U64), the reference
    # product in float64 (gamma_D): each logit within delta |x_i| |w_j| (Cauchy-Schwarz), and
    # cross-entropy moves by at most 2 max_j |dz_j|; both losses add their own rounding, the kernel's
    # exponential EXP_RELATIVE in log1p(T) <= L
    unit = unit_roundoff(dtype)
    delta = _gamma(features, unit) + (unit if normalize else 0.0) + (2 * features + 12) * U64
    x_norms = np.linalg.norm(x.astype(np.float64), axis=1)
    logit_error = 2.0 * delta * x_norms * np.linalg.norm(weights, axis=1).max()
    spread = logits.max(axis=1) - logits.min(axis=1)
    depth = 2 * (summation_depth(W.shape[0], np.float64) + ENTRY_ROUNDINGS)
    rounding = depth * U64 * (entropy + spread + 1.0) + EXP_RELATIVE[dtype] * entropy + spacing(entropy, dtype)
    bound = logit_error + rounding
    assert np.all(np.abs(per_row - entropy) <= bound)


# ---- center loss -----------------------------------------------------------------------------------


@st.composite
def _centers_problem(draw):
    dtype = np.dtype(draw(dtypes, label="dtype"))
    rows, classes, features = draw(st.integers(1, 8)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    x = draw(matrices((rows, features), dtype, scales=(1.0, 1e3)), label="x")
    centers = draw(matrices((classes, features), dtype, scales=(1.0, 1e3)), label="centers")
    target = class_indices(draw(seeds(), label="rng"), (rows,), classes)
    return x, target, centers


@given(data=st.data())
def test_center_loss_is_non_negative_and_its_gradients_are_translation_invariant(data):
    x, target, centers = data.draw(_centers_problem(), label="x, target, centers")
    reduction, grad_output = data.draw(upstream((x.shape[0],)), label="upstream")
    per_row, loss, (dx, dcenters) = run_loss(center_loss, (x, target, centers), {}, reduction, grad_output)
    _assert_non_negative(per_row, loss)
    absent = np.setdiff1d(np.arange(centers.shape[0]), target)
    assert np.all(dcenters[absent] == 0.0)
    # moving every x_i and every c_j by the same vector leaves the loss alone, so sum_i dx_i +
    # sum_j dc_j = 0: each g_i (x_i - c) enters twice, with opposite signs, each rounded in float64
    # (a subtraction, a product, a sum of <= N terms) and to the dtype
    scales = row_scales(reduction, grad_output, (x.shape[0],), x.shape[0])
    gaps = np.abs(scales)[:, None] * np.abs(x.astype(np.float64) - centers.astype(np.float64)[target])
    rows = x.shape[0]
    bound = gaps.sum(axis=0) * (2 * unit_roundoff(x.dtype) + (rows + 4) * U64) + 4 * rows * smallest_subnormal(x.dtype)
    terms = np.concatenate([dx, dcenters]).astype(np.float64)
    total = np.array([math.fsum(column) for column in terms.T])
    assert np.all(np.abs(total) <= bound)


@given(data=st.data())
def test_center_update_moves_only_the_batch_classes_and_stays_in_their_hull(data):
    x, target, centers = data.draw(_centers_problem(), label="x, target, centers")
    alpha = data.draw(st.sampled_from([0.0, 0.5, 1.0]) | st.floats(0.0, 1.0), label="alpha")
    with unmodified(x, target, centers):
        updated = center_update(centers, x, target, alpha=alpha)
    assert updated.shape == centers.shape and updated.dtype == centers.dtype
    present = np.unique(target)
    unchanged = np.setdiff1d(np.arange(centers.shape[0]), present) if alpha != 0.0 else np.arange(centers.shape[0])
    assert_bit_identical(updated[unchanged], centers[unchanged], "center_update at classes it must not move")
    # c - alpha sum_i (c - x_i) / (1 + n) = (1 - alpha n / (1 + n)) c + alpha / (1 + n) sum_i x_i: a convex
    # combination (alpha in [0, 1]), inside [min, max] of c and the x_i per coordinate, up to the
    # float64 evaluation ((n + 5) U64 of the terms' size) and the dtype's rounding
    for label in present:
        members = x[target == label].astype(np.float64)
        center = centers[label].astype(np.float64)
        low = np.minimum(center, members.min(axis=0))
        high = np.maximum(center, members.max(axis=0))
        count = members.shape[0]
        tolerance = ((count + 5) * U64 * ((count + 1) * np.abs(center) + np.abs(members).sum(axis=0))
                     + spacing(np.maximum(np.abs(low), np.abs(high)), x.dtype))
        value = updated[label].astype(np.float64)
        assert np.all((value >= low - tolerance) & (value <= high + tolerance)), f"class {label} left its hull"


# ---- normalized_linear -------------------------------------------------------------------------------


@st.composite
def _cosine_problem(draw):
    dtype = np.dtype(draw(dtypes, label="dtype"))
    leading = draw(st.lists(st.integers(1, 4), min_size=1, max_size=2), label="leading shape")
    classes, features = draw(st.integers(1, 10)), draw(st.integers(1, 12))
    x = draw(matrices(tuple(leading) + (features,), dtype, scales=(1.0, 1e-3, 1e3)), label="x")
    W = draw(matrices((classes, features), dtype, scales=(1.0, 1e-3, 1e3)), label="W")
    return x, W


@given(_cosine_problem(), seeds())
def test_normalized_linear_is_a_cosine_and_invariant_to_scaling_by_powers_of_two(problem, rng):
    x, W = problem
    with unmodified(x, W):
        cosines = normalized_linear(x, W)
    assert cosines.shape == x.shape[:-1] + (W.shape[0],) and cosines.dtype == x.dtype
    assert np.all(np.abs(cosines) <= 1.0)  # clamped
    # |2^k x| = 2^k |x| exactly (the norm's own scaling is by a power of two), and so is every step
    # after it: the cosines are bit-identical
    x_scaled = x * np.exp2(rng.integers(-6, 7, x.shape[:-1] + (1,))).astype(x.dtype)
    W_scaled = W * np.exp2(rng.integers(-6, 7, (W.shape[0], 1))).astype(W.dtype)
    assert_bit_identical(normalized_linear(x_scaled, W_scaled), cosines, "normalized_linear after scaling rows")
    # cos(w, w) = 1: the unit rows are rounded to the dtype (2**-p each, 2 2**-p for the square) after
    # a float64 norm ((D + 4) U64), then multiplied by BLAS in the dtype (gamma_D)
    features = W.shape[1]
    diagonal = np.diagonal(normalized_linear(W, W)).astype(np.float64)
    assert np.all(diagonal <= 1.0)
    unit = unit_roundoff(W.dtype)
    assert np.all(diagonal >= 1.0 - (_gamma(features, unit) + 2 * unit + (features + 4) * U64) * (1.0 + 4 * unit))


def _orthogonality_bound(upstream_sizes, features, classes, dtype):
    """|v . dv| for dv = (p - (v_hat . p) v_hat) / |v|, the tangent step, with |p| <= sum |g|.

    v_hat rounded to the dtype (|1 - v_hat.v_hat| <= 2 2**-p + (D + 6) U64), v_hat . p in float64
    (depth D), p - r v_hat and the division (3 U64), the dtype's rounding of dv (2**-p), and v
    against v_hat (2**-p + (D/2 + 3) U64): 6 2**-p + (3 D + 20) U64 of |p|.
    """
    unit = unit_roundoff(dtype)
    return (6 * unit + (3 * features + 20) * U64) * (1.0 + (classes + 1) * unit) * upstream_sizes


@given(_cosine_problem(), seeds())
def test_normalized_linear_backward_is_orthogonal_to_its_inputs(problem, rng):
    x, W = problem
    grad_cos = rng.standard_normal(x.shape[:-1] + (W.shape[0],)).astype(x.dtype)
    with unmodified(x, W, grad_cos):
        dx, dW = normalized_linear_backward(x, W, grad_cos)
    assert dx.shape == x.shape and dW.shape == W.shape
    # cos is invariant to |x_i| and |W_j|: the gradients have no radial component
    features, classes = W.shape[1], W.shape[0]
    upstream_rows = np.abs(grad_cos.astype(np.float64)).reshape(-1, classes)
    for vectors, gradient, sizes in [(x.reshape(-1, features), dx.reshape(-1, features), upstream_rows.sum(axis=1)),
                                     (W, dW, upstream_rows.sum(axis=0))]:
        products = vectors.astype(np.float64) * gradient.astype(np.float64)
        radial = np.abs(products.sum(axis=1))
        bound = _orthogonality_bound(sizes, features, classes, x.dtype) + 2 * U64 * np.abs(products).sum(axis=1)
        assert np.all(radial <= bound)


# ---- regressions: the defects these properties found ---------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", [binary_cross_entropy_with_logits_forward_backward, quadratic_cost_forward_backward])
def test_one_class_elementwise_losses_scale_each_row_by_its_own_grad_output(fused, dtype):
    """Logits (N, 1) with reduction="none" and an array grad_output: row i's gradient is scaled by
    grad_output[i].  The kernel took an upstream of one column for a scalar and used
    grad_output[0, 0] for every row (found by the binary cross-entropy property)."""
    logits = np.array([[0.5], [-1.0], [2.0], [0.25]], dtype=dtype)
    target = np.array([[1.0], [0.0], [1.0], [0.3]], dtype=dtype)
    grad_output = np.array([[1.0], [-2.0], [0.5], [4.0]], dtype=dtype)  # powers of two: exact scaling
    _, unit = fused(logits, target, reduction="none")
    _, grad = fused(logits, target, reduction="none", grad_output=grad_output)
    assert_bit_identical(grad, grad_output * unit, f"{fused.__name__} with one class")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_is_zero_where_the_teacher_has_the_student_s_distribution(dtype, temperature):
    """KL(p || q) = 0 for p = q: one class, or a teacher shifted by a constant.  float32 rows
    counted the teacher's max as exactly 1 in S_v but used exp(0) = 1 - 4.04e-11 (a fit whose
    constant term was not 1; it is now) in the cross
    term, leaving KL = -4e-11 (v - z) / T < 0 (found by the distillation property)."""
    rng = np.random.default_rng(7)
    student = rng.standard_normal((5, 1)).astype(dtype)
    one_class = distillation_loss(student, student + dtype(3.0), temperature=temperature, reduction="none")
    assert np.all(one_class == 0.0)
    student = (np.round(rng.standard_normal((4, 9)) * 1024) / 1024).astype(dtype)  # + 2 is exact
    teacher = student + dtype(2.0)
    loss = distillation_loss(student, teacher, temperature=temperature, reduction="none").astype(np.float64)
    bound = temperature**2 * _divergence_error(student, teacher, temperature, dtype, exponentials=False)
    assert np.all(np.abs(loss) <= bound)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distillation_is_infinite_where_the_student_masks_a_class_of_underflowing_teacher_probability(dtype):
    """A student logit of -inf where the teacher's logit is finite: p_c > 0, KL = +inf, also where
    p_c underflows to 0.  float64 rows gave 0 * inf = NaN in the cross term, and rows of several
    blocks (either dtype) gave it in the merge, where exp(m_b - M) underflows (found by the
    distillation property in the thorough profile)."""
    student = np.array([[0.125, -np.inf]], dtype=dtype)
    teacher = np.array([[2739.0, -4604.0]], dtype=dtype)  # p_2 = e^-7343
    loss, grad = distillation_loss_forward_backward(student, teacher, temperature=1.0, reduction="none")
    assert np.all(loss == np.inf) and np.all(np.isfinite(grad))
    block = block_length(np.dtype(dtype).itemsize)
    student, teacher = np.zeros((1, 3 * block), dtype=dtype), np.zeros((1, 3 * block), dtype=dtype)
    teacher[0, :block] = 5000.0  # the last block's teacher max is 5000 below the row's
    student[0, -1] = -np.inf
    loss, grad = distillation_loss_forward_backward(student, teacher, temperature=1.0, reduction="none")
    assert np.all(loss == np.inf) and np.all(np.isfinite(grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_with_a_smoothing_whose_share_underflows_is_not_nan(dtype):
    """label_smoothing = 5e-324 with two classes: eps / C underflows to 0, which the gradient already
    takes as no smoothing; the loss added 0 * (+inf gap of a masked logit) = NaN (found by the
    class-index cross-entropy property in the thorough profile)."""
    logits = np.array([[0.125, -np.inf], [0.5, 1.5]], dtype=dtype)
    target = np.array([0, 1])
    loss = cross_entropy(logits, target, label_smoothing=5e-324, reduction="none")
    assert_bit_identical(loss, cross_entropy(logits, target, reduction="none"), "the loss with eps/C = 0")
    weighted = cross_entropy(logits, target, label_smoothing=5e-324, weight=np.array([1.0, 2.0], dtype=dtype))
    assert np.isfinite(weighted)
