"""ULP, relative and condition-aware error against an exact value held as a float64 pair; term magnitudes."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from softmaxlab.harness import exact as references
from softmaxlab.harness.metrics import (
    STAT_COLUMNS,
    Exact,
    condition_error,
    error_stats,
    ulp_at,
    underflow_error,
    unit_roundoff,
)
from softmaxlab.harness.registry import REGISTRY, VARIANTS


def exact(values, lo=None):
    hi = np.asarray(values, dtype=np.float64)
    return Exact(hi, np.zeros_like(hi) if lo is None else np.asarray(lo, dtype=np.float64), "test")


@pytest.mark.parametrize(
    "value, dtype, expected",
    [
        (1.0, np.float32, 2.0**-23),
        (1.0, np.float64, 2.0**-52),
        (1.5, np.float32, 2.0**-23),
        (-3.0, np.float64, 2.0**-51),
        (0.0, np.float32, 2.0**-149),  # zero: the subnormal spacing
        (0.0, np.float64, 2.0**-1074),
        (1e-40, np.float32, 2.0**-149),  # float32 subnormal range
        (1e-310, np.float64, 2.0**-1074),
        (3e38 * 4, np.float32, 2.0**104),  # above float32's range: its top binade
    ],
)
def test_ulp_at(value, dtype, expected):
    assert ulp_at(exact([value]), dtype)[0] == expected


def test_ulp_just_below_a_power_of_two_is_the_lower_binade():
    # exact value 1 - 1e-30: hi rounds to 1.0, lo pulls it below; its binade is [1/2, 1)
    assert ulp_at(exact([1.0], [-1e-30]), np.float32)[0] == 2.0**-24
    assert ulp_at(exact([1.0], [+1e-30]), np.float32)[0] == 2.0**-23


def test_one_ulp_away_is_one_ulp(rng):
    values = rng.uniform(-5, 5, size=1000).astype(np.float32)
    neighbours = np.nextafter(values, np.float32(np.inf))
    stats = error_stats(neighbours, exact(values.astype(np.float64)), np.float32)
    assert stats["max_ulp"] == pytest.approx(1.0) and stats["median_ulp"] == pytest.approx(1.0)
    assert stats["max_rel"] < 2.0**-22


def test_the_low_part_counts():
    # computed 1.0 against exact 1 + 2**-60: 2**-60 / 2**-52 = 2**-8 ULP of float64
    stats = error_stats(np.array([1.0]), exact([1.0], [2.0**-60]), np.float64)
    assert stats["max_ulp"] == 2.0**-8


def test_non_finite_results_are_counted_not_averaged():
    truth = exact([1.0, 2.0, -np.inf, -np.inf])
    computed = np.array([1.0, np.nan, -np.inf, np.nan])
    stats = error_stats(computed, truth, np.float64)
    assert list(stats) == list(STAT_COLUMNS)
    assert stats["n_values"] == 2 and stats["n_nonfinite"] == 1
    assert stats["n_special"] == 2 and stats["n_special_mismatch"] == 1
    assert stats["max_ulp"] == 0.0


def test_relative_error_of_an_exact_zero():
    stats = error_stats(np.array([0.0, 1e-30]), exact([0.0, 0.0]), np.float64)
    assert stats["max_rel"] == np.inf and stats["median_rel"] == np.inf
    assert error_stats(np.array([0.0]), exact([0.0]), np.float64)["max_rel"] == 0.0


def test_all_non_finite_gives_nan_statistics():
    stats = error_stats(np.array([np.inf, np.nan]), exact([1.0, 2.0]), np.float32)
    assert stats["n_nonfinite"] == 2 and np.isnan(stats["max_ulp"])


def test_shape_and_dtype_are_validated():
    with pytest.raises(ValueError, match="computed must have the exact value's shape"):
        error_stats(np.zeros(3), exact([0.0, 0.0]), np.float64)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        ulp_at(exact([1.0]), np.float16)


def test_rowwise_ulps_measure_against_the_row_scale():
    # an error of 2**-23 on an entry of 1e-10 is enormous elementwise, one ULP of the row's 1.0
    truth = exact([[1.0, 1e-10], [4.0, 4.0]])
    computed = np.array([[1.0, 1e-10 + 2.0**-23], [4.0, 4.0 + 2.0**-21]])
    stats = error_stats(computed, truth, np.float32)
    assert stats["max_rowwise_ulp"] == pytest.approx(1.0)
    assert stats["max_ulp"] > 1e5


# ---- the condition-aware error ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_rounded_cancelling_sum_scores_a_few_u_where_its_ulp_error_is_huge(rng, dtype):
    # (1 + b) - 1 in the dtype, each operation correctly rounded: the exact value is b, the
    # rounding of 1 + b costs up to u (1 + b), so |error| <= gamma_2 (1 + b + 1) (the
    # recursive summation bound) and the error in u of the terms is at most about 2
    small = (rng.uniform(1, 2, size=500) * 2.0 ** rng.integers(-40, -10, size=500)).astype(dtype)
    one = dtype(1)
    computed = (one + small) - one
    truth = exact(small.astype(np.float64))  # b, exactly
    scale = 2 + small.astype(np.float64)  # |1| + |b| + |-1|
    stats = error_stats(computed, truth, dtype, scale=scale)
    assert stats["max_ulp"] > 1e3  # the elementwise view: most of b's digits are lost
    assert 0 < stats["max_cond"] <= 2 * (1 + 2 * unit_roundoff(dtype))


def test_a_wrong_result_scores_large(rng):
    truth = rng.normal(size=200)
    scale = np.abs(truth) + rng.uniform(1, 2, size=200)
    computed = truth + 1e-4 * scale  # wrong by 1e-4 of the terms: 1e-4 / 2**-53, about 9e11 u
    stats = error_stats(computed, exact(truth), np.float64, scale=scale)
    assert stats["median_cond"] == pytest.approx(1e-4 / 2.0**-53, rel=1e-6)


def test_a_correctly_rounded_result_scores_at_most_one(rng):
    truth = rng.normal(size=1000) * 2.0 ** rng.integers(-160, 10, size=1000)  # subnormal float32 included
    computed = truth.astype(np.float32)  # rounded to nearest
    stats = error_stats(computed, exact(truth), np.float32, scale=np.abs(truth))
    assert stats["max_cond"] <= 1
    # below half the smallest subnormal a rounding to 0 costs up to eta / 2, which the denominator holds
    assert underflow_error(np.float32) == 2.0**-149 and underflow_error(np.float64) == 2.0**-1074 > 0
    tiny = exact([2.0**-150])
    assert condition_error(np.zeros(1, np.float32), tiny, np.zeros(1), np.float32)[0] == 0.5
    # an exact zero of scale zero, computed exactly, scores 0 (not 0/0) in both dtypes
    for dtype in (np.float32, np.float64):
        assert condition_error(np.zeros(1, dtype), exact([0.0]), np.zeros(1), dtype)[0] == 0


def test_entries_without_a_scale_are_left_out_and_no_scale_gives_nan():
    truth = exact([1.0, 1.0, 1.0])
    computed = np.array([1.0, 1.0 + 2.0**-40, 1.0 + 2.0**-30])
    measured = error_stats(computed, truth, np.float64, scale=np.array([1.0, 1.0, np.nan]))
    assert measured["max_cond"] == pytest.approx(2.0**13)  # the third entry's 2**23 is not counted
    assert measured["median_cond"] == pytest.approx(2.0**12)
    unmeasured = error_stats(computed, truth, np.float64, scale=np.full(3, np.nan))
    assert np.isnan(unmeasured["max_cond"]) and np.isnan(unmeasured["median_cond"])
    plain = error_stats(computed, truth, np.float64)
    assert np.isnan(plain["max_cond"]) and plain["max_ulp"] == pytest.approx(2.0**22)
    # a NaN result is counted as non-finite and kept out of the condition-aware statistics too
    nan_result = error_stats(np.array([np.nan, 1.0, 1.0]), truth, np.float64, scale=np.ones(3))
    assert nan_result["n_nonfinite"] == 1 and nan_result["max_cond"] == 0.0


def test_scale_is_validated():
    with pytest.raises(ValueError, match="scale must have the exact value's shape"):
        error_stats(np.zeros(2), exact([0.0, 0.0]), np.float64, scale=np.ones(3))
    with pytest.raises(ValueError, match="scale must be a magnitude"):
        error_stats(np.zeros(2), exact([0.0, 0.0]), np.float64, scale=np.array([1.0, -1.0]))


# ---- the term magnitudes, against a direct evaluation at 50 digits ------------------------------------


def direct_softmax(row, temperature=1):
    """softmax of one row, straight from the definition in mpmath (0 for an all -inf row)."""
    with mpmath.workdps(50):
        values = [mpmath.mpf(float(v)) / temperature for v in row]
        largest = max(values)
        if largest == -mpmath.inf:
            return [mpmath.mpf(0)] * len(values)
        exps = [mpmath.exp(v - largest) for v in values]
        total = mpmath.fsum(exps)
        return [e / total for e in exps]


def assert_scale_matches(scale, direct, gradient):
    """``scale`` equals the direct values to float64 rounding and bounds |gradient| (scale >= |value|)."""
    direct = np.array([[float(v) for v in row] for row in direct])
    np.testing.assert_allclose(scale, direct, rtol=1e-13, atol=0)
    assert (scale >= np.abs(gradient.hi) * (1 - 1e-15)).all()


@pytest.mark.parametrize("regime", ["normal_x3", "dominant", "masked"])
def test_normalizer_scales_against_direct_evaluation(regime):
    inputs = REGISTRY["softmax_backward"].make_inputs(regime, (9, 7), "float32", 3)
    x, dy = inputs["x"], inputs["dy"]
    softmax_terms, log_softmax_terms = [], []
    for row, upstream in zip(x, dy):
        a = direct_softmax(row)
        g = [abs(mpmath.mpf(float(v))) for v in upstream]
        softmax_terms.append([a_i * (g_i + mpmath.fsum(a_k * g_k for a_k, g_k in zip(a, g)))
                              for a_i, g_i in zip(a, g)])
        log_softmax_terms.append([g_i + a_i * mpmath.fsum(g) for a_i, g_i in zip(a, g)])
    assert_scale_matches(references.softmax_vjp_scale(x, dy), softmax_terms, references.softmax_vjp(x, dy))
    assert_scale_matches(references.log_softmax_vjp_scale(x, dy), log_softmax_terms,
                         references.log_softmax_vjp(x, dy))


@pytest.mark.parametrize("options", [
    {},
    {"label_smoothing": 0.1, "weight": np.array([0.5, 2.0, 1.0, 1.0, 3.0, 1.0, 0.25])},
    {"reduction": "none", "grad_output": np.linspace(-2, 2, 9), "ignore_index": 2},
])
def test_cross_entropy_scale_against_direct_evaluation(options):
    inputs = REGISTRY["cross_entropy_forward_backward"].make_inputs("dominant", (9, 7), "float64", 5)
    logits, target = inputs["logits"], inputs["target"].copy()
    target[1] = 2  # ignored with ignore_index=2
    smoothing = options.get("label_smoothing", 0.0)
    weights = options.get("weight", np.ones(7))
    kept = [options.get("ignore_index", -100) != label for label in target]
    denominator = sum(weights[label] for label, keep in zip(target, kept) if keep)
    direct = []
    for i, row in enumerate(logits):
        a = direct_softmax(row)
        t = [smoothing * w / 7 + (1 - smoothing) * w * (j == target[i]) for j, w in enumerate(weights)]
        g = abs(options["grad_output"][i]) if "grad_output" in options else 1 / denominator
        direct.append([g * kept[i] * (mpmath.fsum(t) * a_j + t_j) for a_j, t_j in zip(a, t)])
    scale = references.cross_entropy_gradient_scale(logits, target, **options)
    _, gradient = references.exact_cross_entropy(logits, target, **options)
    assert_scale_matches(scale, direct, gradient)


def test_distillation_scale_against_direct_evaluation():
    inputs = REGISTRY["distillation_loss_forward_backward"].make_inputs("normal_x3", (6, 5), "float32", 1)
    student, teacher, target = inputs["student"], inputs["teacher"], inputs["target"]
    temperature, alpha = 4.0, 0.9
    direct = []
    for i in range(6):
        q, p, a = direct_softmax(student[i], temperature), direct_softmax(teacher[i], temperature), \
            direct_softmax(student[i])
        direct.append([(alpha * temperature * (q[c] + p[c]) + (1 - alpha) * (a[c] + (c == target[i]))) / 6
                       for c in range(5)])
    scale = references.distillation_gradient_scale(student, teacher, target)
    _, gradient = references.exact_distillation_loss(student, teacher, target)
    assert_scale_matches(scale, direct, gradient)


def test_normalized_linear_scales_against_direct_evaluation(rng):
    x, W, upstream = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)), rng.normal(size=(3, 5))
    x_unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    w_unit = W / np.linalg.norm(W, axis=1, keepdims=True)
    direct_dx = np.zeros_like(x)
    for i in range(3):
        # |P_ie| <= Q_ie = sum_j |G_ij| |w_hat_je|; (x_hat . P) x_hat_e <= (sum_f |x_hat_if| Q_if) |x_hat_ie|
        terms = [sum(abs(upstream[i, j]) * abs(w_unit[j, e]) for j in range(5)) for e in range(4)]
        along = sum(abs(x_unit[i, f]) * terms[f] for f in range(4))
        direct_dx[i] = [(terms[e] + along * abs(x_unit[i, e])) / np.linalg.norm(x[i]) for e in range(4)]
    dx, dW = references.normalized_linear_gradient_scales(x, W, upstream)
    np.testing.assert_allclose(dx, direct_dx, rtol=1e-13)
    swapped, _ = references.normalized_linear_gradient_scales(W, x, upstream.T)  # dW is dx with the roles swapped
    np.testing.assert_allclose(dW, swapped, rtol=1e-13)
    exact_dx, exact_dW = references.exact_normalized_linear(x, W, upstream)
    assert (dx >= np.abs(exact_dx.hi)).all() and (dW >= np.abs(exact_dW.hi)).all()


@pytest.mark.parametrize("regime", ["normal_x3", "dominant"])
def test_cosface_scale_against_direct_evaluation(regime):
    # CosFace's target logit s (c - m) has f' = 1: the target's scale is (s / N)(a_y + 1)
    inputs = REGISTRY["cosface_forward_backward"].make_inputs(regime, (4, 6), "float64", 2)
    cos, target = inputs["cos"], inputs["target"]
    s, m = 64.0, 0.35
    direct = []
    for row, label in zip(cos, target):
        logits = [s * c for c in row]
        logits[label] = s * (row[label] - m)
        a = direct_softmax(logits)
        direct.append([s / 4 * (a_j + (j == label)) for j, a_j in enumerate(a)])
    scale = references.margin_gradient_scale(cos, target, s, 1.0, 0.0, m)
    assert_scale_matches(scale, direct, references.exact_margin(cos, target, s, 1.0, 0.0, m)[1])


def test_large_margin_scales_against_direct_evaluation(rng):
    # m = 1 on raw weights is plain cross-entropy on z = x W^T (psi(c) = c, alpha = 1, radial = 0):
    # dx_i = sum_{j != y} a_j w_j / N + (a_y - 1) w_y / N, scaled by a_j |w_j| / N and (a_y + 1) |w_y| / N
    x, W, target = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), np.array([1, 4, 1, 0])
    weights = np.zeros((4, 5))
    for i in range(4):
        a = direct_softmax(x[i] @ W.T)
        weights[i] = [float(a_j + (j == target[i])) / 4 for j, a_j in enumerate(a)]
    direct_dx = [[sum(weights[i, j] * abs(W[j, e]) for j in range(5)) for e in range(3)] for i in range(4)]
    direct_dw = [[sum(weights[i, j] * abs(x[i, e]) for i in range(4)) for e in range(3)] for j in range(5)]
    dx, dw = references.large_margin_gradient_scales(x, W, target, 1, 0.0, False)
    np.testing.assert_allclose(dx, direct_dx, rtol=1e-13)
    np.testing.assert_allclose(dw, direct_dw, rtol=1e-13)
    _, exact_dx, exact_dw = references.exact_large_margin(x, W, target, 1, 0.0, False)
    assert (dx >= np.abs(exact_dx.hi)).all() and (dw >= np.abs(exact_dw.hi)).all()


def test_center_scales_against_direct_evaluation(rng):
    x, centers, target = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), np.array([0, 2, 0, 3, 2])
    dx, dcenters = references.center_gradient_scales(x, target, centers)
    direct_dx = [[(abs(x[i, e]) + abs(centers[target[i], e])) / 5 for e in range(3)] for i in range(5)]
    direct_dc = [[sum(direct_dx[i][e] for i in range(5) if target[i] == j) for e in range(3)] for j in range(4)]
    np.testing.assert_allclose(dx, direct_dx, rtol=1e-15)
    np.testing.assert_allclose(dcenters, direct_dc, rtol=1e-15)
    _, exact_dx, exact_dc = references.exact_center(x, target, centers)
    assert (dx >= np.abs(exact_dx.hi)).all() and (dcenters >= np.abs(exact_dc.hi)).all()
    assert (dcenters[1] == 0).all()  # no row of class 1


@pytest.mark.parametrize("options", [{}, {"weight": np.linspace(0.5, 2, 7), "pos_weight": np.full(7, 3.0)}])
def test_elementwise_loss_scales_against_direct_evaluation(options):
    inputs = REGISTRY["quadratic_cost_forward_backward"].make_inputs("normal_x3", (3, 7), "float64", 4)
    logits, target = inputs["logits"], inputs["target"]
    weights = options.get("weight", np.ones(7))
    positives = options.get("pos_weight", np.ones(7))
    binary, quadratic = [], []
    with mpmath.workdps(50):
        for row, labels in zip(logits, target):
            sigma = [1 / (1 + mpmath.exp(-mpmath.mpf(float(v)))) for v in row]
            binary.append([w * ((1 - y) * a + p * y * (1 - a)) / 21
                           for w, p, y, a in zip(weights, positives, labels, sigma)])
            quadratic.append([(a * (1 - y) + y * (1 - a)) * a * (1 - a) / 21 for y, a in zip(labels, sigma)])
    assert_scale_matches(references.binary_cross_entropy_gradient_scale(logits, target, **options), binary,
                         references.exact_binary_cross_entropy_with_logits(logits, target, **options)[1])
    if not options:
        assert_scale_matches(references.quadratic_cost_gradient_scale(logits, target), quadratic,
                             references.exact_quadratic_cost(logits, target)[1])


def test_the_registry_gives_every_gradient_with_a_scale_one_of_its_shape():
    entries = [REGISTRY[name] for name in ("softmax_backward", "log_softmax_backward", "cross_entropy_forward_backward",
                                          "distillation_loss_forward_backward", "normalized_linear_backward",
                                          "margin_cross_entropy_forward_backward", "arcface_forward_backward",
                                          "center_loss_forward_backward",
                                          "large_margin_cross_entropy_forward_backward",
                                          "binary_cross_entropy_with_logits_forward_backward",
                                          "quadratic_cost_forward_backward", "multiclass_hinge_forward_backward")]
    entries.append(VARIANTS["cross_entropy_forward_backward[label_smoothing=0.1]"])
    for entry in entries:
        inputs = entry.make_inputs("normal_x3", (3, 5), "float64", 0)
        scales = entry.output_scales(inputs, "auto")
        for name, scale, value in zip(entry.outputs, scales, entry.exact(inputs, "auto")):
            if name == "loss":
                assert scale is None
            else:
                assert scale.shape == value.hi.shape and (scale >= np.abs(value.hi) * (1 - 1e-15)).all()
    assert REGISTRY["softmax"].output_scales({}, "auto") == (None,)
