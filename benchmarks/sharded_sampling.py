"""How far the sampled sharded loss (Partial FC's sample rate) is from the full softmax.

    python benchmarks/sharded_sampling.py --out results/distributed/sampling.md

A gloo group of 2 spawned processes (one Numba and one OpenBLAS thread each) holds the
class weights of C = 65536 classes in two shards; N = 1024 rows, D = 128, float32.  For each
sample rate, ``sampled_sharded_linear_cross_entropy_forward_backward`` at 5 steps (5
different samples of the negatives, seed 0) beside the full loss
(``sharded_linear_cross_entropy_forward_backward``): the loss's relative difference
(sampled - full)/full, and the cosine between the sampled and the full x-gradient, and
between their class-weight gradients (all C rows; the sampled one is zero off the kept
classes).  Two kinds of inputs:

* ``random``: x and W standard normal, W scaled by 1/sqrt(D): logits of standard deviation 1,
  a near-uniform softmax, where every class carries about 1/C of each normalizer;
* ``peaked``: each row's x is 12 times its target's weight plus standard normal noise: the
  target's logit near 12, the others' of standard deviation near 1.5, so the target holds
  a large share of each normalizer (an easy, trained-like classifier).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sharded_common import emit, parse  # noqa: E402  (and the root on sys.path)

ROWS, FEATURES, CLASSES, WORLD = 1024, 128, 65536, 2
RATES = (1.0, 0.5, 0.2, 0.1, 0.01)
STEPS = 5
KINDS = ("random", "peaked")
PEAK = 12.0


def inputs(kind: str):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((CLASSES, FEATURES)) / np.sqrt(FEATURES)).astype(np.float32)
    target = rng.integers(0, CLASSES, size=ROWS)
    if kind == "random":
        x = rng.standard_normal((ROWS, FEATURES)).astype(np.float32)
    else:
        x = (PEAK * weight[target] + rng.standard_normal((ROWS, FEATURES))).astype(np.float32)
    return x, weight, target


def _dots(a, b) -> list[float]:
    """(a . b, a . a, b . b) in float64, for cosines (of a whole gradient from its shards' parts too)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return [float(a @ b), float(a @ a), float(b @ b)]


def worker(rank: int, world: int, out_dir: str) -> None:
    import numba

    from softmaxlab.distributed import (sampled_sharded_linear_cross_entropy_forward_backward,
                                        sharded_linear_cross_entropy_forward_backward)

    numba.set_num_threads(1)
    start, stop = CLASSES * rank // world, CLASSES * (rank + 1) // world
    results = {}
    for kind in KINDS:
        x, weight, target = inputs(kind)
        shard = weight[start:stop]
        full_loss, full_x, full_w = sharded_linear_cross_entropy_forward_backward(
            x, shard, target, class_start=start, num_classes=CLASSES)
        for rate in RATES:
            for step in range(STEPS if rate < 1.0 else 1):
                loss, grad_x, grad_w, _ = sampled_sharded_linear_cross_entropy_forward_backward(
                    x, shard, target, class_start=start, num_classes=CLASSES, sample_rate=rate, seed=0, step=step)
                results[f"{kind} {rate} {step}"] = {
                    "full": float(full_loss), "sampled": float(loss),
                    "x": _dots(grad_x, full_x), "w": _dots(grad_w, full_w)}
    Path(out_dir, f"sampling.rank{rank}.json").write_text(json.dumps(results))


def table(folder: Path) -> str:
    ranks = [json.loads((folder / f"sampling.rank{r}.json").read_text()) for r in range(WORLD)]
    lines = ["| inputs | sample rate | full loss | sampled loss (mean over steps) | (sampled - full)/full: mean, range "
             "| cosine of grad x: lowest | cosine of grad W (all classes): lowest |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for kind in KINDS:
        for rate in RATES:
            keys = [k for k in ranks[0] if k.startswith(f"{kind} {rate} ")]
            full = ranks[0][keys[0]]["full"]
            sampled = np.array([ranks[0][k]["sampled"] for k in keys])
            relative = (sampled - full) / full
            cos_x = [ranks[0][k]["x"][0] / np.sqrt(ranks[0][k]["x"][1] * ranks[0][k]["x"][2]) for k in keys]
            cos_w = []
            for k in keys:  # the shards' dot products add up to the whole gradient's
                dot, own, other = (sum(r[k]["w"][i] for r in ranks) for i in range(3))
                cos_w.append(dot / np.sqrt(own * other))
            lines.append(f"| {kind} | {rate} | {full:.6g} | {sampled.mean():.6g} | {relative.mean():+.3e}, "
                         f"{relative.min():+.3e} to {relative.max():+.3e} | {min(cos_x):.6f} | {min(cos_w):.6f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args, command = parse(__doc__, "sharded_sampling.py", argv)
    from tests.distributed.spawn import spawn_group

    os.environ["NUMBA_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as scratch:
        spawn_group(worker, WORLD, (scratch,), timeout=1200.0)
        result = table(Path(scratch))
    emit(["# Negative-class sampling: the sampled loss against the full softmax",
          f"Command: `{command}` (the module docstring of `benchmarks/sharded_sampling.py` gives the method). "
          f"N = {ROWS}, D = {FEATURES}, C = {CLASSES} in {WORLD} shards, float32; {STEPS} samples per rate "
          "(one at rate 1, which is the full loss's bits).",
          result], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
