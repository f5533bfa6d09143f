"""Property tests of the normalizers: softmax, log_softmax, logsumexp and their backward functions.

Every property runs on drawn dtypes, class counts (1 to three 32 KiB blocks), 1-3-D
arrays, any class axis, non-contiguous layouts and the value regimes of
``strategies.py``, and checks that the inputs are left bit-identical.  The bounds are
derived in ``checks.py`` from the README's accuracy statements or stated where used.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from softmaxlab.kernels import log_softmax, log_softmax_backward, logsumexp, softmax, softmax_backward

from .checks import (
    EXP_RELATIVE,
    LOG_SOFTMAX_ULPS,
    LOGSUMEXP_ULPS,
    SOFTMAX_ULPS,
    THIRD_LSE,
    U64,
    assert_bit_identical,
    assert_matches_central_differences,
    assert_softmax_sums_to_one,
    precision,
    smallest_subnormal,
    softmax_relative_bound,
    spacing,
    summation_depth,
    ulp_ratio,
    unit_roundoff,
    unmodified,
)
from .strategies import ALL_REGIMES, SPECIAL_ROWS, class_arrays, seeds

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def _normalized(case):
    """softmax, log_softmax and logsumexp of a drawn case, the input checked unmodified."""
    with unmodified(case.x):
        return (softmax(case.x, axis=case.axis), log_softmax(case.x, axis=case.axis),
                logsumexp(case.x, axis=case.axis))


def _upstream_like(case, rng):
    """A finite upstream gradient arranged as the case's input (same layout and axis)."""
    return case.like(rng.standard_normal(case.rows.shape).astype(case.dtype))


# ---- forward -------------------------------------------------------------------------------------


@given(class_arrays(regimes=ALL_REGIMES))
def test_softmax_rows_sum_to_one_and_lie_in_the_unit_interval(case):
    probabilities, _, _ = _normalized(case)
    assert probabilities.shape == case.x.shape and probabilities.dtype == case.x.dtype
    rows = case.rows_of(probabilities)
    # exact: a_j = e_j / S with 0 <= e_j <= S, rounded monotonically
    assert np.all((rows >= 0.0) & (rows <= 1.0))
    assert np.all(rows[np.isneginf(case.rows)] == 0.0)
    assert_softmax_sums_to_one(rows, case.dtype, case.classes)


def _exact_shift_grid(rows: np.ndarray, shift: float) -> np.ndarray:
    """``rows`` rounded to a grid on which x + shift is exact in the dtype.

    With 2**e >= max|x| + |shift| and g = 2**(e - p), every multiple of g of magnitude
    at most 2**e is representable, and shift (a power of two >= 1/8 > g) is a multiple
    of g, so x + shift is representable: the addition is exact.  e is taken one above
    ceil(log2(.)) of the float64 sum, which may round down (1 + 2**-52 + 1 gives 2.0).
    """
    finite = np.isfinite(rows)
    largest = float(np.max(np.abs(rows[finite]), initial=0.0)) + abs(shift)
    grid = 2.0 ** (math.ceil(math.log2(largest)) + 1 - precision(rows.dtype))
    return np.where(finite, np.round(rows.astype(np.float64) / grid) * grid, rows).astype(rows.dtype)


@given(class_arrays(regimes=ALL_REGIMES), st.integers(-3, 6), st.sampled_from([1.0, -1.0]))
def test_softmax_is_shift_invariant(case, exponent, sign):
    shift = sign * 2.0**exponent
    rows = _exact_shift_grid(case.rows, shift)
    shifted_rows = rows + case.dtype.type(shift)
    # the addition is exact: TwoSum's error term is 0 on every finite entry
    with np.errstate(invalid="ignore"):  # -inf - -inf at masked entries, not looked at
        back = shifted_rows - rows
        error = (rows - (shifted_rows - back)) + (case.dtype.type(shift) - back)
    assert np.all(error[np.isfinite(rows)] == 0.0)
    x, shifted = case.like(rows), case.like(shifted_rows)
    with unmodified(x, shifted):
        first = case.rows_of(softmax(x, axis=case.axis)).astype(np.float64)
        second = case.rows_of(softmax(shifted, axis=case.axis)).astype(np.float64)
    # both are within rel * a + E s_min of the same exact a (x + c is exact), so they differ
    # by at most twice that, with a <= (max(first, second) + E s_min) / (1 - rel)
    relative = softmax_relative_bound(case.dtype, case.classes)
    absolute = SOFTMAX_ULPS[case.dtype] * smallest_subnormal(case.dtype)
    exact_upper = (np.maximum(first, second) + absolute) / (1.0 - relative)
    assert np.all(np.abs(first - second) <= 2.0 * (relative * exact_upper + absolute))


