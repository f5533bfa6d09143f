"""The inputs of the sharded linear cross-entropy tests and the worker every spawned process runs.

Shared by the parent (single-process references on the concatenated weights) and the
children (``run_sharded``, imported by name under the "spawn" start method).
"""

from __future__ import annotations

import numpy as np

from .workers import load_script, save

N, D = 6, 8
EPS = 0.1  # label smoothing
IGNORED_ROW, TINY_ROW, TINY_GAP = 3, 0, 120.0  # row 0's target logit 120 below its max: p_y ~ e^-120 < 1e-30
T64, T32 = 4096, 8192  # class tiles (block_length) of float64 and float32

# world size -> (global classes, shard sizes) per split; "aligned": every shard but the last holds
# 2^j whole class tiles and the last at most 2^j (j = 2, 1, 0, 1), so the bits are the single process's
ALIGNED64 = {1: (3 * T64 - 300, [3 * T64 - 300]),
             2: (3 * T64 - 300, [2 * T64, T64 - 300]),
             3: (3 * T64 - 300, [T64, T64, T64 - 300]),
             4: (7 * T64 - 300, [2 * T64, 2 * T64, 2 * T64, T64 - 300])}
ALIGNED32 = {1: (2 * T32 - 100, [2 * T32 - 100]),
             2: (2 * T32 - 100, [T32, T32 - 100]),
             3: (3 * T32 - 100, [T32, T32, T32 - 100]),
             4: (4 * T32 - 100, [T32, T32, T32, T32 - 100])}
# shards not on tile boundaries (nor product tiles), and a tree that is not a subtree (1 + 3 tiles)
UNEVEN64 = {1: (3 * T64 - 300, [3 * T64 - 300]),
            2: (4 * T64, [T64, 3 * T64]),
            3: (3 * T64 - 300, [1000, 9000, 3 * T64 - 10300]),
            4: (3 * T64 - 300, [3, 4100, 5000, 3 * T64 - 9403])}

# sampling at rate 1/2: every shard but the last keeps exactly one float64 class tile (its 2 T64
# classes halved; the batch's 6 targets are fewer), the last 2500 classes, so the loss over the
# kept classes has the single process's bits on the kept weights (``distributed/_sampling.py``)
SAMPLE_RATE, SAMPLE_SEED, SAMPLE_STEP = 0.5, 11, 3
SAMPLED64 = {world: [2 * T64] * (world - 1) + [5000] for world in (1, 2, 3, 4)}

# scenario -> (splits, dtype, options)
SCENARIOS = {
    "aligned64_mean": (ALIGNED64, np.float64, dict(reduction="mean", label_smoothing=EPS, weighted=True)),
    "aligned64_none": (ALIGNED64, np.float64, dict(reduction="none", label_smoothing=0.0, weighted=False)),
    "aligned32_sum": (ALIGNED32, np.float32, dict(reduction="sum", label_smoothing=EPS, weighted=False)),
    "uneven64_none": (UNEVEN64, np.float64, dict(reduction="none", label_smoothing=EPS, weighted=True)),
}


def inputs(classes: int, dtype):
    """x (N, D), W (classes, D), targets (row IGNORED_ROW ignored), class weights; row TINY_ROW's
    target logit TINY_GAP below its max."""
    rng = np.random.default_rng(classes)
    x = rng.standard_normal((N, D))
    weight = rng.standard_normal((classes, D))
    target = rng.integers(0, classes, size=N)
    target[IGNORED_ROW] = -100
    y = target[TINY_ROW]
    largest = (weight @ x[TINY_ROW]).max()
    # move W_y along x_0 so that z_0y = max - TINY_GAP (the max is another class's)
    weight[y] += (largest - TINY_GAP - weight[y] @ x[TINY_ROW]) * x[TINY_ROW] / (x[TINY_ROW] @ x[TINY_ROW])
    class_weight = rng.uniform(0.5, 2.0, size=classes)
    return x.astype(dtype), weight.astype(dtype), target, class_weight


def scenario(name: str, world_size: int):
    """(x, W, target, bounds, keyword arguments of the loss) of scenario ``name`` on ``world_size`` ranks."""
    splits, dtype, options = SCENARIOS[name]
    classes, sizes = splits[world_size]
    x, weight, target, class_weight = inputs(classes, dtype)
    kwargs = dict(reduction=options["reduction"], label_smoothing=options["label_smoothing"],
                  weight=class_weight if options["weighted"] else None)
    return x, weight, target, [0, *np.cumsum(sizes).tolist()], kwargs


