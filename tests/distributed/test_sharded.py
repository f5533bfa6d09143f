"""sharded_linear_cross_entropy_forward_backward in gloo groups of 1 to 4 spawned processes.

One group per world size runs ``sharded_workers.run_sharded``; the tests compare what the
ranks saved with ``linear_cross_entropy_forward_backward`` on the concatenated weights:
bit for bit where the shards are aligned blocks of 2^j class tiles, within the bounds of
``distributed/_sharded.py``'s docstring elsewhere.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from softmaxlab.distributed import row_blocks
from softmaxlab.distributed._sharded import exchange_bytes
from softmaxlab.kernels import linear_cross_entropy_forward_backward
from softmaxlab.kernels._linear_cross_entropy import PRODUCT_TILE

from . import sharded_workers as sw
from .groups import assert_same_bits, run_groups
from .workers import load, load_script

torch = pytest.importorskip("torch")

WORLD_SIZES = (1, 2, 3, 4)
GROUP_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """World size -> the folder its group's ranks saved their results in (``groups.run_groups``)."""
    return run_groups(sw.run_sharded, WORLD_SIZES, tmp_path_factory, "sharded", timeout=GROUP_TIMEOUT)


@functools.lru_cache(maxsize=None)
def _single(name, world_size):
    x, weight, target, bounds, kwargs = sw.scenario(name, world_size)
    return (x, weight, target, bounds, kwargs), linear_cross_entropy_forward_backward(x, weight, target, **kwargs)


def _compared(groups, name, world_size, part):
    """(the scenario's inputs, the single process's results, every rank's saved ``part``), the
    ranks' parts checked to be the same bits."""
    inputs, single = _single(name, world_size)
    parts = load(groups[world_size], f"{name}_{part}", world_size)
    assert _same_bits(parts)
    return inputs, single, parts


def _gamma(n, u):
    return n * u / (1 - n * u)


def _same_bits(arrays):
    return all(a.dtype == arrays[0].dtype and a.tobytes() == arrays[0].tobytes() for a in arrays)


def _logit_error(x, weight):
    """Per row, gamma_D max_c sum_d |x_d W_cd|: any two float64 evaluations of a row's logits
    (the kernel's tile GEMMs, NumPy's) differ by at most twice this in any entry."""
    return _gamma(x.shape[1], 2.0**-53) * np.max(np.abs(x) @ np.abs(weight).T, axis=1)


