"""The normalizers in float32 on one and on two threads, beside torch.

    python benchmarks/thread_scaling.py [--rounds 2] [--calls 60] [--shape 4096x1000]

softmax, log_softmax and their backwards, softmaxlab and torch with the same thread count
(``numba.set_num_threads``, ``torch.set_num_threads``), one process, each call timed
``--calls`` times after an untimed one: p20 / p50 / p80 in ms, then torch p50 / softmaxlab
p50.  What it separates: a kernel's own speed (one thread) from what the second thread
adds to it, which the harness' 2-thread table shows only together.
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import call_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--shape", default="4096x1000", help="rows x classes (default 4096x1000)")
    args = parser.parse_args(argv)
    import numba
    import torch

    from softmaxlab.kernels import log_softmax, log_softmax_backward, softmax, softmax_backward

    rng = np.random.default_rng(0)
    rows, classes = (int(size) for size in args.shape.split("x"))
    x = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, log_y = softmax(x), log_softmax(x)
    t_x, t_dy, t_y, t_log_y = (torch.from_numpy(a) for a in (x, dy, y, log_y))
    pairs = {
        "softmax": (lambda: softmax(x), lambda: torch.softmax(t_x, -1)),
        "log_softmax": (lambda: log_softmax(x), lambda: torch.log_softmax(t_x, -1)),
        "softmax_backward": (lambda: softmax_backward(y, dy),
                             lambda: torch._softmax_backward_data(t_dy, t_y, -1, torch.float32)),
        "log_softmax_backward": (lambda: log_softmax_backward(log_y, dy),
                                 lambda: torch._log_softmax_backward_data(t_dy, t_log_y, -1, torch.float32)),
    }
    print(f"{rows} x {classes} float32; ms p20/p50/p80, softmaxlab then torch; torch p50 / softmaxlab p50")
    for round_ in range(args.rounds):
        for threads in (1, 2):
            numba.set_num_threads(threads)
            torch.set_num_threads(threads)
            for name, (ours, theirs) in pairs.items():
                ours_ms = np.percentile(call_seconds(ours, args.calls), [20, 50, 80]) * 1e3
                theirs_ms = np.percentile(call_seconds(theirs, args.calls), [20, 50, 80]) * 1e3
                print(f"  round {round_} threads {threads} {name:22s}", "/".join(f"{v:.2f}" for v in ours_ms),
                      " ", "/".join(f"{v:.2f}" for v in theirs_ms), f"  {theirs_ms[1] / ours_ms[1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
