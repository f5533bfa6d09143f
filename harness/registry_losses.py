"""Registry entries of the losses (cross-entropy, distillation, sigmoid, classic) and their exact references.

Importing this module registers, in :data:`softmaxlab.harness.registry.REGISTRY`, one
:class:`~softmaxlab.harness.registry.Operation` per public loss kernel (each loss and its
``*_forward_backward``), with the providers softmaxlab, torch and jax, inputs drawn from
the regimes of ``regimes.py`` and an exact reference.

Inputs (``make_inputs``): the logits of the regime; class indices ``target`` (int64, one
per row: for half of the rows, the row's argmax, so that the dominant regime has losses of
~1000 e^-30, for the others a uniform draw), binary targets in {0, 1} for the sigmoid
losses, and a teacher drawn from the same regime on its own stream for distillation.
The registry runs each loss with its default options; every option combination is
tested in ``tests/kernels``.

Exact references (``exact_*``), in two engines as ``exact.py``:

* ``mpmath-50``: every loss and gradient, row by row at 50 digits, with the kernels'
  conventions at the edges (an all -inf row: +inf loss and zero gradient; a -inf logit
  whose target weight is 0 adds 0; the mean over nothing is 0).  Sums of exponentials are
  kept as ``1 + rest`` (the max's own term apart) and log-sums as ``log1p(rest)``, and the
  target's ``a_y - 1`` as ``-rest / S`` when it holds the max, so that losses of e^-200 keep
  their digits.
* ``longdouble``: cross-entropy with its default options only, from ``exact.logsumexp`` and
  ``exact.softmax`` (pairs of x87 long doubles); measured against mpmath-50 on every regime
  (3 x 3000 inputs): the loss within 2e-12 float64 ULP, the gradient within 7e-4 (its
  product with g / N is taken in long double).  The other entries leave out the
  10^6-class regime (mpmath there would take minutes).

The functions are also the references of ``benchmarks/bench_losses.py`` and of the
kernel tests (``tests/kernels``).
"""

from __future__ import annotations

import mpmath
import numpy as np

from softmaxlab import kernels

from . import exact, regimes
from .frameworks import jax_jit, jax_module, jax_precision, torch_module
from .metrics import Exact
from .registry import NORMALIZER_BENCH_SHAPES, Cost, Implementation, Operation, register

DIGITS = exact.MPMATH_DIGITS
# the regimes whose exact reference mpmath computes in seconds (all but the 10^6 classes)
SMALL_REGIMES = tuple(regime for regime in regimes.REGIMES if regime != regimes.MILLION_CLASSES_REGIME)
# the classic losses are comparisons, timed on one shape only
CLASSIC_BENCH_SHAPES = ((4096, 1000, "float32"),)


# ---- mpmath helpers ---------------------------------------------------------------------------


def _mp(value):
    """A float32/float64 value as an exact mpf (inf and nan kept)."""
    return mpmath.mpf(float(value))


class _Row:
    """Softmax of one row at 50 digits: shifted logits, exps, S = 1 + rest, log S = log1p(rest)."""

    def __init__(self, values):
        self.values = values
        finite = [v for v in values if mpmath.isfinite(v)]
        self.masked = not finite
        if self.masked:
            return
        self.largest = max(finite)
        self.shifted = [v - self.largest for v in values]
        self.exps = [mpmath.exp(s) if mpmath.isfinite(s) else mpmath.mpf(0) for s in self.shifted]
        winner = self.shifted.index(0)
        self.rest = mpmath.fsum(self.exps[:winner] + self.exps[winner + 1 :])
        self.total = 1 + self.rest
        self.log_total = mpmath.log1p(self.rest)

    def probability(self, j):
        return self.exps[j] / self.total

    def probability_minus_one(self, j):
        """a_j - 1, as -rest/S (plus the other maxima) when z_j holds the max."""
        if self.shifted[j] == 0:
            return -self.rest / self.total
        return self.exps[j] / self.total - 1

    def minus_log_probability(self, j):
        """LSE - z_j = (M - z_j) + log S (+inf for a masked entry)."""
        if not mpmath.isfinite(self.shifted[j]):
            return mpmath.inf
        return -self.shifted[j] + self.log_total


def _times(weight, value):
    """weight * value with 0 * inf = 0 (a term of weight 0 adds nothing)."""
    return mpmath.mpf(0) if weight == 0 else weight * value


