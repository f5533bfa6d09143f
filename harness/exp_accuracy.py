"""Measured error of the kernels' own exp (``softmaxlab exp-accuracy``).

* float32 (``exp32``): every float32 x whose exp is finite and non-zero after rounding
  to float32 (about 2.2e9 inputs, exhaustive), against exp(x) computed in float64 by
  libm.  The reference carries 29 more bits than float32, so the measured error in
  float32 ULPs is exact to within 2**-28 ULP.  The inputs outside that range are
  checked to give exactly 0 and inf, and NaN to give NaN.
* float64 (``exp64``): 10**8 uniform random inputs over the whole finite, non-zero
  range, 10**7 more in [-1, 1], and the ends of the range, against exp computed in
  x87 extended precision (``np.longdouble``, 64-bit significand; 11 more bits than
  float64), itself checked against mpmath at 50 digits on a sample.

The error of a result y for an exact value v is |y - v| / ulp(v), with ulp(v) the
spacing of the output format at v (2**(e - p + 1) for 2**e <= |v| < 2**(e+1), and the
smallest subnormal spacing below the normal range).

``--quick`` checks a strided subset (every 257th float32) and 10**6 float64 inputs.
"""

from __future__ import annotations

import math
import time

import numpy as np
from numba import njit, prange

from softmaxlab.kernels._exp import exp32, exp64

FLOAT32_EXP_BOUND_ULP = 0.51  # documented in kernels/_exp.py and the README
FLOAT64_EXP_BOUND_ULP = 1.0  # subnormal results round twice (the scaling, then the grid)
FLOAT64_EXP_NORMAL_BOUND_ULP = 0.66  # normal results: the final addition (0.5) + c r (< 0.1) + fit


@njit(cache=False)
def _ulp32(value):
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, |mantissa| in [0.5, 1)
    return math.ldexp(1.0, max(exponent - 1, -126) - 23)


@njit(parallel=True, cache=False)
def _sweep_float32_chunk(bits):
    """(max ULP error, its input, count in range, count of wrong specials) over float32 bit patterns."""
    count = bits.shape[0]
    errors = np.zeros(count)
    in_range = np.zeros(count, dtype=np.int64)
    wrong_special = np.zeros(count, dtype=np.int64)
    values = bits.view(np.float32)
    for index in prange(count):
        x = values[index]
        ours = exp32(x)
        if x != x:
            wrong_special[index] = 0 if ours != ours else 1
            continue
        exact = math.exp(np.float64(x))
        rounded = np.float32(exact)
        if rounded == 0.0 or math.isinf(rounded):
            wrong_special[index] = 0 if ours == rounded else 1
            continue
        in_range[index] = 1
        errors[index] = abs(np.float64(ours) - exact) / _ulp32(exact)
    worst = int(np.argmax(errors))
    return errors[worst], values[worst], in_range.sum(), wrong_special.sum()


def sweep_float32(stride: int = 1, chunk_bits: int = 1 << 24, progress=None):
    """Max ULP error of exp32 over every ``stride``-th float32 bit pattern (both signs)."""
    worst_error, worst_input, checked, wrong = 0.0, float("nan"), 0, 0
    starts = range(0, 1 << 32, chunk_bits)
    for start in starts if progress is None else progress(starts):
        bits = np.arange(start, min(start + chunk_bits, 1 << 32), stride, dtype=np.uint64).astype(np.uint32)
        error, value, in_range, wrong_special = _sweep_float32_chunk(bits)
        checked += int(in_range)
        wrong += int(wrong_special)
        if error > worst_error:
            worst_error, worst_input = float(error), float(value)
    return {"max_ulp": worst_error, "at": worst_input, "inputs": checked, "wrong_specials": wrong}


@njit(parallel=True, cache=False)
def _apply_exp64(x, out):
    for index in prange(x.shape[0]):
        out[index] = exp64(x[index])


def _ulp64(exact: np.ndarray) -> np.ndarray:
    exponent = np.floor(np.log2(np.abs(exact))).astype(np.int64)
    return np.ldexp(np.ones_like(exact, dtype=np.float64), np.maximum(exponent, -1022) - 52)