@given(class_arrays(regimes=ALL_REGIMES))
def test_log_softmax_is_the_log_of_softmax(case):
    probabilities, log_probabilities, _ = _normalized(case)
    assert log_probabilities.shape == case.x.shape and log_probabilities.dtype == case.x.dtype
    p = case.rows_of(probabilities).astype(np.float64)
    log_p = case.rows_of(log_probabilities).astype(np.float64)
    # exact: (x_j - M) <= 0 and log1p(T) >= 0 (T >= 0: the max's own term is counted, not summed)
    assert np.all(log_p <= 0.0)
    masked = np.isneginf(case.rows)
    assert np.all(np.isneginf(log_p[masked])) and np.all(p[masked] == 0.0)
    # where softmax is normal: log_softmax is within LOG_SOFTMAX_ULPS of l = log a, so
    # |l_hat - l| <= E * 2**(1-p) |l_hat| / (1 - E 2**(1-p)) (E those ULPs); softmax is a (1 + d) with
    # |d| <= rel + E s_min / s_normal, so |log a_hat - l| <= |d| / (1 - |d|); np.log adds 2 U64.
    normal = p >= np.finfo(case.dtype).tiny
    log_ratio = LOG_SOFTMAX_ULPS[case.dtype] * ulp_ratio(case.dtype)
    d = softmax_relative_bound(case.dtype, case.classes) + SOFTMAX_ULPS[case.dtype] * smallest_subnormal(
        case.dtype) / np.finfo(case.dtype).tiny
    log_of_p = np.log(p[normal])
    bound = log_ratio * np.abs(log_p[normal]) / (1.0 - log_ratio) + d / (1.0 - d) + 2.0 * U64 * np.abs(log_of_p)
    assert np.all(np.abs(log_p[normal] - log_of_p) <= bound)


@given(class_arrays(regimes=ALL_REGIMES))
def test_logsumexp_lies_between_the_max_and_the_max_plus_log_k(case):
    _, _, normalizer = _normalized(case)
    expected_shape = case.x.shape[: case.axis % case.x.ndim] + case.x.shape[case.axis % case.x.ndim + 1 :]
    assert normalizer.shape == expected_shape and normalizer.dtype == case.x.dtype
    lse = normalizer.reshape(-1).astype(np.float64)
    largest = case.rows.max(axis=1).astype(np.float64)
    # exact lower bound: M + log1p(T) with T >= 0, rounded monotonically, is >= M (a dtype value)
    assert np.all(lse >= largest)
    if case.classes == 1:
        assert np.array_equal(lse, largest)  # T = 0: the value itself
    # upper: the exact LSE <= M + log K and the computed one is within LOGSUMEXP_ULPS of it, an ULP
    # at most that at max(|M|, |M + log K|); M + log K in float64 adds U64 |M + log K|
    upper = largest + math.log(case.classes)
    bound = LOGSUMEXP_ULPS[case.dtype] * spacing(np.maximum(np.abs(largest), np.abs(upper)), case.dtype) + U64 * np.abs(upper)
    assert np.all(lse <= upper + bound)


# ---- the edges, under random placement -----------------------------------------------------------


