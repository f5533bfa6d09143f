"""The inputs of the sharded margin cross-entropy tests and the worker every spawned process runs.

The splits are ``sharded_workers``' (aligned: 2^j whole class tiles per shard; uneven: anywhere).
Row ``TINY_ROW``'s feature points away from its class, so its target probability under
ArcFace's s = 64 is about e^-128 (below the 1e-30 that Partial FC's clamp floors it at).
"""

from __future__ import annotations

import numpy as np

from .sharded_workers import ALIGNED32, ALIGNED64, UNEVEN64, run_scenarios
from .workers import load_script, save

N, D = 6, 8
TINY_ROW = 0
ARCFACE = dict(s=64.0, m2=0.5)
COSFACE = dict(s=30.0, m3=0.35)

# scenario -> (splits, dtype, margin and reduction options)
SCENARIOS = {
    "aligned64_arcface": (ALIGNED64, np.float64, dict(ARCFACE, reduction="mean")),
    "aligned32_cosface": (ALIGNED32, np.float32, dict(COSFACE, reduction="sum")),
    "uneven64_arcface": (UNEVEN64, np.float64, dict(ARCFACE, reduction="none")),
}


def inputs(classes: int, dtype):
    """x (N, D) near their classes' directions, W (classes, D), targets; row TINY_ROW opposite its class."""
    rng = np.random.default_rng(classes + 1)
    weight = rng.standard_normal((classes, D))
    target = rng.integers(0, classes, size=N)
    unit = weight[target] / np.linalg.norm(weight[target], axis=1, keepdims=True)
    x = unit + 0.3 * rng.standard_normal((N, D))
    x[TINY_ROW] = -unit[TINY_ROW]
    return x.astype(dtype), weight.astype(dtype), target


def scenario(name: str, world_size: int):
    """(x, W, target, bounds, options) of scenario ``name`` on ``world_size`` ranks."""
    splits, dtype, options = SCENARIOS[name]
    classes, sizes = splits[world_size]
    x, weight, target = inputs(classes, dtype)
    return x, weight, target, [0, *np.cumsum(sizes).tolist()], options


def run_sharded_margin(rank: int, world_size: int, out_dir: str) -> None:
    """One process's share of every scenario; results saved as ``<name>_<part>.rank<r>.npy``."""
    import numba

    from softmaxlab.distributed import sharded_linear_margin_cross_entropy_forward_backward as sharded

    numba.set_num_threads(1)
    run_scenarios(sharded, SCENARIOS, scenario, rank, world_size, out_dir)

    if world_size <= 2:  # examples/train_sharded.py's ArcFace head, as torchrun runs it
        example = load_script("examples", "train_sharded")
        save(out_dir, "example_losses", rank, example.train(steps=4, head="arcface"))
