"""Tests for kernels/_linear_margin_cross_entropy.py: margin cross-entropy of the cosines, fused.

The reference is the unfused composition on the same inputs: ``normalized_linear``, then
``margin_cross_entropy_forward_backward``, then ``normalized_linear_backward``, in float64.
The two differ by the cosines' rounding (the fused products are BLAS's in the inputs'
dtype), and the bounds below are derived from it: with delta = max |c_fused - c_reference|
(measured from the same products the kernel takes), the loss, a smooth function of the
logits s c with |d loss_i / d z_ij| summing to at most 2 over j, moves by at most
2 s delta; each dL/dc_ij = g s (a_ij - [j = y]) moves by at most g s (a_ij + [j = y]) 2 s
delta relative to the scale of its row (the softmax's derivative in the max norm); the
tangent projection adds at most twice that.  Then the guarantees of the module's
docstring: the same bits for every budget and thread count, rows permuted exactly, errors.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from softmaxlab.harness.machine_code import hot_loop
from softmaxlab.kernels import (
    linear_margin_cross_entropy,
    linear_margin_cross_entropy_forward_backward,
    margin_cross_entropy_forward_backward,
    normalized_linear,
    normalized_linear_backward,
)
from softmaxlab.kernels import _linear_margin_cross_entropy as fused
from softmaxlab.kernels._config import block_length
from softmaxlab.kernels._linear_cross_entropy import DEFAULT_MEMORY_BUDGET, PRODUCT_TILE, ROW_TILE

from ._shared import DTYPES, MARGINS as PRESETS, assembly_of, central_differences



def _problem(rows, features, classes, dtype, seed=0, near_targets=True):
    rng = np.random.default_rng(seed)
    linear_weight = rng.standard_normal((classes, features)) * rng.uniform(0.5, 2.0, (classes, 1))
    target = rng.integers(0, classes, rows)
    x = rng.standard_normal((rows, features)) * 0.3
    if near_targets:  # features near their class: the margins' regime, probabilities far from uniform
        x += linear_weight[target] / np.linalg.norm(linear_weight[target], axis=1, keepdims=True)
    x *= rng.uniform(0.5, 4.0, (rows, 1))
    return x.astype(dtype), linear_weight.astype(dtype), target


def _reference(x, linear_weight, target, margins, reduction="mean", grad_output=1.0):
    """The unfused composition in float64, and delta: the largest difference between its cosines
    and those the fused kernel forms (x W^T in the inputs' dtype, times the float64 inverse norms)."""
    s, m1, m2, m3 = margins
    x64, w64 = x.astype(np.float64), linear_weight.astype(np.float64)
    cos = normalized_linear(x64, w64)
    loss, dcos = margin_cross_entropy_forward_backward(cos, target, s=s, m1=m1, m2=m2, m3=m3, reduction=reduction,
                                                       grad_output=grad_output)
    dx, dw = normalized_linear_backward(x64, w64, dcos)
    fused = np.clip((x @ linear_weight.T).astype(np.float64) / np.linalg.norm(x64, axis=1)[:, None]
                    / np.linalg.norm(w64, axis=1), -1.0, 1.0)
    delta = float(np.abs(fused - cos).max())
    return loss, dx, dw, dcos, delta


def _bounds(x, linear_weight, dcos, delta, s, dtype):
    """Per-row bounds on grad_input and per-class bounds on grad_linear_weight (module docstring):
    |d dcos_ij| <= (|dcos_ij| + g s [j = y] ...) 2 s delta is bounded by 4 s delta |dcos| row-wise,
    the products' and projections' rounding by (D + 8) u of the same sums, doubled by the projection."""
    u = np.finfo(dtype).eps / 2
    features = x.shape[1]
    relative = 4.0 * s * delta + (features + 8) * u
    x_norms = np.linalg.norm(x.astype(np.float64), axis=1)
    w_norms = np.linalg.norm(linear_weight.astype(np.float64), axis=1)
    per_row = 2.0 * relative * np.abs(dcos).sum(axis=1) / x_norms
    per_class = 2.0 * relative * np.abs(dcos).sum(axis=0) / w_norms
    return per_row, per_class


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("preset", PRESETS)
def test_matches_the_unfused_composition_within_the_cosines_bound(dtype, preset):
    margins = PRESETS[preset]
    s, m1, m2, m3 = margins
    x, linear_weight, target = _problem(70, 12, 2 * PRODUCT_TILE + 300, dtype, seed=len(preset))
    loss, dx, dw = linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=s, m1=m1, m2=m2, m3=m3,
                                                                reduction="none")
    ref_loss, ref_dx, ref_dw, dcos, delta = _reference(x, linear_weight, target, margins, reduction="none")
    u = np.finfo(dtype).eps / 2
    assert loss.dtype == dx.dtype == dw.dtype == dtype
    np.testing.assert_array_less(np.abs(loss - ref_loss), 2.0 * s * delta + 8 * u * np.abs(ref_loss) + 1e-300)
    per_row, per_class = _bounds(x, linear_weight, dcos, delta, s, dtype)
    np.testing.assert_array_less(np.abs(dx - ref_dx).max(axis=1), per_row + 1e-300)
    np.testing.assert_array_less(np.abs(dw - ref_dw).max(axis=1), per_class + 1e-300)
    # not vacuous: the bound is a small fraction of the gradients
    assert np.median(per_row / np.abs(ref_dx).max(axis=1)) < (1e-3 if dtype == np.float32 else 1e-11)


