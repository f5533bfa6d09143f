"""Tests for kernels/_driver/reduction.py: one reduction and one return type for every loss.

``"mean"`` and ``"sum"`` give a NumPy scalar of the output dtype (``np.float32`` or
``np.float64``, as NumPy's reductions do), ``"none"`` an array of the unreduced shape and
dtype; the loss of ``*_forward_backward`` is the forward's, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from softmaxlab import kernels
from softmaxlab.kernels._driver.reduction import reduce_losses, row_scales

from ._shared import DTYPES
from ._shared import random_array as _random

ROWS, CLASSES, FEATURES = 5, 7, 4


def _labels():
    return np.random.default_rng(3).integers(0, CLASSES, size=ROWS)


def _cosines(dtype):
    return np.clip(_random((ROWS, CLASSES), dtype, scale=0.4, seed=4), -1.0, 1.0).astype(dtype)


def _probabilities(dtype):
    values = np.random.default_rng(5).random((ROWS, CLASSES))
    return (values / values.sum(axis=-1, keepdims=True)).astype(dtype)


# name -> (forward, forward_backward, inputs(dtype) -> (args, kwargs), shape of the unreduced loss)
LOSSES = {
    "cross_entropy": (kernels.cross_entropy, kernels.cross_entropy_forward_backward,
                      lambda dtype: ((_random((ROWS, CLASSES), dtype), _labels()), {}), (ROWS,)),
    "cross_entropy_probabilities": (kernels.cross_entropy, kernels.cross_entropy_forward_backward,
                                    lambda dtype: ((_random((ROWS, CLASSES), dtype), _probabilities(dtype)),
                                                   {"label_smoothing": 0.1}), (ROWS,)),
    "distillation_loss": (kernels.distillation_loss, kernels.distillation_loss_forward_backward,
                          lambda dtype: ((_random((ROWS, CLASSES), dtype), _random((ROWS, CLASSES), dtype, seed=6),
                                          _labels()), {}), (ROWS,)),
    "multiclass_hinge": (kernels.multiclass_hinge, kernels.multiclass_hinge_forward_backward,
                         lambda dtype: ((_random((ROWS, CLASSES), dtype), _labels()), {}), (ROWS,)),
    "smooth_hinge": (kernels.smooth_hinge, kernels.smooth_hinge_forward_backward,
                     lambda dtype: ((_random((ROWS, CLASSES), dtype), _labels()), {"margin": 0.5}), (ROWS,)),
    "binary_cross_entropy_with_logits": (
        kernels.binary_cross_entropy_with_logits, kernels.binary_cross_entropy_with_logits_forward_backward,
        lambda dtype: ((_random((ROWS, CLASSES), dtype), _probabilities(dtype)), {}), (ROWS, CLASSES)),
    "quadratic_cost": (kernels.quadratic_cost, kernels.quadratic_cost_forward_backward,
                       lambda dtype: ((_random((ROWS, CLASSES), dtype), _probabilities(dtype)), {}), (ROWS, CLASSES)),
    "margin_cross_entropy": (kernels.margin_cross_entropy, kernels.margin_cross_entropy_forward_backward,
                             lambda dtype: ((_cosines(dtype), _labels()), {"s": 8.0, "m1": 1.2, "m2": 0.1, "m3": 0.1}),
                             (ROWS,)),
    "normface": (kernels.normface, kernels.normface_forward_backward,
                 lambda dtype: ((_cosines(dtype), _labels()), {"s": 8.0}), (ROWS,)),
    "cosface": (kernels.cosface, kernels.cosface_forward_backward,
                lambda dtype: ((_cosines(dtype), _labels()), {}), (ROWS,)),
    "arcface": (kernels.arcface, kernels.arcface_forward_backward,
                lambda dtype: ((_cosines(dtype), _labels()), {}), (ROWS,)),
    "large_margin_cross_entropy": (
        kernels.large_margin_cross_entropy, kernels.large_margin_cross_entropy_forward_backward,
        lambda dtype: ((_random((ROWS, FEATURES), dtype), _random((CLASSES, FEATURES), dtype, seed=7), _labels()),
                       {"m": 2}), (ROWS,)),
    "linear_cross_entropy": (
        kernels.linear_cross_entropy, kernels.linear_cross_entropy_forward_backward,
        lambda dtype: ((_random((ROWS, FEATURES), dtype), _random((CLASSES, FEATURES), dtype, seed=7), _labels()),
                       {"z_loss": 1e-3}), (ROWS,)),
    "linear_margin_cross_entropy": (
        kernels.linear_margin_cross_entropy, kernels.linear_margin_cross_entropy_forward_backward,
        lambda dtype: ((_random((ROWS, FEATURES), dtype), _random((CLASSES, FEATURES), dtype, seed=7), _labels()),
                       {"s": 16.0, "m2": 0.3}), (ROWS,)),
    "center_loss": (kernels.center_loss, kernels.center_loss_forward_backward,
                    lambda dtype: ((_random((ROWS, FEATURES), dtype), _labels(), _random((CLASSES, FEATURES), dtype,
                                                                                          seed=8)), {}), (ROWS,)),
}


def test_every_public_loss_is_listed():
    losses = {name for name in kernels.__all__ if not name.endswith(("_forward_backward", "_backward"))}
    normalizers = {"softmax", "log_softmax", "logsumexp", "normalized_linear", "center_update"}
    assert losses - normalizers == {name for name in LOSSES if name != "cross_entropy_probabilities"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_returns_a_numpy_scalar_of_its_dtype(name, reduction, dtype):
    forward, forward_backward, inputs, shape = LOSSES[name]
    args, kwargs = inputs(dtype)
    loss = forward(*args, reduction=reduction, **kwargs)
    fused = forward_backward(*args, reduction=reduction, **kwargs)[0]
    if reduction == "none":
        assert isinstance(loss, np.ndarray) and loss.shape == shape and loss.dtype == dtype
    else:
        assert type(loss) is np.dtype(dtype).type  # np.float32 / np.float64, not a 0-d array
        assert np.isfinite(loss)
    assert type(fused) is type(loss)
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(loss))


@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_losses_rounds_once_and_means_over_nothing_as_zero(dtype):
    losses = np.array([1.0, 2.0 ** -30, 3.0])
    total = 1.0 + 2.0 ** -30 + 3.0
    assert reduce_losses(losses, "sum", (3,), dtype, 3) == np.dtype(dtype).type(total)
    assert reduce_losses(losses, "mean", (3,), dtype, 3) == np.dtype(dtype).type(total / 3)
    assert reduce_losses(losses, "mean", (3,), dtype, 3, total=6.0) == np.dtype(dtype).type(2.0)
    assert type(reduce_losses(losses[:0], "mean", (0,), dtype, 0)) is np.dtype(dtype).type
    assert reduce_losses(losses[:0], "mean", (0,), dtype, 0) == 0.0
    none = reduce_losses(losses, "none", (3, 1), dtype, 3)
    assert none.dtype == dtype and none.shape == (3, 1)


def test_row_scales_per_row_broadcast_and_mean():
    np.testing.assert_array_equal(row_scales(2.0, "mean", 4, (3,)), [0.5])
    np.testing.assert_array_equal(row_scales(2.0, "mean", 4, (3,), per_row=True), [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(row_scales(2.0, "mean", 0, (3,)), [0.0])
    np.testing.assert_array_equal(row_scales(2.0, "sum", 4, (3,)), [2.0])
    np.testing.assert_array_equal(row_scales(2.0, "none", 4, (3,)), [2.0, 2.0, 2.0])
    upstream = np.array([[1.0, -2.0], [0.5, 4.0]], dtype=np.float32)
    scales = row_scales(upstream, "none", 4, (2, 2))
    assert scales.dtype == np.float64 and scales.shape == (4,)
    np.testing.assert_array_equal(scales, [1.0, -2.0, 0.5, 4.0])
    with pytest.raises(ValueError, match="must be a scalar"):
        row_scales(upstream, "mean", 4, (2, 2))


@pytest.mark.parametrize("name", ["quadratic_cost", "binary_cross_entropy_with_logits"])
@pytest.mark.parametrize("seed", range(5))
def test_elementwise_float64_sum_and_mean_are_the_rounded_exact_sum_of_their_entries(name, seed):
    # one entry per row: each row's loss is its entry's float64 loss, and the batch's sum
    # (compensated) is the exactly rounded sum of those, as math.fsum gives it; NumPy's
    # pairwise sum of the rows was one ULP off in 4 of these 10 cases
    import math

    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((100_000, 1)) * 3
    target = rng.random(logits.shape)
    function = getattr(kernels, name)
    entries = function(logits, target, reduction="none")
    exact = math.fsum(entries.ravel())
    assert float(function(logits, target, reduction="sum")) == exact
    assert float(function(logits, target, reduction="mean")) == exact / logits.size
