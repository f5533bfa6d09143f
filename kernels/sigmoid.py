"""Binary cross-entropy with logits (one sigmoid per class, multi-label), fused with its gradient.

``binary_cross_entropy_with_logits(logits, target, weight=, pos_weight=, reduction=)``
follows ``torch.nn.functional.binary_cross_entropy_with_logits``: every entry is its own
two-class problem (seed 003: k sigmoid classifiers when the classes are not mutually
exclusive).  Per entry, with sp(x) = log(1 + e^x) (softplus), sigma the logistic function,
w the weight and p_w the positive-class weight:

    l = w (p_w y sp(-x) + (1 - y) sp(x))          = w ((1 - y) x + (1 + (p_w - 1) y) sp(-x))
    dl/dx = w ((1 - y) sigma(x) - p_w y sigma(-x)) = w ((1 - y + p_w y) sigma(x) - p_w y)

(proof book: ``docs/proofs/cross_entropy.md#binary-cross-entropy-with-logits``).  The
first forms are the ones computed: two non-negative terms for targets in [0, 1], no
``x + sp(-x)`` cancellation (PyTorch's form loses all digits of sp(x) = e^-30 at x = -30:
-30 + 30.0000000000000936), sp(+-x) = max(+-x, 0) + log1p(e^-|x|) and
sigma(+-x) from e^-|x| <= 1, so logits of +-1e4 give exact zeros and ones, never
inf - inf.

The kernel is elementwise: (row, block) tasks of a fixed block size spread over threads,
each writing its block of the gradient (and of the loss for ``reduction="none"``) and
its block's loss sum in float64; the row sums are pairwise sums of the block sums in a
fixed order, so every result is bit-identical for any thread count.  The same kernel
computes the quadratic cost of ``classic_losses.py`` (``mode``: one kernel each), which shares its
shape.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH, block_length
from ._exp import exp64, log1p_unit
from ._rows import SUM_CHUNK, pairwise_sum
from ._validation import (
    check_broadcast_weight,
    check_float_array,
    check_grad_output,
    check_reduction,
    check_same_array_layout,
)

__all__ = ["binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_forward_backward"]

PAGE = "docs/proofs/cross_entropy.md"

BINARY_CROSS_ENTROPY = 0
QUADRATIC_COST = 1


# ---- per-element arithmetic (STRICT: every one of these is order-sensitive) -----------------


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _sigmoids(x):
    """(sigma(x), sigma(-x), log1p(e^-|x|)) from e = e^-|x| in (0, 1]: no overflow, no cancellation."""
    e = exp64(-abs(x))
    inverse = 1.0 / (1.0 + e)
    small = e * inverse  # e / (1 + e) = sigma(-|x|)
    if x >= 0.0:
        return inverse, small, e
    return small, inverse, e


# inline="always": LLVM's inliner found it too large, and the call kept the loop scalar
@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _binary_term(x, y, weight, positive_weight):
    """(loss, dloss/dx) of one entry of binary cross-entropy with logits, in float64."""
    positive, negative, e = _sigmoids(x)
    log_term = log1p_unit(e)  # vectorizable (libm's log1p is a scalar call)
    softplus = max(x, 0.0) + log_term  # sp(x)
    softplus_negative = max(-x, 0.0) + log_term  # sp(-x)
    positive_part = positive_weight * y
    negative_part = 1.0 - y
    # l = w (p_w y sp(-x) + (1 - y) sp(x)); a term whose factor is 0 adds 0, also at x = -+inf
    # (a masked logit with y = 0 costs nothing, not 0 * inf = NaN)
    inner = (positive_part * softplus_negative if positive_part != 0.0 else 0.0) + (
        negative_part * softplus if negative_part != 0.0 else 0.0
    )
    loss = weight * inner if weight != 0.0 else 0.0
    # dl/dx = w ((1 - y) sigma(x) - p_w y sigma(-x))
    gradient = weight * (negative_part * positive - positive_part * negative)
    return loss, gradient


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _quadratic_term(x, y):
    """(loss, dloss/dx) of one entry of the quadratic cost 1/2 (y - sigma(x))^2, in float64."""
    positive, negative, e = _sigmoids(x)
    # a - y = (1 - y) a - y (1 - a): no cancellation when a rounds to 1 (a = 1 - 4e-18 at x = 40)
    difference = (1.0 - y) * positive - y * negative
    # l = (a - y)^2 / 2,  dl/dx = (a - y) a (1 - a)  with a = sigma(x), 1 - a = sigma(-x)
    return 0.5 * difference * difference, difference * (positive * negative)


# ---- the elementwise kernel -------------------------------------------------------------------
#
# args = (target (rows, classes) logits' dtype, weight f64 (1 or rows, classes), pos_weight f64
#         (1 or rows, classes), upstream f64 (rows, classes) or [[1.0]], scale f64,
#         store_loss bool)
# dOut/dl_ij = scale * upstream[i, j] (upstream is [[1.0]] unless grad_output is elementwise,
# i.e. an array for reduction="none").


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _sum(values):
    """sum(values) in float64, chunked as ``_rows.SUM_CHUNK``."""
    total = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        partial = 0.0
        for j in range(chunk.shape[0]):
            partial += chunk[j]
        total += partial
    return total


def _make_elementwise_kernel(term):
    """The parallel kernel of one elementwise loss: ``term(x, y, w, p_w) -> (loss, dloss/dx)``.

    The term is a closure constant, and each of the three loops of a block (gradient
    with a scalar or an elementwise upstream, or no gradient) has no test of the options
    left inside it, so that LLVM vectorizes it.
    """

    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def block_loss(logits, args, grad, loss_out, losses, i, start, stop, write):
        """Loss (into ``losses``, float64) and gradient of the block ``[i, start:stop]``; returns the loss sum."""
        target, weight, positive_weight, upstream, scale, store_loss = args
        values = logits[i, start:stop]
        targets = target[i, start:stop]
        weights = weight[i if weight.shape[0] > 1 else 0, start:stop]
        positives = positive_weight[i if positive_weight.shape[0] > 1 else 0, start:stop]
        block_losses = losses[: stop - start]
        # dOut/dx_ij = g_ij dl_ij/dx_ij, g_ij = scale (times grad_output[i, j] when elementwise)
        if not write:
            for j in range(values.shape[0]):
                block_losses[j] = term(np.float64(values[j]), np.float64(targets[j]), weights[j], positives[j])[0]
        elif upstream.shape[0] > 1 or upstream.shape[1] > 1:
            # an elementwise grad_output, (rows, classes); (1, 1) is a scalar either way (with
            # one class the test of the columns alone took (N, 1) for a scalar)
            upstreams = upstream[i, start:stop]
            destination = grad[i, start:stop]
            for j in range(values.shape[0]):
                loss, gradient = term(np.float64(values[j]), np.float64(targets[j]), weights[j], positives[j])
                block_losses[j] = loss
                destination[j] = (scale * upstreams[j]) * gradient
        else:
            factor = scale * upstream[0, 0]
            destination = grad[i, start:stop]
            for j in range(values.shape[0]):
                loss, gradient = term(np.float64(values[j]), np.float64(targets[j]), weights[j], positives[j])
                block_losses[j] = loss
                destination[j] = factor * gradient
        if store_loss:
            out = loss_out[i, start:stop]
            for j in range(values.shape[0]):
                out[j] = block_losses[j]
        return _sum(block_losses)

    @njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def kernel(logits, args, grad, loss_out, row_loss, block, write):
        rows, classes = logits.shape
        blocks = max(1, (classes + block - 1) // block)
        partial = np.empty((rows, blocks))
        for task in prange(rows * blocks):
            i = task // blocks
            k = task % blocks
            start = k * block
            stop = min(classes, start + block)
            losses = np.empty(block)
            partial[i, k] = block_loss(logits, args, grad, loss_out, losses, i, start, stop, write)
        for i in prange(rows):
            row_loss[i] = pairwise_sum(partial[i].copy()) if blocks > 1 else partial[i, 0]

    return kernel


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _quadratic_entry(x, y, weight, positive_weight):
    return _quadratic_term(x, y)


_KERNELS = {
    BINARY_CROSS_ENTROPY: _make_elementwise_kernel(_binary_term),
    QUADRATIC_COST: _make_elementwise_kernel(_quadratic_entry),
}


# ---- Python side --------------------------------------------------------------------------------


def _broadcast_rows(name, value, shape, rows, classes):
    """A weight broadcast to the logits' ``shape`` as float64 (1, classes) or (rows, classes)."""
    if value is None:
        return np.ones((1, classes))
    value = check_broadcast_weight(name, value, shape)
    padded = value.reshape((1,) * (len(shape) - value.ndim) + value.shape)
    # copies (np.array): a read-only broadcast view would be another Numba type, another compile
    if all(size == 1 for size in padded.shape[:-1]):
        return np.array(np.broadcast_to(padded.reshape(1, -1), (1, classes)), dtype=np.float64)
    return np.array(np.broadcast_to(padded, shape), dtype=np.float64).reshape(rows, classes)


