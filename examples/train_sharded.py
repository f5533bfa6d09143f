"""Train a classifier head whose class weights are sharded over processes (gloo, CPU).

    torchrun --nproc_per_node 2 examples/train_sharded.py                  # two processes, half the classes each
    python examples/train_sharded.py                                       # one process, every class: the same losses
    torchrun --nproc_per_node 2 examples/train_sharded.py --head arcface   # an ArcFace head (s = 64, m = 0.5)

Each process holds the whole batch of features and a shard of the head's class weights (the
Partial FC layout) and calls ``softmaxlab.distributed.sharded_linear_cross_entropy`` (or, for
``--head arcface``, ``sharded_linear_margin_cross_entropy``: ArcFace on the cosines of the
features and the class weights), whose backward gives its shard its gradient; plain SGD
updates the shard.  The shards are whole
blocks of 2^j class tiles (4096 float64 classes), so the loss and the shards' gradients are
the single process's bits (``distributed/_sharded.py``, ``_sharded_margin.py``): the losses printed (with their
float.hex) are the same for one and for two processes, step after step.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist

from softmaxlab.distributed import sharded_linear_cross_entropy, sharded_linear_margin_cross_entropy

TILE = 4096  # float64 class tile (block_length(8))


def shard_bounds(classes: int, world_size: int) -> list[int]:
    """Class boundaries: 2^j whole tiles per shard (the last shard holds the rest), or an even
    split where that would leave a shard empty."""
    tiles = -(-classes // TILE)
    per = 2 ** math.ceil(math.log2(-(-tiles // world_size)))
    bounds = [min(rank * per * TILE, classes) for rank in range(world_size)] + [classes]
    if any(b <= a for a, b in zip(bounds, bounds[1:])):
        bounds = [classes * rank // world_size for rank in range(world_size + 1)]
    return bounds


HEADS = ("softmax", "arcface")


def train(steps: int = 5, rows: int = 64, features: int = 16, classes: int = 2 * TILE, lr: float = 0.5,
          seed: int = 0, head: str = "softmax") -> list[float]:
    """SGD on this rank's shard of the head (``HEADS``), in the initialized default group; the
    losses per step."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(seed)  # the same data and initial weights on every rank
    x = torch.from_numpy(rng.standard_normal((rows, features)))
    target = torch.from_numpy(rng.integers(0, classes, size=rows))
    weights = 0.1 * rng.standard_normal((classes, features))
    bounds = shard_bounds(classes, world_size)
    start, stop = bounds[rank], bounds[rank + 1]
    shard = torch.from_numpy(weights[start:stop].copy()).requires_grad_(True)
    losses = []
    for _ in range(steps):
        if head == "arcface":
            loss = sharded_linear_margin_cross_entropy(x, shard, target, class_start=start, num_classes=classes,
                                                       s=64.0, m2=0.5)
        else:
            loss = sharded_linear_cross_entropy(x, shard, target, class_start=start, num_classes=classes,
                                                label_smoothing=0.1)
        loss.backward()
        with torch.no_grad():
            shard -= lr * shard.grad
        shard.grad = None
        losses.append(float(loss.detach()))
    return losses


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--head", choices=HEADS, default="softmax")
    args = parser.parse_args(argv)
    if "RANK" in os.environ:  # torchrun
        dist.init_process_group("gloo")
    else:
        with tempfile.NamedTemporaryFile(delete=False) as store:
            dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    try:
        losses = train(args.steps, head=args.head)
        if dist.get_rank() == 0:
            for step, loss in enumerate(losses):
                print(f"step {step}: loss {loss:.17g} ({loss.hex()}) on {dist.get_world_size()} process(es)")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
