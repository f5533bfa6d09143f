"""The logistic function for the elementwise losses (binary cross-entropy, quadratic cost)."""

from __future__ import annotations

from numba import njit

from .._config import JIT_OPTIONS, STRICT_FASTMATH
from .exp import exp64

__all__ = ["sigmoids"]


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def sigmoids(x):
    """(sigma(x), sigma(-x), log1p(e^-|x|)) from e = e^-|x| in (0, 1]: no overflow, no cancellation."""
    e = exp64(-abs(x))
    inverse = 1.0 / (1.0 + e)
    small = e * inverse  # e / (1 + e) = sigma(-|x|)
    if x >= 0.0:
        return inverse, small, e
    return small, inverse, e