def _pairs(values, shape) -> Exact:
    """mpf values -> Exact(hi, lo) of ``shape``."""
    hi = np.empty(len(values))
    lo = np.zeros(len(values))
    with mpmath.workdps(DIGITS):
        for index, value in enumerate(values):
            if mpmath.isnan(value):
                hi[index] = np.nan
                continue
            high = float(value)
            hi[index] = high
            if np.isfinite(high):
                lo[index] = float(value - high)
    return Exact(hi.reshape(shape), lo.reshape(shape), exact.MPMATH_ENGINE)


def _reduce(losses, reduction, denominator, batch_shape):
    if reduction == "none":
        return _pairs(losses, batch_shape)
    with mpmath.workdps(DIGITS):
        total = mpmath.fsum(losses)
        if reduction == "mean":
            total = total / denominator if denominator != 0 else mpmath.mpf(0)
    return _pairs([total], ())


def _upstream(grad_output, reduction, denominator, rows):
    """dOut/dloss_i per row as mpf."""
    if reduction == "none":
        values = np.broadcast_to(np.asarray(grad_output, dtype=np.float64), (rows,)) if rows else []
        return [_mp(v) for v in np.asarray(values).reshape(-1)]
    with mpmath.workdps(DIGITS):
        value = _mp(grad_output)
        if reduction == "mean":
            value = value / denominator if denominator != 0 else mpmath.mpf(0)
    return [value] * rows


def _check_engine(engine, size, name, longdouble_ok=False):
    resolved = exact.resolve_engine(engine, size)
    if resolved == exact.LONGDOUBLE_ENGINE and not longdouble_ok:
        raise NotImplementedError(f"{name}: only the {exact.MPMATH_ENGINE!r} engine is provided")
    return resolved


# ---- cross-entropy ------------------------------------------------------------------------------


