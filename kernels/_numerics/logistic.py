"""The logistic function for the elementwise losses (binary cross-entropy, quadratic cost)."""

from __future__ import annotations

from numba import njit, types
from numba.extending import overload

from .._config import JIT_OPTIONS, STRICT_FASTMATH
from .exp import exp64_nonpositive, exp_f32_wide

__all__ = ["sigmoids_for"]


def sigmoids_for(values, x):
    """(sigma(x), sigma(-x), e^-|x|) for a float64 ``x`` taken from ``values``, from e = e^-|x|
    in (0, 1]: no overflow, no cancellation (JIT only).

    e to the accuracy of ``values``' dtype: ``exp64_nonpositive`` (``exp64``'s bits for an
    argument <= 0) for float64 rows, ``exp_f32_wide`` (1.1e-10 relative, in float64) for
    float32 rows, about twice as fast.  Every output the
    float32 kernels form from it is rounded once to float32 (2**-24), or summed in float64
    and then rounded: the 2**-33 adds a few thousandths of an ULP where the terms do not
    cancel (0.5028 ULP at most in the harness' regimes, against 0.49999 with ``exp64``).
    Below -708, ``exp_f32_wide`` gives e^-708: its products with a float32 factor round
    to 0 in float32 as e^-|x|'s do.

    An inlined overload, not ``_numerics.rows.exp_for`` called from a jitted function: as a
    call that kept binary cross-entropy's loop scalar (62 ms against 9.4 ms at 4096 x 1000
    float32, one thread).
    """
    raise NotImplementedError("sigmoids_for is only callable from JIT code")


@overload(sigmoids_for, inline="always")
def _sigmoids_for(values, x):
    if values.dtype == types.float32:
        return lambda values, x: _sigmoids_from(x, exp_f32_wide(-abs(x)))
    return lambda values, x: _sigmoids_from(x, exp64_nonpositive(-abs(x)))


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _sigmoids_from(x, e):
    inverse = 1.0 / (1.0 + e)
    small = e * inverse  # e / (1 + e) = sigma(-|x|)
    if x >= 0.0:
        return inverse, small, e
    return small, inverse, e
