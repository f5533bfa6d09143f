"""sharded_linear_margin_cross_entropy_forward_backward in gloo groups of 1 to 4 spawned processes.

The ranks' results are compared with ``linear_margin_cross_entropy_forward_backward`` on the
concatenated weights: bit for bit where the shards are aligned blocks of 2^j class tiles,
within bounds derived from the two summation orders elsewhere (``distributed/_sharded_margin.py``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from softmaxlab.distributed._sharded_margin import margin_exchange_bytes
from softmaxlab.kernels import (
    linear_margin_cross_entropy_forward_backward,
    margin_cross_entropy_forward_backward,
    normalized_linear,
)
from softmaxlab.kernels._linear_cross_entropy import PRODUCT_TILE

from . import sharded_margin_workers as mw
from .groups import assert_same_bits, run_groups
from .workers import load

torch = pytest.importorskip("torch")

WORLD_SIZES = (1, 2, 3, 4)
U = 2.0**-53


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    return run_groups(mw.run_sharded_margin, WORLD_SIZES, tmp_path_factory, "sharded_margin", timeout=90.0)


@functools.lru_cache(maxsize=None)
def _single(name, world_size):
    x, weight, target, bounds, options = mw.scenario(name, world_size)
    return (x, weight, target, bounds, options), linear_margin_cross_entropy_forward_backward(x, weight, target,
                                                                                             **options)


def _parts(groups, name, world_size, part):
    parts = load(groups[world_size], f"{name}_{part}", world_size)
    if part != "grad_w":  # the same on every rank
        assert all(p.dtype == parts[0].dtype and p.tobytes() == parts[0].tobytes() for p in parts)
    return parts


def _gamma(n):
    return n * U / (1 - n * U)


def _scaled_cosine_gradient(x64, w64, target, options):
    """|A| = |dL/dc| / (|x_i| |W_j|) from the unfused float64 composition (rows, classes)."""
    s, m1, m2, m3 = (options.get(key, default) for key, default in (("s", 1.0), ("m1", 1.0), ("m2", 0.0),
                                                                      ("m3", 0.0)))
    _, dcos = margin_cross_entropy_forward_backward(normalized_linear(x64, w64), target, s=s, m1=m1, m2=m2, m3=m3,
                                                    reduction=options["reduction"])
    return np.abs(dcos) / np.linalg.norm(x64, axis=1)[:, None] / np.linalg.norm(w64, axis=1)


def _grad_input_bound(x, weight, target, options, delta):
    """|grad_input - single|, elementwise: v sums the K product tiles' A_k W_k in float64 in two
    associations, each within gamma_{K-1} sum_k |A_k| |W_k| (1 + gamma_D) of the exact sum (Higham
    2002, 4.2); A itself may differ relatively by ``delta`` (uneven shards: the row state's sums).
    The tangent part v - (xhat . v) xhat moves by |dv| + |xhat| (|xhat| . |dv|), and each side's
    tangent part rounds a few times: 4 u of |v| + |xhat| |xhat . v|."""
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    x_norms = np.linalg.norm(x64, axis=1)
    magnitude = _scaled_cosine_gradient(x64, w64, target, options) @ np.abs(w64)
    tiles = -(-len(weight) // PRODUCT_TILE)
    dv = (2 * _gamma(tiles - 1) * (1 + _gamma(x.shape[1])) + delta) * magnitude
    unit = np.abs(x64) / x_norms[:, None]
    tangent = dv + unit * (unit * dv).sum(axis=1, keepdims=True) + 4 * U * (magnitude + unit * magnitude.sum(
        axis=1, keepdims=True))
    return tangent * (1 + 1e-9)


def _uneven_delta(classes):
    """Relative difference of two S_o summing the same C - 1 positive terms in two trees (each
    within gamma_{C-2} of the exact sum, each term's exponential within 1 ulp), doubled for A's
    1/S and the loss' log1p."""
    return 2 * 2 * (_gamma(classes - 2) + 2 * U) + 8 * U


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("name", ["aligned64_arcface", "aligned32_cosface"])
def test_aligned_shards_give_the_single_process_bits(groups, world_size, name):
    (x, weight, target, bounds, options), (loss, grad_x, grad_w) = _single(name, world_size)
    losses = _parts(groups, name, world_size, "loss")
    assert losses[0].dtype == loss.dtype and losses[0].tobytes() == np.asarray(loss).tobytes()
    for rank, part in enumerate(_parts(groups, name, world_size, "grad_w")):
        assert_same_bits(part, grad_w[bounds[rank] : bounds[rank + 1]], rank)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("name", ["aligned64_arcface", "uneven64_arcface"])
def test_grad_input_within_the_reassociation_bound(groups, world_size, name):
    (x, weight, target, bounds, options), (_, grad_x, _) = _single(name, world_size)
    delta = _uneven_delta(len(weight)) if name.startswith("uneven") else 0.0
    bound = _grad_input_bound(x, weight, target, options, delta)
    difference = np.abs(_parts(groups, name, world_size, "grad_x")[0] - grad_x)
    assert np.all(difference <= bound), (difference.max(), bound.min())
    assert np.median(bound / np.abs(grad_x)) < 1e-10  # not vacuous


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_uneven_shards_within_the_summation_bound(groups, world_size):
    (x, weight, target, bounds, options), (loss, _, grad_w) = _single("uneven64_arcface", world_size)
    losses = _parts(groups, "uneven64_arcface", world_size, "loss")[0]
    delta = _uneven_delta(len(weight))
    np.testing.assert_array_less(np.abs(losses - loss), delta * (1 + np.abs(loss)))
    parts = np.concatenate(_parts(groups, "uneven64_arcface", world_size, "grad_w"))
    # A moves by delta relatively, the products sum the same N terms in the same order
    bound = delta * np.abs(grad_w).max(axis=1, keepdims=True) * 4 + 8 * U * np.abs(grad_w)
    assert np.all(np.abs(parts - grad_w) <= bound)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_a_target_probability_below_1e_30_keeps_its_exact_loss(groups, world_size):
    # row TINY_ROW points away from its class: with s = 64, p_y ~ e^-128, a loss of about 128
    # that Partial FC's -log(clamp(p, 1e-30)) would cap at 69
    (x, weight, target, bounds, options), (loss, _, _) = _single("uneven64_arcface", world_size)
    losses = _parts(groups, "uneven64_arcface", world_size, "loss")[0]
    assert losses[mw.TINY_ROW] > 100.0
    assert abs(losses[mw.TINY_ROW] - loss[mw.TINY_ROW]) <= 8 * U * loss[mw.TINY_ROW]


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_bytes_sent_are_the_formula(groups, world_size):
    for name, (_, dtype, _) in mw.SCENARIOS.items():
        sent = load(groups[world_size], f"{name}_sent", world_size)
        for rank, part in enumerate(sent):
            assert np.sum(part) == margin_exchange_bytes(mw.N, mw.D, world_size, np.dtype(dtype).itemsize, rank)
        assert np.mean([np.sum(part) for part in sent]) == pytest.approx(
            margin_exchange_bytes(mw.N, mw.D, world_size, np.dtype(dtype).itemsize), rel=1e-12)


def test_the_example_trains_an_arcface_head_with_the_same_losses_on_one_and_two_processes(groups):
    # its shards are whole float64 class tiles: every step's loss and shard gradients are the
    # single process's bits, so the trajectories agree bit for bit
    one = load(groups[1], "example_losses", 1)[0]
    two = load(groups[2], "example_losses", 2)
    assert one.shape == (4,) and np.all(np.isfinite(one))
    assert one[-1] < one[0]  # it trains
    for losses in two:
        assert losses.tobytes() == one.tobytes()
