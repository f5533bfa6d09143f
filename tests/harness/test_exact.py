"""The exact references: hand-computed values, the edge conventions, and engine agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmaxlab.harness import exact, regimes
from softmaxlab.harness.metrics import ulp_at

FUNCTIONS = {
    "softmax": lambda x, dy, engine: exact.softmax(x, engine),
    "log_softmax": lambda x, dy, engine: exact.log_softmax(x, engine),
    "logsumexp": lambda x, dy, engine: exact.logsumexp(x, engine),
    "softmax_vjp": lambda x, dy, engine: exact.softmax_vjp(x, dy, engine),
    "log_softmax_vjp": lambda x, dy, engine: exact.log_softmax_vjp(x, dy, engine),
}
ENGINES = (exact.MPMATH_ENGINE, exact.LONGDOUBLE_ENGINE)


def value(reference):
    return reference.hi + reference.lo


@pytest.mark.parametrize("engine", ENGINES)
def test_hand_computed_values(engine):
    # softmax([0, log 3]) = [1/4, 3/4]; with dy = [1, 0]: dot = 1/4, dx = [3/16, -3/16]
    x = np.array([[0.0, math.log(3.0)]])
    dy = np.array([[1.0, 0.0]])
    np.testing.assert_allclose(value(exact.softmax(x, engine)), [[0.25, 0.75]], rtol=1e-15)
    np.testing.assert_allclose(value(exact.softmax_vjp(x, dy, engine)), [[3 / 16, -3 / 16]], rtol=1e-14)
    # log_softmax_vjp: dx = dy - a * sum(dy) = [1 - 1/4, -3/4]
    np.testing.assert_allclose(value(exact.log_softmax_vjp(x, dy, engine)), [[0.75, -0.75]], rtol=1e-15)
    # logsumexp of three equal logits: x + log 3, far from 0 (no naive overflow here)
    lse = exact.logsumexp(np.full((1, 3), -1000.0), engine)
    assert value(lse)[0] == pytest.approx(-1000.0 + math.log(3.0), rel=1e-16)
    np.testing.assert_allclose(value(exact.log_softmax(x, engine)), [[-math.log(4.0), math.log(0.75)]], rtol=1e-15)


@pytest.mark.parametrize("engine", ENGINES)
def test_masked_conventions(engine):
    x = np.array([[-np.inf, -np.inf, -np.inf], [0.0, -np.inf, 0.0]])
    dy = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(value(exact.softmax(x, engine)), [[0, 0, 0], [0.5, 0, 0.5]])
    log_values = exact.log_softmax(x, engine).hi
    assert np.isneginf(log_values[0]).all() and np.isneginf(log_values[1, 1])
    assert log_values[1, 0] == pytest.approx(-math.log(2.0), rel=1e-16)
    assert np.isneginf(exact.logsumexp(x, engine).hi[0])
    np.testing.assert_array_equal(value(exact.softmax_vjp(x, dy, engine))[0], 0.0)
    np.testing.assert_array_equal(value(exact.log_softmax_vjp(x, dy, engine))[0], 0.0)
    # a masked entry of a live row: dx = dy there (its probability is 0)
    assert value(exact.log_softmax_vjp(x, dy, engine))[1, 1] == 2.0


@pytest.mark.parametrize("engine", ENGINES)
def test_log_softmax_of_the_winner_keeps_a_tiny_sum(engine):
    # a gap of 120: log_softmax at the maximum is -log1p(e^-120) = -7.66e-53, not 0
    x = np.array([[0.0, -120.0]])
    winner = exact.log_softmax(x, engine).hi[0, 0]
    assert winner == pytest.approx(-math.exp(-120.0), rel=1e-15)


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="x must be 2-D"):
        exact.softmax(np.zeros(3))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        exact.softmax(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        exact.softmax_vjp(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="engine must be one of"):
        exact.softmax(np.zeros((1, 2)), engine="float128")


@pytest.mark.parametrize("regime", [r for r in regimes.REGIMES if r != regimes.MILLION_CLASSES_REGIME])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_long_double_engine_agrees_with_mpmath(regime, dtype):
    """Pairs of long doubles against mpmath-50: within 1e-6 ULP of float64 everywhere.

    Gradients included: plain long doubles were measured 22 ULPs off where dy_j is close
    to sum_k a_k dy_k; the pairs are what makes this pass.
    """
    shape = (6, 300)
    x = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, 1))
    dy = regimes.upstream_gradient(shape, dtype, regimes.rng_for(regime, shape, dtype, 1, "dy"))
    for name, function in FUNCTIONS.items():
        truth = function(x, dy, exact.MPMATH_ENGINE)
        candidate = function(x, dy, exact.LONGDOUBLE_ENGINE)
        finite = np.isfinite(truth.hi)
        np.testing.assert_array_equal(truth.hi[~finite], candidate.hi[~finite], err_msg=name)
        deviation = np.abs((candidate.hi[finite] - truth.hi[finite]) + (candidate.lo[finite] - truth.lo[finite]))
        ulps = deviation / ulp_at(type(truth)(truth.hi[finite], truth.lo[finite], truth.engine), np.float64)
        assert ulps.max(initial=0.0) < 1e-6, f"{name}: {ulps.max():.2e} ULP of float64"


def test_auto_engine_switches_on_size():
    assert exact.resolve_engine("auto", 1000) == exact.MPMATH_ENGINE
    expected = exact.LONGDOUBLE_ENGINE if exact.LONGDOUBLE_IS_EXTENDED else exact.MPMATH_ENGINE
    assert exact.resolve_engine("auto", 10**6) == expected


def test_quadratic_cost_reference_keeps_a_minus_y_when_a_rounds_to_one():
    # sigmoid(119) = 1 - e^-119 (1 - e^-119 + ...) rounds to 1 at 50 digits; with y = 1 the
    # gradient (a - y) a (1 - a) is -e^-238 (to 1e-52 relative), not 0; the loss, summed over
    # the two entries, e^-238
    logits, target = np.array([[119.0, -119.0]]), np.array([[1.0, 0.0]])
    loss, gradient = exact.exact_quadratic_cost(logits, target, reduction="sum")
    expected = math.exp(-238.0)
    np.testing.assert_allclose(value(gradient), [[-expected, expected]], rtol=1e-14)
    assert math.isclose(float(value(loss)), expected, rel_tol=1e-14)


# ---- the fused linear cross-entropy's references ----------------------------------------------------


def test_linear_reference_is_cross_entropy_of_the_exact_logits_and_their_products():
    from softmaxlab.harness.exact import exact_linear_cross_entropy

    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (4, 5)).astype(np.float64)  # integer logits: x W^T + b exact in float64
    W = rng.integers(-2, 3, (7, 5)).astype(np.float64)
    b = rng.integers(-2, 2, 7).astype(np.float64)
    target = rng.integers(0, 7, 4)
    loss, dx, dW, db = exact_linear_cross_entropy(x, W, target, linear_bias=b, label_smoothing=0.1, grad_output=3.0)
    expected_loss, dz = exact.exact_cross_entropy(x @ W.T + b, target, label_smoothing=0.1, grad_output=3.0)
    assert loss.hi == expected_loss.hi and loss.lo == expected_loss.lo
    # the float64 products of the rounded dz: within a few eps of their terms' magnitudes
    eps = np.finfo(np.float64).eps
    assert np.all(np.abs(dx.hi - dz.hi @ W) <= 8 * eps * (np.abs(dz.hi) @ np.abs(W)))
    assert np.all(np.abs(dW.hi - dz.hi.T @ x) <= 8 * eps * (np.abs(dz.hi).T @ np.abs(x)))
    assert np.all(np.abs(db.hi - dz.hi.sum(axis=0)) <= 8 * eps * np.abs(dz.hi).sum(axis=0))


@pytest.mark.parametrize("options", [{"z_loss": 1e-2}, {"softcap": 2.0}, {"z_loss": 0.1, "softcap": 3.0,
                                                                            "reduction": "sum"}])
def test_linear_reference_gradients_are_the_loss_derivatives(options):
    """dx and dW against central differences of the exact loss (z-loss's and the soft cap's
    chain rule included)."""
    from softmaxlab.harness.exact import exact_linear_cross_entropy

    rng = np.random.default_rng(1)
    x, W, target = rng.normal(size=(3, 4)), rng.normal(size=(5, 4)) * 2, rng.integers(0, 5, 3)
    _, dx, dW = exact_linear_cross_entropy(x, W, target, **options)
    step = 1e-6

    def loss_at(x_value, W_value):
        return exact_linear_cross_entropy(x_value, W_value, target, **options)[0].hi

    for (i, j) in [(0, 0), (2, 3), (1, 2)]:
        shift = np.zeros_like(x)
        shift[i, j] = step
        numeric = (loss_at(x + shift, W) - loss_at(x - shift, W)) / (2 * step)
        assert numeric == pytest.approx(dx.hi[i, j], rel=1e-6, abs=1e-9)
    for (i, j) in [(0, 0), (4, 3)]:
        shift = np.zeros_like(W)
        shift[i, j] = step
        numeric = (loss_at(x, W + shift) - loss_at(x, W - shift)) / (2 * step)
        assert numeric == pytest.approx(dW.hi[i, j], rel=1e-6, abs=1e-9)


def test_the_float64_linear_reference_agrees_with_mpmath_far_below_a_float32_ulp():
    from softmaxlab.harness.exact import exact_linear_cross_entropy, float64_linear_cross_entropy

    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    W = (rng.normal(size=(300, 16)) * 0.75).astype(np.float32)
    target = rng.integers(0, 300, 3)
    for truth, candidate in zip(exact_linear_cross_entropy(x, W, target), float64_linear_cross_entropy(x, W, target)):
        relative = np.abs(candidate.hi - truth.hi) / np.abs(truth.hi).max()
        assert relative.max() < 1e-12  # a float32 ULP is 6e-8
    with pytest.raises(NotImplementedError, match="float32 outputs only"):
        float64_linear_cross_entropy(x.astype(np.float64), W.astype(np.float64), target)


# ---- the fused margin loss's references -------------------------------------------------------------

ARCFACE, COSFACE = (64.0, 1.0, 0.5, 0.0), (30.0, 1.0, 0.0, 0.35)


@pytest.mark.parametrize("margins", [ARCFACE, COSFACE])
def test_linear_margin_reference_gradients_are_the_loss_derivatives(margins):
    """dx and dW against central differences of the exact loss: the chain rule through both
    normalizations and the margin, with a target on ArcFace's fallback (row 2)."""
    from softmaxlab.harness.exact import exact_linear_margin_cross_entropy

    rng = np.random.default_rng(3)
    W, target = rng.normal(size=(5, 4)), np.array([0, 3, 2])
    x = W[target] / np.linalg.norm(W[target], axis=1, keepdims=True) + 0.6 * rng.normal(size=(3, 4))
    x[2] = -W[2] / np.linalg.norm(W[2]) + 0.05 * rng.normal(size=4)  # cos_y near -1: the fallback branch
    _, dx, dW = exact_linear_margin_cross_entropy(x, W, target, *margins)
    step = 1e-6

    def loss_at(x_shift, W_shift):
        return exact_linear_margin_cross_entropy(x + x_shift, W + W_shift, target, *margins)[0].hi

    for which, gradient, points in ((0, dx, [(0, 0), (1, 3), (2, 1)]), (1, dW, [(0, 0), (3, 2), (2, 1), (4, 3)])):
        for point in points:
            shifts = [np.zeros_like(x), np.zeros_like(W)]
            shifts[which][point] = step
            numeric = (loss_at(*shifts) - loss_at(-shifts[0], -shifts[1])) / (2 * step)
            assert numeric == pytest.approx(gradient.hi[point], rel=1e-6, abs=1e-9), (which, point)


