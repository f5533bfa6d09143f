"""Tests for kernels/_linear_cross_entropy.py: the fused x W^T + b cross-entropy.

References: softmaxlab's ``cross_entropy`` and ``cross_entropy_forward_backward`` on the
materialized logits (the loss bit for bit; the gradients composed in float64), and torch's
``F.cross_entropy`` composition with autograd in float64 where torch is installed.  Then
the guarantees of the module's docstring: the same bits for every ``memory_budget`` and
thread count, rows permuted exactly, the memory bound, the edges, bad input.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

from softmaxlab.kernels import (
    cross_entropy,
    cross_entropy_forward_backward,
    linear_cross_entropy,
    linear_cross_entropy_forward_backward,
    logsumexp,
    softmax,
)
from softmaxlab.kernels._config import block_length
from softmaxlab.kernels._linear_cross_entropy import (
    DEFAULT_MEMORY_BUDGET,
    PRODUCT_TILE,
    ROW_TILE,
    _aligned_empty,
    _logits_into,
    chunk_plan,
)

from ._shared import DTYPES, assert_close, random_array

# Every option at once, as the budget and thread tests take them.
ALL_OPTIONS = dict(label_smoothing=0.1, z_loss=1e-3, softcap=4.0)


def _problem(rows, features, classes, dtype, seed=0, bias=True, ignored=()):
    x = random_array((rows, features), dtype, scale=1.0, seed=seed)
    linear_weight = random_array((classes, features), dtype, scale=0.5, seed=seed + 1)
    linear_bias = random_array((classes,), dtype, scale=0.5, seed=seed + 2) if bias else None
    target = np.random.default_rng(seed + 3).integers(0, classes, size=rows)
    target[list(ignored)] = -100
    return x, linear_weight, linear_bias, target


def _logits(x, linear_weight, linear_bias):
    return x @ linear_weight.T + (linear_bias if linear_bias is not None else 0)


def _tile_logits(x, linear_weight, linear_bias):
    """The logits as linear_cross_entropy's GEMMs give them: one product per fixed tile of
    ROW_TILE rows x PRODUCT_TILE classes, into an aligned tile buffer (``_logits_into``)."""
    rows, classes = x.shape[0], linear_weight.shape[0]
    logits = np.empty((rows, classes), dtype=x.dtype)
    product = _aligned_empty(min(rows, ROW_TILE) * min(classes, PRODUCT_TILE), x.dtype)
    _logits_into(logits, x, linear_weight, linear_bias, 0, 0, 0.0, product)
    return logits


def _assert_within_product_rounding(logits, x, linear_weight, linear_bias):
    """|logits - (x W^T + b)| <= 2 (D + 1) eps (|x| |W|^T + |b|): the tiles' GEMMs are x W^T + b
    up to their rounding, summed in any order (the float64 reference's own rounding, for
    float64 inputs, is of the same size and inside the factor 2)."""
    x64, w64 = x.astype(np.float64), linear_weight.astype(np.float64)
    bias = 0.0 if linear_bias is None else linear_bias.astype(np.float64)
    exact = x64 @ w64.T + bias
    magnitude = np.abs(x64) @ np.abs(w64).T + np.abs(bias)
    bound = 2 * (x.shape[1] + 1) * np.finfo(x.dtype).eps * magnitude
    assert np.all(np.abs(logits - exact) <= bound)


def _long_classes(dtype):
    """Three class tiles of the first pass (the blocks of cross_entropy), the last one partial."""
    return 2 * block_length(np.dtype(dtype).itemsize) + 700


def _composed(x, linear_weight, linear_bias, target, weight=None, reduction="mean", label_smoothing=0.0,
              z_loss=0.0, softcap=None, grad_output=1.0):
    """The unfused composition: softmaxlab's cross_entropy_forward_backward on the materialized
    logits, the z-loss and the soft cap by the chain rule in float64, the products in float64."""
    raw = _logits(x, linear_weight, linear_bias)
    logits = raw if softcap is None else (softcap * np.tanh(raw.astype(np.float64) / softcap)).astype(x.dtype)
    kept = target != -100
    if weight is None:
        denominator = kept.sum()
    else:
        denominator = weight[target[kept]].sum()
    losses, grad = cross_entropy_forward_backward(logits, target, weight=weight, reduction="none",
                                                  label_smoothing=label_smoothing)
    lse = logsumexp(logits.astype(np.float64))
    losses = losses.astype(np.float64) + np.where(kept, z_loss * lse**2, 0.0)
    dz = grad.astype(np.float64) + np.where(kept, 2 * z_loss * lse, 0.0)[:, None] * softmax(logits.astype(np.float64))
    if reduction == "none":
        upstream = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), losses.shape)
        loss = losses
    else:
        factor = 1.0 if reduction == "sum" else (1.0 / denominator if denominator else 0.0)
        upstream = np.full(losses.shape, grad_output * factor)
        loss = losses.sum() * factor
    dz = dz * upstream[:, None]
    if softcap is not None:
        dz *= 1.0 - np.tanh(raw.astype(np.float64) / softcap) ** 2
    grads = (loss, dz @ linear_weight.astype(np.float64), dz.T @ x.astype(np.float64))
    return grads + ((dz.sum(axis=0),) if linear_bias is not None else ())


def _assert_matches_composition(ours, reference, dtype, what):
    names = ("loss", "grad_input", "grad_linear_weight", "grad_linear_bias")
    assert len(ours) == len(reference)
    for name, value, expected in zip(names, ours, reference):
        assert np.asarray(value).dtype == dtype, name
        assert_close(value, expected, dtype, f"{what}: {name}")


# ---- the loss is cross_entropy's, bit for bit ---------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [1, 37, "long"])
def test_loss_is_cross_entropy_of_the_logits_bit_for_bit(dtype, classes):
    classes = _long_classes(dtype) if classes == "long" else classes
    x, linear_weight, linear_bias, target = _problem(6, 12, classes, dtype, ignored=[2])
    weight = np.linspace(0.5, 2.0, classes)
    for bias, options in itertools.product((None, linear_bias), (
        dict(),
        dict(weight=weight),
        dict(label_smoothing=0.2),
        dict(weight=weight, label_smoothing=0.05, ignore_index=-100),
    )):
        # the logits of the tiles' GEMMs: one x @ W.T may round some in their last bit otherwise
        # (OpenBLAS's Haswell kernels, on AVX2 CPUs, by the column's place in the GEMM)
        logits = _tile_logits(x, linear_weight, bias)
        _assert_within_product_rounding(logits, x, linear_weight, bias)
        for reduction in ("mean", "sum", "none"):
            expected = cross_entropy(logits, target, reduction=reduction, **options)
            ours = linear_cross_entropy(x, linear_weight, target, linear_bias=bias, reduction=reduction, **options)
            fused = linear_cross_entropy_forward_backward(x, linear_weight, target, linear_bias=bias,
                                                          reduction=reduction, **options)[0]
            assert type(ours) is type(expected)
            np.testing.assert_array_equal(ours, expected)
            np.testing.assert_array_equal(fused, expected)


# ---- every option against the unfused composition --------------------------------------------


OPTIONS = [
    dict(),
    dict(weight="w"),
    dict(label_smoothing=0.1),
    dict(z_loss=1e-2),
    dict(softcap=3.0),
    dict(reduction="sum", grad_output=-2.5),
    dict(reduction="none", grad_output="per_row"),
    dict(weight="w", label_smoothing=0.2, z_loss=1e-3, softcap=2.0, reduction="none"),
    dict(weight="w", label_smoothing=0.05, z_loss=1e-4, softcap=30.0, grad_output=0.5),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda options: ",".join(options) or "default")
def test_every_option_matches_the_unfused_composition(dtype, options):
    classes = 45
    x, linear_weight, linear_bias, target = _problem(7, 10, classes, dtype, ignored=[4])
    options = dict(options)
    if options.get("weight") == "w":
        options["weight"] = np.linspace(0.25, 3.0, classes)
    if options.get("grad_output") == "per_row":
        options["grad_output"] = np.linspace(-1.0, 2.0, 7)
    for bias in (None, linear_bias):
        ours = linear_cross_entropy_forward_backward(x, linear_weight, target, linear_bias=bias, **options)
        reference = _composed(x, linear_weight, bias, target, **options)
        _assert_matches_composition(ours, reference, dtype, str(options))
        forward = {key: value for key, value in options.items() if key != "grad_output"}
        np.testing.assert_array_equal(linear_cross_entropy(x, linear_weight, target, linear_bias=bias, **forward),
                                      ours[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_rows_match_the_unfused_composition(dtype):
    classes = _long_classes(dtype)
    x, linear_weight, linear_bias, target = _problem(4, 8, classes, dtype)
    ours = linear_cross_entropy_forward_backward(x, linear_weight, target, linear_bias=linear_bias, weight=None,
                                                 **ALL_OPTIONS)
    _assert_matches_composition(ours, _composed(x, linear_weight, linear_bias, target, **ALL_OPTIONS), dtype,
                                "long rows")


def test_every_option_matches_torch_in_float64():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    classes = 30
    x, linear_weight, linear_bias, target = _problem(9, 6, classes, np.float64, ignored=[1, 5])
    weight = np.linspace(0.5, 1.5, classes)
    for reduction, smoothing, z_loss, cap, use_weight in itertools.product(
        ("mean", "sum", "none"), (0.0, 0.15), (0.0, 1e-2), (None, 2.5), (False, True)
    ):
        tx, tw, tb = (torch.tensor(value, requires_grad=True) for value in (x, linear_weight, linear_bias))
        logits = F.linear(tx, tw, tb)
        if cap is not None:
            logits = cap * torch.tanh(logits / cap)
        tt = torch.tensor(target)
        class_weight = torch.tensor(weight) if use_weight else None
        rows = F.cross_entropy(logits, tt, weight=class_weight, reduction="none", label_smoothing=smoothing)
        kept = (tt != -100).double()
        rows = rows + z_loss * torch.logsumexp(logits, dim=1) ** 2 * kept
        denominator = (class_weight[tt.clamp(min=0)] * kept).sum() if use_weight else kept.sum()
        total = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / denominator}[reduction]
        upstream = torch.linspace(-1, 1, 9, dtype=torch.float64) if reduction == "none" else torch.tensor(1.5,
                                                                                                        dtype=torch.float64)
        total.backward(upstream)
        ours = linear_cross_entropy_forward_backward(
            x, linear_weight, target, linear_bias=linear_bias, weight=weight if use_weight else None,
            reduction=reduction, label_smoothing=smoothing, z_loss=z_loss, softcap=cap, grad_output=upstream.numpy(),
        )
        expected = (total.detach().numpy(), tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy())
        _assert_matches_composition(ours, expected, np.float64, f"{reduction} {smoothing} {z_loss} {cap} {use_weight}")


def test_gradient_matches_central_differences():
    classes = 5
    x, linear_weight, linear_bias, target = _problem(3, 4, classes, np.float64)
    options = dict(weight=np.linspace(0.5, 2.0, classes), label_smoothing=0.1, z_loss=0.05, softcap=1.5)
    _, grad_input, grad_weight, grad_bias = linear_cross_entropy_forward_backward(
        x, linear_weight, target, linear_bias=linear_bias, **options)

    def loss(x=x, linear_weight=linear_weight, linear_bias=linear_bias):
        return float(linear_cross_entropy(x, linear_weight, target, linear_bias=linear_bias, **options))

    from ._shared import central_differences

    for ours, numeric in (
        (grad_input, central_differences(lambda value: loss(x=value), x)),
        (grad_weight, central_differences(lambda value: loss(linear_weight=value), linear_weight)),
        (grad_bias, central_differences(lambda value: loss(linear_bias=value), linear_bias)),
    ):
        np.testing.assert_allclose(ours, numeric, rtol=1e-6, atol=1e-8)


# ---- the same bits for every budget, thread count and row order --------------------------------


def _all_outputs(x, linear_weight, linear_bias, target, **options):
    losses = linear_cross_entropy_forward_backward(x, linear_weight, target, linear_bias=linear_bias,
                                                   reduction="none", grad_output=np.linspace(0.5, 1.5, len(target)),
                                                   **options)
    return losses + (linear_cross_entropy(x, linear_weight, target, linear_bias=linear_bias, reduction="mean",
                                          **options),)


def _budgets(rows, features, classes, dtype):
    """Budgets from the smallest (one tile a chunk) to one chunk for everything."""
    itemsize = np.dtype(dtype).itemsize
    tile = rows * block_length(itemsize) * itemsize
    return [1, 2 * tile, 3 * tile, DEFAULT_MEMORY_BUDGET]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ["classes", "rows"])
def test_bits_do_not_depend_on_the_budget(dtype, shape):
    if shape == "classes":  # three class tiles, several product tiles
        rows, features, classes = 5, 6, _long_classes(dtype)
    else:  # more rows than a row tile: chunks of one row tile or all, grad_linear_weight summed over row tiles
        rows, features, classes = ROW_TILE + 37, 3, 2 * PRODUCT_TILE + 5
    x, linear_weight, linear_bias, target = _problem(rows, features, classes, dtype, ignored=[1])
    weight = np.linspace(0.5, 2.0, classes)
    plans = set()
    results = []
    budgets = _budgets(rows, features, classes, dtype)
    budgets = budgets[:1] + budgets  # the first twice: a run-to-run difference is told apart from the budget's
    for budget in budgets:
        plans.add(chunk_plan(rows, classes, features, dtype, budget)[:3])
        results.append(_all_outputs(x, linear_weight, linear_bias, target, weight=weight, memory_budget=budget,
                                    **ALL_OPTIONS))
    assert len(plans) >= 2  # the budgets did change the chunks
    names = ("losses", "grad_input", "grad_linear_weight", "grad_linear_bias", "mean")
    for budget, other in zip(budgets[1:], results[1:]):
        differing = [name for name, first, second in zip(names, results[0], other) if not np.array_equal(first, second)]
        assert not differing, f"{differing} differ at budget {budget} from budget {budgets[0]}"


@pytest.mark.parametrize("dtype", DTYPES)
def test_bits_do_not_depend_on_where_the_tiles_lie(monkeypatch, dtype):
    """The gradient of a tile lying just past the class weights, where weight[len + col0 + j]
    would be: a loop indexing weight[col0 + j] checked that range for overlap with the row
    (the wrap-around of a negative index) and then ran its scalar version, whose contractions
    round differently; the flaky float64 case of the budget test below was this."""
    import softmaxlab.kernels._linear_cross_entropy as module

    rows, features, classes = 5, 6, 2 * PRODUCT_TILE + 700
    x, linear_weight, linear_bias, target = _problem(rows, features, classes, dtype)
    tile_elements = rows * PRODUCT_TILE
    # the class weights at the start of one buffer, the product tile where the wrap-around
    # range of the second class tile (col0 = PRODUCT_TILE) begins
    place = classes + PRODUCT_TILE
    shared = module._aligned_empty(place + tile_elements, np.float64)  # room for a float64 tile
    weight = shared[:classes]
    weight[:] = np.linspace(0.5, 2.0, classes)
    options = dict(weight=weight, memory_budget=1, label_smoothing=0.1, z_loss=1e-3, softcap=4.0)
    expected = _all_outputs(x, linear_weight, linear_bias, target, **options)
    allocate = module._aligned_empty

    def tile_after_the_weights(length, tile_dtype, alignment=64):
        if length == tile_elements and np.dtype(tile_dtype) == np.dtype(dtype):
            # the same bytes, weight's start + 8 * place, seen in the tile's dtype
            per_slot = 8 // np.dtype(dtype).itemsize
            return shared.view(dtype)[place * per_slot : place * per_slot + length]
        return allocate(length, tile_dtype, alignment)

    monkeypatch.setattr(module, "_aligned_empty", tile_after_the_weights)
    moved = _all_outputs(x, linear_weight, linear_bias, target, **options)
    for name, first, second in zip(("losses", "grad_input", "grad_linear_weight", "grad_linear_bias", "mean"),
                                   expected, moved):
        assert np.array_equal(first, second), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_bits_do_not_depend_on_the_thread_count(threads, dtype):
    x, linear_weight, linear_bias, target = _problem(5, 6, _long_classes(dtype), dtype)
    results = []
    for count in (1, 2):
        threads(count)
        results.append(_all_outputs(x, linear_weight, linear_bias, target, memory_budget=100_000, **ALL_OPTIONS))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES)
def test_permuted_rows_give_permuted_row_results(dtype):
    x, linear_weight, linear_bias, target = _problem(9, 7, 300, dtype)
    order = np.random.default_rng(5).permutation(9)
    loss, grad_input, grad_weight, grad_bias = linear_cross_entropy_forward_backward(
        x, linear_weight, target, linear_bias=linear_bias, reduction="none", **ALL_OPTIONS)
    permuted = linear_cross_entropy_forward_backward(x[order], linear_weight, target[order], linear_bias=linear_bias,
                                                     reduction="none", **ALL_OPTIONS)
    np.testing.assert_array_equal(permuted[0], loss[order])
    np.testing.assert_array_equal(permuted[1], grad_input[order])
    # the sums over rows change order: equal to rounding only
    assert_close(permuted[2], grad_weight, dtype, "grad_linear_weight")
    assert_close(permuted[3], grad_bias, dtype, "grad_linear_bias")


# ---- memory ----------------------------------------------------------------------------------


def test_chunks_stay_within_the_budget():
    for rows, features, classes, dtype, budget in [
        (1024, 512, 131072, np.float32, DEFAULT_MEMORY_BUDGET),
        (4096, 4096, 256000, np.float32, DEFAULT_MEMORY_BUDGET),
        (300, 64, 50000, np.float64, 16 * 2**20),
        (300, 64, 50000, np.float64, 1),  # below one tile: one tile
    ]:
        plan = chunk_plan(rows, classes, features, dtype, budget)
        itemsize = np.dtype(dtype).itemsize
        one_tile = chunk_plan(rows, classes, features, dtype, 1)
        assert plan.bytes1 <= max(budget, one_tile.bytes1)
        assert one_tile.rows == min(rows, ROW_TILE) and one_tile.cols == min(classes, plan.tile)
        # the second pass's tiles do not grow with the rows or the classes
        larger = chunk_plan(4 * rows, 4 * classes, features, dtype, budget).bytes2
        assert plan.bytes2 <= larger == chunk_plan(8 * rows, 8 * classes, features, dtype, budget).bytes2
        assert plan.cols % plan.tile == 0 or plan.cols == classes
        assert plan.rows % ROW_TILE == 0 or plan.rows == rows
        assert plan.rows * plan.cols * itemsize < rows * classes * itemsize / 4  # far below the logits


@pytest.mark.parametrize("dtype", DTYPES)
def test_peak_allocation_is_bounded_by_the_budget_not_by_the_logits(dtype):
    rows, features, classes = 64, 16, 40000
    x, linear_weight, linear_bias, target = _problem(rows, features, classes, dtype)
    budget = 2 * 2**20 + 2**19
    linear_cross_entropy_forward_backward(x[:2], linear_weight[:50], target[:2] % 50, memory_budget=budget)  # compile
    itemsize = np.dtype(dtype).itemsize
    plan = chunk_plan(rows, classes, features, dtype, budget)
    outputs = (rows + classes) * features * itemsize + classes * itemsize
    tiles = -(-classes // plan.tile)
    # both passes' buffers, the per-row state (rows x tiles x 5 float64 and a few columns),
    # grad_input's and the bias' float64 sums, and 64 KiB for the small rest
    bound = plan.bytes1 + plan.bytes2 + rows * tiles * 5 * 8 + rows * 16 * 8 + (rows * features + classes) * 8 + 65536
    assert bound < rows * classes * itemsize / 2  # far below the logits: the test can tell them apart
    tracemalloc.start()
    try:
        linear_cross_entropy_forward_backward(x, linear_weight, target, linear_bias=linear_bias, memory_budget=budget,
                                              **ALL_OPTIONS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - outputs <= bound, (peak - outputs, bound)


# ---- edges -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_with_infinite_or_nan_logits_are_cross_entropys(dtype):
    x, linear_weight, linear_bias, target = _problem(5, 4, 9, dtype)
    x[1] = [np.finfo(dtype).max, 0, 0, 0]
    linear_weight[:, 0] = -2.0
    linear_weight[0, 0] = 2.0  # row 1: logit +inf for class 0, -inf for the others
    target[1] = 0
    x[3, 0] = np.nan  # row 3: every logit NaN
    logits = _logits(x, linear_weight, linear_bias)
    assert logits[1, 0] == np.inf and (logits[1, 1:] == -np.inf).all() and np.isnan(logits[3]).all()
    for reduction in ("none", "sum"):
        expected, expected_grad = cross_entropy_forward_backward(logits, target, reduction=reduction)
        loss, grad_input, grad_weight, grad_bias = linear_cross_entropy_forward_backward(
            x, linear_weight, target, linear_bias=linear_bias, reduction=reduction)
        np.testing.assert_array_equal(loss, expected)
        np.testing.assert_array_equal(linear_cross_entropy(x, linear_weight, target, linear_bias=linear_bias,
                                                           reduction=reduction), expected)
        # dz = expected_grad (row 1: zero, the one +inf is the target; row 3: NaN), composed
        assert not expected_grad[1].any()
        np.testing.assert_array_equal(grad_input[1], np.zeros(4, dtype))
        assert np.isnan(grad_input[3]).all() and np.isnan(grad_weight).all() and np.isnan(grad_bias).all()
        finite = [0, 2, 4]
        assert_close(grad_input[finite], expected_grad[finite].astype(np.float64) @ linear_weight.astype(np.float64),
                     dtype, "grad_input of the finite rows")


@pytest.mark.parametrize("dtype", DTYPES)
def test_ignored_rows_empty_batch_and_one_class(dtype):
    x, linear_weight, linear_bias, target = _problem(4, 3, 6, dtype, ignored=[0, 1, 2, 3])
    loss, grad_input, grad_weight, grad_bias = linear_cross_entropy_forward_backward(
        x, linear_weight, target, linear_bias=linear_bias, z_loss=0.1)
    assert loss == 0 and type(loss) is np.dtype(dtype).type
    assert not grad_input.any() and not grad_weight.any() and not grad_bias.any()
    empty = linear_cross_entropy_forward_backward(x[:0], linear_weight, target[:0], linear_bias=linear_bias)
    assert empty[0] == 0 and empty[1].shape == (0, 3) and not empty[2].any() and not empty[3].any()
    x, linear_weight, _, target = _problem(4, 3, 1, dtype)
    loss, grad_input, grad_weight = linear_cross_entropy_forward_backward(x, linear_weight, target)
    assert loss == 0 and not grad_input.any() and not grad_weight.any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_and_inputs_not_modified(dtype):
    x, linear_weight, linear_bias, target = _problem(6, 8, 50, dtype)
    weight = np.linspace(0.5, 1.5, 50)
    views = (np.asfortranarray(x), linear_weight[::-1][::-1].T.copy().T, linear_bias)
    arrays = (x, linear_weight, linear_bias, target, weight) + views
    before = [array.copy() for array in arrays]
    options = dict(weight=weight, **ALL_OPTIONS)
    expected = linear_cross_entropy_forward_backward(x, linear_weight, target, linear_bias=linear_bias, **options)
    ours = linear_cross_entropy_forward_backward(views[0], views[1], target, linear_bias=views[2], **options)
    for one, two in zip(expected, ours):
        np.testing.assert_array_equal(one, two)
    for array, copy in zip(arrays, before):
        np.testing.assert_array_equal(array, copy)


# ---- bad input -------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    x, linear_weight, linear_bias, target = np.zeros((3, 4)), np.ones((5, 4)), np.zeros(5), np.array([0, 1, 2])
    cases = [
        (TypeError, r"x must be a numpy.ndarray .* got list", dict(x=[[0.0] * 4] * 3)),
        (TypeError, r"x must have dtype float32 or float64, got float16", dict(x=np.zeros((3, 4), np.float16))),
        (ValueError, r"x must have shape \(rows, features\), got shape \(3, 4, 1\)", dict(x=np.zeros((3, 4, 1)))),
        (ValueError, r"linear_weight must have shape \(classes, 4\) .* got shape \(5, 3\)",
         dict(linear_weight=np.ones((5, 3)))),
        (TypeError, r"linear_weight must have the dtype of x \(float64\), got float32",
         dict(linear_weight=np.ones((5, 4), np.float32))),
        (ValueError, r"linear_bias must have shape \(5,\) \(one bias per class\), got \(4,\)",
         dict(linear_bias=np.zeros(4))),
        (TypeError, r"linear_bias must have the dtype of x \(float64\), got float32",
         dict(linear_bias=np.zeros(5, np.float32))),
        (ValueError, r"target must hold class indices in \[0, 5\) or ignore_index \(-100\), got 7 at row 1",
         dict(target=np.array([0, 7, 1]))),
        (TypeError, r"target must have an integer dtype", dict(target=np.zeros(3))),
        (ValueError, r"weight must have shape \(5,\)", dict(weight=np.ones(4))),
        (ValueError, r"z_loss must be >= 0.0, got -1", dict(z_loss=-1)),
        (ValueError, r"softcap must be > 0.0, got 0.0", dict(softcap=0.0)),
        (TypeError, r"softcap must be a real number, got str", dict(softcap="30")),
        (ValueError, r"memory_budget must be >= 1, got 0", dict(memory_budget=0)),
        (ValueError, r"memory_budget must be an integer, got 1.5", dict(memory_budget=1.5)),
        (ValueError, r"reduction must be one of", dict(reduction="avg")),
        (ValueError, r"label_smoothing must be <= 1.0", dict(label_smoothing=2.0)),
    ]
    for error, message, change in cases:
        arguments = dict(x=x, linear_weight=linear_weight, target=target, linear_bias=linear_bias)
        arguments.update(change)
        positional = (arguments.pop("x"), arguments.pop("linear_weight"), arguments.pop("target"))
        for function in (linear_cross_entropy, linear_cross_entropy_forward_backward):
            with pytest.raises(error, match=message):
                function(*positional, **arguments)
    with pytest.raises(ValueError, match=r"grad_output must be a scalar for reduction='mean'"):
        linear_cross_entropy_forward_backward(x, linear_weight, target, grad_output=np.ones(3))


def test_gradient_matches_the_proof_book_closed_form():
    from softmaxlab.derivations import closed_forms

    classes, smoothing, z_loss = 6, 0.1, 0.05
    x, linear_weight, linear_bias, target = _problem(4, 5, classes, np.float64)
    weight = np.linspace(0.5, 2.0, classes)
    logits = _logits(x, linear_weight, linear_bias)
    # the target weights of class indices with class weights and smoothing (docs/proofs/cross_entropy.md)
    target_weights = (1 - smoothing) * np.eye(classes)[target] * weight[target][:, None] + smoothing * weight / classes
    dz = closed_forms.linear_cross_entropy_logit_gradient(logits, target_weights, z_loss)
    loss, grad_input, grad_weight, grad_bias = linear_cross_entropy_forward_backward(
        x, linear_weight, target, linear_bias=linear_bias, weight=weight, label_smoothing=smoothing, z_loss=z_loss,
        reduction="sum")
    message = "the kernel breaks docs/proofs/linear_cross_entropy.md#{}"
    np.testing.assert_allclose(grad_bias, dz.sum(axis=0), rtol=1e-12, atol=1e-14,
                               err_msg=message.format("z-loss-and-target-weights-gradient"))
    np.testing.assert_allclose(grad_input, dz @ linear_weight, rtol=1e-12, atol=1e-14,
                               err_msg=message.format("linear-layer-gradients"))
    np.testing.assert_allclose(grad_weight, dz.T @ x, rtol=1e-12, atol=1e-14,
                               err_msg=message.format("linear-layer-gradients"))


def test_float64_precision_of_float32_inputs():
    classes = 37
    x, linear_weight, linear_bias, target = _problem(6, 9, classes, np.float32, ignored=[3])
    wide = [value.astype(np.float64) for value in (x, linear_weight, linear_bias)]
    weight = np.linspace(0.5, 2.0, classes)
    logits = _logits(*wide)
    for reduction in ("mean", "sum", "none"):
        expected = cross_entropy(logits, target, weight=weight, reduction=reduction, label_smoothing=0.1)
        ours = linear_cross_entropy(x, linear_weight, target, linear_bias=linear_bias, weight=weight,
                                    reduction=reduction, label_smoothing=0.1, precision="float64")
        # cross_entropy of the float64 logits, rounded once to float32
        np.testing.assert_array_equal(ours, np.asarray(expected).astype(np.float32))
        assert np.asarray(ours).dtype == np.float32
    options = dict(weight=weight, label_smoothing=0.1, z_loss=1e-2, softcap=3.0)
    ours = linear_cross_entropy_forward_backward(x, linear_weight, target, linear_bias=linear_bias,
                                                 precision="float64", **options)
    reference = _composed(*wide, target, **options)
    _assert_matches_composition(ours, reference, np.float32, "precision float64")
    # each gradient is the float64 one rounded once: within half a float32 ulp of the reference
    for value, expected in zip(ours[1:], reference[1:]):
        np.testing.assert_array_less(np.abs(value - expected), np.spacing(np.abs(expected).astype(np.float32)) * 0.5
                                     + 1e-12 * np.abs(expected).max())
    for bad, error in (("float32", ValueError), (None, TypeError)):
        with pytest.raises(error, match=r"precision must be one of \('input', 'float64'\)"):
            linear_cross_entropy(x, linear_weight, target, precision=bad)