def elementwise_loss(logits, target, reduction, grad_output, write, mode, weight=None, pos_weight=None):
    """Validate and run the elementwise kernel: (loss, grad or None), shapes of ``logits``."""
    logits = check_float_array("logits", logits)
    if not isinstance(target, np.ndarray):
        raise TypeError(f"target must be a numpy.ndarray of float32 or float64, got {type(target).__name__}")
    check_same_array_layout("target", target, "logits", logits)
    reduction = check_reduction("reduction", reduction)
    shape = logits.shape
    classes = shape[-1] if logits.ndim else 1
    rows_count = logits.size // classes if classes else 0
    rows = np.ascontiguousarray(logits.reshape(rows_count, classes))
    targets = np.ascontiguousarray(target.reshape(rows_count, classes))
    weights = _broadcast_rows("weight", weight, shape, rows_count, classes)
    positive_weights = _broadcast_rows("pos_weight", pos_weight, shape, rows_count, classes)
    if isinstance(grad_output, np.ndarray) and grad_output.ndim > 0:
        upstream = check_grad_output("grad_output", grad_output, reduction, shape).reshape(rows_count, classes)
        scale = 1.0
    else:
        upstream = np.ones((1, 1))
        scale = float(check_grad_output("grad_output", grad_output, "sum", ()))
    count = logits.size
    if reduction == "mean":
        scale = scale / count if count else 0.0
    store_loss = reduction == "none"
    loss_out = np.empty_like(rows) if store_loss else np.empty((1, 1), dtype=rows.dtype)
    grad = np.empty_like(rows) if write else np.empty((1, 1), dtype=rows.dtype)
    row_loss = np.empty(rows_count)
    args = (targets, weights, positive_weights, np.ascontiguousarray(upstream), scale, store_loss)
    block = block_length(rows.dtype.itemsize)
    _KERNELS[mode](rows, args, grad, loss_out, row_loss, block, write)
    if store_loss:
        loss = loss_out.reshape(shape)
    else:
        total = float(np.sum(row_loss))
        if reduction == "mean":
            total = total / count if count else 0.0
        loss = logits.dtype.type(total)
    return loss, (grad.reshape(shape) if write else None)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean"):
    r"""Binary cross-entropy of a sigmoid per entry, from logits (multi-label classification).

    PyTorch's ``binary_cross_entropy_with_logits``:

    .. math::
        \ell_{ij} = w_{ij}\big(p_j\, y_{ij}\, \mathrm{sp}(-x_{ij}) + (1 - y_{ij})\, \mathrm{sp}(x_{ij})\big)
                  = -w_{ij}\big(p_j\, y_{ij} \log\sigma(x_{ij}) + (1 - y_{ij}) \log(1 - \sigma(x_{ij}))\big)

    with sp(x) = log(1 + e^x), ``w`` the weight and ``p`` the positive-class weight.

    Args:
        logits: float32 or float64 array of any shape (classes last); not modified.
        target: array of ``logits``' shape and dtype, targets in [0, 1] (soft labels allowed).
        weight: optional float array broadcastable to ``logits``' shape (e.g. ``(C,)``
            per class or ``(N, 1)`` per sample).
        pos_weight: optional float array broadcastable to ``logits``' shape, usually
            ``(C,)``: the weight of the positive term of each class.
        reduction: ``"mean"`` over every entry (default), ``"sum"`` or ``"none"``.

    Returns:
        A scalar of ``logits``' dtype, or an array of ``logits``' shape for ``"none"``.
        Stable for any finite logit: +-1e4 gives exact 0 or ``|x|``, never inf or NaN.
        The mean over an empty array is 0.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import binary_cross_entropy_with_logits
        >>> float(binary_cross_entropy_with_logits(np.array([0.0, 1e4]), np.array([1.0, 0.0]), reduction="sum"))
        10000.69314718056

    References: PyTorch's ``BCEWithLogitsLoss`` documentation; seed 003 (k sigmoid
    classifiers versus one softmax); ``docs/proofs/cross_entropy.md``.
    """
    loss, _ = elementwise_loss(logits, target, reduction, 1.0, False, BINARY_CROSS_ENTROPY, weight, pos_weight)
    return loss