def _gradient_bounds(x, weight, target, kwargs, delta=None):
    """Bounds on |grad_input - single| and |grad_weight - single|, elementwise.

    grad_input: both are float64 sums of the K product tiles' p_k = G_k W_k in two
    associations, each within gamma_{K-1} sum_k |p_k| of the exact sum (Higham 2002, 4.2),
    |p_k| <= (1 + gamma_D) |G_k| |W_k|.  With ``delta`` (uneven shards), G's softmax part
    g TW a_j may differ relatively by ``delta`` (the row state's and the logits' differences):
    |dG| <= delta |G + g tw|, which adds delta |G + g tw| |W| to grad_input and
    delta |G + g tw|^T |x| + 2 gamma_N |G|^T |x| (two GEMMs of N terms) to grad_weight.
    |G| is the float64 gradient of the logits (``cross_entropy``), G to a relative 1e-15;
    the factor 1 + 1e-12 covers that.
    """
    from softmaxlab.kernels import cross_entropy_forward_backward

    u = 2.0**-53
    x, weight = x.astype(np.float64), weight.astype(np.float64)
    _, grad = cross_entropy_forward_backward(x @ weight.T, target, **kwargs)
    tiles = -(-len(weight) // PRODUCT_TILE)
    grad_input = 2 * _gamma(tiles - 1, u) * (np.abs(grad) @ np.abs(weight)) * (1 + _gamma(x.shape[1], u))
    grad_weight = np.zeros_like(weight)
    if delta is not None:
        class_weight = kwargs["weight"] if kwargs["weight"] is not None else np.ones(len(weight))
        kept = (target != -100)[:, None]
        softmax_part = np.abs(grad + kept * kwargs["label_smoothing"] / len(weight) * class_weight)
        grad_input = grad_input + (delta[:, None] * softmax_part) @ np.abs(weight)
        grad_weight = (delta[:, None] * softmax_part).T @ np.abs(x) + 2 * _gamma(x.shape[0], u) * (
            np.abs(grad).T @ np.abs(x))
    return grad_input * (1 + 1e-12), grad_weight * (1 + 1e-12)


def _uneven_sum_bound(classes):
    """Relative bound on the difference of two T (or two gaps) that sum the same C nonnegative
    terms in different trees: each within gamma_{C-1} of the exact sum, plus the terms' own
    rounding (an exponential within 1 ulp, exp64_pair's 0.66 ulp, the (1 + t) product: 2u)."""
    return _gamma(classes - 1, 2.0**-53) + 2 * 2.0**-53


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("name", ["aligned64_mean", "aligned64_none", "aligned32_sum"])
def test_aligned_shards_give_the_single_process_bits(groups, world_size, name):
    (x, weight, target, bounds, kwargs), (loss, grad_x, grad_w), losses = _compared(groups, name, world_size, "loss")
    assert losses[0].dtype == loss.dtype and losses[0].tobytes() == np.asarray(loss).tobytes()
    for rank, part in enumerate(load(groups[world_size], f"{name}_grad_w", world_size)):
        assert_same_bits(part, grad_w[bounds[rank] : bounds[rank + 1]], rank)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("name", ["aligned64_mean", "aligned64_none", "uneven64_none"])
def test_grad_input_float64_within_the_reassociation_bound(groups, world_size, name):
    (x, weight, target, bounds, kwargs), (_, grad_x, _), parts = _compared(groups, name, world_size, "grad_x")
    delta = None
    if name.startswith("uneven"):
        delta = 2 * 2 * _uneven_sum_bound(len(weight)) + 4 * 2 * _logit_error(x, weight) + 8 * 2.0**-53
    bound, _ = _gradient_bounds(x, weight, target, kwargs, delta)
    difference = np.abs(parts[0] - grad_x)
    assert np.all(difference <= bound), (difference.max(), bound.min())


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_grad_input_float32_within_one_ulp(groups, world_size):
    # The float64 sums differ by at most the bound above and each is rounded once to float32
    # (within half a spacing): |difference| <= bound + spacing, so at most 1 ULP where the
    # bound is below the spacing, as here everywhere but the ignored row's zeros.
    (x, weight, target, bounds, kwargs), (_, grad_x, _), parts = _compared(groups, "aligned32_sum", world_size,
                                                                           "grad_x")
    assert parts[0].dtype == np.float32
    bound, _ = _gradient_bounds(x, weight, target, kwargs)
    spacing = np.spacing(np.maximum(np.abs(grad_x), np.abs(parts[0])))
    assert np.all(bound[grad_x != 0] < spacing[grad_x != 0])
    assert np.all(np.abs(parts[0].astype(np.float64) - grad_x) <= bound + spacing)
    assert np.all(parts[0][sw.IGNORED_ROW] == 0.0)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_uneven_shards_within_the_summation_bound(groups, world_size):
    # Both computations sum the same C exponentials (each within 1 ulp, exp64_pair's 0.66 ulp
    # and the (1 + t) product) in different trees of nonnegative terms: each T within
    # (gamma_{C-1} + 2u)(1 + T) of the exact sum, so log1p(T) differs by at most twice that
    # between them; the gaps likewise within 2 gamma_{C-1} of their sum; the loss formula's
    # own roundings (at most 8 operations) add 2 gamma_8 times the magnitudes it combines.
    (x, weight, target, bounds, kwargs), (loss, grad_x, grad_w), losses = _compared(
        groups, "uneven64_none", world_size, "loss")
    u = 2.0**-53
    logits = x @ weight.T
    classes = len(weight)
    shift = _uneven_sum_bound(classes)
    eps, class_weight = kwargs["label_smoothing"], kwargs["weight"]
    for i in range(sw.N):
        if target[i] == -100:
            assert losses[0][i] == 0.0
            continue
        z = logits[i]
        log_total = math.log(np.sum(np.exp(z - z.max())))
        gaps = np.sum(class_weight * (z.max() - z))
        hard = (1 - eps) * class_weight[target[i]]
        uniform_total = eps / classes * class_weight.sum()
        magnitude = hard * (z.max() - z[target[i]] + log_total) + eps / classes * gaps + uniform_total * log_total
        bound = ((hard + uniform_total) * 2 * shift + eps / classes * 2 * _gamma(classes - 1, u) * gaps
                 + 2 * _gamma(8, u) * magnitude) * (1 + 1e-12)
        assert abs(losses[0][i] - loss[i]) <= bound, (i, losses[0][i] - loss[i], bound)
    # G's softmax part g TW exp(z_j - M)/(1 + T): 1 + T within 2 shift relatively (twice: both
    # sums), z_j - M within 4 logit errors, and the few roundings of its formula
    delta = 2 * 2 * shift + 4 * 2 * _logit_error(x, weight) + 8 * u
    _, bound = _gradient_bounds(x, weight, target, kwargs, delta)
    for rank, part in enumerate(load(groups[world_size], "uneven64_none_grad_w", world_size)):
        expected = grad_w[bounds[rank] : bounds[rank + 1]]
        assert np.all(np.abs(part - expected) <= bound[bounds[rank] : bounds[rank + 1]]), rank


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_tiny_target_probability_gives_the_exact_loss(groups, world_size):
    # Row TINY_ROW's target has p_y ~ e^-120 (< 1e-30, which float32 probabilities flush):
    # its loss is LSE(z) - z_y, about 120, as the mpmath value of the float64 logits.
    mpmath = pytest.importorskip("mpmath")
    (x, weight, target, bounds, kwargs), _ = _single("aligned64_none", world_size)
    losses = load(groups[world_size], "aligned64_none_loss", world_size)
    z = x[sw.TINY_ROW] @ weight.T
    with mpmath.workdps(40):
        exact = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in z)) - mpmath.mpf(
            float(z[target[sw.TINY_ROW]]))
    assert float(exact) > sw.TINY_GAP
    # the kernel's logits and NumPy's each within gamma_D sum_d |x_d W_cd| of the exact products
    # (LSE and z_y move by at most the largest), and the formula's own roundings (gamma_8)
    logit_error = 2 * _logit_error(x, weight)[sw.TINY_ROW]
    assert abs(losses[0][sw.TINY_ROW] - float(exact)) <= 2 * logit_error + _gamma(8, 2.0**-53) * float(exact)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_label_smoothing_gives_every_rank_the_single_process_loss(groups, world_size):
    # the Megatron case: smoothing over the global C, the same loss on every rank
    (x, weight, target, bounds, kwargs), (loss, _, _) = _single("aligned64_mean", world_size)
    losses = load(groups[world_size], "aligned64_mean_loss", world_size)
    assert kwargs["label_smoothing"] > 0 and _same_bits(losses)
    assert float(losses[0]) == float(loss)
    unsmoothed = linear_cross_entropy_forward_backward(x, weight, target, reduction="mean", weight=kwargs["weight"])[0]
    assert float(losses[0]) != float(unsmoothed)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_ignored_rows_have_zero_loss_and_gradient(groups, world_size):
    losses = load(groups[world_size], "aligned64_none_loss", world_size)
    assert losses[0][sw.IGNORED_ROW] == 0.0 and np.all(losses[0][np.arange(sw.N) != sw.IGNORED_ROW] > 0)
    grad_x = load(groups[world_size], "aligned64_none_grad_x", world_size)[0]
    assert np.all(grad_x[sw.IGNORED_ROW] == 0.0) and np.any(grad_x[sw.IGNORED_ROW - 1] != 0.0)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_message_log_counts_the_exchange_formula(groups, world_size):
    # N = 6 rows: owners' blocks of 6, (3, 3), (2, 2, 2), (1, 2, 1, 2) rows.  Each round's all_to_all
    # sends the rows but the own block's (1, 4 and D float64 each), its all_gather the owner's
    # merged block to P - 1 ranks ((M, rank), (loss, state, status), grad_input in x's dtype)
    blocks = np.diff(row_blocks(sw.N, world_size))
    for name, (_, dtype, _) in sw.SCENARIOS.items():
        itemsize = np.dtype(dtype).itemsize
        sent = [np.asarray(s) for s in load(groups[world_size], f"{name}_sent", world_size)]
        for rank, rank_sent in enumerate(sent):
            others, own = (sw.N - blocks[rank]) * 8, blocks[rank] * (world_size - 1)
            expected = [3 * 8 * (world_size - 1), others, own * 2 * 8, others * 4, own * 6 * 8,
                        others * sw.D, own * sw.D * itemsize]
            assert rank_sent.tolist() == expected, (name, rank)
            assert sum(expected) == exchange_bytes(sw.N, sw.D, world_size, itemsize, rank)
            assert sum(expected[:5]) == exchange_bytes(sw.N, 0, world_size, itemsize, rank)
        mean = np.mean([rank_sent.sum() for rank_sent in sent])
        assert mean == pytest.approx(exchange_bytes(sw.N, sw.D, world_size, itemsize), rel=1e-15, abs=0)
        table = load_script("benchmarks", "sharded_communication").step_bytes(sw.N, world_size, sw.D, itemsize)
        assert table["softmaxlab"] == pytest.approx(mean, rel=1e-15, abs=0)
        statistics = np.mean([rank_sent[:5].sum() for rank_sent in sent])
        assert table["softmaxlab_statistics"] == pytest.approx(statistics, rel=1e-15, abs=0)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize(("key", "words"), [
    ("tiling", ["class_start", "0", "got 1"]),
    ("cover", ["num_classes", "cover"]),
    ("overflow", ["finite", "[1]"]),
    ("dtype", ["weight_shard", "float64", "float32"]),
    ("target", ["target"]),
    ("class_start", ["class_start", "-1"]),
])
def test_bad_input_raises_the_same_error_on_every_rank(groups, world_size, key, words):
    messages = [str(m) for m in load(groups[world_size], f"error_{key}", world_size)]
    assert len(set(messages)) == 1, messages
    assert messages[0].startswith(("ValueError", "TypeError")), messages[0]
    for word in words:
        assert word in messages[0], (word, messages[0])


