"""A vectorizable ``exp`` for the kernels, written for Numba.

Why: the llvmlite wheels on PyPI carry no SVML, so ``math.exp`` / ``np.exp`` inside a
Numba loop is a scalar libm call and the loop does not vectorize.  These functions are
plain float64 arithmetic plus one LLVM intrinsic, so LLVM inlines them and vectorizes
the loop that calls them (``tests/kernels/test_exp.py`` checks it with ``inspect_asm``).

Method (the classic Cody-Waite scheme, as in SLEEF and fdlibm)::

    k   = round(x / ln 2)                    # by adding and subtracting 1.5 * 2**52
    r   = (x - k ln2_hi) - k ln2_lo          # |r| <= ln(2)/2; k ln2_hi is exact
    e^r = (1 + r) + r^2 q(r)                 # q: near-minimax fit of (e^r - 1 - r) / r^2
    e^x = e^r 2**k1 2**k2                    # k1 = k >> 1, k2 = k - k1, from integer bits

The polynomials were fitted by Chebyshev interpolation in mpmath (``mpmath.chebyfit``)
on ``[-ln2/2 - 1e-6, ln2/2 + 1e-6]``.

* ``exp64`` / ``exp64_pair`` (float64 results): ``(expm1(r) - r) / r**2`` to degree 10
  (fit error 2.4e-19 relative).
  The rounding error of r is recovered exactly and carried as a correction, and
  ``1 + r`` is split exactly (Fast2Sum), so only the last addition and the scaling
  round.  ``exp64_pair(high, low)`` is exp(high + low): ``low`` carries the rounding
  error of an argument made by a subtraction (``two_sum``).  Splitting k in two keeps
  both powers of two normal, so results that overflow, underflow into the subnormals
  or to zero come out right.
* ``exp_f32_wide`` (float32 results, computed in float64): a one-constant reduction
  and e^r fitted directly to degree 7 (fit error 5.5e-11 relative); the float32 kernels widen their operands (so ``x - max`` is
  exact), call it, and round once when they store.  ``exp32(x)`` is exactly that
  rounding of ``exp_f32_wide(x)``: the float32 exp of the kernels.

Measured error against correctly rounded references (``softmaxlab exp-accuracy``,
the README's table): ``exp32`` at most 0.5007 ULP over every one of the 2,239,849,421
float32 inputs whose exp is finite and non-zero (exhaustive); ``exp64`` at most
0.6533 ULP for normal results and 0.7712 ULP overall over 1.1e8 random inputs and the
ends of the range (subnormal results round twice, in the last addition and on the
subnormal grid: bound 1 ULP there).

Special values: exp(-inf) = 0, exp(+inf) = inf, exp(nan) = nan; results round to 0
below ln(min subnormal / 2) and to inf above ln(max float).

``log1p_unit(e)`` is log(1 + e) for 0 <= e <= 1 (the softplus of the sigmoid losses,
log1p(e^-|x|)), vectorizable for the same reason: libm's ``log1p`` in a loop is a scalar
call (binary cross-entropy ran at ~30 ns per element with it).  Method (the classic
reduction of fdlibm's ``log``, with the rounding of 1 + e carried as a correction)::

    u = 1 + e,  c = e - (u - 1)                # exact (Fast2Sum, 1 >= e)
    u = 2**k m,  k in {0, 1},  m in [1/sqrt2, sqrt2),  f = m - 1 (exact)
    s = f / (2 + f),  log(1 + f) = 2 atanh(s) = f - f**2/2 + s (f**2/2 + R(s**2))
    log(1 + e) = k ln2 + log(1 + f) + c / u

R(z)/z is fitted to degree 6 in mpmath (fit error 3.1e-16 relative, a term of at most
s**3 = 0.005).  Measured: at most 0.841 ULP over 2e7 random e (uniform, and e^-U(0, 40)),
against long double (``tests/kernels/test_exp.py`` checks a sample against mpmath).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import literal_unroll, njit, types
from numba.extending import intrinsic

from ._config import JIT_OPTIONS, STRICT_FASTMATH


def _pow2_codegen(split):
    """LLVM IR for ``mantissa * 2**k`` with k read from ``shifted = k + 1.5 * 2**52``.

    The integer k sits in the low bits of ``shifted``'s representation, so
    ``bits(shifted) - bits(1.5 * 2**52)`` is k, and ``(k + 1023) << 52`` are the bits
    of 2**k.  With ``split``, k is cut as k1 = k >> 1, k2 = k - k1 and the result is
    ``(mantissa * 2**k1) * 2**k2``: both factors stay normal for every k the clamped
    exp produces, the first product is exact and only the second one rounds (into the
    subnormals, to 0, or to inf).  Without ``split`` one factor is used, right
    whenever 2**k is a normal number.
    """

    def codegen(context, builder, signature, args):
        value, shift = args
        int_type = ir.IntType(64)
        k = builder.sub(builder.bitcast(shift, int_type), ir.Constant(int_type, 0x4338000000000000))
        parts = [k]
        if split:
            k1 = builder.ashr(k, ir.Constant(int_type, 1))
            parts = [k1, builder.sub(k, k1)]
        result = value
        for part in parts:
            biased = builder.add(part, ir.Constant(int_type, 1023))
            exponent = builder.shl(biased, ir.Constant(int_type, 52))
            result = builder.fmul(result, builder.bitcast(exponent, value.type))
        return result

    return codegen


@intrinsic
def _scale_pow2(typingctx, mantissa, shifted):
    """``mantissa * 2**k`` in two steps (any k the clamped exp produces)."""
    if not (mantissa == shifted == types.float64):
        return None
    return mantissa(mantissa, shifted), _pow2_codegen(split=True)


@intrinsic
def _scale_pow2_normal(typingctx, mantissa, shifted):
    """``mantissa * 2**k`` in one step, for k with 2**k a normal number."""
    if not (mantissa == shifted == types.float64):
        return None
    return mantissa(mantissa, shifted), _pow2_codegen(split=False)


_LOG2E = 1.4426950408889634
_SHIFT = 6755399441055744.0  # 1.5 * 2**52
# ln 2 split (fdlibm): LN2_HI has its 21 low bits zero, so k * LN2_HI is exact for |k| < 2**21.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOW_64 = -746.0  # exp(x) rounds to 0 below ln(2**-1075) = -745.13...
_HIGH_64 = 710.0  # exp(x) overflows above ln(max double) = 709.78...
_LOW_32 = -110.0  # e**-110 < 2**-150 rounds to 0 in float32; 2**k stays normal in float64
_HIGH_32 = 90.0  # e**90 > max float32 rounds to inf in float32

# Coefficients in descending powers (Horner's order).
# q(r) ~ (e^r - 1 - r) / r^2 to degree 10, for float64 results ...
_Q64 = (
    2.091467959561773511309765e-9,
    2.510520668068106021336023e-8,
    0.0000002755727366082246568147092,
    0.00000275572554250096128537316,
    0.00002480158732553377856218406,
    0.0001984126987480107276358933,
    0.001388888888888375229800532,
    0.008333333333326140717888755,
    0.04166666666666666975162486,
    0.166666666666666709864573,
    0.5,
)
# ... and, for float32 results, e^r itself to degree 7 (no exact leading terms needed:
# the fit error 5.5e-11 relative is 0.001 float32 ULP).
_LN2 = 0.6931471805599453
_P32 = (
    0.0001990756969402313322065,
    0.001394857867154721534858,
    0.008333283538133252043355,
    0.04166621831411108082318,
    0.1666666678631065898283,
    0.5000000107731031964728,
    0.9999999999955089368153,
    0.9999999999595608166668,
)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _horner(r, coefficients):
    """sum_i coefficients[i] r^(n - i): Horner's rule, one FMA per coefficient."""
    value = coefficients[0]
    for coefficient in literal_unroll(coefficients[1:]):
        value = value * r + coefficient
    return value


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce(x, low_clamp, high_clamp):
    """(shifted, k, clamped): shifted = k + 1.5 * 2**52 with k = round(clamped / ln 2).

    The clamps are written so that NaN passes through them (every comparison with NaN
    is false) and then through the arithmetic: exp(NaN) is NaN with no extra select.
    +-inf land on the clamps and come out as inf and 0.
    """
    clamped = low_clamp if x < low_clamp else x
    clamped = high_clamp if clamped > high_clamp else clamped
    shifted = clamped * _LOG2E + _SHIFT
    return shifted, shifted - _SHIFT, clamped


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp64_pair(high, low):
    """exp(high + low) for float64, |low| <= ulp(high) / 2; at most 0.66 ULP (1 for subnormal results)."""
    shifted, k, clamped = _reduce(high, _LOW_64, _HIGH_64)
    reduced = clamped - k * _LN2_HI  # exact: k * LN2_HI has at most 43 significant bits
    # Where exp underflows, ``low`` is irrelevant, and from two_sum(-inf, .) it is NaN.
    low = low if high > _LOW_64 else 0.0
    # ``low`` joins the small subtracted part before r is rounded (|low| and k ln2_lo
    # are far below ulp(r), so this subtraction's own rounding is negligible) ...
    subtracted = k * _LN2_LO - low
    r = reduced - subtracted
    # ... and the rounding error of r is recovered exactly (Sterbenz): |c| <= ulp(r)/2,
    # so e^(r + c) = e^r + c to within c r <= 0.1 u.
    correction = (reduced - r) - subtracted
    q = _horner(r, _Q64)
    # e^r (1 + c) = (1 + r) + (c + r^2 q); 1 + r split exactly (Fast2Sum, |r| < 1) so
    # that only the last addition rounds at the scale of the result.
    head = 1.0 + r
    tail = ((1.0 - head) + r) + (correction + (r * r) * q)
    return _scale_pow2(head + tail, shifted)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp64(x):
    """exp(x) for a float64 x; at most 0.66 ULP (1 for subnormal results), vectorizable by LLVM."""
    return exp64_pair(x, 0.0)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp_f32_wide(x):
    """exp(x) to float32 accuracy (6e-11 relative), computed in float64 for a float64 x.

    For the float32 kernels, which store the result as float32 (one rounding).
    Below -110 the result is e**-110 and above 90 it is e**90; both round to 0 and inf
    in float32, and they keep 2**k a normal float64 so one scaling step suffices.
    """
    shifted, k, clamped = _reduce(x, _LOW_32, _HIGH_32)
    # one-constant reduction: r is off by at most |k| (ln2 - fl(ln2)) + ulp(r)/2 < 4e-15
    r = clamped - k * _LN2
    return _scale_pow2_normal(_horner(r, _P32), shifted)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp32(x):
    """exp(x) for a float32 x: float32(exp_f32_wide(x)), at most 0.5 ULP + 6e-11 relative."""
    return np.float32(exp_f32_wide(np.float64(x)))


