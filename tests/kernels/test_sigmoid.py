"""Tests for kernels/sigmoid.py: binary cross-entropy with logits against torch, exact references, edges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from softmaxlab.harness.metrics import error_stats
from softmaxlab.harness.exact import exact_binary_cross_entropy_with_logits
from softmaxlab.kernels import binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_forward_backward
from softmaxlab.kernels._config import block_length

from ._shared import DTYPES, TOLERANCE, central_differences
from ._shared import LOSS_SHAPES as SHAPES
from ._shared import assert_close as _assert_close
from ._shared import random_array as _random

torch = pytest.importorskip("torch")
F = torch.nn.functional

# ULP bounds against the exact reference, per entry (reduction="none"; measured maxima in
# brackets): the loss, two non-negative terms, float32 0.51 (0.5: computed in float64 from
# e^-|x| to 1.1e-10, ``sigmoids_for``), float64 3 (1.6); the gradient (1 - y) sigma(x) -
# p_w y sigma(-x) likewise: float32 0.51 (0.5011 over the harness' regimes), float64 3 (2.4).
LOSS_ULP = {np.float32: 0.51, np.float64: 3.0}
GRAD_ULP = {np.float32: 0.51, np.float64: 3.0}


def _targets(shape, dtype, seed=1, soft=False):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) if soft else (rng.random(shape) < 0.5)).astype(dtype)


def torch_binary_cross_entropy(logits, target, *, weight=None, pos_weight=None, reduction="mean", grad_output=1.0):
    x = torch.tensor(logits.astype(np.float64), requires_grad=True)
    as_tensor = lambda value: None if value is None else torch.tensor(np.asarray(value, dtype=np.float64))  # noqa: E731
    loss = F.binary_cross_entropy_with_logits(x, as_tensor(target), weight=as_tensor(weight),
                                              pos_weight=as_tensor(pos_weight), reduction=reduction)
    upstream = (torch.tensor(np.broadcast_to(np.asarray(grad_output, dtype=np.float64), logits.shape).copy())
                if reduction == "none" else torch.tensor(float(grad_output), dtype=torch.float64))
    loss.backward(upstream)
    return loss.detach().numpy(), x.grad.numpy()


OPTIONS = [
    dict(weight=weight, pos_weight=pos_weight, soft=soft, reduction=reduction, upstream=upstream)
    for weight, pos_weight, soft, reduction, upstream in itertools.product(
        [None, "class", "row", "full"], [None, "class"], [False, True], ["mean", "sum", "none"], ["one", "other"]
    )
]


def _weight(kind, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    if kind is None:
        return None
    if kind == "class":
        return rng.uniform(0.2, 3.0, shape[-1]).astype(dtype)
    if kind == "row":
        return rng.uniform(0.2, 3.0, shape[:-1] + (1,)).astype(dtype)
    return rng.uniform(0.2, 3.0, shape).astype(dtype)


@pytest.mark.parametrize("options", OPTIONS, ids=["-".join(f"{k}={v}" for k, v in o.items()) for o in OPTIONS])
def test_every_option_combination_matches_torch(options):
    for dtype, shape in itertools.product(DTYPES, SHAPES):
        logits = _random(shape, dtype)
        target = _targets(shape, dtype, soft=options["soft"])
        kwargs = dict(weight=_weight(options["weight"], shape, dtype, 2),
                      pos_weight=_weight(options["pos_weight"], shape, dtype, 3), reduction=options["reduction"])
        if options["upstream"] == "one":
            upstream = 1.0
        elif options["reduction"] == "none":
            upstream = _random(shape, np.float64, scale=1.0, seed=5)
        else:
            upstream = 2.5
        loss, grad = binary_cross_entropy_with_logits_forward_backward(logits, target, grad_output=upstream, **kwargs)
        np.testing.assert_array_equal(binary_cross_entropy_with_logits(logits, target, **kwargs), loss)
        reference_loss, reference_grad = torch_binary_cross_entropy(logits, target, grad_output=upstream, **kwargs)
        what = f"{dtype.__name__} {shape}"
        assert grad.dtype == dtype and grad.shape == shape and np.asarray(loss).dtype == dtype, what
        assert np.shape(loss) == np.shape(reference_loss), what
        _assert_close(loss, reference_loss, dtype, "loss " + what)
        _assert_close(grad, reference_grad, dtype, "grad " + what)


def _regime_logits(regime, shape, dtype):
    from softmaxlab.harness import regimes

    return regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, 0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", ["normal_x3", "large_1e4", "dominant", "masked"])
def test_loss_and_gradient_within_ulp_bounds_of_exact_reference(regime, dtype):
    logits = _regime_logits(regime, (6, 19), dtype)
    positive = np.linspace(0.5, 3.0, 19).astype(dtype)
    kwargs = dict(pos_weight=positive, reduction="none")
    target = _targets((6, 19), dtype)
    loss, grad = binary_cross_entropy_with_logits_forward_backward(logits, target, **kwargs)
    exact_loss, exact_grad = exact_binary_cross_entropy_with_logits(logits, target, engine="mpmath-50", **kwargs)
    loss_stats, grad_stats = error_stats(loss, exact_loss, dtype), error_stats(grad, exact_grad, dtype)
    assert loss_stats["n_special_mismatch"] == 0 and loss_stats["n_nonfinite"] == 0, loss_stats
    assert grad_stats["n_special_mismatch"] == 0 and grad_stats["n_nonfinite"] == 0, grad_stats
    assert loss_stats["max_ulp"] <= LOSS_ULP[dtype], loss_stats
    assert grad_stats["max_ulp"] <= GRAD_ULP[dtype], grad_stats
    # soft targets: (1 - y) sigma(x) - p_w y sigma(-x) cancels near its zero (the optimum), so
    # its error is bounded in ULPs of the larger term
    soft = _targets((6, 19), dtype, soft=True)
    loss, grad = binary_cross_entropy_with_logits_forward_backward(logits, soft, **kwargs)
    exact_loss, exact_grad = exact_binary_cross_entropy_with_logits(logits, soft, engine="mpmath-50", **kwargs)
    assert error_stats(loss, exact_loss, dtype)["max_ulp"] <= LOSS_ULP[dtype]
    x, y = logits.astype(np.float64), soft.astype(np.float64)
    with np.errstate(over="ignore"):
        sigma = 1 / (1 + np.exp(-x))
        terms = np.maximum((1 - y) * sigma, positive * y * (1 - sigma))
    error = np.abs((grad - exact_grad.hi) - exact_grad.lo)
    units = np.spacing(np.maximum(terms, np.finfo(dtype).tiny).astype(dtype)).astype(np.float64)
    assert np.max(error / units) <= GRAD_ULP[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_logits_of_plus_minus_1e4_and_torch_cancellation_at_minus_30(dtype):
    logits = np.array([[1e4, -1e4, 1e4, -1e4, -30.0]], dtype=dtype)
    target = np.array([[1.0, 0.0, 0.0, 1.0, 0.0]], dtype=dtype)
    loss, grad = binary_cross_entropy_with_logits_forward_backward(logits, target, reduction="none")
    np.testing.assert_array_equal(loss[0, :4], [0.0, 0.0, 1e4, 1e4])
    np.testing.assert_array_equal(grad[0, :4], [0.0, 0.0, 1.0, -1.0])
    # sp(-30) = log1p(e^-30): torch's (1 - y) x + sp(-x) form computes -30 + 30.0000000000000936
    exact = np.log1p(np.exp(-30.0))
    assert abs(float(loss[0, 4]) - exact) <= 0.5 * np.spacing(dtype(exact))
    torch_value = torch_binary_cross_entropy(logits.astype(np.float64), target, reduction="none")[0][0, 4]
    assert abs(torch_value - exact) > 1e-3 * exact


def test_float32_gradient_of_far_negative_logits_is_the_tiny_product_not_a_clamped_one():
    # sigma(x) grad_output with sigma(x) = e^x far below float32's range: the product is formed
    # in float64 and rounded once, so e^-120 * 3e38 = 2.3e-14 is kept and e^-200 * 3e38 rounds
    # to 0 (neither is e^-110 * 3e38).
    logits = np.array([-300.0, -200.0, -120.0, -104.0], dtype=np.float32)
    grad_output = np.full(4, 3e38, dtype=np.float32)
    _, grad = binary_cross_entropy_with_logits_forward_backward(
        logits, np.zeros(4, np.float32), reduction="none", grad_output=grad_output)
    expected = (np.exp(logits.astype(np.float64)) * float(np.float32(3e38))).astype(np.float32)
    np.testing.assert_array_max_ulp(grad, expected, maxulp=1)
    np.testing.assert_array_equal(grad == 0, expected == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_logits(dtype):
    logits = np.array([[-np.inf, -np.inf, np.inf, np.inf]], dtype=dtype)
    target = np.array([[0.0, 1.0, 1.0, 0.0]], dtype=dtype)
    loss, grad = binary_cross_entropy_with_logits_forward_backward(logits, target, reduction="none")
    np.testing.assert_array_equal(loss[0], [0.0, np.inf, 0.0, np.inf])
    np.testing.assert_array_equal(grad[0], [0.0, -1.0, 0.0, 1.0])


def test_gradient_matches_the_proof_book_closed_forms():
    from softmaxlab.derivations import closed_forms

    logits = _random((4, 6), np.float64, seed=6)
    target = _targets((4, 6), np.float64, soft=True)
    positive = np.linspace(0.5, 2.0, 6)
    loss, grad = binary_cross_entropy_with_logits_forward_backward(logits, target, pos_weight=positive,
                                                                   reduction="none")
    np.testing.assert_allclose(grad, closed_forms.binary_cross_entropy_with_logits_gradient(logits, target, positive),
                               rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(loss, closed_forms.binary_cross_entropy_with_logits(logits, target, positive),
                               rtol=1e-14)


def test_gradient_matches_central_differences():
    logits = _random((3, 5), np.float64, seed=7)
    target = _targets((3, 5), np.float64, soft=True)
    kwargs = dict(weight=np.linspace(0.5, 1.5, 5), pos_weight=np.linspace(2.0, 0.5, 5))
    _, grad = binary_cross_entropy_with_logits_forward_backward(logits, target, grad_output=0.8, **kwargs)
    expected = 0.8 * central_differences(lambda values: binary_cross_entropy_with_logits(values, target, **kwargs),
                                         logits)
    np.testing.assert_allclose(grad, expected, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_are_bit_identical_for_one_and_two_threads(threads, dtype):
    for shape in ((1, 3 * block_length(np.dtype(dtype).itemsize) + 129), (9, 300)):
        logits, target = _random(shape, dtype), _targets(shape, dtype)
        results = []
        for count in (1, 2):
            threads(count)
            results.append(binary_cross_entropy_with_logits_forward_backward(logits, target, pos_weight=np.ones(1))
                           + binary_cross_entropy_with_logits_forward_backward(logits, target, reduction="none"))
        for one, two in zip(*results):
            np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_and_one_dimensional_and_non_contiguous_inputs(dtype):
    loss, grad = binary_cross_entropy_with_logits_forward_backward(np.zeros((0, 3), dtype), np.zeros((0, 3), dtype))
    assert loss == 0.0 and grad.shape == (0, 3)
    vector = np.array([0.5, -1.0, 2.0], dtype=dtype)
    loss, grad = binary_cross_entropy_with_logits_forward_backward(vector, np.ones(3, dtype), reduction="none")
    assert loss.shape == (3,) and grad.shape == (3,)
    base, targets = _random((6, 40), dtype), _targets((40, 6), dtype)
    logits, target = base[:, ::2], targets[:20].T
    before = (logits.copy(), target.copy())
    loss, grad = binary_cross_entropy_with_logits_forward_backward(logits, target, reduction="none")
    expected = binary_cross_entropy_with_logits_forward_backward(np.ascontiguousarray(logits),
                                                                 np.ascontiguousarray(target), reduction="none")
    np.testing.assert_array_equal(loss, expected[0])
    np.testing.assert_array_equal(grad, expected[1])
    np.testing.assert_array_equal(logits, before[0])
    np.testing.assert_array_equal(target, before[1])


def test_bad_inputs_raise_clear_errors():
    logits, target = np.zeros((3, 4)), np.zeros((3, 4))
    cases = [
        (TypeError, r"logits must be a numpy.ndarray .* got list", dict(logits=[[0.0]])),
        (TypeError, r"logits must have dtype float32 or float64, got int64", dict(logits=np.zeros((3, 4), dtype=np.int64))),
        (TypeError, r"logits must have dtype float32 or float64, got float16", dict(logits=np.zeros((3, 4), dtype=np.float16))),
        (TypeError, r"target must be a numpy.ndarray of float32 or float64, got list", dict(target=[[0.0]])),
        (ValueError, r"target must have the shape of logits \(3, 4\), got \(3, 5\)", dict(target=np.zeros((3, 5)))),
        (TypeError, r"target must have the dtype of logits \(float64\), got int64", dict(target=np.zeros((3, 4), dtype=np.int64))),
        (ValueError, r"weight must broadcast to the logits' shape \(3, 4\), got \(3,\)", dict(weight=np.ones(3))),
        (ValueError, r"pos_weight must broadcast to the logits' shape \(3, 4\), got \(2, 4\)", dict(pos_weight=np.ones((2, 4)))),
        (TypeError, r"pos_weight must be a numpy.ndarray .* got list", dict(pos_weight=[1.0, 1.0, 1.0, 1.0])),
        (ValueError, r"reduction must be one of", dict(reduction="elementwise")),
    ]
    for error, message, change in cases:
        arguments = dict(logits=logits, target=target)
        arguments.update(change)
        for function in (binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_forward_backward):
            with pytest.raises(error, match=message):
                function(**arguments)
    with pytest.raises(ValueError, match=r"grad_output must have the loss' shape \(3, 4\), got \(3,\)"):
        binary_cross_entropy_with_logits_forward_backward(logits, target, reduction="none", grad_output=np.ones(3))
