"""The mpmath engine: the precision, the engine names, one row of softmax at 50 digits, one converter.

Every exact reference of the harness (normalizers, losses, margins) is computed with
what this module holds:

* :data:`MPMATH_DIGITS` (50 significant digits, 166 bits), the engine names and
  :func:`resolve_engine` ("auto" picks mpmath-50 up to :data:`MPMATH_MAX_ELEMENTS` input
  elements and the long double engine of ``longdouble.py`` above);
* :func:`to_mpf` (a float32/float64 value as an exact mpf) and :func:`to_exact` (mpf
  values -> :class:`~softmaxlab.harness.metrics.Exact` float64 pairs ``hi + lo``), the
  one converter each way;
* :class:`MpRow`, the softmax of one row at 50 digits, with the sum of exponentials kept
  as ``S = 1 + rest`` (the max's own e^0 apart) and ``log S = log1p(rest)``: the digits
  of a sum that is 1 + e^-120 (50 digits alone round it to 1) survive, and a loss of
  e^-200 keeps its digits; :func:`mp_rows` builds them for the rows of an array, cached
  by the rows' bytes so that the five normalizer references of one input cost one set
  of exponentials;
* :func:`cached_result`, the cache of whole references (the margins' matrices).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import mpmath
import numpy as np

from ..metrics import Exact

MPMATH_DIGITS = 50
MPMATH_ENGINE = f"mpmath-{MPMATH_DIGITS}"
LONGDOUBLE_ENGINE = "longdouble"
ENGINES = ("auto", MPMATH_ENGINE, LONGDOUBLE_ENGINE)

# Inputs up to this many elements are referenced with mpmath in "auto" mode.
MPMATH_MAX_ELEMENTS = 300_000

LONGDOUBLE_IS_EXTENDED = np.finfo(np.longdouble).nmant >= 63


def resolve_engine(engine: str, size: int) -> str:
    """The engine that ``engine`` ("auto" or a name) means for an input of ``size`` elements."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "auto":
        if size <= MPMATH_MAX_ELEMENTS or not LONGDOUBLE_IS_EXTENDED:
            return MPMATH_ENGINE
        return LONGDOUBLE_ENGINE
    if engine == LONGDOUBLE_ENGINE and not LONGDOUBLE_IS_EXTENDED:
        raise ValueError(f"engine {LONGDOUBLE_ENGINE!r} needs an extended long double; this platform's has "
                         f"{np.finfo(np.longdouble).nmant + 1} bits")
    return engine


def require_mpmath(engine: str, name: str, size: int = 0) -> None:
    """NotImplementedError unless ``engine`` means mpmath-50 for ``size`` elements (the mpmath-only references)."""
    if resolve_engine(engine, size) != MPMATH_ENGINE:
        raise NotImplementedError(f"{name}: only the {MPMATH_ENGINE!r} engine is provided, got {engine!r}")