def float64_inputs(count: int, seed: int = 20261121) -> np.ndarray:
    """Uniform over the finite non-zero range, a tenth more in [-1, 1], and the range ends."""
    rng = np.random.default_rng(seed)
    low, high = math.log(np.nextafter(0.0, 1.0)), math.log(np.finfo(np.float64).max)
    ends = np.array([low, np.nextafter(low, 0.0), high, np.nextafter(high, 0.0), -1e-300, 1e-300, 0.0, -0.0])
    return np.concatenate([rng.uniform(low, high, count), rng.uniform(-1.0, 1.0, count // 10), ends])


def sweep_float64(count: int, batch: int = 10_000_000, progress=None):
    """Max ULP error of exp64 over ``float64_inputs(count)`` against np.longdouble exp."""
    x = float64_inputs(count)
    worst_error, worst_input, worst_normal = 0.0, float("nan"), 0.0
    tiny = np.finfo(np.float64).tiny
    starts = range(0, x.shape[0], batch)
    for start in starts if progress is None else progress(starts):
        part = x[start : start + batch]
        ours = np.empty_like(part)
        _apply_exp64(part, ours)
        exact = np.exp(part.astype(np.longdouble))
        rounded = exact.astype(np.float64)
        keep = np.isfinite(rounded) & (rounded > 0)
        errors = np.abs(ours[keep].astype(np.longdouble) - exact[keep]) / _ulp64(rounded[keep])
        if errors.size and float(errors.max()) > worst_error:
            worst_error, worst_input = float(errors.max()), float(part[keep][int(np.argmax(errors))])
        normal = rounded[keep] >= tiny
        if normal.any():
            worst_normal = max(worst_normal, float(errors[normal].max()))
    return {"max_ulp": worst_error, "at": worst_input, "inputs": int(x.shape[0]), "max_ulp_normal": worst_normal}


def check_longdouble_reference(samples: int = 2000, seed: int = 7) -> float:
    """Largest disagreement, in float64 ULPs, between np.longdouble exp and mpmath."""
    import mpmath

    mpmath.mp.dps = 50
    x = float64_inputs(samples, seed)
    exact = np.exp(x.astype(np.longdouble))
    worst = 0.0
    for value, approx in zip(x, exact):
        reference = mpmath.exp(mpmath.mpf(float(value)))
        if reference == 0 or not np.isfinite(float(reference)):
            continue
        ulp = float(_ulp64(np.array([float(reference)]))[0])
        worst = max(worst, float(abs(mpmath.mpf(str(approx)) - reference) / ulp))
    return worst


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="every 257th float32, 10**6 float64 inputs")
    parser.add_argument("--out", default="results/exp_accuracy.csv", help="CSV of the table")


def run(args) -> int:
    import pandas as pd
    from tqdm import tqdm

    stride, count = (257, 1_000_000) if args.quick else (1, 100_000_000)
    started = time.perf_counter()
    f32 = sweep_float32(stride=stride, progress=lambda it: tqdm(it, desc="float32 sweep", unit="chunk"))
    f32_seconds = time.perf_counter() - started
    started = time.perf_counter()
    f64 = sweep_float64(count, progress=lambda it: tqdm(it, desc="float64 sample", unit="batch"))
    f64_seconds = time.perf_counter() - started
    reference_check = check_longdouble_reference()
    table = pd.DataFrame(
        [
            {
                "function": "exp32",
                "dtype": "float32",
                "inputs": f32["inputs"],
                "coverage": "exhaustive" if stride == 1 else f"every {stride}th",
                "max_ulp": round(f32["max_ulp"], 4),
                "max_ulp_normal_results": None,
                "at_x": f32["at"],
                "bound_ulp": FLOAT32_EXP_BOUND_ULP,
                "wrong_specials": f32["wrong_specials"],
                "seconds": round(f32_seconds, 1),
            },
            {
                "function": "exp64",
                "dtype": "float64",
                "inputs": f64["inputs"],
                "coverage": "random + ends",
                "max_ulp": round(f64["max_ulp"], 4),
                "max_ulp_normal_results": round(f64["max_ulp_normal"], 4),
                "at_x": f64["at"],
                "bound_ulp": FLOAT64_EXP_BOUND_ULP,
                "wrong_specials": 0,
                "seconds": round(f64_seconds, 1),
            },
        ]
    )
    print(table.to_markdown(index=False))
    print(f"longdouble reference vs mpmath (50 digits): max {reference_check:.4f} float64 ULP on 2000 samples")
    table.to_csv(args.out, index=False)
    print(f"wrote {args.out}")
    within = (
        f32["max_ulp"] <= FLOAT32_EXP_BOUND_ULP
        and f64["max_ulp"] <= FLOAT64_EXP_BOUND_ULP
        and f64["max_ulp_normal"] <= FLOAT64_EXP_NORMAL_BOUND_ULP
    )
    return 0 if within and f32["wrong_specials"] == 0 else 1
