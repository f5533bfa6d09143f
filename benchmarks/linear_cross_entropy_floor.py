"""How fast can a fused linear cross-entropy be on this machine?  The GEMM floor of two schedules.

The fused loss (``kernels/_linear_cross_entropy.py``) does 4 GEMMs of N x D x C: the logits
twice (the softmax's normalizer must be known before any gradient, and keeping the logits
between the passes is the N x C memory the loss avoids), G W and G^T x.  The torch
composition does 3 and keeps the logits.  This script times, in one process, with the
same threads for NumPy's BLAS and torch:

* ``4 GEMMs``: the fused loss's products alone, one fixed tile (1024 rows x 2048 classes)
  at a time, nothing else: a lower bound of the fused loss's time;
* ``3 GEMMs, row strips of R``: the other schedule that bounds memory, every class of R
  rows at a time (R x C logits kept: 3 GEMMs), grad_weight accumulated over the strips
  (its C x D read and written N / R times: by the GEMM itself, beta = 1, through NumPy's
  bundled OpenBLAS where it is found, else a product and an addition); the softmax stands
  in as one exp pass;
* ``softmaxlab``: the fused loss itself (``linear_cross_entropy_forward_backward``);
* ``torch``: ``F.cross_entropy(x @ W.T, t)`` and its backward.

Run: ``python benchmarks/linear_cross_entropy_floor.py [--classes 32768 131072] [--repeats 5]``.
Prints the best of ``--repeats`` calls per line and each line's ratio torch / line.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os

import numba
import numpy as np
from timing import best_seconds

ROWS, FEATURES, CLASS_TILE, ROW_TILE = 1024, 512, 2048, 1024


def four_gemms(x, weight):
    rows, classes = x.shape[0], weight.shape[0]
    logits = np.empty((min(rows, ROW_TILE), CLASS_TILE), np.float32)
    grad_x = np.empty((min(rows, ROW_TILE), x.shape[1]), np.float32)
    grad_weight = np.empty_like(weight)
    for start in range(0, classes, CLASS_TILE):
        tile = weight[start : start + CLASS_TILE]
        np.matmul(x, tile.T, out=logits)  # pass 1
    for start in range(0, classes, CLASS_TILE):
        tile = weight[start : start + CLASS_TILE]
        np.matmul(x, tile.T, out=logits)  # pass 2: the logits again
        np.matmul(logits, tile, out=grad_x)
        np.matmul(logits.T, x, out=grad_weight[start : start + CLASS_TILE])


def _bundled_sgemm():
    """cblas_sgemm of the OpenBLAS bundled with NumPy's wheels (ILP64), or None."""
    pattern = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas64_*.so")
    for path in glob.glob(pattern):
        function = getattr(ctypes.CDLL(path), "scipy_cblas_sgemm64_", None)
        if function is not None:
            i64, pointer = ctypes.c_int64, ctypes.c_void_p
            function.restype = None
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, ctypes.c_float, pointer,
                                 i64, pointer, i64, ctypes.c_float, pointer, i64]
            return function
    return None


SGEMM = _bundled_sgemm()


def accumulate_transposed_product(a, b, c, first):
    """c = a^T b (``first``) or c += a^T b, all float32 C-contiguous."""
    if SGEMM is None:
        if first:
            np.matmul(a.T, b, out=c)
        else:
            c += a.T @ b
        return
    row_major, no_transpose, transpose = 101, 111, 112
    SGEMM(row_major, transpose, no_transpose, c.shape[0], c.shape[1], a.shape[0], 1.0, a.ctypes.data, a.shape[1],
          b.ctypes.data, b.shape[1], 0.0 if first else 1.0, c.ctypes.data, c.shape[1])


def three_gemms(x, weight, strip_rows):
    rows, classes = x.shape[0], weight.shape[0]
    strip = np.empty((strip_rows, classes), np.float32)
    grad_x = np.zeros((rows, x.shape[1]))
    grad_weight = np.empty_like(weight)
    product = np.empty((strip_rows, x.shape[1]), np.float32)
    for first in range(0, rows, strip_rows):
        block = x[first : first + strip_rows]
        for start in range(0, classes, CLASS_TILE):
            np.matmul(block, weight[start : start + CLASS_TILE].T, out=strip[:, start : start + CLASS_TILE])
        np.exp(strip, out=strip)  # stands in for the statistics and G
        for start in range(0, classes, CLASS_TILE):
            tile = strip[:, start : start + CLASS_TILE]
            np.matmul(tile, weight[start : start + CLASS_TILE], out=product)
            grad_x[first : first + strip_rows] += product
        accumulate_transposed_product(strip, block, grad_weight, first == 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument("--strips", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    import torch

    from softmaxlab.kernels import linear_cross_entropy_forward_backward

    threads = numba.get_num_threads()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ROWS, FEATURES), dtype=np.float32)
    for classes in args.classes:
        weight = rng.standard_normal((classes, FEATURES), dtype=np.float32) * np.float32(0.05)
        target = rng.integers(0, classes, ROWS)

        def composition():
            x_t = torch.from_numpy(x).requires_grad_()
            w_t = torch.from_numpy(weight).requires_grad_()
            torch.nn.functional.cross_entropy(x_t @ w_t.T, torch.from_numpy(target)).backward()

        lines = {"torch composition": composition,
                 "softmaxlab": lambda: linear_cross_entropy_forward_backward(x, weight, target),
                 "4 GEMMs alone": lambda: four_gemms(x, weight)}
        for strip in args.strips:
            lines[f"3 GEMMs, row strips of {strip} ({strip * classes * 4 >> 20} MiB)"] = (
                lambda strip=strip: three_gemms(x, weight, strip))
        measured = {name: best_seconds(function, args.repeats) for name, function in lines.items()}
        flops = 2.0 * ROWS * FEATURES * classes
        print(f"N={ROWS} D={FEATURES} C={classes} float32, {threads} threads (one GEMM: {flops / 1e9:.1f} GFLOP; "
              f"grad_weight accumulated by {'the bundled cblas_sgemm' if SGEMM else 'a product and an addition'})")
        for name, seconds in measured.items():
            ratio = measured["torch composition"] / seconds
            print(f"  {name:40s} {seconds * 1e3:8.1f} ms   torch / this {ratio:5.2f}")


if __name__ == "__main__":
    main()