def exact_cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                        grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.cross_entropy`` as Exact pairs (class indices or probabilities).

    ``logits`` is (rows, classes); the conventions are the kernel's (see its module docstring).
    """
    logits = np.asarray(logits)
    resolved = exact.resolve_engine(engine, logits.size)
    probabilities = np.asarray(target).dtype.kind == "f"
    if resolved == exact.LONGDOUBLE_ENGINE:
        if weight is not None or label_smoothing != 0.0 or probabilities:
            raise NotImplementedError("cross_entropy's long double reference covers the default options only")
        return _longdouble_cross_entropy(logits, np.asarray(target), ignore_index, reduction, grad_output)
    rows, classes = logits.shape
    eps = _mp(label_smoothing)
    with mpmath.workdps(DIGITS):
        weights = [mpmath.mpf(1)] * classes if weight is None else [_mp(w) for w in weight]
        weight_total = mpmath.fsum(weights)
        if probabilities:
            kept = [True] * rows
            denominator = rows
        else:
            labels = np.asarray(target).reshape(-1)
            kept = [int(label) != ignore_index for label in labels]
            denominator = mpmath.fsum(weights[int(label)] for label, keep in zip(labels, kept) if keep)
        upstream = _upstream(grad_output, reduction, denominator, rows)
        losses, grads = [], []
        for i in range(rows):
            if not kept[i]:
                losses.append(mpmath.mpf(0))
                grads.extend([mpmath.mpf(0)] * classes)
                continue
            row = _Row([_mp(v) for v in logits[i]])
            if probabilities:
                targets = [w * ((1 - eps) * _mp(p) + eps / classes) for w, p in zip(weights, target[i])]
                label = None
            else:
                label = int(labels[i])
                targets = [eps * w / classes for w in weights]
                targets[label] += (1 - eps) * weights[label]
            target_total = mpmath.fsum(targets)
            if row.masked:
                losses.append(mpmath.fsum(_times(t, mpmath.inf) for t in targets))
                grads.extend([mpmath.mpf(0)] * classes)
                continue
            losses.append(mpmath.fsum(_times(t, row.minus_log_probability(j)) for j, t in enumerate(targets)))
            for j, t in enumerate(targets):
                if j == label:
                    # TW a_y - tw_y = TW (a_y - 1) + (TW - tw_y), TW - tw_y = eps/C (W - w_y)
                    value = target_total * row.probability_minus_one(j) + eps / classes * (weight_total - weights[j])
                else:
                    value = target_total * row.probability(j) - t
                grads.append(upstream[i] * value)
        return _reduce(losses, reduction, denominator, (rows,)), _pairs(grads, (rows, classes))


def _longdouble_cross_entropy(logits, target, ignore_index, reduction, grad_output):
    """Default-option cross-entropy from the long double normalizers of ``exact.py``."""
    rows, classes = logits.shape
    labels = target.reshape(-1).astype(np.int64)
    kept = labels != ignore_index
    lse = exact.logsumexp(logits, exact.LONGDOUBLE_ENGINE)
    probabilities = exact.softmax(logits, exact.LONGDOUBLE_ENGINE)
    denominator = int(kept.sum())
    with mpmath.workdps(DIGITS):
        losses = []
        for i in range(rows):
            if not kept[i]:
                losses.append(mpmath.mpf(0))
                continue
            value = _mp(logits[i, labels[i]])
            if not mpmath.isfinite(value) or not np.isfinite(lse.hi[i]):
                losses.append(mpmath.inf)
                continue
            losses.append(_mp(lse.hi[i]) + _mp(lse.lo[i]) - value)
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
    grad = Exact(high, low, exact.LONGDOUBLE_ENGINE)
    loss = _reduce(losses, reduction, denominator, (rows,))
    return Exact(loss.hi, loss.lo, exact.LONGDOUBLE_ENGINE), grad


# ---- distillation ---------------------------------------------------------------------------------


def exact_distillation_loss(student, teacher, target=None, *, temperature=4.0, alpha=0.9, reduction="mean",
                            grad_output=1.0, engine="auto"):
    """(loss, dloss/dstudent) of ``kernels.distillation_loss`` as Exact pairs (mpmath only)."""
    student = np.asarray(student)
    _check_engine(engine, student.size, "distillation_loss")
    rows, classes = student.shape
    with mpmath.workdps(DIGITS):
        temperature_mp = _mp(temperature)
        if target is None:
            soft, hard = temperature_mp**2, mpmath.mpf(0)
        else:
            soft, hard = _mp(alpha) * temperature_mp**2, 1 - _mp(alpha)
        upstream = _upstream(grad_output, reduction, rows, rows)
        losses, grads = [], []
        for i in range(rows):
            z = [_mp(v) for v in student[i]]
            q = _Row([v / temperature_mp for v in z])
            p = _Row([_mp(v) / temperature_mp for v in teacher[i]])
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
                a = _Row(z)
                loss += hard * a.minus_log_probability(label)
                for c in range(classes):
                    gradient[c] += hard * (a.probability_minus_one(c) if c == label else a.probability(c))
            losses.append(loss)
            grads.extend(upstream[i] * g for g in gradient)
        return _reduce(losses, reduction, rows, (rows,)), _pairs(grads, (rows, classes))


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
    with mpmath.workdps(DIGITS):
        if reduction == "none":
            upstream = [_mp(v) for v in np.broadcast_to(np.asarray(grad_output, dtype=np.float64), shape).reshape(-1)]
        else:
            value = _mp(grad_output)
            value = (value / count if count else mpmath.mpf(0)) if reduction == "mean" else value
            upstream = [value] * count
        losses, grads = [], []
        for index in range(count):
            loss, gradient = term(index, _mp(flat_x[index]), _mp(flat_y[index]))
            losses.append(loss)
            grads.append(upstream[index] * gradient)
        if reduction == "none":
            loss = _pairs(losses, shape)
        else:
            total = mpmath.fsum(losses)
            loss = _pairs([total / count if count else mpmath.mpf(0)] if reduction == "mean" else [total], ())
        return loss, _pairs(grads, shape)


def exact_binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean",
                                           grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.binary_cross_entropy_with_logits`` (mpmath only)."""
    logits = np.asarray(logits)
    _check_engine(engine, logits.size, "binary_cross_entropy_with_logits")
    shape = logits.shape
    weights = np.broadcast_to(np.ones(1) if weight is None else np.asarray(weight, dtype=np.float64), shape).reshape(-1)
    positives = np.broadcast_to(np.ones(1) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64),
                                shape).reshape(-1)

    def term(index, x, y):
        w, pw = _mp(weights[index]), _mp(positives[index])
        # w (p_w y sp(-x) + (1 - y) sp(x)),  w ((1 - y) sigma(x) - p_w y sigma(-x))
        loss = _times(w, _times(pw * y, _softplus(-x)) + _times(1 - y, _softplus(x)))
        return loss, w * ((1 - y) * _sigmoid(x) - pw * y * _sigmoid(-x))

    return _elementwise(logits, target, reduction, grad_output, term)


