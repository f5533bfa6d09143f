"""The multi-class hinge and the smooth hinge, the losses that lead to softmax cross-entropy.

The sum of hinges ``sum_{i != y} max(z_i - z_y + m, 0)`` (Weston & Watkins 1999) pushes
every non-target score below the target's (its gradient can be as large as C - 1);
replacing max over the others by LogSumExp and max(., 0) by softplus gives the smooth
hinge ``softplus(LSE_{i != y} z_i - z_y + m)``, which for m = 0 *is* the softmax
cross-entropy ``-log softmax(z)_y`` (log(1 + sum_{i != y} e^{z_i} / e^{z_y}) = LSE(z) - z_y).

* ``multiclass_hinge``: its own kernel on the loss driver (``_driver/losses.py``), a state
  of (sum of hinges, number of active hinges) per block.
* ``smooth_hinge``: a function of the cross-entropy l = log(1 + e^u),
  u = LSE_{j != y} z_j - z_y, so its kernel is cross-entropy's class-index kernel
  (``_cross_entropy.make_class_index_kernel``) with ``finish`` = ``_smooth_hinge_of_cross_entropy``,
  without weights, smoothing or ignored rows.

Each has ``*_forward_backward`` returning ``(loss, grad)`` from one kernel.  The
multi-class hinge's gradient is the subgradient that is 0 where a hinge is exactly at its
kink (PyTorch's ``multi_margin_loss`` choice).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH
from ._cross_entropy import ClassIndexArgs, make_class_index_kernel
from ._driver.losses import NO_WEIGHT, logit_rows, make_loss_kernel, run_loss_kernel, upstream_at
from ._driver.reduction import row_scales
from ._numerics.rows import SUM_CHUNK, fill, pairwise_sum
from ._validation import check_class_indices, check_real_scalar, check_reduction

__all__ = [
    "multiclass_hinge",
    "multiclass_hinge_forward_backward",
    "smooth_hinge",
    "smooth_hinge_forward_backward",
]


# ---- multi-class hinge ---------------------------------------------------------------------
#
# args: ``HingeArgs``; state per block (``partial``) and per row (``stats``, summed over the
# blocks): HINGES sum_{j != y} max(h_j, 0), ACTIVE the number of j != y with h_j > 0
# (h_j = z_j - z_y + m)

HingeArgs = namedtuple(
    "HingeArgs",
    [
        "target",  # int64 (rows,)
        "row_scale",  # float64 (rows,) or (1,): ``reduction.row_scales``, read by ``upstream_at``
        "margin",  # float64
    ],
)

HINGES = 0
ACTIVE = 1


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _hinge(value, label_value, margin):
    # max(z_j - z_y + m, 0); a masked class (z_j = -inf) never violates the margin
    if value == -np.inf:
        return 0.0
    return max((np.float64(value) - label_value) + margin, 0.0)


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _hinge_sums(values, label_value, margin):
    """(sum_j max(z_j - z_y + m, 0), number of positive hinges) over a slice, in float64."""
    total = 0.0
    count = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        partial = 0.0
        for j in range(chunk.shape[0]):
            hinge = _hinge(chunk[j], label_value, margin)
            partial += hinge
            count += 1.0 if hinge > 0.0 else 0.0
        total += partial
    return total, count


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce_hinge(logits, args, grad, i, k, start, stop, partial, write):
    target, row_scale, margin = args
    label = target[i]
    label_value = np.float64(logits[i, label])
    values = logits[i, start:stop]
    if start <= label < stop:
        # the target's own term is left out by summing the slices on either side of it
        before_total, before_count = _hinge_sums(values[: label - start], label_value, margin)
        after_total, after_count = _hinge_sums(values[label - start + 1 :], label_value, margin)
        partial[i, k, HINGES], partial[i, k, ACTIVE] = before_total + after_total, before_count + after_count
    else:
        partial[i, k, HINGES], partial[i, k, ACTIVE] = _hinge_sums(values, label_value, margin)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_hinge(logits, args, i, partial, stats):
    if partial.shape[1] == 1:
        stats[i, HINGES], stats[i, ACTIVE] = partial[i, 0, HINGES], partial[i, 0, ACTIVE]
    else:
        stats[i, HINGES] = pairwise_sum(partial[i, :, HINGES].copy())
        stats[i, ACTIVE] = pairwise_sum(partial[i, :, ACTIVE].copy())
    if logits[i, args.target[i]] == -np.inf and stats[i, HINGES] == 0.0:
        # a target score of -inf gives +inf (docs/design.md, "Semantics at the edges"), also when
        # every other score is -inf or there is no other class (their hinges are 0); a NaN loss stays NaN
        stats[i, HINGES] = np.inf
    return stats[i, HINGES]


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_hinge(logits, args, grad, i, k, start, stop, partial, stats):
    target, row_scale, margin = args
    label = target[i]
    label_value = np.float64(logits[i, label])
    scale = upstream_at(row_scale, i)
    values = logits[i, start:stop]
    destination = grad[i, start:stop]
    if label_value != label_value or stats[i, HINGES] != stats[i, HINGES]:
        fill(destination, np.nan)
        return
    # dL/dz_j = g [z_j - z_y + m > 0]  (j != y),   dL/dz_y = -g (number of positive hinges)
    for j in range(values.shape[0]):
        destination[j] = scale if _hinge(values[j], label_value, margin) > 0.0 else 0.0
    if start <= label < stop:
        destination[label - start] = -scale * stats[i, ACTIVE]


_hinge_kernel = make_loss_kernel(_reduce_hinge, _merge_hinge, _write_hinge, 2)  # HINGES, ACTIVE


def _validated(logits, target, margin, reduction, grad_output):
    """The hinges' inputs, checked in this order: (logits, rows, labels, margin, reduction, row scales)."""
    logits, rows, batch_shape = logit_rows(logits)
    labels = check_class_indices("target", target, batch_shape, rows.shape[1]).reshape(-1)
    margin = check_real_scalar("margin", margin)
    reduction = check_reduction("reduction", reduction)
    scale = row_scales(grad_output, reduction, rows.shape[0], batch_shape)  # the mean is over rows
    return logits, rows, labels, margin, reduction, scale