def test_the_example_trains_with_two_processes_as_with_one(groups):
    # examples/train_sharded.py: the shards are 2^j tiles, so every step's loss is the single process's
    one = load(groups[1], "example_losses", 1)[0]
    two = load(groups[2], "example_losses", 2)
    assert _same_bits(two)
    assert two[0].tobytes() == one.tobytes()
    assert np.all(np.diff(one) < 0)  # it learns
    assert sw.example().shard_bounds(2 * sw.T64, 2) == [0, sw.T64, 2 * sw.T64]


@pytest.mark.parametrize("world_size", (1, 2, 3, 4))
def test_the_sampled_loss_is_the_full_loss_over_the_kept_classes(groups, world_size):
    # every shard but the last keeps one whole class tile: the single process's bits on the kept weights
    x, weight, target, bounds = sw.sampled_inputs(world_size)
    kept = [bounds[r] + k for r, k in enumerate(load(groups[world_size], "sampled_kept", world_size))]
    for rank, shard in enumerate(kept):
        positives = np.unique(target[(target >= bounds[rank]) & (target < bounds[rank + 1])])
        assert shard[:positives.size].tolist() == positives.tolist()
        assert shard.size == max(positives.size, math.ceil(sw.SAMPLE_RATE * (bounds[rank + 1] - bounds[rank])))
        assert np.unique(shard).size == shard.size
    order = np.concatenate(kept)
    position = {int(c): i for i, c in enumerate(order)}
    remapped = np.array([position[int(t)] if t != -100 else -100 for t in target])
    loss, grad_x, grad_w = linear_cross_entropy_forward_backward(x, weight[order], remapped,
                                                                 label_smoothing=sw.EPS)
    losses = load(groups[world_size], "sampled_loss", world_size)
    assert all(part.tobytes() == np.asarray(loss).tobytes() for part in losses)
    full = linear_cross_entropy_forward_backward(x, weight, target, label_smoothing=sw.EPS)[0]
    assert float(losses[0]) < float(full)  # the normalizers lack the dropped classes' terms (and eps is small)
    grad_ws = load(groups[world_size], "sampled_grad_w", world_size)
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in kept])])
    for rank, part in enumerate(grad_ws):
        local = kept[rank] - bounds[rank]
        np.testing.assert_array_equal(part[local], grad_w[offsets[rank]:offsets[rank + 1]])
        dropped = np.setdiff1d(np.arange(len(part)), local)
        assert dropped.size and np.all(part[dropped] == 0.0)
    bound, _ = _gradient_bounds(x, weight[order], remapped, dict(label_smoothing=sw.EPS, weight=None))
    for part in load(groups[world_size], "sampled_grad_x", world_size):
        assert np.all(np.abs(part - grad_x) <= bound)