def exact_quadratic_cost(logits, target, *, reduction="mean", grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.quadratic_cost`` (mpmath only)."""
    logits = np.asarray(logits)
    _check_engine(engine, logits.size, "quadratic_cost")

    def term(index, x, y):
        a = _sigmoid(x)
        return (a - y) ** 2 / 2, (a - y) * a * _sigmoid(-x)

    return _elementwise(logits, target, reduction, grad_output, term)


# ---- hinges ----------------------------------------------------------------------------------------


def exact_multiclass_hinge(logits, target, *, margin=1.0, reduction="mean", grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.multiclass_hinge`` (mpmath only)."""
    logits = np.asarray(logits)
    _check_engine(engine, logits.size, "multiclass_hinge")
    rows, classes = logits.shape
    with mpmath.workdps(DIGITS):
        m = _mp(margin)
        upstream = _upstream(grad_output, reduction, rows, rows)
        losses, grads = [], []
        for i in range(rows):
            label = int(target[i])
            z = [_mp(v) for v in logits[i]]
            hinges = [mpmath.mpf(0) if (j == label or z[j] == -mpmath.inf) else max(z[j] - z[label] + m, 0)
                      for j in range(classes)]
            # a target score of -inf costs +inf (DESIGN.md), also when no other class is finite
            losses.append(mpmath.inf if z[label] == -mpmath.inf else mpmath.fsum(hinges))
            active = [1 if h > 0 else 0 for h in hinges]
            active[label] = -sum(active)
            grads.extend(upstream[i] * a for a in active)
        return _reduce(losses, reduction, rows, (rows,)), _pairs(grads, (rows, classes))


def exact_smooth_hinge(logits, target, *, margin=0.0, reduction="mean", grad_output=1.0, engine="auto"):
    """(loss, dloss/dlogits) of ``kernels.smooth_hinge``: softplus(LSE_{j != y} z_j - z_y + m) (mpmath only)."""
    logits = np.asarray(logits)
    _check_engine(engine, logits.size, "smooth_hinge")
    rows, classes = logits.shape
    with mpmath.workdps(DIGITS):
        m = _mp(margin)
        upstream = _upstream(grad_output, reduction, rows, rows)
        losses, grads = [], []
        for i in range(rows):
            label = int(target[i])
            z = [_mp(v) for v in logits[i]]
            others = _Row([v for j, v in enumerate(z) if j != label]) if classes > 1 else None
            if not any(mpmath.isfinite(v) for v in z):
                # every logit -inf: the kernel's cross-entropy convention, +inf and zero gradient
                losses.append(mpmath.inf)
                grads.extend([mpmath.mpf(0)] * classes)
                continue
            if others is None or others.masked:
                losses.append(mpmath.mpf(0))
                grads.extend([mpmath.mpf(0)] * classes)
                continue
            u = others.largest + others.log_total - z[label] + m
            losses.append(_softplus(u))
            s = _sigmoid(u)
            probabilities = iter([others.probability(j) for j in range(classes - 1)])
            grads.extend(upstream[i] * (-s if j == label else s * next(probabilities)) for j in range(classes))
        return _reduce(losses, reduction, rows, (rows,)), _pairs(grads, (rows, classes))


# ---- inputs ------------------------------------------------------------------------------------------


def class_index_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"logits": the regime's logits, "target": int64 class indices, one per row}.

    Even rows get the row's argmax (a confident, correct prediction: losses down to
    ~1000 e^-30 in the dominant regime), odd rows a uniform draw.
    """
    logits = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed))
    rng = regimes.rng_for(regime, shape, dtype, seed, "target")
    target = rng.integers(0, shape[1], size=shape[0]).astype(np.int64)
    finite_rows = np.isfinite(logits).any(axis=1)
    best = np.argmax(np.where(np.isfinite(logits), logits, -np.inf), axis=1)
    even = (np.arange(shape[0]) % 2 == 0) & finite_rows
    target[even] = best[even]
    return {"logits": logits, "target": target}


def binary_target_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"logits": the regime's logits, "target": 0/1 labels of ``dtype``, one per entry}."""
    logits = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed))
    rng = regimes.rng_for(regime, shape, dtype, seed, "binary-target")
    return {"logits": logits, "target": (rng.random(shape) < 0.5).astype(dtype)}


