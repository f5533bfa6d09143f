"""Tests for kernels/_normalized_linear.py: the cosines and their gradients against the proof
book's closed forms and central differences, scaling, clamping and leading axes."""

from __future__ import annotations

import numpy as np
import pytest

from softmaxlab.derivations import closed_forms
from softmaxlab.kernels import large_margin_cross_entropy, normalized_linear, normalized_linear_backward

DTYPES = [np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalized_linear_matches_the_proven_closed_forms(dtype):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 5)).astype(dtype)
    W = rng.standard_normal((7, 5)).astype(dtype)
    g = rng.standard_normal((4, 7)).astype(dtype)
    cos = normalized_linear(x, W)
    dx, dW = normalized_linear_backward(x, W, g)
    assert cos.dtype == dx.dtype == dW.dtype == dtype
    x64, W64, g64 = (a.astype(np.float64) for a in (x, W, g))
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    page = closed_forms.normalized_linear_grad_x.page
    np.testing.assert_allclose(cos, closed_forms.normalized_linear(x64, W64), rtol=rtol, atol=rtol, err_msg=page)
    np.testing.assert_allclose(dx, closed_forms.normalized_linear_grad_x(x64, W64, g64), rtol=rtol * 10,
                               atol=rtol, err_msg=page)
    np.testing.assert_allclose(dW, closed_forms.normalized_linear_grad_W(x64, W64, g64).sum(axis=0),
                               rtol=rtol * 10, atol=rtol, err_msg=page)


def test_normalized_linear_gradient_matches_central_differences():
    rng = np.random.default_rng(13)
    x, W, g = rng.standard_normal((3, 4)), rng.standard_normal((6, 4)), rng.standard_normal((3, 6))
    dx, dW = normalized_linear_backward(x, W, g)
    step = 1e-6
    for _ in range(3):
        vx, vW = rng.standard_normal(x.shape), rng.standard_normal(W.shape)
        plus = np.sum(g * normalized_linear(x + step * vx, W + step * vW))
        minus = np.sum(g * normalized_linear(x - step * vx, W - step * vW))
        assert np.sum(dx * vx) + np.sum(dW * vW) == pytest.approx((plus - minus) / (2 * step), rel=1e-7, abs=1e-9)
    # the gradient in x is orthogonal to x (cos is scale-invariant in x)
    np.testing.assert_allclose(np.sum(dx * x, axis=1), 0.0, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalized_linear_scaling_clamp_and_leading_axes(dtype):
    scale = 1e30 if dtype == np.float32 else 1e200
    x = np.array([[3.0, 4.0], [3.0 / scale, 4.0 / scale], [3.0 * scale / 10, 4.0 * scale / 10]], dtype=dtype)
    W = np.array([[1.0, 0.0], [3.0, 4.0], [-6.0, -8.0]], dtype=dtype)
    cos = normalized_linear(x, W)
    for row in range(3):  # no overflow or underflow of the squares: each row is (0.6, 1, -1)
        np.testing.assert_allclose(cos[row], [0.6, 1.0, -1.0], rtol=2 * np.finfo(dtype).eps)
    assert np.abs(cos).max() <= 1.0
    rng = np.random.default_rng(14)
    aligned = rng.standard_normal((50, 33)).astype(dtype)
    assert np.abs(normalized_linear(aligned, aligned)).max() <= 1.0  # diagonal rounds past 1 without the clamp
    batched = rng.standard_normal((2, 3, 4)).astype(dtype)
    weights = rng.standard_normal((5, 4)).astype(dtype)
    np.testing.assert_array_equal(normalized_linear(batched, weights),
                                  normalized_linear(batched.reshape(6, 4), weights).reshape(2, 3, 5))
    dx, dW = normalized_linear_backward(batched, weights, np.ones((2, 3, 5), dtype=dtype))
    assert dx.shape == (2, 3, 4) and dW.shape == (5, 4)


def test_zero_rows_raise_a_clear_error():
    x = np.array([[1.0, 2.0], [0.0, 0.0]])
    W = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"x row 1 has norm 0"):
        normalized_linear(x, W[:2])
    with pytest.raises(ValueError, match=r"W row 2 has norm 0"):
        normalized_linear(x[:1], W)
    with pytest.raises(ValueError, match=r"x row 1 has norm 0"):
        normalized_linear_backward(x, W[:2], np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"W row 2 has norm 0"):
        large_margin_cross_entropy(x[:1], W, np.array([0]), m=2)


