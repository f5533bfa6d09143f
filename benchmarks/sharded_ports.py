"""softmaxlab's sharded loss, the Megatron-LM port and the Partial FC port on the same shards: accuracy and time.

    python benchmarks/sharded_ports.py --out results/distributed/ports.md [--repeats 5]

One gloo group of 2 spawned processes (``tests/distributed/spawn.py``), one Numba, one
OpenBLAS and one torch thread each.

Accuracy.  The inputs of the sharded tests (``tests/distributed/sharded_workers.inputs``:
N = 6 rows, D = 8 features, here C = 40 classes split 13 + 27, uneven), row 0's target logit
120 below its row's max (p_y ~ e^-120 < 1e-30); the row the tests ignore gets target 0, as
the ports have no ignore_index.  In float64 and in float32 (the same values rounded), two
cases: plain cross-entropy, and label smoothing eps = 0.1 spread over the global C classes.
The functions, every one on the logits x W_shard^T of its rank:

* softmaxlab: ``sharded_linear_cross_entropy_forward_backward`` (reduction "none" for the rows'
  losses, "mean" for the gradients; grad_input is complete on every rank);
* Megatron-LM (Shoeybi et al. 2019) port, ``megatron_cross_entropy`` and
  ``megatron_forward_backward``: its smoothing puts 1 - eps' on the target and eps'/(C - 1)
  elsewhere, so eps' = eps (C - 1)/C gives the same target distribution as eps in torch's
  convention (eps/C everywhere, 1 - eps more on the target); with the global class count
  and mean (``global_smoothing=True``), and as originally implemented (the local ones);
* Partial FC (An et al. 2021) port: ``partial_fc_cross_entropy`` on the same logits (no
  margin, scale 1), the plain case only (it has no smoothing).

The ports' x-gradients are each rank's part; their sum over the ranks is compared.  The
reference: ``harness/exact/linear.py``'s ``exact_linear_cross_entropy`` (mpmath, 50 digits,
the products exact) of the same inputs.  Errors: each row's loss |l - l*|/|l*| (the largest
over rows, and row 0 apart), and for dx and dW the largest |g - g*| over the largest |g*|
(normwise), in units of the dtype's epsilon.

Time.  N = 1024, D = 512, C = 32768 float32 classes (16384 per rank), forward and backward,
one untimed call then ``--repeats`` calls after barriers; a step is the slower rank's.  The
ports' steps include the all_reduce (torch.distributed, N x D) that completes x's gradient,
as softmaxlab's call does; Partial FC's is its loss on the logits x W^T (no margin).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sharded_common import emit, load_average, parse, steps, timed  # noqa: E402  (and the root on sys.path)

CLASSES, SPLIT, EPS = 40, 13, 0.1
WORLD = 2
TIME_ROWS, TIME_FEATURES, TIME_CLASSES = 1024, 512, 32768
FUNCTIONS = ("softmaxlab", "megatron_global", "megatron_local", "partial_fc")


def accuracy_inputs(dtype):
    """x, W, targets of the accuracy case (the sharded tests' inputs, every row's target a class)."""
    from tests.distributed.sharded_workers import IGNORED_ROW, inputs

    x, weight, target, _ = inputs(CLASSES, np.float64)
    target = target.copy()
    target[IGNORED_ROW] = 0
    return x.astype(dtype), weight.astype(dtype), target


def _ports_step(name, x, shard, target, start, classes, smoothing, log=None):
    """(rows' losses, mean loss, x's gradient part, shard's gradient) of port ``name`` on torch tensors."""
    from softmaxlab.distributed import ports

    if name == "partial_fc":
        def loss_of(xx, ww, reduction):
            return ports.partial_fc_cross_entropy(xx @ ww.T, target, class_start=start, reduction=reduction)
    else:
        eps = smoothing * (classes - 1) / classes

        def loss_of(xx, ww, reduction):
            rows = ports.megatron_cross_entropy(xx @ ww.T, target, class_start=start, num_classes=classes,
                                                label_smoothing=eps, global_smoothing=name == "megatron_global")
            return rows.mean() if reduction == "mean" else rows
    rows = loss_of(x, shard, "none").detach()
    loss, grad_x, grad_w = ports._forward_backward(lambda xx, ww: loss_of(xx, ww, "mean"), x, shard)
    return rows, loss, grad_x, grad_w


def worker(rank: int, world: int, repeats: int, out_dir: str) -> None:
    import numba
    import torch
    import torch.distributed as dist

    from softmaxlab.distributed import sharded_linear_cross_entropy_forward_backward as sharded

    numba.set_num_threads(1)
    results = {}
    bounds = [0, SPLIT, CLASSES]
    start, stop = bounds[rank], bounds[rank + 1]
    for dtype in (np.float64, np.float32):
        x, weight, target = accuracy_inputs(dtype)
        for smoothing in (0.0, EPS):
            key = f"{np.dtype(dtype).name}_{smoothing}"
            options = dict(class_start=start, num_classes=CLASSES, label_smoothing=smoothing)
            rows = sharded(x, weight[start:stop], target, reduction="none", **options)[0]
            loss, grad_x, grad_w = sharded(x, weight[start:stop], target, **options)
            results[f"softmaxlab_{key}"] = [rows, loss, grad_x, grad_w]
            tensors = [torch.from_numpy(a) for a in (x, weight[start:stop].copy(), target)]
            for name in FUNCTIONS[1:]:
                if name == "partial_fc" and smoothing:
                    continue
                with np.errstate(all="ignore"):
                    outputs = _ports_step(name, *tensors, start, CLASSES, smoothing)
                results[f"{name}_{key}"] = [t.numpy() for t in outputs]
    np.savez(Path(out_dir, f"accuracy.rank{rank}.npz"),
             **{f"{k}__{i}": np.asarray(v) for k, values in results.items() for i, v in enumerate(values)})

    start, stop = TIME_CLASSES * rank // world, TIME_CLASSES * (rank + 1) // world
    rng = np.random.default_rng(0)
    x = rng.standard_normal((TIME_ROWS, TIME_FEATURES), dtype=np.float32)
    target = rng.integers(0, TIME_CLASSES, size=TIME_ROWS)
    shard = 0.05 * np.random.default_rng(1 + rank).standard_normal((stop - start, TIME_FEATURES), dtype=np.float32)
    xt, st, tt = torch.from_numpy(x), torch.from_numpy(shard), torch.from_numpy(target)

    def port_step(name):
        def step():
            _, _, grad_x, _ = _ports_step(name, xt, st, tt, start, TIME_CLASSES, 0.0)
            dist.all_reduce(grad_x)  # x's gradient complete on every rank, as softmaxlab's
        return step

    calls = {"softmaxlab": lambda: sharded(x, shard, target, class_start=start, num_classes=TIME_CLASSES),
             "megatron_local": port_step("megatron_local"), "partial_fc": port_step("partial_fc")}
    times = {name: timed(call, repeats) for name, call in calls.items()}
    Path(out_dir, f"times.rank{rank}.json").write_text(json.dumps(times))


def _errors(computed, exact, dtype):
    """(largest row loss error, row 0's, dx's normwise, dW's normwise), in units of dtype's epsilon."""
    eps = np.finfo(dtype).eps
    rows, _, grad_x, grad_w = computed
    (rows_hi, rows_lo), (x_hi, x_lo), (w_hi, w_lo) = exact
    with np.errstate(all="ignore"):
        row_error = np.abs((rows.astype(np.float64) - rows_hi) - rows_lo) / np.abs(rows_hi) / eps
    normwise = [np.max(np.abs((g.astype(np.float64) - hi) - lo)) / np.max(np.abs(hi)) / eps
                for g, hi, lo in ((grad_x, x_hi, x_lo), (grad_w, w_hi, w_lo))]
    return float(np.max(row_error)), float(row_error[0]), *map(float, normwise)


def accuracy_table(folder: Path) -> str:
    from softmaxlab.harness.exact.linear import exact_linear_cross_entropy

    ranks = [np.load(folder / f"accuracy.rank{r}.npz") for r in range(WORLD)]
    lines = ["| dtype | case | function | row 0: loss (exact) | largest row loss error | row 0's loss error "
             "| dx error (normwise) | dW error (normwise) |", "|---|---|---|---|---:|---:|---:|---:|"]
    for dtype in (np.float64, np.float32):
        x, weight, target = accuracy_inputs(dtype)
        for smoothing in (0.0, EPS):
            rows = exact_linear_cross_entropy(x, weight, target, reduction="none", label_smoothing=smoothing)[0]
            _, dx, dw = exact_linear_cross_entropy(x, weight, target, label_smoothing=smoothing)
            exact = ((rows.hi, rows.lo), (dx.hi, dx.lo), (dw.hi, dw.lo))
            for name in FUNCTIONS:
                key = f"{name}_{np.dtype(dtype).name}_{smoothing}"
                if f"{key}__0" not in ranks[0]:
                    continue
                parts = [[r[f"{key}__{i}"] for r in ranks] for i in range(4)]
                grad_x = parts[2][0] if name == "softmaxlab" else sum(p.astype(np.float64) for p in parts[2])
                computed = (parts[0][0], parts[1][0], grad_x, np.concatenate(parts[3]))
                errors = _errors(computed, exact, dtype)
                same = all(np.array_equal(p, parts[0][0]) for p in parts[0])
                case = f"smoothing {smoothing}" if smoothing else "plain"
                lines.append(f"| {np.dtype(dtype).name} | {case} | {name}{'' if same else ' (ranks differ; rank 0)'} "
                             f"| {parts[0][0][0]:.6g} ({rows.hi[0]:.6g}) | "
                             + " | ".join(f"{e:.3g}" for e in errors) + " |")
    return "\n".join(lines)


def time_table(folder: Path) -> str:
    ranks = [json.loads((folder / f"times.rank{r}.json").read_text()) for r in range(WORLD)]
    lines = ["| function | median step (s) | range (s) |", "|---|---:|---:|"]
    for name in ranks[0]:
        median, low, high = steps([r[name] for r in ranks])
        lines.append(f"| {name} | {median:.3f} | {low:.3f} to {high:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args, command = parse(__doc__, "sharded_ports.py", argv, repeats=5)
    from tests.distributed.spawn import spawn_group

    os.environ["NUMBA_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = "1"
    before = load_average()
    with tempfile.TemporaryDirectory() as scratch:
        spawn_group(worker, WORLD, (args.repeats, scratch), timeout=900.0)
        after = load_average()
        accuracy, times = accuracy_table(Path(scratch)), time_table(Path(scratch))
    emit([
        "# Sharded losses side by side: softmaxlab, the Megatron-LM port, the Partial FC port",
        f"Command: `{command}` (the module docstring of `benchmarks/sharded_ports.py` gives the method). "
        f"2 processes on a shared machine of {os.cpu_count()} logical CPUs (contended): load average (1, 5, 15 min) "
        f"{before} before, {after} after.",
        f"## Accuracy against the exact value (mpmath, 50 digits): N = 6, D = 8, C = {CLASSES} split {SPLIT} + "
        f"{CLASSES - SPLIT}; errors in units of the dtype's epsilon",
        accuracy,
        f"## Time: N = {TIME_ROWS}, D = {TIME_FEATURES}, C = {TIME_CLASSES} float32, 2 processes, 1 thread each, "
        f"{args.repeats} steps",
        times,
    ], args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