@pytest.mark.parametrize("world_size", (1, 2, 3, 4))
def test_rate_one_is_the_unsampled_loss(groups, world_size):
    x, weight, target, bounds, kwargs = sw.scenario("aligned64_mean", world_size)
    loss = linear_cross_entropy_forward_backward(x, weight, target, reduction="mean",
                                                 label_smoothing=kwargs["label_smoothing"])[0]
    for part in load(groups[world_size], "sampled_rate1_loss", world_size):
        assert part.tobytes() == np.asarray(loss).tobytes()


def test_the_torch_function_gives_the_numpy_gradients_times_the_upstream_gradient(tmp_path):
    # one process (a group of 1 over a file store): the autograd function against the NumPy call
    import torch.distributed as dist

    from softmaxlab.distributed import sharded_linear_cross_entropy, sharded_linear_cross_entropy_forward_backward

    x, weight, target, bounds, kwargs = sw.scenario("aligned64_none", 1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        xt = torch.from_numpy(x).requires_grad_(True)
        wt = torch.from_numpy(weight).requires_grad_(True)
        upstream = torch.linspace(0.5, 2.0, sw.N, dtype=torch.float64)
        loss = sharded_linear_cross_entropy(xt, wt, torch.from_numpy(target), class_start=0,
                                            num_classes=len(weight), reduction="none")
        (loss * upstream).sum().backward()
        expected = sharded_linear_cross_entropy_forward_backward(
            x, weight, target, class_start=0, num_classes=len(weight), reduction="none",
            grad_output=upstream.numpy())
        mean = sharded_linear_cross_entropy(xt.detach(), wt, torch.from_numpy(target), class_start=0,
                                            num_classes=len(weight))
        with pytest.raises(TypeError, match="weight_shard must be a CPU torch.Tensor, got ndarray"):
            sharded_linear_cross_entropy(xt, weight, torch.from_numpy(target), class_start=0,
                                         num_classes=len(weight))
    finally:
        dist.destroy_process_group()
    assert loss.detach().numpy().tobytes() == expected[0].tobytes()
    assert xt.grad.numpy().tobytes() == expected[1].tobytes()
    assert wt.grad.numpy().tobytes() == expected[2].tobytes()
    assert float(mean.detach()) == float(linear_cross_entropy_forward_backward(x, weight, target)[0])
