"""The long double engine: unevaluated pairs of x87 80-bit long doubles (about 128 bits).

Vectorized, for rows of 10^6 classes where mpmath would take minutes; measured against
mpmath-50 on every regime within 3e-8 ULP of float64 for the five normalizer references
(tests/harness/test_exact.py), and re-checked by every accuracy run on a subset of its own
inputs (``reference_check.csv``).  :func:`longdouble_rows` is the softmax work of a set of
rows (the counterpart of ``engine.MpRow``); the pair arithmetic below is also what the
long double cross-entropy reference (``losses.py``) uses.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import mpmath
import numpy as np

from ..metrics import Exact
from .engine import LONGDOUBLE_ENGINE, MPMATH_DIGITS

# A value is an unevaluated pair hi + lo of long doubles (about 2 * 64 bits), handled with
# the error-free transformations of Dekker and Knuth (two_sum, two_prod with Veltkamp's
# split at 2**32 + 1 for a 64-bit significand).  Why pairs and not plain long doubles: a
# gradient entry dx_j = a_j (dy_j - sum_k a_k dy_k) cancels when dy_j is close to the
# dot product, and plain long doubles (2**-64) were measured up to 22 float64 ULPs off
# there on 16000 random entries; with the pairs the dot product is good to ~2**-88
# absolute and such entries stay exact.
#
# exp(d) for d = s + t <= 0 (s, t from two_sum(x, -M), exact): d = -n - f / 4096 + r with
# -n = trunc(s), -f = ceil(4096 (s + n)), -2**-12 < r <= 0 (both subtractions exact: each
# result is a multiple of ulp(s) smaller than s), so exp(d) = E[n] * F[f] * exp(r + t),
# the tables E[n] = e^-n (n = 0..1100) and F[f] = e^(-f/4096) (f = 0..4095) computed
# once with mpmath-50 and stored as pairs, and exp(r + t) by its Taylor series
# to degree 7 (truncation 2**-111; the tail beyond 1 + r is summed in long double, error
# ~2**-88).  Below e**-1100 a plain ``np.exp`` is used: such terms are far below every
# float64 result and every sum they enter.

_LD = np.longdouble
_SPLITTER = _LD(2**32 + 1)
_EXP_TABLE_INTEGERS = 1100
_EXP_TABLE_STEPS = 4096
_EXP_TABLES: dict = {}


def two_sum(a, b):
    total = a + b
    b_virtual = total - a
    return total, (a - (total - b_virtual)) + (b - b_virtual)


def fast_two_sum(a, b):
    """For |a| >= |b| (or a = 0): a + b = total + error exactly."""
    total = a + b
    return total, b - (total - a)


def _split(a):
    scaled = _SPLITTER * a
    high = scaled - (scaled - a)
    return high, a - high


def _two_prod(a, b):
    product = a * b
    a_high, a_low = _split(a)
    b_high, b_low = _split(b)
    error = ((a_high * b_high - product) + a_high * b_low + a_low * b_high) + a_low * b_low
    return product, error


def pair_mul(a_hi, a_lo, b_hi, b_lo):
    product, error = _two_prod(a_hi, b_hi)
    return fast_two_sum(product, error + (a_hi * b_lo + a_lo * b_hi))


def pair_div(a_hi, a_lo, b_hi, b_lo):
    quotient = a_hi / b_hi
    product, error = _two_prod(quotient, b_hi)
    remainder = (((a_hi - product) - error) + a_lo) - quotient * b_lo
    return fast_two_sum(quotient, remainder / b_hi)


def pair_add(a_hi, a_lo, b_hi, b_lo):
    total, error = two_sum(a_hi, b_hi)
    return fast_two_sum(total, error + (a_lo + b_lo))


def pair_row_sum(hi, lo):
    """Sum of pairs along axis 1 (pairwise; every addition of the high parts is error-free)."""
    while hi.shape[1] > 1:
        half = hi.shape[1] // 2
        total, error = two_sum(hi[:, :half], hi[:, half : 2 * half])
        low = lo[:, :half] + lo[:, half : 2 * half] + error
        if hi.shape[1] % 2:
            total = np.concatenate([total, hi[:, -1:]], axis=1)
            low = np.concatenate([low, lo[:, -1:]], axis=1)
        hi, lo = total, low
    return fast_two_sum(hi[:, 0], lo[:, 0])


def _mp_to_longdouble_pair(value) -> tuple:
    high = _LD(mpmath.nstr(value, 30, strip_zeros=False))
    numerator, denominator = high.as_integer_ratio()
    low = _LD(mpmath.nstr(value - mpmath.mpf(numerator) / denominator, 30, strip_zeros=False))
    return high, low


def _exp_tables():
    if not _EXP_TABLES:
        with mpmath.workdps(MPMATH_DIGITS):
            integers = [_mp_to_longdouble_pair(mpmath.exp(-n)) for n in range(_EXP_TABLE_INTEGERS + 1)]
            steps = [
                _mp_to_longdouble_pair(mpmath.exp(-mpmath.mpf(f) / _EXP_TABLE_STEPS))
                for f in range(_EXP_TABLE_STEPS)
            ]
        _EXP_TABLES["integer"] = tuple(np.array(part, dtype=_LD) for part in zip(*integers))
        _EXP_TABLES["step"] = tuple(np.array(part, dtype=_LD) for part in zip(*steps))
    return _EXP_TABLES["integer"], _EXP_TABLES["step"]


def _exp_pair(s, t):
    """exp(s + t) as a pair, for finite s <= 0 and |t| <= ulp(s) (see above)."""
    (int_hi, int_lo), (step_hi, step_lo) = _exp_tables()
    whole = np.trunc(s)  # -n
    fraction = s - whole  # exact, in (-1, 0]
    step = np.ceil(fraction * _EXP_TABLE_STEPS)  # -f
    r = fraction - step / _EXP_TABLE_STEPS  # exact, in (-2**-12, 0]
    far = whole < -_EXP_TABLE_INTEGERS
    integer_index = np.where(far, 0, -whole).astype(np.int64)
    step_index = (-step).astype(np.int64)
    one = _LD(1)
    tail = r * r * (one / 2 + r * (one / 6 + r * (one / 24 + r * (one / 120 + r * (one / 720 + r / 5040)))))
    hi, lo = two_sum(one, r)
    hi, lo = fast_two_sum(hi, lo + (t + (tail + t * r)))
    hi, lo = pair_mul(hi, lo, step_hi[step_index], step_lo[step_index])
    hi, lo = pair_mul(hi, lo, int_hi[integer_index], int_lo[integer_index])
    hi = np.where(far, np.exp(s + t), hi)
    lo = np.where(far, 0, lo)
    return hi, lo


def _log1p_pair(r_hi, r_lo):
    """log(1 + r) as a pair for r = r_hi + r_lo >= 0, to ~2**-100 relative.

    Below 2**-20 the series r - r^2/2 + r^3/3 (truncation r^4/4 < 2**-82 r); above, one
    Newton step on the long double log1p: log(1+r) = L + log((1+r) e^-L) ~ L + ((1+r) e^-L - 1),
    the product in pairs (absolute 2**-128, relative 2**-108 at r = 2**-20).
    """
    estimate = np.log1p(r_hi + r_lo)
    back_hi, back_lo = _exp_pair(-estimate, np.zeros_like(estimate))
    one_plus_hi, one_plus_lo = two_sum(_LD(1), r_hi)
    product_hi, product_lo = pair_mul(*fast_two_sum(one_plus_hi, one_plus_lo + r_lo), back_hi, back_lo)
    newton = fast_two_sum(estimate, (product_hi - 1) + product_lo)
    series = pair_add(r_hi, r_lo, r_hi * r_hi * (r_hi / 3 - _LD(0.5)), np.zeros_like(r_hi))
    small = r_hi < _LD(2.0**-20)
    return np.where(small, series[0], newton[0]), np.where(small, series[1], newton[1])


@dataclass
class LongDoubleRows:
    """The long double work of a set of rows (arrays (rows, classes) unless noted)."""

    shifted_hi: np.ndarray  # x - M = shifted_hi + shifted_lo exactly; -inf at masked entries
    shifted_lo: np.ndarray
    probability_hi: np.ndarray  # a = e^(x - M) / S as a pair; 0 in masked rows
    probability_lo: np.ndarray
    log_total_hi: np.ndarray  # log S as a pair, (rows, 1)
    log_total_lo: np.ndarray
    largest: np.ndarray  # M, (rows, 1); -inf for all -inf rows
    masked_rows: np.ndarray  # (rows,) bool
    winner: np.ndarray  # (rows,) index of one maximum


_ROWS_CACHE: dict = {}
_CHUNK_ELEMENTS = 1 << 20


def longdouble_rows(x: np.ndarray) -> LongDoubleRows:
    """The long double work of ``x``, in chunks of rows; the last result is cached by content."""
    key = hashlib.sha1(x.tobytes()).hexdigest() + x.dtype.str + str(x.shape)
    if key not in _ROWS_CACHE:
        step = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1]))
        parts = [_rows_chunk(x[start : start + step]) for start in range(0, x.shape[0], step)]
        joined = LongDoubleRows(*(np.concatenate(arrays) for arrays in zip(*(vars(p).values() for p in parts))))
        _ROWS_CACHE.clear()
        _ROWS_CACHE[key] = joined
    return _ROWS_CACHE[key]


def _rows_chunk(x: np.ndarray) -> LongDoubleRows:
    values = x.astype(_LD)
    masked = ~np.isfinite(values)
    masked_rows = masked.all(axis=1)
    largest = values.max(axis=1, keepdims=True)
    safe_largest = np.where(masked_rows[:, None], 0, largest)
    s, t = two_sum(np.where(masked, 0, values), -safe_largest)  # x - M = s + t exactly
    exp_hi, exp_lo = _exp_pair(s, t)
    exp_hi[masked] = 0
    exp_lo[masked] = 0
    # S = 1 + rest, the 1 being one maximum's e^0 and rest the sum of all the other terms
    # (summed on their own: S - 1 from a sum of pairs would keep only ~2**-128 absolute,
    # nothing of a rest like e^-160); log S = log1p(rest)
    others_hi, others_lo = exp_hi.copy(), exp_lo.copy()
    winner = np.argmax(np.where(masked, -np.inf, values), axis=1)
    others_hi[np.arange(values.shape[0]), winner] = 0
    others_lo[np.arange(values.shape[0]), winner] = 0
    rest_hi, rest_lo = pair_row_sum(others_hi, others_lo)
    rest_hi = np.where(masked_rows, 0, rest_hi)[:, None]
    rest_lo = np.where(masked_rows, 0, rest_lo)[:, None]
    total_hi, total_lo = pair_add(np.ones_like(rest_hi), np.zeros_like(rest_lo), rest_hi, rest_lo)
    probability_hi, probability_lo = pair_div(exp_hi, exp_lo, total_hi, total_lo)
    log_total_hi, log_total_lo = _log1p_pair(rest_hi, rest_lo)
    shifted_hi = np.where(masked, -np.inf, s)
    shifted_lo = np.where(masked, 0, t)
    return LongDoubleRows(
        shifted_hi, shifted_lo, probability_hi, probability_lo, log_total_hi, log_total_lo, largest, masked_rows,
        winner,
    )


def longdouble_to_exact(hi, lo=None) -> Exact:
    """A long double (or a pair of them) -> Exact float64 pair."""
    high = hi.astype(np.float64)
    with np.errstate(invalid="ignore"):
        rest = hi - high
        if lo is not None:
            rest = rest + lo
        low = rest.astype(np.float64)
        total = high + low
        low = low - (total - high)
        finite = np.isfinite(high) & np.isfinite(total)
        high = np.where(finite, total, high)
        low = np.where(finite, low, 0.0)
    return Exact(high, low, LONGDOUBLE_ENGINE)
