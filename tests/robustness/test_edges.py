"""The edge cases of the README's "Semantics at the edges" tables, one test per line.

The last column of each table names the test here (``test_<name>``);
``test_every_readme_line_names_a_test_here`` checks that the two agree.  docs/design.md: never
NaN where the mathematics has a value (logsumexp of an all -inf row is -inf, its softmax
zeros, its gradients zeros; a loss whose target logit is -inf is +inf); NaN in a row
gives NaN in that row only.  float32 and float64 throughout.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from softmaxlab import kernels

INF, NAN = np.inf, np.nan
DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
README = Path(__file__).resolve().parents[2] / "README.md"
ROW_LOSSES = ("cross_entropy", "smooth_hinge", "multiclass_hinge")  # (logits, target) losses with a row softmax
MARGIN_PRESETS = {"normface": {"s": 8.0}, "cosface": {"s": 8.0}, "arcface": {"s": 8.0},
                  "margin_cross_entropy": {"s": 8.0, "m1": 2.0, "m2": 0.1, "m3": 0.1}}


def forward_backward(name, *args, **options):
    """(loss, gradient, ...) of ``name`` with reduction="none", as arrays."""
    result = getattr(kernels, f"{name}_forward_backward")(*args, reduction="none", **options)
    return tuple(np.asarray(value) for value in result)


def rows(values, dtype):
    return np.array(values, dtype=dtype)


def assert_close(actual, expected, dtype, factor=8):
    tolerance = factor * np.finfo(dtype).eps
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, rtol=tolerance, atol=tolerance)


def cross_entropy_reference(logits, target):
    """-log softmax(z)_y = log1p(sum_{j != y} e^(z_j - z_y)) per row, float64 (NumPy), moderate finite rows."""
    logits = np.asarray(logits, dtype=np.float64)
    gaps = logits - logits[np.arange(len(target)), target][:, None]
    gaps[np.arange(len(target)), target] = -np.inf
    return np.log1p(np.exp(gaps).sum(axis=-1))


# ---- normalizers ----------------------------------------------------------------------------


@DTYPES
def test_normalizer_large_logits(dtype):
    x = rows([[1000, 500, 500], [-1000, -1000, -1000]], dtype)
    assert_close(kernels.softmax(x), [[1, 0, 0], [1 / 3] * 3], dtype)
    assert_close(kernels.log_softmax(x), [[0, -500, -500], [-math.log(3)] * 3], dtype)
    assert_close(kernels.logsumexp(x), [1000, -1000 + math.log(3)], dtype)
    y = kernels.softmax(x)
    assert np.isfinite(kernels.softmax_backward(y, x)).all()
    assert np.isfinite(kernels.log_softmax_backward(kernels.log_softmax(x), x)).all()


@DTYPES
def test_normalizer_all_minus_inf(dtype):
    x = rows([[-INF] * 3, [1, 2, 3]], dtype)
    assert (kernels.softmax(x)[0] == 0).all() and (kernels.log_softmax(x)[0] == -INF).all()
    assert kernels.logsumexp(x)[0] == -INF
    dy = rows([[1, 2, 3], [1, 2, 3]], dtype)
    assert (kernels.softmax_backward(kernels.softmax(x), dy)[0] == 0).all()
    assert (kernels.log_softmax_backward(kernels.log_softmax(x), dy)[0] == 0).all()


@DTYPES
def test_normalizer_minus_inf_entries(dtype):
    x = rows([[1, -INF, 2, -INF]], dtype)
    probabilities = kernels.softmax(x)
    assert_close(probabilities, [[1 / (1 + math.e), 0, math.e / (1 + math.e), 0]], dtype)
    assert (kernels.log_softmax(x)[0, [1, 3]] == -INF).all()
    assert_close(kernels.logsumexp(x), [2 + math.log1p(math.exp(-1))], dtype)
    dy = rows([[1, 2, 3, 4]], dtype)
    assert (kernels.softmax_backward(probabilities, dy)[0, [1, 3]] == 0).all()
    # dx_i = dy_i - exp(y_i) sum(dy): dy_i where the probability is 0
    assert (kernels.log_softmax_backward(kernels.log_softmax(x), dy)[0, [1, 3]] == dy[0, [1, 3]]).all()


@DTYPES
def test_normalizer_nan_row(dtype):
    x = rows([[1, NAN, 2], [1, 2, 3]], dtype)
    for function in (kernels.softmax, kernels.log_softmax):
        out = function(x)
        assert np.isnan(out[0]).all() and (out[1] == function(x[1:])[0]).all()
    assert np.isnan(kernels.logsumexp(x)[0]) and np.isfinite(kernels.logsumexp(x)[1])
    for forward, backward in ((kernels.softmax, kernels.softmax_backward),
                              (kernels.log_softmax, kernels.log_softmax_backward)):
        out = backward(forward(x), rows([[1, 1, 1], [1, 2, 3]], dtype))
        assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()


@DTYPES
def test_normalizer_plus_inf(dtype):
    one, two = rows([[1, INF, 2]], dtype), rows([[INF, 0, INF]], dtype)
    assert (kernels.softmax(one) == [[0, 1, 0]]).all()
    assert (kernels.log_softmax(one) == [[-INF, 0, -INF]]).all()
    assert kernels.logsumexp(one)[0] == INF and kernels.logsumexp(two)[0] == INF
    assert np.isnan(kernels.softmax(two)).all() and np.isnan(kernels.log_softmax(two)).all()


@DTYPES
def test_normalizer_one_class(dtype):
    x = rows([[3.5], [-2.0]], dtype)
    assert (kernels.softmax(x) == 1).all() and (kernels.log_softmax(x) == 0).all()
    assert (kernels.logsumexp(x) == x[:, 0]).all()


@DTYPES
def test_normalizer_zero_classes(dtype):
    x = np.zeros((2, 0), dtype)
    assert kernels.softmax(x).shape == (2, 0) and kernels.log_softmax(x).shape == (2, 0)
    assert (kernels.logsumexp(x) == -INF).all()


@DTYPES
def test_normalizer_empty_batch(dtype):
    x = np.zeros((0, 3), dtype)
    assert kernels.softmax(x).shape == kernels.log_softmax(x).shape == (0, 3)
    assert kernels.logsumexp(x).shape == (0,)


# ---- losses -------------------------------------------------------------------------------------


@DTYPES
def test_all_minus_inf_row(dtype):
    logits = rows([[-INF] * 3, [1, 2, 0.5]], dtype)
    target = np.array([1, 0])
    for name in ROW_LOSSES:
        loss, grad = forward_backward(name, logits, target)
        assert loss[0] == INF and (grad[0] == 0).all() and np.isfinite(loss[1]), name
    loss, grad = forward_backward("cross_entropy", logits, kernels.softmax(rows([[0, 1, 2]] * 2, dtype)))
    assert loss[0] == INF and (grad[0] == 0).all()
    teacher = rows([[0, 1, 2]] * 2, dtype)
    for student_target in (None, target):
        loss, grad = forward_backward("distillation_loss", logits, teacher, student_target)
        assert loss[0] == INF and (grad[0] == 0).all() and np.isfinite(loss[1])
    # an all -inf teacher row: p = 0, the soft term vanishes and only the hard term is left
    masked_teacher = rows([[-INF] * 3] * 2, dtype)
    student = logits[1:].repeat(2, axis=0)
    loss, grad = forward_backward("distillation_loss", student, masked_teacher, target, alpha=0.25)
    hard_loss, hard_grad = forward_backward("cross_entropy", student, target)
    assert_close(loss, 0.75 * hard_loss, dtype)
    assert_close(grad, 0.75 * hard_grad, dtype)


@DTYPES
def test_target_logit_minus_inf(dtype):
    logits = rows([[-INF, 1, 2]], dtype)
    target = np.array([0])
    others = np.exp([1, 2]) / np.exp([1, 2]).sum()
    for name in ROW_LOSSES:
        loss, grad = forward_backward(name, logits, target)
        assert loss[0] == INF and np.isfinite(grad).all(), name
    assert_close(forward_backward("cross_entropy", logits, target)[1], [[-1, *others]], dtype)
    assert (forward_backward("multiclass_hinge", logits, target)[1] == [[-2, 1, 1]]).all()
    loss, grad = forward_backward("cross_entropy", logits, target, label_smoothing=0.1)
    assert loss[0] == INF and np.isfinite(grad).all()
    loss, grad = forward_backward("distillation_loss", logits, rows([[0, 1, 2]], dtype), target, alpha=0.5)
    assert loss[0] == INF and np.isfinite(grad).all()
    # binary cross-entropy: the infinite side of each entry's target
    loss, grad = forward_backward("binary_cross_entropy_with_logits", rows([[-INF, INF, -INF, INF]], dtype),
                                  rows([[1, 0, 0, 1]], dtype))
    assert (loss == [[INF, INF, 0, 0]]).all() and (grad == [[-1, 1, 0, 0]]).all()
    # margin losses: a target cosine is clamped to [-1, 1] first, -inf acts as -1
    for name, options in MARGIN_PRESETS.items():
        masked = forward_backward(name, rows([[-INF, 0.2, 0.1]], dtype), target, **options)
        clamped = forward_backward(name, rows([[-1, 0.2, 0.1]], dtype), target, **options)
        for got, expected in zip(masked, clamped):
            assert np.isfinite(got).all() and got.tobytes() == expected.tobytes(), name


@DTYPES
def test_masked_logits(dtype):
    """A -inf logit (cosine) outside the target is a class with probability 0: as if absent."""
    masked, kept = rows([[1, -INF, 2, 0.5], [0, -INF, -1, 3]], dtype), rows([[1, 2, 0.5], [0, -1, 3]], dtype)
    target = np.array([0, 2])
    for name in ROW_LOSSES:
        loss, grad = forward_backward(name, masked, target + np.array([0, 1]))
        kept_loss, kept_grad = forward_backward(name, kept, target)
        assert_close(loss, kept_loss, dtype)
        assert (grad[:, 1] == 0).all(), name
        assert_close(np.delete(grad, 1, axis=1), kept_grad, dtype)
    loss, grad = forward_backward("distillation_loss", masked, masked[::-1], target + np.array([0, 1]))
    kept_loss, kept_grad = forward_backward("distillation_loss", kept, kept[::-1], target)
    assert_close(loss, kept_loss, dtype, 64)
    assert (grad[:, 1] == 0).all()
    for name, options in MARGIN_PRESETS.items():
        cosines = np.tanh(kept)
        loss, grad = forward_backward(name, np.insert(cosines, 1, -INF, axis=1), target + np.array([0, 1]), **options)
        kept_loss, kept_grad = forward_backward(name, cosines, target, **options)
        assert_close(loss, kept_loss, dtype, 64)
        assert (grad[:, 1] == 0).all(), name


@DTYPES
def test_nan_row(dtype):
    logits = rows([[1, NAN, 2], [1, 2, 0.5], [0.5, -1, 3]], dtype)
    target = np.array([0, 1, 2])

    def assert_nan_in_first_row_only(outputs, clean_outputs, name):
        for got, clean in zip(outputs, clean_outputs):
            assert np.isnan(got[0]).all() and got[1:].tobytes() == clean.tobytes(), name

    for name in ROW_LOSSES:
        assert_nan_in_first_row_only(forward_backward(name, logits, target),
                                     forward_backward(name, logits[1:], target[1:]), name)
    teacher = rows([[0, 1, 2]] * 3, dtype)
    assert_nan_in_first_row_only(forward_backward("distillation_loss", logits, teacher, target),
                                 forward_backward("distillation_loss", logits[1:], teacher[1:], target[1:]), "teacher")
    for name, options in MARGIN_PRESETS.items():
        assert_nan_in_first_row_only(forward_backward(name, np.tanh(logits), target, **options),
                                     forward_backward(name, np.tanh(logits[1:]), target[1:], **options), name)
    assert np.isnan(kernels.cross_entropy(logits, target)) and np.isnan(kernels.cross_entropy(logits, target,
                                                                                               reduction="sum"))
    # elementwise losses: that entry only
    for name in ("binary_cross_entropy_with_logits", "quadratic_cost"):
        loss, grad = forward_backward(name, logits, np.full_like(logits, 0.5))
        assert (np.isnan(loss) == np.isnan(logits)).all() and (np.isnan(grad) == np.isnan(logits)).all(), name
    # features: the row's cosines, loss and dx; dW sums over every row, so all of it is NaN
    features, weights = rows([[NAN, 1], [1, 2], [3, -1]], dtype), rows([[1, 0], [0, 1], [1, 1]], dtype)
    cosines = kernels.normalized_linear(features, weights)
    assert np.isnan(cosines[0]).all() and np.isfinite(cosines[1:]).all()
    # an infinite feature has no direction either: its row's cosines are NaN, the others' finite
    infinite = kernels.normalized_linear(rows([[INF, 1], [1, 2], [3, -1]], dtype), weights)
    assert np.isnan(infinite[0]).all() and np.array_equal(infinite[1:], cosines[1:])
    dx, dW = kernels.normalized_linear_backward(features, weights, np.ones_like(cosines))
    assert np.isnan(dx[0]).all() and np.isfinite(dx[1:]).all() and np.isnan(dW).all()
    for normalize_weights in (False, True):
        loss, dx, dW = forward_backward("large_margin_cross_entropy", features, weights, target, m=2,
                                        normalize_weights=normalize_weights)
        assert np.isnan(loss[0]) and np.isfinite(loss[1:]).all() and np.isnan(dx[0]).all()
        assert np.isfinite(dx[1:]).all() and np.isnan(dW).all()
    # center loss: the row's loss and dx, and the center of its class only
    centers = rows([[0, 0], [1, 1], [2, 0]], dtype)
    loss, dx, dcenters = forward_backward("center_loss", features, target, centers)
    assert np.isnan(loss[0]) and np.isfinite(loss[1:]).all() and np.isnan(dx[0]).any() and np.isfinite(dx[1:]).all()
    assert np.isnan(dcenters[0]).any() and np.isfinite(dcenters[1:]).all()
    updated = kernels.center_update(centers, features, target)
    assert np.isnan(updated[0]).any() and np.isfinite(updated[1:]).all()


@DTYPES
def test_empty_batch(dtype):
    logits, labels = np.zeros((0, 3), dtype), np.zeros(0, dtype=np.int64)
    calls = {
        "cross_entropy": (logits, labels), "smooth_hinge": (logits, labels), "multiclass_hinge": (logits, labels),
        "distillation_loss": (logits, logits, labels), "binary_cross_entropy_with_logits": (logits, logits),
        "quadratic_cost": (logits, logits),
    }
    for name, args in calls.items():
        function = getattr(kernels, f"{name}_forward_backward")
        for reduction in ("mean", "sum"):
            loss, grad = function(*args, reduction=reduction)
            assert loss == 0 and np.asarray(loss).dtype == dtype and grad.shape == (0, 3), name
        assert forward_backward(name, *args)[0].size == 0, name
    weights = rows([[1, 0], [0, 1], [1, 1]], dtype)
    assert kernels.normalized_linear(np.zeros((0, 2), dtype), weights).shape == (0, 3)
    dx, dW = kernels.normalized_linear_backward(np.zeros((0, 2), dtype), weights, logits)
    assert dx.shape == (0, 2) and (dW == 0).all()
    for name, options in MARGIN_PRESETS.items():
        with pytest.raises(ValueError, match=r"cos must have at least one row and one class, got shape \(0, 3\)"):
            getattr(kernels, name)(logits, labels, **options)
    features = np.zeros((0, 2), dtype)
    with pytest.raises(ValueError, match=r"x must have at least one row, got shape \(0, 2\)"):
        kernels.large_margin_cross_entropy(features, weights, labels, m=2)
    for call in (lambda: kernels.center_loss(features, labels, weights),
                 lambda: kernels.center_update(weights, features, labels)):
        with pytest.raises(ValueError, match=r"x and centers must have at least one row, got shapes \(0, 2\)"):
            call()


@DTYPES
def test_one_class(dtype):
    logits, target = rows([[3.5], [-2.0]], dtype), np.array([0, 0])
    for name in ROW_LOSSES:
        loss, grad = forward_backward(name, logits, target)
        assert (loss == 0).all() and (grad == 0).all(), name
        assert (forward_backward(name, rows([[-INF]], dtype), target[:1])[0] == INF).all(), name
    # distillation: KL(p || q) = 0 for p = q = [1], up to the rounding of its terms (the float32
    # rows' exponential gives exp(0) = 1 - 4e-11): |loss| <= u T^2 (|v - z| / T + log C)
    loss, grad = forward_backward("distillation_loss", logits, logits[::-1], target)
    assert (np.abs(loss) <= np.finfo(dtype).eps * 16 * 5.5 / 4).all() and (grad == 0).all()
    for name, options in MARGIN_PRESETS.items():
        loss, grad = forward_backward(name, rows([[0.3], [1.0], [-1.0]], dtype), np.zeros(3, np.int64), **options)
        assert (loss == 0).all() and (grad == 0).all(), name
    features, weights = rows([[2, 0], [-1, 1]], dtype), rows([[1, 1]], dtype)
    for normalize_weights in (False, True):
        loss, dx, dW = forward_backward("large_margin_cross_entropy", features, weights, target, m=3,
                                        normalize_weights=normalize_weights)
        assert (loss == 0).all() and (dx == 0).all() and (dW == 0).all()
    assert_close(kernels.normalized_linear(features, weights), [[math.sqrt(0.5)], [0]], dtype)


@DTYPES
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.2, "weight": np.array([0.5, 1.0, 2.0])}],
                         ids=["plain", "smoothed-weighted"])
def test_ignored_rows(dtype, options):
    logits = rows([[1, 2, 0.5], [0, -1, 3], [2, 2, 2]], dtype)
    target = np.array([0, -100, 2])
    loss, grad = forward_backward("cross_entropy", logits, target, **options)
    assert loss[1] == 0 and (grad[1] == 0).all()
    kept = [0, 2]
    mean, mean_grad = kernels.cross_entropy_forward_backward(logits, target, **options)
    kept_mean, kept_grad = kernels.cross_entropy_forward_backward(logits[kept], target[kept], **options)
    assert_close(mean, kept_mean, dtype)
    assert_close(mean_grad[kept], kept_grad, dtype)
    ignored = np.full(3, -100)
    for reduction in ("mean", "sum", "none"):
        loss, grad = kernels.cross_entropy_forward_backward(logits, ignored, reduction=reduction, **options)
        assert (np.asarray(loss) == 0).all() and np.shape(loss) == ((3,) if reduction == "none" else ())
        assert (grad == 0).all()


@DTYPES
def test_probability_target_ignore_index(dtype):
    logits = rows([[1, 2, 0.5], [0, -1, 3]], dtype)
    probabilities = rows([[0.2, 0.3, 0.5], [1, 0, 0]], dtype)
    for call in (kernels.cross_entropy, kernels.cross_entropy_forward_backward):
        with pytest.raises(ValueError, match="ignore_index is not supported for class-probability targets"):
            call(logits, probabilities, ignore_index=0)
    plain = kernels.cross_entropy_forward_backward(logits, probabilities, reduction="none")
    negative = kernels.cross_entropy_forward_backward(logits, probabilities, reduction="none", ignore_index=-1)
    for a, b in zip(plain, negative):
        assert np.array_equal(a, b)


@DTYPES
def test_zero_norm(dtype):
    features, weights = rows([[1, 2], [0, 0]], dtype), rows([[1, 0], [0, 1], [1, 1]], dtype)
    zero_weights = rows([[1, 0], [0, 1], [0, 0]], dtype)
    target = np.array([0, 1])
    calls = [
        (lambda x, W: kernels.normalized_linear(x, W)),
        (lambda x, W: kernels.normalized_linear_backward(x, W, np.ones((len(x), 3), dtype))),
        (lambda x, W: kernels.large_margin_cross_entropy(x, W, target[: len(x)], m=2)),
        (lambda x, W: kernels.large_margin_cross_entropy_forward_backward(x, W, target[: len(x)], m=2,
                                                                          normalize_weights=True)),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"x row 1 has norm 0"):
            call(features, weights)
        with pytest.raises(ValueError, match=r"W row 2 has norm 0"):  # not a target's row: still an error
            call(features[:1] + 1, zero_weights)
    # no normalization in the center loss: a zero feature is an ordinary point
    loss, dx, dcenters = forward_backward("center_loss", features, target, weights)
    assert_close(loss, [0.5 * 4, 0.5 * 1], dtype)


@DTYPES
def test_cosine_of_plus_or_minus_one(dtype):
    cos, target, s, m = rows([[1.0, 0.2], [-1.0, 0.3]], dtype), np.array([0, 0]), 8.0, 0.5
    loss, dcos = forward_backward("arcface", cos, target, s=s, m=m)
    assert np.isfinite(loss).all() and np.isfinite(dcos).all()
    # cos = 1: f' is taken at c_max = nextafter(1, 0) (finite); cos = -1: the fallback c - m sin m, f' = 1
    c_max = float(np.nextafter(dtype(1), dtype(0)))
    slope = math.cos(m) + math.sin(m) * c_max / math.sqrt((1 - c_max) * (1 + c_max))
    logits = s * np.asarray(cos, np.float64)
    logits[:, 0] = [s * math.cos(m), s * (-1 - m * math.sin(m))]  # s f(1) = s cos m, s f(-1)
    reference = cross_entropy_reference(logits, target)
    assert_close(loss, reference, dtype, 64)
    target_minus_one = np.expm1(-reference)  # a_y - 1
    assert_close(dcos[:, 0], s * np.array([slope, 1.0]) * target_minus_one, dtype, 64)
    for name, options in MARGIN_PRESETS.items():
        loss, dcos = forward_backward(name, cos, target, **options)
        assert np.isfinite(loss).all() and np.isfinite(dcos).all(), name
    # L-Softmax / SphereFace: x parallel (theta = 0, psi = 1) and antiparallel (theta = pi, psi = 1 - 2m) to W_y
    weights = rows([[2, 0], [0, 1], [1, 1]], dtype)
    features = rows([[3, 0], [-1, 0]], dtype)
    for normalize_weights in (False, True):
        for margin in (1, 2, 3, 4):
            loss, dx, dW = forward_backward("large_margin_cross_entropy", features, weights, target, m=margin,
                                            normalize_weights=normalize_weights)
            assert np.isfinite(loss).all() and np.isfinite(dx).all() and np.isfinite(dW).all()
            used = weights / np.linalg.norm(weights, axis=1, keepdims=True) if normalize_weights else weights
            logits = np.asarray(features, np.float64) @ np.asarray(used, np.float64).T
            logits[1, 0] = (1 - 2 * margin) * abs(logits[1, 0])  # |W_y||x| psi(pi)
            assert_close(loss, cross_entropy_reference(logits, target), dtype, 64)


Z, V = np.array([[1.0, -2.0, 0.5, 3.0]]), np.array([[0.0, 1.0, 2.0, -1.0]])


@DTYPES
def test_tiny_temperature(dtype):
    # T -> 0: p and q are one-hot at the teacher's and the student's argmax (classes 2 and 3 here):
    # T^2 KL = T^2 (z_3 - z_2) / T = 2.5 T, and the gradient T (q - p)
    temperature = 1e-30
    loss, grad = forward_backward("distillation_loss", Z.astype(dtype), V.astype(dtype), temperature=temperature)
    assert_close(loss, [2.5 * temperature], dtype)
    assert_close(grad, [[0, 0, -temperature, temperature]], dtype)


@DTYPES
@pytest.mark.parametrize("temperature", [1e4, 1e6])
def test_huge_temperature(dtype, temperature):
    # T -> inf: matching logits, T^2 KL -> (1/2C) sum_c (d_c - mean d)^2 with d = z - v, and the
    # gradient T (q - p) -> (d - mean d) / C (Hinton et al. 2015, section 2.1)
    difference = (Z - V)[0]
    centered = difference - difference.mean()
    loss, grad = forward_backward("distillation_loss", Z.astype(dtype), V.astype(dtype), temperature=temperature)
    # KL ~ 1/T^2 is formed as a difference of terms of size (max|v - z| / T + log C): absolute error
    # about u T^2 log C (float64 arithmetic inside), plus the O(1/T) distance to the limit
    rounding = 8 * np.finfo(np.float64).eps * temperature**2 * (np.abs(difference).max() / temperature + math.log(4))
    assert abs(loss[0] - (centered**2).sum() / 8) <= rounding + 1e-3 * 1e4 / temperature
    assert_close(grad[0], centered / 4, dtype, 1e-3 / np.finfo(dtype).eps * 1e4 / temperature + 8)


@DTYPES
def test_logits_of_plus_or_minus_1e4(dtype):
    logits = rows([[1e4, -1e4, 0]], dtype)
    loss, grad = forward_backward("cross_entropy", logits, np.array([1]))
    assert loss[0] == 2e4 and (grad == [[1, -1, 0]]).all()
    loss, grad = forward_backward("cross_entropy", logits, np.array([0]))
    assert loss[0] == 0 and (grad == 0).all()
    loss, grad = forward_backward("multiclass_hinge", logits, np.array([1]))
    assert loss[0] == 30002 and (grad == [[1, -2, 1]]).all()
    loss, grad = forward_backward("smooth_hinge", logits, np.array([1]))
    assert_close(loss, [2e4], dtype)
    loss, grad = forward_backward("distillation_loss", logits, logits[:, ::-1], np.array([0]))
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    # sigmoid losses: exact zeros and ones, never inf - inf
    targets = rows([[1, 0, 0.5]], dtype)
    loss, grad = forward_backward("binary_cross_entropy_with_logits", logits, targets)
    assert_close(loss, [[0, 0, math.log(2)]], dtype)
    assert (grad[0, :2] == 0).all()
    loss, grad = forward_backward("binary_cross_entropy_with_logits", logits, 1 - targets)
    assert (loss[0, :2] == 1e4).all() and (grad[0, :2] == [1, -1]).all()
    loss, grad = forward_backward("quadratic_cost", logits, 1 - targets)
    assert (loss[0, :2] == 0.5).all() and (grad[0, :2] == 0).all()
    # margin losses with s cos = +-1e4, large-margin logits of 1e4, center loss at 1e4
    for name, options in MARGIN_PRESETS.items():
        loss, dcos = forward_backward(name, rows([[1, -1], [-1, 1]], dtype), np.array([0, 0]), **{**options, "s": 1e4})
        assert np.isfinite(loss).all() and np.isfinite(dcos).all() and loss[0] == 0, name
    loss, dx, dW = forward_backward("large_margin_cross_entropy", rows([[100, 0]], dtype),
                                    rows([[100, 0], [0, 100]], dtype), np.array([1]), m=2)
    assert loss[0] == 2e4 and np.isfinite(dx).all() and np.isfinite(dW).all()
    loss, dx, dcenters = forward_backward("center_loss", rows([[1e4, -1e4]], dtype), np.array([0]),
                                          rows([[0, 0]], dtype))
    assert loss[0] == 1e8 and (dx == [[1e4, -1e4]]).all()


# ---- the README's tables name these tests --------------------------------------------------------


def readme_test_names():
    section = README.read_text().split("## Semantics at the edges")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
    body = [line for line in lines if not re.match(r"\|\s*input\b", line)]
    return [line.rstrip(" |").rsplit("|", 1)[1].strip(" `") for line in body]


def test_every_readme_line_names_a_test_here():
    names = readme_test_names()
    assert len(names) >= 20
    defined = {name[len("test_"):] for name in globals() if name.startswith("test_")}
    assert set(names) <= defined, set(names) - defined
    assert defined - set(names) == {"every_readme_line_names_a_test_here"}
