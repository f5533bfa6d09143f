"""Knowledge-distillation loss (Hinton et al. 2015), forward and student gradient in one kernel.

For a student row z, a teacher row v, temperature T and weight alpha::

    q = softmax(z / T),  p = softmax(v / T),  a = softmax(z)
    L = alpha T^2 KL(p || q) + (1 - alpha) CE(z, y)          (with a hard target y)
    L = T^2 KL(p || q)                                        (target=None)
    dL/dz = alpha T (q - p) + (1 - alpha)(a - onehot(y))      (T (q - p) without target)

The teacher gets no gradient.  Why T^2 (Hinton et al. 2015): the soft gradient is (q - p) / T per
unit of KL, so multiplying by T^2 keeps the soft and hard terms' gradients of the same
size whatever the temperature (proof book: ``docs/proofs/distillation.md``).

One parallel kernel (the loss driver, ``_driver/losses.py``) with a state of 7 floats per
block: the (max, sum of exp - 1) pairs of z/T, v/T and z, and
u_b = sum_c e^(v_c/T - m_b) ((v_c/T - m_b) - (z_c/T - m'_b)), m_b and m'_b the block's
maxima of v/T and z/T.  Merged per row,
KL = sum_c p_c [(v_c/T - M_v) - (z_c/T - M_z)] - (log S_v - log S_z), with every sum of
exponentials taken without cancellation (``_numerics/rows.py``, ``scaled_exp_sum``) and the
log-sums as log1p.  The shifts stay inside the terms: with them outside (sum_c p_c (v_c -
z_c)/T - (M_v - M_z) - ...) the first two would cancel wherever the student is its
teacher shifted by a constant (the loss then a difference of terms of size |M_v - M_z|),
and on rows of near ties.  The write pass reads z and v once more and writes
``g (alpha T / S_z) e^(z/T - M_z) - g (alpha T / S_v) e^(v/T - M_v) + g ((1-alpha)/S) e^(z - M)``
with the target entry's ``a_y - 1`` formed as ``-T/S`` when z_y holds the max.  float32
rows are computed in float64 and rounded once when stored.

Accuracy (``tests/kernels/test_distillation.py``): the gradient within a few ULPs of its
largest term (q - p cancels where the student agrees with the teacher, in every
implementation); the loss within a few units of u times the size of the terms KL is a
difference of (T^2 (max_c |(v_c/T - M_v) - (z_c/T - M_z)| + log C)): KL(p || q) much
smaller than that (a student close to its teacher) loses digits here as in torch's
``kl_div`` composition and JAX's sum_c p_c (log p_c - log q_c) (on rows of near ties, 32 x
1000 float64, both are up to about 100 ULP of the per-row loss, measured).  A student that
is its teacher shifted by a constant has a loss of at most about u T^2 log C, whatever the
shift (``test_student_shifted_from_its_teacher_has_no_soft_loss_beyond_the_log_sums``).  For float64
with a temperature that is not a power of two, z/T is rounded once (as torch's ``s / T``),
which costs up to |z/T| u relative in the probabilities; carrying the rounding error of
the scaling as a second float (``_cosine_margins.exp_scaled_difference`` does so for products)
would remove it.

Edges: an all -inf teacher row has p = 0 (``docs/design.md``, "Semantics at the edges"): its soft term and
soft gradient are 0.  An all -inf student row has an infinite loss (when the teacher's
row is not all -inf, or a hard target is given) and zero gradient.  A student logit of -inf
where the teacher's probability is positive gives KL = +inf.  NaN or +inf in a row gives
NaN in that row.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH
from ._driver.losses import (
    block_factor,
    exp_scaled,
    make_loss_kernel,
    merge_pair,
    reduce_scaled,
    run_loss_kernel,
    target_minus_one,
    upstream_at,
)
from ._driver.reduction import row_scales
from ._numerics.rows import SUM_CHUNK, block_max, exp_difference_for, fill, has_nan, pairwise_sum
from ._validation import (
    check_class_indices,
    check_float_array,
    check_real_scalar,
    check_reduction,
    check_same_array_layout,
)

__all__ = ["distillation_loss", "distillation_loss_forward_backward"]

PAGE = "docs/proofs/distillation.md"

# row status, kept in stats[i, STATUS]
_NORMAL = 0.0
_TEACHER_MASKED = 1.0  # every teacher logit -inf: p = 0, no soft term
_ZERO_GRADIENT = 2.0  # every student logit -inf
_UNDEFINED = 3.0  # NaN or +inf in the row


@njit(fastmath=False, **JIT_OPTIONS)
def _rounded_product(a, b):
    # a * b rounded on its own: without the ``contract`` flag LLVM cannot fuse it into an FMA
    # with the subtraction that follows, so q_j - p_j is exactly 0 where the student's and the
    # teacher's terms are equal (an FMA would leave the rounding error of one product)
    return a * b


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _cross_term(e, teacher_value, student_value, scale, teacher_largest, student_largest):
    # e ((v/T - m_v) - (z/T - m_z)) for the block's maxima m_v of v/T and m_z of z/T, and 0
    # where v = -inf (p_c = 0 adds nothing, even against z_c = -inf; the float32 rows'
    # exponential gives e**-110, not 0, below -110, so e itself is not tested)
    if teacher_value == -np.inf:
        return 0.0
    if student_value == -np.inf:
        # p_c > 0 for a finite v_c even where e underflows to 0 (float64, v_c/T - M_v < -745):
        # p_c (v_c - z_c) = +inf, not 0 * inf = NaN
        return np.inf
    return e * ((np.float64(teacher_value) * scale - teacher_largest)
                - (np.float64(student_value) * scale - student_largest))


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _teacher_sums(teacher, student, scale, largest, student_largest):
    """(t_b, u_b) of a teacher block: sum_c e_c - 1 (ties counted) and
    sum_c e_c ((v_c/T - largest) - (z_c/T - student_largest)), e_c = exp(v_c/T - largest),
    largest = max_c v_c/T, student_largest = max_c z_c/T (the block's); float64, chunked as
    ``_numerics.rows.SUM_CHUNK``."""
    total = 0.0
    ties = 0.0
    cross = 0.0
    for base in range(0, teacher.shape[0], SUM_CHUNK):
        chunk = teacher[base : base + SUM_CHUNK]
        student_chunk = student[base : base + SUM_CHUNK]
        partial = 0.0
        partial_cross = 0.0
        for j in range(chunk.shape[0]):
            value = np.float64(chunk[j]) * scale
            e = exp_difference_for(teacher, value, largest)
            partial += e if value != largest else 0.0
            ties += 1.0 if value == largest else 0.0
            # the max's own e is exactly 1, as T counts it (exp(0) = 1 in both dtypes; a float32
            # exp(0) of 1 - 4e-11 once left KL = -4e-11 (v - z)/T where p = q)
            partial_cross += _cross_term(e, chunk[j], student_chunk[j], scale, largest, student_largest)
        total += partial
        cross += partial_cross
    return total + (ties - 1.0), cross


# The block functions unpack ``args`` once, at their top: attribute reads spread through the
# bodies compiled to about 20 more calls in the kernel (its machine code compared with the unpack's).
DistillationArgs = namedtuple(
    "DistillationArgs",
    [
        "teacher",  # (rows, classes) of the student's dtype
        "target",  # int64 (rows,), or (1,) without a hard target
        "row_scale",  # float64 (rows,) or (1,): ``reduction.row_scales``, read by ``upstream_at``
        "scale",  # float64, 1/T
        "soft_coefficient",  # float64, alpha T^2 (T^2 without target)
        "hard_coefficient",  # float64, 1 - alpha (0 without target)
        "hard",  # bool: whether there is a hard target
    ],
)

# Columns of ``partial`` (per block: m_b and t_b of each softmax, u_b) and ``stats`` (per row:
# M and T of each softmax, the status)
STUDENT_MAX, STUDENT_SUM = 0, 1  # of z/T
TEACHER_MAX, TEACHER_SUM = 2, 3  # of v/T
CROSS = 4  # per block: u_b = sum_c e^(v_c/T - m_b) ((v_c/T - m_b) - (z_c/T - m'_b)) (unused per row)
HARD_MAX, HARD_SUM = 5, 6  # of z (with a hard target)
STATUS = 7  # per row: _NORMAL, _TEACHER_MASKED, _ZERO_GRADIENT or _UNDEFINED (unused per block)
WIDTH = 8


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce(student, args, grad, i, k, start, stop, partial, write):
    teacher, target, row_scale, scale, soft_coefficient, hard_coefficient, hard = args
    values = student[i, start:stop]
    teacher_values = teacher[i, start:stop]
    partial[i, k, STUDENT_MAX], partial[i, k, STUDENT_SUM] = reduce_scaled(values, scale)
    largest = block_max(teacher_values) * scale
    partial[i, k, TEACHER_MAX] = largest
    if largest == -np.inf:
        partial[i, k, TEACHER_SUM], partial[i, k, CROSS] = (np.nan if has_nan(teacher_values) else -1.0), 0.0
    elif largest == np.inf:
        partial[i, k, TEACHER_SUM], partial[i, k, CROSS] = 0.0, np.nan
    else:
        partial[i, k, TEACHER_SUM], partial[i, k, CROSS] = _teacher_sums(
            teacher_values, values, scale, largest, partial[i, k, STUDENT_MAX]
        )
    if hard:
        partial[i, k, HARD_MAX], partial[i, k, HARD_SUM] = reduce_scaled(values, 1.0)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge(student, args, i, partial, stats):
    teacher, target, row_scale, scale, soft_coefficient, hard_coefficient, hard = args
    student_largest, student_total = merge_pair(student, i, partial, STUDENT_MAX)
    teacher_largest, teacher_total = merge_pair(teacher, i, partial, TEACHER_MAX)
    stats[i, STUDENT_MAX], stats[i, STUDENT_SUM], stats[i, TEACHER_MAX], stats[i, TEACHER_SUM] = student_largest, student_total, teacher_largest, teacher_total
    loss = 0.0
    hard_largest, hard_total = 0.0, 0.0
    if hard:
        hard_largest, hard_total = merge_pair(student, i, partial, HARD_MAX)
    stats[i, HARD_MAX], stats[i, HARD_SUM] = hard_largest, hard_total
    if (student_total != student_total or teacher_total != teacher_total or student_largest == np.inf
            or teacher_largest == np.inf):
        stats[i, STATUS] = _UNDEFINED
        return np.nan
    if student_largest == -np.inf:
        # q = 0: KL = +inf unless p = 0 too; CE = +inf
        stats[i, STATUS] = _ZERO_GRADIENT
        soft = np.inf if (teacher_largest != -np.inf and soft_coefficient != 0.0) else 0.0
        return soft + (np.inf if (hard and hard_coefficient != 0.0) else 0.0)
    stats[i, STATUS] = _NORMAL
    if teacher_largest == -np.inf:
        stats[i, STATUS] = _TEACHER_MASKED  # p = 0: no soft term
    else:
        # KL(p || q) = sum_c p_c [(v_c/T - M_v) - (z_c/T - M_z)] - (log S_v - log S_z): the shifts
        # stay inside the terms, so a row whose student and teacher differ by a constant (or
        # are both near ties) does not take the difference of two large sums
        blocks = partial.shape[1]
        if blocks == 1:
            cross = partial[i, 0, CROSS]
        else:
            terms = np.empty(blocks)
            for k in range(blocks):
                cross_b = partial[i, k, CROSS]
                block_teacher_largest = partial[i, k, TEACHER_MAX]
                # 0 stays 0 (a teacher block of -inf, p_c = 0), and +inf stays +inf:
                # exp(m_b - M) > 0 even where it underflows to 0
                if cross_b == np.inf or block_teacher_largest == -np.inf:
                    terms[k] = cross_b
                    continue
                # the block's terms moved from its maxima (m_v, m_z) to the row's (M_v, M_z):
                # sum_c e_c [(v_c/T - M_v) - (z_c/T - M_z)] relative to m_v adds
                # S_b [(m_v - M_v) - (m_z - M_z)]
                shift = ((block_teacher_largest - teacher_largest)
                         - (partial[i, k, STUDENT_MAX] - student_largest))
                block_total = 1.0 + partial[i, k, TEACHER_SUM]
                terms[k] = (cross_b + block_total * shift) * block_factor(block_teacher_largest, teacher_largest)
            cross = pairwise_sum(terms)
        teacher_log_total = math.log1p(teacher_total)
        student_log_total = math.log1p(student_total)
        divergence = cross / (1.0 + teacher_total) - (teacher_log_total - student_log_total)
        loss = soft_coefficient * divergence if soft_coefficient != 0.0 else 0.0
    if hard and hard_coefficient != 0.0:
        label = target[i]
        # CE(z, y) = (M - z_y) + log1p(T)
        loss += hard_coefficient * ((hard_largest - np.float64(student[i, label])) + math.log1p(hard_total))
    return loss


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write(student, args, grad, i, k, start, stop, partial, stats):
    teacher, target, row_scale, scale, soft_coefficient, hard_coefficient, hard = args
    destination = grad[i, start:stop]
    status = stats[i, STATUS]
    if status == _UNDEFINED:
        fill(destination, np.nan)
        return
    if status == _ZERO_GRADIENT:
        fill(destination, 0.0)
        return
    values = student[i, start:stop]
    teacher_values = teacher[i, start:stop]
    upstream = upstream_at(row_scale, i)
    student_largest, student_total = stats[i, STUDENT_MAX], stats[i, STUDENT_SUM]
    teacher_largest, teacher_total = stats[i, TEACHER_MAX], stats[i, TEACHER_SUM]
    soft = upstream * soft_coefficient * scale  # g alpha T^2 / T
    student_factor = soft / (1.0 + student_total)
    teacher_factor = soft / (1.0 + teacher_total)
    if status == _TEACHER_MASKED:
        # p = 0 and sum_c p_c = 0: the soft term and its gradient vanish (exp(-inf) = 0 below)
        student_factor, teacher_factor, teacher_largest = 0.0, 0.0, 0.0
    if hard:
        hard_largest, hard_total = stats[i, HARD_MAX], stats[i, HARD_SUM]
        hard_factor = upstream * hard_coefficient / (1.0 + hard_total)
        # dL/dz_j = g [alpha T (q_j - p_j) + (1 - alpha) a_j]   (j != y)
        # q_j = e^(z_j/T - M_z) / S_z, p_j = e^(v_j/T - M_v) / S_v, a_j = e^(z_j - M) / S
        # (docs/proofs/distillation.md#distillation-loss-gradient)
        for j in range(values.shape[0]):
            destination[j] = (
                _rounded_product(student_factor, exp_scaled(values, values[j], scale, student_largest))
                - _rounded_product(teacher_factor, exp_scaled(teacher_values, teacher_values[j], scale, teacher_largest))
            ) + hard_factor * exp_scaled(values, values[j], 1.0, hard_largest)
        label = target[i]
        if start <= label < stop:
            # the target: ... + g (1 - alpha)(a_y - 1), a_y - 1 = -T/S when z_y = M
            j = label - start
            destination[j] = (
                _rounded_product(student_factor, exp_scaled(values, values[j], scale, student_largest))
                - _rounded_product(teacher_factor, exp_scaled(teacher_values, teacher_values[j], scale, teacher_largest))
            ) + upstream * hard_coefficient * target_minus_one(values, values[j], hard_largest, hard_total)
    else:
        # dL/dz_j = g T (q_j - p_j)   (docs/proofs/distillation.md#distillation-soft-gradient)
        for j in range(values.shape[0]):
            destination[j] = _rounded_product(student_factor, exp_scaled(values, values[j], scale, student_largest)) - (
                _rounded_product(teacher_factor, exp_scaled(teacher_values, teacher_values[j], scale, teacher_largest))
            )


_distillation_kernel = make_loss_kernel(_reduce, _merge, _write, WIDTH)


def _distillation(student, teacher, target, temperature, alpha, reduction, grad_output, write):
    student = check_float_array("student", student)
    teacher = check_float_array("teacher", teacher)
    check_same_array_layout("teacher", teacher, "student", student)
    classes = student.shape[-1]
    if classes < 1:
        raise ValueError(f"student must have at least one class on its last axis, got shape {student.shape}")
    temperature = check_real_scalar("temperature", temperature, minimum=0.0, include_minimum=False)
    alpha = check_real_scalar("alpha", alpha, minimum=0.0, maximum=1.0)
    reduction = check_reduction("reduction", reduction)
    batch_shape = student.shape[:-1]
    rows = np.ascontiguousarray(student.reshape(-1, classes))
    teacher_rows = np.ascontiguousarray(teacher.reshape(-1, classes))
    if target is None:
        labels, hard = np.zeros(1, dtype=np.int64), False
        soft_coefficient, hard_coefficient = temperature * temperature, 0.0
    else:
        labels, hard = check_class_indices("target", target, batch_shape, classes).reshape(-1), True
        soft_coefficient, hard_coefficient = alpha * temperature * temperature, 1.0 - alpha
    denominator = rows.shape[0]
    scale = row_scales(grad_output, reduction, denominator, batch_shape)
    args = DistillationArgs(teacher_rows, labels, scale, 1.0 / temperature, soft_coefficient, hard_coefficient, hard)
    return run_loss_kernel(_distillation_kernel, rows, args, write, reduction, denominator, student.shape)


def distillation_loss(student, teacher, target=None, *, temperature=4.0, alpha=0.9, reduction="mean"):
    r"""Knowledge-distillation loss: softened teacher targets plus, optionally, hard labels.

    .. math::
        \ell = \alpha\, T^2\, \mathrm{KL}\big(\mathrm{softmax}(v/T)\,\|\,\mathrm{softmax}(z/T)\big)
             + (1 - \alpha)\, \mathrm{CE}(z, y)

    for student logits ``z`` and teacher logits ``v``; with ``target=None`` the loss is
    ``T^2 KL(...)`` alone (``alpha`` is then not used).  The T^2 keeps the soft term's
    gradient, which scales as 1/T, comparable to the hard term's (Hinton et al. 2015).

    Args:
        student: float32 or float64 logits ``(..., C)``; not modified.
        teacher: teacher logits of ``student``'s shape and dtype; no gradient flows to it.
        target: optional integer class indices of shape ``student.shape[:-1]``.
        temperature: T > 0 (default 4).
        alpha: weight of the soft term in [0, 1] (default 0.9).
        reduction: ``"mean"`` over rows (PyTorch's ``kl_div(reduction="batchmean")``;
            default), ``"sum"`` or ``"none"``.

    Returns:
        The loss in ``student``'s dtype: a scalar, or shape ``student.shape[:-1]`` for
        ``"none"``.  The mean over an empty batch is 0.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import distillation_loss
        >>> logits = np.array([[1.0, 2.0, 3.0]])
        >>> float(distillation_loss(logits, logits))  # the student matches the teacher
        0.0
        >>> round(float(distillation_loss(logits, logits, np.array([2]), alpha=0.5)), 4)
        0.2038

    References: G. Hinton, O. Vinyals, J. Dean, "Distilling the knowledge in a neural
    network", 2015; ``docs/proofs/distillation.md``.
    """
    loss, _ = _distillation(student, teacher, target, temperature, alpha, reduction, 1.0, False)
    return loss


def distillation_loss_forward_backward(student, teacher, target=None, *, temperature=4.0, alpha=0.9,
                                       reduction="mean", grad_output=1.0):
    r""":func:`distillation_loss` and its gradient in the student logits, from one fused kernel.

    .. math::
        \frac{\partial \ell}{\partial z_j} = \alpha\, T\, (q_j - p_j) + (1 - \alpha)(a_j - [j = y]),
        \quad q = \mathrm{softmax}(z/T),\ p = \mathrm{softmax}(v/T),\ a = \mathrm{softmax}(z)

    (``T (q - p)`` with ``target=None``), times ``grad_output`` and 1/rows for ``"mean"``.

    Args:
        student, teacher, target, temperature, alpha, reduction: as :func:`distillation_loss`.
        grad_output: upstream gradient: a real number, or for ``"none"`` a float array of
            ``student.shape[:-1]``.

    Returns:
        ``(loss, grad_student)``, the gradient of ``student``'s shape and dtype.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import distillation_loss_forward_backward
        >>> loss, grad = distillation_loss_forward_backward(np.zeros((1, 2)), np.array([[0.0, 8.0]]),
        ...                                                 temperature=4.0)
        >>> grad.round(4)
        array([[ 1.5232, -1.5232]])

    References: as :func:`distillation_loss`.
    """
    return _distillation(student, teacher, target, temperature, alpha, reduction, grad_output, True)
