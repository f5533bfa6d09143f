"""What a fresh output costs: softmax_backward (or softmax) with and without ``out=``, quiet and beside a busy neighbour.

    python benchmarks/fresh_outputs.py [--kernel softmax] [--shape 4096x1000] [--no-huge-pages]
                                       [--output-cache-mb 0]

Every call of a kernel returns a new array unless it is given ``out=``; at 512 x 32000
float32 (the default shape) that is 65 MB whose pages are faulted in by the first write.
NumPy asks for transparent huge pages on large arrays (``madvise``); with ``defrag`` set
to ``madvise`` (this machine) the kernel may compact memory to find 2 MiB pages inside
the fault.  This script times, in one process, the percentiles (p20, p50, p80, p95) of
150 calls, and counts the minor page faults per call (``getrusage``), of:

* the kernel as most users call it (a new output each call: from 32 MiB on, the buffer of
  the output dropped the call before, from ``kernels/_outputs.py``'s cache; with
  ``--output-cache-mb 0`` a fresh one);
* the kernel with ``out=reused``: one output reused across calls;
* torch's ``_softmax_backward_data`` or ``softmax`` (its own fresh output, from its allocator);

first quiet, then beside ``busy_neighbour.py`` (half of the last CPU).  With
``--no-huge-pages`` NumPy's ``madvise`` is switched off for the process
(``np._core.multiarray._set_madvise_hugepage(False)``, a process-wide switch: for
measuring, not for a library to flip).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from timing import call_seconds


def percentiles(function, calls=150):
    """(p20, p50, p80, p95 in ms, minor page faults per call) of ``calls`` timed calls after
    one untimed call."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = call_seconds(function, calls)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / (calls + 1)
    return (*np.percentile(seconds, [20, 50, 80, 95]) * 1e3, faults)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=("softmax_backward", "softmax"), default="softmax_backward")
    parser.add_argument("--shape", default="512x32000", help="ROWSxCLASSES, float32 (default: 512x32000)")
    parser.add_argument("--no-huge-pages", action="store_true", help="switch NumPy's huge-page madvise off")
    parser.add_argument("--output-cache-mb", help="SOFTMAXLAB_OUTPUT_CACHE_MB for this run (0: fresh outputs)")
    args = parser.parse_args(argv)
    if args.output_cache_mb is not None:
        os.environ["SOFTMAXLAB_OUTPUT_CACHE_MB"] = args.output_cache_mb  # read when the kernels are imported
    if args.no_huge_pages:
        np._core.multiarray._set_madvise_hugepage(False)
    import torch

    from softmaxlab.kernels import softmax, softmax_backward

    rows, classes = (int(n) for n in args.shape.lower().split("x"))
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
    y = softmax(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    t_x, t_y, t_dy = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(dy)
    reused = np.empty_like(y)
    if args.kernel == "softmax":
        calls = {
            "softmax (new output)": lambda: softmax(x),
            "softmax(..., out=reused)": lambda: softmax(x, out=reused),
            "torch softmax": lambda: torch.softmax(t_x, -1),
        }
    else:
        calls = {
            "softmax_backward (new output)": lambda: softmax_backward(y, dy),
            "softmax_backward(..., out=reused)": lambda: softmax_backward(y, dy, out=reused),
            "torch _softmax_backward_data": lambda: torch._softmax_backward_data(t_dy, t_y, -1, t_y.dtype),
        }
    cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    neighbour_script = Path(__file__).with_name("busy_neighbour.py")
    print(f"{args.kernel}, {rows} x {classes} float32, {torch.get_num_threads()} torch threads, huge-page madvise "
          f"{'off' if args.no_huge_pages else 'on'}; ms: p20 p50 p80 p95, then minor page faults per call")
    for phase in ("quiet", "busy"):
        neighbour = None
        if phase == "busy":
            neighbour = subprocess.Popen([sys.executable, str(neighbour_script), "--share", "0.5", "--cpu", str(cpu),
                                          "--seconds", "120"])
            time.sleep(0.3)
        try:
            for name, function in calls.items():
                *times, faults = percentiles(function)
                print(f"  {phase:5s} {name:34s}", " ".join(f"{value:7.2f}" for value in times), f"{faults:8.0f}")
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
