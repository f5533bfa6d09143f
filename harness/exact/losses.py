"""Exact references of the losses: cross-entropy, distillation, the sigmoid losses, the hinges.

Each ``exact_<loss>(inputs..., options..., grad_output=1.0, engine="auto")`` returns
(loss, dloss/d<first input>) as :class:`~softmaxlab.harness.metrics.Exact` pairs, for the
kernel of the same name and the same options (the registry runs the defaults; the kernel
tests, ``tests/kernels``, every combination).

* ``mpmath-50``: every loss and gradient, row by row at 50 digits (``engine.MpRow``), with
  the kernels' conventions at the edges (an all -inf row: +inf loss and zero gradient; a
  -inf logit whose target weight is 0 adds 0; the mean over nothing is 0).  Sums of
  exponentials are kept as ``1 + rest`` and log-sums as ``log1p(rest)``, and the target's
  ``a_y - 1`` as ``-rest / S`` when it holds the max, so that losses of e^-200 keep
  their digits.
* ``longdouble``: cross-entropy with its default options only, from the long double
  ``logsumexp`` and ``softmax``; measured against mpmath-50 on every regime (3 x 3000
  inputs): the loss within 2e-12 float64 ULP, the gradient within 7e-4 (its product with
  g / N is taken in long double).  The other losses are mpmath only (their registry
  entries leave out the 10^6-class regime).

The term magnitudes of the gradients (``cross_entropy_gradient_scale``,
``distillation_gradient_scale``, ``binary_cross_entropy_gradient_scale``,
``quadratic_cost_gradient_scale``, ``multiclass_hinge_gradient_scale``; the
condition-aware error of ``metrics.py``) take the same inputs and options and return
float64 arrays of the gradient's shape: the gradient's formula with every term replaced by
its absolute value, from the exact probabilities (float64 sigmoids for the elementwise
losses).  The smooth hinge has none yet.
"""

from __future__ import annotations

import mpmath
import numpy as np

from ..metrics import Exact
from .engine import LONGDOUBLE_ENGINE, MPMATH_DIGITS, MpRow, require_mpmath, resolve_engine, to_exact, to_mpf
from .normalizers import logsumexp, softmax


def _times(weight, value):
    """weight * value with 0 * inf = 0 (a term of weight 0 adds nothing)."""
    return mpmath.mpf(0) if weight == 0 else weight * value


def _reduce(losses, reduction, denominator, batch_shape):
    if reduction == "none":
        return to_exact(losses, batch_shape)
    with mpmath.workdps(MPMATH_DIGITS):
        total = mpmath.fsum(losses)
        if reduction == "mean":
            total = total / denominator if denominator != 0 else mpmath.mpf(0)
    return to_exact([total], ())


def _upstream(grad_output, reduction, denominator, rows):
    """dOut/dloss_i per row as mpf."""
    if reduction == "none":
        values = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), (rows,)) if rows else []
        return [to_mpf(v) for v in np.asarray(values).reshape(-1)]
    with mpmath.workdps(MPMATH_DIGITS):
        value = to_mpf(grad_output)
        if reduction == "mean":
            value = value / denominator if denominator != 0 else mpmath.mpf(0)
    return [value] * rows


def _upstream_magnitude(grad_output, reduction, denominator, rows) -> np.ndarray:
    """|dOut/dloss_i| per row in float64: the magnitudes of :func:`_upstream`'s values."""
    if reduction == "none":
        return np.abs(np.broadcast_to(np.asarray(grad_output, dtype=np.float64), (rows,))).astype(np.float64)
    value = abs(float(grad_output))
    if reduction == "mean":
        value = value / float(denominator) if denominator != 0 else 0.0
    return np.full(rows, value)


# ---- cross-entropy ------------------------------------------------------------------------------


