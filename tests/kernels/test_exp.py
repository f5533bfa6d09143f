"""Tests for kernels/_numerics/exp.py: error bounds (a strided subset of the exhaustive sweep),
special values, the pair form used by softmax, and vectorization of the loops."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from numba import njit

from softmaxlab.harness.exp_accuracy import (
    FLOAT32_EXP_BOUND_ULP,
    FLOAT32_WIDE_EXP_BOUND_ULP,
    FLOAT64_EXP_BOUND_ULP,
    FLOAT64_EXP_NORMAL_BOUND_ULP,
    check_longdouble_reference,
    sweep_float32,
    sweep_float64,
)
from softmaxlab.kernels._numerics import rows as _rows
from softmaxlab.kernels._config import REDUCTION_FASTMATH
from softmaxlab.kernels._numerics.exp import (
    exp32,
    exp32_difference,
    exp32_difference_floored,
    exp32_wide,
    exp64,
    exp64_difference_floored,
    exp64_nonpositive,
    exp64_pair,
    log1p_unit,
    two_sum,
)

from . import exact
from ._shared import assembly_of, compiled_here


@pytest.fixture(autouse=True)
def _fifty_digits():
    """The mpmath references of this module at 50 digits, whatever another test left set."""
    with mpmath.workdps(50):
        yield


def test_float32_exp_within_bound_on_a_strided_subset_of_every_float32():
    # every 4099th bit pattern of all 2**32 (the full sweep is `softmaxlab exp-accuracy`)
    result = sweep_float32(stride=4099)
    assert result["inputs"] > 500_000
    assert result["wrong_specials"] == 0
    assert result["exp32"]["max_ulp"] <= FLOAT32_EXP_BOUND_ULP
    assert result["exp32_wide"]["max_ulp"] <= FLOAT32_WIDE_EXP_BOUND_ULP
    # the kernels' form is exp32 itself on every x <= 0
    assert result["kernel_mismatches"] == 0


def test_float64_exp_within_bound_on_random_inputs():
    result = sweep_float64(200_000)
    assert result["max_ulp"] <= FLOAT64_EXP_BOUND_ULP
    assert result["max_ulp_normal"] <= FLOAT64_EXP_NORMAL_BOUND_ULP
    assert result["kernel_mismatches"] == 0


def test_exp_accuracy_command_writes_its_table_with_the_installed_packages(tmp_path, capsys):
    # the command's quick sweep end to end: its table printed (no optional dependency such as
    # tabulate) and written, every function within its bound, the kernels' forms equal
    import pandas as pd

    from softmaxlab.harness import cli

    assert cli.main(["exp-accuracy", "--quick", "--out", str(tmp_path / "exp.csv")]) == 0
    table = pd.read_csv(tmp_path / "exp.csv")
    assert list(table["function"]) == ["exp32", "exp32_wide", "exp64"]
    assert (table["max_ulp"] <= table["bound_ulp"]).all() and (table["wrong_specials"] == 0).all()
    printed = capsys.readouterr().out
    assert "| exp32 | float32 |" in printed and "vector loop != exp32(x) for 0 inputs" in printed


def test_longdouble_reference_agrees_with_mpmath():
    mpmath.mp.dps = 15  # (inside this module's 50-digit fixture, which restores it)
    assert check_longdouble_reference(samples=200) < 0.01
    assert mpmath.mp.dps == 15  # it works at 50 digits and leaves the caller's precision alone


@pytest.mark.parametrize("function,dtype", [(exp32, np.float32), (exp32_wide, np.float32), (exp64, np.float64)])
def test_special_values(function, dtype):
    assert function(dtype(np.inf)) == np.inf
    assert function(dtype(-np.inf)) == 0.0
    assert np.isnan(function(dtype(np.nan)))
    assert function(dtype(0.0)) == 1.0 and function(dtype(-0.0)) == 1.0
    finfo = np.finfo(dtype)
    assert function(dtype(np.log(finfo.max)) + dtype(1.0)) == np.inf
    assert function(dtype(np.log(finfo.smallest_subnormal)) - dtype(1.0)) == 0.0
    # the largest finite result and a subnormal result, against mpmath
    for value in (np.nextafter(dtype(np.log(finfo.max)), dtype(0)), dtype(np.log(finfo.tiny)) - dtype(3.0)):
        computed = np.asarray([function(value)], dtype=dtype)
        assert exact.ulp_errors(computed, [mpmath.exp(mpmath.mpf(float(value)))])[0] <= 1.0


def test_pair_form_is_as_accurate_as_an_exact_argument():
    # softmax calls exp64_pair(two_sum(x, -max)): the rounding error of x - max must not show
    rng = np.random.default_rng(11)
    x = rng.normal(0.0, 8.0, 2000)
    largest = x.max() + 3.7
    worst = 0.0
    for value in x:
        high, low = two_sum(value, -largest)
        reference = mpmath.exp(mpmath.mpf(value) - mpmath.mpf(largest))
        worst = max(worst, exact.ulp_errors(np.array([exp64_pair(high, low)]), [reference])[0])
    assert worst <= FLOAT64_EXP_NORMAL_BOUND_ULP
    # while exp of the rounded difference is off by up to |x - max| u
    rounded = max(exact.ulp_errors(np.array([exp64(v - largest)]), [mpmath.exp(mpmath.mpf(v) - mpmath.mpf(largest))])[0] for v in x)
    assert rounded > worst


def test_exp64_of_a_nonpositive_argument_has_exp64s_bits():
    # exp64_nonpositive (log_softmax_backward's exp of log-probabilities) against exp64 on
    # x <= 0: the normal range, the subnormal results, the rounding to 0, the specials
    rng = np.random.default_rng(13)
    x = np.concatenate([-np.abs(rng.normal(0.0, 20.0, 20000)), -rng.uniform(700.0, 760.0, 20000),
                        -np.abs(rng.standard_normal(2000)) * 1e-300,
                        [0.0, -0.0, -5e-324, -745.1332191019411, -745.1332191019412, -746.0, -750.0, -750.5,
                         -1e300, -np.inf, np.nan]])
    fast = np.array([exp64_nonpositive(v) for v in x])
    general = np.array([exp64(v) for v in x])
    np.testing.assert_array_equal(fast.view(np.int64), general.view(np.int64))
    assert (fast[x < -745.2] == 0.0).all() and (fast[(x > -745.0) & (x < -708.4)] > 0.0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_difference_forms_are_exact_in_the_argument_and_agree(dtype):
    # The kernels' exp(x - max): float32 exp32_difference(_floored), float64
    # exp64_difference_floored.  The rounding error of x - max (two_sum) joins the
    # reduction, so each is as accurate as the exp of the exact difference, where the
    # exp of the rounded difference is off by up to |x - max| u.  The floored form (the
    # element clamped at max - 110 or - 750) equals the general one, -inf and NaN included.
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.normal(0.0, 20.0, 3000), [-np.inf, np.nan, -200.0, -1e30]]).astype(dtype)
    largest = dtype(np.nanmax(x[np.isfinite(x)]) + dtype(3.7))
    if dtype == np.float32:
        floored = np.array([exp32_difference_floored(v, largest) for v in x], dtype=dtype)
        general = np.array([exp32_difference(v, largest) for v in x], dtype=dtype)
        plain = np.array([exp32(v - largest) for v in x], dtype=dtype)
        bound = FLOAT32_EXP_BOUND_ULP
    else:
        floored = np.array([exp64_difference_floored(v, largest) for v in x], dtype=dtype)
        general = np.array([exp64_pair(*two_sum(v, -largest)) for v in x], dtype=dtype)
        plain = np.array([exp64(v - largest) for v in x], dtype=dtype)
        bound = FLOAT64_EXP_NORMAL_BOUND_ULP
    np.testing.assert_array_equal(floored, general)
    finite = np.isfinite(x) & (x > largest - 80)
    references = [mpmath.exp(mpmath.mpf(float(v)) - mpmath.mpf(float(largest))) for v in x[finite]]
    assert exact.ulp_errors(floored[finite], references).max() <= bound
    assert exact.ulp_errors(plain[finite], references).max() > 2.0
    assert floored[-4] == 0.0 and np.isnan(floored[-3])


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def _apply32(x, out):
    for j in range(x.shape[0]):
        out[j] = exp32(x[j])


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def _apply64(x, out):
    for j in range(x.shape[0]):
        out[j] = exp64(x[j])


def _vector_instructions(assembly: str) -> int:
    return sum(assembly.count(register) for register in ("%ymm", "%zmm"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_loops_vectorize_and_call_no_libm(dtype):
    apply = _apply32 if dtype == np.float32 else _apply64
    x = np.linspace(-5, 5, 64).astype(dtype)
    apply(x, np.empty_like(x))
    assembly = apply.inspect_asm(apply.signatures[-1])
    assert _vector_instructions(assembly) > 50
    assert "exp@" not in assembly and "callq\texp" not in assembly


def test_kernel_hot_loops_vectorize():
    # the sum of exponentials (both dtypes, with and without the store) and the max of
    # strided rows (contiguous rows: tests/kernels/test_vector.py)
    for dtype in (np.float32, np.float64):
        row = np.linspace(-3, 0, 300).astype(dtype)
        # compiled here, so that the loops they call list their signatures
        compiled_here(_rows.store_exp_sum)(row, 1.0, 0.0, np.empty_like(row), row[:0])
        compiled_here(_rows.exp_sum_minus_one)(row, 1.0, 0.0, row, row[:0])
        _rows._strided_max(row[::2])
    flavours = (_rows.store_exp_sum, _rows.exp_sum_minus_one)
    loops = [loop for flavour in flavours for loop in flavour.loops] + [_rows._strided_max]
    compiled = 0
    for function in loops:
        for signature in function.signatures:
            compiled += 1
            assert _vector_instructions(assembly_of(function, signature)) > 20, (function, signature)
    # float64 rows reach the floored loop, float32 rows that store the float32 one, the
    # others the float64 evaluation (terms_wide, terms_floored, terms_float32)
    wide, floored, native = _rows.store_exp_sum.loops
    assert any(str(signature[0].dtype) == "float32" for signature in native.signatures)
    assert all(any(str(signature[0].dtype) == "float64" for signature in flavour.loops[1].signatures)
               for flavour in flavours)
    assert any(str(signature[0].dtype) == "float32" for signature in _rows.exp_sum_minus_one.loops[0].signatures)
    assert compiled >= 6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("classes", [19, 300, 9000])
def test_sum_of_exponentials_minus_one_keeps_a_tiny_total(dtype, classes):
    # A dominant class: T = sum_j e^(z_j - M) - 1 is ~1e-13, far below ulp(1).  Each
    # flavour must return it to its terms' accuracy (one chunk, several chunks, and
    # several blocks' worth), never through a cancelling 1 + T - 1.
    rng = np.random.default_rng(classes)
    row = (-rng.uniform(30.0, 40.0, classes)).astype(dtype)
    row[classes // 2] = 0.0
    largest = 0.0
    with mpmath.workdps(60):
        exact_total = float(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row) - 1)
    # the exponentials' relative error: float64 exp64 (1.55 u), float32 exp_f32_wide (1.1e-10)
    # or, where float32 rows store their e_j, exp32 (0.87 ULP: 0.87 * 2**-23)
    wide_bound = 1.2e-10 if dtype == np.float32 else 1e-15
    flavours = (_rows.exp_sum_minus_one, _rows.store_exp_sum, _rows.scaled_exp_sum)
    for flavour in flavours:
        native = dtype == np.float32 and flavour is _rows.store_exp_sum
        terms_bound = 0.87 * 2.0**-23 if native else wide_bound
        total = flavour(row, 1.0, largest, np.empty_like(row), row[:0])
        assert abs(total - exact_total) <= terms_bound * exact_total, (flavour, total, exact_total)


def test_log1p_unit_within_bound_and_vectorizes():
    # log(1 + e) on [0, 1] (the softplus of the sigmoid losses): the bound measured over
    # 2e7 inputs against long double is 0.841 ULP; here a sample against mpmath, with the
    # reduction's edges (1 + e = sqrt2) and the ends, and the loop must vectorize.
    rng = np.random.default_rng(11)
    edge = np.sqrt(2.0) - 1.0
    e = np.concatenate([rng.random(1500), np.exp(-rng.uniform(0.0, 745.0, 1500)),
                        [0.0, 1.0, 5e-324, 2.0**-53, edge, np.nextafter(edge, 0.0), np.nextafter(edge, 1.0)]])
    got = _apply_log1p(e, np.empty_like(e))
    with mpmath.workdps(40):
        exact = [mpmath.log1p(mpmath.mpf(float(v))) for v in e]
    worst = max(
        float(abs(mpmath.mpf(float(g)) - x) / mpmath.mpf(float(np.spacing(float(x))))) if x != 0 else float(g != 0)
        for g, x in zip(got, exact)
    )
    assert worst <= 0.85, worst
    assert np.isnan(_apply_log1p(np.array([np.nan]), np.empty(1))[0])
    assert _vector_instructions(_apply_log1p.inspect_asm(_apply_log1p.signatures[-1])) > 50


@njit(fastmath=REDUCTION_FASTMATH, cache=False)
def _apply_log1p(e, out):
    for j in range(e.shape[0]):
        out[j] = log1p_unit(e[j])
    return out
