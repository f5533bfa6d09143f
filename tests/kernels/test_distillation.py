"""Tests for kernels/distillation.py: against torch's composition, exact references, derivations, edges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from softmaxlab.harness.metrics import error_stats
from softmaxlab.harness.exact import exact_distillation_loss
from softmaxlab.kernels import distillation_loss, distillation_loss_forward_backward
from softmaxlab.kernels._config import block_length

from ._shared import DTYPES, TOLERANCE, central_differences
from ._shared import LOSS_SHAPES as SHAPES
from ._shared import assert_close as _assert_close
from ._shared import random_array as _random

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Bounds against the exact reference (measured maxima in brackets).  KL(p || q) is a
# difference of terms of the size of (v - z)/T and log C: where it is much smaller than
# they are (p close to q, the dominant regime's shared winner, near ties) every method that
# forms those terms loses digits, torch's composition as much as ours.  So the loss is
# bounded relative to that size: |error| <= LOSS_TERMS * eps * T^2 (max|v - z|/T + |M_v - M_z|/T
# + log C) + LOSS_TERMS * eps * |CE| (measured 0.04 (float32, computed in float64) and 0.3
# (float64)), and, for float32 rows away from near ties, in ULPs: <= 1 (0.5).  The gradient
# alpha T (q - p) + (1 - alpha)(a - y) cancels wherever its terms nearly do, so its error is
# bounded in ULPs of its largest term: float32 2 (0.5: computed in float64, rounded once),
# float64 4 (2.6).
LOSS_TERMS = 4
FLOAT32_LOSS_ULP = 1.0
GRAD_TERM_ULP = {np.float32: 2.0, np.float64: 4.0}


def _labels(shape, classes, seed=1):
    return np.random.default_rng(seed).integers(0, classes, size=shape)


def torch_distillation(student, teacher, target=None, *, temperature=4.0, alpha=0.9, reduction="mean",
                       grad_output=1.0):
    """Hinton's loss as torch composes it, in float64: kl_div(log_softmax(s/T), softmax(t/T)) T^2 + CE."""
    classes = student.shape[-1]
    s = torch.tensor(student.astype(np.float64).reshape(-1, classes), requires_grad=True)
    t = torch.tensor(teacher.astype(np.float64).reshape(-1, classes))
    soft = F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="none").sum(-1)
    if target is None:
        per_row = temperature**2 * soft
    else:
        hard = F.cross_entropy(s, torch.tensor(target.reshape(-1).astype(np.int64)), reduction="none")
        per_row = alpha * temperature**2 * soft + (1 - alpha) * hard
    loss = {"mean": per_row.mean(), "sum": per_row.sum(), "none": per_row}[reduction]
    upstream = (torch.tensor(np.broadcast_to(np.asarray(grad_output, dtype=np.float64), student.shape[:-1]).reshape(-1))
                if reduction == "none" else torch.tensor(float(grad_output), dtype=torch.float64))
    loss.backward(upstream)
    value = loss.detach().numpy()
    return (value.reshape(student.shape[:-1]) if reduction == "none" else value), s.grad.numpy().reshape(student.shape)


OPTIONS = [
    dict(hard=hard, temperature=temperature, alpha=alpha, reduction=reduction, upstream=upstream)
    for hard, temperature, alpha, reduction, upstream in itertools.product(
        [False, True], [1.0, 2.5, 4.0], [0.0, 0.9, 1.0], ["mean", "sum", "none"], ["one", "other"]
    )
    if hard or alpha == 0.9  # alpha is not used without a target
]