def exact_cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                        grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.cross_entropy`` as Exact pairs (class indices or probabilities).

    ``logits`` is (rows, classes); the conventions are the kernel's (see its module docstring).
    """
    logits = np.asarray(logits)
    resolved = resolve_engine(engine, logits.size)
    probabilities = np.asarray(target).dtype.kind == "f"
    if resolved == LONGDOUBLE_ENGINE:
        if weight is not None or label_smoothing != 0.0 or probabilities:
            raise NotImplementedError("cross_entropy's long double reference covers the default options only")
        return _longdouble_cross_entropy(logits, np.asarray(target), ignore_index, reduction, grad_output)
    with mpmath.workdps(MPMATH_DIGITS):
        rows = [[to_mpf(v) for v in row] for row in logits]
        total, grads = cross_entropy_mp(rows, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
                                        label_smoothing=label_smoothing, grad_output=grad_output)
        return total, to_exact([value for row in grads for value in row], logits.shape)


def cross_entropy_mp(rows, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                     grad_output=1.0, z_loss=0.0):
    """(loss as Exact, dloss/dlogits as rows of mpf) for logits given as rows of mpf (exact
    values that need not be floats: the fused linear cross-entropy's ``x W^T + b``), with
    ``z_loss * LSE^2`` added to each row's loss that is not ignored (PaLM's z-loss)."""
    classes = len(rows[0]) if rows else 0
    count = len(rows)
    eps = to_mpf(label_smoothing)
    z_weight = to_mpf(z_loss)
    probabilities = np.asarray(target).dtype.kind == "f"
    weights = [mpmath.mpf(1)] * classes if weight is None else [to_mpf(w) for w in weight]
    weight_total = mpmath.fsum(weights)
    if probabilities:
        kept = [True] * count
        denominator = count
    else:
        labels = np.asarray(target).reshape(-1)
        kept = [int(label) != ignore_index for label in labels]
        denominator = mpmath.fsum(weights[int(label)] for label, keep in zip(labels, kept) if keep)
    upstream = _upstream(grad_output, reduction, denominator, count)
    losses, grads = [], []
    for i in range(count):
        if not kept[i]:
            losses.append(mpmath.mpf(0))
            grads.append([mpmath.mpf(0)] * classes)
            continue
        row = MpRow(rows[i])
        if probabilities:
            targets = [w * ((1 - eps) * to_mpf(p) + eps / classes) for w, p in zip(weights, target[i])]
            label = None
        else:
            label = int(labels[i])
            targets = [eps * w / classes for w in weights]
            targets[label] += (1 - eps) * weights[label]
        target_total = mpmath.fsum(targets)
        if row.masked:
            losses.append(mpmath.fsum(_times(t, mpmath.inf) for t in targets))
            grads.append([mpmath.mpf(0)] * classes)
            continue
        loss = mpmath.fsum(_times(t, row.minus_log_probability(j)) for j, t in enumerate(targets))
        # d(z_loss LSE^2)/dz_j = 2 z_loss LSE a_j
        z_term = 2 * z_weight * row.lse if z_weight else mpmath.mpf(0)
        losses.append(loss + z_weight * row.lse ** 2 if z_weight else loss)
        gradient = []
        for j, t in enumerate(targets):
            if j == label:
                # TW a_y - tw_y = TW (a_y - 1) + (TW - tw_y), TW - tw_y = eps/C (W - w_y)
                value = target_total * row.probability_minus_one(j) + eps / classes * (weight_total - weights[j])
            else:
                value = target_total * row.probability(j) - t
            if z_weight:
                value += z_term * row.probability(j)
            gradient.append(upstream[i] * value)
        grads.append(gradient)
    return _reduce(losses, reduction, denominator, (count,)), grads


def cross_entropy_gradient_scale(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                                 label_smoothing=0.0, grad_output=1.0, engine="auto") -> np.ndarray:
    """|g_i| (TW_i a_ij + t_ij): the terms of dloss/dz_ij = g_i (TW_i a_ij - t_ij), in float64.

    t_ij are the row's target weights (label smoothing and class weights included, as in
    :func:`exact_cross_entropy`), TW_i their sum, a the exact softmax, g_i the upstream
    gradient of the row's loss; 0 on ignored rows, whose gradient is 0.  With the
    default options it is g (a_j + y_j), y the one-hot target.
    """
    logits = np.asarray(logits)
    rows, classes = logits.shape
    probability = softmax(logits, engine).hi
    weights = np.ones(classes) if weight is None else np.abs(np.asarray(weight, dtype=np.float64))
    smoothing = float(label_smoothing)
    target = np.asarray(target)
    if target.dtype.kind == "f":
        targets = weights * ((1 - smoothing) * target.astype(np.float64) + smoothing / classes)
        kept = np.ones(rows, dtype=bool)
        denominator = rows
    else:
        labels = target.reshape(-1).astype(np.int64)
        kept = labels != ignore_index
        labels = np.where(kept, labels, 0)
        targets = np.tile(smoothing * weights / classes, (rows, 1))
        targets[np.arange(rows), labels] += (1 - smoothing) * weights[labels]
        denominator = weights[labels][kept].sum()
    upstream = _upstream_magnitude(grad_output, reduction, denominator, rows) * kept
    return upstream[:, None] * (targets.sum(axis=1, keepdims=True) * probability + targets)


def _longdouble_cross_entropy(logits, target, ignore_index, reduction, grad_output):
    """Default-option cross-entropy from the long double normalizers (``normalizers.py``)."""
    rows, classes = logits.shape
    labels = target.reshape(-1).astype(np.int64)
    kept = labels != ignore_index
    lse = logsumexp(logits, LONGDOUBLE_ENGINE)
    probabilities = softmax(logits, LONGDOUBLE_ENGINE)
    denominator = int(kept.sum())
    with mpmath.workdps(MPMATH_DIGITS):
        losses = []
        for i in range(rows):
            if not kept[i]:
                losses.append(mpmath.mpf(0))
                continue
            value = to_mpf(logits[i, labels[i]])
            if not mpmath.isfinite(value) or not np.isfinite(lse.hi[i]):
                losses.append(mpmath.inf)
                continue
            losses.append(to_mpf(lse.hi[i]) + to_mpf(lse.lo[i]) - value)
    # dOut/dloss_i in long double (an mpf rounded to float64 would cost 0.5 ulp of g / N)
    if reduction == "none":
        scale = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), (rows,)).astype(np.longdouble)[:, None]
    else:
        scale = np.longdouble(float(grad_output))
        if reduction == "mean":
            scale = scale / np.longdouble(denominator) if denominator else np.longdouble(0)
    hi = probabilities.hi.astype(np.longdouble)
    lo = probabilities.lo.astype(np.longdouble)
    index = np.flatnonzero(kept)
    hi[index, labels[index]] -= 1  # exact (Sterbenz) where a_y >= 1/2, else an error of 2**-64
    value = (hi + lo) * scale
    value[~kept] = 0
    masked = ~np.isfinite(lse.hi)
    value[masked] = 0
    high = value.astype(np.float64)
    low = (value - high).astype(np.float64)
    grad = Exact(high, low, LONGDOUBLE_ENGINE)
    loss = _reduce(losses, reduction, denominator, (rows,))
    return Exact(loss.hi, loss.lo, LONGDOUBLE_ENGINE), grad


# ---- distillation ---------------------------------------------------------------------------------


def exact_distillation_loss(student, teacher, target=None, *, temperature=4.0, alpha=0.9, reduction="mean",
                            grad_output=1.0, engine="auto"):
    """(loss, dloss/dstudent) of ``kernels.distillation_loss`` as Exact pairs (mpmath only)."""
    student = np.asarray(student)
    require_mpmath(engine, "distillation_loss", student.size)
    rows, classes = student.shape
    with mpmath.workdps(MPMATH_DIGITS):
        temperature_mp = to_mpf(temperature)
        if target is None:
            soft, hard = temperature_mp**2, mpmath.mpf(0)
        else:
            soft, hard = to_mpf(alpha) * temperature_mp**2, 1 - to_mpf(alpha)
        upstream = _upstream(grad_output, reduction, rows, rows)
        losses, grads = [], []
        for i in range(rows):
            z = [to_mpf(v) for v in student[i]]
            q = MpRow([v / temperature_mp for v in z])
            p = MpRow([to_mpf(v) / temperature_mp for v in teacher[i]])
            if q.masked:
                losses.append((mpmath.inf if (soft != 0 and not p.masked) else 0)
                              + (mpmath.inf if (target is not None and hard != 0) else 0))
                grads.extend([mpmath.mpf(0)] * classes)
                continue
            loss = mpmath.mpf(0)
            gradient = [mpmath.mpf(0)] * classes
            if not p.masked:
                # KL(p || q) = sum_c p_c (log p_c - log q_c), 0 where p_c = 0
                divergence = mpmath.fsum(
                    p.probability(c) * (q.minus_log_probability(c) - p.minus_log_probability(c))
                    for c in range(classes) if p.exps[c] != 0
                )
                loss += _times(soft, divergence)
                gradient = [soft / temperature_mp * (q.probability(c) - p.probability(c)) for c in range(classes)]
            if target is not None and hard != 0:
                label = int(target[i])
                a = MpRow(z)
                loss += hard * a.minus_log_probability(label)
                for c in range(classes):
                    gradient[c] += hard * (a.probability_minus_one(c) if c == label else a.probability(c))
            losses.append(loss)
            grads.extend(upstream[i] * g for g in gradient)
        return _reduce(losses, reduction, rows, (rows,)), to_exact(grads, (rows, classes))


def distillation_gradient_scale(student, teacher, target=None, *, temperature=4.0, alpha=0.9, reduction="mean",
                                grad_output=1.0, engine="auto") -> np.ndarray:
    """|g_i| (soft/T (q_ic + p_ic) + hard (a_ic + y_ic)) in float64: the terms of the distillation gradient.

    The gradient is g_i (soft/T (q - p) + hard (a - y)) (:func:`exact_distillation_loss`):
    q and p the exact softmax of student and teacher at temperature T, a the student's at
    temperature 1, y the one-hot target, soft = alpha T^2 and hard = 1 - alpha (soft = T^2,
    hard = 0 without a target).
    """
    student = np.asarray(student)
    rows, _ = student.shape
    soft, hard = (temperature**2, 0.0) if target is None else (alpha * temperature**2, 1 - alpha)
    student_soft = softmax(student.astype(np.float64) / temperature, engine).hi
    teacher_soft = softmax(np.asarray(teacher, dtype=np.float64) / temperature, engine).hi
    magnitude = abs(soft / temperature) * (student_soft + teacher_soft)
    if target is not None and hard != 0:
        one_hot = np.zeros(student.shape)
        one_hot[np.arange(rows), np.asarray(target).reshape(-1)] = 1
        magnitude = magnitude + abs(hard) * (softmax(student, engine).hi + one_hot)
    return _upstream_magnitude(grad_output, reduction, rows, rows)[:, None] * magnitude


# ---- elementwise: binary cross-entropy with logits and the quadratic cost -------------------------


def _softplus(x):
    if x == mpmath.inf:
        return mpmath.inf
    if x == -mpmath.inf:
        return mpmath.mpf(0)
    return mpmath.log1p(mpmath.exp(x))


def _sigmoid(x):
    if x == mpmath.inf:
        return mpmath.mpf(1)
    if x == -mpmath.inf:
        return mpmath.mpf(0)
    return 1 / (1 + mpmath.exp(-x))


def _elementwise(logits, target, reduction, grad_output, term):
    logits = np.asarray(logits)
    shape = logits.shape
    flat_x, flat_y = logits.reshape(-1), np.asarray(target).reshape(-1)
    count = flat_x.size
    with mpmath.workdps(MPMATH_DIGITS):
        if reduction == "none":
            upstream = [to_mpf(v) for v in np.broadcast_to(np.asarray(grad_output, dtype=np.float64), shape).reshape(-1)]
        else:
            value = to_mpf(grad_output)
            value = (value / count if count else mpmath.mpf(0)) if reduction == "mean" else value
            upstream = [value] * count
        losses, grads = [], []
        for index in range(count):
            loss, gradient = term(index, to_mpf(flat_x[index]), to_mpf(flat_y[index]))
            losses.append(loss)
            grads.append(upstream[index] * gradient)
        if reduction == "none":
            loss = to_exact(losses, shape)
        else:
            total = mpmath.fsum(losses)
            loss = to_exact([total / count if count else mpmath.mpf(0)] if reduction == "mean" else [total], ())
        return loss, to_exact(grads, shape)


def exact_binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean",
                                           grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.binary_cross_entropy_with_logits`` (mpmath only)."""
    logits = np.asarray(logits)
    require_mpmath(engine, "binary_cross_entropy_with_logits", logits.size)
    shape = logits.shape
    weights = np.broadcast_to(np.ones(1) if weight is None else np.asarray(weight, dtype=np.float64), shape).reshape(-1)
    positives = np.broadcast_to(np.ones(1) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64),
                                shape).reshape(-1)

    def term(index, x, y):
        w, pw = to_mpf(weights[index]), to_mpf(positives[index])
        # w (p_w y sp(-x) + (1 - y) sp(x)),  w ((1 - y) sigma(x) - p_w y sigma(-x))
        loss = _times(w, _times(pw * y, _softplus(-x)) + _times(1 - y, _softplus(x)))
        return loss, w * ((1 - y) * _sigmoid(x) - pw * y * _sigmoid(-x))

    return _elementwise(logits, target, reduction, grad_output, term)