def check_logits(name: str, x) -> np.ndarray:
    """``x`` as a 2-D float32/float64 array of finite values or -inf (TypeError/ValueError otherwise)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, classes), got shape {x.shape}")
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if np.isnan(x).any() or np.isposinf(x).any():
        raise ValueError(f"{name} must hold finite values or -inf (the regimes' inputs), got NaN or +inf")
    return x


# ---- the converters -------------------------------------------------------------------------


def to_mpf(value):
    """A float32/float64 value as an exact mpf (inf and nan kept)."""
    return mpmath.mpf(float(value))


def to_mpf_matrix(array) -> list:
    """A 2-D array as a list of rows of exact mpf."""
    return [[to_mpf(v) for v in row] for row in np.asarray(array)]


def to_exact(values, shape, engine: str = MPMATH_ENGINE) -> Exact:
    """mpf values (flat, C order) -> Exact(hi, lo) of ``shape``: hi = the nearest float64, lo = the rest."""
    hi = np.empty(len(values))
    lo = np.zeros(len(values))
    with mpmath.workdps(MPMATH_DIGITS):
        for index, value in enumerate(values):
            if mpmath.isnan(value):
                hi[index] = np.nan
                continue
            high = float(value)
            hi[index] = high
            if np.isfinite(high):
                lo[index] = float(value - high)
    return Exact(hi.reshape(shape), lo.reshape(shape), engine)


# ---- one row of softmax at 50 digits ----------------------------------------------------------


class MpRow:
    """Softmax of one row of mpf logits (built at the caller's precision, 50 digits).

    ``masked``: no finite entry (then nothing else is set).  Otherwise ``largest`` = M,
    ``shifted`` = x_j - M (exact; -inf at -inf entries), ``exps`` = e^(x_j - M) (0 there),
    ``winner`` the first index of a maximum, ``rest`` = the sum of the other exps,
    ``total`` = S = 1 + rest and ``log_total`` = log S = log1p(rest).
    """

    def __init__(self, values):
        self.values = values
        finite = [v for v in values if mpmath.isfinite(v)]
        self.masked = not finite
        if self.masked:
            return
        self.largest = max(finite)
        self.shifted = [v - self.largest for v in values]
        self.exps = [mpmath.exp(s) if mpmath.isfinite(s) else mpmath.mpf(0) for s in self.shifted]
        self.winner = self.shifted.index(0)
        self.rest = mpmath.fsum(self.exps[: self.winner] + self.exps[self.winner + 1 :])
        self.total = 1 + self.rest
        self.log_total = mpmath.log1p(self.rest)

    @property
    def lse(self):
        """log-sum-exp of the row, M + log S."""
        return self.largest + self.log_total

    def probability(self, j):
        return self.exps[j] / self.total

    def probability_minus_one(self, j):
        """a_j - 1, as -rest/S (plus the other maxima) when x_j holds the max."""
        if self.shifted[j] == 0:
            return -self.rest / self.total
        return self.exps[j] / self.total - 1

    def minus_log_probability(self, j):
        """LSE - x_j = (M - x_j) + log S (+inf for a -inf entry)."""
        if not mpmath.isfinite(self.shifted[j]):
            return mpmath.inf
        return -self.shifted[j] + self.log_total


_ROW_CACHE: OrderedDict = OrderedDict()
_ROW_CACHE_ROWS = 4096


def mp_rows(x: np.ndarray) -> list:
    """An :class:`MpRow` per row of the 2-D ``x`` (cached by the row's bytes and dtype)."""
    rows = []
    with mpmath.workdps(MPMATH_DIGITS):
        for row in x:
            key = hashlib.sha1(row.tobytes() + row.dtype.str.encode()).digest()
            if key in _ROW_CACHE:
                _ROW_CACHE.move_to_end(key)
                rows.append(_ROW_CACHE[key])
                continue
            state = MpRow([to_mpf(v) for v in row])
            _ROW_CACHE[key] = state
            if len(_ROW_CACHE) > _ROW_CACHE_ROWS:
                _ROW_CACHE.popitem(last=False)
            rows.append(state)
    return rows


def mp_elementwise(x: np.ndarray, per_row, masked_value=0) -> Exact:
    """``per_row(row, row_index) -> list of mpf`` over the :class:`MpRow` of every row of ``x``
    with a finite entry; an all ``-inf`` row gives ``masked_value`` everywhere."""
    values = []
    with mpmath.workdps(MPMATH_DIGITS):
        masked = [mpmath.mpf(masked_value)] * x.shape[1]
        for index, row in enumerate(mp_rows(x)):
            values.extend(masked if row.masked else per_row(row, index))
    return to_exact(values, x.shape)


# ---- whole references, cached -----------------------------------------------------------------

_RESULT_CACHE: dict = {}


def cached_result(key_parts, compute):
    """``compute()`` at 50 digits, cached by ``key_parts`` (arrays by their bytes, the rest by repr)."""
    digest = hashlib.sha1()
    for part in key_parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    key = digest.hexdigest()
    if key not in _RESULT_CACHE:
        if len(_RESULT_CACHE) > 64:
            _RESULT_CACHE.clear()
        with mpmath.workdps(MPMATH_DIGITS):
            _RESULT_CACHE[key] = compute()
    return _RESULT_CACHE[key]
