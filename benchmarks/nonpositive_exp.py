"""What ``exp64_nonpositive`` saves: log_softmax_backward float64 and the float64 sigmoids, with and without it.

``exp64_nonpositive(x)`` has the bits of ``exp64(x)`` for x <= 0 in fewer operations: one
clamp, no argument correction, 2**k in one step (``kernels/_numerics/exp.py``).
log_softmax_backward's float64 write takes it for a row whose max of y is <= 0, as
log-probabilities are, and the general ``exp64`` otherwise; the sigmoid losses take it for
e^-|x|.  This script times, in one process on the Numba threads, in alternation,
``--rounds`` times (p50 of 20 calls each):

* ``log_softmax_backward`` at 4096 x 1000 float64 on log-probabilities, against the same
  inputs with each row's first y replaced by 1e-300 (a row max > 0: the general loop);
* e^-|x| / (1 + e^-|x|) over 4096 x 1000 float64 values, by each exponential.

Run: ``python benchmarks/nonpositive_exp.py [--rounds 11] [--threads 2]``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from timing import alternated, rounds_and_threads

SHAPE = (4096, 1000)


def _sigmoid_loop(exponential):
    """e^-|x| / (1 + e^-|x|) over a 2-D array, by ``exponential``, rows over the Numba threads."""

    @njit(parallel=True)
    def loop(x, out):
        for i in prange(x.shape[0]):
            for j in range(x.shape[1]):
                e = exponential(-abs(x[i, j]))
                out[i, j] = e / (1.0 + e)

    return loop


def main(argv=None):
    args = rounds_and_threads(__doc__.splitlines()[0], 11, "alternations", argv)
    from softmaxlab.kernels import log_softmax, log_softmax_backward
    from softmaxlab.kernels._numerics.exp import exp64, exp64_nonpositive

    rng = np.random.default_rng(0)
    y = log_softmax(rng.standard_normal(SHAPE) * 3)
    dy = rng.standard_normal(SHAPE)
    y_general = y.copy()
    y_general[:, 0] = 1e-300
    out = np.empty_like(y)
    x = rng.standard_normal(SHAPE) * 5
    general, nonpositive = _sigmoid_loop(exp64), _sigmoid_loop(exp64_nonpositive)
    sigmoid_general, sigmoid_nonpositive = np.empty_like(x), np.empty_like(x)
    general(x, sigmoid_general)
    nonpositive(x, sigmoid_nonpositive)
    assert sigmoid_general.tobytes() == sigmoid_nonpositive.tobytes()
    cases = {
        "log_softmax_backward": {
            "exp64": lambda: log_softmax_backward(y_general, dy, out=out),
            "exp64_nonpositive": lambda: log_softmax_backward(y, dy, out=out),
        },
        "sigmoid": {
            "exp64": lambda: general(x, sigmoid_general),
            "exp64_nonpositive": lambda: nonpositive(x, sigmoid_nonpositive),
        },
    }
    print(f"{SHAPE[0]} x {SHAPE[1]} float64, {args.threads} threads, p50 of 20 calls per round, ms")
    for name, variants in cases.items():
        times = alternated(variants, args.rounds, 20)
        ratios = np.array(times["exp64"]) / np.array(times["exp64_nonpositive"])
        print(f"{name}: " + ", ".join(f"{variant} {1e3 * np.median(values):.2f}" for variant, values in times.items())
              + f"; exp64 / exp64_nonpositive per round {ratios.min():.3f}-{ratios.max():.3f}, median {np.median(ratios):.3f}")


if __name__ == "__main__":
    main()
