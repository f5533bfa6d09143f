"""Tests for kernels/center.py: center loss values and gradients, Wen et al.'s update, threads, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from softmaxlab.derivations import closed_forms
from softmaxlab.kernels import center_loss, center_loss_forward_backward, center_update

DTYPES = [np.float32, np.float64]
# (rows, features, classes): one row, an odd shape, repeated classes, more classes than rows
SHAPES = [(1, 1, 1), (7, 5, 3), (16, 33, 40)]


def _inputs(rows, features, classes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features)).astype(dtype)
    centers = rng.standard_normal((classes, features)).astype(dtype)
    target = rng.integers(0, classes, size=rows)
    return x, target, centers


def _naive(x, target, centers, upstream):
    """float64 loop: per-row losses, dx and dcenters (the definitions, row by row)."""
    x, centers = x.astype(np.float64), centers.astype(np.float64)
    losses = np.array([0.5 * np.sum((x[i] - centers[target[i]]) ** 2) for i in range(len(x))])
    dx = upstream[:, None] * (x - centers[target])
    dcenters = np.zeros_like(centers)
    for i, label in enumerate(target):
        dcenters[label] += upstream[i] * (centers[label] - x[i])
    return losses, dx, dcenters


def _tolerance(dtype):
    return dict(rtol=2e-7, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_center_loss_and_gradients_match_the_definition(reduction, shape, dtype):
    x, target, centers = _inputs(*shape, dtype)
    rows = shape[0]
    grad_output = np.linspace(-1.0, 2.0, rows) if reduction == "none" else 1.7
    loss, dx, dcenters = center_loss_forward_backward(x, target, centers, reduction=reduction,
                                                      grad_output=grad_output)
    upstream = grad_output if reduction == "none" else np.full(rows, grad_output / rows if reduction == "mean"
                                                               else grad_output)
    losses, expected_dx, expected_dcenters = _naive(x, target, centers, upstream)
    expected_loss = {"none": losses, "sum": losses.sum(), "mean": losses.mean()}[reduction]
    assert loss.dtype == dx.dtype == dcenters.dtype == dtype
    assert loss.shape == (() if reduction != "none" else (rows,))
    np.testing.assert_allclose(loss, expected_loss, **_tolerance(dtype))
    np.testing.assert_allclose(dx, expected_dx, **_tolerance(dtype))
    np.testing.assert_allclose(dcenters, expected_dcenters, **_tolerance(dtype))
    np.testing.assert_array_equal(center_loss(x, target, centers, reduction=reduction), loss)
    # classes absent from the batch get a zero gradient
    absent = np.setdiff1d(np.arange(shape[2]), target)
    assert not dcenters[absent].any()


def test_center_loss_matches_the_proven_closed_forms():
    x, target, centers = _inputs(6, 4, 3, np.float64, seed=1)
    loss, dx, dcenters = center_loss_forward_backward(x, target, centers, reduction="sum")
    page = closed_forms.center_loss_grad_x.page
    np.testing.assert_allclose(loss, closed_forms.center_loss(x, centers[target]).sum(), rtol=1e-14, err_msg=page)
    np.testing.assert_allclose(dx, closed_forms.center_loss_grad_x(x, centers[target]), rtol=1e-14, err_msg=page)
    # dL/dc_j = sum_{n: y_n = j} (c_j - x_n) = -sum of the rows' dx (docs/proofs/margins.md#center-loss-gradient)
    expected = np.zeros_like(centers)
    np.add.at(expected, target, -closed_forms.center_loss_grad_x(x, centers[target]))
    np.testing.assert_allclose(dcenters, expected, rtol=1e-14, atol=1e-15, err_msg=page)


def test_center_loss_gradient_matches_central_differences():
    x, target, centers = _inputs(5, 3, 4, np.float64, seed=2)
    target[:3] = 1  # a class shared by three rows
    upstream = np.random.default_rng(3).standard_normal(5)
    _, dx, dcenters = center_loss_forward_backward(x, target, centers, reduction="none", grad_output=upstream)
    step = 1e-6
    rng = np.random.default_rng(4)
    for _ in range(3):
        vx, vc = rng.standard_normal(x.shape), rng.standard_normal(centers.shape)
        plus = np.dot(upstream, center_loss(x + step * vx, target, centers + step * vc, reduction="none"))
        minus = np.dot(upstream, center_loss(x - step * vx, target, centers - step * vc, reduction="none"))
        assert np.sum(dx * vx) + np.sum(dcenters * vc) == pytest.approx((plus - minus) / (2 * step), rel=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_center_update_is_wen_et_al_rule(dtype):
    x, target, centers = _inputs(9, 4, 5, dtype, seed=5)
    target[[0, 4, 7]] = 2
    alpha = 0.3
    updated = center_update(centers, x, target, alpha=alpha)
    expected = centers.astype(np.float64).copy()
    for label in range(5):
        members = target == label
        if members.any():
            delta = np.sum(centers[label].astype(np.float64) - x[members].astype(np.float64), axis=0)
            expected[label] -= alpha * delta / (1 + members.sum())
    assert updated.dtype == dtype and updated is not centers
    np.testing.assert_allclose(updated, expected, **_tolerance(dtype))
    absent = np.setdiff1d(np.arange(5), target)
    np.testing.assert_array_equal(updated[absent], centers[absent])
    # the update is the gradient of the mean loss times alpha N / (1 + n_j) (a damped step)
    _, _, gradient = center_loss_forward_backward(x, target, centers)
    counts = np.bincount(target, minlength=5)
    np.testing.assert_allclose(centers - updated, alpha * len(x) / (1 + counts)[:, None] * gradient,
                               **_tolerance(dtype))
    np.testing.assert_array_equal(center_update(centers, x, target, alpha=0.0), centers)


def test_inputs_are_not_modified_and_non_contiguous_inputs_work():
    x, target, centers = _inputs(6, 8, 4, np.float64, seed=6)
    saved = [a.copy() for a in (x, target, centers)]
    center_loss_forward_backward(x, target, centers)
    center_update(centers, x, target)
    for array, copy in zip((x, target, centers), saved):
        np.testing.assert_array_equal(array, copy)
    wide_x, wide_centers = np.asfortranarray(x), centers.T.copy().T
    np.testing.assert_array_equal(center_loss(wide_x[:, ::2], target, wide_centers[:, ::2]),
                                  center_loss(np.ascontiguousarray(x[:, ::2]), target,
                                              np.ascontiguousarray(centers[:, ::2])))


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_are_bit_identical_for_one_and_two_threads(threads, dtype):
    x, target, centers = _inputs(64, 37, 9, dtype, seed=7)
    results = []
    for count in (1, 2):
        threads(count)
        results.append([*center_loss_forward_backward(x, target, centers, reduction="none"),
                        center_update(centers, x, target, alpha=0.5)])
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_nan_stays_in_its_row():
    x, target, centers = _inputs(4, 3, 4, np.float64, seed=8)
    target[:] = [0, 1, 2, 3]
    x[1, 2] = np.nan
    loss, dx, dcenters = center_loss_forward_backward(x, target, centers, reduction="none")
    assert np.isnan(loss[1]) and np.isfinite(loss[[0, 2, 3]]).all()
    assert np.isnan(dx[1, 2]) and np.isfinite(np.delete(dx, 1, axis=0)).all()
    assert np.isnan(dcenters[1, 2]) and np.isfinite(np.delete(dcenters, 1, axis=0)).all()


_X = np.ones((3, 2))
_CENTERS = np.zeros((4, 2))
_TARGET = np.array([0, 1, 3])

BAD_CALLS = [
    (lambda: center_loss(_X.tolist(), _TARGET, _CENTERS), TypeError, r"x must be a numpy\.ndarray"),
    (lambda: center_loss(_X.astype(np.int32), _TARGET, _CENTERS), TypeError, r"x must have dtype float32 or float64"),
    (lambda: center_loss(_X.astype(np.float16), _TARGET, _CENTERS), TypeError, r"x must have dtype .* float16"),
    (lambda: center_loss(_X, _TARGET, _CENTERS.astype(np.float32)), TypeError, r"centers must have the dtype of x"),
    (lambda: center_loss(_X, _TARGET, np.zeros((4, 3))), ValueError, r"centers must have 2 columns"),
    (lambda: center_loss(_X[0], _TARGET, _CENTERS), ValueError, r"x must be 2-D"),
    (lambda: center_loss(_X, _TARGET, _CENTERS[0]), ValueError, r"centers must be 2-D"),
    (lambda: center_loss(_X, np.array([0, 4, 1]), _CENTERS), ValueError,
     r"target must hold class indices in \[0, 4\), got 4 at row 1"),
    (lambda: center_loss(_X, np.array([0, 1]), _CENTERS), ValueError, r"target must have shape \(3,\)"),
    (lambda: center_loss(_X, [0, 1, 2], _CENTERS), TypeError, r"target must be a numpy\.ndarray"),
    (lambda: center_loss(_X, _TARGET, _CENTERS, reduction="max"), ValueError, r"reduction must be one of"),
    (lambda: center_loss_forward_backward(_X, _TARGET, _CENTERS, grad_output=np.ones(3)), ValueError,
     r"grad_output must be a scalar"),
    (lambda: center_update(_CENTERS, _X, _TARGET, alpha=1.5), ValueError, r"alpha must be <= 1"),
    (lambda: center_update(_CENTERS, _X, _TARGET, alpha=-0.1), ValueError, r"alpha must be >= 0"),
    (lambda: center_update(_CENTERS, _X, _TARGET, alpha="0.5"), TypeError, r"alpha must be a real number"),
    (lambda: center_update(_CENTERS, _X, np.array([0, 9, 1])), ValueError, r"got 9 at row 1"),
]


@pytest.mark.parametrize("call, error, message", BAD_CALLS)
def test_bad_inputs_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
