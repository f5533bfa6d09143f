"""Tests for kernels/_cosine_margins.py and its row kernel (kernels/_margin_rows.py): values and
gradients against exact (mpmath) references and the proof book's closed forms, the ArcFace
ends, threads, vectorization, and bad input for the whole margin family (normalized_linear
and L-Softmax / SphereFace have their own values tests: test_normalized_linear.py,
test_large_margin.py).

Parity with pytorch-metric-learning and InsightFace is in ``test_margin_parity.py``.
"""

from __future__ import annotations

import math
import re

import mpmath
import numba
import numpy as np
import pytest

from softmaxlab.derivations import closed_forms
from softmaxlab.harness import exact as harness_exact
from softmaxlab.kernels import (
    arcface,
    arcface_forward_backward,
    cosface,
    cosface_forward_backward,
    large_margin_cross_entropy,
    large_margin_cross_entropy_forward_backward,
    margin_cross_entropy,
    margin_cross_entropy_forward_backward,
    normalized_linear,
    normalized_linear_backward,
    normface,
    normface_forward_backward,
)
from softmaxlab.kernels import _cosine_margins, _margin_rows
from softmaxlab.kernels._config import block_length

from . import exact
from ._shared import MARGINS, assembly_of

DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (3, 7), (4, 257), (2, 3, 17)]
# Accuracy bounds.  float32: everything in float64, rounded once (exp_f32_wide: 1.1e-10 relative).
# float64: the non-target logits s*c are exact pairs and z_y = s f(c) a pair, so NormFace and
# CosFace are within a few ULP; with an angular margin the rounding of the square root (cos m
# and sin m are exact pairs; acos/cos for m1 != 1) enters z_y: ~s * eps absolute, ~s ULP of a.
ULP_FLOAT32 = 1.0
ULP_FLOAT64_EXACT_TARGET = 8.0


DIGITS = 50  # of the mpmath references


def float64_bound(margins):
    s, m1, m2, _ = margins
    return ULP_FLOAT64_EXACT_TARGET if (m1 == 1.0 and m2 == 0.0) else ULP_FLOAT64_EXACT_TARGET + 2.0 * s


def _cosines(shape, dtype, seed=0, spread=0.4):
    rng = np.random.default_rng(seed)
    return np.tanh(spread * rng.standard_normal(shape)).astype(dtype)


def _targets(shape, classes, seed=0):
    return np.random.default_rng(seed + 100).integers(0, classes, size=shape[:-1])


def _long_row_classes(dtype) -> int:
    """Several blocks, not a multiple of one (the long-row and split paths run)."""
    return 3 * block_length(np.dtype(dtype).itemsize) + 129


# ---- exact reference (mpmath, 50 digits) ------------------------------------------------------


def exact_margin(cos, target, margins, upstream=None, sample=None):
    """Per-row losses and dcos (nested lists of mpf) of the combined-margin cross-entropy,
    each row's gradient times its ``upstream`` (the harness' ``margin_rows_mp``, 50 digits).

    ``sample`` restricts the returned dcos columns (all rows keep their full sums).
    """
    rows = cos.reshape(-1, cos.shape[-1])
    upstream = np.ones(rows.shape[0]) if upstream is None else np.asarray(upstream, dtype=np.float64).reshape(-1)
    with mpmath.workdps(DIGITS):  # set here: no test may rely on another's global precision
        losses, rows_gradient = harness_exact.margin_rows_mp(rows, np.asarray(target).reshape(-1), *margins)
        gradients = [
            [mpmath.mpf(float(weight)) * g for g in (row if sample is None else [row[k] for k in sample])]
            for row, weight in zip(rows_gradient, upstream)
        ]
    return losses, gradients


def _reference_loss(losses, reduction):
    if reduction == "none":
        return losses
    with mpmath.workdps(DIGITS):
        total = mpmath.fsum(losses)
        return [total / len(losses) if reduction == "mean" else total]


