"""Center loss (Wen et al. 2016): pull each feature towards its class center.

.. math::
    \\ell_i = \\tfrac12 \\|x_i - c_{y_i}\\|^2,\\qquad
    \\frac{\\partial \\ell_i}{\\partial x_i} = x_i - c_{y_i},\\qquad
    \\frac{\\partial \\ell_i}{\\partial c_j} = [y_i = j]\\,(c_j - x_i)

and Wen et al.'s center update c_j <- c_j - alpha * sum_{i: y_i = j}(c_j - x_i) / (1 + n_j),
a damped step (the gradient times N / (1 + n_j)), not the gradient itself.

Two kernels: one row-parallel pass for the per-row losses and dx (float64 sums, rounded
once), and one pass parallel over the classes present in the batch for dcenters and the
update: the rows of a class are visited in row order (a stable sort groups them), so every
sum has a fixed order and the results are bit-identical for any thread count.  The
(C, D) outputs are written only at the classes of the batch (zeros or the old centers
elsewhere).

Proof book: docs/proofs/margins.md#center-loss-gradient.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH
from ._driver.reduction import reduce_losses, row_scales
from ._validation import check_class_indices, check_float_array, check_real_scalar, check_reduction

__all__ = ["center_loss", "center_loss_forward_backward", "center_update"]


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _half_squared_distance(x_row, center):
    total = 0.0
    for j in range(x_row.shape[0]):
        difference = np.float64(x_row[j]) - np.float64(center[j])
        total += difference * difference
    return 0.5 * total


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _center_rows_kernel(x, centers, targets, upstream, losses, dx):
    # loss_i = 1/2 |x_i - c_{y_i}|^2 ;  dx_i = g_i (x_i - c_{y_i})
    # (docs/proofs/margins.md#center-loss-gradient)
    with_gradient = dx.shape[0] != 0
    for i in prange(x.shape[0]):
        x_row = x[i]
        center = centers[targets[i]]
        losses[i] = _half_squared_distance(x_row, center)
        if with_gradient:
            destination = dx[i]
            scale = upstream[i]
            for j in range(x_row.shape[0]):
                destination[j] = scale * (np.float64(x_row[j]) - np.float64(center[j]))


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _per_class_kernel(x, centers, order, starts, labels, weights, alpha, out):
    """For each class j = labels[g] present (its rows order[starts[g]:starts[g+1]], ascending):

    * alpha = 0 (the gradient): out_j = sum_{i: y_i = j} w_i (c_j - x_i), w_i = g_i;
    * alpha != 0 (the update): out_j = c_j - alpha sum_{i: y_i = j} (c_j - x_i) / (1 + n_j).

    Sums in float64 in row order, rounded once.
    """
    features = x.shape[1]
    for group in prange(starts.shape[0] - 1):
        first, last = starts[group], starts[group + 1]
        label_class = labels[group]
        total = np.zeros(features)
        for position in range(first, last):
            i = order[position]
            weight = weights[i]
            x_row = x[i]
            center = centers[label_class]
            for j in range(features):
                total[j] += weight * (np.float64(center[j]) - np.float64(x_row[j]))
        destination = out[label_class]
        center = centers[label_class]
        if alpha == 0.0:
            for j in range(features):
                destination[j] = total[j]
        else:
            damping = alpha / (1.0 + (last - first))
            for j in range(features):
                destination[j] = np.float64(center[j]) - damping * total[j]


def _grouped_rows(targets: np.ndarray):
    """(rows sorted by class, stably; group boundaries; the class of each group)."""
    order = np.argsort(targets, kind="stable")
    sorted_targets = targets[order]
    boundaries = np.flatnonzero(np.diff(sorted_targets)) + 1
    starts = np.concatenate(([0], boundaries, [targets.shape[0]])).astype(np.int64)
    return order.astype(np.int64), starts, np.ascontiguousarray(sorted_targets[starts[:-1]])


def _validated(x, target, centers):
    x = check_float_array("x", x)
    centers = check_float_array("centers", centers)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (rows, features), got shape {x.shape}")
    if centers.ndim != 2:
        raise ValueError(f"centers must be 2-D (classes, features), got shape {centers.shape}")
    if centers.dtype != x.dtype:
        raise TypeError(f"centers must have the dtype of x ({x.dtype}), got {centers.dtype}")
    if centers.shape[1] != x.shape[1]:
        raise ValueError(
            f"centers must have {x.shape[1]} columns (the features of x, shape {x.shape}), got shape {centers.shape}"
        )
    if x.shape[0] < 1 or centers.shape[0] < 1:
        raise ValueError(f"x and centers must have at least one row, got shapes {x.shape} and {centers.shape}")
    targets = check_class_indices("target", target, (x.shape[0],), centers.shape[0])
    return np.ascontiguousarray(x), np.ascontiguousarray(centers), targets


def _center_loss(x, target, centers, reduction, grad_output, with_gradient):
    reduction = check_reduction("reduction", reduction)
    x, centers, targets = _validated(x, target, centers)
    count = x.shape[0]
    losses = np.empty(count)
    if with_gradient:
        upstream = row_scales(grad_output, reduction, count, (count,), per_row=True)
        dx = np.empty_like(x)
    else:
        upstream = np.zeros(count)
        dx = np.empty((0, 0), dtype=x.dtype)
    _center_rows_kernel(x, centers, targets, upstream, losses, dx)
    loss = reduce_losses(losses, reduction, (count,), x.dtype, count)
    if not with_gradient:
        return loss
    # dL/dc_j = sum_{i: y_i = j} g_i (c_j - x_i)
    order, starts, labels = _grouped_rows(targets)
    dcenters = np.zeros_like(centers)
    _per_class_kernel(x, centers, order, starts, labels, upstream, 0.0, dcenters)
    return loss, dx, dcenters


def center_loss(x, target, centers, *, reduction="mean"):
    r"""Center loss: half the squared distance of each feature to its class center.

    .. math:: L = \frac{1}{N} \sum_i \tfrac12 \|x_i - c_{y_i}\|^2 \quad(\text{reduction="mean"})

    Args:
        x: features (N, D), float32 or float64; not modified.
        target: integer class indices (N,) in [0, C).
        centers: class centers (C, D), ``x``'s dtype; not modified.
        reduction: "mean" (over the batch), "sum" or "none".

    Returns:
        The loss, ``x``'s dtype: 0-d, or (N,) for "none" (sums in float64, rounded once).

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import center_loss
        >>> float(center_loss(np.array([[1.0, 2.0], [0.0, 0.0]]), np.array([0, 1]),
        ...                   np.array([[1.0, 0.0], [3.0, 4.0]])))
        7.25

    Reference: Y. Wen, K. Zhang, Z. Li, Y. Qiao, "A discriminative feature learning approach
    for deep face recognition", ECCV 2016 (eq. 2); docs/proofs/margins.md#center-loss-gradient.
    """
    return _center_loss(x, target, centers, reduction, 1.0, False)


def center_loss_forward_backward(x, target, centers, *, reduction="mean", grad_output=1.0):
    r"""(loss, dx, dcenters) of :func:`center_loss`: the true gradients.

    .. math::
        dx_i = g_i (x_i - c_{y_i}),\qquad dc_j = \sum_{i: y_i = j} g_i (c_j - x_i)

    with g_i the upstream gradient of row i's loss (``grad_output / N`` for "mean").  dcenters
    is zero at the classes absent from the batch.  For Wen et al.'s damped update of the
    centers use :func:`center_update`.

    Returns:
        (loss, dx (N, D), dcenters (C, D)), ``x``'s dtype.
    """
    return _center_loss(x, target, centers, reduction, grad_output, True)


def center_update(centers, x, target, alpha=0.5):
    r"""Wen et al.'s center update, returned as new centers (``centers`` is not modified).

    .. math::
        c_j \leftarrow c_j - \alpha\,\frac{\sum_{i: y_i = j} (c_j - x_i)}{1 + n_j},\qquad
        n_j = |\{i : y_i = j\}|

    Classes absent from the batch keep their center.

    Args:
        centers: (C, D), float32 or float64.
        x: features (N, D), ``centers``' dtype.
        target: integer class indices (N,) in [0, C).
        alpha: the center learning rate, in [0, 1].

    Returns:
        The updated centers (C, D), a new array.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import center_update
        >>> center_update(np.zeros((2, 1)), np.array([[2.0], [4.0]]), np.array([0, 0]), alpha=0.5)
        array([[1.],
               [0.]])

    Reference: Wen et al. 2016, eq. (4) and Algorithm 1.
    """
    alpha = check_real_scalar("alpha", alpha, minimum=0.0, maximum=1.0)
    x, centers, targets = _validated(x, target, centers)
    updated = centers.copy()
    if alpha == 0.0:
        return updated
    order, starts, labels = _grouped_rows(targets)
    _per_class_kernel(x, centers, order, starts, labels, np.ones(x.shape[0]), alpha, updated)
    return updated
