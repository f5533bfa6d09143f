"""Bytes each process sends per step, and its memory, for the class-sharded linear cross-entropy.

    python benchmarks/sharded_communication.py --out results/distributed/communication.md
    python benchmarks/sharded_communication.py --skip-memory     # the counts only (a minute)

Three parts, in order; the script stops at the first mismatch:

1. Counted.  Real gloo groups of P = 1, 2, 3, 4 spawned processes (``tests/distributed/spawn.py``)
   run ``sharded_linear_cross_entropy_forward_backward`` (float32 and float64), the Megatron-LM
   port (``megatron_forward_backward``, label smoothing as originally implemented: three
   all_reduces; the global form adds a fourth) and the Partial FC port
   (``partial_fc_forward_backward``) on N = 10 rows, D = 8 features and 37 classes (row blocks
   of unequal sizes at P = 3 and 4), each with a ``MessageLog``.  Every rank's logged bytes
   per kind must equal the formulas below (softmaxlab's for each rank, from
   ``exchange_bytes(..., rank=r)``; the ports' all_reduces are a ring's mean over ranks).
2. Scaled.  The same formulas at P = 2, 4, ..., 1024 in two settings: Partial FC's weak
   scaling, N = 128 P rows (128 per process, every process holding the whole batch after
   Partial FC's all_gather of the embeddings, or before softmaxlab's loss), and a fixed
   batch of N = 1024 rows; D = 512, float32.  None of the losses' exchanges depends on C.
   Next to softmaxlab's: grad_input as one all_gather of the float64 partials (the exchange
   ``all_reduce_rows_by_owner`` replaces), Megatron-LM's three all_reduces of N float32
   (logged by the port) and the all_reduce of x's gradient (N x D float32) that Megatron-LM's
   column-parallel backward adds, not sent by the port; Partial FC's three all_reduces
   (logged) and its all_gather of the embeddings and labels and reduce-scatter of their
   gradients (``benchmarks/distributed_messages.py``'s model; the port starts from the
   gathered batch, so these are not sent by it).
3. Memory.  ``memory_terms``: what one call allocates beyond its inputs (x, the weight shard,
   the targets), phase by phase, from the code of ``distributed/_sharded.py``,
   ``distributed/_comm.py`` and the kernel's ``chunk_plan``; the peak is the largest phase.
   Checked against the resident high-water mark of fresh processes (P = 1 and 2, one Numba
   and one OpenBLAS thread each, ``MALLOC_MMAP_THRESHOLD_`` = 1 MiB): inputs created in
   place, a small warm-up call (Numba's compilation or cache load, gloo's buffers), the
   baseline ``ru_maxrss``, one full call, ``ru_maxrss`` again; the difference is the
   measured extra peak.  Then the formula at
   P = 2..1024 and C = 10^6, 10^7, 10^8 with N = 128 P.

Byte counts are the payload under ``softmaxlab.distributed._comm``'s model (no headers).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # distributed_messages, sharded_common

import distributed_messages  # noqa: E402
from sharded_common import emit, parse  # noqa: E402  (and the root on sys.path, for tests.distributed.spawn)

from softmaxlab.distributed._sharded import ROUND2_WIDTH, exchange_bytes  # noqa: E402

CHECK_ROWS, CHECK_FEATURES, CHECK_CLASSES = 10, 8, 37
CHECK_WORLDS = (1, 2, 3, 4)
FEATURES = 512
PROCS = tuple(2**k for k in range(1, 11))
CLASSES = (10**6, 10**7, 10**8)
PER_PROCESS_ROWS = 128  # Partial FC's batch per GPU
FIXED_ROWS = 1024
GROUP_TIMEOUT = 300.0
# fresh-process memory checks: (rows, features, classes) at P = 1 and 2, float32
MEMORY_SHAPES = ((1024, 512, 131072), (16384, 1024, 2048))
# glibc's malloc serves blocks from this size up by mmap and returns them on free: without it a
# freed block of the heap stays resident and the high-water mark counts it again
MMAP_THRESHOLD = 2**20


def _bounds(classes, world):
    return [classes * r // world for r in range(world + 1)]


# ---- 1. the logs of real groups -------------------------------------------------------------------


def count_worker(rank: int, world: int, out_dir: str) -> None:
    """One rank of a counting group: every call's logged bytes per kind, as JSON."""
    import numba
    import torch

    from softmaxlab.distributed import MessageLog, ports, sharded_linear_cross_entropy_forward_backward

    numba.set_num_threads(1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((CHECK_ROWS, CHECK_FEATURES))
    weight = rng.standard_normal((CHECK_CLASSES, CHECK_FEATURES))
    target = rng.integers(0, CHECK_CLASSES, size=CHECK_ROWS)
    bounds = _bounds(CHECK_CLASSES, world)
    start, stop = bounds[rank], bounds[rank + 1]
    logs = {}
    for dtype in (np.float32, np.float64):
        log = MessageLog()
        sharded_linear_cross_entropy_forward_backward(x.astype(dtype), weight[start:stop].astype(dtype), target,
                                                      class_start=start, num_classes=CHECK_CLASSES,
                                                      label_smoothing=0.1, log=log)
        logs[f"softmaxlab_{np.dtype(dtype).name}"] = log
    xt, wt = (torch.from_numpy(a.astype(np.float32)) for a in (x, weight))
    tt = torch.from_numpy(target)
    logs["megatron"] = MessageLog()
    ports.megatron_forward_backward(xt, wt[start:stop], tt, class_start=start, num_classes=CHECK_CLASSES,
                                    label_smoothing=0.1, log=logs["megatron"])
    logs["partial_fc"] = MessageLog()
    ports.partial_fc_forward_backward(xt, wt[start:stop], tt, class_start=start, log=logs["partial_fc"])
    summary = {name: {"by_kind": log.by_kind(), "total": log.total_sent_bytes(), "table": log.markdown()}
               for name, log in logs.items()}
    Path(out_dir, f"counts.rank{rank}.json").write_text(json.dumps(summary))


def check_counts(folder: Path) -> list[str]:
    """Run the counting groups and compare their logs with the formulas; the logs of P = 4 as Markdown."""
    from tests.distributed.spawn import spawn_group

    tables = []
    for world in CHECK_WORLDS:
        out = folder / f"counts{world}"
        out.mkdir()
        spawn_group(count_worker, world, (str(out),), timeout=GROUP_TIMEOUT)
        ranks = [json.loads((out / f"counts.rank{r}.json").read_text()) for r in range(world)]
        for rank, counted in enumerate(ranks):
            for dtype, itemsize in (("float32", 4), ("float64", 8)):
                total = counted[f"softmaxlab_{dtype}"]["total"]
                expected = exchange_bytes(CHECK_ROWS, CHECK_FEATURES, world, itemsize, rank)
                _require(total == expected, f"softmaxlab {dtype}, P = {world}, rank {rank}: logged {total}, "
                                            f"formula {expected}")
                statistics = sum(v for k, v in counted[f"softmaxlab_{dtype}"]["by_kind"].items()
                                 if not k.startswith("sharded.grad_input"))
                _require(statistics == exchange_bytes(CHECK_ROWS, 0, world, itemsize, rank),
                         f"softmaxlab statistics, P = {world}: logged {statistics}")
            formulas = distributed_messages.bytes_per_step(CHECK_ROWS, CHECK_CLASSES, world, dim=CHECK_FEATURES,
                                                           stat_bytes=4)
            for port, key in (("megatron", "megatron"), ("partial_fc", "partial_fc_loss")):
                total = counted[port]["total"]
                _require(abs(total - formulas[key]) <= 1e-9 * max(total, 1.0),
                         f"{port}, P = {world}, rank {rank}: logged {total}, formula {formulas[key]}")
        mean = np.mean([c["softmaxlab_float32"]["total"] for c in ranks])
        _require(abs(mean - exchange_bytes(CHECK_ROWS, CHECK_FEATURES, world, 4)) <= 1e-9 * max(mean, 1.0),
                 f"softmaxlab mean over ranks, P = {world}: {mean}")
        if world == CHECK_WORLDS[-1]:
            for name in ("softmaxlab_float32", "megatron", "partial_fc"):
                tables.append(f"{name}, P = {world}, rank 0's log:\n\n" + ranks[0][name]["table"])
    return tables


def _require(condition, message):
    if not condition:
        raise SystemExit(f"mismatch: {message}")


# ---- 2. the bytes at scale ------------------------------------------------------------------------


def step_bytes(rows: int, procs: int, features: int = FEATURES, itemsize: int = 4) -> dict[str, float]:
    """Bytes one process sends per step (mean over ranks), per exchange; the module docstring lists them."""
    ports = distributed_messages.bytes_per_step(rows, 1, procs, dim=features, stat_bytes=itemsize)
    statistics = exchange_bytes(rows, 0, procs)
    grad_input = exchange_bytes(rows, features, procs, itemsize) - statistics
    return {
        "softmaxlab_statistics": statistics,
        "softmaxlab_grad_input": grad_input,
        "softmaxlab": statistics + grad_input,
        "grad_input_all_gather": 8.0 * rows * features * (procs - 1),
        "megatron_loss": ports["megatron"],
        "megatron": ports["megatron"] + ports["dx_all_reduce"],
        "partial_fc_loss": ports["partial_fc_loss"],
        "partial_fc": ports["partial_fc_loss"] + ports["partial_fc_embeddings"],
    }


STEP_COLUMNS = {
    "softmaxlab_statistics": "softmaxlab: bounds and 2 rounds of statistics (by owner)",
    "softmaxlab_grad_input": "softmaxlab: grad_input by owner",
    "softmaxlab": "softmaxlab: total",
    "grad_input_all_gather": "grad_input as one all_gather (replaced)",
    "megatron_loss": "Megatron-LM: 3 all_reduces (port's log)",
    "megatron": "Megatron-LM: + dx all_reduce",
    "partial_fc_loss": "Partial FC: 3 all_reduces (port's log)",
    "partial_fc": "Partial FC: + embeddings, labels, grads",
}


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


def bytes_table(rows_of) -> str:
    lines = ["| P | N | " + " | ".join(STEP_COLUMNS.values()) + " |", "|---:|---:|" + "---:|" * len(STEP_COLUMNS)]
    for procs in PROCS:
        rows = rows_of(procs)
        sent = step_bytes(rows, procs)
        lines.append(f"| {procs} | {rows} | " + " | ".join(_human(sent[key]) for key in STEP_COLUMNS) + " |")
    return "\n".join(lines)


# ---- 3. memory ------------------------------------------------------------------------------------


def memory_terms(rows: int, features: int, classes: int, procs: int, itemsize: int = 4, rank: int = 0,
                 threads: int = 1) -> dict[str, float]:
    """Bytes one call allocates beyond its inputs on ``rank``, by term and by phase (float32: itemsize 4).

    Terms: the gradient of the shard (S D s); the kernel's chunk buffers (``chunk_plan``:
    pass 1's chunk, product tile and scratch, ``bytes1``; pass 2's product tiles, ``bytes2``);
    the per-row statistics (``statistics_pass``'s partial, N x K class tiles x 5 float64, and
    about 8 arrays of N float64 or fewer bytes: masks, local targets); the rounds' arrays,
    kept to the end of the call: the received rows of the owner's block (P R (1 + 4)
    float64), the gathered (M, rank) and (loss, state, status) rows and their copies
    (N (2 + 1 + 4 + 6 + 1 + 4) float64 and N bytes of status), and while round 2's gather
    runs, the block repeated P times (P R 6 float64) and the owner's block arrays
    (R (6 + 1 + 4) float64, R bytes); grad_input's exchange: the float64 partial (N D 8),
    the received rows (P R 8 D), their sum (R D 8) and its rounding (R D s), and a copy of
    the rows sent to other ranks, (N - R) D 8, which the measurements show while gloo's
    all_to_all runs (observed, not read from gloo's source); then the rounded block repeated
    P times (P R D s) and the gathered result (N D s).  Phases: pass 1, round 2, pass 2, the
    exchange's reduce, its gather; ``peak`` is the largest.
    """
    from softmaxlab.kernels._config import block_length
    from softmaxlab.kernels._linear_cross_entropy import PRODUCT_TILE, ROW_TILE, chunk_plan
    import numba

    dtype = np.float32 if itemsize == 4 else np.float64
    shard = np.diff(_bounds(classes, procs))[rank]
    own = rows * (rank + 1) // procs - rows * rank // procs
    saved = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        plan = chunk_plan(rows, int(shard), features, dtype)
    finally:
        numba.set_num_threads(saved)
    tiles = -(-int(shard) // block_length(itemsize))
    statistics = rows * tiles * 5 * 8 + 8 * rows * 8
    # statistics_pass's product tile, kept for pass 2
    product = min(rows, ROW_TILE) * min(int(shard), PRODUCT_TILE) * itemsize
    rounds = procs * own * (1 + ROUND2_WIDTH) * 8 + rows * (8 * (2 + 1 + 4 + 6 + 1 + 4) + 1)
    round2 = procs * own * 6 * 8 + own * (8 * (6 + 1 + 4) + 1)
    grad_weight = float(shard) * features * itemsize
    partial64 = rows * features * 8
    terms = {
        "grad_weight_shard": grad_weight,
        "chunk_pass1": float(plan.bytes1),
        "chunk_pass2": float(plan.bytes2),
        "row_statistics": float(statistics),
        "round_buffers": float(rounds + round2),
        "exchange_reduce": float(partial64 + procs * own * features * 8 + own * features * (8 + itemsize)
                                 + (rows - own) * features * 8),
        "exchange_gather": float(partial64 + own * features * itemsize * (1 + procs) + rows * features * itemsize),
    }
    phases = {  # bytes1 and bytes2 include the product tile
        "pass1": statistics + plan.bytes1,
        "round2": statistics + product + terms["round_buffers"],
        "pass2": statistics + rounds + grad_weight + partial64 + plan.bytes2,
        "reduce": statistics + product + rounds + grad_weight + terms["exchange_reduce"],
        "gather": statistics + product + rounds + grad_weight + terms["exchange_gather"],
    }
    terms.update({f"phase_{k}": float(v) for k, v in phases.items()})
    terms["peak"] = float(max(phases.values()))
    terms["inputs"] = float((rows + shard) * features * itemsize + rows * 8)
    return terms


def memory_worker(rank: int, world: int, rows: int, features: int, classes: int, out_dir: str) -> None:
    """One rank of a memory group: inputs in place, a warm-up, the baseline, one full call, the peak."""
    import resource

    import numba

    from softmaxlab.distributed import sharded_linear_cross_entropy_forward_backward as sharded

    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0

    numba.set_num_threads(1)
    bounds = _bounds(classes, world)
    start, stop = bounds[rank], bounds[rank + 1]
    rng = np.random.default_rng(rank)
    x = np.empty((rows, features), dtype=np.float32)
    shard = np.empty((stop - start, features), dtype=np.float32)
    rng.standard_normal(out=x, dtype=np.float32)
    rng.standard_normal(out=shard, dtype=np.float32)
    shard *= 0.05
    target = np.random.default_rng(99).integers(0, classes, size=rows)
    small = [_bounds(64 * world, world)[r] for r in (rank, rank + 1)]
    sharded(x[:8, :16].copy(), np.ones((small[1] - small[0], 16), np.float32), target[:8] % (64 * world),
            class_start=small[0], num_classes=64 * world)
    baseline = peak()
    sharded(x, shard, target, class_start=start, num_classes=classes)
    measured = peak() - baseline
    Path(out_dir, f"memory.rank{rank}.json").write_text(json.dumps({"baseline": baseline, "extra": measured}))


def check_memory(folder: Path) -> str:
    """The measured extra peaks of fresh groups beside ``memory_terms``' phases, as a Markdown table."""
    from tests.distributed.spawn import spawn_group

    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["NUMBA_NUM_THREADS"] = "1"
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    lines = ["| N | D | C | P | rank | pass 1 | round 2 | pass 2 | reduce | gather | predicted peak | measured "
             "| measured / predicted |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    mib = 2.0**20
    for rows, features, classes in MEMORY_SHAPES:
        for world in (1, 2):
            out = folder / f"memory{rows}_{classes}_{world}"
            out.mkdir()
            spawn_group(memory_worker, world, (rows, features, classes, str(out)), timeout=GROUP_TIMEOUT)
            for rank in range(world):
                measured = json.loads((out / f"memory.rank{rank}.json").read_text())["extra"]
                terms = memory_terms(rows, features, classes, world, rank=rank)
                phases = " | ".join(f"{terms['phase_' + k] / mib:.1f}" for k in ("pass1", "round2", "pass2", "reduce",
                                                                                  "gather"))
                lines.append(f"| {rows} | {features} | {classes} | {world} | {rank} | {phases} | "
                             f"{terms['peak'] / mib:.1f} | {measured / mib:.1f} | {measured / terms['peak']:.3f} |")
    return "\n".join(lines)


def memory_table() -> str:
    lines = ["| P | N | C | S = C/P | inputs (x, shard) | grad shard | chunk (pass 1 / 2) | row statistics "
             "| round buffers | grad_input exchange (reduce / gather) | predicted peak beyond inputs |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for classes in CLASSES:
        for procs in PROCS:
            rows = PER_PROCESS_ROWS * procs
            t = memory_terms(rows, FEATURES, classes, procs)
            lines.append(
                f"| {procs} | {rows} | {classes:.0e} | {classes // procs} | {_human(t['inputs'])} "
                f"| {_human(t['grad_weight_shard'])} | {_human(t['chunk_pass1'])} / {_human(t['chunk_pass2'])} "
                f"| {_human(t['row_statistics'])} | {_human(t['round_buffers'])} "
                f"| {_human(t['exchange_reduce'])} / {_human(t['exchange_gather'])} | {_human(t['peak'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args, command = parse(__doc__, "sharded_communication.py", argv,
                          flags=[("--skip-memory", "leave out the fresh-process memory checks")])
    with tempfile.TemporaryDirectory() as scratch:
        logs = check_counts(Path(scratch))
        measured = None if args.skip_memory else check_memory(Path(scratch))
    parts = [
        "# Class-sharded linear cross-entropy: bytes sent and memory per process",
        f"Command: `{command}` (the module docstring of `benchmarks/sharded_communication.py` says what "
        "each part does).",
        "## Bytes each process sends per step",
        "Checked first: the formulas equal the `MessageLog` of real gloo groups of "
        f"P = {', '.join(map(str, CHECK_WORLDS))} "
        f"(N = {CHECK_ROWS}, D = {CHECK_FEATURES}, C = {CHECK_CLASSES}), every rank, float32 and float64, "
        "softmaxlab and the two ports' all_reduces. The logs of P = 4:",
        *logs,
        f"D = {FEATURES}, float32 (s = 4 bytes); per process and step, the mean over ranks. softmaxlab: "
        "24 (P - 1) + 104 N (P - 1)/P for the bounds and the statistics, (8 + s) N D (P - 1)/P for grad_input "
        "(`exchange_bytes`). The statistics' two rounds as all_gathers (before the rows' owners merged them) "
        "cost 8 (P - 1) (3 + 5 N): 5.0 GiB at P = 1024, N = 131072. No column depends on C.",
        "### Weak scaling: N = 128 P (Partial FC's 128 rows per process)",
        bytes_table(lambda procs: PER_PROCESS_ROWS * procs),
        f"### A fixed batch: N = {FIXED_ROWS}",
        bytes_table(lambda procs: FIXED_ROWS),
        "## Memory per process",
    ]
    if measured is not None:
        parts += ["Measured: fresh processes, one Numba and one OpenBLAS thread each, glibc's mmap threshold at "
                  "1 MiB, the resident high-water mark "
                  "of one call minus the baseline after a warm-up call (MiB); the predicted phases from "
                  "`memory_terms` (MiB).", measured]
    parts += [f"The formula (`memory_terms`, beyond the inputs) at N = 128 P, D = {FEATURES}, float32, rank 0, "
              "one thread:", memory_table()]
    emit(parts, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