@pytest.mark.parametrize("options", OPTIONS, ids=["-".join(f"{k}={v}" for k, v in o.items()) for o in OPTIONS])
def test_every_option_combination_matches_torch(options):
    for dtype, shape in itertools.product(DTYPES, SHAPES):
        student = _random(shape, dtype)
        teacher = _random(shape, dtype, seed=9)
        target = _labels(shape[:-1], shape[-1]) if options["hard"] else None
        if options["upstream"] == "one":
            upstream = 1.0
        elif options["reduction"] == "none":
            upstream = _random(shape[:-1], np.float64, scale=1.0, seed=5)
        else:
            upstream = 0.43
        kwargs = dict(temperature=options["temperature"], alpha=options["alpha"], reduction=options["reduction"])
        loss, grad = distillation_loss_forward_backward(student, teacher, target, grad_output=upstream, **kwargs)
        np.testing.assert_array_equal(distillation_loss(student, teacher, target, **kwargs), loss)
        reference_loss, reference_grad = torch_distillation(student, teacher, target, grad_output=upstream, **kwargs)
        what = f"{dtype.__name__} {shape}"
        assert grad.dtype == dtype and grad.shape == shape and np.asarray(loss).dtype == dtype, what
        _assert_close(loss, reference_loss, dtype, "loss " + what)
        _assert_close(grad, reference_grad, dtype, "grad " + what)


def _regime_logits(regime, shape, dtype, stream="x"):
    from softmaxlab.harness import regimes

    return regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, 0, stream))


def _assert_within_bounds(student, teacher, target, dtype, near_ties=False, **kwargs):
    loss, grad = distillation_loss_forward_backward(student, teacher, target, reduction="none", **kwargs)
    exact_loss, exact_grad = exact_distillation_loss(student, teacher, target, reduction="none",
                                                     engine="mpmath-50", **kwargs)
    loss_stats = error_stats(loss, exact_loss, dtype)
    assert loss_stats["n_special_mismatch"] == 0 and loss_stats["n_nonfinite"] == 0, loss_stats
    temperature, alpha = kwargs.get("temperature", 4.0), kwargs.get("alpha", 0.9)
    soft_coefficient = temperature**2 * (alpha if target is not None else 1.0)
    v, z = teacher.astype(np.float64) / temperature, student.astype(np.float64) / temperature
    size = soft_coefficient * (np.abs(v - z).max(axis=1) + np.abs(v.max(axis=1) - z.max(axis=1))
                               + np.log(student.shape[1]))
    if target is not None:
        size = size + (1 - alpha) * np.abs(exact_loss.hi)
    loss_error = np.abs((loss.astype(np.float64) - exact_loss.hi) - exact_loss.lo)
    assert np.all(loss_error <= LOSS_TERMS * np.finfo(dtype).eps * size), loss_error / (np.finfo(dtype).eps * size)
    if dtype == np.float32 and not near_ties:
        assert loss_stats["max_ulp"] <= FLOAT32_LOSS_ULP, loss_stats
    q = np.exp(_log_softmax(student / temperature))
    p = np.exp(_log_softmax(teacher / temperature))
    a = np.exp(_log_softmax(student))
    soft = (alpha if target is not None else 1.0) * temperature
    terms = np.maximum(soft * np.maximum(q, p), 0.0 if target is None else (1 - alpha) * np.maximum(a, 1.0 * (
        np.arange(student.shape[1]) == np.asarray(target)[:, None])))
    error = np.abs((grad.astype(np.float64) - exact_grad.hi) - exact_grad.lo)
    units = np.spacing(np.maximum(terms, np.finfo(dtype).tiny).astype(dtype)).astype(np.float64)
    assert np.nanmax(np.where(np.isfinite(exact_grad.hi), error / units, 0.0)) <= GRAD_TERM_ULP[dtype]


def _log_softmax(x):
    x = x.astype(np.float64)
    finite_max = np.max(np.where(np.isfinite(x), x, -np.inf), axis=-1, keepdims=True)
    finite_max = np.where(np.isfinite(finite_max), finite_max, 0.0)
    shifted = x - finite_max
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("regime", ["normal_x3", "dominant", "large_1e4", "near_ties"])
def test_loss_and_gradient_within_bounds_of_exact_reference(regime, dtype):
    student = _regime_logits(regime, (6, 23), dtype)
    teacher = _regime_logits(regime, (6, 23), dtype, "teacher")
    target = _labels(6, 23, seed=3)
    _assert_within_bounds(student, teacher, target, dtype, near_ties=regime == "near_ties")
    _assert_within_bounds(student, teacher, None, dtype, near_ties=regime == "near_ties", temperature=2.0)