# ---- values and gradients against the exact reference ----------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", MARGINS)
def test_margin_cross_entropy_matches_exact_reference(name, shape, dtype):
    margins = MARGINS[name]
    s, m1, m2, m3 = margins
    cos = _cosines(shape, dtype)
    target = _targets(shape, shape[-1])
    upstream = np.random.default_rng(5).standard_normal(shape[:-1])
    loss, dcos = margin_cross_entropy_forward_backward(cos, target, s=s, m1=m1, m2=m2, m3=m3, reduction="none",
                                                       grad_output=upstream)
    assert loss.shape == shape[:-1] and loss.dtype == dtype and dcos.shape == shape and dcos.dtype == dtype
    losses, gradients = exact_margin(cos, target, margins, upstream)
    bound = ULP_FLOAT32 if dtype == np.float32 else float64_bound(margins)
    assert exact.ulp_errors(loss.reshape(-1), losses).max() <= bound
    assert exact.ulp_errors(dcos.reshape(-1, shape[-1]), gradients).max() <= bound
    # the loss-only function agrees with the fused one bit for bit
    np.testing.assert_array_equal(
        margin_cross_entropy(cos, target, s=s, m1=m1, m2=m2, m3=m3, reduction="none"), loss)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_and_grad_output(reduction, dtype):
    margins = MARGINS["arcface"]
    s, m1, m2, m3 = margins
    shape = (6, 41)
    cos, target = _cosines(shape, dtype, seed=3), _targets(shape, shape[-1], seed=3)
    loss, dcos = margin_cross_entropy_forward_backward(cos, target, s=s, m2=m2, reduction=reduction, grad_output=2.5)
    assert loss.shape == () and loss.dtype == dtype
    upstream = np.full(shape[0], 2.5 / shape[0] if reduction == "mean" else 2.5)
    losses, gradients = exact_margin(cos, target, margins, upstream)
    bound = ULP_FLOAT32 if dtype == np.float32 else float64_bound(margins)
    assert exact.ulp_errors(np.array([loss]), _reference_loss(losses, reduction)).max() <= bound
    assert exact.ulp_errors(dcos, gradients).max() <= bound


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 4])
def test_long_rows_split_across_blocks_match_exact_reference(rows, dtype):
    classes = _long_row_classes(dtype)
    shape = (rows, classes)
    cos = _cosines(shape, dtype, seed=rows)
    # targets in the first block, the middle of a block, the last element
    target = np.array([block_length(np.dtype(dtype).itemsize) + 5, 0, classes - 1, 17])[:rows]
    _assert_arcface_is_exact(cos, target)


def _assert_arcface_is_exact(cos, target):
    """ArcFace (s = 64, m = 0.5) on long rows within its ULP bound of mpmath, on every 97th class and the targets."""
    margins = MARGINS["arcface"]
    loss, dcos = arcface_forward_backward(cos, target, s=64.0, m=0.5, reduction="none")
    sample = sorted(set(range(0, cos.shape[-1], 97)) | set(target.tolist()))
    losses, gradients = exact_margin(cos, target, margins, sample=sample)
    bound = ULP_FLOAT32 if cos.dtype == np.float32 else float64_bound(margins)
    assert exact.ulp_errors(loss, losses).max() <= bound
    assert exact.ulp_errors(dcos[:, sample], gradients).max() <= bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_block_holding_only_the_target_adds_nothing(dtype):
    # the last block of a split row is one class, the target's: its pair is (-inf, 0) and must add
    # nothing (it gave NaN: its e^(m_b - M) was taken as undefined)
    classes = 2 * block_length(np.dtype(dtype).itemsize) + 1
    _assert_arcface_is_exact(_cosines((2, classes), dtype, seed=3), np.array([classes - 1, 3]))

def test_presets_are_the_combined_margin():
    cos, target = _cosines((5, 23), np.float64, seed=9), _targets((5, 23), 23, seed=9)
    pairs = [
        (normface_forward_backward(cos, target, s=20.0), dict(s=20.0)),
        (cosface_forward_backward(cos, target, s=30.0, m=0.4), dict(s=30.0, m3=0.4)),
        (arcface_forward_backward(cos, target, s=64.0, m=0.3), dict(s=64.0, m2=0.3)),
    ]
    for (loss, dcos), arguments in pairs:
        expected_loss, expected_dcos = margin_cross_entropy_forward_backward(cos, target, **arguments)
        assert loss == expected_loss
        np.testing.assert_array_equal(dcos, expected_dcos)
    assert normface(cos, target, s=20.0) == pairs[0][0][0]
    assert cosface(cos, target, s=30.0, m=0.4) == pairs[1][0][0]
    assert arcface(cos, target, s=64.0, m=0.3) == pairs[2][0][0]
    assert cosface(cos, target) == margin_cross_entropy(cos, target, s=64.0, m3=0.35)
    assert arcface(cos, target) == margin_cross_entropy(cos, target, s=64.0, m2=0.5)