# Against mpmath on the harness' inputs (16 x 64, D = 16, three seeds), max error in ULP
# elementwise and row-wise (over ulp of the row's largest exact value).  float32: the
# products are accumulated in float64 and rounded once, so every output is within half an ulp
# (measured 0.5; before: cos 8.5e3, dx 4.8e3, dW 4.0e3 elementwise, where the entries are
# small differences).  float64 cosines: compensated norms, the product of the raw rows in
# float64 and Dot2 where |cos| < 2^-7 (measured: at most 56 elementwise, 3.6 row-wise, the
# rest the BLAS product's rounding; before: 3383 and 3.1).
ELEMENTWISE_FLOAT32 = 0.5 + 1e-6
COSINE_FLOAT64 = {"elementwise": 128.0, "rowwise": 4.0}


@pytest.mark.parametrize("regime", ["normal_x3", "dominant"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_normalized_linear_error_against_mpmath(dtype, regime):
    from softmaxlab.harness import exact, metrics
    from softmaxlab.harness.registry.margins import normalized_linear_backward_inputs

    for seed in range(3):
        inputs = normalized_linear_backward_inputs(regime, (16, 64), np.dtype(dtype), seed)
        x, W, g = inputs["x"], inputs["W"], inputs["grad_cos"]
        cos_stats = metrics.error_stats(normalized_linear(x, W), exact.exact_normalized_linear(x, W), dtype)
        if dtype == np.float32:
            assert cos_stats["max_ulp"] <= ELEMENTWISE_FLOAT32, (seed, cos_stats["max_ulp"])
            dx, dW = normalized_linear_backward(x, W, g)
            for result, reference in zip((dx, dW), exact.exact_normalized_linear(x, W, g)):
                assert metrics.error_stats(result, reference, dtype)["max_ulp"] <= ELEMENTWISE_FLOAT32, seed
        else:
            assert cos_stats["max_ulp"] <= COSINE_FLOAT64["elementwise"], (seed, cos_stats["max_ulp"])
            assert cos_stats["max_rowwise_ulp"] <= COSINE_FLOAT64["rowwise"], (seed, cos_stats["max_rowwise_ulp"])


# float64 gradients at 1000 classes (16 x 1000, D = 16, three seeds), row-wise ULP against
# mpmath: p = g W_hat summed by one BLAS call measured 11-24 for dx (its rounding, a long run
# of 1000 terms, is many ulp of dx's entries, differences of p and its radial part); summed in
# runs of PRODUCT_CHUNK joined pairwise (``chunked_product``) 2.5-4.3.  dW sums over the 16
# rows, one run either way: 4.1-5.9 here, in BLAS's order for this CPU.
GRADIENT_ROWWISE_FLOAT64 = {"dx": 6.0, "dW": 8.0}


@pytest.mark.parametrize("regime", ["normal_x3", "dominant"])
def test_float64_gradients_at_a_thousand_classes_against_mpmath(regime):
    from softmaxlab.harness import exact, metrics
    from softmaxlab.harness.registry.margins import normalized_linear_backward_inputs

    for seed in range(3):
        inputs = normalized_linear_backward_inputs(regime, (16, 1000), np.dtype(np.float64), seed)
        x, W, g = inputs["x"], inputs["W"], inputs["grad_cos"]
        for name, result, reference in zip(("dx", "dW"), normalized_linear_backward(x, W, g),
                                           exact.exact_normalized_linear(x, W, g)):
            rowwise = metrics.error_stats(result, reference, np.float64)["max_rowwise_ulp"]
            assert rowwise <= GRADIENT_ROWWISE_FLOAT64[name], (name, seed, rowwise)


def _pairwise_model(parts):
    # the documented order: whole binary trees of runs, largest first (each tree's left half
    # plus its right half), then the trees added from the last to the first
    def tree(runs):
        return runs[0] if len(runs) == 1 else tree(runs[: len(runs) // 2]) + tree(runs[len(runs) // 2 :])

    trees, start = [], 0
    for bit in reversed(range(len(parts).bit_length())):
        if len(parts) & (1 << bit):
            trees.append(tree(parts[start : start + (1 << bit)]))
            start += 1 << bit
    total = trees[-1]
    for earlier in reversed(trees[:-1]):
        total = earlier + total
    return total


@pytest.mark.parametrize("terms", [0, 1, 63, 64, 65, 192, 64 * 7 + 5, 64 * 16])
def test_chunked_product_sums_runs_pairwise_in_the_documented_order(terms):
    from softmaxlab.kernels._normalized_linear import PRODUCT_CHUNK, chunked_product

    rng = np.random.default_rng(terms)
    a, b = rng.standard_normal((5, terms)), rng.standard_normal((terms, 3)) * 1e3
    a_before = a.copy()
    runs = [a[:, s : s + PRODUCT_CHUNK] @ b[s : s + PRODUCT_CHUNK] for s in range(0, terms, PRODUCT_CHUNK)]
    result = chunked_product(a, b)
    np.testing.assert_array_equal(result, _pairwise_model(runs) if runs else np.zeros((5, 3)))
    np.testing.assert_allclose(result, a @ b, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(a, a_before)