def test_temperature_that_is_not_a_power_of_two_rounds_the_scaled_float64_logits():
    # z / T is rounded once in float64 (as torch's s / T): the probabilities then carry a
    # relative error up to |z/T| u, the gradient's error is bounded by that, not by ULPs
    student = _regime_logits("large_1e4", (6, 23), np.float64)
    teacher = _regime_logits("large_1e4", (6, 23), np.float64, "teacher")
    loss, grad = distillation_loss_forward_backward(student, teacher, temperature=2.5, reduction="none")
    exact_loss, exact_grad = exact_distillation_loss(student, teacher, temperature=2.5, reduction="none",
                                                     engine="mpmath-50")
    magnitude = np.abs(student / 2.5).max(axis=1, keepdims=True) + np.abs(teacher / 2.5).max(axis=1, keepdims=True)
    eps = np.finfo(np.float64).eps
    assert np.all(np.abs(grad - exact_grad.hi) <= 4 * eps * 2.5 * magnitude * np.abs(exact_grad.hi).max())
    assert np.all(np.abs(loss - exact_loss.hi) <= 4 * eps * 2.5**2 * (magnitude[:, 0] + 1) * 16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_rows_split_across_blocks_and_threads(dtype, threads):
    classes = 3 * block_length(np.dtype(dtype).itemsize) + 129
    student = _random((2, classes), dtype, seed=4)
    teacher = _random((2, classes), dtype, seed=5)
    target = np.array([7, classes - 1])
    results = []
    for count in (1, 2):  # 2 rows: whole rows on one thread, blocks split over two
        threads(count)
        results.append(distillation_loss_forward_backward(student, teacher, target, reduction="none"))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    _assert_within_bounds(student, teacher, target, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 8])
def test_results_are_bit_identical_for_one_and_two_threads(threads, rows, dtype):
    classes = 3 * block_length(np.dtype(dtype).itemsize) + 129 if rows == 1 else 300
    student, teacher = _random((rows, classes), dtype, seed=rows), _random((rows, classes), dtype, seed=rows + 1)
    results = []
    for count in (1, 2):
        threads(count)
        results.append(distillation_loss_forward_backward(student, teacher, _labels(rows, classes))
                       + distillation_loss_forward_backward(student, teacher, reduction="none"))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_gradient_matches_the_proof_book_closed_forms():
    from softmaxlab.derivations import closed_forms

    student, teacher = _random((4, 6), np.float64, seed=6), _random((4, 6), np.float64, seed=7)
    target = _labels(4, 6, seed=8)
    one_hot = np.eye(6)[target]
    loss, grad = distillation_loss_forward_backward(student, teacher, target, temperature=3.0, alpha=0.7,
                                                    reduction="sum")
    np.testing.assert_allclose(grad, closed_forms.distillation_loss_gradient(student, teacher, one_hot, 3.0, 0.7),
                               atol=1e-15)
    np.testing.assert_allclose(loss, closed_forms.distillation_loss(student, teacher, one_hot, 3.0, 0.7).sum(),
                               rtol=1e-14)
    loss, grad = distillation_loss_forward_backward(student, teacher, temperature=3.0, reduction="sum")
    np.testing.assert_allclose(grad, closed_forms.distillation_soft_term_gradient(student, teacher, 3.0), atol=1e-15)
    np.testing.assert_allclose(loss, closed_forms.distillation_soft_term(student, teacher, 3.0).sum(), rtol=1e-14)


def test_gradient_matches_central_differences():
    student, teacher = _random((3, 5), np.float64, seed=10), _random((3, 5), np.float64, seed=11)
    target = _labels(3, 5, seed=12)
    kwargs = dict(temperature=2.0, alpha=0.6)
    _, grad = distillation_loss_forward_backward(student, teacher, target, grad_output=1.3, **kwargs)
    expected = 1.3 * central_differences(lambda values: distillation_loss(values, teacher, target, **kwargs), student)
    np.testing.assert_allclose(grad, expected, atol=1e-8)