def _multiclass_hinge(logits, target, margin, reduction, grad_output, write):
    logits, rows, labels, margin, reduction, scale = _validated(logits, target, margin, reduction, grad_output)
    args = HingeArgs(labels, scale, margin)
    return run_loss_kernel(_hinge_kernel, rows, args, write, reduction, rows.shape[0], logits.shape)


def multiclass_hinge(logits, target, *, margin=1.0, reduction="mean"):
    r"""Multi-class hinge loss (Weston & Watkins): every other class kept ``margin`` below the target.

    .. math:: \ell = \sum_{i \ne y} \max(z_i - z_y + m,\ 0)

    Args:
        logits: float32 or float64 scores ``(..., C)``; not modified.
        target: integer class indices of shape ``logits.shape[:-1]``.
        margin: m (default 1; a real number).
        reduction: ``"mean"`` over rows (default), ``"sum"`` or ``"none"``.

    Returns:
        The loss in ``logits``' dtype (scalar, or ``logits.shape[:-1]`` for ``"none"``).
        PyTorch's ``multi_margin_loss`` is this divided by C.  A -inf score never
        violates the margin; a target score of -inf gives +inf.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import multiclass_hinge
        >>> float(multiclass_hinge(np.array([[3.0, 2.5, 0.0]]), np.array([0])))
        0.5

    References: J. Weston, C. Watkins, "Support vector machines for multi-class pattern
    recognition", 1999; ``docs/proofs/cross_entropy.md``, "the hinge chain".
    """
    loss, _ = _multiclass_hinge(logits, target, margin, reduction, 1.0, False)
    return loss


def multiclass_hinge_forward_backward(logits, target, *, margin=1.0, reduction="mean", grad_output=1.0):
    r""":func:`multiclass_hinge` and its (sub)gradient.

    .. math::
        \frac{\partial \ell}{\partial z_i} = [z_i - z_y + m > 0]\ (i \ne y),\qquad
        \frac{\partial \ell}{\partial z_y} = -\#\{i \ne y : z_i - z_y + m > 0\}

    Args:
        logits, target, margin, reduction: as :func:`multiclass_hinge`.
        grad_output: upstream gradient (a number; a float array of ``logits.shape[:-1]``
            for ``"none"``).

    Returns:
        ``(loss, grad)``; ``grad`` has ``logits``' shape and dtype.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import multiclass_hinge_forward_backward
        >>> multiclass_hinge_forward_backward(np.array([[3.0, 2.5, 0.0]]), np.array([0]))[1]
        array([[-1.,  1.,  0.]])

    References: as :func:`multiclass_hinge`.
    """
    return _multiclass_hinge(logits, target, margin, reduction, grad_output, True)


