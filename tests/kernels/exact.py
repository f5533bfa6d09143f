"""Exact references (mpmath, 50 significant digits) and ULP errors, for the kernel tests.

The ULP of an exact value v in a format is the spacing of that format at v:
2**(e - p + 1) for 2**e <= |v| < 2**(e+1), and the subnormal spacing below the
normal range.  The error of a computed y is |y - v| / ulp(v).
"""

from __future__ import annotations

import mpmath
import numpy as np

mpmath.mp.dps = 50

_MANTISSA_BITS = {np.dtype(np.float32): 23, np.dtype(np.float64): 52}
_MIN_EXPONENT = {np.dtype(np.float32): -126, np.dtype(np.float64): -1022}


def ulp(exact, dtype) -> mpmath.mpf:
    """The spacing of ``dtype`` at the exact value ``exact`` (an mpf)."""
    dtype = np.dtype(dtype)
    if exact == 0:
        exponent = _MIN_EXPONENT[dtype]
    else:
        exponent = max(int(mpmath.floor(mpmath.log(abs(exact), 2))), _MIN_EXPONENT[dtype])
    return mpmath.ldexp(1, exponent - _MANTISSA_BITS[dtype])


def ulp_errors(computed: np.ndarray, exact) -> np.ndarray:
    """|computed - exact| / ulp(exact) elementwise; exact is a nested list of mpf (or inf)."""
    flat_exact = np.asarray(exact, dtype=object).ravel()
    flat = computed.ravel()
    errors = np.empty(flat.shape[0])
    for index, (value, reference) in enumerate(zip(flat, flat_exact)):
        if mpmath.isinf(reference) or mpmath.isnan(reference):
            same = (np.isnan(value) and mpmath.isnan(reference)) or value == float(reference)
            errors[index] = 0.0 if same else np.inf
        else:
            errors[index] = float(abs(mpmath.mpf(float(value)) - reference) / ulp(reference, computed.dtype))
    return errors.reshape(computed.shape)


def _rows(x: np.ndarray):
    return x.reshape(-1, x.shape[-1])


def softmax(x: np.ndarray):
    """Exact softmax over the last axis of a finite array, as nested lists of mpf."""
    result = []
    for row in _rows(x):
        exps = [mpmath.exp(mpmath.mpf(float(v))) for v in row]
        total = mpmath.fsum(exps)
        result.append([e / total for e in exps])
    return result


def _max_and_rest(row):
    """(M, T) with M = max(row) and T = sum_k exp(x_k - M) - 1, summed without cancellation."""
    values = [mpmath.mpf(float(v)) for v in row]
    largest = max(values)
    rest = list(values)
    rest.remove(largest)
    return largest, mpmath.fsum(mpmath.exp(v - largest) for v in rest)


def log_softmax(x: np.ndarray):
    """(x_j - M) - log1p(T) at 400 digits: exact even when the result is ~1e-300 next to M."""
    result = []
    with mpmath.workdps(400):
        for row in _rows(x):
            largest, rest = _max_and_rest(row)
            log_total = mpmath.log1p(rest)
            result.append([+((mpmath.mpf(float(v)) - largest) - log_total) for v in row])
    return result


def logsumexp(x: np.ndarray):
    with mpmath.workdps(400):
        return [+(largest + mpmath.log1p(rest)) for largest, rest in map(_max_and_rest, _rows(x))]
