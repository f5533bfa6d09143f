"""Checks shared by the properties: error bounds (each derived here once), central
differences, and the check that inputs are never modified.

Notation: p is the dtype's precision (24 bits for float32, 53 for float64), u = 2**-p its
unit roundoff, U64 = 2**-53 float64's.  For a normal value a, ulp(a) <= 2**(1 - p) |a|
(a lies in [2**e, 2**(e+1)) and ulp(a) = 2**(e + 1 - p)); below the normal range the
ulp is the smallest subnormal, an absolute 2**-149 or 2**-1074.  Every bound below is
"relative part * size + absolute part * (number of terms)", the second covering
subnormal results.

The kernels' own accuracy statements (README, "Accuracy"):

* float32 softmax within 1.5 ULP (computed in float64, rounded twice at most);
* float64 softmax within 1.32 + 1.32 + 0.5 ULP plus the summation error of S, one more
  1.32 ULP on rows of several blocks (exp64's error in e_j and, averaged, in S; the final
  fma; the factor exp(m_b - M) of each block): 4.46 ULP plus summation;
* log_softmax and logsumexp within 1.5 ULP;
* sums in float64 over chunks (``_rows.SUM_CHUNK`` = 256 for float64 rows, one block for
  float32 rows) that LLVM spreads over 32 lanes, then a tree of 5 additions joining the
  lanes, the chunk sums of a block added in turn, the blocks merged pairwise.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np

from softmaxlab import kernels
from softmaxlab.kernels._config import block_length

U64 = 2.0**-53
SUM_CHUNK64 = 256
LANES = 32
LANE_TREE = 5  # log2(LANES) additions join the lanes

# float32 softmax, log_softmax and cross-entropy take exp32 (float32 arithmetic, at most
# 0.87 ULP over every float32 input, README): 0.87 * 2**-23 relative
EXP32_RELATIVE = 0.87 * 2.0**-23

# softmax's accuracy in ULPs of the output (README): float32 1.74 + 1.74 + 0.5 (exp32's
# relative error in e_j and, averaged, in S, up to 1.74 ULP each at the bottom of a
# binade; the final rounding); float64 1.32 + 1.32 + 0.5 + 1.32 (the last for rows of
# several blocks; used for every row, an upper bound either way)
SOFTMAX_ULPS = {np.dtype(np.float32): 4.0, np.dtype(np.float64): 4.46}
# logsumexp = M + log1p(T): float32 0.5 + 1.74 (T's relative error, that of the exp32 terms
# it sums), float64 1.5 (T's float64 summation error is added where it is used).
# log_softmax = (x - M) - log1p(T): the same, and for float32 rows, whose write runs in
# float32, x - M and L = log1p(T) are each rounded to float32 first (same sign: together
# < 1 ULP of the output, kernels/_softmax.py, ``_write_shifted_log``): 1 + 0.5 + 1.74.
LOGSUMEXP_ULPS = {np.dtype(np.float32): 2.25, np.dtype(np.float64): 1.5}
LOG_SOFTMAX_ULPS = {np.dtype(np.float32): 3.25, np.dtype(np.float64): 1.5}

# The kernels' float64-evaluated exponential: float32 rows scaled by a temperature or a margin (and
# log_softmax_backward) take exp_f32_wide (fit error 1.1e-10 relative, kernels/_numerics/exp.py; exp(0) = 1
# exactly), float64 rows exp64 (0.7712 ULP at most, README: <= 1.55 U64 relative, plus s_min below
# the normal range).  Where a float32 result cancels (a difference such as KL, or dy - e^y sum dy)
# this error shows.
EXP_RELATIVE = {np.dtype(np.float32): 1.2e-10, np.dtype(np.float64): 1.55 * U64}

# Float64 roundings a fused loss/gradient entry goes through besides its sums, counted
# generously: the scaled logit (1), exp (0.78 ULP = 1.56 u, counted 2), the factor
# g * TW * exp(m_b - M) / (1 + T) (4, and 2 for the block's exp), the product with e_j
# (1), the smoothing or teacher term and its product (3), the final subtraction (1),
# a ratio such as the smooth hinge's sigma(u + m) / sigma(u) (2): 16.
ENTRY_ROUNDINGS = 16


def precision(dtype) -> int:
    return 24 if np.dtype(dtype) == np.float32 else 53


def unit_roundoff(dtype) -> float:
    return 2.0 ** -precision(dtype)


def ulp_ratio(dtype) -> float:
    """Largest ulp(a) / |a| over normal a: 2**(1 - p)."""
    return 2.0 ** (1 - precision(dtype))


def smallest_subnormal(dtype) -> float:
    return float(np.finfo(dtype).smallest_subnormal)


def spacing(values, dtype) -> np.ndarray:
    """ulp of the dtype at |values| (the subnormal spacing near 0), as float64."""
    return np.spacing(np.abs(np.asarray(values, dtype=np.float64)).astype(dtype)).astype(np.float64)


def summation_depth(classes: int, dtype) -> int:
    """Upper bound on the additions one term of a row's float64 sum goes through.

    In a chunk of m terms: m // 32 in its lane, 5 in the tree joining the lanes, and the
    m % 32 terms past the last full vector iteration, added one after the other (a row of
    under 32 classes is summed entirely that way); then the chunk sums of its block, one
    after the other; then ceil(log2(blocks)) pairwise merges; plus 2 for the final
    ``+ (ties - 1)`` and ``1 + T``.  A sum of non-negative terms with depth D has
    relative error below D * U64 (first order; D * U64 < 1e-11 here).
    """
    block = block_length(np.dtype(dtype).itemsize)
    chunk = SUM_CHUNK64 if np.dtype(dtype) == np.float64 else block
    in_block = min(max(classes, 1), block)
    blocks = max(1, -(-classes // block))
    in_chunk = min(in_block, chunk)
    lane_chain = in_chunk // LANES + LANE_TREE + in_chunk % LANES
    return lane_chain + -(-in_block // chunk) + math.ceil(math.log2(blocks)) + 2


def softmax_relative_bound(dtype, classes: int) -> float:
    """|a_hat - a| <= bound * a + SOFTMAX_ULPS * smallest_subnormal for each probability a.

    The README's ULP bound converted to a relative one (ulp(a) <= 2**(1-p) a), plus the
    summation error of S (depth * U64, one common factor 1/S for the whole row).
    """
    return SOFTMAX_ULPS[np.dtype(dtype)] * ulp_ratio(dtype) + summation_depth(classes, dtype) * U64


def gradient_relative_bound(dtype, classes: int) -> float:
    """rho with |g_hat_j - g_j| <= rho * |g| * (a_j + t_j) + 2 smallest_subnormal per gradient entry.

    A fused softmax-loss gradient entry g (a_j - t_j) (probabilities a, target weights t)
    is computed in float64 through ``ENTRY_ROUNDINGS`` roundings and the sum of S
    (``summation_depth``), then stored: float32 rows round the stored e_j = exp(z_j - m_b)
    once (2**-24 relative), and the write rounds at most twice, each within
    2**-24 |g| (a_j + t_j) (cross-entropy's ``_rows.scale_shift_in_place`` with label
    smoothing: fma(e, fh, -sh), then the sum with fma(e, fl, -sl); the others once,
    2**-24 |g_j|): 3 * 2**-24 in all; and their exponential (``EXP32_RELATIVE`` or
    ``EXP_RELATIVE``) errs in e_j and in S.  float64 rows store e_j exactly, and their
    exp and final rounding are among the counted ones.
    """
    if np.dtype(dtype) == np.float32:
        # exp32 (cross-entropy) or exp_f32_wide (the others): the larger one bounds both
        stored = 3 * unit_roundoff(np.float32) + 2 * max(EXP32_RELATIVE, EXP_RELATIVE[np.dtype(np.float32)])
    else:
        stored = 0.0
    return stored + (summation_depth(classes, dtype) + ENTRY_ROUNDINGS) * U64


def assert_softmax_sums_to_one(probabilities: np.ndarray, dtype, classes: int):
    """Each row of a (rows, classes) softmax sums to 1 within the derived bound.

    sum_j a_hat_j - 1 = sum_j (a_hat_j - a_j), so |sum - 1| <= rel * sum_j a_j + n * E * s_min
    = rel + n E s_min (sum_j a_j = 1); the sum is taken exactly (math.fsum: correctly
    rounded, one more U64 * (1 + rel)).
    """
    relative = softmax_relative_bound(dtype, classes)
    tolerance = relative + classes * SOFTMAX_ULPS[np.dtype(dtype)] * smallest_subnormal(dtype) + U64 * (1 + relative)
    for index, row in enumerate(np.asarray(probabilities, dtype=np.float64)):
        total = math.fsum(row)
        assert abs(total - 1.0) <= tolerance, f"row {index} sums to {total!r} (bound 1 +- {tolerance:.3g})"


def assert_sums_to_zero(values: np.ndarray, scale: np.ndarray, what: str):
    """Each row of a (rows, entries) array sums to 0 within ``scale`` (per row); exact fsum."""
    values = np.asarray(values, dtype=np.float64)
    for index, row in enumerate(values):
        total = math.fsum(row)
        assert abs(total) <= scale[index], f"{what}: row {index} sums to {total!r} (bound {scale[index]:.3g})"


# ---- central differences -------------------------------------------------------------------
#
# For a scalar function f of one coordinate t with |f'''| <= M3 around t, and f computed
# with an absolute error of at most eps * F, the central difference
#     (f(t + h) - f(t - h)) / (2 h)
# differs from f'(t) by at most  h**2 / 6 * M3  (Taylor, truncation)  +  eps * F / h
# (the two rounding errors, divided by 2 h).  eps = 64 U64: the losses checked here take
# at most about 30 float64 roundings on terms of size F (sums of depth <= 16 for the
# small shapes used, ``ENTRY_ROUNDINGS`` more, the reduction over rows), so 64 is an
# upper bound with room.  h is a power of two near the minimizer (3 eps F / M3)**(1/3),
# and x +- h is then formed without error for the moderate |x| used (|x| < 2**6).  The
# analytic gradient has its own error, below eps * (its size).

CENTRAL_EPS = 64 * U64
THIRD_LSE = 1.0 / (6.0 * math.sqrt(3.0))  # max |E[(v - E v)^3]| for v in an interval of length 1


def softmax_loss_third_derivative(first: float, second: float = 0.0, third: float = 0.0) -> float:
    """Bound on d^3/dt^3 of LSE(z(t)) - z_y(t) (a softmax cross-entropy row).

    With a = softmax(z): d/dt = <a - e_y, z'>, d^2 = Cov_a(z', z') + <a - e_y, z''>, and
    d^3 = E_a[(z' - E z')^3] + 3 Cov_a(z', z'') + <a - e_y, z'''>.  For ranges (max - min
    over the classes) R1, R2, R3 of z', z'', z''': |third central moment| <= R1^3 / (6 sqrt 3)
    (two-point law), |Cov| <= R1 R2 / 4, |<a - e_y, v>| <= R(v).  Arguments are the ranges.
    """
    return THIRD_LSE * first**3 + 0.75 * first * second + third


def choose_step(third_derivative: float, magnitude: float) -> float:
    if third_derivative <= 0.0:
        return 2.0**-8
    ideal = (3.0 * CENTRAL_EPS * magnitude / third_derivative) ** (1.0 / 3.0)
    return 2.0 ** min(-8, max(-26, round(math.log2(ideal))))


def assert_matches_central_differences(function, x: np.ndarray, analytic: np.ndarray, third_derivative,
                                       magnitude: float, name: str = "x"):
    """Every coordinate of ``analytic`` matches the central difference of ``function`` at ``x``.

    ``function`` maps a float64 array of x's shape to a float; ``third_derivative`` bounds
    |d^3 f / d x_k^3| near x (an array of x's shape, or a number); ``magnitude`` is F, the
    size of the terms f is computed from.  The tolerance is the bound derived above.
    """
    third = np.broadcast_to(np.asarray(third_derivative, dtype=np.float64), x.shape)
    step = choose_step(float(third.max()), magnitude)
    numeric = np.empty(x.shape)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (function(plus) - function(minus)) / (plus[index] - minus[index])
    analytic = np.asarray(analytic, dtype=np.float64)
    tolerance = step**2 / 6.0 * third + CENTRAL_EPS * (magnitude / step + np.abs(analytic))
    error = np.abs(numeric - analytic)
    worst = np.unravel_index(np.argmax(error - tolerance), x.shape)
    assert np.all(error <= tolerance), (
        f"d/d{name}{list(worst)}: analytic {analytic[worst]!r}, central difference {numeric[worst]!r} "
        f"(step {step}, bound {tolerance[worst]:.3g})"
    )


# ---- inputs are never modified ---------------------------------------------------------------


def _owner(array: np.ndarray) -> np.ndarray:
    """The array that owns ``array``'s memory (a view's base, followed to the end)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


@contextmanager
def unmodified(*arrays):
    """Assert that the block leaves every array given (and all of its buffer) bit-identical.

    The whole owning buffer is compared, not only the view: a strided view's gaps hold
    NaN, and a kernel writing into them would be caught too.  ``None`` and non-arrays are
    skipped.
    """
    owners = [_owner(a) for a in arrays if isinstance(a, np.ndarray)]
    saved = [owner.tobytes(order="A") for owner in owners]
    yield
    for position, (owner, before) in enumerate(zip(owners, saved)):
        assert owner.tobytes(order="A") == before, f"input array {position} was modified"


def assert_bit_identical(actual, expected, what: str):
    actual, expected = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, f"{what}: shape or dtype differs"
    assert actual.tobytes() == expected.tobytes(), f"{what}: not bit-identical"


def run_loss(function, arguments: tuple, options: dict, reduction: str, grad_output):
    """Call a loss three ways, every array argument checked unmodified.

    Returns (per-row losses with reduction="none", the loss, the gradients of
    ``<function>_forward_backward``), after asserting that the fused call's loss is
    bit-identical to ``function``'s: one kernel computes both, the gradient only adds a
    write pass.
    """
    fused = getattr(kernels, f"{function.__name__}_forward_backward")
    arrays = [value for value in arguments + tuple(options.values()) + (grad_output,)
              if isinstance(value, np.ndarray)]
    with unmodified(*arrays):
        per_row = function(*arguments, **options, reduction="none")
        alone = function(*arguments, **options, reduction=reduction)
        loss, *gradients = fused(*arguments, **options, reduction=reduction, grad_output=grad_output)
    assert_bit_identical(loss, alone, f"{fused.__name__}'s loss against {function.__name__}'s")
    return per_row, loss, gradients