def test_worked_example_additive_margin_is_softplus_of_the_gap():
    # with an additive margin (Wang et al. 2018, CosFace) the loss is softplus(LSE_{j != y}(s z_j) - s(z_y - m))
    cos = np.array([[0.7, 0.2, -0.1, 0.4]])
    s, m = 30.0, 0.35
    gap = np.log(np.sum(np.exp(s * cos[0, 1:]))) - s * (cos[0, 0] - m)
    assert float(cosface(cos, np.array([0]), s=s, m=m)) == pytest.approx(np.log1p(np.exp(gap)), rel=1e-15)


# ---- against the proof book's closed forms -----------------------------------------------------


def _one_hot(target, classes):
    return np.eye(classes)[target]


@pytest.mark.parametrize("margins", [(8.0, 1.0, 0.0, 0.0), (8.0, 1.0, 0.0, 0.35), (8.0, 1.0, 0.5, 0.0),
                                     (8.0, 1.0, 0.3, 0.2), (8.0, 1.35, 0.1, 0.05)])
def test_gradient_matches_the_proven_closed_form(margins):
    s, m1, m2, m3 = margins
    rng = np.random.default_rng(11)
    cos = rng.uniform(-0.9, 0.9, size=(5, 6))
    target = rng.integers(0, 6, size=5)
    # the closed form has no fallback: keep the targets on the arc side (theta + m1 theta... < pi)
    cos[np.arange(5), target] = rng.uniform(0.1, 0.95, size=5)
    loss, dcos = margin_cross_entropy_forward_backward(cos, target, s=s, m1=m1, m2=m2, m3=m3, reduction="sum")
    one_hot = _one_hot(target, 6)
    proven_loss = closed_forms.combined_margin_cross_entropy(cos, one_hot, s, m1, m2, m3)
    proven_gradient = closed_forms.combined_margin_cross_entropy_gradient(cos, one_hot, s, m1, m2, m3)
    page = closed_forms.combined_margin_cross_entropy_gradient.page
    np.testing.assert_allclose(loss, proven_loss.sum(), rtol=1e-13, err_msg=page)
    np.testing.assert_allclose(dcos, proven_gradient, rtol=1e-12, atol=1e-14 * s, err_msg=page)


def test_arcface_with_fallback_matches_the_proven_closed_form():
    s, m = 8.0, 0.5
    cos = np.array([[0.7, 0.1, -0.3], [-0.95, 0.2, 0.4], [-0.99, -0.5, 0.9], [0.3, 0.0, -1.0]])
    target = np.array([0, 0, 0, 2])  # rows 1, 2 and 3 are in the fallback region (c <= -cos m)
    loss, dcos = arcface_forward_backward(cos, target, s=s, m=m, reduction="sum")
    one_hot = _one_hot(target, 3)
    page = closed_forms.arcface_cross_entropy_gradient.page
    with np.errstate(divide="ignore", invalid="ignore"):  # NumPy evaluates both branches of the Piecewise
        proven_loss = closed_forms.arcface_cross_entropy(cos, one_hot, s, m).sum()
        proven_gradient = closed_forms.arcface_cross_entropy_gradient(cos, one_hot, s, m)
    np.testing.assert_allclose(loss, proven_loss, rtol=1e-13, err_msg=page)
    np.testing.assert_allclose(dcos, proven_gradient, rtol=1e-12, atol=1e-14, err_msg=page)


