"""Rows with masked logits: the kernels and torch on unmasked rows and on rows half masked.

Masking sets logits to -inf, or to a large negative number, before a softmax or a
cross-entropy (padding of a vocabulary, classes left out).  Their exponentials are 0.
An exponential that reaches 0 by an underflowing product takes a microcode assist on
Intel cores, so the float32 kernels compute a masked element as the row's max and set its
result to 0; the float64 ones keep the underflow (``kernels/_numerics/exp.py``, "Elements
below the floor").  This script times, in
one process on ``--threads`` threads for Numba and torch, in alternation, ``--rounds``
times (p50 of 20 calls each; every kernel on every mask in one rotation), at 4096 x 1000,
for float32 and float64:

* softmax, log_softmax, logsumexp, cross_entropy, cross_entropy_forward_backward and
  log_softmax_backward (of the log-probabilities, dy 0 where masked) of softmaxlab;
* torch's softmax, log_softmax and cross_entropy on the same arrays;

on unmasked rows (N(0, 9) logits) and on the same rows with their second half set to
-inf, and to -1e4.  A masked row should cost no more than an unmasked one.

Run: ``python benchmarks/masked_rows.py [--rounds 3] [--threads 2]``.
"""

from __future__ import annotations

import numpy as np
from timing import alternated, rounds_and_threads

SHAPE = (4096, 1000)
MASKS = {"unmasked": None, "half -inf": -np.inf, "half -1e4": -1e4}


def _calls(x, targets, log_probabilities, dy):
    import torch
    import torch.nn.functional as F

    from softmaxlab.kernels import (
        cross_entropy,
        cross_entropy_forward_backward,
        log_softmax,
        log_softmax_backward,
        logsumexp,
        softmax,
    )

    t_x, t_targets = torch.from_numpy(x), torch.from_numpy(targets)
    return {
        "softmax": lambda: softmax(x),
        "log_softmax": lambda: log_softmax(x),
        "logsumexp": lambda: logsumexp(x),
        "cross_entropy": lambda: cross_entropy(x, targets),
        "cross_entropy_forward_backward": lambda: cross_entropy_forward_backward(x, targets),
        "log_softmax_backward": lambda: log_softmax_backward(log_probabilities, dy),
        "torch softmax": lambda: torch.softmax(t_x, -1),
        "torch log_softmax": lambda: torch.log_softmax(t_x, -1),
        "torch cross_entropy": lambda: F.cross_entropy(t_x, t_targets),
    }


def main(argv=None):
    args = rounds_and_threads(__doc__.splitlines()[0], 3, "alternations", argv)
    import torch

    from softmaxlab.kernels import log_softmax

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    half = SHAPE[1] // 2
    targets = rng.integers(0, half, SHAPE[0])
    print(f"{SHAPE[0]} x {SHAPE[1]}, {args.threads} threads, median over {args.rounds} rounds of the p50 of 20 calls, ms")
    for dtype in (np.float32, np.float64):
        logits = (rng.standard_normal(SHAPE) * 3).astype(dtype)
        upstream = rng.standard_normal(SHAPE).astype(dtype)
        variants = {}
        for mask, value in MASKS.items():
            x, dy = logits.copy(), upstream.copy()
            if value is not None:
                x[:, half:] = value
                dy[:, half:] = 0
            for name, call in _calls(x, targets, log_softmax(x), dy).items():
                variants[(name, mask)] = call
        # every kernel on every mask in one rotation, so that the masks are compared in turn
        times = alternated(variants, args.rounds, 20)
        print(f"\n{np.dtype(dtype).name}: " + " | ".join(MASKS))
        for name in dict.fromkeys(name for name, _ in variants):
            print(f"  {name:32s}" + " | ".join(f"{1e3 * float(np.median(times[(name, mask)])):8.3f}" for mask in MASKS))


if __name__ == "__main__":
    main()
