"""Numba's static prange shares against dynamic chunks, quiet and beside a busy neighbour, in one process.

    python benchmarks/dynamic_chunks.py --rounds 5

The row kernels run their ``prange`` over rows (many rows) or over (row, block) tasks (a
few long rows).  Numba hands each thread one contiguous share by default; with
``numba.set_parallel_chunksize(k)`` the iterations go out in chunks of k to whichever
thread is free.  Which thread computes a row or a block changes nothing in the result
(``_driver/rows.py``), so this is a pure scheduling choice; this script measures it.

Each round times, for every case, the static shares and chunks of about 1/8 of a
thread's share, one after the other (the median of ``--calls`` calls: the best would be
a call the neighbour left alone), with torch's time beside them; the rounds alternate quiet and busy phases, the busy ones beside
``busy_neighbour.py`` on the last CPU (``--share`` of it).  Printed: per case and phase,
the median over rounds of each time and of torch's time over ours.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np

from timing import call_seconds


def median_seconds(function, calls: int) -> float:
    """The median of ``calls`` timed calls: beside a neighbour that is busy half of each 10 ms,
    the best call would be one it left alone."""
    return float(np.median(call_seconds(function, calls)))


CHUNKS_PER_THREAD = 8


def _cases(rng):
    from softmaxlab.kernels import cross_entropy_forward_backward, softmax, softmax_backward

    cases = []
    for rows, classes in ((1, 1 << 22), (4096, 1000), (512, 32000)):
        x = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
        y, dy = softmax(x), rng.standard_normal((rows, classes)).astype(np.float32)
        target = rng.integers(0, classes, rows)
        split = rows < 2 * numba.get_num_threads() and classes > 8192
        tasks = rows * -(-classes // 8192) if split else rows
        cases.append((f"softmax {rows}x{classes}", lambda x=x: softmax(x), tasks, ("softmax", x)))
        cases.append((f"softmax_backward {rows}x{classes}", lambda y=y, dy=dy: softmax_backward(y, dy), tasks,
                      ("softmax_backward", y, dy)))
        cases.append((f"cross_entropy_fb {rows}x{classes}",
                      lambda x=x, t=target: cross_entropy_forward_backward(x, t), tasks, ("ce", x, target)))
    return cases


def _torch_call(torch, spec):
    x = torch.from_numpy(spec[1])
    if spec[0] == "softmax":
        return lambda: torch.softmax(x, -1)
    if spec[0] == "softmax_backward":
        dy = torch.from_numpy(spec[2])
        return lambda: torch._softmax_backward_data(dy, x, -1, x.dtype)
    target = torch.from_numpy(spec[2])

    def step():
        logits = x.detach().requires_grad_(True)
        torch.nn.functional.cross_entropy(logits, target).backward()

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per phase (default 4)")
    parser.add_argument("--calls", type=int, default=40, help="calls per timing, the median kept (default 40)")
    parser.add_argument("--share", type=float, default=0.5, help="the neighbour's share of its CPU (default 0.5)")
    args = parser.parse_args(argv)
    import torch

    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else threads - 1
    cases = _cases(np.random.default_rng(0))
    torch_calls = [_torch_call(torch, spec) for *_, spec in cases]
    results = {}
    neighbour_script = Path(__file__).with_name("busy_neighbour.py")
    for round_index in range(2 * args.rounds):
        phase = "busy" if round_index % 2 else "quiet"
        neighbour = None
        if phase == "busy":
            neighbour = subprocess.Popen([sys.executable, str(neighbour_script), "--share", str(args.share),
                                          "--cpu", str(cpu), "--seconds", "300"])
            time.sleep(0.5)
        try:
            for (name, call, tasks, _), torch_call in zip(cases, torch_calls):
                chunk = max(1, tasks // (CHUNKS_PER_THREAD * threads))
                numba.set_parallel_chunksize(0)
                static = median_seconds(call, args.calls)
                numba.set_parallel_chunksize(chunk)
                dynamic = median_seconds(call, args.calls)
                numba.set_parallel_chunksize(0)
                reference = median_seconds(torch_call, args.calls)
                results.setdefault((name, phase), []).append((static, dynamic, reference))
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    print(f"{threads} threads (Numba and torch); neighbour on CPU {cpu} at {args.share:.0%}; "
          f"median of {args.rounds} rounds of the median of {args.calls} calls")
    print("| case | phase | static ms | dynamic ms | torch ms | torch/static | torch/dynamic |")
    print("|---|---|---|---|---|---|---|")
    for (name, phase), rows in results.items():
        static, dynamic, reference = (np.median([row[k] for row in rows]) for k in range(3))
        print(f"| {name} | {phase} | {static * 1e3:.2f} | {dynamic * 1e3:.2f} | {reference * 1e3:.2f} | "
              f"{reference / static:.2f} | {reference / dynamic:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
