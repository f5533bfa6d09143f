"""Peak extra memory of a linear cross-entropy's forward and backward, one fresh process each.

For each implementation the script starts a fresh Python process that:

1. imports what it needs and creates the inputs (x (N, D), W (C, D), targets; float32),
   without temporaries of their size (a temporary would raise the high-water mark that
   the baseline reads, and hide the measured call's first few hundred MB);
2. warms up: one call of the same implementation on a tiny problem (N=8, D=16, C=64)
   forward and backward, so that Numba's compilation (or torch's lazy initialization),
   whose memory counts in the high-water mark, happens before the baseline;
3. reads the baseline: ``ru_maxrss`` (the process's resident high-water mark, KiB on
   Linux) after the warm-up.  A high-water mark never goes down, so the baseline is the
   larger of the warm-up's peak and the memory held after it;
4. runs the forward and backward once at full size and reads ``ru_maxrss`` again.

The extra peak is the second reading minus the baseline.  Because the baseline is itself a
high-water mark, the figure is exact only when the measured call climbs above the
warm-up's peak, which it does here by hundreds of MB.  It includes the outputs every
implementation must allocate (grad_input N x D and grad_weight C x D: 258 MiB of the
figures at the default shape), so the script also prints the extra peak minus those
outputs: what the implementation allocates beyond its results.

Implementations:

* ``softmaxlab``: ``linear_cross_entropy_forward_backward`` with the default budget;
* ``torch_composition``: ``F.cross_entropy(x @ W.T, t)`` and ``backward()`` (the logits and
  their gradient materialized);
* ``torch_linear_cross_entropy``: ``F.linear_cross_entropy`` (torch 2.13), the reference
  path (``options=None``, its default) and the chunked one
  (``options=torch.nn.LinearCrossEntropyOptions()``).

Usage (from outside the repository's root, whose ``adapters/torch`` folder would shadow
torch when the root is the working directory)::

    python benchmarks/linear_cross_entropy_memory.py [--rows 1024 --features 512 --classes 131072]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

IMPLEMENTATIONS = ("softmaxlab", "torch_composition", "torch_linear_cross_entropy",
                   "torch_linear_cross_entropy_chunked")

CHILD = r"""
import json, resource, sys
rows, features, classes, name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import numpy as np

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

generator = np.random.default_rng(0)

def inputs(n, d, c):
    # in place: a temporary of W's size would raise the high-water mark the baseline reads
    x = generator.standard_normal((n, d), dtype=np.float32)
    w = generator.standard_normal((c, d), dtype=np.float32)
    w *= 0.05
    t = generator.integers(0, c, size=n)
    return x, w, t

if name == "softmaxlab":
    from softmaxlab.kernels import linear_cross_entropy_forward_backward

    def run(x, w, t):
        return linear_cross_entropy_forward_backward(x, w, t)
else:
    import torch
    import torch.nn.functional as F

    def run(x, w, t):
        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(w).requires_grad_()
        tt = torch.from_numpy(t)
        if name == "torch_composition":
            loss = F.cross_entropy(tx @ tw.T, tt)
        elif name == "torch_linear_cross_entropy":
            loss = F.linear_cross_entropy(tx, tw, tt)
        else:
            loss = F.linear_cross_entropy(tx, tw, tt, options=torch.nn.LinearCrossEntropyOptions())
        loss.backward()
        return loss.detach().numpy(), tx.grad.numpy(), tw.grad.numpy()

small = inputs(8, 16, 64)
run(*small)
run(*small)
large = inputs(rows, features, classes)
baseline = peak_mib()
result = run(*large)
peak = peak_mib()
outputs = (rows * features + classes * features) * 4 / 2**20
print(json.dumps(dict(implementation=name, baseline_mib=round(baseline, 1), peak_mib=round(peak, 1),
                      extra_mib=round(peak - baseline, 1), outputs_mib=round(outputs, 1),
                      extra_beyond_outputs_mib=round(peak - baseline - outputs, 1),
                      loss=float(result[0]))))
"""


def measure(name, rows, features, classes):
    """The child's JSON line for one implementation (a fresh process, run outside the repository)."""
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(rows), str(features), str(classes), name],
        capture_output=True, text=True, check=True, cwd=os.path.expanduser("~"),
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--classes", type=int, default=131072)
    parser.add_argument("--only", choices=IMPLEMENTATIONS, action="append")
    arguments = parser.parse_args(argv)
    for name in arguments.only or IMPLEMENTATIONS:
        try:
            print(json.dumps(measure(name, arguments.rows, arguments.features, arguments.classes)), flush=True)
        except subprocess.CalledProcessError as error:  # torch missing, or the run failed
            print(json.dumps(dict(implementation=name, error=error.stderr.strip().splitlines()[-1:])), flush=True)


if __name__ == "__main__":
    main()