def test_float64_precision_of_float32_inputs_is_the_float64_computation_rounded():
    margins = PRESETS["arcface"]
    s, m1, m2, m3 = margins
    x, linear_weight, target = _problem(40, 16, 1500, np.float32, seed=3)
    loss, dx, dw = linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=s, m2=m2,
                                                                precision="float64")
    wide = linear_margin_cross_entropy_forward_backward(x.astype(np.float64), linear_weight.astype(np.float64),
                                                        target, s=s, m2=m2)
    # the float32 inputs are exact in float64: the same computation, rounded once at the end
    assert loss == np.float32(wide[0])
    np.testing.assert_array_equal(dx, wide[1].astype(np.float32))
    np.testing.assert_array_equal(dw, wide[2].astype(np.float32))


def test_gradient_matches_central_differences():
    s, m1, m2, m3 = PRESETS["arc+cos"]
    x, linear_weight, target = _problem(4, 5, 7, np.float64, seed=9)
    _, dx, dw = linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=s, m2=m2, m3=m3)
    numeric_dx = central_differences(lambda v: float(linear_margin_cross_entropy(v, linear_weight, target, s=s,
                                                                                 m2=m2, m3=m3)), x)
    numeric_dw = central_differences(lambda v: float(linear_margin_cross_entropy(x, v, target, s=s, m2=m2, m3=m3)),
                                     linear_weight)
    np.testing.assert_allclose(dx, numeric_dx, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dw, numeric_dw, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reductions_and_upstream_gradient(reduction):
    s, m1, m2, m3 = PRESETS["cosface"]
    x, linear_weight, target = _problem(9, 6, 40, np.float64, seed=2)
    grad_output = np.linspace(-1.0, 2.0, 9) if reduction == "none" else 2.5
    loss, dx, dw = linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=s, m3=m3,
                                                                reduction=reduction, grad_output=grad_output)
    ref_loss, ref_dx, ref_dw, _, _ = _reference(x, linear_weight, target, PRESETS["cosface"], reduction, grad_output)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-11, atol=1e-14 * np.abs(ref_dx).max())
    np.testing.assert_allclose(dw, ref_dw, rtol=1e-11, atol=1e-14 * np.abs(ref_dw).max())
    assert linear_margin_cross_entropy(x, linear_weight, target, s=s, m3=m3, reduction=reduction).shape == loss.shape


# ---- invariances ------------------------------------------------------------------------------


