"""Where the time of the kernels still behind torch goes: each pass alone, one thread, beside torch.

Issue 20 asks the backward normalizers and the sigmoid losses to be at least as fast as
torch at 4096 x 1000 float32, or the measured reason.  This script times, on one thread
(Numba and torch), the best of ``--repeats`` calls of:

* ``log_softmax_backward`` (dx = dy - exp(y) sum(dy)): the kernel; its reduce pass (sum of
  dy in float64 and max of y) alone; its write pass alone as the kernel does it (exp of a
  float32 y to float32 accuracy computed in float64, ``exp_f32_wide``, then dy - e S in
  float64, rounded once) and the same write with ``exp32`` (float32 arithmetic, 0.87 ULP:
  the accuracy the kernel would give back); torch's ``_log_softmax_backward_data``;
* ``softmax_backward`` (dx = y (dy - y.dy)): the kernel, torch's ``_softmax_backward_data``;
* ``binary_cross_entropy_with_logits`` and ``quadratic_cost`` (forward): the kernels, and
  torch's ``F.binary_cross_entropy_with_logits`` and ``F.mse_loss(torch.sigmoid(x), y) / 2``
  (the quadratic cost's mean);
* the float64 backward normalizers' row sums on a row of 10^6 float64 (8 MB, in cache):
  sum_j y_j dy_j and sum_j dy_j compensated as the kernels take them (``rows.block_dot2``,
  ``rows.block_sum2``) and plain (32 lanes, reassociated), per element.

and, for the two writes of ``log_softmax_backward``, the instructions of their vectorized
loop per element of the row (the loop's instructions over the elements it stores), read
from the machine code Numba compiled for this machine (``hot_loop``).

Run: ``python benchmarks/pass_costs.py [--repeats 40]``.  One thread, so that the other core
absorbs a neighbour; the lines are comparable within one run only.
"""

from __future__ import annotations

import argparse

import numba
import numpy as np
from numba import njit
from timing import best_seconds

from softmaxlab.harness.machine_code import hot_loop

ROWS, CLASSES = 4096, 1000


def _passes():
    from softmaxlab.kernels._numerics.exp import exp32
    from softmaxlab.kernels._numerics.rows import reduce_sum_and_max, store_exp_product_difference

    @njit
    def reduce_pass(y, dy, out):
        total = 0.0
        for i in range(y.shape[0]):
            first, second = reduce_sum_and_max(y, dy, out, i, 0, y.shape[1])
            total += first + second
        return total

    @njit
    def write_pass_wide(y, dy, out):
        # the kernel's loop (vector.row_exp_product_difference32), with nothing ahead to prefetch
        for i in range(y.shape[0]):
            store_exp_product_difference(y[i], dy[i], out[i], 0.25, y[i, :0], dy[i, :0])

    @njit(fastmath={"contract"})
    def write_pass_exp32(y, dy, out):
        for i in range(y.shape[0]):
            values, upstream, destination = y[i], dy[i], out[i]
            for j in range(values.shape[0]):
                destination[j] = upstream[j] - exp32(values[j]) * np.float32(0.25)

    return reduce_pass, write_pass_wide, write_pass_exp32


def _row_sums():
    from softmaxlab.kernels._numerics.rows import _plain_dot, _plain_sum, block_dot2, block_sum2

    @njit
    def dot2(a, b):
        return block_dot2(a, b)

    @njit
    def sum2(a):
        return block_sum2(a)

    # the plain sums are the kernels' float32 rows' loops (32 lanes, reassociated)
    return dot2, _plain_dot, sum2, _plain_sum


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args(argv)

    import torch

    from softmaxlab.kernels import (
        binary_cross_entropy_with_logits,
        log_softmax,
        log_softmax_backward,
        quadratic_cost,
        softmax,
        softmax_backward,
    )

    numba.set_num_threads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((ROWS, CLASSES), dtype=np.float32)
    upstream = rng.standard_normal((ROWS, CLASSES), dtype=np.float32)
    labels = (rng.random((ROWS, CLASSES)) < 0.5).astype(np.float32)
    log_y, y = log_softmax(logits), softmax(logits)
    out = np.empty_like(logits)
    t_log_y, t_y, t_up, t_x, t_labels = map(torch.from_numpy, (log_y, y, upstream, logits, labels))
    reduce_pass, write_pass_wide, write_pass_exp32 = _passes()
    lines = {
        "log_softmax_backward: softmaxlab": lambda: log_softmax_backward(log_y, upstream),
        "log_softmax_backward: its reduce pass": lambda: reduce_pass(log_y, upstream, out),
        "log_softmax_backward: its write pass (exp_f32_wide, float64)": lambda: write_pass_wide(log_y, upstream, out),
        "log_softmax_backward: the write with exp32 (float32)": lambda: write_pass_exp32(log_y, upstream, out),
        "log_softmax_backward: torch": lambda: torch._log_softmax_backward_data(t_up, t_log_y, -1, t_log_y.dtype),
        "softmax_backward: softmaxlab": lambda: softmax_backward(y, upstream),
        "softmax_backward: torch": lambda: torch._softmax_backward_data(t_up, t_y, -1, t_y.dtype),
        "binary_cross_entropy_with_logits: softmaxlab": lambda: binary_cross_entropy_with_logits(logits, labels),
        "binary_cross_entropy_with_logits: torch": lambda: torch.nn.functional.binary_cross_entropy_with_logits(
            t_x, t_labels),
        "quadratic_cost: softmaxlab": lambda: quadratic_cost(logits, labels),
        "quadratic_cost: torch": lambda: torch.nn.functional.mse_loss(torch.sigmoid(t_x), t_labels) / 2,
    }
    print(f"{ROWS} x {CLASSES} float32, one thread, best of {args.repeats} calls")
    for name, function in lines.items():
        print(f"  {name:62s} {best_seconds(function, args.repeats) * 1e3:7.3f} ms")
    print("log_softmax_backward's writes: the vectorized loop's instructions per element")
    for name, function in (("exp_f32_wide, float64", write_pass_wide), ("exp32, float32", write_pass_exp32)):
        counts = hot_loop(function.inspect_asm(function.signatures[0]), out.itemsize)
        print(f"  {name:30s} all {counts['all']:.2f}, vector {counts['vector']:.2f}, multiplies and FMAs "
              f"{counts['multiply']:.2f} ({counts['elements']} elements a loop)")
    a, b = rng.standard_normal(10**6), rng.standard_normal(10**6)
    dot2, plain_dot, sum2, plain_sum = _row_sums()
    sums = {
        "sum y dy, compensated (Dot2, as the float64 kernels)": lambda: dot2(a, b),
        "sum y dy, plain (32 lanes)": lambda: plain_dot(a, b),
        "sum dy, compensated (TwoSum, as the float64 kernels)": lambda: sum2(a),
        "sum dy, plain (32 lanes)": lambda: plain_sum(a),
    }
    print(f"a row of {a.size} float64 (in cache), one thread, best of {args.repeats} calls")
    for name, function in sums.items():
        print(f"  {name:62s} {best_seconds(function, args.repeats) / a.size * 1e9:7.3f} ns per element")


if __name__ == "__main__":
    main()
