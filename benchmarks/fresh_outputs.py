"""What a fresh 64 MB output costs: softmax_backward at 512 x 32000 float32, quiet and beside a busy neighbour.

    python benchmarks/fresh_outputs.py [--no-huge-pages]

Every call of a kernel returns a new array, and at 512 x 32000 float32 that is 65 MB whose
pages are faulted in by the first write.  NumPy asks for transparent huge pages on large
arrays (``madvise``); with ``defrag`` set to ``madvise`` (this machine) the kernel may
compact memory to find 2 MiB pages inside the fault.  This script times, in one process,
the percentiles (p20, p50, p80, p95) of 150 calls of:

* ``softmax_backward`` as users call it (a fresh output each call);
* ``softmax_backward(y, dy, out=reused)``: one output reused across calls (no page faults);
* torch's ``_softmax_backward_data`` (its own fresh output, from its allocator);

first quiet, then beside ``busy_neighbour.py`` (half of the last CPU).  With
``--no-huge-pages`` NumPy's ``madvise`` is switched off for the process
(``np._core.multiarray._set_madvise_hugepage(False)``, a process-wide switch: for
measuring, not for a library to flip).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from timing import call_seconds


def percentiles(function, calls=150):
    """p20, p50, p80, p95 of ``calls`` timed calls after one untimed call, in ms."""
    return np.percentile(call_seconds(function, calls), [20, 50, 80, 95]) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-huge-pages", action="store_true", help="switch NumPy's huge-page madvise off")
    args = parser.parse_args(argv)
    if args.no_huge_pages:
        np._core.multiarray._set_madvise_hugepage(False)
    import torch

    from softmaxlab.kernels import softmax, softmax_backward

    rng = np.random.default_rng(0)
    y = softmax((rng.standard_normal((512, 32000)) * 3).astype(np.float32))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    t_y, t_dy = torch.from_numpy(y), torch.from_numpy(dy)
    reused = np.empty_like(y)
    calls = {
        "softmax_backward (fresh output)": lambda: softmax_backward(y, dy),
        "softmax_backward(..., out=reused)": lambda: softmax_backward(y, dy, out=reused),
        "torch _softmax_backward_data": lambda: torch._softmax_backward_data(t_dy, t_y, -1, t_y.dtype),
    }
    cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    neighbour_script = Path(__file__).with_name("busy_neighbour.py")
    print(f"512 x 32000 float32, huge-page madvise {'off' if args.no_huge_pages else 'on'}; ms: p20 p50 p80 p95")
    for phase in ("quiet", "busy"):
        neighbour = None
        if phase == "busy":
            neighbour = subprocess.Popen([sys.executable, str(neighbour_script), "--share", "0.5", "--cpu", str(cpu),
                                          "--seconds", "120"])
            time.sleep(0.3)
        try:
            for name, function in calls.items():
                print(f"  {phase:5s} {name:34s}", " ".join(f"{value:7.2f}" for value in percentiles(function)))
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
