"""Tests for kernels/_numerics/vector.py: the explicit vector loops of the row max, of the float32
rows' exponentials, of log_softmax_backward's float32 write and of the streamed writes, against
NumPy and the scalar forms that strided rows keep (bit for bit), and their code (one max per
vector; ``vscalefps`` on AVX-512; the prefetches; the non-temporal stores)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import numba
import pytest
from numba import njit

from softmaxlab.kernels._numerics import rows as _rows
from softmaxlab.kernels._config import REDUCTION_FASTMATH
from softmaxlab.kernels._numerics.exp import exp32_difference_floored
from softmaxlab.kernels._numerics import vector as _vector
from softmaxlab.kernels._numerics.vector import VECTOR_BYTES, _has_avx512

from ._shared import assembly_of


@njit(cache=False)
def _block_max(values):
    return _rows.block_max(values)


@njit(cache=False)
def _block_max_of_row(x, i, start, stop):
    return _rows.block_max(x[i, start:stop])


def _reference(values):
    return -np.inf if np.all(np.isnan(values)) else float(np.nanmax(values))


# every length around the vector, the four-vector group and the masked tail, for both lanes counts
_LENGTHS = list(range(0, 2 * VECTOR_BYTES // 4 + 2)) + [127, 128, 129, 1000, 4097]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_max_skips_nan_and_matches_numpy_at_every_length(dtype):
    rng = np.random.default_rng(7)
    for length in _LENGTHS:
        patterns = {"normal": (rng.standard_normal(length) * 10).astype(dtype)}
        if length:
            with_nan = patterns["normal"].copy()
            with_nan[rng.integers(0, length, 3)] = np.nan
            largest_last = patterns["normal"].copy()
            largest_last[-1] = 1e30  # the masked tail holds the max
            largest_first = patterns["normal"].copy()
            largest_first[0] = 1e30
            patterns.update(
                with_nan=with_nan,
                all_nan=np.full(length, np.nan, dtype),
                all_minus_inf=np.full(length, -np.inf, dtype),
                plus_inf=np.where(np.arange(length) == length // 2, np.inf, patterns["normal"]).astype(dtype),
                largest_last=largest_last,
                largest_first=largest_first,
            )
        for name, values in patterns.items():
            before = values.copy()
            assert _block_max(values) == _reference(values), (length, name)
            # the strided view takes the maxnum loop: the same answer
            assert _block_max(values[::2]) == _reference(values[::2]), (length, name)
            np.testing.assert_array_equal(values, before)


def test_row_max_of_a_slice_reads_only_the_slice():
    # the masked tail must not read (or take the max of) the elements after the slice
    x = np.full((3, 300), 5.0, np.float32)
    x[1, :77] = np.arange(77, dtype=np.float32) - 100.0
    for stop in range(1, 77):
        assert _block_max_of_row(x, 1, 0, stop) == stop - 101.0
        assert _block_max_of_row(x, 1, stop - 1, stop) == stop - 101.0


def test_contiguous_rows_compile_to_one_max_per_vector():
    row = np.linspace(-3, 0, 300).astype(np.float32)
    _block_max(row)
    assembly = _block_max.inspect_asm(_block_max.signatures[0])
    assert "maxps" in assembly  # vmaxps (AVX) or maxps (SSE)
    # no NaN test per vector (the maxnum loop's vcmpunordps): NaN fails the comparison instead
    assert "unord" not in assembly
    # the strided view's maxnum loop tests NaN per vector
    assert "unord" in assembly_of(_rows._strided_max, (numba.typeof(row[::2]),))


@njit(cache=False)
def _vector_exponentials(values, largest, out):
    _rows.store_exp32_floored(values, largest, out, values[:0])


@njit(cache=False)
def _scalar_exponentials(values, largest, out):
    for j in range(values.shape[0]):
        out[j] = exp32_difference_floored(values[j], largest)


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def _stored_in_a_reassociating_caller(rows, largest, out):
    # the cross-entropy and softmax path: the loop inlined into code compiled with reassoc
    for i in range(rows.shape[0]):
        _rows.store_exp_sum(rows[i], 1.0, largest[i], out[i], rows[i, :0])


def _bits(values):
    return values.view(np.int32)


@pytest.mark.parametrize("largest", [0.0, 1.5, -3.25, 88.0, -1e5, 7e-3, 2.0**20, -(2.0**20) + 0.5])
def test_exp_store_equals_the_scalar_exponential_bit_for_bit(largest):
    rng = np.random.default_rng(int(abs(largest) * 4) + 1)
    largest = np.float32(largest)
    for length in _LENGTHS:
        # from ties and near-ties to far below the underflow
        spread = rng.choice(np.array([1e-6, 1.0, 30.0, 200.0], np.float32), length)
        values = (largest - np.abs(rng.standard_normal(length)).astype(np.float32) * spread).astype(np.float32)
        if length > 3:
            values[:3] = [-np.inf, np.nan, largest]
        before = values.copy()
        vector, scalar = np.empty_like(values), np.empty_like(values)
        _vector_exponentials(values, largest, vector)
        _scalar_exponentials(values, largest, scalar)
        np.testing.assert_array_equal(_bits(vector), _bits(scalar))
        np.testing.assert_array_equal(_bits(values), _bits(before))
        # a strided row keeps the scalar loop
        strided = np.full(2 * length, np.float32(7.0))
        _vector_exponentials(values[::-1][::-1], largest, strided[::2])
        np.testing.assert_array_equal(_bits(strided[::2]), _bits(scalar))
        np.testing.assert_array_equal(strided[1::2], 7.0)


@njit(cache=False)
def _exponentials_ahead(values, largest, out, ahead):
    _rows.store_exp32_floored(values, largest, out, ahead)


def test_exp_store_with_a_block_ahead_stores_the_same_bits_and_leaves_it_alone():
    # the prefetch of the block read next is a hint: whatever its length (shorter than the row,
    # longer, none), the stored exponentials are the scalar ones and ``ahead`` is not written
    rng = np.random.default_rng(17)
    largest = np.float32(2.5)
    values = (largest - np.abs(rng.standard_normal(1000)).astype(np.float32) * 20).astype(np.float32)
    scalar = np.empty_like(values)
    _scalar_exponentials(values, largest, scalar)
    for ahead_length in (0, 1, 15, 16, 17, 500, 1000, 4096):
        ahead = rng.standard_normal(ahead_length).astype(np.float32)
        kept = ahead.copy()
        stored = np.full_like(values, np.nan)
        _exponentials_ahead(values, largest, stored, ahead)
        np.testing.assert_array_equal(_bits(stored), _bits(scalar))
        np.testing.assert_array_equal(_bits(ahead), _bits(kept))
    assembly = _exponentials_ahead.inspect_asm(_exponentials_ahead.signatures[0])
    assert "prefetcht0" in assembly


def test_following_block_is_the_next_block_of_the_row_then_of_the_next_row():
    x = np.arange(3 * 10, dtype=np.float32).reshape(3, 10)
    following = _rows.following_block
    np.testing.assert_array_equal(following(x, 0, 0, 4), x[0, 4:8])
    np.testing.assert_array_equal(following(x, 0, 4, 8), x[0, 8:10])  # the row's partial last block
    np.testing.assert_array_equal(following(x, 0, 8, 10), x[1, 0:2])  # then the next row's start
    np.testing.assert_array_equal(following(x, 1, 8, 10), x[2, 0:2])
    assert following(x, 2, 8, 10).shape == (0,)  # the last block of the last row
    np.testing.assert_array_equal(following(x, 1, 0, 10), x[2])  # after a row of one block, the next row
    assert following(x, 2, 0, 10).shape == (0,)  # nothing after the last row


def test_exp_store_keeps_its_rounding_inside_a_reassociating_caller():
    # Numba gives its fastmath flags to every float instruction without flags, an
    # intrinsic's included: with reassoc the two_sum folded and e_j moved by several ULP
    rng = np.random.default_rng(3)
    rows = (rng.standard_normal((32, 1000)) * 3).astype(np.float32)
    largest = rows.max(axis=1).astype(np.float64)
    stored, scalar = np.empty_like(rows), np.empty_like(rows)
    _stored_in_a_reassociating_caller(rows, largest, stored)
    for i in range(rows.shape[0]):
        _scalar_exponentials(rows[i], np.float32(largest[i]), scalar[i])
    np.testing.assert_array_equal(_bits(stored), _bits(scalar))


def test_exp_store_scales_by_scalef_on_avx512_and_calls_no_libm():
    values = np.linspace(-3, 0, 300).astype(np.float32)
    _vector_exponentials(values, np.float32(0.0), np.empty_like(values))
    assembly = _vector_exponentials.inspect_asm(_vector_exponentials.signatures[0])
    assert "exp@" not in assembly and "callq\texp" not in assembly
    from numba.core.registry import cpu_target

    if _has_avx512(cpu_target.target_context):
        assert "vscalefps" in assembly and "zmm" in assembly
    else:
        assert "vscalefps" not in assembly


def test_exp_store_zeroes_the_elements_below_the_floor_by_the_scaling_mask():
    # a masked logit (-inf, -1e4) is far below the floor: its 0 must not come from an
    # underflowing product (a microcode assist per vector on Intel cores), so on AVX-512
    # every vscalefps of the loop is masked and zeroing ({z}); the zeros are the scalar ones
    largest = np.float32(2.0)
    values = np.full(1000, -np.inf, np.float32)
    values[1::3] = np.float32(-1e4)
    values[2::3] = largest - np.float32(109.0)  # above the floor: computed, rounds to +0
    values[::50] = largest
    vector, scalar = np.full_like(values, np.nan), np.empty_like(values)
    _vector_exponentials(values, largest, vector)
    _scalar_exponentials(values, largest, scalar)
    np.testing.assert_array_equal(_bits(vector), _bits(scalar))
    assert (vector[values < largest] == 0.0).all() and not np.signbit(vector).any()
    from numba.core.registry import cpu_target

    if _has_avx512(cpu_target.target_context):
        scalings = [line for line in _vector_exponentials.inspect_asm(_vector_exponentials.signatures[0]).splitlines()
                    if "vscalefps" in line]
        assert scalings and all("{z}" in line for line in scalings)


def test_exp_store_without_avx512_scales_by_two_products_to_the_same_bits(monkeypatch):
    # the loop for targets without AVX-512 (2**(k + 64) built from integer bits, then 2**-64)
    from softmaxlab.kernels._numerics import vector as _vector

    monkeypatch.setattr(_vector, "_has_avx512", lambda context: False)

    @njit(cache=False)
    def portable(values, largest, out):
        _vector.row_exp32_store(values, largest, out, values[:0])

    rng = np.random.default_rng(11)
    for largest in (np.float32(0.0), np.float32(-7.5), np.float32(3e4)):
        values = (largest - np.abs(rng.standard_normal(1037)).astype(np.float32) * 60).astype(np.float32)
        values[:2] = [-np.inf, np.nan]
        got, expected = np.empty_like(values), np.empty_like(values)
        portable(values, largest, got)
        _scalar_exponentials(values, largest, expected)
        np.testing.assert_array_equal(_bits(got), _bits(expected))
    assert "vscalefps" not in portable.inspect_asm(portable.signatures[0])


# ---- log_softmax_backward's float32 write (row_exp_product_difference32) -------------------


@njit(cache=False)
def _vector_differences(y, dy, out, total, ahead_y, ahead_dy):
    _rows.store_exp_product_difference(y, dy, out, total, np.inf, ahead_y, ahead_dy)


@njit(cache=False)
def _scalar_differences(y, dy, out, total):
    _rows._scalar_exp_product_difference(y, dy, out, total, np.inf)


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def _differences_in_a_reassociating_caller(y, dy, out, totals):
    for i in range(y.shape[0]):
        _rows.store_exp_product_difference(y[i], dy[i], out[i], totals[i], np.inf, y[i, :0], dy[i, :0])


def _log_probabilities_and_upstream(rng, length):
    # log-probabilities from near 0 to far below float32's exp range, then values no
    # log-probability takes (positive, beyond the clamps at -708 and 709) and the specials
    spread = rng.choice(np.array([1e-6, 1.0, 30.0, 200.0, 1000.0], np.float32), length)
    y = (-np.abs(rng.standard_normal(length)).astype(np.float32) * spread).astype(np.float32)
    dy = (rng.standard_normal(length) * rng.choice(np.array([1e-30, 1.0, 1e30], np.float32), length)).astype(np.float32)
    if length > 8:
        y[:8] = [-np.inf, np.nan, 0.0, -0.0, 3.5, -750.0, 800.0, np.inf]
        dy[8 if length > 9 else 0] = np.nan
    return y, dy


@pytest.mark.parametrize("total", [0.0, 1.0, -0.75, 3e38, -1e-30, 2.0**-1000, np.inf, np.nan])
def test_log_softmax_backward_write_equals_the_scalar_loop_bit_for_bit(total):
    rng = np.random.default_rng(5)
    for length in _LENGTHS:
        y, dy = _log_probabilities_and_upstream(rng, length)
        kept = y.copy(), dy.copy()
        vector, scalar = np.empty_like(y), np.empty_like(y)
        _vector_differences(y, dy, vector, total, y[:0], dy[:0])
        _scalar_differences(y, dy, scalar, total)
        np.testing.assert_array_equal(_bits(vector), _bits(scalar), err_msg=f"length {length}")
        np.testing.assert_array_equal(_bits(y), _bits(kept[0]))
        np.testing.assert_array_equal(_bits(dy), _bits(kept[1]))
        # a strided row keeps the scalar loop: the same bits
        strided = np.full(2 * length, np.float32(7.0))
        _vector_differences(y, dy, strided[::2], total, y[:0], dy[:0])
        np.testing.assert_array_equal(_bits(strided[::2]), _bits(scalar))
        np.testing.assert_array_equal(strided[1::2], 7.0)


def test_log_softmax_backward_write_prefetches_the_blocks_ahead_and_leaves_them_alone():
    rng = np.random.default_rng(23)
    y, dy = _log_probabilities_and_upstream(rng, 1000)
    scalar = np.empty_like(y)
    _scalar_differences(y, dy, scalar, -0.3)
    for ahead_length in (0, 1, 15, 16, 17, 500, 1000, 4096):
        ahead_y, ahead_dy = (rng.standard_normal(ahead_length).astype(np.float32) for _ in range(2))
        kept = ahead_y.copy(), ahead_dy.copy()
        stored = np.full_like(y, np.nan)
        _vector_differences(y, dy, stored, -0.3, ahead_y, ahead_dy)
        np.testing.assert_array_equal(_bits(stored), _bits(scalar))
        np.testing.assert_array_equal(_bits(ahead_y), _bits(kept[0]))
        np.testing.assert_array_equal(_bits(ahead_dy), _bits(kept[1]))
    assembly = _vector_differences.inspect_asm(_vector_differences.signatures[0])
    assert "prefetcht1" in assembly
    assert "exp@" not in assembly and "callq\texp" not in assembly


def test_log_softmax_backward_write_keeps_its_rounding_inside_a_reassociating_caller():
    rng = np.random.default_rng(29)
    y = (-np.abs(rng.standard_normal((16, 1000))) * 5).astype(np.float32)
    dy = rng.standard_normal((16, 1000)).astype(np.float32)
    totals = dy.astype(np.float64).sum(axis=1)
    stored, scalar = np.empty_like(y), np.empty_like(y)
    _differences_in_a_reassociating_caller(y, dy, stored, totals)
    for i in range(y.shape[0]):
        _scalar_differences(y[i], dy[i], scalar[i], totals[i])
    np.testing.assert_array_equal(_bits(stored), _bits(scalar))


@pytest.mark.parametrize("total", [0.0, 1.0, -0.75, 1e308, -1e-300, 2.0**-1000, np.inf, np.nan])
def test_float64_write_of_nonpositive_rows_has_the_general_loops_bits(total):
    # rows whose max is <= 0 (log-probabilities) take exp64_nonpositive: the same bits as exp64
    rng = np.random.default_rng(6)
    for length in _LENGTHS:
        y, dy = (part.astype(np.float64) for part in _log_probabilities_and_upstream(rng, length))
        y[y > 0] = -740.0  # a subnormal exp, in place of the values no log-probability takes
        if length > 8:
            y[4:8] = [-745.1, -745.2, -1e300, -708.9]
        dy[::3] *= 1e250
        nonpositive, general = np.full_like(y, 7.0), np.full_like(y, 7.0)
        _scalar_differences_at(y, dy, nonpositive, total, 0.0)
        _scalar_differences_at(y, dy, general, total, np.inf)
        np.testing.assert_array_equal(_bits(nonpositive), _bits(general), err_msg=f"length {length}")


@njit(cache=False)
def _scalar_differences_at(y, dy, out, total, largest):
    _rows.store_exp_product_difference(y, dy, out, total, largest, y[:0], dy[:0])


def test_next_row_block_is_the_same_block_of_the_next_row():
    x = np.arange(3 * 10, dtype=np.float32).reshape(3, 10)
    np.testing.assert_array_equal(_rows.next_row_block(x, 0, 4, 8), x[1, 4:8])
    np.testing.assert_array_equal(_rows.next_row_block(x, 1, 0, 10), x[2])
    assert _rows.next_row_block(x, 2, 0, 10).shape == (0,)


# ---- the compensated float64 sums of the backward normalizers (row_dot2, row_sum2) ---------


@njit(cache=False)
def _dot2(a, b):
    return _rows.block_dot2(a, b)


@njit(cache=False)
def _sum2(values):
    return _rows.block_sum2(values)


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def _dot2_in_a_reassociating_caller(a, b):
    return _rows.block_dot2(a, b)


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def _plain_dot(a, b):
    total = 0.0
    for j in range(a.shape[0]):
        total += a[j] * b[j]
    return total


def _exact_dot(a, b):
    return sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a, b)), Fraction(0))


def _ill_conditioned(rng, length):
    """(a, b) with terms over 40 binades whose dot product cancels to a few parts in 1e12."""
    a = rng.standard_normal(length) * np.exp2(rng.integers(-20, 20, length))
    b = rng.standard_normal(length)
    if length > 1:
        b[-1] = -float(_exact_dot(a[:-1], b[:-1])) / a[-1] * (1 + 1e-12)
    return a, b


_COMPENSATED_LENGTHS = _LENGTHS + [31, 32, 33, 63, 64, 65, 95, 96, 97]


def test_compensated_dot_and_sum_match_their_scalar_twin_bit_for_bit():
    rng = np.random.default_rng(19)
    for length in _COMPENSATED_LENGTHS:
        a, b = _ill_conditioned(rng, length)
        # a strided view takes the scalar twin (the same 32 lanes, steps and joins)
        strided_a, strided_b = np.repeat(a, 2)[::2], np.repeat(b, 2)[::2]
        assert _dot2(a, b) == _dot2(strided_a, strided_b), length
        assert _sum2(a) == _sum2(strided_a), length
        assert _dot2_in_a_reassociating_caller(a, b) == _dot2(a, b), length


def test_compensated_dot_is_correctly_rounded_up_to_the_second_order_term():
    # Dot2's bound: |s - exact| <= u |exact| + gamma_n^2 sum |a_j b_j| (Ogita, Rump & Oishi 2005)
    rng = np.random.default_rng(23)
    u = 2.0**-53
    plain_within_bound = 0
    for length in _COMPENSATED_LENGTHS[1:]:
        a, b = _ill_conditioned(rng, length)
        exact = _exact_dot(a, b)
        gamma = length * u / (1 - length * u)
        magnitude = float(np.sum(np.abs(a * b)))
        bound = u * abs(float(exact)) + gamma**2 * magnitude
        assert abs(Fraction(_dot2(a, b)) - exact) <= Fraction(bound), length
        sum_exact = sum((Fraction(float(x)) for x in a), Fraction(0))
        sum_bound = u * abs(float(sum_exact)) + gamma**2 * float(np.sum(np.abs(a)))
        assert abs(Fraction(_sum2(a)) - sum_exact) <= Fraction(sum_bound), length
        plain_within_bound += abs(Fraction(_plain_dot(a, b)) - exact) <= Fraction(bound)
    # the plain float64 sum of the same terms does not meet that bound (the test can fail)
    assert plain_within_bound < len(_COMPENSATED_LENGTHS) // 2


@pytest.mark.parametrize("length", [1, 7, 40, 1000])
def test_compensated_sums_keep_the_plain_sums_infinities_and_nan(length):
    ones = np.ones(length)
    for special, expected in [(np.inf, np.inf), (-np.inf, -np.inf), (np.nan, np.nan)]:
        values = ones.copy()
        values[length // 2] = special
        np.testing.assert_equal(_sum2(values), expected)
        np.testing.assert_equal(_dot2(values, ones), expected)
    if length > 1:
        both = ones.copy()
        both[0], both[-1] = np.inf, -np.inf
        assert np.isnan(_sum2(both))
        # finite terms whose sum overflows: inf, as the plain sum (TwoSum's error would be NaN)
        huge = np.full(length, 1.5e308)
        assert _sum2(huge) == np.inf and _dot2(huge, ones) == np.inf
    assert _sum2(np.zeros(0)) == 0.0 and _dot2(np.zeros(0), np.zeros(0)) == 0.0


def test_compensated_sums_compile_to_vectors():
    a = np.linspace(-1, 1, 300)
    _dot2(a, a)
    _sum2(a)
    for function in (_dot2, _sum2):
        assembly = function.inspect_asm(function.signatures[0])
        assert "ymm" in assembly or "zmm" in assembly


# ---- the gap sums of label smoothing (row_gap_sums, row_target_gap_sums), in an order of their own -


@njit(cache=False)
def _gap_sums(values, weights, anchor):
    return _rows.gap_sums(values, weights, anchor)


@njit(cache=False)
def _plain_gap_sums(values, anchor):
    return _rows.gap_sums(values, None, anchor)


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def _gap_sums_in_a_reassociating_caller(values, weights, anchor):
    # the caller's reassoc must not reach the sums' order
    total, weight_total = _rows.gap_sums(values, weights, anchor)
    return total + 0.0, weight_total


@njit(cache=False)
def _target_gap_sums(values, probabilities, weights, anchor, keep, uniform):
    return _rows.target_gap_sums(values, probabilities, weights, anchor, keep, uniform)


def _lane_order_gap_sums(values, weights, anchor, probabilities=None, keep=1.0, uniform=0.0):
    """The specified order in plain Python floats: lane L sums the terms j = L mod 32 in
    order (the row padded with zero terms to one more group of 32), then lane L + L + 16,
    + 8, + 4, + 2, + 1.  With ``probabilities`` the weights are w_j (keep p_j + uniform)."""
    lanes = 32
    totals, weight_totals = [0.0] * lanes, [0.0] * lanes
    plain = weights is None and probabilities is None
    for j in range((len(values) // lanes + 1) * lanes):
        term, weight = 0.0, 0.0
        if j < len(values):
            gap = anchor - float(values[j])
            weight = 1.0 if weights is None else float(weights[j])
            if probabilities is not None:
                target = keep * float(probabilities[j]) + uniform
                weight = target if weights is None else weight * target
            term = gap if plain else (weight * gap if weight != 0.0 else 0.0)
        totals[j % lanes] += term
        weight_totals[j % lanes] += weight
    half = lanes
    while half > 1:
        half //= 2
        for lane in range(half):
            totals[lane] += totals[lane + half]
            weight_totals[lane] += weight_totals[lane + half]
    return totals[0], (float(len(values)) if plain else weight_totals[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gap_sums_follow_their_order_bit_for_bit_in_every_layout_and_caller(dtype):
    rng = np.random.default_rng(29)
    for length in _COMPENSATED_LENGTHS + [255, 256, 257]:
        values = (rng.standard_normal(length) * np.exp2(rng.integers(-10, 10, length))).astype(dtype)
        anchor = float(values.max()) if length else 0.0
        weights = rng.uniform(0.0, 3.0, length)
        weights[rng.integers(0, max(length, 1), length // 5)] = 0.0
        strided_values, strided_weights = np.repeat(values, 2)[::2], np.repeat(weights, 2)[::2]
        for given, strided in ((weights, strided_weights), (None, None)):
            expected = _lane_order_gap_sums(values, given, anchor)
            assert _gap_sums(values, given, anchor) == expected, (length, given is None)
            assert _gap_sums(strided_values, strided, anchor) == expected, (length, given is None)
            assert _gap_sums_in_a_reassociating_caller(values, given, anchor) == expected, length
        assert _plain_gap_sums(values, anchor) == _lane_order_gap_sums(values, None, anchor)
        probabilities = rng.dirichlet(np.ones(max(length, 1)))[:length].astype(dtype)
        strided_probabilities = np.repeat(probabilities, 2)[::2]
        for given, strided in ((weights, strided_weights), (None, None)):
            expected = _lane_order_gap_sums(values, given, anchor, probabilities, 0.8, 0.2 / 1000)
            assert _target_gap_sums(values, probabilities, given, anchor, 0.8, 0.2 / 1000) == expected, length
            assert _target_gap_sums(strided_values, strided_probabilities, strided, anchor, 0.8, 0.2 / 1000) == expected


def test_gap_sums_give_a_zero_weight_term_nothing_and_keep_infinities():
    values = np.array([0.0, -np.inf, -1.0, -2.0] * 10)
    weights = np.tile([1.0, 0.0, 2.0, 0.5], 10)
    # the masked logit (-inf) has weight 0: its term is 0, not 0 * inf = NaN
    assert _gap_sums(values, weights, 0.0) == (10 * (0.0 + 2.0 + 1.0), 10 * 3.5)
    # unweighted, the -inf logits' gaps are +inf, as in the loss's own sum
    assert _gap_sums(values, None, 0.0) == (np.inf, 40.0)
    assert np.isnan(_gap_sums(np.array([1.0, np.nan]), None, 1.0)[0])
    # a NaN weight is not a zero weight: its term is NaN in the vector loop and its scalar twin
    nan_weights = np.tile([1.0, np.nan], 20)
    assert np.isnan(_gap_sums(values, nan_weights, 0.0)[0])
    assert np.isnan(_gap_sums(np.repeat(values, 2)[::2], np.repeat(nan_weights, 2)[::2], 0.0)[0])
    assert _gap_sums(np.zeros(0), None, 0.0) == (0.0, 0.0)


def test_gap_sums_compile_to_vectors():
    values = np.linspace(-1, 1, 300)
    _gap_sums(values, np.ones(300), 1.0)
    _target_gap_sums(values, np.ones(300) / 300, None, 1.0, 0.9, 0.1 / 300)
    for function in (_gap_sums, _target_gap_sums):
        assembly = function.inspect_asm(function.signatures[0])
        assert "ymm" in assembly or "zmm" in assembly


# ---- the vector width LLVM may use (``_config.full_width_vectors``) ----------------------------

_WIDTH_PROBE = """
import json, sys
{before}
import numpy as np, numba
from llvmlite import binding
from numba.core import config
from softmaxlab.kernels import _config
from softmaxlab.kernels._margin_rows import _sum_exp_scaled
values = np.linspace(-3.0, 0.0, 300)
_sum_exp_scaled(values, values, 1.0, 0.0)
assembly = _sum_exp_scaled.inspect_asm(_sum_exp_scaled.signatures[0])
print(json.dumps({{"set": _config.FULL_WIDTH_VECTORS, "features": config.CPU_FEATURES,
                  "avx512f": bool(binding.get_host_cpu_features().get("avx512f", False)),
                  "zmm": "%zmm" in assembly}}))
