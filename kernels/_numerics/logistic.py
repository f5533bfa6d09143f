"""The logistic function for the elementwise losses (binary cross-entropy, quadratic cost)."""

from __future__ import annotations

from numba import njit, types
from numba.extending import overload

from .._config import JIT_OPTIONS, STRICT_FASTMATH
from .exp import exp64, exp_f32_wide

__all__ = ["sigmoids", "sigmoids_for"]


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def sigmoids(x):
    """(sigma(x), sigma(-x), e^-|x|) from e = e^-|x| in (0, 1]: no overflow, no cancellation."""
    return _sigmoids_from(x, exp64(-abs(x)))


def sigmoids_for(values, x):
    """``sigmoids(x)`` for a float64 ``x`` taken from ``values``, to the accuracy of their dtype (JIT only).

    float64 values: e^-|x| by ``exp64``.  float32 values: by ``exp_f32_wide`` (1.1e-10
    relative, in float64; e^-110 below -110, which rounds to 0 in float32 as e^-|x| does),
    about twice as fast: every output the float32 kernels form from it is rounded once to
    float32 (2**-24), or summed in float64 and then rounded, so the 2**-33 adds at most a
    thousandth of an ULP where the terms do not cancel.
    """
    raise NotImplementedError("sigmoids_for is only callable from JIT code")


@overload(sigmoids_for, inline="always")
def _sigmoids_for(values, x):
    if values.dtype == types.float32:
        return lambda values, x: _sigmoids_from(x, exp_f32_wide(-abs(x)))
    return lambda values, x: sigmoids(x)


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _sigmoids_from(x, e):
    inverse = 1.0 / (1.0 + e)
    small = e * inverse  # e / (1 + e) = sigma(-|x|)
    if x >= 0.0:
        return inverse, small, e
    return small, inverse, e
