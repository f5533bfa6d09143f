"""Exact references and ULP errors for the kernel tests, from the harness (no reference twice).

The normalizers come from ``softmaxlab.harness.exact`` (mpmath at 50 digits, held as
float64 pairs of 106 bits) and errors from ``softmaxlab.harness.metrics``: the ULP of an
exact value v is the spacing of the format at v (``metrics.ulp_at``), and the error of a
computed y is |y - v| / ulp(v).  Tests with their own mpmath values pass them as (nested)
lists of mpf.
"""

from __future__ import annotations

import mpmath
import numpy as np

from softmaxlab.harness import exact as harness_exact
from softmaxlab.harness.metrics import Exact, absolute_error, ulp_at


def _pairs(values, shape) -> Exact:
    """mpf values (nested lists, or an object array) -> Exact of ``shape``."""
    with mpmath.workdps(harness_exact.MPMATH_DIGITS):  # mpf() rounds to the working precision
        flat = [mpmath.mpf(value) for value in np.asarray(values, dtype=object).ravel()]
    return harness_exact.to_exact(flat, shape)


def _on_rows(reference, x, shape) -> Exact:
    x = np.asarray(x)
    pairs = reference(x.reshape(-1, x.shape[-1]), engine=harness_exact.MPMATH_ENGINE)
    return Exact(pairs.hi.reshape(shape), pairs.lo.reshape(shape), pairs.engine)


def softmax(x) -> Exact:
    """Exact softmax over the last axis of a finite (or -inf masked) array."""
    return _on_rows(harness_exact.softmax, x, np.shape(x))


def log_softmax(x) -> Exact:
    return _on_rows(harness_exact.log_softmax, x, np.shape(x))


def logsumexp(x) -> Exact:
    return _on_rows(harness_exact.logsumexp, x, np.shape(x)[:-1])


def columns(exact: Exact, key) -> Exact:
    """``exact[:, key]``."""
    return Exact(exact.hi[:, key], exact.lo[:, key], exact.engine)


def ulp_errors(computed, exact) -> np.ndarray:
    """|computed - exact| / ulp(exact) elementwise (``exact``: an Exact, or lists of mpf).

    Where the exact value is +-inf or NaN the error is 0 if ``computed`` is the same, inf otherwise.
    """
    computed = np.asarray(computed)
    if not isinstance(exact, Exact):
        exact = _pairs(exact, computed.shape)
    with np.errstate(invalid="ignore"):
        errors = absolute_error(computed, exact) / ulp_at(exact, computed.dtype)
    special = ~np.isfinite(exact.hi)
    same = (computed == exact.hi) | (np.isnan(computed) & np.isnan(exact.hi))
    return np.where(special, np.where(same, 0.0, np.inf), errors)