def exact_quadratic_cost(logits, target, *, reduction="mean", grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.quadratic_cost`` (mpmath only)."""
    logits = np.asarray(logits)
    require_mpmath(engine, "quadratic_cost", logits.size)

    def term(index, x, y):
        a, complement = _sigmoid(x), _sigmoid(-x)
        # a - y as a (1 - y) - y (1 - a), with 1 - a = sigmoid(-x) taken directly: for a
        # logit of 119 and y = 1, a rounds to 1 at 50 digits and a - y to 0, where the
        # value is -e^-119
        difference = a * (1 - y) - y * complement
        return difference ** 2 / 2, difference * a * complement

    return _elementwise(logits, target, reduction, grad_output, term)


def _elementwise_upstream_magnitude(grad_output, reduction, shape) -> np.ndarray:
    """|dOut/dloss_e| per entry in float64 (``_elementwise``'s upstream values)."""
    if reduction == "none":
        return np.abs(np.broadcast_to(np.asarray(grad_output, dtype=np.float64), shape))
    count = int(np.prod(shape))
    value = abs(float(grad_output))
    return np.full(shape, (value / count if count else 0.0) if reduction == "mean" else value)


def _sigmoids(logits):
    """(sigma(x), sigma(-x)) in float64, each from its own exponential (no 1 - sigma)."""
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(over="ignore"):
        return 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(x))


def binary_cross_entropy_gradient_scale(logits, target, *, weight=None, pos_weight=None, reduction="mean",
                                        grad_output=1.0, engine="auto") -> np.ndarray:
    """|g w| ((1 - y) sigma(x) + |p_w| y sigma(-x)) in float64: the terms of
    g w ((1 - y) sigma(x) - p_w y sigma(-x)) (:func:`exact_binary_cross_entropy_with_logits`)."""
    shape = np.shape(logits)
    positive, negative = _sigmoids(logits)
    y = np.asarray(target, dtype=np.float64)
    weights = np.abs(np.broadcast_to(1.0 if weight is None else np.asarray(weight, dtype=np.float64), shape))
    positives = np.abs(np.broadcast_to(1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64),
                                       shape))
    terms = np.abs(1 - y) * positive + positives * np.abs(y) * negative
    return _elementwise_upstream_magnitude(grad_output, reduction, shape) * weights * terms