def binary_cross_entropy_with_logits_forward_backward(logits, target, *, weight=None, pos_weight=None,
                                                      reduction="mean", grad_output=1.0):
    r""":func:`binary_cross_entropy_with_logits` and its gradient in the logits, in one kernel.

    .. math::
        \frac{\partial \ell_{ij}}{\partial x_{ij}} = w_{ij}\big((1 - y_{ij})\,\sigma(x_{ij}) - p_j\, y_{ij}\,\sigma(-x_{ij})\big)
        = w_{ij}\big((1 - y_{ij} + p_j y_{ij})\,\sigma(x_{ij}) - p_j y_{ij}\big)

    times ``grad_output`` and 1/(number of entries) for ``"mean"``.

    Args:
        logits, target, weight, pos_weight, reduction: as :func:`binary_cross_entropy_with_logits`.
        grad_output: upstream gradient: a real number, or for ``"none"`` a float array of
            ``logits``' shape.

    Returns:
        ``(loss, grad)``, ``grad`` of ``logits``' shape and dtype.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import binary_cross_entropy_with_logits_forward_backward
        >>> binary_cross_entropy_with_logits_forward_backward(np.array([0.0]), np.array([1.0]))[1]
        array([-0.5])

    References: as :func:`binary_cross_entropy_with_logits`.
    """
    return elementwise_loss(logits, target, reduction, grad_output, True, BINARY_CROSS_ENTROPY, weight, pos_weight)
