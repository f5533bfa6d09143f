"""Measured error of the kernels' own exp (``softmaxlab exp-accuracy``).

* float32: every float32 x whose exp is finite and non-zero after rounding to float32
  (about 2.2e9 inputs, exhaustive), against exp(x) computed in float64 by libm, for
  both float32 exponentials: ``exp32`` (float32 arithmetic; the float32 softmax,
  log-softmax and cross-entropy loops) and ``exp32_wide`` (float64 evaluation rounded
  once; where the argument is a float64: temperatures, margins, scale factors).  The
  reference carries 29 more bits than float32, so the measured error in float32 ULPs is
  exact to within 2**-28 ULP.  The inputs outside that range are checked to give
  exactly 0 and inf, and NaN to give NaN.  The kernels' form
  ``exp32_difference_floored(x, 0)``, and the explicit vector loop of the float32 rows
  (``store_exp32_floored``, ``_vector.row_exp32_store``), are checked to equal
  ``exp32(x)`` bit for bit for every float32 x <= 0.
* float64 (``exp64``): 10**8 uniform random inputs over the whole finite, non-zero
  range, 10**7 more in [-1, 1], and the ends of the range, against exp computed in
  x87 extended precision (``np.longdouble``, 64-bit significand; 11 more bits than
  float64), itself checked against mpmath at 50 digits on a sample; the kernels'
  ``exp64_difference_floored(x, 0)`` equals ``exp64(x)`` on every sampled x <= 0.

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

from softmaxlab.harness import tables
from softmaxlab.kernels._numerics.exp import exp32, exp32_difference_floored, exp32_wide, exp64, exp64_difference_floored
from softmaxlab.kernels._numerics.rows import store_exp32_floored

FLOAT32_EXP_BOUND_ULP = 1.0  # exp32, float32 arithmetic: SLEEF's u10 level (measured 0.87)
FLOAT32_WIDE_EXP_BOUND_ULP = 0.51  # exp32_wide: float64 evaluation rounded once
FLOAT64_EXP_BOUND_ULP = 1.0  # subnormal results round twice (the scaling, then the grid)
FLOAT64_EXP_NORMAL_BOUND_ULP = 0.66  # normal results: the final addition (0.5) + c r (< 0.1) + fit


@njit(cache=False)
def _ulp32(value):
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, |mantissa| in [0.5, 1)
    return math.ldexp(1.0, max(exponent - 1, -126) - 23)


# the float32 exponentials, in the order of the sweep's result columns
FLOAT32_FUNCTIONS = ("exp32", "exp32_wide")


@njit(cache=False)
def _vector_exp32(values):
    """The float32 rows' vector loop over ``values`` (x - 0, so exp(x) for x <= 0)."""
    out = np.empty_like(values)
    store_exp32_floored(values, np.float32(0.0), out, values[:0])
    return out


@njit(parallel=True, cache=False)
def _sweep_float32_chunk(bits, vector):
    """Per function (max ULP error, its input), count in range, wrong specials, kernel mismatches.

    Over float32 bit patterns: ``exp32`` (float32 arithmetic) and ``exp32_wide`` (float64
    evaluation rounded once) against libm's float64 exp; and, for every x <= 0, whether
    the kernels' forms, ``exp32_difference_floored(x, 0)`` and ``vector`` (the vector
    loop's results), equal ``exp32(x)`` bit for bit.
    """
    count = bits.shape[0]
    errors = np.zeros((2, count))
    in_range = np.zeros(count, dtype=np.int64)
    wrong_special = np.zeros(count, dtype=np.int64)
    mismatch = np.zeros(count, dtype=np.int64)
    values = bits.view(np.float32)
    for index in prange(count):
        x = values[index]
        ours = exp32(x)
        wide = exp32_wide(x)
        if x <= 0.0:
            kernel = exp32_difference_floored(x, np.float32(0.0))
            mismatch[index] = 0 if (kernel == ours and vector[index] == ours) else 1
        if x != x:
            wrong_special[index] = 0 if (ours != ours and wide != wide) else 1
            continue
        exact = math.exp(np.float64(x))
        rounded = np.float32(exact)
        if rounded == 0.0 or math.isinf(rounded):
            wrong_special[index] = 0 if (ours == rounded and wide == rounded) else 1
            continue
        in_range[index] = 1
        errors[0, index] = abs(np.float64(ours) - exact) / _ulp32(exact)
        errors[1, index] = abs(np.float64(wide) - exact) / _ulp32(exact)
    worst = np.empty(2)
    at = np.empty(2, dtype=np.float32)
    for function in range(2):
        position = int(np.argmax(errors[function]))
        worst[function] = errors[function, position]
        at[function] = values[position]
    return worst, at, in_range.sum(), wrong_special.sum(), mismatch.sum()