def test_linear_margin_reference_is_the_margin_reference_of_its_cosines():
    """Loss and dx, dW equal exact_margin on the cosines rounded to float64 and
    exact_normalized_linear's backward of its dcos, to the rounding of the cosines (s u)."""
    from softmaxlab.harness.exact import exact_linear_margin_cross_entropy

    rng = np.random.default_rng(4)
    x, W, target = rng.normal(size=(3, 6)), rng.normal(size=(7, 6)), rng.integers(0, 7, 3)
    loss, dx, dW = exact_linear_margin_cross_entropy(x, W, target, *ARCFACE)
    cosines = exact.exact_normalized_linear(x, W).hi
    expected_loss, dcos = exact.exact_margin(cosines, target, *ARCFACE)
    expected_dx, expected_dW = exact.exact_normalized_linear(x, W, dcos.hi)
    # a cosine rounded to float64 moves the logits by s u, the loss and dcos by a few s u relatively
    tolerance = 8 * ARCFACE[0] * np.finfo(np.float64).eps
    assert float(loss.hi) == pytest.approx(float(expected_loss.hi), rel=tolerance)
    np.testing.assert_allclose(dx.hi, expected_dx.hi, rtol=0, atol=tolerance * np.abs(expected_dx.hi).max())
    np.testing.assert_allclose(dW.hi, expected_dW.hi, rtol=0, atol=tolerance * np.abs(expected_dW.hi).max())


