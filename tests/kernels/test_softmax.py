"""Tests for kernels/_softmax.py: values, edge semantics, gradients, threads, bad input."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from softmaxlab.kernels import (
    cross_entropy,
    cross_entropy_forward_backward,
    log_softmax,
    log_softmax_backward,
    logsumexp,
    softmax,
    softmax_backward,
)
from softmaxlab.kernels import _config
from softmaxlab.kernels._config import (STREAMED_OUTPUT_BYTES, STREAMED_ROW_BYTES, block_length, block_schedule,
                                        streamed_rows)

from ..robustness.checks import summation_depth
from . import exact

DTYPES = [np.float32, np.float64]
# Accuracy bounds in ULPs of the output dtype (derivation in the README, "Accuracy").
# float32 softmax takes e_j = exp32(x_j - M) in float32 arithmetic (x_j - M exact
# through two_sum), within 0.87 ULP: 0.87 * 2**-23 relative, up to 1.74 ULP of an output
# at the bottom of its binade; S, summed in float64, inherits that relative error, and
# the final fma rounds once: < 1.74 + 1.74 + 0.5 ULP.
# float64 softmax has no wider type: exp64's error (<= 0.66 ULP, i.e. <= 1.32 u
# relative, for normal results) enters e_j and, averaged, S; the final fma rounds once
# (0.5 ULP): < 1.32 + 1.32 + 0.5 ULP plus the summation error of S (a few u) on a row
# of one block; rows of several blocks add exp(m_b - M)'s error (1.32 u) in the
# block's factor.
SOFTMAX_ULP = {np.float32: 4.0, np.float64: 3.5}
SOFTMAX_ULP_BLOCKS = {np.float32: 4.0, np.float64: 4.5}


def log_ulp(dtype, classes: int) -> float:
    """Bound for logsumexp = M + log1p(T) (and cross-entropy's loss, (M - z_y) + log1p(T)).

    float32: computed in float64 and rounded once (0.5 ULP), and T's relative error, that
    of the float32 exponentials it sums (0.87 * 2**-23; the plain sum of a block adds at
    most 17 * depth * 2**-53 relative, under 2**-36, ``_rows.terms_float32``), up to 1.74
    ULP of the output (L's error is at most eps L <= eps |out|, as below): 2.25 ULP.
    float64: 0.5 ULP (x - M, |x - M| <= |out|) + 1 (libm's log1p of L <= |out|) + 0.5
    (the last rounding) + T's relative error eps in units of u (L's error is at most
    eps T / (1 + T) <= eps L <= eps |out|): the exponentials' 1.32 u, averaged, plus one
    u per addition a term of T goes through (``summation_depth``).
    """
    if dtype == np.float32:
        return 2.25
    return 2.0 + 1.32 + summation_depth(classes, np.float64)


def log_softmax_ulp(dtype, classes: int) -> float:
    """Bound for log_softmax = (x - M) - log1p(T): ``log_ulp``, plus, for float32 rows (whose
    write runs in float32 arithmetic), the rounding of x - M and of L to float32 before
    their difference: same sign, so together below 2**-24 |out|, i.e. 1 ULP (3.25 ULP)."""
    return log_ulp(dtype, classes) + (1.0 if dtype == np.float32 else 0.0)


SHAPES = [(1, 1), (3, 7), (2, 3, 17), (4, 257)]


def _random(shape, dtype, scale=3.0, seed=0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _long_row_classes(dtype) -> int:
    """A row length of several blocks (so the long-row path runs) that is not a multiple of one."""
    return 3 * block_length(np.dtype(dtype).itemsize) + 129


# ---- values against exact references --------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_matches_exact_reference(shape, dtype):
    x = _random(shape, dtype)
    errors = exact.ulp_errors(softmax(x), exact.softmax(x))
    assert errors.max() <= SOFTMAX_ULP[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_log_softmax_and_logsumexp_match_exact_reference(shape, dtype):
    x = _random(shape, dtype)
    assert exact.ulp_errors(log_softmax(x), exact.log_softmax(x)).max() <= log_softmax_ulp(dtype, shape[-1])
    lse = logsumexp(x)
    assert lse.shape == shape[:-1]
    assert exact.ulp_errors(lse, exact.logsumexp(x)).max() <= log_ulp(dtype, shape[-1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_rows_split_across_blocks_match_exact_reference(dtype):
    # one long row (the threads share it) and four (one thread per row), both several blocks long
    for rows in (1, 4):
        x = _random((rows, _long_row_classes(dtype)), dtype, seed=rows)
        sample = slice(None, None, 97)  # mpmath on every 97th class keeps this fast
        reference_softmax = exact.columns(exact.softmax(x), sample)
        assert exact.ulp_errors(softmax(x)[:, sample], reference_softmax).max() <= SOFTMAX_ULP_BLOCKS[dtype]
        assert exact.ulp_errors(logsumexp(x), exact.logsumexp(x)).max() <= log_ulp(dtype, x.shape[-1])


@pytest.mark.parametrize("classes", [1, 7, 1000, _long_row_classes(np.float32)])
@pytest.mark.parametrize("rows", [1, 64])
def test_float32_logsumexp_sums_the_exponentials_log_softmax_sums(threads, rows, classes):
    # float32 logsumexp stores its e_j in a scratch row per thread, as log_softmax stores them
    # in its output: the same T.  With the max at 0, logsumexp = float32(log1p(T)) and
    # log_softmax at the max = 0 - float32(log1p(T)), so the two agree bit for bit; rows=1
    # shares a long row's blocks between the threads, rows=64 gives each thread whole rows.
    x = _random((rows, classes), np.float32, seed=classes)
    if rows > 1:
        x[1] = -40.0  # a dominant max: T < 1/16, the ties counted again
        x[1, classes // 2] = 0.0
        x[2, ::3] = x[2].max()  # ties of the max
        x[3, 1::2] = -np.inf
    x -= x.max(axis=1, keepdims=True)
    argmax = x.argmax(axis=1)
    for count in (1, 2):
        threads(count)
        np.testing.assert_array_equal(logsumexp(x), -log_softmax(x)[np.arange(rows), argmax])


def _counted(monkeypatch, kernel_name):
    """Replace ``_softmax.<kernel_name>`` by a wrapper that records its calls; returns the record."""
    from softmaxlab.kernels import _softmax

    kernel = getattr(_softmax, kernel_name)
    calls = []
    monkeypatch.setattr(_softmax, kernel_name, lambda *args: calls.append(1) or kernel(*args))
    return calls


@pytest.mark.parametrize("rows", [1, 2, 8])
def test_streamed_float32_rows_have_the_bits_of_the_cached_writes(monkeypatch, threads, rows):
    # outputs from STREAMED_OUTPUT_BYTES on take kernels whose writes store non-temporally
    # (_config.streamed_rows); with the threshold at 0 small rows take them, and they must
    # give the ordinary kernels' bits: 8 rows run a row a thread (softmax's e_j wait in a
    # scratch row of the thread; each thread gets finite rows), 1 and 2 share each row's
    # blocks (log_softmax alone streams there)
    classes = 2 * _long_row_classes(np.float32) + 123
    x = (_random((rows, classes), np.float32, seed=rows) * 8).astype(np.float32)
    x[0, 5] = -np.inf
    if rows == 8:
        x[1, : block_length(4)] = -np.inf  # a block of -inf
        x[2, 7] = np.inf  # one +inf: the one-hot row
        x[5, 9] = np.nan
        x[6, :] = -np.inf
    streamed_softmax = _counted(monkeypatch, "_softmax_streamed_kernel")
    streamed_log_softmax = _counted(monkeypatch, "_log_softmax_streamed_kernel")
    for count in (1, 2):
        threads(count)
        monkeypatch.setattr(_config, "STREAMED_OUTPUT_BYTES", np.inf)
        expected = softmax(x), log_softmax(x)
        assert not streamed_softmax and not streamed_log_softmax
        monkeypatch.setattr(_config, "STREAMED_OUTPUT_BYTES", 0)
        memory = np.empty(x.size + 3, np.float32)
        unaligned = memory[3:].reshape(x.shape)  # the head and tail of every row stored apart
        for function, bits in zip((softmax, log_softmax), expected):
            np.testing.assert_array_equal(function(x), bits)
            function(x, out=unaligned)
            np.testing.assert_array_equal(unaligned, bits)
        # softmax only where one thread runs a row whole (its e_j wait in the thread's scratch row)
        split = block_schedule(rows, classes, 4)[1]
        assert len(streamed_log_softmax) == 2 and len(streamed_softmax) == (0 if split else 2)
        streamed_softmax.clear()
        streamed_log_softmax.clear()


@pytest.mark.parametrize("rows", [1, 2, 8])
def test_streamed_log_softmax_gradients_have_the_bits_of_the_cached_writes(monkeypatch, threads, rows):
    # log_softmax_backward streams large float32 outputs of long rows too (its write reads y
    # and dy again, nothing it wrote): with the threshold at 0 they must give the ordinary
    # kernel's bits, aligned or not, on 1 and 2 threads (1 and 2 rows share their blocks)
    classes = 2 * _long_row_classes(np.float32) + 123
    y = log_softmax((_random((rows, classes), np.float32, seed=rows) * 8).astype(np.float32))
    dy = _random((rows, classes), np.float32, seed=rows + 100).astype(np.float32)
    if rows == 8:
        y[3, 9] = np.nan
        y[6, :] = -np.inf  # softmax's zeros: a zero gradient
        dy[4, 11] = np.inf
    calls = _counted(monkeypatch, "_log_softmax_backward_streamed_kernel")
    for count in (1, 2):
        threads(count)
        monkeypatch.setattr(_config, "STREAMED_OUTPUT_BYTES", np.inf)
        expected = log_softmax_backward(y, dy)
        assert not calls
        monkeypatch.setattr(_config, "STREAMED_OUTPUT_BYTES", 0)
        np.testing.assert_array_equal(log_softmax_backward(y, dy), expected)
        unaligned = np.empty(y.size + 3, np.float32)[3:].reshape(y.shape)  # rows' heads and tails apart
        log_softmax_backward(y, dy, out=unaligned)
        np.testing.assert_array_equal(unaligned, expected)
        assert len(calls) == 2  # both calls took the streamed kernel
        calls.clear()


def test_only_large_float32_outputs_of_long_rows_are_streamed():
    block = block_length(4)
    rows = -(-STREAMED_OUTPUT_BYTES // (4 * 2 * block))  # rows of two blocks reaching the size
    for keeps_row in (False, True):
        assert streamed_rows(rows, 2 * block, 4, block, False, keeps_row)
        assert not streamed_rows(rows - 1, 2 * block, 4, block, False, keeps_row)  # a smaller output
        assert not streamed_rows(2 * rows, block, 4, block, False, keeps_row)  # rows of one block
        assert not streamed_rows(rows, 2 * block, 8, block_length(8), False, keeps_row)  # float64
    # a kernel that keeps a row's e_j until its write: only rows one thread runs whole, in L2
    assert streamed_rows(rows, 2 * block, 4, block, True, keeps_row=False)
    assert not streamed_rows(rows, 2 * block, 4, block, True, keeps_row=True)
    longest = STREAMED_ROW_BYTES // 4
    assert streamed_rows(1 + STREAMED_OUTPUT_BYTES // STREAMED_ROW_BYTES, longest, 4, block, False, True)
    assert not streamed_rows(1 + STREAMED_OUTPUT_BYTES // STREAMED_ROW_BYTES, longest + 1, 4, block, False, True)


def test_rows_of_a_million_classes_sum_to_one_without_drift():
    # sums must not lose accuracy linearly with the row length
    x = _random((1, 1_000_000), np.float32)
    total = softmax(x).astype(np.float64).sum()
    assert abs(total - 1.0) < 1e-6
    reference = np.log(np.sum(np.exp(x.astype(np.float64) - x.max()))) + x.max()
    assert abs(float(logsumexp(x)[0]) - reference) <= 2 * np.spacing(np.float32(reference))


# ---- worked examples -------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_textbook_overflow_and_underflow_examples(dtype):
    # the naive formula overflows at 1000 and divides 0 by 0 at -1000
    big = softmax(np.array([1000.0, 500.0, 500.0], dtype=dtype))
    assert big[0] == 1.0 and np.all(np.isfinite(big))
    small = softmax(np.array([-1000.0, -1000.0, -1000.0], dtype=dtype))
    np.testing.assert_allclose(small, np.full(3, 1.0 / 3.0), rtol=np.finfo(dtype).eps)
    lse = logsumexp(np.array([1000.0, 1000.0, 1000.0], dtype=dtype))
    np.testing.assert_allclose(lse, 1000.0 + np.log(3.0), rtol=np.finfo(dtype).eps)


def test_norm_scaling_example():
    # scaling the logits by 5 makes the output more extreme
    np.testing.assert_allclose(softmax(np.array([1.5, 1.2, 1.0])), [0.42601251, 0.31559783, 0.25838965], atol=1e-8)
    np.testing.assert_allclose(softmax(np.array([7.5, 6.0, 5.0])), [0.76615721, 0.17095278, 0.06289001], atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_shift_invariance(dtype):
    x = _random((5, 33), dtype)
    shifted = (x + dtype(40.0)).astype(dtype)
    # x + 40 rounds, so compare each with its own exact value rather than with each other
    assert exact.ulp_errors(softmax(shifted), exact.softmax(shifted)).max() <= SOFTMAX_ULP[dtype]
    np.testing.assert_allclose(softmax(shifted), softmax(x), rtol=50 * np.finfo(dtype).eps, atol=0)


# ---- edge semantics (README table) -------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_minus_inf_row(dtype):
    x = np.array([[-np.inf] * 4, [0.0, 1.0, 2.0, 3.0]], dtype=dtype)
    np.testing.assert_array_equal(softmax(x)[0], np.zeros(4))
    np.testing.assert_array_equal(log_softmax(x)[0], np.full(4, -np.inf))
    assert logsumexp(x)[0] == -np.inf
    assert np.all(np.isfinite(softmax(x)[1]))
    y = softmax(x)
    np.testing.assert_array_equal(softmax_backward(y, np.ones_like(y))[0], np.zeros(4))
    z = log_softmax(x)
    np.testing.assert_array_equal(log_softmax_backward(z, np.ones_like(z))[0], np.zeros(4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_entries_are_masked(dtype):
    x = np.array([[0.0, -np.inf, 0.0]], dtype=dtype)
    np.testing.assert_array_equal(softmax(x), [[0.5, 0.0, 0.5]])
    assert log_softmax(x)[0, 1] == -np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_stays_in_its_row(dtype):
    x = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0], [np.nan] * 3], dtype=dtype)
    for function in (softmax, log_softmax):
        result = function(x)
        assert np.all(np.isnan(result[0])) and np.all(np.isnan(result[2]))
        assert np.all(np.isfinite(result[1]))
    lse = logsumexp(x)
    assert np.isnan(lse[0]) and np.isfinite(lse[1]) and np.isnan(lse[2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_plus_inf_entries(dtype):
    one = np.array([[np.inf, 1.0, 2.0]], dtype=dtype)
    np.testing.assert_array_equal(softmax(one), [[1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(log_softmax(one), [[0.0, -np.inf, -np.inf]])
    assert logsumexp(one)[0] == np.inf
    two = np.array([[np.inf, np.inf, 2.0]], dtype=dtype)
    assert np.all(np.isnan(softmax(two))) and np.all(np.isnan(log_softmax(two)))
    assert logsumexp(two)[0] == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_and_single_class(dtype):
    empty = np.zeros((0, 5), dtype=dtype)
    assert softmax(empty).shape == (0, 5) and logsumexp(empty).shape == (0,)
    no_classes = np.zeros((3, 0), dtype=dtype)
    assert softmax(no_classes).shape == (3, 0)
    np.testing.assert_array_equal(logsumexp(no_classes), np.full(3, -np.inf))
    single = np.array([[-7.0], [3.5]], dtype=dtype)
    np.testing.assert_array_equal(softmax(single), np.ones((2, 1)))
    np.testing.assert_array_equal(log_softmax(single), np.zeros((2, 1)))
    np.testing.assert_array_equal(logsumexp(single), [-7.0, 3.5])


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits(dtype):
    x = np.array([[1e4, -1e4, 1e4 - 3.0, 0.0]], dtype=dtype)
    assert exact.ulp_errors(softmax(x), exact.softmax(x)).max() <= SOFTMAX_ULP[dtype]
    assert exact.ulp_errors(log_softmax(x), exact.log_softmax(x)).max() <= log_softmax_ulp(dtype, x.shape[-1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("magnitude", [1.5e6, 3e6, 1e12, 2e12, 1e30, -3e37])
def test_rows_on_both_sides_of_the_floored_exponential_limit(dtype, magnitude):
    # float32 rows with |max| < 2**21 (float64: 2**40) take the exponential that clamps the
    # element at max - 110 (- 750); the others the one that clamps the difference.  Both
    # sides, with the spacing of the row's values near the max, a -inf and a far value.
    largest = dtype(magnitude)
    step = np.spacing(np.abs(largest)).astype(np.float64)
    offsets = np.array([0.0, 1.0, 3.0, 40.0, 200.0, 1e9]) * max(step, 1.0)
    offsets[-1] = min(offsets[-1], 1e38)  # far below the max, still finite
    row = (np.float64(largest) - offsets).astype(dtype)
    x = np.stack([row, np.append(row[:-1], -np.inf).astype(dtype)])
    cross_target = np.array([1, 0])
    assert exact.ulp_errors(softmax(x), exact.softmax(x)).max() <= SOFTMAX_ULP[dtype]
    assert exact.ulp_errors(log_softmax(x), exact.log_softmax(x)).max() <= log_softmax_ulp(dtype, x.shape[-1])
    assert exact.ulp_errors(logsumexp(x), exact.logsumexp(x)).max() <= log_ulp(dtype, x.shape[-1])
    assert softmax(x)[1, -1] == 0.0 and log_softmax(x)[1, -1] == -np.inf
    loss, grad = cross_entropy_forward_backward(x, cross_target, reduction="none")
    np.testing.assert_array_equal(cross_entropy(x, cross_target, reduction="none"), loss)
    # the loss is -log_softmax at the target, (M - z_y) + log1p(T): the same formula and bound
    log_probabilities = exact.log_softmax(x)
    rows = np.arange(2)
    expected = exact.Exact(-log_probabilities.hi[rows, cross_target], -log_probabilities.lo[rows, cross_target],
                           log_probabilities.engine)
    assert exact.ulp_errors(loss, expected).max() <= log_ulp(dtype, x.shape[-1])
    assert np.all(np.isfinite(grad)) and np.allclose(grad.astype(np.float64).sum(axis=1), 0.0, atol=8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dominant_class_log_probability_near_zero(dtype):
    # log_softmax of the dominant class is -log1p(T) with T tiny: T must carry no
    # absolute error (forming it as S - 1 gave 1e34 ULP on float32 rows of +-1e4 logits)
    x = np.array([[0.0, -30.0, -31.0], [1e4, -1e4, 1e4 - 95.0], [5.0, -100.0, -200.0]], dtype=dtype)
    assert exact.ulp_errors(log_softmax(x), exact.log_softmax(x)).max() <= log_softmax_ulp(dtype, x.shape[-1])
    assert exact.ulp_errors(softmax(x), exact.softmax(x)).max() <= SOFTMAX_ULP[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sums_on_both_sides_of_the_tie_recount(dtype):
    # float32 blocks sum their stored e_j plainly and recount the ties only for T < 1/16
    # (_rows.RECOUNT_BELOW): rows whose T lies just below, at and above it, with one or
    # two maxima, and the dominant class's log-probability -log1p(T) checked on each
    from softmaxlab.kernels._numerics.rows import RECOUNT_BELOW

    classes = 300
    threshold = RECOUNT_BELOW - 1.0
    rows = []
    for ratio in (0.25, 0.97, 1.0, 1.03, 4.0):
        rest = np.log(ratio * threshold / (classes - 1))  # (classes - 1) e^rest = ratio / 16
        row = np.full(classes, rest) + np.linspace(-1e-3, 1e-3, classes)
        row[7] = 0.0
        rows.append(row)
    tied = rows[1].copy()
    tied[200] = 0.0  # two maxima: T >= 1, the plain sum
    x = np.array(rows + [tied], dtype=dtype)
    assert exact.ulp_errors(log_softmax(x), exact.log_softmax(x)).max() <= log_softmax_ulp(dtype, classes)
    assert exact.ulp_errors(logsumexp(x), exact.logsumexp(x)).max() <= log_ulp(dtype, classes)
    assert exact.ulp_errors(softmax(x), exact.softmax(x)).max() <= SOFTMAX_ULP[dtype]
    target = np.full(x.shape[0], 7)
    loss, grad = cross_entropy_forward_backward(x, target, reduction="none")
    np.testing.assert_array_equal(cross_entropy(x, target, reduction="none"), loss)
    expected = exact.log_softmax(x)
    rows_index = np.arange(x.shape[0])
    expected_loss = exact.Exact(-expected.hi[rows_index, 7], -expected.lo[rows_index, 7], expected.engine)
    assert exact.ulp_errors(loss, expected_loss).max() <= log_ulp(dtype, classes)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_stays_within_the_logsumexp_bounds(dtype):
    x = _random((50, 40), dtype)
    lse = logsumexp(x).astype(np.float64)
    top = x.max(axis=-1).astype(np.float64)
    assert np.all(lse >= top) and np.all(lse <= top + np.log(40) + 1e-6)


# ---- layouts and axes ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_every_axis_matches_the_last_axis_result(axis, dtype):
    x = _random((3, 5, 7), dtype)
    moved = np.moveaxis(x, axis, -1)
    for function in (softmax, log_softmax):
        np.testing.assert_array_equal(np.moveaxis(function(x, axis=axis), axis, -1), function(np.ascontiguousarray(moved)))
    np.testing.assert_array_equal(logsumexp(x, axis=axis), logsumexp(np.ascontiguousarray(moved)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(dtype):
    base = _random((6, 40), dtype)
    for view in (base[:, ::2], base[::2], np.asfortranarray(base), base.T):
        np.testing.assert_array_equal(softmax(view), softmax(np.ascontiguousarray(view)))
        np.testing.assert_array_equal(logsumexp(view), logsumexp(np.ascontiguousarray(view)))


def test_inputs_are_not_modified():
    x = _random((4, 300), np.float32)
    view = x[:, ::3]
    before, before_view = x.copy(), view.copy()
    y = softmax(view)
    dy = np.ones_like(y)
    before_y, before_dy = y.copy(), dy.copy()
    log_softmax(x, axis=0)
    logsumexp(view)
    softmax_backward(y, dy)
    log_softmax_backward(np.log(y), dy)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(view, before_view)
    np.testing.assert_array_equal(y, before_y)
    np.testing.assert_array_equal(dy, before_dy)


# ---- gradients -----------------------------------------------------------------------------


def _central_difference(function, x, dy, step=1e-6):
    """d/dx of sum(dy * function(x)) by central differences, float64."""
    grad = np.empty_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += step
        minus[index] -= step
        grad[index] = np.sum(dy * (function(plus) - function(minus))) / (2 * step)
    return grad


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_backward_matches_central_differences(axis):
    x = _random((3, 6), np.float64, seed=3)
    dy = _random((3, 6), np.float64, seed=4)
    expected = _central_difference(lambda z: softmax(z, axis=axis), x, dy)
    np.testing.assert_allclose(softmax_backward(softmax(x, axis=axis), dy, axis=axis), expected, atol=1e-8)


@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax_backward_matches_central_differences(axis):
    x = _random((3, 6), np.float64, seed=5)
    dy = _random((3, 6), np.float64, seed=6)
    expected = _central_difference(lambda z: log_softmax(z, axis=axis), x, dy)
    np.testing.assert_allclose(log_softmax_backward(log_softmax(x, axis=axis), dy, axis=axis), expected, atol=1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_long_rows_agree_with_float64_formula(dtype):
    x = _random((1, _long_row_classes(dtype)), dtype, seed=8)
    dy = _random(x.shape, dtype, seed=9)
    y = softmax(x)
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    expected = y64 * (dy64 - np.sum(y64 * dy64))
    np.testing.assert_allclose(softmax_backward(y, dy), expected, rtol=0, atol=4 * np.finfo(dtype).eps * np.abs(dy64).max())
    z = log_softmax(x)
    expected_log = dy64 - np.exp(z.astype(np.float64)) * dy64.sum()
    tolerance = 8 * np.finfo(dtype).eps * np.abs(dy64).sum()
    np.testing.assert_allclose(log_softmax_backward(z, dy), expected_log, rtol=0, atol=tolerance)


@pytest.mark.parametrize("classes", [300, 3 * 4096 + 7])  # one block; several, merged
def test_float64_backwards_are_within_two_roundings_of_their_terms(classes):
    # Taking y and dy as exact, the float64 kernels round the sum (compensated: within about
    # u |sum|) and the result (one FMA, u |dx|), nothing else: softmax_backward's dx_i is
    # within 2 u y_i (|dy_i| + sum_j |y_j dy_j|) of y_i (dy_i - sum_j y_j dy_j) (the harness'
    # condition-aware error 2), log_softmax_backward's within u (2 |dy_i| + 4 e^(y_i) sum_j
    # |dy_j|) of dy_i - e^(y_i) sum_j dy_j (exp64's 0.66 ULP of its term too).  A plain
    # float64 sum over 32 lanes errs by up to (n/32 + 5) u of the terms it adds.
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(31)
    y = softmax(rng.standard_normal((3, classes)) * 3)
    # terms over 60 binades, of both signs: the sums cancel
    dy = rng.standard_normal((3, classes)) * np.exp2(rng.integers(-30, 30, (3, classes)))
    u = Fraction(2) ** -53
    dx = softmax_backward(y, dy)
    z = np.log(y)
    dz = log_softmax_backward(z, dy)
    for i in range(3):
        terms = [Fraction(float(a)) * Fraction(float(b)) for a, b in zip(y[i], dy[i])]
        dot = sum(terms, Fraction(0))
        magnitude = sum((abs(t) for t in terms), Fraction(0))
        total = sum((Fraction(float(b)) for b in dy[i]), Fraction(0))
        absolute_total = sum((abs(Fraction(float(b))) for b in dy[i]), Fraction(0))
        for j in rng.choice(classes, 60, replace=False):
            y_j, dy_j = Fraction(float(y[i, j])), Fraction(float(dy[i, j]))
            error = abs(Fraction(float(dx[i, j])) - y_j * (dy_j - dot))
            assert error <= 2 * u * y_j * (abs(dy_j) + magnitude), (i, j)
            with mpmath.workdps(40):
                mantissa, exponent = mpmath.exp(mpmath.mpf(float(z[i, j]))).man_exp
            e_j = Fraction(int(mantissa)) * Fraction(2) ** int(exponent)
            log_error = abs(Fraction(float(dz[i, j])) - (dy_j - e_j * total))
            assert log_error <= u * (2 * abs(dy_j) + 4 * e_j * absolute_total), (i, j)


@pytest.mark.parametrize("total", [3e38, -1e6, 1e3, 1e-40])
def test_float32_log_softmax_backward_exponential_is_not_clamped_before_its_product(total):
    # dx_i = dy_i - e^(y_i) sum_j dy_j with e^(y_i) and the product in float64, rounded once:
    # e^y for y far outside float32's exp range, times a large (or tiny) sum, is a normal
    # float32 (or rounds to 0) and must come out as the float64 formula's rounding, not as
    # e^-110 or e^90 times the sum.
    y = np.array([-300.0, -200.0, -120.0, -105.0, 0.0, 60.0, 95.0, 120.0], dtype=np.float32)
    dy = np.zeros((1, 8), dtype=np.float32)
    dy[0, 4] = total
    dx = log_softmax_backward(y[None, :], dy)[0]
    with np.errstate(over="ignore"):
        expected = (dy[0].astype(np.float64) - np.exp(y.astype(np.float64)) * float(np.float32(total))).astype(np.float32)
    np.testing.assert_array_max_ulp(dx, expected, maxulp=1)
    # where the formula rounds to 0 (or overflows), so does the kernel
    np.testing.assert_array_equal(dx == 0, expected == 0)
    np.testing.assert_array_equal(np.isinf(dx), np.isinf(expected))


# ---- threads -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 8])
def test_results_are_bit_identical_for_one_and_two_threads(threads, rows, dtype):
    # rows=1 shares one long row between threads, rows=8 gives each thread whole rows
    x = _random((rows, _long_row_classes(dtype)), dtype, seed=rows)
    dy = _random(x.shape, dtype, seed=rows + 1)
    results = []
    for count in (1, 2):
        threads(count)
        y = softmax(x)
        results.append((y, log_softmax(x), logsumexp(x), softmax_backward(y, dy), log_softmax_backward(np.log(y), dy)))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


# ---- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("function", [softmax, log_softmax, logsumexp])
def test_bad_inputs_raise_clear_errors(function):
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray .* got list"):
        function([1.0, 2.0])
    with pytest.raises(TypeError, match=r"x must have dtype float32 or float64, got int64"):
        function(np.arange(3))
    with pytest.raises(TypeError, match=r"x must have dtype float32 or float64, got float16"):
        function(np.ones(3, dtype=np.float16))
    with pytest.raises(TypeError, match=r"x must have dtype float32 or float64, got bool"):
        function(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension\(s\), got shape \(\)"):
        function(np.array(1.0))
    with pytest.raises(ValueError, match=r"axis must be in \[-2, 1\] .* got 2"):
        function(np.ones((2, 3)), axis=2)
    with pytest.raises(TypeError, match=r"axis must be an int, got float"):
        function(np.ones((2, 3)), axis=1.0)


@pytest.mark.parametrize("function", [softmax_backward, log_softmax_backward])
def test_backward_bad_inputs_raise_clear_errors(function):
    y = np.full((2, 3), 1.0 / 3.0)
    with pytest.raises(ValueError, match=r"dy must have the shape of y \(2, 3\), got \(3, 2\)"):
        function(y, np.ones((3, 2)))
    with pytest.raises(TypeError, match=r"dy must have the dtype of y \(float64\), got float32"):
        function(y, np.ones((2, 3), dtype=np.float32))
    with pytest.raises(TypeError, match=r"y must be a numpy.ndarray"):
        function(y.tolist(), np.ones((2, 3)))


# ---- out= ----------------------------------------------------------------------------------

_OUT_FUNCTIONS = {
    "softmax": lambda x, dy, **kw: softmax(x, **kw),
    "log_softmax": lambda x, dy, **kw: log_softmax(x, **kw),
    "softmax_backward": lambda x, dy, **kw: softmax_backward(softmax(x, axis=kw.get("axis", -1)), dy, **kw),
    "log_softmax_backward": lambda x, dy, **kw: log_softmax_backward(log_softmax(x, axis=kw.get("axis", -1)), dy, **kw),
}


@pytest.mark.parametrize("name", list(_OUT_FUNCTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [-1, 0])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_out_receives_the_result_bit_for_bit_and_is_returned(name, dtype, axis, layout):
    # rows longer than a block, so that the split and the merged paths write into out too
    classes = block_length(np.dtype(dtype).itemsize) + 5
    x = _random((3, classes), dtype, seed=4)
    dy = _random((3, classes), dtype, seed=5)
    if axis == 0:
        x, dy = np.ascontiguousarray(x.T), np.ascontiguousarray(dy.T)
    function = _OUT_FUNCTIONS[name]
    expected = function(x, dy, axis=axis)
    out = np.full(x.shape, np.nan, dtype) if layout == "contiguous" else np.full(x.shape[::-1], np.nan, dtype).T
    result = function(x, dy, axis=axis, out=out)
    assert result is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name", list(_OUT_FUNCTIONS))
def test_out_may_not_share_memory_with_an_input(name):
    # the other bad values of out are rows of tests/robustness/test_bad_input.py
    x = _random((2, 3), np.float64)
    function = _OUT_FUNCTIONS[name]
    shared = "dy" if "backward" in name else "x"
    with pytest.raises(ValueError, match=rf"out must not share memory with {shared} \("):
        function(x, x, out=x)  # the backwards get x as dy
    wide = np.zeros((2, 6))
    with pytest.raises(ValueError, match=r"out must not share memory with"):
        function(wide[:, ::2], wide[:, ::2], out=wide[:, :3])  # overlapping views
    np.testing.assert_array_equal(wide, 0.0)


@pytest.mark.parametrize("function", [softmax_backward, log_softmax_backward])
def test_backward_out_may_not_be_y(function):
    y = np.full((2, 3), 1.0 / 3.0)
    with pytest.raises(ValueError, match=r"out must not share memory with y \("):
        function(y, np.ones((2, 3)), out=y)
    np.testing.assert_array_equal(y, 1.0 / 3.0)