def sweep_float32(stride: int = 1, chunk_bits: int = 1 << 24, progress=None):
    """Max ULP error of the float32 exps over every ``stride``-th float32 bit pattern (both signs).

    Returns {"exp32": {...}, "exp32_wide": {...}, "inputs", "wrong_specials",
    "kernel_mismatches"}, each function's entry with "max_ulp" and "at".
    """
    worst = {name: {"max_ulp": 0.0, "at": float("nan")} for name in FLOAT32_FUNCTIONS}
    checked, wrong, mismatches = 0, 0, 0
    starts = range(0, 1 << 32, chunk_bits)
    for start in starts if progress is None else progress(starts):
        bits = np.arange(start, min(start + chunk_bits, 1 << 32), stride, dtype=np.uint64).astype(np.uint32)
        errors, at, in_range, wrong_special, mismatch = _sweep_float32_chunk(bits, _vector_exp32(bits.view(np.float32)))
        checked += int(in_range)
        wrong += int(wrong_special)
        mismatches += int(mismatch)
        for index, name in enumerate(FLOAT32_FUNCTIONS):
            if errors[index] > worst[name]["max_ulp"]:
                worst[name] = {"max_ulp": float(errors[index]), "at": float(at[index])}
    return {**worst, "inputs": checked, "wrong_specials": wrong, "kernel_mismatches": mismatches}


@njit(parallel=True, cache=False)
def _apply_exp64(x, out):
    """out = exp64(x); returns how many x <= 0 give a different exp64_difference_floored(x, 0)."""
    mismatch = np.zeros(x.shape[0], dtype=np.int64)
    for index in prange(x.shape[0]):
        out[index] = exp64(x[index])
        if x[index] <= 0.0:
            mismatch[index] = 0 if exp64_difference_floored(x[index], 0.0) == out[index] else 1
    return mismatch.sum()


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
    worst_error, worst_input, worst_normal, mismatches = 0.0, float("nan"), 0.0, 0
    tiny = np.finfo(np.float64).tiny
    starts = range(0, x.shape[0], batch)
    for start in starts if progress is None else progress(starts):
        part = x[start : start + batch]
        ours = np.empty_like(part)
        mismatches += int(_apply_exp64(part, ours))
        exact = np.exp(part.astype(np.longdouble))
        rounded = exact.astype(np.float64)
        keep = np.isfinite(rounded) & (rounded > 0)
        errors = np.abs(ours[keep].astype(np.longdouble) - exact[keep]) / _ulp64(rounded[keep])
        if errors.size and float(errors.max()) > worst_error:
            worst_error, worst_input = float(errors.max()), float(part[keep][int(np.argmax(errors))])
        normal = rounded[keep] >= tiny
        if normal.any():
            worst_normal = max(worst_normal, float(errors[normal].max()))
    return {
        "max_ulp": worst_error,
        "at": worst_input,
        "inputs": int(x.shape[0]),
        "max_ulp_normal": worst_normal,
        "kernel_mismatches": mismatches,
    }


def check_longdouble_reference(samples: int = 2000, seed: int = 7) -> float:
    """Largest disagreement, in float64 ULPs, between np.longdouble exp and mpmath."""
    import mpmath

    with mpmath.workdps(50):
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
                "function": name,
                "dtype": "float32",
                "inputs": f32["inputs"],
                "coverage": "exhaustive" if stride == 1 else f"every {stride}th",
                "max_ulp": round(f32[name]["max_ulp"], 4),
                "max_ulp_normal_results": None,
                "at_x": f32[name]["at"],
                "bound_ulp": bound,
                "wrong_specials": f32["wrong_specials"],
                "seconds": round(f32_seconds, 1),
            }
            for name, bound in (("exp32", FLOAT32_EXP_BOUND_ULP), ("exp32_wide", FLOAT32_WIDE_EXP_BOUND_ULP))
        ]
        + [
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
    table.to_csv(args.out, index=False)
    print(tables.markdown(table))
    print(f"longdouble reference vs mpmath (50 digits): max {reference_check:.4f} float64 ULP on 2000 samples")
    print(f"kernels' exp32_difference_floored(x, 0) or vector loop != exp32(x) for {f32['kernel_mismatches']} inputs x <= 0")
    print(f"kernels' exp64_difference_floored(x, 0) != exp64(x) for {f64['kernel_mismatches']} sampled x <= 0")
    print(f"wrote {args.out}")
    within = (
        f32["exp32"]["max_ulp"] <= FLOAT32_EXP_BOUND_ULP
        and f32["exp32_wide"]["max_ulp"] <= FLOAT32_WIDE_EXP_BOUND_ULP
        and f32["kernel_mismatches"] == 0
        and f64["kernel_mismatches"] == 0
        and f64["max_ulp"] <= FLOAT64_EXP_BOUND_ULP
        and f64["max_ulp_normal"] <= FLOAT64_EXP_NORMAL_BOUND_ULP
    )
    return 0 if within and f32["wrong_specials"] == 0 else 1
