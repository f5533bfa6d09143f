"""Tests for kernels/_cross_entropy.py: every option against torch, exact references, edges, bad input.

References, three ways: torch.nn.functional.cross_entropy in float64 (also for float32
runs: the reference is then far more accurate than the result), the exact mpmath
references of ``harness/exact/losses.py`` (ULP bounds), and the proof book's closed
forms (``softmaxlab.derivations.closed_forms``) plus central differences for gradients.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from softmaxlab.harness.metrics import error_stats
from softmaxlab.harness.exact import exact_cross_entropy
from softmaxlab.kernels import cross_entropy, cross_entropy_forward_backward, softmax
from softmaxlab.kernels import _config
from softmaxlab.kernels._config import block_length
from softmaxlab.kernels._cross_entropy import (
    ClassIndexArgs,
    _index_kernel,
    cross_entropy_finish,
    make_class_index_kernel,
)
from softmaxlab.kernels._hinge import _smooth_hinge_kernel, _smooth_hinge_of_cross_entropy
from softmaxlab.kernels._numerics.rows import SUM_CHUNK, chunked_sum, scaled_exp_sum, store_exp_sum
from softmaxlab.kernels._validation import check_class_indices_counted

from ._shared import DTYPES, TOLERANCE, assembly_of, central_differences, compiled_here
from ._shared import LOSS_SHAPES as SHAPES
from ._shared import assert_close as _assert_close
from ._shared import random_array as _random

torch = pytest.importorskip("torch")
F = torch.nn.functional

# ULP bounds against the exact reference.  float32 rows take e_j = exp32(z_j - m) in
# float32 arithmetic, within 0.87 ULP, i.e. 0.87 * 2**-23 relative, which is up to 1.74
# ULP of an output at the bottom of its binade; T = sum e_j inherits that relative error.
# Per-row loss (M - z_y) + log1p(T): 0.5 (rounding) + 1.74 (T) for float32, 2 for float64
# (0.64 measured).  Gradient e_j (TW/S) - tw_j: 0.5 + 1.74 (e_j) + 1.74 (S) for
# float32, 4 for float64 (2.6 measured).
LOSS_ULP = {np.float32: 2.25, np.float64: 2.0}
GRAD_ULP = {np.float32: 4.0, np.float64: 4.0}


def _labels(shape, classes, seed=1):
    return np.random.default_rng(seed).integers(0, classes, size=shape)


def _probabilities(shape, dtype, seed=2):
    values = np.random.default_rng(seed).random(shape)
    return (values / values.sum(axis=-1, keepdims=True)).astype(dtype)


def _long_row_classes(dtype) -> int:
    """Several blocks (the long-row path) and not a multiple of one."""
    return 3 * block_length(np.dtype(dtype).itemsize) + 129


def torch_cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                        grad_output=1.0):
    """(loss, grad) from torch in float64, classes on the last axis (torch wants them on axis 1)."""
    classes = logits.shape[-1]
    x = torch.tensor(logits.astype(np.float64).reshape(-1, classes), requires_grad=True)
    if target.dtype.kind == "f":
        t = torch.tensor(target.astype(np.float64).reshape(-1, classes))
    else:
        t = torch.tensor(target.astype(np.int64).reshape(-1))
    w = None if weight is None else torch.tensor(np.asarray(weight, dtype=np.float64))
    loss = F.cross_entropy(x, t, weight=w, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)
    upstream = torch.tensor(np.broadcast_to(np.asarray(grad_output, dtype=np.float64), logits.shape[:-1]).reshape(-1)
                            if reduction == "none" else float(grad_output), dtype=torch.float64)
    loss.backward(upstream)
    value = loss.detach().numpy()
    return (value.reshape(logits.shape[:-1]) if reduction == "none" else value), x.grad.numpy().reshape(logits.shape)


# ---- every option combination against torch ----------------------------------------------------

OPTIONS = [
    dict(target=target, weighted=weighted, ignore=ignore, smoothing=smoothing, reduction=reduction, upstream=upstream)
    for target, weighted, ignore, smoothing, reduction, upstream in itertools.product(
        ["index", "probabilities"], [False, True], [None, -100, 1], [0.0, 0.1, 1.0], ["mean", "sum", "none"],
        ["one", "other"],
    )
    if not (target == "probabilities" and ignore is not None)
]


def _option_id(options):
    return "-".join(f"{key}={value}" for key, value in options.items())


@pytest.mark.parametrize("options", OPTIONS, ids=[_option_id(options) for options in OPTIONS])
def test_every_option_combination_matches_torch(options):
    for dtype, shape in itertools.product(DTYPES, SHAPES):
        classes = shape[-1]
        logits = _random(shape, dtype)
        kwargs = dict(reduction=options["reduction"], label_smoothing=options["smoothing"])
        if options["weighted"]:
            kwargs["weight"] = np.random.default_rng(3).uniform(0.2, 2.0, classes).astype(dtype)
        if options["target"] == "probabilities":
            target = _probabilities(shape, dtype)
        else:
            target = _labels(shape[:-1], classes)
            if options["ignore"] is not None:
                kwargs["ignore_index"] = options["ignore"]
                flat = target.reshape(-1)
                flat[1::3] = options["ignore"]  # row 0 is always kept: the mean is never over nothing
        if options["upstream"] == "one":
            upstream = 1.0
        elif options["reduction"] == "none":
            upstream = _random(shape[:-1], np.float64, scale=1.0, seed=5)
        else:
            upstream = -0.37
        loss, grad = cross_entropy_forward_backward(logits, target, grad_output=upstream, **kwargs)
        forward_only = cross_entropy(logits, target, **kwargs)
        reference_loss, reference_grad = torch_cross_entropy(logits, target, grad_output=upstream, **kwargs)
        what = f"{dtype.__name__} {shape}"
        assert grad.dtype == dtype and grad.shape == shape, what
        assert np.asarray(loss).dtype == dtype and np.shape(loss) == np.shape(reference_loss), what
        np.testing.assert_array_equal(forward_only, loss, err_msg=what)
        _assert_close(loss, reference_loss, dtype, "loss " + what)
        _assert_close(grad, reference_grad, dtype, "grad " + what)


# ---- the known failures upstream, each right here ---------------------------------------------------


def _numpy_log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_label_smoothing_does_not_count_ignored_rows():
    # the uniform term of an ignored row must not enter the sum, nor the row the mean's count
    logits = _random((5, 4), np.float64)
    target = np.array([0, -100, 3, -100, 1])
    eps = 0.2
    log_p = _numpy_log_softmax(logits)
    kept = target != -100
    per_row = -(1 - eps) * log_p[kept, target[kept]] - eps / 4 * log_p[kept].sum(axis=1)
    loss, grad = cross_entropy_forward_backward(logits, target, label_smoothing=eps)
    np.testing.assert_allclose(loss, per_row.mean(), rtol=1e-14)
    np.testing.assert_array_equal(grad[~kept], 0.0)
    assert float(cross_entropy(logits, target, label_smoothing=eps, reduction="sum")) == pytest.approx(per_row.sum())


def test_weight_label_smoothing_and_ignore_index_together():
    logits = _random((6, 5), np.float64, seed=7)
    target = np.array([4, 2, 7, 0, 7, 2])  # 7 is the ignore_index
    weight = np.array([0.5, 1.0, 2.0, 0.25, 3.0])
    eps = 0.3
    log_p = _numpy_log_softmax(logits)
    kept = target != 7
    labels = target[kept]
    per_row = (-(1 - eps) * weight[labels] * log_p[kept, labels]
               - eps / 5 * (weight * log_p[kept]).sum(axis=1))
    expected_mean = per_row.sum() / weight[labels].sum()  # PyTorch's denominator: sum of w_y over kept rows
    loss, grad = cross_entropy_forward_backward(logits, target, weight=weight, ignore_index=7, label_smoothing=eps)
    np.testing.assert_allclose(loss, expected_mean, rtol=1e-14)
    # dL/dz = (TW a - tw) / sum w_y, with TW = (1 - eps) w_y + eps/C sum w
    a = np.exp(log_p[kept])
    smoothed = eps / 5 * weight[None, :] + (1 - eps) * weight[labels][:, None] * np.eye(5)[labels]
    expected_grad = (smoothed.sum(axis=1, keepdims=True) * a - smoothed) / weight[labels].sum()
    np.testing.assert_allclose(grad[kept], expected_grad, rtol=1e-12, atol=1e-16)
    np.testing.assert_array_equal(grad[~kept], 0.0)
    reference_loss, reference_grad = torch_cross_entropy(logits, target, weight=weight, ignore_index=7,
                                                         label_smoothing=eps)
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-13)
    np.testing.assert_allclose(grad, reference_grad, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_target_logit_of_minus_inf_gives_inf_loss_and_finite_gradient(dtype):
    logits = np.array([[-np.inf, 1.0, 2.0], [0.5, -np.inf, 0.0]], dtype=dtype)
    target = np.array([0, 2])
    loss, grad = cross_entropy_forward_backward(logits, target, reduction="none")
    assert loss[0] == np.inf and np.isfinite(loss[1])
    assert np.all(np.isfinite(grad))
    a = np.exp(_numpy_log_softmax(np.where(np.isinf(logits), -np.inf, logits).astype(np.float64)))
    np.testing.assert_allclose(grad, a - np.eye(3)[target], atol=2 * np.finfo(dtype).eps)
    assert cross_entropy(logits, target) == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_rows_ignored_mean_is_zero_with_zero_gradient(dtype):
    # documented choice: the mean over nothing is 0 (torch returns NaN)
    logits = _random((3, 4), dtype)
    target = np.full(3, -100)
    for smoothing in (0.0, 0.1):
        loss, grad = cross_entropy_forward_backward(logits, target, label_smoothing=smoothing)
        assert loss == 0.0 and loss.dtype == dtype
        np.testing.assert_array_equal(grad, np.zeros_like(logits))
        assert np.isnan(torch_cross_entropy(logits, target, label_smoothing=smoothing)[0])
    assert cross_entropy(logits, target, reduction="sum") == 0.0
    np.testing.assert_array_equal(cross_entropy(logits, target, reduction="none"), np.zeros(3))
    # the same when every kept row's target has weight 0
    weight = np.array([0.0, 1.0, 1.0, 1.0])
    loss, grad = cross_entropy_forward_backward(logits, np.array([0, 0, -100]), weight=weight)
    assert loss == 0.0 and not np.any(grad)


# ---- exact references ----------------------------------------------------------------------------


def _regime_logits(regime, shape, dtype, seed=0):
    from softmaxlab.harness import regimes

    return regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", ["normal_x3", "dominant", "large_1e4", "near_ties", "masked"])
def test_loss_and_gradient_within_ulp_bounds_of_exact_reference(regime, dtype):
    logits = _regime_logits(regime, (8, 37), dtype)
    target = _labels(8, 37, seed=4)
    target[::2] = np.argmax(logits, axis=1)[::2]  # confident rows: the dominant regime's losses of ~1e-10
    loss, grad = cross_entropy_forward_backward(logits, target, reduction="none")
    exact_loss, exact_grad = exact_cross_entropy(logits, target, reduction="none", engine="mpmath-50")
    loss_stats = error_stats(loss, exact_loss, dtype)
    grad_stats = error_stats(grad, exact_grad, dtype)
    assert loss_stats["n_special_mismatch"] == 0 and loss_stats["n_nonfinite"] == 0
    assert grad_stats["n_special_mismatch"] == 0 and grad_stats["n_nonfinite"] == 0
    assert np.nan_to_num(loss_stats["max_ulp"]) <= LOSS_ULP[dtype], loss_stats
    assert grad_stats["max_ulp"] <= GRAD_ULP[dtype], grad_stats


@pytest.mark.parametrize("dtype", DTYPES)
def test_smoothing_weights_and_probabilities_within_bounds_of_exact_reference(dtype):
    logits = _regime_logits("normal_x3", (6, 29), dtype, seed=3)
    weight = np.random.default_rng(8).uniform(0.1, 3.0, 29)
    target = _labels(6, 29, seed=9)
    target[4] = -100
    kwargs = dict(weight=weight, label_smoothing=0.15, reduction="sum", grad_output=0.625)
    loss, grad = cross_entropy_forward_backward(logits, target, **kwargs)
    exact_loss, exact_grad = exact_cross_entropy(logits, target, engine="mpmath-50", **kwargs)
    assert error_stats(loss, exact_loss, dtype)["max_ulp"] <= 2 * LOSS_ULP[dtype] + 1
    # smoothing subtracts eps w_j / C from g TW a_j: where they nearly cancel the error is
    # relative to the terms, so it is measured against the largest gradient entry of the row
    scale = np.maximum(np.abs(exact_grad.hi).max(axis=1, keepdims=True), np.finfo(np.float64).tiny)
    assert np.max(np.abs(grad - exact_grad.hi) / (scale * np.finfo(dtype).eps)) <= 4
    probabilities = _probabilities((6, 29), dtype)
    loss, grad = cross_entropy_forward_backward(logits, probabilities, label_smoothing=0.05)
    exact_loss, exact_grad = exact_cross_entropy(logits, probabilities, label_smoothing=0.05, engine="mpmath-50")
    assert error_stats(loss, exact_loss, dtype)["max_ulp"] <= 2 * LOSS_ULP[dtype] + 1
    scale = np.abs(exact_grad.hi).max(axis=1, keepdims=True)
    assert np.max(np.abs(grad - exact_grad.hi) / (scale * np.finfo(dtype).eps)) <= 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_rows_split_across_blocks_and_threads(dtype, threads):
    classes = _long_row_classes(dtype)
    logits = _random((2, classes), dtype, seed=11)
    logits[1, 5000] = 40.0  # a dominant logit in the second row, in its first block
    target = np.array([classes - 3, 5000])
    exact_loss, exact_grad = exact_cross_entropy(logits, target, reduction="none", engine="mpmath-50")
    results = []
    for count in (1, 2):  # 2 rows: one thread runs whole rows, two threads split each row's blocks
        threads(count)
        loss, grad = cross_entropy_forward_backward(logits, target, reduction="none", label_smoothing=0.0)
        assert error_stats(loss, exact_loss, dtype)["max_ulp"] <= LOSS_ULP[dtype]
        assert error_stats(grad, exact_grad, dtype)["max_ulp"] <= GRAD_ULP[dtype]
        results.append((loss, grad, cross_entropy_forward_backward(logits, target, label_smoothing=0.1,
                                                                    weight=np.linspace(0.5, 2, classes))))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][2][0], results[1][2][0])
    np.testing.assert_array_equal(results[0][2][1], results[1][2][1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 8])
def test_results_are_bit_identical_for_one_and_two_threads(threads, rows, dtype):
    logits = _random((rows, _long_row_classes(dtype) if rows == 1 else 300), dtype, seed=rows)
    target = _labels(rows, logits.shape[1], seed=rows)
    probabilities = _probabilities(logits.shape, dtype)
    results = []
    for count in (1, 2):
        threads(count)
        results.append(cross_entropy_forward_backward(logits, target, label_smoothing=0.1)
                       + cross_entropy_forward_backward(logits, probabilities, reduction="none"))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}, {"weight": "random"},
                                     {"weight": "random", "label_smoothing": 0.2, "reduction": "none"}])
def test_streamed_gradients_have_the_bits_of_the_cached_writes(monkeypatch, threads, options):
    # float32 gradients from STREAMED_OUTPUT_BYTES on are streamed, a row's e_j kept in a
    # scratch row of the thread (_config.streamed_rows); with the threshold at 0 small rows
    # take that path, and it must give the ordinary bits.  Each thread of two gets finite
    # rows, whose write reads the scratch row, and edge rows
    rows, classes = 8, 2 * block_length(4) + 77
    logits = (_random((rows, classes), np.float32, seed=3) * 6).astype(np.float32)
    logits[1, : block_length(4)] = -np.inf  # a block of -inf
    logits[2, 11] = np.inf
    logits[5, 3] = np.nan
    logits[6] = -np.inf
    target = _labels(rows, classes, seed=3)
    target[1] = block_length(4) + 5
    target[3] = -100  # ignored
    options = dict(options)
    if options.get("weight") == "random":
        options["weight"] = np.random.default_rng(3).random(classes) + 0.5
    from softmaxlab.kernels import _cross_entropy

    scratch = _cross_entropy.thread_rows
    streamed = []  # the scratch rows handed to the streamed write
    monkeypatch.setattr(_cross_entropy, "thread_rows", lambda *args: streamed.append(1) or scratch(*args))
    for count in (1, 2):
        threads(count)
        monkeypatch.setattr(_config, "STREAMED_OUTPUT_BYTES", np.inf)
        expected = cross_entropy_forward_backward(logits, target, **options)
        assert not streamed
        monkeypatch.setattr(_config, "STREAMED_OUTPUT_BYTES", 0)
        for result, bits in zip(cross_entropy_forward_backward(logits, target, **options), expected):
            np.testing.assert_array_equal(result, bits)
        assert len(streamed) == 1  # the gradient took the streamed write
        streamed.clear()


# ---- derivations and central differences ----------------------------------------------------------


def test_gradient_matches_the_proof_book_closed_forms():
    from softmaxlab.derivations import closed_forms

    logits = _random((5, 6), np.float64, seed=12)
    target = _labels(5, 6, seed=13)
    one_hot = np.eye(6)[target]
    loss, grad = cross_entropy_forward_backward(logits, target, reduction="sum")
    np.testing.assert_allclose(grad, closed_forms.cross_entropy_gradient(logits, one_hot), atol=1e-15)
    np.testing.assert_allclose(loss, closed_forms.cross_entropy(logits, one_hot).sum(), rtol=1e-14)
    loss, grad = cross_entropy_forward_backward(logits, target, reduction="sum", label_smoothing=0.2)
    np.testing.assert_allclose(grad, closed_forms.label_smoothed_cross_entropy_gradient(logits, one_hot, 0.2),
                               atol=1e-15)
    np.testing.assert_allclose(loss, closed_forms.label_smoothed_cross_entropy(logits, one_hot, 0.2).sum(),
                               rtol=1e-14)
    probabilities = _probabilities((5, 6), np.float64)
    loss, grad = cross_entropy_forward_backward(logits, probabilities, reduction="sum")
    np.testing.assert_allclose(grad, closed_forms.cross_entropy_gradient(logits, probabilities), atol=1e-15)
    np.testing.assert_allclose(loss, closed_forms.cross_entropy(logits, probabilities).sum(), rtol=1e-14)


@pytest.mark.parametrize("target_kind", ["index", "probabilities"])
def test_gradient_matches_central_differences(target_kind):
    logits = _random((3, 5), np.float64, seed=14)
    target = _labels(3, 5) if target_kind == "index" else _probabilities((3, 5), np.float64)
    kwargs = dict(weight=np.array([1.0, 0.5, 2.0, 1.5, 0.7]), label_smoothing=0.1, reduction="mean")
    _, grad = cross_entropy_forward_backward(logits, target, grad_output=1.7, **kwargs)
    expected = 1.7 * central_differences(lambda values: cross_entropy(values, target, **kwargs), logits)
    np.testing.assert_allclose(grad, expected, atol=1e-8)


# ---- worked examples -------------------------------------------------------------------------------


def test_overconfidence_and_label_smoothing():
    # scaling [1.5, 1.2, 1.0] by 5 lowers the one-hot loss (the optimum is at infinite
    # norm); with label smoothing the loss grows again for large norms (a finite optimum)
    logits = np.array([[1.5, 1.2, 1.0]])
    target = np.array([0])
    assert float(cross_entropy(logits, target)) == pytest.approx(-np.log(0.42601251), abs=1e-7)  # softmax to 8 digits
    scales = np.array([1.0, 5.0, 10.0, 20.0, 80.0])
    plain = [float(cross_entropy(scale * logits, target)) for scale in scales]
    smoothed = [float(cross_entropy(scale * logits, target, label_smoothing=0.1)) for scale in scales]
    assert plain == sorted(plain, reverse=True) and plain[-1] < 1e-10
    assert smoothed[0] > smoothed[1] > smoothed[2] and smoothed[2] < smoothed[3] < smoothed[4]


def test_gradient_is_probability_minus_target():
    # dC/dz_i = a_i - y_i ("subtract 1 from the target's probability"; docs/proofs/cross_entropy.md, section 1)
    logits = np.array([[3.0, 1.0, -3.0]])
    _, grad = cross_entropy_forward_backward(logits, np.array([1]), reduction="sum")
    a = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(grad[0], a[0] - np.array([0.0, 1.0, 0.0]), atol=1e-16)


# ---- edges ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_minus_inf_row_and_nan_row_stay_in_their_row(dtype):
    logits = np.array([[-np.inf] * 4, [0.0, np.nan, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]], dtype=dtype)
    target = np.array([1, 2, 3])
    for smoothing in (0.0, 0.1):
        loss, grad = cross_entropy_forward_backward(logits, target, reduction="none", label_smoothing=smoothing)
        assert loss[0] == np.inf and np.isnan(loss[1]) and np.isfinite(loss[2])
        np.testing.assert_array_equal(grad[0], np.zeros(4))
        assert np.all(np.isnan(grad[1])) and np.all(np.isfinite(grad[2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_plus_inf_logits(dtype):
    logits = np.array([[np.inf, 1.0, 2.0], [np.inf, 1.0, 2.0], [np.inf, np.inf, 0.0]], dtype=dtype)
    loss, grad = cross_entropy_forward_backward(logits, np.array([0, 1, 0]), reduction="none")
    # one +inf: softmax is one-hot there (docs/design.md, "Semantics at the edges"); two: no limit
    assert loss[0] == 0.0 and loss[1] == np.inf and np.isnan(loss[2])
    np.testing.assert_array_equal(grad[0], [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(grad[1], [1.0, -1.0, 0.0])
    assert np.all(np.isnan(grad[2]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_logits_with_label_smoothing(dtype):
    logits = np.array([[0.0, -np.inf, 1.0, 2.0]], dtype=dtype)
    # the uniform target has mass on the masked class: infinite loss (as torch), finite gradient
    loss, grad = cross_entropy_forward_backward(logits, np.array([2]), label_smoothing=0.1)
    assert loss == np.inf and np.all(np.isfinite(grad))
    # with weight 0 on the masked class it adds nothing (torch: 0 * inf = NaN)
    weight = np.array([1.0, 0.0, 1.0, 1.0])
    loss, grad = cross_entropy_forward_backward(logits, np.array([2]), label_smoothing=0.1, weight=weight)
    log_p = _numpy_log_softmax(np.array([[0.0, -np.inf, 1.0, 2.0]]))
    expected = -(0.9 * log_p[0, 2] + 0.1 / 4 * (log_p[0, [0, 2, 3]]).sum())
    np.testing.assert_allclose(loss, expected, rtol=4 * np.finfo(dtype).eps)
    assert np.isnan(torch_cross_entropy(logits, np.array([2]), label_smoothing=0.1, weight=weight)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits(dtype):
    logits = np.array([[1e4, -1e4, 1e4 - 3.0, 0.0], [-1e4, -1e4 + 1.0, -1e4, -1e4]], dtype=dtype)
    target = np.array([2, 1])
    loss, grad = cross_entropy_forward_backward(logits, target, reduction="none")
    exact_loss, exact_grad = exact_cross_entropy(logits, target, reduction="none", engine="mpmath-50")
    assert error_stats(loss, exact_loss, dtype)["max_ulp"] <= LOSS_ULP[dtype]
    assert error_stats(grad, exact_grad, dtype)["max_ulp"] <= GRAD_ULP[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_rows_match_the_block_path_bit_for_bit(dtype):
    # make_loss_kernel's contract: a row of one block computed in one piece (_index_row, with
    # its shortcut for the default options) gives the block functions' results bit for bit,
    # signed zeros included.  Rows: ordinary, a dominant target (tiny T), a target whose
    # rivals are all -inf (T = 0, a_y - 1 = -0), a -inf target, a +inf (never fused), ignored.
    classes = 9
    logits = _random((8, classes), dtype)
    logits[1, 3] = 60.0
    logits[2, :] = -np.inf
    logits[2, 4] = 1.5
    logits[3, 0] = -np.inf
    logits[4, 5] = np.inf
    labels = np.array([1, 3, 4, 0, 2, -100, 7, 8])
    rows = logits.shape[0]
    kernels = {  # smooth_hinge: (fused, blocks only)
        False: (_index_kernel, make_class_index_kernel(cross_entropy_finish, plain=True, fused=False)),
        True: (_smooth_hinge_kernel, make_class_index_kernel(_smooth_hinge_of_cross_entropy, plain=False, fused=False)),
    }
    block = block_length(np.dtype(dtype).itemsize)
    weight = np.linspace(0.5, 2.0, classes)
    cases = [  # (weight, smoothing, weighted, margin, smooth_hinge, row_scale)
        (np.ones(1), 0.0, False, 0.0, False, np.array([0.125])),
        (np.ones(1), 0.0, False, 0.0, False, np.linspace(-1.0, 2.0, rows)),
        (np.ones(1), 0.1, False, 0.0, False, np.array([1.0])),
        (weight, 0.0, True, 0.0, False, np.array([1.0])),
        (weight, 0.3, True, 0.0, False, np.array([0.5])),
        (np.ones(1), 0.0, False, 0.5, True, np.array([1.0])),
    ]
    for class_weight, smoothing, weighted, margin, smooth_hinge, row_scale in cases:
        weight_total = float(np.sum(class_weight)) if weighted else float(classes)
        args = ClassIndexArgs(labels, class_weight, row_scale, np.int64(-100), smoothing, weighted, weight_total,
                              margin)
        for write in (True, False):
            outputs = []
            for kernel in kernels[smooth_hinge]:
                grad = np.empty_like(logits) if write else np.empty((4, classes), dtype=dtype)
                row_loss = np.empty(rows)
                total = kernel(logits, args, grad, row_loss, block, False, write)
                outputs.append((row_loss, total, grad if write else None))
            (fused_loss, fused_total, fused_grad), (block_loss, block_total, block_grad) = outputs
            np.testing.assert_array_equal(fused_loss.view(np.uint64), block_loss.view(np.uint64))
            assert np.float64(fused_total).view(np.uint64) == np.float64(block_total).view(np.uint64)
            if write:
                bits = np.uint32 if dtype == np.float32 else np.uint64
                np.testing.assert_array_equal(fused_grad.view(bits), block_grad.view(bits))


def test_reductions_add_the_row_losses_within_a_log_depth_bound():
    # "sum" and "mean" add the float64 row losses in the kernel (``_numerics.rows.chunked_sum``:
    # chunks of SUM_CHUNK in 4 x 8 lanes, at most 8 + 5 additions per term, then the chunk
    # sums pairwise, ceil(log2(chunks)) more); all terms are positive, so the error is at most
    # depth * u of the sum.  A lost or doubled chunk would be off by a whole chunk.
    rows = 16 * SUM_CHUNK + 3  # 17 chunks, the last one short
    logits = _random((rows, 7), np.float64)
    labels = _labels(rows, 7)
    losses = cross_entropy(logits, labels, reduction="none")
    exact_total = math.fsum(losses.tolist())
    depth = 8 + 5 + math.ceil(math.log2(17))
    assert abs(float(cross_entropy(logits, labels, reduction="sum")) - exact_total) <= depth * 2.0**-53 * exact_total
    mean = float(cross_entropy(logits, labels, reduction="mean"))
    assert abs(mean - exact_total / rows) <= (depth + 1) * 2.0**-53 * exact_total / rows
    # a non-finite row loss reaches the sum
    logits[5, labels[5]] = -np.inf
    assert cross_entropy(logits, labels, reduction="sum") == np.inf
    logits[6, 0] = np.nan
    assert np.isnan(cross_entropy(logits, labels, reduction="mean"))


@pytest.mark.parametrize("length", [0, 1, SUM_CHUNK - 1, SUM_CHUNK, SUM_CHUNK + 1, 5 * SUM_CHUNK + 7])
def test_chunked_sum_matches_an_exact_sum_and_leaves_its_input(length):
    values = np.random.default_rng(length).random(length)
    before = values.copy()
    total = chunked_sum(values)
    np.testing.assert_array_equal(values, before)
    assert abs(total - math.fsum(values.tolist())) <= 16 * 2.0**-53 * math.fsum(values.tolist())


def test_label_scan_counts_the_rows_not_ignored():
    labels = np.array([[0, -100, 3], [-100, 2, 1]], dtype=np.int32)
    checked, kept = check_class_indices_counted("target", labels, (2, 3), 4, -100)
    assert kept == 4 and checked.dtype == np.int64
    np.testing.assert_array_equal(checked, labels)
    assert check_class_indices_counted("target", np.abs(labels) % 4, (2, 3), 4, -100)[1] == 6
    assert check_class_indices_counted("target", np.abs(labels) % 4, (2, 3), 4, 0)[1] == 3  # its three 0s ignored
    with pytest.raises(ValueError, match=r"got -100 at row \(0, 1\)"):
        check_class_indices_counted("target", labels, (2, 3), 4, 0)
    # the mean divides by the rows kept
    logits = _random((2, 3, 4), np.float64)
    mean = cross_entropy(logits, labels, reduction="mean")
    np.testing.assert_allclose(mean, cross_entropy(logits, labels, reduction="sum") / 4, rtol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_and_single_class(dtype):
    empty = np.zeros((0, 5), dtype=dtype)
    labels = np.zeros(0, dtype=np.int64)
    for reduction in ("mean", "sum"):
        loss, grad = cross_entropy_forward_backward(empty, labels, reduction=reduction)
        assert loss == 0.0 and grad.shape == (0, 5)
    assert cross_entropy(empty, labels, reduction="none").shape == (0,)
    single = np.array([[3.0], [-2.0]], dtype=dtype)
    for smoothing in (0.0, 0.5):
        loss, grad = cross_entropy_forward_backward(single, np.array([0, 0]), label_smoothing=smoothing)
        assert loss == 0.0
        np.testing.assert_array_equal(grad, np.zeros((2, 1)))


def test_unbatched_logits():
    logits = np.array([1.0, 2.0, 0.5])
    loss, grad = cross_entropy_forward_backward(logits, np.array(1), reduction="none")
    assert np.shape(loss) == () and grad.shape == (3,)
    reference_loss, reference_grad = torch_cross_entropy(logits[None], np.array([1]))
    np.testing.assert_allclose(loss, reference_loss, rtol=1e-15)
    np.testing.assert_allclose(grad, reference_grad[0], atol=1e-16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_and_inputs_not_modified(dtype):
    base = _random((6, 40), dtype)
    labels = _labels(6, 20)
    probabilities = _probabilities((20, 6), dtype).T  # a transposed view
    weight = np.linspace(0.5, 1.5, 40)[::2]
    for view in (base[:, ::2], np.asfortranarray(base[:, :20])):
        before = view.copy()
        before_labels, before_probabilities, before_weight = labels.copy(), probabilities.copy(), weight.copy()
        contiguous = np.ascontiguousarray(view)
        for target in (labels, probabilities):
            for kwargs in (dict(), dict(weight=weight, label_smoothing=0.1)):
                loss, grad = cross_entropy_forward_backward(view, target, **kwargs)
                expected_loss, expected_grad = cross_entropy_forward_backward(contiguous, np.ascontiguousarray(target),
                                                                              **kwargs)
                np.testing.assert_array_equal(loss, expected_loss)
                np.testing.assert_array_equal(grad, expected_grad)
        np.testing.assert_array_equal(view, before)
        np.testing.assert_array_equal(labels, before_labels)
        np.testing.assert_array_equal(probabilities, before_probabilities)
        np.testing.assert_array_equal(weight, before_weight)


def test_hot_loops_vectorize():
    # the exponential sums of the reduces: cross-entropy's (stored) and distillation's (scaled)
    for dtype in DTYPES:
        row = np.linspace(-3, 0, 300).astype(dtype)
        # the sums as max_sum_exp_stored and reduce_scaled call them, compiled here so that
        # the loops they call list their signatures
        compiled_here(store_exp_sum)(row, 1.0, row.max(), np.empty_like(row), row[:0])
        compiled_here(scaled_exp_sum)(row, 0.5, float(row.max()) * 0.5, row, row[:0])
    flavours = (scaled_exp_sum, store_exp_sum)
    loops = [(terms, signature) for flavour in flavours for terms in flavour.loops for signature in terms.signatures]
    assert len(loops) >= 4
    for terms, signature in loops:
        assembly = assembly_of(terms, signature)
        assert sum(assembly.count(register) for register in ("%ymm", "%zmm")) > 50, signature
        assert "exp@" not in assembly and "callq\texp" not in assembly


# ---- bad input --------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    logits = np.zeros((3, 4))
    labels = np.array([0, 1, 2])
    cases = [
        (TypeError, r"logits must be a numpy.ndarray .* got list", dict(logits=[[0.0, 1.0]], target=np.array([0]))),
        (TypeError, r"logits must have dtype float32 or float64, got int64", dict(logits=np.zeros((3, 4), dtype=np.int64))),
        (TypeError, r"logits must have dtype float32 or float64, got float16", dict(logits=np.zeros((3, 4), dtype=np.float16))),
        (ValueError, r"logits must have at least one class on its last axis, got shape \(3, 0\)",
         dict(logits=np.zeros((3, 0)))),
        (ValueError, r"target must have shape \(3,\) .* got \(4,\)", dict(target=np.array([0, 1, 2, 3]))),
        (ValueError, r"target must hold class indices in \[0, 4\) or ignore_index \(-100\), got 7 at row 1",
         dict(target=np.array([0, 7, 9]))),
        (ValueError, r"got -1 at row 2", dict(target=np.array([0, 1, -1]))),
        (ValueError, r"got 5 at row \(1, 0\)", dict(logits=np.zeros((2, 2, 4)), target=np.array([[0, 1], [5, 0]]))),
        (TypeError, r"target must be a numpy.ndarray of integer class indices .* got list", dict(target=[0, 1, 2])),
        (TypeError, r"target must have an integer dtype .* got bool", dict(target=np.array([True, False, True]))),
        (ValueError, r"target of a float dtype holds class probabilities and must have the shape of logits \(3, 4\), "
                     r"got \(3,\)", dict(target=np.array([0.0, 1.0, 2.0]))),
        (TypeError, r"target \(class probabilities\) must have the dtype of logits \(float64\), got float32",
         dict(target=np.full((3, 4), 0.25, dtype=np.float32))),
        (ValueError, r"weight must have shape \(4,\) \(one weight per class\), got \(3,\)", dict(weight=np.ones(3))),
        (TypeError, r"weight must be a numpy.ndarray .* got list", dict(weight=[1.0, 1.0, 1.0, 1.0])),
        (TypeError, r"weight must have dtype float32 or float64, got int64", dict(weight=np.ones(4, dtype=np.int64))),
        (ValueError, r"label_smoothing must be >= 0.0, got -0.1", dict(label_smoothing=-0.1)),
        (ValueError, r"label_smoothing must be <= 1.0, got 1.5", dict(label_smoothing=1.5)),
        (TypeError, r"label_smoothing must be a real number, got str", dict(label_smoothing="0.1")),
        (ValueError, r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'", dict(reduction="avg")),
        (ValueError, r"ignore_index must be an integer, got 1.5", dict(ignore_index=1.5)),
    ]
    for error, message, change in cases:
        arguments = dict(logits=logits, target=labels)
        arguments.update(change)
        positional = (arguments.pop("logits"), arguments.pop("target"))
        for function in (cross_entropy, cross_entropy_forward_backward):
            with pytest.raises(error, match=message):
                function(*positional, **arguments)


def test_bad_grad_output_raises_clear_errors():
    logits, labels = np.zeros((3, 4)), np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"grad_output must be a scalar for reduction='mean', got an array of shape \(3,\)"):
        cross_entropy_forward_backward(logits, labels, grad_output=np.ones(3))
    with pytest.raises(ValueError, match=r"grad_output must have the loss' shape \(3,\), got \(4,\)"):
        cross_entropy_forward_backward(logits, labels, reduction="none", grad_output=np.ones(4))
    with pytest.raises(TypeError, match=r"grad_output must be a real number or a numpy.ndarray, got list"):
        cross_entropy_forward_backward(logits, labels, grad_output=[1.0])


def test_probability_targets_refuse_a_nonnegative_ignore_index_as_torch_does():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 4))
    probabilities = softmax(rng.normal(size=(3, 4)))
    for function in (cross_entropy, cross_entropy_forward_backward):
        for ignore_index in (0, 3, 7):
            with pytest.raises(ValueError, match=rf"ignore_index is not supported for class-probability targets.*"
                                                 rf"got {ignore_index}"):
                function(logits, probabilities, ignore_index=ignore_index)
    # a negative one selects no class, as in torch: the same loss as without it
    assert cross_entropy(logits, probabilities, ignore_index=-1) == cross_entropy(logits, probabilities)
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(probabilities), ignore_index=0)
