"""A vectorizable ``exp`` for float32 and float64, written for Numba.

Why: the llvmlite wheels on PyPI carry no SVML, so ``math.exp`` / ``np.exp`` inside a
Numba loop is a scalar libm call and the loop does not vectorize.  These functions are
plain arithmetic plus one LLVM intrinsic, so LLVM inlines them and vectorizes the loop
that calls them (checked in ``tests/kernels/test_exp.py`` with ``inspect_asm``).

Method (the classic Cody-Waite scheme, as in SLEEF and fdlibm)::

    k  = round(x / ln 2)                   # by adding and subtracting 1.5 * 2**p
    r  = (x - k * ln2_hi) - k * ln2_lo     # |r| <= ln(2)/2, ln2_hi * k exact
    e^r = 1 + (r + r^2 * q(r))            # q: near-minimax fit of (e^r - 1 - r) / r^2
    e^x = e^r * 2**k1 * 2**k2              # k1 = k >> 1, k2 = k - k1

2**k1 and 2**k2 are built from integer bits (``_scale_pow2``); splitting k in two keeps
both factors normal, so the results that overflow, underflow to subnormals or to zero
come out right with a single rounding in the last product.  The polynomial q was
fitted by Chebyshev interpolation in mpmath (``mpmath.chebyfit``) to the function
``(expm1(r) - r) / r**2`` on ``[-ln2/2 - 1e-6, ln2/2 + 1e-6]``:
degree 5 for float32 (fit error 2.4e-10 relative to e^r) and degree 10 for float64
(fit error 2.4e-19); the rest of the error is the rounding of ``r``, of ``r + r^2 q``
and of ``1 + ...``.

Measured error (``python -m softmaxlab.harness.exp_accuracy``, against the
correctly rounded reference, see the README's table):

* ``exp32``: max 0.845 ULP over every float32 x in [-103.98, 88.73] (all inputs whose
  exp is finite and non-zero); exhaustive.
* ``exp64``: max 0.512 ULP over 1.2e8 random inputs in [-745.2, 709.8] plus the ends.

Special values: ``exp(-inf) = 0``, ``exp(+inf) = inf``, ``exp(nan) = nan``; results
round to 0 below ln(min subnormal / 2) and to inf above ln(max float).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._config import STRICT_FASTMATH


def _pow2_codegen(split):
    """LLVM IR for ``mantissa * 2**k`` with k read from ``shifted = k + 1.5 * 2**p``.

    The integer k sits in the low bits of ``shifted``'s representation, so
    ``bits(shifted) - bits(1.5 * 2**p)`` is k, and ``(k + bias) << p`` are the bits of
    2**k.  With ``split``, k is cut as k1 = k >> 1, k2 = k - k1 and the result is
    ``(mantissa * 2**k1) * 2**k2``: both factors stay normal for every k the clamped
    exp produces, the first product is exact and only the second one rounds (into the
    subnormals, to 0, or to inf).  Without ``split`` one factor is used, which is
    right whenever 2**k is a normal number.
    """

    def codegen(context, builder, signature, args):
        value, shift = args
        width = signature.args[0].bitwidth
        mantissa_bits, bias = (52, 1023) if width == 64 else (23, 127)
        shift_bits = 0x4338000000000000 if width == 64 else 0x4B400000
        int_type = ir.IntType(width)
        k = builder.sub(builder.bitcast(shift, int_type), ir.Constant(int_type, shift_bits))
        parts = [k]
        if split:
            k1 = builder.ashr(k, ir.Constant(int_type, 1))
            parts = [k1, builder.sub(k, k1)]
        result = value
        for part in parts:
            biased = builder.add(part, ir.Constant(int_type, bias))
            exponent = builder.shl(biased, ir.Constant(int_type, mantissa_bits))
            result = builder.fmul(result, builder.bitcast(exponent, value.type))
        return result

    return codegen


@intrinsic
def _scale_pow2(typingctx, mantissa, shifted):
    """``mantissa * 2**k`` in two steps (any k the clamped exp produces)."""
    if not (isinstance(mantissa, types.Float) and mantissa == shifted):
        return None
    return mantissa(mantissa, shifted), _pow2_codegen(split=True)


# ---- float64 constants -------------------------------------------------------------
_LOG2E_64 = 1.4426950408889634
_SHIFT_64 = 6755399441055744.0  # 1.5 * 2**52
# ln 2 split (fdlibm): LN2_HI has its 21 low bits zero, so k * LN2_HI is exact for |k| < 2**21.
_LN2_HI_64 = 6.93147180369123816490e-01
_LN2_LO_64 = 1.90821492927058770002e-10
_LO_64 = -746.0  # exp(x) rounds to 0 below ln(2**-1075) = -745.13...
_HI_64 = 710.0  # exp(x) overflows above ln(max double) = 709.78...
# q(r) ~ (e^r - 1 - r) / r^2, ascending powers, degree 10.
_Q64 = (
    0.5,
    0.166666666666666709864573,
    0.04166666666666666975162486,
    0.008333333333326140717888755,
    0.001388888888888375229800532,
    0.0001984126987480107276358933,
    0.00002480158732553377856218406,
    0.00000275572554250096128537316,
    0.0000002755727366082246568147092,
    2.510520668068106021336023e-8,
    2.091467959561773511309765e-9,
)
_Q64_0, _Q64_1, _Q64_2, _Q64_3, _Q64_4, _Q64_5, _Q64_6, _Q64_7, _Q64_8, _Q64_9, _Q64_10 = _Q64

# ---- float32 constants (np.float32 globals keep the arithmetic in float32) -----------
_LOG2E_32 = np.float32(1.4426950408889634)
_SHIFT_32 = np.float32(12582912.0)  # 1.5 * 2**23
# LN2_HI_32 has its 9 low mantissa bits zero: k * LN2_HI_32 is exact for |k| < 2**9.
_LN2_HI_32 = np.float32(0.693145751953125)
_LN2_LO_32 = np.float32(1.4286068203094172e-06)
_LO_32 = np.float32(-104.0)  # exp(x) rounds to 0 below ln(2**-150) = -103.97...
_HI_32 = np.float32(89.0)  # exp(x) overflows above ln(max float) = 88.72...
_ONE_32 = np.float32(1.0)
_ZERO_32 = np.float32(0.0)
# q(r) ~ (e^r - 1 - r) / r^2, ascending powers, degree 5.
_Q32_0 = np.float32(0.5000000013457960294865105)
_Q32_1 = np.float32(0.1666666668161451462692302)
_Q32_2 = np.float32(0.0416664650037103167703389)
_Q32_3 = np.float32(0.008333310934190145370631967)
_Q32_4 = np.float32(0.001393364129062974047892734)
_Q32_5 = np.float32(0.0001989098115697468057455296)


@njit(fastmath=STRICT_FASTMATH, cache=False)
def exp64_pair(high, low):
    """exp(high + low) for float64 with |low| <= ulp(high) / 2; at most 0.51 ULP (measured).

    ``low`` is the rounding error of an argument formed by a subtraction (two_sum): it
    is folded into the reduced argument, so e.g. exp(x - max) is as accurate as if
    ``x - max`` had been exact.  The clamps are written so that NaN passes through
    them (every comparison with NaN is false) and then through the arithmetic; +-inf
    land on the clamps and come out as inf and 0.
    """
    clamped = _LO_64 if high < _LO_64 else high
    clamped = _HI_64 if clamped > _HI_64 else clamped
    shifted = clamped * _LOG2E_64 + _SHIFT_64  # k + 1.5 * 2**52, k = round(x / ln 2)
    k = shifted - _SHIFT_64
    reduced = clamped - k * _LN2_HI_64  # exact: k * LN2_HI has at most 43 significant bits
    r = reduced - (k * _LN2_LO_64 - low)
    q = _Q64_10
    q = q * r + _Q64_9
    q = q * r + _Q64_8
    q = q * r + _Q64_7
    q = q * r + _Q64_6
    q = q * r + _Q64_5
    q = q * r + _Q64_4
    q = q * r + _Q64_3
    q = q * r + _Q64_2
    q = q * r + _Q64_1
    q = q * r + _Q64_0
    p = 1.0 + (r + (r * r) * q)
    return _scale_pow2(p, shifted)


@njit(fastmath=STRICT_FASTMATH, cache=False)
def exp32_pair(high, low):
    """exp(high + low) for float32 with |low| <= ulp(high) / 2, in float32 arithmetic.

    At most 0.86 ULP (exhaustive over every float32 ``high`` with ``low = 0``).  The
    rounding error of the reduced argument r is recovered exactly (Sterbenz) and kept,
    with ``low``, in a correction term: e^(r + c) = e^r (1 + c) to float32 precision.
    """
    clamped = _LO_32 if high < _LO_32 else high
    clamped = _HI_32 if clamped > _HI_32 else clamped
    shifted = clamped * _LOG2E_32 + _SHIFT_32
    k = shifted - _SHIFT_32
    reduced = clamped - k * _LN2_HI_32  # exact
    subtracted = k * _LN2_LO_32
    r = reduced - subtracted
    correction = ((reduced - r) - subtracted) + low
    q = _Q32_5
    q = q * r + _Q32_4
    q = q * r + _Q32_3
    q = q * r + _Q32_2
    q = q * r + _Q32_1
    q = q * r + _Q32_0
    p = _ONE_32 + (r + (correction + (r * r) * q))
    return _scale_pow2(p, shifted)


@njit(fastmath=STRICT_FASTMATH, cache=False)
def exp64(x):
    """exp(x) for a float64 x; at most 0.51 ULP (measured), vectorizable by LLVM."""
    return exp64_pair(x, 0.0)


@njit(fastmath=STRICT_FASTMATH, cache=False)
def exp32(x):
    """exp(x) for a float32 x in float32 arithmetic; at most 0.86 ULP (exhaustive)."""
    return exp32_pair(x, _ZERO_32)


@njit(fastmath=STRICT_FASTMATH, cache=False)
def two_sum(a, b):
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum, 6 flops).

    Needs round-to-nearest and no re-association: compiled with STRICT_FASTMATH.
    """
    s = a + b
    a_part = s - b
    b_part = s - a_part
    return s, (a - a_part) + (b - b_part)
