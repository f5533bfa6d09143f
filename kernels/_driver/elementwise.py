"""The elementwise driver: one parallel kernel per elementwise loss (binary cross-entropy, quadratic cost).

Every entry is its own loss (``term(x, y, w, p_w) -> (loss, dloss/dx)``), so there is no
row state to merge: (row, block) tasks of a fixed block size are spread over threads,
each writing its block of the gradient (and of the loss for ``reduction="none"``) and its
block's loss sum in float64; the row sums and the batch's sum are compensated sums of the
block sums and of the row sums in a fixed order, so every result is bit-identical for any
thread count.  The blocks' own sums stay plain (in lanes): their rounding errors, of
either sign and independent between blocks, average out over a batch, while a plain sum
over the rows would round the batch's total itself (about one ULP of a float64 mean; the
measurements are in ``docs/performance.md``).  A driver of its own
because the row drivers' reduce/merge/write passes would cost these losses a second
pass over the logits for nothing.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np
from numba import njit, prange

from .._config import JIT_OPTIONS, REDUCTION_FASTMATH, STRICT_FASTMATH, block_length
from .._numerics.rows import SUM_CHUNK, compensated_sum
from .._outputs import new_output_like
from .._validation import check_broadcast_weight, check_float_array, check_reduction, check_same_array_layout
from .reduction import reduce_losses, row_scales

__all__ = ["ElementwiseArgs", "make_elementwise_kernel", "elementwise_loss"]


ElementwiseArgs = namedtuple(
    "ElementwiseArgs",
    [
        "target",  # (rows, classes) of the logits' dtype
        "weight",  # float64 (1 or rows, classes)
        "positive_weight",  # float64 (1 or rows, classes)
        "upstream",  # float64 (rows, classes), or [[1.0]] unless grad_output is elementwise
        "scale",  # float64: dOut/dl_ij = scale * upstream[i, j]
        "store_loss",  # bool: write each entry's loss (reduction="none")
    ],
)


@njit(fastmath=REDUCTION_FASTMATH, **JIT_OPTIONS)
def _sum(values):
    """sum(values) in float64, chunked as ``_numerics.rows.SUM_CHUNK``."""
    total = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        partial = 0.0
        for j in range(chunk.shape[0]):
            partial += chunk[j]
        total += partial
    return total


def make_elementwise_kernel(term):
    """The parallel kernel of one elementwise loss: ``term(values, x, y, w, p_w) -> (loss, dloss/dx)``.

    ``values`` is the block the float64 ``x`` comes from: its dtype sets the accuracy the
    term needs (``_numerics.logistic.sigmoids_for``).

    The term is a closure constant, and each of the three loops of a block (gradient
    with a scalar or an elementwise upstream, or no gradient) has no test of the options
    left inside it, so that LLVM vectorizes it.
    """

    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def block_loss(logits, args, grad, loss_out, losses, i, start, stop, write):
        """Loss (into ``losses``, float64) and gradient of the block ``[i, start:stop]``; returns the loss sum."""
        target, weight, positive_weight, upstream, scale = args.target, args.weight, args.positive_weight, args.upstream, args.scale
        values = logits[i, start:stop]
        targets = target[i, start:stop]
        weights = weight[i if weight.shape[0] > 1 else 0, start:stop]
        positives = positive_weight[i if positive_weight.shape[0] > 1 else 0, start:stop]
        block_losses = losses[: stop - start]
        # dOut/dx_ij = g_ij dl_ij/dx_ij, g_ij = scale (times grad_output[i, j] when elementwise)
        if not write:
            for j in range(values.shape[0]):
                block_losses[j] = term(values, np.float64(values[j]), np.float64(targets[j]), weights[j], positives[j])[0]
        elif upstream.shape[0] > 1 or upstream.shape[1] > 1:
            # an elementwise grad_output, (rows, classes); (1, 1) is a scalar either way (with
            # one class the test of the columns alone took (N, 1) for a scalar)
            upstreams = upstream[i, start:stop]
            destination = grad[i, start:stop]
            for j in range(values.shape[0]):
                loss, gradient = term(values, np.float64(values[j]), np.float64(targets[j]), weights[j], positives[j])
                block_losses[j] = loss
                destination[j] = (scale * upstreams[j]) * gradient
        else:
            factor = scale * upstream[0, 0]
            destination = grad[i, start:stop]
            for j in range(values.shape[0]):
                loss, gradient = term(values, np.float64(values[j]), np.float64(targets[j]), weights[j], positives[j])
                block_losses[j] = loss
                destination[j] = factor * gradient
        if args.store_loss:
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
            row_loss[i] = compensated_sum(partial[i]) if blocks > 1 else partial[i, 0]

    return kernel


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


def elementwise_loss(kernel, logits, target, reduction, grad_output, write, weight=None, pos_weight=None):
    """Validate and run an elementwise ``kernel``: (loss, grad or None), shapes of ``logits``."""
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
    count = logits.size
    if isinstance(grad_output, np.ndarray) and grad_output.ndim > 0:
        # elementwise (reduction="none"): one per entry, in the kernel's loop
        upstream = row_scales(grad_output, reduction, count, shape).reshape(rows_count, classes)
        scale = 1.0
    else:
        # a number, also for "none": one factor for every entry, g or g / count for "mean"
        upstream = np.ones((1, 1))
        scale = float(row_scales(grad_output, "mean" if reduction == "mean" else "sum", count, ())[0])
    store_loss = reduction == "none"
    loss_out = new_output_like(rows) if store_loss else np.empty((1, 1), dtype=rows.dtype)
    grad = new_output_like(rows) if write else np.empty((1, 1), dtype=rows.dtype)
    row_loss = np.empty(rows_count)
    args = ElementwiseArgs(targets, weights, positive_weights, np.ascontiguousarray(upstream), scale, store_loss)
    block = block_length(rows.dtype.itemsize)
    kernel(rows, args, grad, loss_out, row_loss, block, write)
    # the rows' sum, compensated in row order
    total = None if store_loss else compensated_sum(row_loss)
    loss = reduce_losses(loss_out if store_loss else row_loss, reduction, shape, logits.dtype, count, total)
    return loss, (grad.reshape(shape) if write else None)