def _outputs(x, linear_weight, target, **options):
    s, m1, m2, m3 = PRESETS["arcface"]
    loss, dx, dw = linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=s, m2=m2,
                                                                reduction="none", **options)
    mean = linear_margin_cross_entropy(x, linear_weight, target, s=s, m2=m2, **options)
    return loss, dx, dw, mean


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ["classes", "rows"])
def test_bits_do_not_depend_on_the_budget(dtype, shape):
    if shape == "classes":  # several product tiles, more classes than a block of the row kernels
        rows, features, classes = 5, 6, 2 * block_length(np.dtype(dtype).itemsize) + 700
    else:  # more rows than a row tile: grad_linear_weight summed over row tiles
        rows, features, classes = ROW_TILE + 37, 3, 2 * PRODUCT_TILE + 5
    x, linear_weight, target = _problem(rows, features, classes, dtype, seed=4)
    everything = 4 * rows * classes * np.dtype(dtype).itemsize
    budgets = [1, 1, 2 * rows * PRODUCT_TILE * x.itemsize, DEFAULT_MEMORY_BUDGET, everything]  # 1 twice: run to run
    results = [_outputs(x, linear_weight, target, memory_budget=budget) for budget in budgets]
    for budget, other in zip(budgets[1:], results[1:]):
        for name, first, second in zip(("losses", "grad_input", "grad_linear_weight", "mean"), results[0], other):
            np.testing.assert_array_equal(first, second, err_msg=f"{name} at budget {budget}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_forward_holds_one_product_tile_whatever_the_budget(dtype):
    """Pass 1 takes each product tile's pairs as BLAS writes it: the forward's largest NumPy
    allocation is one product tile, not a chunk of the budget's size (traced by tracemalloc,
    which sees NumPy's buffers)."""
    import tracemalloc

    rows, features, classes = 64, 8, 5 * PRODUCT_TILE + 3
    x, linear_weight, target = _problem(rows, features, classes, dtype, seed=8)
    tile = rows * PRODUCT_TILE * x.itemsize
    linear_margin_cross_entropy(x, linear_weight, target, s=30.0, m2=0.5)  # compiled before tracing
    for budget in (DEFAULT_MEMORY_BUDGET, 4 * rows * classes * x.itemsize):
        tracemalloc.start()
        linear_margin_cross_entropy(x, linear_weight, target, s=30.0, m2=0.5, memory_budget=budget)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # the tile, the threads' cosine rows, the per-tile pairs, the classes' norms and inverses
        # (float64) and room for the rows' vectors
        pairs = rows * -(-classes // PRODUCT_TILE) * 16
        assert peak < tile + 8 * numba.get_num_threads() * PRODUCT_TILE + pairs + 4 * 8 * classes + 65536, (budget,
                                                                                                          peak)
        assert peak < rows * classes * x.itemsize / 2  # far below the products a chunk would hold


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_backward_keeps_the_products_only_within_the_budget(dtype):
    """With the gradient, pass 1 keeps every product tile for pass 2 when all fit in
    ``memory_budget`` and none otherwise: the traced peak grows by about the products."""
    import tracemalloc

    rows, features, classes = 64, 8, 5 * PRODUCT_TILE + 3
    x, linear_weight, target = _problem(rows, features, classes, dtype, seed=9)
    products = rows * classes * x.itemsize
    peaks = {}
    for budget in (products // 2, 2 * products):
        linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=30.0, m2=0.5, memory_budget=budget)
        tracemalloc.start()
        linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=30.0, m2=0.5, memory_budget=budget)
        peaks[budget] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[2 * products] - peaks[products // 2] > 0.9 * products - rows * PRODUCT_TILE * x.itemsize, peaks


@pytest.mark.parametrize("dtype", DTYPES)
def test_bits_do_not_depend_on_the_thread_count(threads, dtype):
    x, linear_weight, target = _problem(7, 6, 2 * block_length(np.dtype(dtype).itemsize) + 9, dtype, seed=6)
    results = []
    for count in (1, 2):
        threads(count)
        results.append(_outputs(x, linear_weight, target, memory_budget=100_000))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
def test_permuted_rows_give_permuted_row_results(dtype):
    x, linear_weight, target = _problem(9, 7, 300, dtype, seed=7)
    order = np.random.default_rng(5).permutation(9)
    loss, dx, dw, _ = _outputs(x, linear_weight, target)
    permuted = _outputs(x[order], linear_weight, target[order])
    np.testing.assert_array_equal(permuted[0], loss[order])
    np.testing.assert_array_equal(permuted[1], dx[order])
    np.testing.assert_allclose(permuted[2], dw, rtol=8 * np.finfo(dtype).eps, atol=8 * np.finfo(dtype).eps
                               * np.abs(dw).max())


# ---- edges and errors -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_class_gives_zero_loss_and_gradient(dtype):
    x, linear_weight, target = _problem(3, 4, 1, dtype)
    loss, dx, dw = linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=64.0, m2=0.5,
                                                                reduction="none")
    np.testing.assert_array_equal(loss, np.zeros(3, dtype))
    assert not np.any(dx) and not np.any(dw)


def test_nan_features_reach_their_row_only():
    x, linear_weight, target = _problem(4, 5, 30, np.float64)
    x[1, 2] = np.nan
    loss, dx, _ = linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=16.0, reduction="none")
    assert np.isnan(loss[1]) and np.isfinite(np.delete(loss, 1)).all()
    assert np.isnan(dx[1]).all() and np.isfinite(np.delete(dx, 1, axis=0)).all()