@pytest.mark.parametrize("kind", SPECIAL_ROWS)
@given(data=st.data())
def test_special_rows_follow_the_edge_table_and_leave_the_other_rows_alone(kind, data):
    case = data.draw(class_arrays(regimes=ALL_REGIMES, special=kind), label="case")
    rng = data.draw(seeds(), label="rng")
    dy = _upstream_like(case, rng)
    probabilities, log_probabilities, normalizer = _normalized(case)
    with unmodified(case.x, probabilities, log_probabilities, dy):
        dx_softmax = softmax_backward(probabilities, dy, axis=case.axis)
        dx_log = log_softmax_backward(log_probabilities, dy, axis=case.axis)
    outputs = {
        "softmax": case.rows_of(probabilities),
        "log_softmax": case.rows_of(log_probabilities),
        "logsumexp": normalizer.reshape(-1),
        "softmax_backward": case.rows_of(dx_softmax),
        "log_softmax_backward": case.rows_of(dx_log),
    }
    special, values, upstream = case.special, case.rows[case.special], case.rows_of(dy)[case.special]
    got = {name: output[special] for name, output in outputs.items()}
    if kind == "all_neg_inf":  # S = 0: zeros, -inf, -inf, zero gradients
        assert np.all(got["softmax"] == 0.0) and np.all(np.isneginf(got["log_softmax"]))
        assert np.all(np.isneginf(got["logsumexp"]))
        assert np.all(got["softmax_backward"] == 0.0) and np.all(got["log_softmax_backward"] == 0.0)
    elif kind == "one_pos_inf":  # the limit: one-hot at the +inf
        one_hot = values == np.inf
        assert np.array_equal(got["softmax"], one_hot.astype(case.dtype))
        assert np.all(got["log_softmax"][one_hot] == 0.0) and np.all(np.isneginf(got["log_softmax"][~one_hot]))
        assert np.all(got["logsumexp"] == np.inf)
        # limits of the gradients: softmax's Jacobian -> 0; log_softmax's dx = dy - onehot * sum(dy)
        assert np.all(got["softmax_backward"] == 0.0)
        assert np.array_equal(got["log_softmax_backward"][~one_hot], upstream[~one_hot])
        totals = np.array([math.fsum(row) for row in upstream.astype(np.float64)])
        magnitudes = np.abs(upstream.astype(np.float64)).sum(axis=1)
        # sum(dy) in float64 (depth D), exp(0) within EXP_RELATIVE of 1, then dy_k - exp(0) total
        # rounded to the dtype
        limit = upstream[one_hot].astype(np.float64) - totals
        depth = summation_depth(case.classes, case.dtype)
        bound = (depth * U64 * magnitudes + EXP_RELATIVE[case.dtype] * (np.abs(totals) + depth * U64 * magnitudes)
                 + spacing(limit, case.dtype))
        assert np.all(np.abs(got["log_softmax_backward"][one_hot] - limit) <= bound)
    else:  # a NaN, or several +inf (no limit): NaN rows; logsumexp is +inf for several +inf
        for name, output in got.items():
            if name == "logsumexp" and kind == "several_pos_inf":
                assert np.all(output == np.inf)
            else:
                assert np.all(np.isnan(output)), f"{name}: a {kind} row is not all NaN"
    ordinary = ~special
    if ordinary.any():
        alone = case.rows[ordinary]
        upstream_alone = case.rows_of(dy)[ordinary]
        expected = {
            "softmax": softmax(alone),
            "log_softmax": log_softmax(alone),
            "logsumexp": logsumexp(alone),
            "softmax_backward": softmax_backward(softmax(alone), upstream_alone),
            "log_softmax_backward": log_softmax_backward(log_softmax(alone), upstream_alone),
        }
        for name, output in outputs.items():
            assert_bit_identical(output[ordinary], expected[name], f"{name}: ordinary rows against those rows alone")


# ---- backward --------------------------------------------------------------------------------------


def _row_sums(values: np.ndarray) -> np.ndarray:
    return np.array([math.fsum(row) for row in np.asarray(values, dtype=np.float64)])


def _backward_at(case, rng, output, backward):
    """(forward output rows, dy rows, exact row sums of dx) for a backward function at ``output``."""
    dy = _upstream_like(case, rng)
    with unmodified(output, dy):
        dx = backward(output, dy, axis=case.axis)
    assert dx.shape == case.x.shape and dx.dtype == case.x.dtype
    return (case.rows_of(output).astype(np.float64), case.rows_of(dy).astype(np.float64),
            _row_sums(case.rows_of(dx)))


@given(class_arrays(regimes=ALL_REGIMES), seeds())
def test_softmax_backward_rows_sum_to_zero(case, rng):
    # sum_i y_i (dy_i - d) = d (1 - sum y) + (d - d_hat) sum y, d = sum_j y_j dy_j: zero up to
    # the softmax's own sum (taken exactly here), d_hat's float64 sum (depth D), and each
    # entry's two float64 roundings plus its rounding to the dtype
    y, upstream, sums = _backward_at(case, rng, _normalized(case)[0], softmax_backward)
    total = _row_sums(y)
    dot_size = np.abs(y * upstream).sum(axis=1)
    depth = summation_depth(case.classes, case.dtype)
    entries = (2 * U64 + unit_roundoff(case.dtype)) * (y * (np.abs(upstream) + dot_size[:, None])).sum(axis=1)
    bound = (dot_size * (np.abs(1.0 - total) + U64 * total + depth * U64 * total) + entries
             + case.classes * smallest_subnormal(case.dtype))
    assert np.all(np.abs(sums) <= bound)