def quadratic_cost_gradient_scale(logits, target, *, reduction="mean", grad_output=1.0, engine="auto") -> np.ndarray:
    """|g| (a |1 - y| + |y| (1 - a)) a (1 - a) in float64, a = sigma(x): the terms of
    g (a (1 - y) - y (1 - a)) a (1 - a) (:func:`exact_quadratic_cost`), 1 - a = sigma(-x)."""
    positive, negative = _sigmoids(logits)
    y = np.asarray(target, dtype=np.float64)
    terms = (positive * np.abs(1 - y) + np.abs(y) * negative) * positive * negative
    return _elementwise_upstream_magnitude(grad_output, reduction, np.shape(logits)) * terms


# ---- hinges ----------------------------------------------------------------------------------------


def _row_losses(name, logits, target, reduction, grad_output, engine, row_term):
    """(loss, dloss/dlogits) of a loss summed or averaged over rows, as Exact (mpmath only).

    ``row_term(z, label) -> (loss_i, [dloss_i/dz_j])`` for one row's logits (exact mpf) and label.
    """
    logits = np.asarray(logits)
    require_mpmath(engine, name, logits.size)
    rows, classes = logits.shape
    with mpmath.workdps(MPMATH_DIGITS):
        upstream = _upstream(grad_output, reduction, rows, rows)
        losses, grads = [], []
        for i in range(rows):
            loss, gradient = row_term([to_mpf(v) for v in logits[i]], int(target[i]))
            losses.append(loss)
            grads.extend(upstream[i] * g for g in gradient)
        return _reduce(losses, reduction, rows, (rows,)), to_exact(grads, (rows, classes))