def test_inputs_are_not_modified_and_views_are_taken():
    x, linear_weight, target = _problem(6, 8, 50, np.float32)
    wide_x = np.repeat(x, 2, axis=1)[:, ::2]  # a non-contiguous view with x's values
    copies = (x.copy(), linear_weight.copy(), target.copy())
    first = linear_margin_cross_entropy_forward_backward(wide_x, linear_weight, target, s=30.0, m3=0.35)
    second = linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=30.0, m3=0.35)
    for one, two in zip(first, second):
        np.testing.assert_array_equal(one, two)
    for before, after in zip(copies, (x, linear_weight, target)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("clamped", [True, False])  # the cosines; L-Softmax's raw products
@pytest.mark.parametrize("dtype", DTYPES)
def test_tile_kernels_element_loops_vectorize(dtype, clamped):
    """The cosines of a tile (pass 1) and its A_ij (pass 2) are element loops that must compile
    to vector loops.  The statistics' cosine loop is a multiply and a clamp: at most 4
    instructions an element (an index that may be negative, ``w_inverse[col0 + j]``, left it
    9.5 an element on 4 lanes and the statistics 2.3 times slower; a test of ``clamped`` inside
    the loop left it scalar)."""
    products = np.ones((2, 8), dtype=dtype)
    cosines = fused.Cosines(np.zeros(2, dtype=np.int64), np.ones(2), np.ones(8), 64.0, clamped)
    statistics = (0, 2, 0, products, 0, 0, cosines, np.zeros((2, 1, 2)), np.empty((1, 8)))
    gradient = (0, 2, 0, products, 0, 0, cosines, np.ones(2), np.ones((2, 4)))
    signature = lambda arguments: tuple(numba.typeof(argument) for argument in arguments)  # noqa: E731
    loop = hot_loop(assembly_of(fused._cosine_tile_statistics, signature(statistics)), 8)  # float64 cosines
    assert loop["elements"] >= 4 and loop["all"] <= 4.0, loop
    loop = hot_loop(assembly_of(fused._cosine_tile_gradient, signature(gradient)), products.itemsize)
    assert loop["elements"] >= 4, loop


def test_bad_inputs_raise_clear_errors():
    x, linear_weight, target = _problem(3, 4, 6, np.float64)
    cases = [
        (dict(x=x.astype(np.float32)), TypeError, "linear_weight must have the dtype of x"),
        (dict(x=x[0]), ValueError, "x must have shape \\(rows, features\\)"),
        (dict(x=[[1.0]]), TypeError, "x"),
        (dict(linear_weight=linear_weight[:, :3]), ValueError, "linear_weight must have 4 columns"),
        (dict(target=np.array([0, 1, 6])), ValueError, "target"),
        (dict(target=target.astype(np.float64)), TypeError, "target must have an integer dtype"),
        (dict(s=0.0), ValueError, "s"),
        (dict(m2=4.0), ValueError, "m2"),
        (dict(precision="half"), ValueError, "precision must be one of"),
        (dict(memory_budget=0), ValueError, "memory_budget"),
        (dict(reduction="max"), ValueError, "reduction"),
    ]
    for change, error, message in cases:
        arguments = dict(x=x, linear_weight=linear_weight, target=target, s=16.0)
        arguments.update(change)
        with pytest.raises(error, match=message):
            linear_margin_cross_entropy(arguments.pop("x"), arguments.pop("linear_weight"), arguments.pop("target"),
                                        **arguments)
    zero = linear_weight.copy()
    zero[2] = 0.0
    with pytest.raises(ValueError, match="linear_weight row 2 has norm 0"):
        linear_margin_cross_entropy_forward_backward(x, zero, target, s=16.0)
    with pytest.raises(ValueError, match="grad_output"):
        linear_margin_cross_entropy_forward_backward(x, linear_weight, target, s=16.0, reduction="none",
                                                     grad_output=np.ones(2))
