"""Tests for kernels/_hinge.py: the multi-class hinge and the smooth hinge (``docs/proofs/cross_entropy.md``,
"the hinge chain")."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from softmaxlab.harness.metrics import error_stats
from softmaxlab.harness.exact import exact_multiclass_hinge, exact_smooth_hinge
from softmaxlab.kernels import (
    cross_entropy_forward_backward,
    multiclass_hinge,
    multiclass_hinge_forward_backward,
    smooth_hinge,
    smooth_hinge_forward_backward,
)
from softmaxlab.kernels._config import block_length

from ._shared import DTYPES, TOLERANCE, central_differences
from ._shared import LOSS_SHAPES as SHAPES
from ._shared import assert_close as _assert_close
from ._shared import random_array as _random

torch = pytest.importorskip("torch")
F = torch.nn.functional

REDUCTIONS = ["mean", "sum", "none"]


def _labels(shape, classes, seed=1):
    return np.random.default_rng(seed).integers(0, classes, size=shape)


def _upstream(reduction, shape):
    return _random(shape, np.float64, scale=1.0, seed=5) if reduction == "none" else 0.75


def _torch_rows(loss_per_row, reduction, grad_output, x, batch_shape):
    loss = {"mean": loss_per_row.mean(), "sum": loss_per_row.sum(), "none": loss_per_row}[reduction]
    upstream = (torch.tensor(np.broadcast_to(np.asarray(grad_output, dtype=np.float64), batch_shape).reshape(-1).copy())
                if reduction == "none" else torch.tensor(float(grad_output), dtype=torch.float64))
    loss.backward(upstream)
    value = loss.detach().numpy()
    return (value.reshape(batch_shape) if reduction == "none" else value), x.grad.numpy()


def torch_multiclass_hinge(logits, target, *, margin=1.0, reduction="mean", grad_output=1.0):
    classes = logits.shape[-1]
    x = torch.tensor(logits.astype(np.float64).reshape(-1, classes), requires_grad=True)
    per_row = F.multi_margin_loss(x, torch.tensor(target.reshape(-1)), margin=margin, reduction="none") * classes
    loss, grad = _torch_rows(per_row, reduction, grad_output, x, logits.shape[:-1])
    return loss, grad.reshape(logits.shape)


def torch_smooth_hinge(logits, target, *, margin=0.0, reduction="mean", grad_output=1.0):
    classes = logits.shape[-1]
    x = torch.tensor(logits.astype(np.float64).reshape(-1, classes), requires_grad=True)
    labels = torch.tensor(target.reshape(-1))
    others = torch.logsumexp(x.masked_fill(F.one_hot(labels, classes).bool(), -float("inf")), -1)
    per_row = F.softplus(others - x.gather(1, labels[:, None])[:, 0] + margin)
    loss, grad = _torch_rows(per_row, reduction, grad_output, x, logits.shape[:-1])
    return loss, np.nan_to_num(grad).reshape(logits.shape)  # one class: torch's NaN where the gradient is 0


CASES = [
    ("hinge", multiclass_hinge, multiclass_hinge_forward_backward, torch_multiclass_hinge, [1.0, 0.3]),
    ("smooth", smooth_hinge, smooth_hinge_forward_backward, torch_smooth_hinge, [0.0, 0.7]),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name, forward, forward_backward, reference, margins", CASES, ids=[c[0] for c in CASES])
def test_hinges_match_torch(name, forward, forward_backward, reference, margins, reduction):
    for dtype, shape, margin in itertools.product(DTYPES, SHAPES, margins):
        logits = _random(shape, dtype)
        target = _labels(shape[:-1], shape[-1])
        upstream = _upstream(reduction, shape[:-1])
        loss, grad = forward_backward(logits, target, margin=margin, reduction=reduction, grad_output=upstream)
        np.testing.assert_array_equal(forward(logits, target, margin=margin, reduction=reduction), loss)
        reference_loss, reference_grad = reference(logits, target, margin=margin, reduction=reduction,
                                                   grad_output=upstream)
        what = f"{name} {dtype.__name__} {shape} m={margin}"
        assert grad.dtype == dtype and grad.shape == shape and np.asarray(loss).dtype == dtype, what
        _assert_close(loss, reference_loss, dtype, "loss " + what)
        _assert_close(grad, reference_grad, dtype, "grad " + what)


def _regime_logits(regime, shape, dtype):
    from softmaxlab.harness import regimes

    return regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, 0))


# ULP bounds against the exact references (measured maxima in brackets): hinge loss float32
# 0.51 (0.46), float64 2 (0.8), its gradient exact (0); smooth hinge = cross-entropy's bounds
# at m = 0 (loss 0.34 / 0.64, gradient 1.24 / 2.6 ULP).
BOUNDS = {
    "hinge": ({np.float32: 0.51, np.float64: 2.0}, {np.float32: 0.0, np.float64: 0.0}),
    "smooth": ({np.float32: 0.51, np.float64: 2.0}, {np.float32: 1.5, np.float64: 4.0}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", ["normal_x3", "dominant", "large_1e4", "masked"])
def test_within_ulp_bounds_of_exact_references(regime, dtype):
    logits = _regime_logits(regime, (6, 19), dtype)
    target = _labels(6, 19, seed=3)
    target[::2] = np.argmax(logits, axis=1)[::2]
    runs = [
        ("hinge", multiclass_hinge_forward_backward(logits, target, margin=0.5, reduction="none"),
         exact_multiclass_hinge(logits, target, margin=0.5, reduction="none", engine="mpmath-50")),
        ("smooth", smooth_hinge_forward_backward(logits, target, margin=0.25, reduction="none"),
         exact_smooth_hinge(logits, target, margin=0.25, reduction="none", engine="mpmath-50")),
    ]
    for name, (loss, grad), (exact_loss, exact_grad) in runs:
        loss_bound, grad_bound = BOUNDS[name]
        loss_stats, grad_stats = error_stats(loss, exact_loss, dtype), error_stats(grad, exact_grad, dtype)
        for stats in (loss_stats, grad_stats):
            assert stats["n_special_mismatch"] == 0 and stats["n_nonfinite"] == 0, (name, stats)
        assert np.nan_to_num(loss_stats["max_ulp"]) <= loss_bound[dtype], (name, loss_stats)
        assert grad_stats["max_ulp"] <= grad_bound[dtype], (name, grad_stats)


@pytest.mark.parametrize("dtype", DTYPES)
def test_smooth_hinge_without_margin_is_cross_entropy(dtype):
    # docs/proofs/cross_entropy.md, the hinge chain: softplus(LSE_{i != y} z_i - z_y) = -log softmax(z)_y
    logits = _regime_logits("dominant", (7, 29), dtype)
    target = _labels(7, 29, seed=6)
    target[:3] = np.argmax(logits, axis=1)[:3]
    for reduction in REDUCTIONS:
        hinge_loss, hinge_grad = smooth_hinge_forward_backward(logits, target, reduction=reduction)
        entropy_loss, entropy_grad = cross_entropy_forward_backward(logits, target, reduction=reduction)
        np.testing.assert_allclose(hinge_loss, entropy_loss, rtol=4 * np.finfo(dtype).eps)
        np.testing.assert_allclose(hinge_grad, entropy_grad, rtol=4 * np.finfo(dtype).eps,
                                   atol=np.finfo(dtype).eps / 29)


def test_smooth_hinge_gradient_is_bounded_as_the_seed_says():
    # the non-target gradients sum to s = sigma(u + m) and the target's is -s
    logits = _random((5, 50), np.float64, scale=5.0)
    target = _labels(5, 50)
    _, grad = smooth_hinge_forward_backward(logits, target, margin=0.5, reduction="sum")
    rows = np.arange(5)
    others = grad.sum(axis=1) - grad[rows, target]
    np.testing.assert_allclose(others, -grad[rows, target], rtol=1e-14)
    assert np.all((0 < others) & (others < 1)) and np.all(np.abs(grad).sum(axis=1) <= 2)


def test_multiclass_hinge_gradient_can_reach_classes_minus_one():
    # every non-target class inside the margin gets +1 and the target -(count)
    logits = np.array([[0.0, 0.5, 0.7, 0.2, -3.0]])
    loss, grad = multiclass_hinge_forward_backward(logits, np.array([0]), reduction="sum")
    assert float(loss) == pytest.approx((0.5 + 1) + (0.7 + 1) + (0.2 + 1) + 0.0)
    np.testing.assert_array_equal(grad, [[-3.0, 1.0, 1.0, 1.0, 0.0]])
    at_kink = np.array([[0.0, -1.0]])  # z_1 - z_0 + 1 = 0: the subgradient 0 (torch's choice)
    assert not np.any(multiclass_hinge_forward_backward(at_kink, np.array([0]))[1])


def test_gradients_match_central_differences():
    logits = _random((3, 5), np.float64, seed=8)
    target = _labels(3, 5, seed=9)
    checks = [
        (lambda x: smooth_hinge(x, target, margin=0.4), smooth_hinge_forward_backward(logits, target, margin=0.4)[1]),
        (lambda x: multiclass_hinge(x, target, margin=0.4), multiclass_hinge_forward_backward(logits, target, margin=0.4)[1]),
    ]
    for function, grad in checks:
        np.testing.assert_allclose(grad, central_differences(function, logits), atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_edges(dtype):
    inf = np.inf
    logits = np.array([[-inf, 1.0, 2.0], [0.0, -inf, -inf], [-inf, -inf, -inf], [0.0, np.nan, 1.0]], dtype=dtype)
    target = np.array([0, 0, 1, 2])
    loss, grad = smooth_hinge_forward_backward(logits, target, reduction="none")
    # target -inf: +inf loss, finite gradient; no other class: 0; all -inf: +inf, zero gradient; NaN in its row
    assert loss[0] == inf and np.all(np.isfinite(grad[0]))
    assert loss[1] == 0.0 and not np.any(grad[1])
    assert loss[2] == inf and not np.any(grad[2])
    assert np.isnan(loss[3]) and np.all(np.isnan(grad[3]))
    loss, grad = multiclass_hinge_forward_backward(logits[:2], target[:2], reduction="none")
    assert loss[0] == inf and loss[1] == 0.0 and not np.any(grad[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_long_rows_and_non_contiguous_inputs(threads, dtype):
    classes = 3 * block_length(np.dtype(dtype).itemsize) + 129
    logits = _random((2, classes), dtype)
    target = np.array([5, classes - 2])
    results = []
    for count in (1, 2):
        threads(count)
        results.append(multiclass_hinge_forward_backward(logits, target, reduction="none")
                       + smooth_hinge_forward_backward(logits, target, margin=0.3))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)
    exact_loss, exact_grad = exact_multiclass_hinge(logits, target, reduction="none", engine="mpmath-50")
    assert error_stats(results[0][0], exact_loss, dtype)["max_ulp"] <= BOUNDS["hinge"][0][dtype]
    np.testing.assert_array_equal(results[0][1], exact_grad.hi)
    view = logits[:, ::3]
    before = view.copy()
    for function in (multiclass_hinge_forward_backward, smooth_hinge_forward_backward):
        ours = function(view, np.array([1, 2]))
        expected = function(np.ascontiguousarray(view), np.array([1, 2]))
        np.testing.assert_array_equal(ours[0], expected[0])
        np.testing.assert_array_equal(ours[1], expected[1])
    np.testing.assert_array_equal(view, before)


def test_bad_inputs_raise_clear_errors():
    logits, labels = np.zeros((3, 4)), np.array([0, 1, 2])
    for function in (multiclass_hinge, multiclass_hinge_forward_backward, smooth_hinge, smooth_hinge_forward_backward):
        with pytest.raises(TypeError, match=r"logits must have dtype float32 or float64, got int64"):
            function(np.zeros((3, 4), dtype=np.int64), labels)
        with pytest.raises(TypeError, match=r"logits must have dtype float32 or float64, got float16"):
            function(np.zeros((3, 4), dtype=np.float16), labels)
        with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 4\), got 4 at row 1"):
            function(logits, np.array([0, 4, 1]))
        with pytest.raises(ValueError, match=r"target must have shape \(3,\), got \(2,\)"):
            function(logits, np.array([0, 1]))
        with pytest.raises(TypeError, match=r"margin must be a real number, got str"):
            function(logits, labels, margin="1")
        with pytest.raises(ValueError, match=r"margin must be finite, got nan"):
            function(logits, labels, margin=float("nan"))
        with pytest.raises(ValueError, match=r"reduction must be one of"):
            function(logits, labels, reduction="avg")