def exact_multiclass_hinge(logits, target, *, margin=1.0, reduction="mean", grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.multiclass_hinge`` (mpmath only)."""
    m = to_mpf(margin)

    def row_term(z, label):
        hinges = [mpmath.mpf(0) if (j == label or z[j] == -mpmath.inf) else max(z[j] - z[label] + m, 0)
                  for j in range(len(z))]
        active = [1 if h > 0 else 0 for h in hinges]
        active[label] = -sum(active)
        # a target score of -inf costs +inf (the kernels' convention, docs/design.md), also when no
        # other class is finite
        return (mpmath.inf if z[label] == -mpmath.inf else mpmath.fsum(hinges)), active

    return _row_losses("multiclass_hinge", logits, target, reduction, grad_output, engine, row_term)


def exact_smooth_hinge(logits, target, *, margin=0.0, reduction="mean", grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.smooth_hinge``: softplus(LSE_{j != y} z_j - z_y + m) (mpmath only)."""
    m = to_mpf(margin)

    def row_term(z, label):
        classes = len(z)
        others = MpRow([v for j, v in enumerate(z) if j != label]) if classes > 1 else None
        if not any(mpmath.isfinite(v) for v in z):
            # every logit -inf: the kernel's cross-entropy convention, +inf and zero gradient
            return mpmath.inf, [mpmath.mpf(0)] * classes
        if others is None or others.masked:
            return mpmath.mpf(0), [mpmath.mpf(0)] * classes
        u = others.largest + others.log_total - z[label] + m
        s = _sigmoid(u)
        probabilities = iter([others.probability(j) for j in range(classes - 1)])
        return _softplus(u), [-s if j == label else s * next(probabilities) for j in range(classes)]

    return _row_losses("smooth_hinge", logits, target, reduction, grad_output, engine, row_term)


def multiclass_hinge_gradient_scale(logits, target, *, margin=1.0, reduction="mean", grad_output=1.0,
                                    engine="auto") -> np.ndarray:
    """|dloss/dz| itself: the gradient is g times a count of active hinges, a single term
    (nothing cancels), so its terms' magnitude is its own (from :func:`exact_multiclass_hinge`)."""
    _, gradient = exact_multiclass_hinge(logits, target, margin=margin, reduction=reduction,
                                         grad_output=grad_output, engine=engine)
    return np.abs(gradient.hi)