def test_temperature_squared_keeps_the_soft_gradient_from_vanishing():
    # Hinton et al. 2015, section 2.1: the soft gradient per unit of KL scales as 1/T^2; times T^2 it tends to a
    # finite limit, (z - v - mean(z - v)) / C per row, as T grows
    student, teacher = _random((4, 10), np.float64, seed=13), _random((4, 10), np.float64, seed=14)
    norms = []
    for temperature in (10.0, 100.0, 1000.0):
        _, grad = distillation_loss_forward_backward(student, teacher, temperature=temperature, reduction="sum")
        norms.append(np.linalg.norm(grad))
    difference = student - teacher
    limit = (difference - difference.mean(axis=1, keepdims=True)) / 10
    assert norms[2] == pytest.approx(np.linalg.norm(limit), rel=1e-3)
    assert norms[1] == pytest.approx(norms[2], rel=0.02)


@pytest.mark.parametrize("dtype", DTYPES)
def test_student_equal_to_teacher_has_zero_soft_loss_and_gradient(dtype):
    logits = _random((5, 9), dtype)
    loss, grad = distillation_loss_forward_backward(logits, logits, reduction="none")
    np.testing.assert_array_equal(loss, np.zeros(5))
    np.testing.assert_array_equal(grad, np.zeros((5, 9)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [9, 3 * 4096 + 5])  # one block, and rows of several blocks
@pytest.mark.parametrize("shift", [96.0, 4096.0])
def test_student_shifted_from_its_teacher_has_no_soft_loss_beyond_the_log_sums(dtype, classes, shift):
    # softmax is shift-invariant, so p = q exactly when z = v + c with every z_j exact (values
    # on a 2^-8 grid): KL = 0.  Each term keeps its shift, ((v_j/T - M_v) - (z_j/T - M_z)) = 0,
    # and what is left is log S_v - log S_z (the two sums' exponentials are evaluated from
    # different (x, max) pairs): at most about u T^2 log C.  With the shifts outside the sum,
    # sum_j p_j (v_j - z_j)/T = -c/T and M_v - M_z = -c/T would cancel: up to 932 u T^2 log C
    # at c = 4096 (measured).
    rng = np.random.default_rng(5)
    teacher = (np.round(rng.standard_normal((6, classes)) * 3 * 256) / 256).astype(dtype)
    teacher[:, 1::3] += 0.5  # blocks with other maxima than the row's
    student = (teacher + shift).astype(dtype)
    assert np.array_equal(student - teacher, np.full_like(teacher, shift))
    temperature = 4.0
    loss = distillation_loss(student, teacher, temperature=temperature, reduction="none")
    assert np.all(np.abs(loss) <= 2 * 2.0**-53 * temperature**2 * np.log(classes))


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_rows_and_entries(dtype):
    inf = np.inf
    student = np.array([[0.0, 1.0, 2.0], [-inf, -inf, -inf], [0.0, -inf, 1.0], [0.5, np.nan, 0.0]], dtype=dtype)
    teacher = np.array([[-inf, -inf, -inf], [0.0, 1.0, 2.0], [1.0, 0.0, -inf], [0.0, 1.0, 2.0]], dtype=dtype)
    target = np.array([1, 0, 2, 0])
    loss, grad = distillation_loss_forward_backward(student, teacher, target, reduction="none", alpha=0.5)
    # row 0: the teacher has p = 0: only the hard term, 0.5 CE, and its gradient 0.5 (a - y)
    a = np.exp(_log_softmax(student[:1]))[0]
    assert loss[0] == pytest.approx(0.5 * -np.log(a[1]), rel=4 * float(np.finfo(dtype).eps))
    np.testing.assert_allclose(grad[0], 0.5 * (a - np.eye(3)[1]), atol=2 * np.finfo(dtype).eps)
    # row 1: every student logit -inf: infinite loss, zero gradient
    assert loss[1] == np.inf and not np.any(grad[1])
    # row 2: a student -inf where the teacher's probability is positive: KL = +inf, finite gradient
    assert loss[2] == np.inf and np.all(np.isfinite(grad[2]))
    # row 3: NaN stays in its row
    assert np.isnan(loss[3]) and np.all(np.isnan(grad[3]))
    exact_loss, exact_grad = exact_distillation_loss(student[:3], teacher[:3], target[:3], alpha=0.5,
                                                     reduction="none", engine="mpmath-50")
    np.testing.assert_array_equal(loss[:3] == np.inf, exact_loss.hi == np.inf)
    np.testing.assert_allclose(grad[:3], exact_grad.hi, atol=2 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch_single_class_and_unbatched(dtype):
    empty = np.zeros((0, 4), dtype=dtype)
    loss, grad = distillation_loss_forward_backward(empty, empty)
    assert loss == 0.0 and grad.shape == (0, 4)
    single = np.array([[2.0], [-1.0]], dtype=dtype)
    loss, grad = distillation_loss_forward_backward(single, single[::-1].copy(), np.array([0, 0]))
    assert loss == 0.0 and not np.any(grad)
    vector = np.array([1.0, 2.0, 3.0], dtype=dtype)
    loss, grad = distillation_loss_forward_backward(vector, vector[::-1].copy(), np.array(2), reduction="none")
    assert np.shape(loss) == () and grad.shape == (3,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs_and_inputs_not_modified(dtype):
    base = _random((6, 40), dtype)
    other = _random((40, 6), dtype, seed=3)
    target = _labels(6, 20)
    student, teacher = base[:, ::2], other[:20].T
    before = (student.copy(), teacher.copy(), target.copy())
    loss, grad = distillation_loss_forward_backward(student, teacher, target)
    expected = distillation_loss_forward_backward(np.ascontiguousarray(student), np.ascontiguousarray(teacher), target)
    np.testing.assert_array_equal(loss, expected[0])
    np.testing.assert_array_equal(grad, expected[1])
    for now, then in zip((student, teacher, target), before):
        np.testing.assert_array_equal(now, then)


def test_bad_inputs_raise_clear_errors():
    student, teacher, target = np.zeros((3, 4)), np.zeros((3, 4)), np.array([0, 1, 2])
    cases = [
        (TypeError, r"student must be a numpy.ndarray .* got list", dict(student=[[0.0]])),
        (TypeError, r"student must have dtype float32 or float64, got int64", dict(student=np.zeros((3, 4), dtype=np.int64))),
        (TypeError, r"student must have dtype float32 or float64, got float16", dict(student=np.zeros((3, 4), dtype=np.float16))),
        (ValueError, r"teacher must have the shape of student \(3, 4\), got \(3, 5\)", dict(teacher=np.zeros((3, 5)))),
        (TypeError, r"teacher must have the dtype of student \(float64\), got float32",
         dict(teacher=np.zeros((3, 4), dtype=np.float32))),
        (ValueError, r"target must hold class indices in \[0, 4\), got 4 at row 2", dict(target=np.array([0, 1, 4]))),
        (ValueError, r"target must have shape \(3,\), got \(2,\)", dict(target=np.array([0, 1]))),
        (ValueError, r"temperature must be > 0.0, got 0", dict(temperature=0)),
        (ValueError, r"temperature must be > 0.0, got -2.0", dict(temperature=-2.0)),
        (ValueError, r"temperature must be finite, got inf", dict(temperature=np.inf)),
        (ValueError, r"alpha must be >= 0.0, got -0.5", dict(alpha=-0.5)),
        (ValueError, r"alpha must be <= 1.0, got 1.1", dict(alpha=1.1)),
        (TypeError, r"alpha must be a real number, got NoneType", dict(alpha=None)),
        (ValueError, r"reduction must be one of", dict(reduction="batchmean")),
    ]
    for error, message, change in cases:
        arguments = dict(student=student, teacher=teacher, target=target)
        arguments.update(change)
        for function in (distillation_loss, distillation_loss_forward_backward):
            with pytest.raises(error, match=message):
                function(**arguments)