# R(z) / z, z = s**2 <= (3 - 2 sqrt2)**2 = 0.0294, in descending powers: the series
# sum_k 2 z**(k-1) / (2k + 1) fitted to degree 6 (mpmath.chebyfit on [0, 0.02944]).
_LOG_R = (
    0.1461658542488862197445443,
    0.1533171061821077156922223,
    0.1818288945567494603847323,
    0.2222221113025987702904284,
    0.2857142862600326874161618,
    0.3999999999989944323319279,
    0.6666666666666669688307092,
)
_SQRT2 = 1.4142135623730951


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def log1p_unit(e):
    """log(1 + e) for 0 <= e <= 1 (NaN gives NaN), vectorizable; at most 0.841 ULP measured."""
    u = 1.0 + e
    correction = e - (u - 1.0)  # u + correction = 1 + e exactly
    big = u > _SQRT2
    m = 0.5 * u if big else u  # exact
    k = 1.0 if big else 0.0
    f = m - 1.0  # exact: m is within a factor 2 of 1
    s = f / (2.0 + f)
    z = s * s
    r = z * _horner(z, _LOG_R)
    half_square = 0.5 * f * f
    # k ln2 + f - (f^2/2 - s (f^2/2 + R)) + c/u, the small terms first
    small = s * (half_square + r) + (k * _LN2_LO + correction / u)
    return k * _LN2_HI - ((half_square - small) - f)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def two_sum(a, b):
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum, 6 flops).

    Needs round-to-nearest and no re-association: compiled with STRICT_FASTMATH.
    """
    s = a + b
    a_part = s - b
    b_part = s - a_part
    return s, (a - a_part) + (b - b_part)