@pytest.mark.parametrize("dtype", DTYPES)
def test_target_logit_and_derivative_match_the_proven_closed_forms(dtype):
    m = 0.5
    c_max = _cosine_margins.derivative_limit(dtype)
    switch = math.cos(math.pi - m)
    values = np.array([-1.0, -0.99, switch - 1e-9, switch + 1e-9, -0.3, 0.0, 0.5, 0.9999, float(c_max), 1.0])
    high, low, slope = _cosine_margins.combined_margin_target(values, 1.0, 1.0, m, 0.0, c_max)
    page = closed_forms.arcface_target_logit_derivative.page
    # rtol 2e-15: the closed form, evaluated in float64, cancels in sqrt(1 - c^2) at c = 0.9999
    # (1.1e-15 from mpmath there).  Ours against mpmath: cos m and sin m are pairs, the square
    # root's rounding remains, ~7 ULP where f(c) cancels (c = 0.5: f = 0.024; measured 7.09)
    np.testing.assert_allclose(high + low, closed_forms.arcface_target_logit(values, m), rtol=2e-15, atol=1e-16,
                               err_msg=closed_forms.arcface_target_logit.page)
    with mpmath.workdps(DIGITS):
        arc = [mpmath.cos(mpmath.acos(mpmath.mpf(float(v))) + m) for v in values if v > switch]
    assert exact.ulp_errors((high + low)[values > switch], arc).max() <= 8.0
    with np.errstate(divide="ignore", invalid="ignore"):  # NumPy evaluates both branches of the Piecewise
        proven_slope = closed_forms.arcface_target_logit_derivative(values, m, c_max)
    # atol: near the switch f' ~ 1e-9 and the closed form's sqrt(1 - c^2) cancels (ours: sqrt((1-c)(1+c)))
    np.testing.assert_allclose(slope, proven_slope, rtol=1e-12, atol=1e-12, err_msg=page)
    # the general combined margin (no fallback), away from c = +-1 where f' is unbounded
    inner = np.linspace(-0.95, 0.95, 9)
    for m1, m2, m3 in [(1.35, 0.0, 0.0), (1.0, 0.3, 0.2), (0.8, 0.2, 0.1)]:
        high, low, slope = _cosine_margins.combined_margin_target(inner, 3.0, m1, m2, m3, c_max)
        if m1 == 1.0:  # this one uses the fallback below cos(pi - m2); all of inner is above
            assert (inner > math.cos(math.pi - m2)).all()
        np.testing.assert_allclose(high + low, closed_forms.combined_margin_target_logit(inner, 3.0, m1, m2, m3),
                                   rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(3.0 * slope,
                                   closed_forms.combined_margin_target_logit_derivative(inner, 3.0, m1, m2, m3),
                                   rtol=1e-12, err_msg=closed_forms.combined_margin_target_logit_derivative.page)


@pytest.mark.parametrize("name", ["cosface", "arcface", "arc+cos", "m1=1.35"])
def test_gradient_matches_central_differences(name):
    s, m1, m2, m3 = MARGINS[name]
    rng = np.random.default_rng(2)
    cos = rng.uniform(-0.8, 0.8, size=(4, 9))
    target = np.array([0, 3, 8, 5])
    cos[np.arange(4), target] = [0.6, 0.2, -0.3, 0.75]  # away from the ArcFace switch at -cos m
    upstream = rng.standard_normal(4)
    _, dcos = margin_cross_entropy_forward_backward(cos, target, s=s, m1=m1, m2=m2, m3=m3, reduction="none",
                                                    grad_output=upstream)

    def objective(values):
        return float(np.dot(upstream, margin_cross_entropy(values, target, s=s, m1=m1, m2=m2, m3=m3,
                                                           reduction="none")))

    step = 1e-6
    for _ in range(3):
        direction = rng.standard_normal(cos.shape)
        numeric = (objective(cos + step * direction) - objective(cos - step * direction)) / (2 * step)
        assert np.sum(dcos * direction) == pytest.approx(numeric, rel=1e-7, abs=1e-7 * s)


# ---- the ends: cos = +-1, the ArcFace switch -------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_cosines_of_exactly_one_and_minus_one_give_finite_loss_and_gradient(dtype):
    cos = np.array([[1.0, 0.2, -1.0], [-1.0, 1.0, 0.0], [0.3, -1.0, 1.0], [1.0, 1.0, 1.0]], dtype=dtype)
    target = np.array([0, 0, 2, 1])
    for name, margins in MARGINS.items():
        s, m1, m2, m3 = margins
        loss, dcos = margin_cross_entropy_forward_backward(cos, target, s=s, m1=m1, m2=m2, m3=m3, reduction="none")
        assert np.isfinite(loss).all() and np.isfinite(dcos).all(), name
        losses, gradients = exact_margin(cos, target, margins)
        bound = ULP_FLOAT32 if dtype == np.float32 else float64_bound(margins)
        assert exact.ulp_errors(loss, losses).max() <= bound, name
        assert exact.ulp_errors(dcos, gradients).max() <= bound, name


@pytest.mark.parametrize("dtype", DTYPES)
def test_arcface_derivative_at_one_is_the_derivative_at_c_max(dtype):
    # docs/proofs/margins.md#arcface-derivative-at-the-ends: f'(1) := f'(nextafter(1, 0))
    s, m = 64.0, 0.5
    c_max = np.nextafter(dtype(1.0), dtype(0.0))
    cos = np.array([[1.0, 0.1], [c_max, 0.1]], dtype=dtype)
    target = np.array([0, 0])
    _, dcos = arcface_forward_backward(cos, target, s=s, m=m, reduction="none")
    slope = math.cos(m) + math.sin(m) * float(c_max) / math.sqrt((1 - float(c_max)) * (1 + float(c_max)))
    expected = closed_forms.arcface_target_logit_derivative(np.array(1.0), m, float(c_max))
    assert slope == pytest.approx(float(expected), rel=1e-12)
    for row in range(2):
        probabilities = np.exp(s * np.array([math.cos(math.acos(float(cos[row, 0])) + m), float(cos[row, 1])]))
        probabilities /= probabilities.sum()
        assert float(dcos[row, 0]) == pytest.approx(s * slope * (probabilities[0] - 1), rel=1e-5)
        assert np.isfinite(dcos[row]).all()
    assert dcos[0, 0] != 0  # the margin's gradient is not dropped


@pytest.mark.parametrize("dtype", DTYPES)
def test_theta_just_below_and_above_pi_minus_m(dtype):
    s, m = 16.0, 0.5
    switch = math.cos(math.pi - m)  # theta = pi - m
    above = np.nextafter(dtype(switch), dtype(1.0))  # theta just below pi - m: the arc branch
    for _ in range(3):
        above = np.nextafter(above, dtype(1.0))
    below = np.nextafter(dtype(switch), dtype(-1.0))  # theta just above pi - m: the fallback
    for _ in range(3):
        below = np.nextafter(below, dtype(-1.0))
    assert float(below) < switch < float(above)
    cos = np.array([[above, 0.0], [below, 0.0]], dtype=dtype)
    target = np.array([0, 0])
    high, low, slope = _cosine_margins.combined_margin_target(cos[:, 0], s, 1.0, m, 0.0,
                                                              _cosine_margins.derivative_limit(dtype))
    arc = math.cos(math.acos(float(above)) + m)
    fallback = float(below) - m * math.sin(m)
    assert (high[0] + low[0]) / s == pytest.approx(arc, abs=1e-12)
    assert (high[1] + low[1]) / s == pytest.approx(fallback, abs=1e-15)
    # the value jumps by cos m + m sin m - 1 (docs/proofs/margins.md#arcface-fallback) ...
    assert arc - fallback == pytest.approx(math.cos(m) + m * math.sin(m) - 1, abs=1e-6)
    # ... and f' goes from ~0 (arc side) to 1 (fallback)
    assert abs(slope[0]) < 1e-2 and slope[1] == 1.0
    loss, dcos = arcface_forward_backward(cos, target, s=s, m=m, reduction="none")
    losses, gradients = exact_margin(cos, target, (s, 1.0, m, 0.0))
    assert exact.ulp_errors(loss, losses).max() <= (ULP_FLOAT32 if dtype == np.float32 else 40.0)
    assert exact.ulp_errors(dcos[:, 1:], [row[1:] for row in gradients]).max() <= (
        ULP_FLOAT32 if dtype == np.float32 else 40.0)
    # the target logit is monotone: larger theta never gives a larger logit
    assert high[1] < high[0]


@pytest.mark.parametrize("m", [0.3, 0.5, 1.0])
def test_arcface_slope_near_pi_minus_m_has_no_cancellation(m):
    # f'(c) = cos m + sin m c / sin theta -> 0 as theta -> pi - m: written directly it cancels
    # (1e14 ULP at 1 ulp from the switch, before the conjugate form of _arc_slope); now within
    # 4 ULP of mpmath from 1 ulp above the switch up to c = 1 (measured: at most 3.8)
    switch = math.cos(math.pi - m)
    rng = np.random.default_rng(int(m * 10))
    c = np.concatenate([switch + np.spacing(abs(switch)) * np.arange(1, 40), rng.uniform(switch, 1.0, 300)])
    c = c[c > switch]
    _, _, slope = _cosine_margins.combined_margin_target(c, 64.0, 1.0, m, 0.0, 1 - 2.0 ** -53)
    with mpmath.workdps(DIGITS):
        exact_slopes = [mpmath.sin(mpmath.acos(mpmath.mpf(float(v))) + m) / mpmath.sqrt(1 - mpmath.mpf(float(v)) ** 2)
                        for v in c]
    assert exact.ulp_errors(slope, exact_slopes).max() <= 4.0
    # and dcos's target column near the switch, where dcos_y = s f'(c) (a_y - 1)
    cos = np.array([[c[k], 0.1, -0.2] for k in range(6)])
    target = np.zeros(6, dtype=np.int64)
    _, dcos = arcface_forward_backward(cos, target, s=64.0, m=m, reduction="none")
    _, gradients = exact_margin(cos, target, (64.0, 1.0, m, 0.0))
    assert exact.ulp_errors(dcos, gradients).max() <= 8.0


def test_target_logit_is_nondecreasing_in_the_cosine_for_arcface():
    c = np.linspace(-1.0, 1.0, 20001)
    high, low, slope = _cosine_margins.combined_margin_target(c, 1.0, 1.0, 0.5, 0.0, 1 - 2.0 ** -53)
    assert np.all(np.diff(high + low) >= -1e-15) and np.all(slope >= 0.0)


# ---- edge semantics ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_stays_in_its_row(dtype):
    cos = _cosines((4, 9), dtype, seed=4)
    target = np.array([1, 2, 3, 4])
    cos[1, 5] = np.nan  # a non-target NaN
    cos[2, 3] = np.nan  # a target NaN
    loss, dcos = arcface_forward_backward(cos, target, reduction="none")
    assert np.isnan(loss[[1, 2]]).all() and np.isfinite(loss[[0, 3]]).all()
    assert np.isnan(dcos[[1, 2]]).all() and np.isfinite(dcos[[0, 3]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_class_has_zero_loss_and_gradient(dtype):
    loss, dcos = arcface_forward_backward(np.array([[0.3], [1.0]], dtype=dtype), np.array([0, 0]), reduction="none")
    np.testing.assert_array_equal(loss, [0.0, 0.0])
    np.testing.assert_array_equal(dcos, [[0.0], [0.0]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_dominant_target_keeps_a_tiny_loss_exactly(dtype):
    # target cos 1, others -1, s = 30: loss = (C - 1) e^(-30 (1 + cos m)) ~ 2e-24, no 1 + tiny rounding
    cos = np.full((1, 5), -1.0, dtype=dtype)
    cos[0, 2] = 1.0
    loss, dcos = arcface_forward_backward(cos, np.array([2]), s=30.0, reduction="none")
    losses, gradients = exact_margin(cos, np.array([2]), (30.0, 1.0, 0.5, 0.0))
    assert 0 < float(loss[0]) < 1e-20
    bound = ULP_FLOAT32 if dtype == np.float32 else float64_bound((30.0, 1.0, 0.5, 0.0))
    assert exact.ulp_errors(loss, losses).max() <= bound
    assert exact.ulp_errors(dcos, gradients).max() <= bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_and_leading_axes(dtype):
    wide = _cosines((6, 40), dtype, seed=6)
    view = wide[::2, ::3]
    target = np.array([0, 5, 13])
    loss, dcos = arcface_forward_backward(view, target, reduction="none")
    expected_loss, expected_dcos = arcface_forward_backward(np.ascontiguousarray(view), target, reduction="none")
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(dcos, expected_dcos)
    batched = wide.reshape(2, 3, 40)
    batched_target = np.arange(6).reshape(2, 3)
    loss, dcos = cosface_forward_backward(batched, batched_target, reduction="none")
    flat_loss, flat_dcos = cosface_forward_backward(wide, batched_target.reshape(-1), reduction="none")
    np.testing.assert_array_equal(loss, flat_loss.reshape(2, 3))
    np.testing.assert_array_equal(dcos, flat_dcos.reshape(2, 3, 40))


def test_inputs_are_not_modified():
    rng = np.random.default_rng(8)
    cos, target = _cosines((3, 11), np.float32, seed=8), np.array([1, 2, 3])
    x, W = rng.standard_normal((3, 5)), rng.standard_normal((11, 5))
    grad = rng.standard_normal((3, 11))
    upstream = rng.standard_normal(3)
    saved = [array.copy() for array in (cos, target, x, W, grad, upstream)]
    arcface_forward_backward(cos, target, reduction="none", grad_output=upstream)
    margin_cross_entropy(cos, target, s=4.0, m1=1.2)
    normalized_linear(x, W)
    normalized_linear_backward(x, W, grad)
    large_margin_cross_entropy_forward_backward(x, W, target, m=3, normalize_weights=True)
    for array, copy in zip((cos, target, x, W, grad, upstream), saved):
        np.testing.assert_array_equal(array, copy)


# ---- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 3, 9])
def test_results_are_bit_identical_for_one_and_two_threads(threads, rows, dtype):
    # rows = 1 and 3 share long rows between threads (split), rows = 9 gives each thread whole rows
    classes = _long_row_classes(dtype)
    cos = _cosines((rows, classes), dtype, seed=rows)
    target = np.arange(rows) * 1237 % classes
    rng = np.random.default_rng(rows)
    x, W = rng.standard_normal((rows, 6)).astype(dtype), rng.standard_normal((50, 6)).astype(dtype)
    results = []
    for count in (1, 2):
        threads(count)
        results.append([*arcface_forward_backward(cos, target, reduction="none"),
                        margin_cross_entropy(cos, target, s=30.0, m1=1.35, reduction="none"),
                        *large_margin_cross_entropy_forward_backward(x, W, target % 50, m=3, normalize_weights=True),
                        *normalized_linear_backward(x, W, normalized_linear(x, W))])
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


# ---- vectorization ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_hot_loops_vectorize_without_libm_calls(dtype):
    values = _cosines((300,), dtype)
    destination = np.empty_like(values)
    calls = {_margin_rows._sum_exp_scaled: (values, values, 64.0, 64.0),
             _margin_rows._write_scaled_softmax: (values, destination, 64.0, 64.0, 0.5)}
    for function, arguments in calls.items():
        assembly = assembly_of(function, tuple(numba.typeof(argument) for argument in arguments))
        assert re.search(r"%[yz]mm", assembly), function
        # no libm exp anywhere (called directly or through a loaded address): the kernels' own exp
        assert not re.search(r"\b(exp|expf|__exp_finite)\b", assembly), function


# ---- bad input --------------------------------------------------------------------------------


_COS = np.full((3, 5), 0.1)
_TARGET = np.array([0, 1, 2])
_X = np.ones((3, 4))
_W = np.arange(20.0).reshape(5, 4) + 1.0

BAD_CALLS = [
    (lambda: margin_cross_entropy([[0.1, 0.2]], np.array([0]), s=1.0), TypeError, r"cos must be a numpy\.ndarray"),
    (lambda: margin_cross_entropy(np.ones((3, 5), dtype=np.int64), _TARGET, s=1.0), TypeError,
     r"cos must have dtype float32 or float64, got int64"),
    (lambda: arcface(_COS.astype(np.float16), _TARGET), TypeError, r"cos must have dtype .* got float16"),
    (lambda: arcface(np.ones((0, 5)), np.zeros(0, dtype=int)), ValueError, r"cos must have at least one row"),
    (lambda: arcface(_COS, [0, 1, 2]), TypeError, r"target must be a numpy\.ndarray"),
    (lambda: arcface(_COS, _TARGET.astype(float)), TypeError, r"target must have an integer dtype"),
    (lambda: arcface(_COS, np.array([0, 1])), ValueError, r"target must have shape \(3,\), got \(2,\)"),
    (lambda: arcface(_COS, np.array([0, 1, 7])), ValueError, r"target must hold class indices in \[0, 5\), got 7 at row 2"),
    (lambda: cosface(_COS, np.array([0, -1, 9])), ValueError, r"got -1 at row 1"),
    (lambda: arcface(_COS, _TARGET, s=0.0), ValueError, r"s must be > 0"),
    (lambda: arcface(_COS, _TARGET, s=-64.0), ValueError, r"s must be > 0"),
    (lambda: cosface(_COS, _TARGET, s=np.nan), ValueError, r"s must be finite"),
    (lambda: normface(_COS, _TARGET, s="30"), TypeError, r"s must be a real number, got str"),
    (lambda: margin_cross_entropy(_COS, _TARGET, s=1.0, m1=0.0), ValueError, r"m1 must be > 0"),
    (lambda: margin_cross_entropy(_COS, _TARGET, s=1.0, m2=-0.1), ValueError, r"m2 must be >= 0"),
    (lambda: margin_cross_entropy(_COS, _TARGET, s=1.0, m2=4.0), ValueError, r"m2 must be < 3\.14"),
    (lambda: margin_cross_entropy(_COS, _TARGET, s=1.0, m3=True), TypeError, r"m3 must be a real number, got bool"),
    (lambda: arcface(_COS, _TARGET, m=-0.5), ValueError, r"m must be >= 0"),
    (lambda: cosface(_COS, _TARGET, m=None), TypeError, r"m must be a real number"),
    (lambda: arcface(_COS, _TARGET, reduction="avg"), ValueError, r"reduction must be one of"),
    (lambda: arcface(_COS, _TARGET, reduction=None), TypeError, r"reduction must be one of"),
    (lambda: arcface_forward_backward(_COS, _TARGET, grad_output=np.ones(3)), ValueError,
     r"grad_output must be a scalar for reduction='mean'"),
    (lambda: arcface_forward_backward(_COS, _TARGET, reduction="none", grad_output=np.ones(4)), ValueError,
     r"grad_output must have the loss' shape \(3,\), got \(4,\)"),
    (lambda: arcface_forward_backward(_COS, _TARGET, grad_output="1"), TypeError, r"grad_output must be a real"),
    (lambda: normalized_linear(_X.astype(np.int32), _W), TypeError, r"x must have dtype float32 or float64"),
    (lambda: normalized_linear(_X, _W.astype(np.float32)), TypeError, r"W must have the dtype of x"),
    (lambda: normalized_linear(_X, _W[:, :3]), ValueError, r"W must have 4 columns"),
    (lambda: normalized_linear(_X, _W[None]), ValueError, r"W must be 2-D"),
    (lambda: normalized_linear(_X, _W.tolist()), TypeError, r"W must be a numpy\.ndarray"),
    (lambda: normalized_linear_backward(_X, _W, np.ones((3, 4))), ValueError,
     r"grad_cos must have the shape of normalized_linear\(x, W\) \(3, 5\)"),
    (lambda: normalized_linear_backward(_X, _W, np.ones((3, 5), dtype=np.float32)), TypeError,
     r"grad_cos must have the dtype of x"),
    (lambda: large_margin_cross_entropy(_X, _W, _TARGET, m=0), ValueError, r"m must be an integer in 1\.\.4, got 0"),
    (lambda: large_margin_cross_entropy(_X, _W, _TARGET, m=5), ValueError, r"m must be an integer in 1\.\.4, got 5"),
    (lambda: large_margin_cross_entropy(_X, _W, _TARGET, m=2.5), ValueError, r"m must be an integer, got 2\.5"),
    (lambda: large_margin_cross_entropy(_X, _W, _TARGET, m="4"), TypeError, r"m must be an integer, got str"),
    (lambda: large_margin_cross_entropy(_X, _W, _TARGET, m=2, lambda_=-1.0), ValueError, r"lambda_ must be >= 0"),
    (lambda: large_margin_cross_entropy(_X, _W, _TARGET, m=2, normalize_weights=1), TypeError,
     r"normalize_weights must be a bool"),
    (lambda: large_margin_cross_entropy(_X[0], _W, _TARGET, m=2), ValueError, r"x must be 2-D"),
    (lambda: large_margin_cross_entropy(_X, _W, np.array([0, 5, 1]), m=2), ValueError, r"got 5 at row 1"),
    (lambda: large_margin_cross_entropy(_X.astype(np.float16), _W, _TARGET, m=2), TypeError, r"x must have dtype"),
    (lambda: large_margin_cross_entropy_forward_backward(_X, _W, _TARGET, m=2, reduction="none", grad_output=[1.0]),
     TypeError, r"grad_output must be a real"),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_integral_float_margin_is_accepted():
    assert large_margin_cross_entropy(_X + np.arange(4), _W, _TARGET, m=2.0) == large_margin_cross_entropy(
        _X + np.arange(4), _W, _TARGET, m=2)