def test_the_float64_linear_margin_reference_agrees_with_mpmath_far_below_a_float32_ulp():
    from softmaxlab.harness.exact import exact_linear_margin_cross_entropy, float64_linear_margin_cross_entropy

    rng = np.random.default_rng(5)
    W = (rng.normal(size=(300, 16)) * rng.uniform(0.5, 2.0, (300, 1))).astype(np.float32)
    target = rng.integers(0, 300, 3)
    x = rng.normal(size=(3, 16)).astype(np.float32)
    x[1] = -W[target[1]]  # a target on ArcFace's fallback
    for margins in (ARCFACE, COSFACE):
        pairs = zip(exact_linear_margin_cross_entropy(x, W, target, *margins),
                    float64_linear_margin_cross_entropy(x, W, target, *margins))
        for truth, candidate in pairs:
            relative = np.abs(candidate.hi - truth.hi) / np.abs(truth.hi).max()
            assert relative.max() < 1e-12  # a float32 ULP is 6e-8
    with pytest.raises(NotImplementedError, match="float32 outputs only"):
        float64_linear_margin_cross_entropy(x.astype(np.float64), W.astype(np.float64), target, *ARCFACE)


def test_linear_margin_gradient_scales_bound_the_gradients_on_both_engines():
    from softmaxlab.harness.exact import exact_linear_margin_cross_entropy, linear_margin_gradient_scales

    rng = np.random.default_rng(6)
    x, W = rng.normal(size=(3, 16)).astype(np.float32), rng.normal(size=(40, 16)).astype(np.float32)
    target = rng.integers(0, 40, 3)
    gradients = exact_linear_margin_cross_entropy(x, W, target, *ARCFACE)[1:]
    by_engine = [linear_margin_gradient_scales(x, W, target, *ARCFACE, engine=engine) for engine in ENGINES]
    for scales in by_engine:
        for gradient, scale in zip(gradients, scales):
            assert scale.shape == gradient.hi.shape
            assert np.all(scale >= np.abs(gradient.hi) * (1 - 1e-12))  # a term magnitude bounds the sum
    for mpmath_scale, float64_scale in zip(*by_engine):  # the float64 dL/dcos is the mpmath one to 1e-12
        np.testing.assert_allclose(float64_scale, mpmath_scale, rtol=1e-12)