@given(class_arrays(regimes=ALL_REGIMES), seeds())
def test_log_softmax_backward_rows_sum_to_zero(case, rng):
    # sum_i (dy_i - e^y_i t_hat) = sum dy (1 - s) + (sum dy - t_hat) s + rounding, s = sum_i e^y_i
    # (computed here in float64 with np.exp, 2 U64 + fsum's U64), t_hat = the kernel's sum of dy
    # (depth D), its exp's relative error, and each entry's roundings
    log_y, upstream, sums = _backward_at(case, rng, _normalized(case)[1], log_softmax_backward)
    total = _row_sums(np.exp(log_y))
    upstream_total = np.abs(_row_sums(upstream))
    magnitudes = np.abs(upstream).sum(axis=1)
    depth = summation_depth(case.classes, case.dtype)
    entries = (2 * U64 + unit_roundoff(case.dtype)) * (magnitudes + total * magnitudes)
    bound = (upstream_total * (np.abs(1.0 - total) + 3 * U64 * total + U64) + depth * U64 * magnitudes * total
             + EXP_RELATIVE[case.dtype] * total * magnitudes + entries
             + case.classes * smallest_subnormal(case.dtype) * (1.0 + magnitudes))
    assert np.all(np.abs(sums) <= bound)


SMALL_FLOAT64 = dict(regimes=("normal",), dtype=np.float64, classes=st.integers(1, 8), max_rows=4)


@pytest.mark.parametrize("function", ["softmax", "log_softmax", "logsumexp"])
@given(data=st.data())
def test_backward_functions_match_central_differences(function, data):
    """float64, moderate logits: the gradients are the derivatives of the forward functions.

    Third derivatives along one logit x_k (for the bound in ``checks``): <dy, softmax(x)>:
    a_k = sigma(x_k + c) and a_j = w_j (1 - a_k) with sum_j w_j = 1, |sigma'''| <= 1/8, so
    <= max|dy| / 4; <dy, log_softmax(x)> = sum_j dy_j (x_j - LSE): |sum dy| / (6 sqrt 3);
    <g, logsumexp(x)>: |g| / (6 sqrt 3) per row (its gradient is g softmax(x)).
    """
    case = data.draw(class_arrays(**SMALL_FLOAT64), label="case")
    rng = data.draw(seeds(), label="rng")
    axis, shape = case.axis, case.x.shape
    if function == "logsumexp":
        weights = rng.standard_normal(logsumexp(case.x, axis=axis).shape)
        with unmodified(case.x):
            analytic = softmax(case.x, axis=axis) * np.expand_dims(weights, axis)
        rows_weights = np.abs(weights).reshape(-1)
        third = case.like(np.repeat(rows_weights[:, None], case.classes, axis=1) * THIRD_LSE)
        magnitude = float(np.sum(np.abs(weights) * (np.abs(logsumexp(case.x, axis=axis)) + 1.0)))
        assert_matches_central_differences(lambda x: float(np.sum(weights * logsumexp(x, axis=axis))), case.x,
                                           analytic, third, magnitude)
        return
    forward, backward = (softmax, softmax_backward) if function == "softmax" else (log_softmax, log_softmax_backward)
    dy = _upstream_like(case, rng)
    with unmodified(case.x, dy):
        output = forward(case.x, axis=axis)
        analytic = backward(output, dy, axis=axis)
    upstream = case.rows_of(dy)
    if function == "softmax":
        per_row = np.abs(upstream).max(axis=1) / 4.0
    else:
        per_row = np.abs(upstream.sum(axis=1)) * THIRD_LSE
    third = case.like(np.repeat(per_row[:, None], case.classes, axis=1))
    magnitude = float(np.sum(np.abs(dy) * (np.abs(output) + 1.0)))
    assert analytic.shape == shape
    assert_matches_central_differences(lambda x: float(np.sum(dy * forward(x, axis=axis))), case.x, analytic,
                                       third, magnitude)
