"""ULP and relative error against an exact value held as a float64 pair."""

from __future__ import annotations

import numpy as np
import pytest

from softmaxlab.harness.metrics import STAT_COLUMNS, Exact, error_stats, ulp_at


def exact(values, lo=None):
    hi = np.asarray(values, dtype=np.float64)
    return Exact(hi, np.zeros_like(hi) if lo is None else np.asarray(lo, dtype=np.float64), "test")


@pytest.mark.parametrize(
    "value, dtype, expected",
    [
        (1.0, np.float32, 2.0**-23),
        (1.0, np.float64, 2.0**-52),
        (1.5, np.float32, 2.0**-23),
        (-3.0, np.float64, 2.0**-51),
        (0.0, np.float32, 2.0**-149),  # zero: the subnormal spacing
        (0.0, np.float64, 2.0**-1074),
        (1e-40, np.float32, 2.0**-149),  # float32 subnormal range
        (1e-310, np.float64, 2.0**-1074),
        (3e38 * 4, np.float32, 2.0**104),  # above float32's range: its top binade
    ],
)
def test_ulp_at(value, dtype, expected):
    assert ulp_at(exact([value]), dtype)[0] == expected


def test_ulp_just_below_a_power_of_two_is_the_lower_binade():
    # exact value 1 - 1e-30: hi rounds to 1.0, lo pulls it below; its binade is [1/2, 1)
    assert ulp_at(exact([1.0], [-1e-30]), np.float32)[0] == 2.0**-24
    assert ulp_at(exact([1.0], [+1e-30]), np.float32)[0] == 2.0**-23


def test_one_ulp_away_is_one_ulp(rng):
    values = rng.uniform(-5, 5, size=1000).astype(np.float32)
    neighbours = np.nextafter(values, np.float32(np.inf))
    stats = error_stats(neighbours, exact(values.astype(np.float64)), np.float32)
    assert stats["max_ulp"] == pytest.approx(1.0) and stats["median_ulp"] == pytest.approx(1.0)
    assert stats["max_rel"] < 2.0**-22


def test_the_low_part_counts():
    # computed 1.0 against exact 1 + 2**-60: 2**-60 / 2**-52 = 2**-8 ULP of float64
    stats = error_stats(np.array([1.0]), exact([1.0], [2.0**-60]), np.float64)
    assert stats["max_ulp"] == 2.0**-8


def test_non_finite_results_are_counted_not_averaged():
    truth = exact([1.0, 2.0, -np.inf, -np.inf])
    computed = np.array([1.0, np.nan, -np.inf, np.nan])
    stats = error_stats(computed, truth, np.float64)
    assert list(stats) == list(STAT_COLUMNS)
    assert stats["n_values"] == 2 and stats["n_nonfinite"] == 1
    assert stats["n_special"] == 2 and stats["n_special_mismatch"] == 1
    assert stats["max_ulp"] == 0.0


def test_relative_error_of_an_exact_zero():
    stats = error_stats(np.array([0.0, 1e-30]), exact([0.0, 0.0]), np.float64)
    assert stats["max_rel"] == np.inf and stats["median_rel"] == np.inf
    assert error_stats(np.array([0.0]), exact([0.0]), np.float64)["max_rel"] == 0.0


def test_all_non_finite_gives_nan_statistics():
    stats = error_stats(np.array([np.inf, np.nan]), exact([1.0, 2.0]), np.float32)
    assert stats["n_nonfinite"] == 2 and np.isnan(stats["max_ulp"])


def test_shape_and_dtype_are_validated():
    with pytest.raises(ValueError, match="computed must have the exact value's shape"):
        error_stats(np.zeros(3), exact([0.0, 0.0]), np.float64)
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        ulp_at(exact([1.0]), np.float16)


def test_rowwise_ulps_measure_against_the_row_scale():
    # an error of 2**-23 on an entry of 1e-10 is enormous elementwise, one ULP of the row's 1.0
    truth = exact([[1.0, 1e-10], [4.0, 4.0]])
    computed = np.array([[1.0, 1e-10 + 2.0**-23], [4.0, 4.0 + 2.0**-21]])
    stats = error_stats(computed, truth, np.float32)
    assert stats["max_rowwise_ulp"] == pytest.approx(1.0)
    assert stats["max_ulp"] > 1e5