def _error(call) -> str:
    try:
        call()
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def run_scenarios(sharded, scenarios, scenario, rank: int, world_size: int, out_dir: str) -> None:
    """This rank's ``sharded`` loss of every scenario (``scenario(name, world_size)`` gives x, W,
    target, the shard bounds and the options); its loss, gradients and bytes sent saved as
    ``<name>_<part>.rank<r>.npy``."""
    from softmaxlab.distributed import MessageLog

    for name in scenarios:
        x, weight, target, bounds, options = scenario(name, world_size)
        start, stop = bounds[rank], bounds[rank + 1]
        log = MessageLog()
        loss, grad_x, grad_w = sharded(x, weight[start:stop], target, class_start=start, num_classes=len(weight),
                                       log=log, **options)
        for part, value in (("loss", loss), ("grad_x", grad_x), ("grad_w", grad_w)):
            save(out_dir, f"{name}_{part}", rank, value)
        save(out_dir, f"{name}_sent", rank, [m.sent_bytes for m in log.messages])


def run_sharded(rank: int, world_size: int, out_dir: str) -> None:
    """One process's share of every sharded test; results saved as ``<name>.rank<r>.npy``."""
    import numba

    from softmaxlab.distributed import sharded_linear_cross_entropy_forward_backward as sharded

    numba.set_num_threads(1)  # P processes on a few cores; the results do not depend on the thread count

    run_scenarios(sharded, SCENARIOS, scenario, rank, world_size, out_dir)

    sampled = sampled_call(rank, world_size)
    for part, value in zip(("loss", "grad_x", "grad_w", "kept"), sampled):
        save(out_dir, f"sampled_{part}", rank, value)
    save(out_dir, "sampled_rate1_loss", rank, sampled_call(rank, world_size, "aligned64_mean", 1.0)[0])

    x, weight, target, bounds, kwargs = scenario("aligned64_none", world_size)
    start, stop = bounds[rank], bounds[rank + 1]
    shard = weight[start:stop]
    errors = {
        # every rank shifts its shard by one class: rank 0 no longer starts at 0
        "tiling": lambda: sharded(x, weight[start:stop], target, class_start=start + 1, num_classes=len(weight) + 1),
        # the last rank's shard is one class short of num_classes
        "cover": lambda: sharded(x, shard, target, class_start=start, num_classes=len(weight) + 1),
        "overflow": lambda: sharded(np.where(np.arange(N)[:, None] == 1, 1e308, x), shard, target,
                                    class_start=start, num_classes=len(weight)),
        "dtype": lambda: sharded(x, shard.astype(np.float32), target, class_start=start, num_classes=len(weight)),
        "target": lambda: sharded(x, shard, np.full(N, len(weight)), class_start=start, num_classes=len(weight)),
        "class_start": lambda: sharded(x, shard, target, class_start=-1, num_classes=len(weight)),
    }
    for key, call in errors.items():
        save(out_dir, f"error_{key}", rank, _error(call))

    if world_size <= 2:  # examples/train_sharded.py's training, as torchrun runs it
        save(out_dir, "example_losses", rank, example().train(steps=4))


def sampled_inputs(world_size: int):
    """(x, W, target, shard bounds) of the sampled scenario on ``world_size`` ranks."""
    sizes = SAMPLED64[world_size]
    x, weight, target, _ = inputs(sum(sizes), np.float64)
    return x, weight, target, [0, *np.cumsum(sizes).tolist()]


def sampled_call(rank: int, world_size: int, name: str | None = None, rate: float = SAMPLE_RATE):
    """This rank's ``sampled_sharded_linear_cross_entropy_forward_backward`` of the sampled scenario
    (smoothing EPS, mean), or at ``rate`` on scenario ``name``'s inputs and options."""
    from softmaxlab.distributed import sampled_sharded_linear_cross_entropy_forward_backward as sampled

    if name is None:
        x, weight, target, bounds = sampled_inputs(world_size)
        kwargs = dict(label_smoothing=EPS)
    else:
        x, weight, target, bounds, kwargs = scenario(name, world_size)
        kwargs.pop("weight")
    start, stop = bounds[rank], bounds[rank + 1]
    return sampled(x, weight[start:stop], target, class_start=start, num_classes=len(weight), sample_rate=rate,
                   seed=SAMPLE_SEED, step=SAMPLE_STEP, **kwargs)


def example():
    """examples/train_sharded.py, loaded from its file."""
    return load_script("examples", "train_sharded")
