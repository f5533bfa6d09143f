"""Tests for kernels/_quadratic.py: the quadratic cost of a sigmoid unit and its learning slowdown
(``docs/proofs/cross_entropy.md``, "quadratic cost on a sigmoid")."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from softmaxlab.harness.metrics import error_stats
from softmaxlab.harness.exact import exact_quadratic_cost
from softmaxlab.kernels import quadratic_cost, quadratic_cost_forward_backward

from ._shared import DTYPES
from ._shared import LOSS_SHAPES as SHAPES
from ._shared import assert_close as _assert_close
from ._shared import random_array as _random

torch = pytest.importorskip("torch")
F = torch.nn.functional

REDUCTIONS = ["mean", "sum", "none"]


def _upstream(reduction, shape):
    return _random(shape, np.float64, scale=1.0, seed=5) if reduction == "none" else 0.75


def torch_quadratic_cost(logits, target, *, reduction="mean", grad_output=1.0):
    x = torch.tensor(logits.astype(np.float64), requires_grad=True)
    loss = 0.5 * F.mse_loss(torch.sigmoid(x), torch.tensor(target.astype(np.float64)), reduction=reduction)
    upstream = (torch.tensor(np.broadcast_to(np.asarray(grad_output, dtype=np.float64), logits.shape).copy())
                if reduction == "none" else torch.tensor(float(grad_output), dtype=torch.float64))
    loss.backward(upstream)
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_quadratic_cost_matches_torch(reduction):
    for dtype, shape in itertools.product(DTYPES, SHAPES):
        logits = _random(shape, dtype)
        target = np.random.default_rng(2).random(shape).astype(dtype)
        upstream = _upstream(reduction, shape)
        loss, grad = quadratic_cost_forward_backward(logits, target, reduction=reduction, grad_output=upstream)
        np.testing.assert_array_equal(quadratic_cost(logits, target, reduction=reduction), loss)
        reference_loss, reference_grad = torch_quadratic_cost(logits, target, reduction=reduction,
                                                              grad_output=upstream)
        _assert_close(loss, reference_loss, dtype, f"loss {dtype.__name__} {shape}")
        _assert_close(grad, reference_grad, dtype, f"grad {dtype.__name__} {shape}")


# ULP bounds against the exact reference (measured maxima in brackets), per entry, hard
# targets: loss and gradient float32 0.51 (0.5028 over the harness' regimes: e^-|x| to
# 1.1e-10, ``sigmoids_for``), float64 4 (2.9: the square of a - y =
# (1 - y) a - y (1 - a)) and 6 (5.8: its product with a (1 - a)).
LOSS_BOUND = {np.float32: 0.51, np.float64: 4.0}
GRAD_BOUND = {np.float32: 0.51, np.float64: 6.0}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", ["normal_x3", "dominant", "large_1e4", "masked"])
def test_within_ulp_bounds_of_exact_references(regime, dtype):
    from softmaxlab.harness import regimes

    logits = regimes.logits(regime, (6, 19), dtype, regimes.rng_for(regime, (6, 19), dtype, 0))
    binary = (np.random.default_rng(4).random((6, 19)) < 0.5).astype(dtype)
    loss, grad = quadratic_cost_forward_backward(logits, binary, reduction="none")
    exact_loss, exact_grad = exact_quadratic_cost(logits, binary, reduction="none", engine="mpmath-50")
    loss_stats, grad_stats = error_stats(loss, exact_loss, dtype), error_stats(grad, exact_grad, dtype)
    for stats in (loss_stats, grad_stats):
        assert stats["n_special_mismatch"] == 0 and stats["n_nonfinite"] == 0, stats
    assert np.nan_to_num(loss_stats["max_ulp"]) <= LOSS_BOUND[dtype], loss_stats
    assert grad_stats["max_ulp"] <= GRAD_BOUND[dtype], grad_stats


def test_quadratic_cost_learning_slowdown():
    # Nielsen, ch. 3: one sigmoid unit, y = 0; starting at a = 0.98 the gradient is much smaller
    # than at a = 0.82 although the error is larger; cross-entropy's a - y is not
    from softmaxlab.derivations import closed_forms
    from softmaxlab.kernels import binary_cross_entropy_with_logits_forward_backward

    logits = np.log(np.array([0.82, 0.98]) / (1 - np.array([0.82, 0.98])))
    target = np.zeros(2)
    _, quadratic = quadratic_cost_forward_backward(logits, target, reduction="none")
    _, entropy = binary_cross_entropy_with_logits_forward_backward(logits, target, reduction="none")
    np.testing.assert_allclose(quadratic, np.array([0.82 * 0.18 * 0.82, 0.98 * 0.02 * 0.98]), rtol=1e-12)
    assert quadratic[1] < quadratic[0] and entropy[1] > entropy[0]
    np.testing.assert_allclose(entropy, [0.82, 0.98], rtol=1e-12)
    np.testing.assert_allclose(quadratic, closed_forms.quadratic_cost_gradient(logits, target), rtol=1e-14)


def test_gradient_matches_central_differences():
    logits = _random((3, 5), np.float64, seed=8)
    binary = np.random.default_rng(10).random((3, 5))
    step = 1e-6
    grad = quadratic_cost_forward_backward(logits, binary)[1]
    expected = np.empty_like(logits)
    for index in np.ndindex(logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[index] += step
        minus[index] -= step
        expected[index] = (quadratic_cost(plus, binary) - quadratic_cost(minus, binary)) / (2 * step)
    np.testing.assert_allclose(grad, expected, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_edges(dtype):
    inf = np.inf
    loss, grad = quadratic_cost_forward_backward(np.array([-inf, inf, 1e4], dtype=dtype),
                                                 np.array([1.0, 0.0, 1.0], dtype=dtype), reduction="none")
    np.testing.assert_array_equal(loss, [0.5, 0.5, 0.0])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0])


def test_bad_inputs_raise_clear_errors():
    logits = np.zeros((3, 4))
    for function in (quadratic_cost, quadratic_cost_forward_backward):
        with pytest.raises(ValueError, match=r"target must have the shape of logits \(3, 4\), got \(4, 3\)"):
            function(logits, np.zeros((4, 3)))
        with pytest.raises(TypeError, match=r"logits must be a numpy.ndarray .* got list"):
            function([[0.0]], np.zeros((1, 1)))
