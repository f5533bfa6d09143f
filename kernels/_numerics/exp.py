"""A vectorizable ``exp`` for the kernels, written for Numba.

Why: the llvmlite wheels on PyPI carry no SVML, so ``math.exp`` / ``np.exp`` inside a
Numba loop is a scalar libm call and the loop does not vectorize.  These functions are
plain float arithmetic plus LLVM intrinsics (fma, the bitcasts of 2**k), so LLVM inlines them and vectorizes
the loop that calls them (``tests/kernels/test_exp.py`` checks it with ``inspect_asm``).

Method (the classic Cody-Waite scheme, as in SLEEF and fdlibm)::

    k   = round(x / ln 2)                    # by adding and subtracting 1.5 * 2**52
    r   = (x - k ln2_hi) - k ln2_lo          # |r| <= ln(2)/2; k ln2_hi is exact
    e^r = (1 + r) + r^2 q(r)                 # q: near-minimax fit of (e^r - 1 - r) / r^2
    e^x = e^r 2**k1 2**k2                    # k1 = k >> 1, k2 = k - k1, from integer bits
    e^x = (e^r 2**(k+64)) 2**-64             # k <= 0 (exp of x - max): 2 integer operations

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
* ``exp32`` (float32 arithmetic, 16 lanes per AVX-512 vector): a two-constant
  reduction (k ln2_hi exact), e^r = 1 + r P1(r) with P1 fitted to degree 6 (fit error
  2.4e-10 relative) and evaluated by Horner's rule, the last step one FMA so that only
  it rounds at the result's scale.  ``exp32_difference(value, largest)`` is exp of the
  exact difference (its ``two_sum`` error joins the reduction) for value <= largest, the
  exponential of the float32 softmax, log-softmax and cross-entropy loops;
  ``exp32_difference_floored`` is the same with the element clamped at largest - 110
  instead of the difference clamped (3 operations fewer, for |largest| < 2**21).
* ``exp_f32_wide`` (float32 results, computed in float64): a one-constant reduction
  and e^r = 1 + r Q(r), Q fitted to degree 6 (1.1e-10 relative; exp(0) = 1 exactly), for the float32
  kernels whose argument is a float64 (a temperature or a margin applied, a scale
  factor): they call it and round once when they store.  ``exp32_wide(x)`` is that
  rounding of ``exp_f32_wide(x)``.

Measured error against correctly rounded references (``softmaxlab exp-accuracy``,
the README's table): ``exp32`` at most 0.8736 ULP and ``exp32_wide`` at most 0.5013 ULP
over every one of the 2,239,849,421 float32 inputs whose exp is finite and non-zero
(exhaustive), and ``exp32_difference_floored(x, 0) == exp32(x)`` for every float32
x <= 0; ``exp64`` at most 0.6533 ULP for normal results and 0.7712 ULP overall over
1.1e8 random inputs and the ends of the range (subnormal results round twice, in the
last addition and on the subnormal grid: bound 1 ULP there).
``exp64_difference_floored`` (the float64 kernels' exp(x - max)) equals ``exp64`` on
every sampled x <= 0, and so does ``exp64_nonpositive`` (exp of a log-probability or of
-|x|, in fewer operations; ``tests/kernels/test_exp.py``).

Why float32 arithmetic: with the float64 evaluation the float32 loops ran at 8 lanes
and their exp cost twice the float32 one; softmax at 1000 classes was 0.74x torch.
The price is exp32's 0.87 ULP, against 0.5 for the rounded float64 evaluation.

Special values: exp(-inf) = 0, exp(+inf) = inf, exp(nan) = nan; results round to 0
below ln(min subnormal / 2) and to inf above ln(max float).

Elements below the floor (the kernels' exp(x - max), ``*_difference_floored``): a masked
logit (-inf, -1e4, the dtype's lowest) is far below it, and its exponential is 0.  The
scalar functions scale the floor's mantissa to 0, and a product that underflows takes a
microcode assist on Intel cores: float32 and float64 rows of which half was masked took 3
to 5 times as long as unmasked ones (``benchmarks/masked_rows.py``).  The float32 rows'
vector loop (``vector.row_exp32_store``, every contiguous float32 row) computes such an
element as the max itself (e = 1, nothing underflows) and zeroes it with the mask of its
``vscalefps`` (with a select where there is no AVX-512): the same bits.  The float64
functions keep the underflow: the same change there, a select more per vector, cost some
unmasked float64 rows up to 20% (``docs/performance.md``, seventeenth session).

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

from .._config import JIT_OPTIONS, STRICT_FASTMATH
from .eft import fma, two_sum


# (integer type, the bits of 1.5 * 2**p as shifted's offset, exponent bias, mantissa bits)
_FORMATS = {
    64: (ir.IntType(64), 0x4338000000000000, 1023, 52),
    32: (ir.IntType(32), 0x4B400000, 127, 23),
}


def _pow2_codegen(split, width):
    """LLVM IR for ``mantissa * 2**k`` with k read from ``shifted = k + 1.5 * 2**p``.

    p is the format's mantissa width (52, or 23 for float32).  The integer k sits in the
    low bits of ``shifted``'s representation, so ``bits(shifted) - bits(1.5 * 2**p)`` is
    k, and ``(k + bias) << p`` are the bits of 2**k.  With ``split``, k is cut as
    k1 = k >> 1, k2 = k - k1 and the result is ``(mantissa * 2**k1) * 2**k2``: both
    factors stay normal for every k the clamped exp produces, the first product is
    exact and only the second one rounds (into the subnormals, to 0, or to inf).
    Without ``split`` one factor is used, right whenever 2**k is a normal number.
    """
    int_type, magic, bias, mantissa_bits = _FORMATS[width]

    def codegen(context, builder, signature, args):
        value, shift = args
        k = builder.sub(builder.bitcast(shift, int_type), ir.Constant(int_type, magic))
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


def _pow2_offset_codegen(width, offset):
    """LLVM IR for ``(mantissa * 2**(k + offset)) * 2**-offset``, for k <= 0.

    ``bits(shifted) << p`` is ``k << p`` modulo the word (the offset's bits, 1.5 * 2**p,
    shift out), so the bits of 2**(k + offset) are two integer operations.  For
    k + offset and -offset in the normal range, the first product is exact and only the
    second one rounds: the same single rounding as the split form, in 2 integer
    operations instead of 7 (the exp of ``x - max`` never has k > 0).
    """
    int_type, _, bias, mantissa_bits = _FORMATS[width]

    def codegen(context, builder, signature, args):
        value, shift = args
        k_bits = builder.shl(builder.bitcast(shift, int_type), ir.Constant(int_type, mantissa_bits))
        exponent = builder.add(k_bits, ir.Constant(int_type, (bias + offset) << mantissa_bits))
        result = builder.fmul(value, builder.bitcast(exponent, value.type))
        return builder.fmul(result, ir.Constant(value.type, 2.0**-offset))

    return codegen


@intrinsic
def _scale_pow2(typingctx, mantissa, shifted):
    """``mantissa * 2**k`` in two steps (any k the clamped exp produces)."""
    if not (mantissa == shifted and mantissa in (types.float64, types.float32)):
        return None
    return mantissa(mantissa, shifted), _pow2_codegen(split=True, width=mantissa.bitwidth)


@intrinsic
def _scale_pow2_normal(typingctx, mantissa, shifted):
    """``mantissa * 2**k`` in one step, for k with 2**k a normal number."""
    if not (mantissa == shifted == types.float64):
        return None
    return mantissa(mantissa, shifted), _pow2_codegen(split=False, width=64)


# k + 64 stays normal down to k = -190 (float32) and -1086 (float64), below both clamps
_POW2_OFFSET = 64


@intrinsic
def _scale_pow2_nonpositive(typingctx, mantissa, shifted):
    """``mantissa * 2**k`` for k <= 0 (an exp of a non-positive argument), one rounding."""
    if not (mantissa == shifted and mantissa in (types.float64, types.float32)):
        return None
    return mantissa(mantissa, shifted), _pow2_offset_codegen(mantissa.bitwidth, _POW2_OFFSET)


_LOG2E = 1.4426950408889634
_SHIFT = 6755399441055744.0  # 1.5 * 2**52
# ln 2 split (fdlibm): LN2_HI has its 21 low bits zero, so k * LN2_HI is exact for |k| < 2**21.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LOW_64 = -746.0  # exp(x) rounds to 0 below ln(2**-1075) = -745.13...
_HIGH_64 = 710.0  # exp(x) overflows above ln(max double) = 709.78...
# exp_f32_wide's clamps: the float64 range where 2**k is normal (one scaling step).  Not
# float32's: its results are also multiplied in float64 before they are rounded (by a row's
# sum of dy in log_softmax_backward, by grad_output), so e**-200 must stay e**-200, not e**-110.
_LOW_32 = -708.0  # 2**k >= 2**-1021
_HIGH_32 = 709.0  # 2**k <= 2**1023, e**709 = 8.2e307

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
# ... and, for float32 results computed in float64, e^r = 1 + r Q(r) with Q fitted to
# degree 6 (fit error 2.4e-10 relative, 1.1e-10 for e^r: 0.002 float32 ULP); the constant
# term is exactly 1, so exp_f32_wide(0) = 1 exactly (a direct fit of e^r gave 1 - 4e-11,
# which showed in KL(p || p) and in log_softmax_backward near a dominant class).
_LN2 = 0.6931471805599453
_P32 = (
    0.000198992742938358860420996,
    0.001394110873582351542063422,
    0.008333298483352308887804314,
    0.04166635289314981990885098,
    0.1666666671899841507628981,
    0.5000000047118574033958722,
    1.0,
    1.0,
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
def _exp64_mantissa(clamped, low):
    """(e^(r + c), shifted) with exp(clamped + low) = e^(r + c) 2**k, shifted = k + 1.5 * 2**52."""
    shifted = clamped * _LOG2E + _SHIFT
    k = shifted - _SHIFT
    reduced = clamped - k * _LN2_HI  # exact: k * LN2_HI has at most 43 significant bits
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
    return head + tail, shifted


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp64_pair(high, low):
    """exp(high + low) for float64, |low| <= ulp(high) / 2; at most 0.66 ULP (1 for subnormal results)."""
    clamped = _LOW_64 if high < _LOW_64 else high
    clamped = _HIGH_64 if clamped > _HIGH_64 else clamped
    # Where exp underflows, ``low`` is irrelevant, and from two_sum(-inf, .) it is NaN.
    mantissa, shifted = _exp64_mantissa(clamped, low if high > _LOW_64 else 0.0)
    return _scale_pow2(mantissa, shifted)


# largest - 750 is within 2**-13 of its exact value for |largest| < 2**40
EXP64_FLOOR_LIMIT = 2.0**40
_FLOOR_OFFSET_64 = 750.0  # e**-749.9 rounds to 0 in float64


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp64_difference_floored(value, largest):
    """exp(value - largest) for float64 value <= largest, |largest| < 2**40, the difference exact.

    As ``exp32_difference_floored``: the element is clamped at largest - 750 (a -inf
    becomes finite, NaN passes), the rounding error of the difference joins the
    reduction (``two_sum``), and k <= 0 scales in one rounding
    (``_scale_pow2_nonpositive``): 8 operations fewer than ``exp64_pair(two_sum(...))``.
    An element below the floor comes out 0 by an underflow (the module's "Elements below
    the floor").
    """
    floor = largest - _FLOOR_OFFSET_64
    clamped = floor if value < floor else value
    high, low = two_sum(clamped, -largest)
    mantissa, shifted = _exp64_mantissa(high, low)
    return _scale_pow2_nonpositive(mantissa, shifted)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp64(x):
    """exp(x) for a float64 x; at most 0.66 ULP (1 for subnormal results), vectorizable by LLVM."""
    return exp64_pair(x, 0.0)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp64_nonpositive(x):
    """exp(x) for a float64 x <= 0 (or NaN): the bits of ``exp64``, in fewer operations.

    As ``exp64_difference_floored(x, 0)`` without its ``two_sum`` (the difference to 0 is
    exact): one clamp (at -750; -inf comes out 0, NaN passes), no argument correction,
    and k <= 0 scaled in one rounding (``_scale_pow2_nonpositive``) where ``exp64``
    splits k.  log_softmax_backward's arguments (log-probabilities) and the sigmoid
    losses' (-|x|) are such values.
    """
    clamped = -_FLOOR_OFFSET_64 if x < -_FLOOR_OFFSET_64 else x
    mantissa, shifted = _exp64_mantissa(clamped, 0.0)
    return _scale_pow2_nonpositive(mantissa, shifted)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp_f32_wide(x):
    """exp(x) to float32 accuracy (1.1e-10 relative, exp(0) = 1), computed in float64 for a float64 x.

    For the float32 kernels, which round the result, or its product with a float64 factor,
    once to float32.  Below -708 the result is e**-708 and above 709 it is e**709, the
    ends of the range where 2**k is a normal float64 (one scaling step suffices); a
    product with any float32-sized factor then still rounds to 0 or overflows to inf.
    """
    shifted, k, clamped = _reduce(x, _LOW_32, _HIGH_32)
    # one-constant reduction: r is off by at most |k| (ln2 - fl(ln2)) + ulp(r)/2 < 3e-14
    r = clamped - k * _LN2
    return _scale_pow2_normal(_horner(r, _P32), shifted)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp32_wide(x):
    """exp(x) for a float32 x: float32(exp_f32_wide(x)), at most 0.5 ULP + 1.1e-10 relative (0.5013 measured)."""
    return np.float32(exp_f32_wide(np.float64(x)))


# ---- float32 arithmetic ---------------------------------------------------------------------
_F32 = np.float32
_SHIFT_32 = _F32(12582912.0)  # 1.5 * 2**23
_LOG2E_32 = _F32(_LOG2E)
# ln 2 split for float32: LN2_HI_32 has 15 significant bits, so k * LN2_HI_32 is exact for
# |k| < 2**9, and x - k LN2_HI_32 is exact (Sterbenz: k ln2 is within a factor 2 of x)
_LN2_HI_32 = _F32(0.693145751953125)
_LN2_LO_32 = _F32(1.428606765330187045e-06)
_LOW_32_NATIVE = _F32(-104.0)  # e**-104 < 2**-150: rounds to 0 in float32
_HIGH_32_NATIVE = _F32(89.0)  # e**89 > max float32: rounds to inf
# (e^r - 1) / r to degree 6 in float32 coefficients, descending powers
# (mpmath.chebyfit on +-(ln2/2 + 2e-5), fit error 2.4e-10 relative)
_P1_32 = (
    _F32(0.00019899281323887408),
    _F32(0.00139411143027246),
    _F32(0.0083332983776927),
    _F32(0.04166635125875473),
    _F32(0.1666666716337204),
    _F32(0.5),
    _F32(1.0),
)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _exp32_mantissa(clamped, low):
    """(e^r, shifted) with e^(clamped + low) = e^r 2**k, shifted = k + 1.5 * 2**23; float32.

    r = (clamped - k ln2_hi) + (low - k ln2_lo): the first difference is exact, the
    second is below 2**-12 (its rounding is negligible), so r is rounded once at its
    scale (|r| <= ln2/2, error <= 2**-26); e^r = 1 + r P1(r) by one FMA, so the last
    rounding is at the scale of the result.
    """
    shifted = clamped * _LOG2E_32 + _SHIFT_32
    k = shifted - _SHIFT_32
    # (low - k ln2_lo), not -(k ln2_lo - low): with low = 0 (exp32) LLVM could fold the
    # latter into an FMA with the first difference, and exp32 would round r differently
    # from the kernels' exp32_difference (1 ULP apart on 97 float32 inputs, measured)
    r = (clamped - k * _LN2_HI_32) + (low - k * _LN2_LO_32)
    return fma(r, _horner(r, _P1_32), _F32(1.0)), shifted


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp32(x):
    """exp(x) for a float32 x in float32 arithmetic; at most 0.87 ULP (exhaustive), vectorizable."""
    clamped = _LOW_32_NATIVE if x < _LOW_32_NATIVE else x
    clamped = _HIGH_32_NATIVE if clamped > _HIGH_32_NATIVE else clamped
    mantissa, shifted = _exp32_mantissa(clamped, _F32(0.0))
    return _scale_pow2(mantissa, shifted)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp32_difference(value, largest):
    """exp(value - largest) for float32 value <= largest, as if the subtraction were exact.

    The float32 kernels' exponential (``value`` an element of a row, ``largest`` its
    max, both float32): the difference d = value - largest is rounded, and its error
    ``low`` (``two_sum``, exact) joins the reduced argument, so the result is exp32's
    for the exact difference.  d <= 0 gives k <= 0 and one-step scaling
    (``_scale_pow2_nonpositive``); a -inf value gives 0, NaN gives NaN.  Equal to
    ``exp32(value - largest)`` whenever the difference is exact.
    """
    difference, low = two_sum(value, -largest)
    below = difference < _LOW_32_NATIVE
    clamped = _LOW_32_NATIVE if below else difference
    # from two_sum(-inf, .) low is NaN; where exp underflows it is irrelevant
    mantissa, shifted = _exp32_mantissa(clamped, _F32(0.0) if below else low)
    return _scale_pow2_nonpositive(mantissa, shifted)


# largest - 110 is within 1/8 of its exact value for |largest| < 2**21 (ulp <= 1/8 there)
EXP32_FLOOR_LIMIT = _F32(2.0**21)
_FLOOR_OFFSET_32 = _F32(110.0)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def exp32_difference_floored(value, largest):
    """``exp32_difference`` for |largest| < 2**21 (``EXP32_FLOOR_LIMIT``), 3 operations fewer.

    The element, not the difference, is clamped, at floor = largest - 110 (rounded by at
    most 1/8 for such a ``largest``): e**-109.8 rounds to 0 in float32 like every
    smaller value, a -inf element becomes finite (no NaN from ``two_sum``), and the
    difference stays above -111, so no other clamp is needed.  NaN passes the clamp.
    The floor is loop-invariant, computed once per row.
    """
    floor = largest - _FLOOR_OFFSET_32
    clamped = floor if value < floor else value
    difference, low = two_sum(clamped, -largest)
    mantissa, shifted = _exp32_mantissa(difference, low)
    return _scale_pow2_nonpositive(mantissa, shifted)


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