# ---- smooth hinge --------------------------------------------------------------------------
#
# softplus(LSE_{j != y} z_j - z_y + m) is a function of the cross-entropy l = log(1 + e^u),
# u = LSE_{j != y} z_j - z_y: the class-index cross-entropy kernel with this ``finish``.


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _smooth_hinge_of_cross_entropy(loss, margin):
    """(softplus(u + m), sigma(u + m) / sigma(u)) for the cross-entropy ``loss`` l = softplus(u) >= 0.

    e^u = expm1(l), so softplus(u + m) = log1p(e^m expm1(l)) and the gradient's factor
    sigma(u + m) / sigma(u) = e^m (1 + expm1(l)) / (1 + e^m expm1(l)): no log/exp round trip
    through u (which would cost |u| ulps for a tiny l, u = log l), and the limit e^m at
    l = 0 comes out directly.  For a large l or m (e^m expm1(l) could overflow) u is formed
    as l + log1p(-e^-l) (no cancellation there) and softplus(u + m) = (u + m) + log1p(e^-(u+m)).
    """
    if loss != loss:
        return np.nan, np.nan
    if loss < 30.0 and margin < 30.0:
        grown = math.expm1(loss)
        scaled = math.exp(margin) * grown
        return math.log1p(scaled), math.exp(margin) * (1.0 + grown) / (1.0 + scaled)
    u = loss + math.log1p(-math.exp(-loss)) if loss != np.inf else np.inf
    if u >= 0.0:
        ratio = (1.0 + math.exp(-u)) / (1.0 + math.exp(-u - margin))
    else:
        ratio = (math.exp(u) + 1.0) / (math.exp(u) + math.exp(-margin))
    return _softplus(u + margin), ratio


_smooth_hinge_kernel = make_class_index_kernel(_smooth_hinge_of_cross_entropy, plain=False)


def _smooth_hinge(logits, target, margin, reduction, grad_output, write):
    logits, rows, labels, margin, reduction, scale = _validated(logits, target, margin, reduction, grad_output)
    # no weights, no smoothing, no row ignored (-1 is never a valid label)
    args = ClassIndexArgs(labels, NO_WEIGHT, scale, np.int64(-1), 0.0, False, float(rows.shape[1]), margin)
    return run_loss_kernel(_smooth_hinge_kernel, rows, args, write, reduction, rows.shape[0], logits.shape)


def smooth_hinge(logits, target, *, margin=0.0, reduction="mean"):
    r"""The smooth multi-class hinge: LogSumExp for max, softplus for max(., 0).

    .. math:: \ell = \mathrm{softplus}\Big(\log\sum_{i \ne y} e^{z_i} - z_y + m\Big)

    With ``margin=0`` this equals the softmax cross-entropy ``-log softmax(z)_y``; a
    positive margin asks the target to beat the others' LogSumExp by m (the hinge's
    margin, kept).

    Args:
        logits: float32 or float64 ``(..., C)``; not modified.
        target: integer class indices of shape ``logits.shape[:-1]``.
        margin: m (default 0).
        reduction: ``"mean"`` over rows (default), ``"sum"`` or ``"none"``.

    Returns:
        The loss in ``logits``' dtype.  A single class (no other class) gives 0.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import smooth_hinge, cross_entropy
        >>> logits, target = np.array([[2.0, 1.0, 0.5]]), np.array([0])
        >>> bool(np.isclose(smooth_hinge(logits, target), cross_entropy(logits, target)))
        True

    References: ``docs/proofs/cross_entropy.md``, "the hinge chain" (from hinge to softmax
    cross-entropy by smoothing).
    """
    loss, _ = _smooth_hinge(logits, target, margin, reduction, 1.0, False)
    return loss


def smooth_hinge_forward_backward(logits, target, *, margin=0.0, reduction="mean", grad_output=1.0):
    r""":func:`smooth_hinge` and its gradient, from one fused kernel.

    With :math:`u = \log\sum_{i \ne y} e^{z_i} - z_y` and :math:`s = \sigma(u + m)`:

    .. math::
        \frac{\partial \ell}{\partial z_i} = s\, \frac{e^{z_i}}{\sum_{k \ne y} e^{z_k}}\ (i \ne y),\qquad
        \frac{\partial \ell}{\partial z_y} = -s

    (the non-target gradients sum to s and the target's is -s: a bounded
    gradient).  For m = 0 this is a - onehot(y).

    Args:
        logits, target, margin, reduction: as :func:`smooth_hinge`.
        grad_output: upstream gradient.

    Returns:
        ``(loss, grad)``.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import smooth_hinge_forward_backward
        >>> smooth_hinge_forward_backward(np.array([[0.0, 0.0]]), np.array([0]))[1]
        array([[-0.5,  0.5]])

    References: as :func:`smooth_hinge`.
    """
    return _smooth_hinge(logits, target, margin, reduction, grad_output, True)
