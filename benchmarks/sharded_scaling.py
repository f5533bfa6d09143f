"""Strong and weak scaling of the class-sharded linear cross-entropy on 1 and 2 processes of one machine.

    python benchmarks/sharded_scaling.py --out results/distributed/scaling.md [--repeats 7]

Every configuration runs in a fresh gloo group (``tests/distributed/spawn.py``) whose processes
get their threads from the environment set before they start: ``NUMBA_NUM_THREADS`` (Numba's
pool, the kernel's ``prange`` loops) and ``OPENBLAS_NUM_THREADS`` (NumPy's BLAS, the kernel's
GEMMs), both checked inside each process (``numba.get_num_threads``, ``threadpoolctl``).
Each process makes its inputs (float32, every rank the same x and targets, its own shard of
the class weights), calls ``sharded_linear_cross_entropy_forward_backward`` once untimed (the
compilation, or the load of the kernels' disk cache, excluded), then ``--repeats`` timed
calls, each after a barrier; a step's time is the slowest rank's, and the table gives the
median step and the range over the repeats.  The single-process kernel
``linear_cross_entropy_forward_backward`` on the whole weight is timed the same way in a
group of one, as the reference without any exchange.

* strong scaling: N = 1024, D = 512, C = 32768 classes; 1 process with 2 Numba and 2
  OpenBLAS threads, and with 2 Numba and 1 OpenBLAS thread, against 2 processes with 1 and
  1 each (the same two cores);
* weak scaling: 16384 classes per process; 1 process with 1 + 1 threads (C = 16384) against
  2 processes with 1 + 1 threads each (C = 32768): ideal is the same time.

The machine's load average is read before and after; on a shared machine the figures are
contended and say so.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sharded_common import emit, load_average, parse, steps, timed  # noqa: E402  (and the root on sys.path)

ROWS, FEATURES = 1024, 512
STRONG_CLASSES = 32768
WEAK_PER_PROCESS = 16384
GROUP_TIMEOUT = 600.0

# (scaling, processes, (Numba, OpenBLAS) threads per process, classes, function)
CONFIGS = (
    ("strong", 1, (2, 2), STRONG_CLASSES, "single"),
    ("strong", 1, (2, 2), STRONG_CLASSES, "sharded"),
    ("strong", 1, (2, 1), STRONG_CLASSES, "sharded"),
    ("strong", 2, (1, 1), STRONG_CLASSES, "sharded"),
    ("weak", 1, (1, 1), WEAK_PER_PROCESS, "single"),
    ("weak", 1, (1, 1), WEAK_PER_PROCESS, "sharded"),
    ("weak", 2, (1, 1), 2 * WEAK_PER_PROCESS, "sharded"),
)


def time_worker(rank: int, world: int, classes: int, function: str, repeats: int, out_dir: str) -> None:
    """One rank: inputs, one untimed call, ``repeats`` timed calls after barriers; the times as JSON."""
    import numba
    import threadpoolctl

    from softmaxlab.distributed import sharded_linear_cross_entropy_forward_backward
    from softmaxlab.kernels import linear_cross_entropy_forward_backward

    start, stop = classes * rank // world, classes * (rank + 1) // world
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    target = rng.integers(0, classes, size=ROWS)
    shard = 0.05 * np.random.default_rng(1 + rank).standard_normal((stop - start, FEATURES), dtype=np.float32)
    if function == "single":
        def call():
            return linear_cross_entropy_forward_backward(x, shard, target)
    else:
        def call():
            return sharded_linear_cross_entropy_forward_backward(x, shard, target, class_start=start,
                                                                 num_classes=classes)
    times = timed(call, repeats)
    blas = [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
    Path(out_dir, f"times.rank{rank}.json").write_text(json.dumps(
        {"times": times, "numba_threads": numba.get_num_threads(), "blas_threads": blas,
         "layer": numba.threading_layer()}))


def run(repeats: int, folder: Path) -> list[dict]:
    from tests.distributed.spawn import spawn_group

    results = []
    for index, (scaling, processes, threads, classes, function) in enumerate(CONFIGS):
        os.environ["NUMBA_NUM_THREADS"], os.environ["OPENBLAS_NUM_THREADS"] = map(str, threads)
        out = folder / f"config{index}"
        out.mkdir()
        spawn_group(time_worker, processes, (classes, function, repeats, str(out)), timeout=GROUP_TIMEOUT)
        ranks = [json.loads((out / f"times.rank{r}.json").read_text()) for r in range(processes)]
        for rank in ranks:
            if rank["numba_threads"] != threads[0] or any(n != threads[1] for n in rank["blas_threads"]):
                raise SystemExit(f"threads not as set: {rank}")
        median, low, high = steps([rank["times"] for rank in ranks])
        results.append(dict(scaling=scaling, processes=processes, threads=threads, classes=classes,
                            function=function, median=median, low=low, high=high, layer=ranks[0]["layer"]))
    return results


def markdown(results: list[dict], command: str, load_before: str, load_after: str) -> str:
    lines = [
        "# Class-sharded linear cross-entropy: strong and weak scaling on one machine",
        "",
        f"Command: `{command}`. Machine: {os.cpu_count()} logical CPUs, {platform.processor() or platform.machine()}, "
        f"shared with other work (contended): load average (1, 5, 15 min) {load_before} before, {load_after} after. "
        f"N = {ROWS}, D = {FEATURES}, float32; forward and backward per step (the module docstring of "
        "`benchmarks/sharded_scaling.py` gives the method); a step is the slowest rank's time.",
        "",
        "| scaling | function | processes | Numba + OpenBLAS threads per process (Numba's threading layer) | C "
        "| classes per process "
        "| median step (s) | range (s) | speed-up vs the same scaling's 1-process sharded run |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        base = next(b for b in results if b["scaling"] == r["scaling"] and b["function"] == "sharded"
                    and b["processes"] == 1)
        name = "linear_cross_entropy_forward_backward" if r["function"] == "single" else "sharded"
        lines.append(f"| {r['scaling']} | {name} | {r['processes']} | {r['threads'][0]} + {r['threads'][1]} "
                     f"({r['layer']}) | {r['classes']} "
                     f"| {r['classes'] // r['processes']} | {r['median']:.3f} | {r['low']:.3f} to {r['high']:.3f} "
                     f"| {base['median'] / r['median']:.2f} |")
    lines += ["", "Strong scaling's ideal speed-up is 1 (the same two cores do the same work); weak scaling's "
              "ideal is 1 as well (twice the work on twice the cores)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    args, command = parse(__doc__, "sharded_scaling.py", argv, repeats=7)
    before = load_average()
    with tempfile.TemporaryDirectory() as scratch:
        results = run(args.repeats, Path(scratch))
    emit([markdown(results, command, before, load_average())], args.out)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