"""


def _width_probe(before="", **environment):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "SOFTMAXLAB_CACHE": "0", **environment}
    done = subprocess.run([sys.executable, "-c", _WIDTH_PROBE.format(before=before)], env=env, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernels_compile_for_the_full_vector_width_on_avx512():
    probe = _width_probe()
    if not probe["avx512f"]:
        assert not probe["set"] and probe["features"] is None and not probe["zmm"]
        return
    # the float64 exponential sum on 512-bit registers, which LLVM's Intel models would halve
    assert probe["set"] and probe["features"].endswith(",-prefer-256-bit") and probe["zmm"], probe


def test_the_vector_width_is_left_to_the_environment_and_to_earlier_numba_code():
    named = _width_probe(NUMBA_CPU_NAME="generic")  # Numba's feature string for it: empty
    assert not named["set"] and named["features"] == "" and not named["zmm"], named
    # a function compiled before softmaxlab is imported has created Numba's CPU target
    earlier = _width_probe(before="import numba\n@numba.njit\ndef f(x):\n    return x\nf(1)")
    assert not earlier["set"] and earlier["features"] is None, earlier


# ---- streamed writes -----------------------------------------------------------------------


@njit(cache=False)
def _stream_shifted_log(values, destination, shift, log_total):
    _vector.row_shifted_log32_stream(values, destination, shift, log_total)


@njit(cache=False)
def _stream_scaled(source, destination, high, low):
    _rows.stream_scaled(source, destination, high, low)


@njit(cache=False)
def _scaled_in_place(destination, high, low):
    _rows.scale_shift_in_place(destination, high, low, 0.0)


@pytest.mark.parametrize("length", _LENGTHS)
def test_streamed_writes_equal_the_scalar_loops_at_every_alignment_and_write_nothing_else(length):
    rng = np.random.default_rng(length)
    guard = 40
    for offset in range(VECTOR_BYTES // 4):  # every position of the row against a cache line
        values = (rng.standard_normal(length) * 30).astype(np.float32)
        values[: length // 7] = -np.inf  # the write's inputs include -inf and NaN
        values[length // 2 : length // 2 + (length > 9)] = np.nan
        shift, log_total = np.float32(2.5), np.float32(0.375)
        start = guard + offset
        memory = np.full(length + 2 * guard, 7.0, np.float32)
        _stream_shifted_log(values, memory[start : start + length], shift, log_total)
        np.testing.assert_array_equal(memory[start : start + length], (values - shift) - log_total)
        assert (memory[:start] == 7.0).all() and (memory[start + length :] == 7.0).all()

        exponentials = rng.random(length).astype(np.float32)
        high, low = 0.123456789012345, 3.1e-12
        expected = exponentials.copy()
        _scaled_in_place(expected, high, low)
        memory = np.full(length + 2 * guard, 7.0, np.float32)
        _stream_scaled(exponentials, memory[start : start + length], high, low)
        np.testing.assert_array_equal(memory[start : start + length], expected)
        assert (memory[:start] == 7.0).all() and (memory[start + length :] == 7.0).all()


def test_streamed_writes_store_whole_lines_non_temporally():
    values = np.ones(100, np.float32)
    _stream_shifted_log(values, np.empty(100, np.float32), np.float32(0), np.float32(0))
    _stream_scaled(values, np.empty(100, np.float32), 1.0, 0.0)
    for function in (_stream_shifted_log, _stream_scaled):
        code = "".join(function.inspect_asm().values())
        assert "movntps" in code and "sfence" in code