def distillation_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"student", "teacher": logits of the regime (own streams), "target": class indices}."""
    inputs = class_index_inputs(regime, shape, dtype, seed)
    teacher = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed, "teacher"))
    return {"student": inputs["logits"], "teacher": teacher, "target": inputs["target"]}


# ---- providers -----------------------------------------------------------------------------------------


def _softmaxlab(function):
    def prepare(inputs):
        arguments = dict(inputs)
        return lambda: function(**arguments)

    return prepare


def _torch_loss(formula, first_input, with_gradient):
    """``formula(torch, F, **tensors)`` on float tensors (gradient to ``first_input`` by autograd.grad)."""

    def prepare(inputs):
        torch = torch_module()
        functional = torch.nn.functional
        tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}

        def run():
            if not with_gradient:
                return formula(torch, functional, **tensors)
            arguments = dict(tensors)
            arguments[first_input] = tensors[first_input].detach().requires_grad_(True)
            loss = formula(torch, functional, **arguments)
            (grad,) = torch.autograd.grad(loss, arguments[first_input])
            return loss.detach(), grad

        return run

    return prepare


def _jax_loss(name, formula, first_input, with_gradient):
    """``jax.jit(formula)`` (or of ``jax.value_and_grad(formula)``) on device arrays."""

    def prepare(inputs):
        jax = jax_module()
        dtype = inputs[first_input].dtype
        names = list(inputs)
        with jax_precision(dtype):
            # class indices as int32 unless JAX runs in 64 bits (it would truncate with a warning)
            device = [jax.device_put(inputs[key].astype(np.int32) if inputs[key].dtype.kind in "iu"
                                     and dtype != np.float64 else inputs[key]) for key in names]
        position = names.index(first_input)

        def positional(*values):
            return formula(jax.numpy, jax.nn, **dict(zip(names, values)))

        function = jax_jit(f"{name}-{'fb' if with_gradient else 'f'}",
                           jax.value_and_grad(positional, argnums=position) if with_gradient else positional)

        def run():
            with jax_precision(dtype):
                result = function(*device)
                return jax.block_until_ready(result)

        return run

    return prepare


def _torch_cross_entropy(torch, F, logits, target):
    return F.cross_entropy(logits, target)


def _jax_cross_entropy(jnp, nn, logits, target):
    log_probabilities = nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probabilities, target[:, None], axis=-1))


def _torch_distillation(torch, F, student, teacher, target, temperature=4.0, alpha=0.9):
    soft = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                    reduction="batchmean")
    return alpha * temperature * temperature * soft + (1 - alpha) * F.cross_entropy(student, target)


def _jax_distillation(jnp, nn, student, teacher, target, temperature=4.0, alpha=0.9):
    log_q = nn.log_softmax(student / temperature, axis=-1)
    log_p = nn.log_softmax(teacher / temperature, axis=-1)
    p = jnp.exp(log_p)
    divergence = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    hard = -jnp.take_along_axis(nn.log_softmax(student, axis=-1), target[:, None], axis=-1)[:, 0]
    return jnp.mean(alpha * temperature * temperature * divergence + (1 - alpha) * hard)


def _torch_binary_cross_entropy(torch, F, logits, target):
    return F.binary_cross_entropy_with_logits(logits, target)


def _jax_binary_cross_entropy(jnp, nn, logits, target):
    return -jnp.mean(target * nn.log_sigmoid(logits) + (1 - target) * nn.log_sigmoid(-logits))


def _torch_quadratic_cost(torch, F, logits, target):
    return 0.5 * F.mse_loss(torch.sigmoid(logits), target)


def _jax_quadratic_cost(jnp, nn, logits, target):
    return 0.5 * jnp.mean((nn.sigmoid(logits) - target) ** 2)


def _torch_multiclass_hinge(torch, F, logits, target):
    return F.multi_margin_loss(logits, target, margin=1.0) * logits.shape[-1]  # torch divides by C


def _jax_multiclass_hinge(jnp, nn, logits, target):
    label_logits = jnp.take_along_axis(logits, target[:, None], axis=-1)
    hinges = jnp.maximum(logits - label_logits + 1.0, 0.0)
    not_label = jnp.arange(logits.shape[-1])[None, :] != target[:, None]
    return jnp.mean(jnp.sum(jnp.where(not_label, hinges, 0.0), axis=-1))


def _torch_smooth_hinge(torch, F, logits, target):
    mask = F.one_hot(target, logits.shape[-1]).bool()
    others = torch.logsumexp(logits.masked_fill(mask, -float("inf")), -1)
    return F.softplus(others - logits.gather(1, target[:, None])[:, 0]).mean()


def _jax_smooth_hinge(jnp, nn, logits, target):
    not_label = jnp.arange(logits.shape[-1])[None, :] != target[:, None]
    others = nn.logsumexp(jnp.where(not_label, logits, -jnp.inf), axis=-1)
    label_logits = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    return jnp.mean(nn.softplus(others - label_logits))


# ---- costs ------------------------------------------------------------------------------------------------


def _row_loss_cost(inputs_per_element: int, exps_per_element: int, with_gradient: bool):
    """Inputs of N x C read once (plus the labels), per-row losses (and the gradient) written."""

    def cost(shape):
        elements = shape[0] * shape[1]
        return Cost(read_elements=inputs_per_element * elements + shape[0],
                    written_elements=shape[0] + (elements if with_gradient else 0),
                    exp_count=exps_per_element * elements)

    return cost


# ---- the entries -------------------------------------------------------------------------------------------

_LOSSES = (
    # kernel, exact reference, inputs, torch formula, jax formula, first input, inputs read per element,
    # exps per element, regimes, bench shapes
    ("cross_entropy", exact_cross_entropy, class_index_inputs, _torch_cross_entropy, _jax_cross_entropy,
     "logits", 1, 1, regimes.REGIMES, NORMALIZER_BENCH_SHAPES),
    ("distillation_loss", exact_distillation_loss, distillation_inputs, _torch_distillation, _jax_distillation,
     "student", 2, 3, SMALL_REGIMES, NORMALIZER_BENCH_SHAPES),
    ("binary_cross_entropy_with_logits", exact_binary_cross_entropy_with_logits, binary_target_inputs,
     _torch_binary_cross_entropy, _jax_binary_cross_entropy, "logits", 2, 1, SMALL_REGIMES, CLASSIC_BENCH_SHAPES),
    ("quadratic_cost", exact_quadratic_cost, binary_target_inputs, _torch_quadratic_cost, _jax_quadratic_cost,
     "logits", 2, 1, SMALL_REGIMES, CLASSIC_BENCH_SHAPES),
    ("multiclass_hinge", exact_multiclass_hinge, class_index_inputs, _torch_multiclass_hinge, _jax_multiclass_hinge,
     "logits", 1, 0, SMALL_REGIMES, CLASSIC_BENCH_SHAPES),
    ("smooth_hinge", exact_smooth_hinge, class_index_inputs, _torch_smooth_hinge, _jax_smooth_hinge,
     "logits", 1, 1, SMALL_REGIMES, CLASSIC_BENCH_SHAPES),
)


def _exact_outputs(reference, with_gradient):
    def compute(inputs, engine):
        loss, grad = reference(**inputs, engine=engine)
        return (loss, grad) if with_gradient else (loss,)

    return compute


def _register_losses():
    for (name, reference, make_inputs, torch_formula, jax_formula, first, reads, exps, regime_names,
         bench_shapes) in _LOSSES:
        for with_gradient in (False, True):
            kernel = f"{name}_forward_backward" if with_gradient else name
            register(
                Operation(
                    kernel=kernel,
                    op=name,
                    mode="forward_backward" if with_gradient else "forward",
                    outputs=("loss", f"d{first}") if with_gradient else ("loss",),
                    make_inputs=make_inputs,
                    exact=_exact_outputs(reference, with_gradient),
                    cost=_row_loss_cost(reads, exps, with_gradient),
                    implementations=(
                        Implementation("softmaxlab", _softmaxlab(getattr(kernels, kernel))),
                        Implementation("torch", _torch_loss(torch_formula, first, with_gradient), requires=("torch",)),
                        Implementation("jax", _jax_loss(name, jax_formula, first, with_gradient), requires=("jax",)),
                    ),
                    regimes=regime_names,
                    bench_shapes=bench_shapes,
                    description=f"{name} with its default options"
                    + (f", gradient in {first}" if with_gradient else ""),
                )
            )


_register_losses()

__all__ = [
    "exact_cross_entropy",
    "exact_distillation_loss",
    "exact_binary_cross_entropy_with_logits",
    "exact_quadratic_cost",
    "exact_multiclass_hinge",
    "exact_smooth_hinge",
    "class_index_inputs",
    "binary_target_inputs",
    "distillation_inputs",
]
