"""The losses the seeds use to motivate softmax cross-entropy, with their gradients.

Seed 001 walks from the multi-class hinge to cross-entropy by smoothing: the sum of
hinges ``sum_{i != y} max(z_i - z_y + m, 0)`` pushes every non-target score below the
target's (its gradient can be as large as C - 1); replacing max over the others by
LogSumExp and max(., 0) by softplus gives the smooth hinge
``softplus(LSE_{i != y} z_i - z_y + m)``, which for m = 0 *is* the softmax cross-entropy
``-log softmax(z)_y`` (log(1 + sum_{i != y} e^{z_i} / e^{z_y}) = LSE(z) - z_y).  Seed 002
compares cross-entropy with the quadratic cost ``(y - sigma(x))^2 / 2`` of a sigmoid
unit, whose gradient ``(a - y) a (1 - a)`` vanishes when the unit saturates on the wrong
side (a = 0.98 for y = 0 learns slower than a = 0.82): the reason cross-entropy (gradient
a - y) is used instead.

* ``multiclass_hinge``: its own row kernel (``cross_entropy.make_loss_kernel``, a state
  of (sum of hinges, number of active hinges) per block).
* ``smooth_hinge``: the class-index kernel of ``cross_entropy.py`` in its smooth-hinge
  mode (the loss is a function of the cross-entropy, see there).
* ``quadratic_cost``: the elementwise kernel of ``sigmoid.py`` in its quadratic mode.

Each has ``*_forward_backward`` returning ``(loss, grad)`` from one kernel.  The
multi-class hinge's gradient is the subgradient that is 0 where a hinge is exactly at its
kink (PyTorch's ``multi_margin_loss`` choice).  Proof book: ``docs/proofs/cross_entropy.md``
("quadratic cost gradient").
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH
from ._rows import SUM_CHUNK, pairwise_sum
from ._validation import check_class_indices, check_real_scalar, check_reduction
from .cross_entropy import (
    _NO_WEIGHT,
    _index_kernel,
    _logit_rows,
    fill,
    make_loss_kernel,
    row_scales,
    run_loss_kernel,
    upstream_at,
)
from .sigmoid import QUADRATIC_COST, elementwise_loss

__all__ = [
    "multiclass_hinge",
    "multiclass_hinge_forward_backward",
    "smooth_hinge",
    "smooth_hinge_forward_backward",
    "quadratic_cost",
    "quadratic_cost_forward_backward",
]


# ---- multi-class hinge ---------------------------------------------------------------------
#
# args = (target int64 (rows,), row_scale f64 (rows,) or (1,) (``upstream_at``), margin f64)
# state per block: sum_{j != y} h_j, number of j != y with h_j > 0   (h_j = z_j - z_y + m)
# stats per row: the same, summed over the blocks


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
        partial[i, k, 0], partial[i, k, 1] = before_total + after_total, before_count + after_count
    else:
        partial[i, k, 0], partial[i, k, 1] = _hinge_sums(values, label_value, margin)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_hinge(logits, args, i, partial, stats):
    if partial.shape[1] == 1:
        stats[i, 0], stats[i, 1] = partial[i, 0, 0], partial[i, 0, 1]
    else:
        stats[i, 0] = pairwise_sum(partial[i, :, 0].copy())
        stats[i, 1] = pairwise_sum(partial[i, :, 1].copy())
    if logits[i, args[0][i]] == -np.inf and stats[i, 0] == 0.0:
        # a target score of -inf gives +inf (DESIGN.md), also when every other score is -inf
        # or there is no other class (their hinges are 0); a NaN loss stays NaN
        stats[i, 0] = np.inf
    return stats[i, 0]


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_hinge(logits, args, grad, i, k, start, stop, partial, stats):
    target, row_scale, margin = args
    label = target[i]
    label_value = np.float64(logits[i, label])
    scale = upstream_at(row_scale, i)
    values = logits[i, start:stop]
    destination = grad[i, start:stop]
    if label_value != label_value or stats[i, 0] != stats[i, 0]:
        fill(destination, np.nan)
        return
    # dL/dz_j = g [z_j - z_y + m > 0]  (j != y),   dL/dz_y = -g (number of positive hinges)
    for j in range(values.shape[0]):
        destination[j] = scale if _hinge(values[j], label_value, margin) > 0.0 else 0.0
    if start <= label < stop:
        destination[label - start] = -scale * stats[i, 1]


_hinge_kernel = make_loss_kernel(_reduce_hinge, _merge_hinge, _write_hinge, 2)


def _class_index_rows(logits, target):
    logits, rows, batch_shape = _logit_rows(logits)
    labels = check_class_indices("target", target, batch_shape, rows.shape[1]).reshape(-1)
    return logits, rows, batch_shape, labels


def _multiclass_hinge(logits, target, margin, reduction, grad_output, write):
    logits, rows, batch_shape, labels = _class_index_rows(logits, target)
    margin = check_real_scalar("margin", margin)
    reduction = check_reduction("reduction", reduction)
    denominator = rows.shape[0]
    scale = row_scales(grad_output, reduction, denominator, batch_shape)
    return run_loss_kernel(_hinge_kernel, rows, (labels, scale, margin), write, reduction, denominator, logits.shape)


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
    recognition", 1999; seed 001.
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


def _smooth_hinge(logits, target, margin, reduction, grad_output, write):
    logits, rows, batch_shape, labels = _class_index_rows(logits, target)
    margin = check_real_scalar("margin", margin)
    reduction = check_reduction("reduction", reduction)
    denominator = rows.shape[0]
    scale = row_scales(grad_output, reduction, denominator, batch_shape)
    # the class-index cross-entropy kernel in its smooth-hinge mode: no weights, no smoothing,
    # no row ignored (-1 is never a valid label)
    args = (labels, _NO_WEIGHT, scale, np.int64(-1), 0.0, False, float(rows.shape[1]), margin, True)
    return run_loss_kernel(_index_kernel, rows, args, write, reduction, denominator, logits.shape)


def smooth_hinge(logits, target, *, margin=0.0, reduction="mean"):
    r"""The smooth multi-class hinge of seed 001: LogSumExp for max, softplus for max(., 0).

    .. math:: \ell = \mathrm{softplus}\Big(\log\sum_{i \ne y} e^{z_i} - z_y + m\Big)

    With ``margin=0`` this equals the softmax cross-entropy ``-log softmax(z)_y``; a
    positive margin asks the target to beat the others' LogSumExp by m (seed 001's first
    remedy, "add an m as the hinge loss does").

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

    References: seed 001 (from hinge to softmax cross-entropy by smoothing).
    """
    loss, _ = _smooth_hinge(logits, target, margin, reduction, 1.0, False)
    return loss


def smooth_hinge_forward_backward(logits, target, *, margin=0.0, reduction="mean", grad_output=1.0):
    r""":func:`smooth_hinge` and its gradient, from one fused kernel.

    With :math:`u = \log\sum_{i \ne y} e^{z_i} - z_y` and :math:`s = \sigma(u + m)`:

    .. math::
        \frac{\partial \ell}{\partial z_i} = s\, \frac{e^{z_i}}{\sum_{k \ne y} e^{z_k}}\ (i \ne y),\qquad
        \frac{\partial \ell}{\partial z_y} = -s

    (the non-target gradients sum to s and the target's is -s: seed 001's bounded
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

    References: seed 001.
    """
    return _smooth_hinge(logits, target, margin, reduction, grad_output, True)


# ---- quadratic cost ------------------------------------------------------------------------


def quadratic_cost(logits, target, *, reduction="mean"):
    r"""Quadratic cost of a sigmoid unit per entry (seed 002's counter-example to cross-entropy).

    .. math:: \ell = \tfrac12\,\big(y - \sigma(x)\big)^2

    Args:
        logits: float32 or float64 array of any shape; not modified.
        target: array of ``logits``' shape and dtype (targets in [0, 1]).
        reduction: ``"mean"`` over every entry (default), ``"sum"`` or ``"none"``.

    Returns:
        A scalar of ``logits``' dtype, or an array of its shape for ``"none"``.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import quadratic_cost
        >>> float(quadratic_cost(np.array([0.0]), np.array([1.0])))
        0.125

    References: M. Nielsen, "Neural networks and deep learning", ch. 3 (the learning
    slowdown); seed 002.
    """
    loss, _ = elementwise_loss(logits, target, reduction, 1.0, False, QUADRATIC_COST)
    return loss


def quadratic_cost_forward_backward(logits, target, *, reduction="mean", grad_output=1.0):
    r""":func:`quadratic_cost` and its gradient in the logits, from one kernel.

    .. math:: \frac{\partial \ell}{\partial x} = (a - y)\, a\, (1 - a) = -a (1 - a)(y - a),\qquad a = \sigma(x)

    (``1 - a`` is computed as sigma(-x), without cancellation).  The factor a (1 - a)
    is why a saturated unit learns slowly: 0.0192 at a = 0.98 against a - y = 0.98 for
    cross-entropy.

    Args:
        logits, target, reduction: as :func:`quadratic_cost`.
        grad_output: upstream gradient (a float array of ``logits``' shape for ``"none"``).

    Returns:
        ``(loss, grad)``.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import quadratic_cost_forward_backward
        >>> quadratic_cost_forward_backward(np.array([0.0]), np.array([1.0]))[1]
        array([-0.125])

    References: as :func:`quadratic_cost`.
    """
    return elementwise_loss(logits, target, reduction, grad_output, True, QUADRATIC_COST)
