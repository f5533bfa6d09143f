"""Fused linear cross-entropy: ``cross_entropy(x W^T + b, target)`` without the (rows, classes) logits.

``linear_cross_entropy(x, linear_weight, target, ...)`` is :func:`cross_entropy` of the
logits ``z = x W^T + b`` (optionally soft-capped, ``c tanh(z / c)``, and with PaLM's z-loss
``z_loss * LSE(z)^2`` added per row), computed in chunks of the logits whose size is
bounded by ``memory_budget`` bytes; the N x C logits are never formed.

Two passes, the logits recomputed by BLAS (NumPy's matmul, in the inputs' dtype: float32
products for float32 inputs; in float64 with ``precision="float64"``) in both:

1. **statistics**, in chunks under ``memory_budget``: each chunk holds whole class tiles of
   ``block_length(itemsize)`` classes (8192 float32, 4096 float64), the blocks of
   ``cross_entropy``'s kernel, and whole row tiles.  Per row and class tile the kernel
   ``_tile_statistics`` (its rows split over threads) keeps the tile's (max, sum of exponentials),
   the label-smoothing gap sums and the target logit, with ``cross_entropy``'s own block
   functions; ``_merge_rows`` merges the tiles of a row in tile order with
   ``cross_entropy``'s merge and forms its loss with its formula
   (``_cross_entropy.index_finite_cross_entropy``).  The loss is therefore
   ``cross_entropy``'s of the same logits, bit for bit: of the logits the tiles' GEMMs give
   (below), which are ``x @ W.T + b`` itself only where BLAS rounds an element the same
   whatever the GEMM's width.  OpenBLAS's SkylakeX kernels (AVX-512 CPUs) were measured to;
   its Haswell kernels (AVX2 CPUs, e.g. a Zen 3) round most elements of a 6 x 17084 float32
   product in their last bit differently in one GEMM and in tiles of 2048 classes.
2. **gradient** (``*_forward_backward``), one product tile (``ROW_TILE`` rows x
   ``PRODUCT_TILE`` classes) at a time, whatever the budget: the tile's logits are
   overwritten by G = dloss/du (``_chunk_gradient``, elementwise from the row's statistics:
   G_j = g ((TW + 2 z_loss LSE) a_j - tw_j), times the soft cap's 1 - tanh^2; the target
   entry with ``a_y - 1`` free of cancellation), then ``grad_input += G W`` and
   ``grad_linear_weight += G^T x`` (derivation: ``docs/proofs/linear_cross_entropy.md``).

What does not depend on the chunking (``memory_budget``) or on Numba's thread count, by
construction (BLAS's own thread count is another matter: ``docs/design.md``):

* every GEMM is one fixed tile: ``ROW_TILE`` rows (the last tile shorter) by
  ``PRODUCT_TILE`` classes, written to a contiguous 64-byte-aligned buffer: BLAS's result
  for an element was measured (OpenBLAS) to depend on the row's place in the GEMM, on a
  transposed float64 operand's leading dimension, and on a GEMM of one row taking the
  matrix-vector routine; a fixed tile fixes all three;
* the tiles' products are added in float64 in tile order (``grad_input`` over class tiles,
  ``grad_linear_weight`` and the bias' gradient over row tiles) and rounded once, so the
  sums add no rounding of their own beyond the tiles';
* the rows' statistics are merged over the fixed class tiles in tile order, and the Numba
  kernels work row by row (any thread count gives the same bits).

Threads: BLAS's own for the products; the tile kernels are serial ``nogil`` Numba
functions whose rows are split over ``numba.get_num_threads()`` Python threads
(``_driver/threads.py``), not a ``prange``: GNU OpenMP's workers spin after a parallel
region, and the next GEMM shared the cores with them (about half the step's time).
OpenBLAS's own workers wait busily too after each GEMM (for as long as the environment's
``OPENBLAS_THREAD_TIMEOUT`` says, read when OpenBLAS loads): the row kernels right after one
share the cores with them (``docs/performance.md``, sixteenth session).

Tested (``tests/kernels/test_linear_cross_entropy.py``): the loss is ``cross_entropy`` of
the tiles' logits bit for bit, and those are ``x @ W.T + b`` within the products' rounding;
every output is bit-identical for budgets from one tile to
everything and for 1 and 2 Numba threads (``test_bits_do_not_depend_on_the_budget``,
``..._on_the_thread_count``); permuting the rows permutes the per-row losses and the rows
of ``grad_input`` bit for bit (the reductions, ``grad_linear_weight`` and the bias' gradient
sum over rows and may change in their last bits).  Nor do they depend on where the
buffers lie (``test_bits_do_not_depend_on_where_the_tiles_lie``): a loop that indexes one
array by an offset that may be negative for all LLVM knows (``weight[col0 + j]``) gets a
runtime overlap check that includes the wrap-around range past that array's end, and a tile
that lay there ran the loop's scalar version, which rounds differently from the vector one
(the float64 gradients then changed by a few ulp between calls, from the heap's layout).
Such arrays are sliced before the loop and indexed by the loop's counter alone.

Memory beyond the inputs and outputs: the first pass's chunk (at most ``memory_budget``
bytes, but never less than one row tile by one class tile), one product tile and its
products in the second pass (fixed by the features, not by the rows or classes), the
per-row statistics (rows x class tiles x 5 float64), the float64 sums of ``grad_input``
(rows x features) and of the bias' gradient (classes), and, with more than ``ROW_TILE``
rows, the float64 sum of one product tile's ``grad_linear_weight`` rows.  ``chunk_plan``
computes the sizes.

Rows whose logits are not all finite (an overflow to inf, a NaN) are recomputed alone:
that row's logits (C values) are formed and passed to :func:`cross_entropy_forward_backward`,
so the edges are ``cross_entropy``'s (``docs/design.md``, "Semantics at the edges").

References: A. Chowdhery et al., "PaLM" (z-loss), 2022; Gemma Team, "Gemma 2" (logit soft
cap), 2024; E. Wijmans et al., "Cut your losses in large-vocabulary language models" (cut
cross-entropy), 2024; M. Milakov & N. Gimelshein, "Online normalizer calculation for
softmax", 2018.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba
import numpy as np
from numba import njit, prange

from ._config import JIT_OPTIONS, STRICT_FASTMATH, block_length
from ._cross_entropy import (
    ANCHOR,
    GAP_WEIGHT,
    GAPS,
    MAX,
    SUM,
    WIDTH,
    _gap_sums,
    _merge_gaps,
    class_index_args,
    class_index_options,
    cross_entropy_forward_backward,
    index_finite_cross_entropy,
)
from ._driver.losses import merge_pair, target_minus_one, upstream_at
from ._driver.reduction import reduce_losses
from ._driver.threads import run_row_blocks
from ._numerics.rows import cast_like, chunked_sum, exp_difference_for, fill, max_sum_exp_stored
from ._softmax import logsumexp, softmax
from ._validation import check_float_array, check_real_scalar

__all__ = ["linear_cross_entropy", "linear_cross_entropy_forward_backward", "chunk_plan", "DEFAULT_MEMORY_BUDGET"]

PAGE = "docs/proofs/linear_cross_entropy.md"

#: The default bound on the chunk buffers, in bytes (32 MiB).
DEFAULT_MEMORY_BUDGET = 32 * 1024 * 1024

#: ``precision``: the inputs' dtype for the products and statistics, or float64.
PRECISIONS = ("input", "float64")

#: Classes per GEMM (the logits and G W): the fixed column partition of every product.
PRODUCT_TILE = 2048
#: Rows per GEMM: the fixed row partition of every product (G^T x sums over it, then over the tiles).
ROW_TILE = 1024

# row status (``_merge_rows``)
KEPT, IGNORED, FALLBACK = 0, 1, 2
# columns of the per-row state
STATE_MAX, STATE_SUM, STATE_TARGET_TOTAL, STATE_LSE = 0, 1, 2, 3

Plan = namedtuple("Plan", ["tile", "rows", "cols", "bytes1", "bytes2"])


def chunk_plan(rows, classes, features, dtype, memory_budget=DEFAULT_MEMORY_BUDGET, write=True):
    """The chunks of the first pass and what each pass allocates: a ``Plan``.

    The first pass takes chunks of ``rows`` rows (a multiple of ``ROW_TILE``, or all rows
    when there are fewer) by ``cols`` classes (whole class tiles of ``tile`` classes, or all);
    ``bytes1`` is its chunk, one product tile of logits and the threads' scratch, at most
    ``memory_budget`` unless one tile alone exceeds it.  The second pass works one product
    tile (``ROW_TILE`` x ``PRODUCT_TILE``) at a time, whatever the budget: ``bytes2`` is that
    tile, its products and, with more rows than ``ROW_TILE``, the float64 sum of the tile's
    grad_linear_weight rows (0 without ``write``).
    """
    itemsize = np.dtype(dtype).itemsize
    tile = block_length(itemsize)
    tile_cols = min(classes, tile)
    unit = max(1, min(rows, ROW_TILE))
    product = unit * min(classes, PRODUCT_TILE) * itemsize
    fixed = product + numba.get_num_threads() * tile_cols * itemsize
    units = max(1, (memory_budget - fixed) // (unit * tile_cols * itemsize))
    chunk_rows = int(min(max(rows, 1), units * unit))
    tiles = max(1, (memory_budget - fixed) // (chunk_rows * tile * itemsize))
    chunk_cols = int(min(classes, tiles * tile))
    bytes1 = chunk_rows * chunk_cols * itemsize + fixed
    split = rows > ROW_TILE
    product_cols = min(classes, PRODUCT_TILE)
    bytes2 = product + (unit + product_cols) * features * itemsize + (product_cols * features * 8 if split else 0)
    if itemsize == 8:  # a product tile of W converted to float64 (precision="float64"; a view otherwise)
        bytes2 += product_cols * features * itemsize
    return Plan(tile, chunk_rows, max(chunk_cols, 1), bytes1, bytes2 if write else 0)


# ---- the kernels --------------------------------------------------------------------------------


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _capped(values, value, cap):
    """The soft-capped logit c tanh(z / c), rounded to ``values``' dtype, as a float64."""
    return np.float64(cast_like(values, cap * math.tanh(np.float64(value) / cap)))


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _soft_cap_in_place(first, last, part, logits, cap):
    """Rows first..last of ``logits`` soft-capped in place (``run_row_blocks``)."""
    for r in range(first, last):
        values = logits[r]
        for j in range(values.shape[0]):
            values[j] = _capped(values, values[j], cap)


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _tile_statistics(first, last, part, logits, row0, col0, tile, args, partial, target_logit, scratch):
    """Per row first..last of the chunk ``logits`` (rows row0.., classes col0..) and per class
    tile k: ``partial[i, k]`` as ``_cross_entropy._reduce_index`` fills it for the block k, and
    the target logit in ``target_logit[i]`` where the label is in the chunk (``run_row_blocks``;
    ``scratch[part]`` is this block's)."""
    cols = logits.shape[1]
    for r in range(first, last):
        i = row0 + r
        label = args.target[i]
        if label != args.ignore_index:
            for start in range(0, cols, tile):
                stop = min(cols, start + tile)
                values = logits[r, start:stop]
                k = (col0 + start) // tile
                # e_j stored in this block's scratch, as cross_entropy stores them for the loss alone
                largest, total = max_sum_exp_stored(values, scratch[part, 0 : stop - start], values[:0])
                partial[i, k, MAX] = largest
                partial[i, k, SUM] = total
                if args.smoothing != 0.0:
                    anchor = largest if math.isfinite(largest) else 0.0
                    partial[i, k, ANCHOR] = anchor
                    partial[i, k, GAPS], partial[i, k, GAP_WEIGHT] = _gap_sums(
                        values, args.weight[col0 + start : col0 + stop], anchor, args.weighted
                    )
                if col0 + start <= label < col0 + stop:
                    target_logit[i] = np.float64(values[label - col0 - start])


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_rows(partial, target_logit, args, classes, z_loss, row_loss, state, status):
    """Each row's loss from its tiles (``cross_entropy``'s merge and loss), its state for the
    gradient (M, T, TW, LSE) and its status: KEPT, IGNORED, or FALLBACK (a max not finite)."""
    maxima = partial[:, :, MAX]  # the merge's row argument; read only for a max not finite, never here
    for i in prange(partial.shape[0]):
        if start_row(args, i, row_loss, status):
            largest = -np.inf
            for k in range(partial.shape[1]):
                largest = max(largest, partial[i, k, MAX])
            if not math.isfinite(largest):
                status[i] = FALLBACK
            else:
                largest, total = merge_pair(maxima, i, partial, MAX)
                gaps = _merge_gaps(largest, partial, i) if args.smoothing != 0.0 else 0.0
                finish_row(args, i, classes, largest, target_logit[i], total, gaps, z_loss, row_loss, state)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def start_row(args, i, row_loss, status):
    """Row i's loss set to 0 and its status to KEPT, or IGNORED (returning False) for ``ignore_index``."""
    row_loss[i] = 0.0
    status[i] = KEPT
    if args.target[i] == args.ignore_index:
        status[i] = IGNORED
        return False
    return True


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def finish_row(args, i, classes, largest, label_value, total, gaps, z_loss, row_loss, state):
    """Row i's loss (``index_finite_cross_entropy``, plus the z-loss) and state (M, T, TW, LSE) from
    its merged M, T and gaps and its target logit."""
    loss, target_total = index_finite_cross_entropy(args, args.target[i], classes, largest, label_value, total, gaps)
    lse = largest + math.log1p(total)
    if z_loss != 0.0:
        loss += z_loss * (lse * lse)
    row_loss[i] = loss
    state[i, STATE_MAX] = largest
    state[i, STATE_SUM] = total
    state[i, STATE_TARGET_TOTAL] = target_total
    state[i, STATE_LSE] = lse


@njit(nogil=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _chunk_gradient(first, last, part, logits, row0, col0, classes, args, cap, z_loss, state, status):
    """Overwrite rows first..last of the chunk's logits (before the soft cap) with G = dloss_i/dz_ij
    times the row's upstream gradient (``docs/proofs/linear_cross_entropy.md``; ``run_row_blocks``).
    FALLBACK rows are left to the caller."""
    cols = logits.shape[1]
    capping = cap > 0.0
    for r in range(first, last):
        i = row0 + r
        values = logits[r]
        if status[i] == IGNORED:
            fill(values, 0.0)
        elif status[i] == KEPT:
            largest = state[i, STATE_MAX]
            total = state[i, STATE_SUM]
            target_total = state[i, STATE_TARGET_TOTAL]
            lse = state[i, STATE_LSE]
            scale = upstream_at(args.row_scale, i)
            # G_j = g ((TW + 2 z_loss LSE) a_j - tw_j),  a_j = exp(z_j - M) / S,  tw_j = eps w_j / C (j != y)
            factor = scale * (target_total + 2.0 * z_loss * lse) / (1.0 + total)
            uniform = scale * args.smoothing / classes
            label = args.target[i]
            inside = col0 <= label < col0 + cols
            raw_label = values[label - col0] if inside else values[0]
            # the tile's class weights as a slice, indexed by j alone: indexed by col0 + j, which
            # may be negative for all LLVM knows, the loop's check for overlap between the row and
            # the weights also took in weight[len + col0 + j] (the wrap-around), a range past the
            # weights' end; a row that lay there ran the scalar loop, whose contractions round
            # differently from the vector loop's (tests/kernels/test_linear_cross_entropy.py)
            weights = args.weight[col0 : col0 + cols]
            for j in range(cols):
                raw = np.float64(values[j])
                logit = _capped(values, raw, cap) if capping else raw
                gradient = factor * exp_difference_for(values, logit, largest)
                gradient -= uniform * (weights[j] if args.weighted else 1.0)
                if capping:
                    tangent = math.tanh(raw / cap)
                    gradient *= 1.0 - tangent * tangent  # d(c tanh(u / c))/du
                values[j] = gradient
            if inside:
                # G_y = g (TW (a_y - 1) + eps/C (W - w_y) + 2 z_loss LSE a_y), a_y - 1 = -T/S where z_y = M
                raw = np.float64(raw_label)
                logit = _capped(values, raw, cap) if capping else raw
                difference = target_minus_one(values, logit, largest, total)
                label_weight = args.weight[label] if args.weighted else 1.0
                gradient = scale * (
                    target_total * difference
                    + args.smoothing / classes * (args.weight_total - label_weight)
                    + 2.0 * z_loss * lse * (difference + 1.0)
                )
                if capping:
                    tangent = math.tanh(raw / cap)
                    gradient *= 1.0 - tangent * tangent
                values[label - col0] = gradient


# ---- the passes -------------------------------------------------------------------------------


def _aligned_empty(length, dtype, alignment=64):
    """An empty 1-D array whose data start on a multiple of ``alignment`` bytes.

    The product tiles live here: OpenBLAS's result for a small float64 GEMM depended on where
    its operand started (measured: grad_input's last bit changed with NumPy's allocation)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.empty(length + alignment // itemsize, dtype=dtype)
    offset = (-raw.ctypes.data % alignment) // itemsize
    return raw[offset : offset + length]


def _tiles(start, stop, size):
    """The fixed tiles of ``size`` that cover [start, stop), ``start`` a multiple of ``size``."""
    return [(first, min(stop, first + size)) for first in range(start, stop, size)]


def _logit_tile(x, linear_weight, linear_bias, rows, cols, scratch):
    """x[rows] W[cols]^T (+ b[cols]) in a contiguous (rows, cols) view of ``scratch``.

    Every GEMM has the shape and layout of its tile, whatever the chunk: BLAS's result for an
    element depends on them (measured with OpenBLAS: on the row's place in the GEMM for
    products of 1024 terms, on the leading dimension of a transposed float64 operand, and a
    GEMM of one row takes the matrix-vector routine).
    """
    tile = scratch[: (rows[1] - rows[0]) * (cols[1] - cols[0])].reshape(rows[1] - rows[0], cols[1] - cols[0])
    weights = np.ascontiguousarray(linear_weight[cols[0] : cols[1]], dtype=tile.dtype)
    np.matmul(x[rows[0] : rows[1]], weights.T, out=tile)
    if linear_bias is not None:
        tile += linear_bias[cols[0] : cols[1]]
    return tile


def _logits_into(chunk, x, linear_weight, linear_bias, row0, col0, cap, scratch):
    """chunk = x[row0:] W[col0:]^T (+ b), one GEMM per product tile, soft-capped if ``cap``."""
    rows, cols = chunk.shape
    for first, last in _tiles(row0, row0 + rows, ROW_TILE):
        for start, stop in _tiles(col0, col0 + cols, PRODUCT_TILE):
            chunk[first - row0 : last - row0, start - col0 : stop - col0] = _logit_tile(
                x, linear_weight, linear_bias, (first, last), (start, stop), scratch)
    if cap > 0.0:
        run_row_blocks(_soft_cap_in_place, rows, chunk, cap)


def _row_logits(x, linear_weight, linear_bias, i, cap):
    """The logits of row i alone (1, C), as the chunks compute them."""
    row = np.empty((1, linear_weight.shape[0]), dtype=x.dtype)
    _logits_into(row, x[i : i + 1], linear_weight, linear_bias, 0, 0, cap, np.empty(PRODUCT_TILE, dtype=x.dtype))
    return row


def _fallback_row(x, linear_weight, linear_bias, target, weight, options, i, scale, z_loss, cap, write):
    """(loss, G or None) of a row whose logits are not all finite, from its materialized logits."""
    reduction, smoothing, ignore_index = options
    row = _row_logits(x, linear_weight, linear_bias, i, cap)
    loss, grad = cross_entropy_forward_backward(
        row, target[i : i + 1], weight=weight, ignore_index=ignore_index, reduction="none",
        label_smoothing=smoothing, grad_output=np.array([scale]),
    )
    loss = float(loss[0])
    lse = float(logsumexp(row.astype(np.float64))[0])
    if z_loss != 0.0:
        loss += z_loss * lse * lse
    if not write:
        return loss, None
    gradient = grad[0].astype(np.float64)
    if z_loss != 0.0:
        gradient += scale * 2.0 * z_loss * lse * softmax(row.astype(np.float64))[0]
    if cap > 0.0:
        raw = _row_logits(x, linear_weight, linear_bias, i, 0.0)
        gradient *= 1.0 - np.tanh(raw[0].astype(np.float64) / cap) ** 2
    return loss, gradient.astype(x.dtype)


def check_precision(precision):
    """``precision`` checked: one of ``PRECISIONS`` (ValueError), a string (TypeError)."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        shown = repr(precision) if isinstance(precision, str) else type(precision).__name__
        raise (ValueError if isinstance(precision, str) else TypeError)(
            f"precision must be one of {PRECISIONS}, got {shown}")


def _validated(x, linear_weight, target, linear_bias, weight, ignore_index, reduction, label_smoothing, z_loss,
               softcap, memory_budget, precision, grad_output):
    x = check_float_array("x", x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (rows, features), got shape {x.shape}")
    linear_weight = check_float_array("linear_weight", linear_weight)
    if linear_weight.ndim != 2 or linear_weight.shape[1] != x.shape[1] or linear_weight.shape[0] < 1:
        raise ValueError(
            f"linear_weight must have shape (classes, {x.shape[1]}) with classes >= 1 (x has {x.shape[1]} features), "
            f"got shape {linear_weight.shape}"
        )
    if linear_weight.dtype != x.dtype:
        raise TypeError(f"linear_weight must have the dtype of x ({x.dtype}), got {linear_weight.dtype}")
    classes = linear_weight.shape[0]
    if linear_bias is not None:
        linear_bias = check_float_array("linear_bias", linear_bias)
        if linear_bias.shape != (classes,):
            raise ValueError(f"linear_bias must have shape ({classes},) (one bias per class), got {linear_bias.shape}")
        if linear_bias.dtype != x.dtype:
            raise TypeError(f"linear_bias must have the dtype of x ({x.dtype}), got {linear_bias.dtype}")
    reduction, smoothing, ignore_index, class_weight, weighted = class_index_options(
        classes, weight, ignore_index, reduction, label_smoothing
    )
    z_loss = check_real_scalar("z_loss", z_loss, minimum=0.0)
    cap = 0.0 if softcap is None else check_real_scalar("softcap", softcap, minimum=0.0, include_minimum=False)
    budget = check_real_scalar("memory_budget", memory_budget, integer=True, minimum=1)
    check_precision(precision)
    args, denominator = class_index_args(target, class_weight, weighted, ignore_index, smoothing, reduction,
                                         grad_output, (x.shape[0],), classes)
    return x, linear_weight, linear_bias, (reduction, smoothing, ignore_index), args, denominator, z_loss, cap, budget


def _linear_cross_entropy(x, linear_weight, target, linear_bias, weight, ignore_index, reduction, label_smoothing,
                          z_loss, softcap, memory_budget, precision, grad_output, write):
    x, linear_weight, linear_bias, options, args, denominator, z_loss, cap, budget = _validated(
        x, linear_weight, target, linear_bias, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
        memory_budget, precision, grad_output,
    )
    dtype = x.dtype  # the outputs'
    # the products' and the statistics' dtype; x converted once, each tile of W where it is taken
    work = np.dtype(np.float64) if precision == "float64" else dtype
    x = np.ascontiguousarray(x, dtype=work)
    rows, features = x.shape
    classes = linear_weight.shape[0]
    plan = chunk_plan(rows, classes, features, work, budget, write)

    # pass 1: the tiles' statistics, merged per row
    partial, target_logit, product = statistics_pass(x, linear_weight, linear_bias, cap, args, plan)
    row_loss = np.empty(rows)
    state = np.zeros((rows, 4))
    status = np.empty(rows, dtype=np.int8)
    _merge_rows(partial, target_logit, args, classes, z_loss, row_loss, state, status)
    fallback = {}
    for i in np.flatnonzero(status == FALLBACK):
        row_loss[i], gradient = _fallback_row(x, linear_weight, linear_bias, target, weight, options, i,
                                              upstream_at_py(args.row_scale, i), z_loss, cap, write)
        if write:
            fallback[int(i)] = gradient
    loss = reduce_losses(row_loss, options[0], (rows,), dtype, denominator, chunked_sum(row_loss))
    if not write:
        return loss, None

    # pass 2: G one product tile at a time, and its products
    grad_input, grad_weight, grad_bias = gradient_pass(x, linear_weight, linear_bias, cap, z_loss, args, state,
                                                       status, fallback, classes, dtype, product)
    result = (loss, grad_input.astype(dtype), grad_weight)
    if linear_bias is not None:
        result += (grad_bias.astype(dtype),)
    return result, True


def statistics_pass(x, linear_weight, linear_bias, cap, args, plan):
    """Pass 1 over the classes of ``linear_weight``: (partial, target_logit, product).

    ``partial[i, k]`` holds row i's statistics of class tile k (``_tile_statistics``),
    ``target_logit[i]`` its target logit where ``args.target[i]`` is one of these classes (0
    elsewhere); ``product`` is the aligned buffer of one product tile, for pass 2.  ``x`` is
    contiguous in the work dtype; ``plan`` is ``chunk_plan``'s for these classes.
    """
    rows = x.shape[0]
    classes = linear_weight.shape[0]
    partial = np.zeros((rows, max(1, -(-classes // plan.tile)), WIDTH))
    target_logit = np.zeros(rows)
    scratch = np.empty((numba.get_num_threads(), min(classes, plan.tile)), dtype=x.dtype)
    product = chunk_loop(x, linear_weight, linear_bias, cap, plan, _tile_statistics, args, partial, target_logit,
                         scratch)
    return partial, target_logit, product


def chunk_loop(x, linear_weight, linear_bias, cap, plan, kernel, *kernel_args):
    """Pass 1's loop: every chunk of ``plan`` computed (``_logits_into``) and handed to
    ``kernel(first, last, part, chunk, row0, col0, plan.tile, *kernel_args)`` over its rows
    (``run_row_blocks``); returns the aligned buffer of one product tile, for pass 2."""
    rows = x.shape[0]
    classes = linear_weight.shape[0]
    product = _aligned_empty(min(max(rows, 1), ROW_TILE) * min(classes, PRODUCT_TILE), x.dtype)
    buffer = np.empty(plan.rows * plan.cols, dtype=x.dtype)
    for col0, col1 in _tiles(0, classes, plan.cols):
        for row0, row1 in _tiles(0, rows, plan.rows):
            chunk = buffer[: (row1 - row0) * (col1 - col0)].reshape(row1 - row0, col1 - col0)
            _logits_into(chunk, x, linear_weight, linear_bias, row0, col0, cap, product)
            run_row_blocks(kernel, row1 - row0, chunk, row0, col0, plan.tile, *kernel_args)
    return product


def gradient_pass(x, linear_weight, linear_bias, cap, z_loss, args, state, status, fallback, classes, dtype,
                  product):
    """Pass 2 over the classes of ``linear_weight``: (grad_input in float64, grad_weight in ``dtype``,
    the bias' gradient in float64 or None).

    G is formed one product tile at a time from the rows' ``state`` and ``status``
    (``_chunk_gradient``; ``classes`` is the count eps/C divides by), the rows in ``fallback``
    (index -> G row) taken as given; grad_input sums G W over the product tiles in tile order.
    """
    return product_loop(x, linear_weight, linear_bias, dtype, product, _chunk_gradient,
                        (classes, args, cap, z_loss, state, status), fallback)


def product_loop(x, linear_weight, linear_bias, dtype, product, kernel, kernel_args, fallback=None, finish=None,
                 kept=None):
    """Pass 2's loop: (grad_input in float64, grad_weight in ``dtype``, the bias' gradient in
    float64 or None).

    For each product tile (class tiles outer, row tiles inner) the tile's logits are
    recomputed and ``kernel(first, last, part, tile, row0, col0, *kernel_args)`` overwrites
    them with G over its rows (``run_row_blocks``), the rows in ``fallback`` (index -> G row)
    taken as given; then grad_input += G W (float64, in tile order) and G^T x summed over the
    row tiles in float64.  A class tile's float64 sum is rounded into grad_weight, or, with
    ``finish``, handed to ``finish(cols, sum, grad_weight[cols])``.  With one row tile the sum
    is the tile's product itself, in the product's dtype (exactly the float64 sum's values).
    ``kept``: the tiles' logits as pass 1 computed them, by (first row, first class), taken
    instead of recomputed (the same GEMMs into aligned buffers: the same bits); ``product``
    may then be None.
    """
    rows, features = x.shape
    shard = linear_weight.shape[0]
    grad_input = np.zeros((rows, features))
    # every class tile writes its rows of grad_weight; aligned, so that a tile's product (written
    # there directly when it is the last word) starts on 64 bytes as the product buffers do
    grad_weight = _aligned_empty(shard * features, dtype).reshape(shard, features)
    if rows == 0:
        grad_weight.fill(0.0)  # no row tile: no product writes it
    grad_bias = np.zeros(shard) if linear_bias is not None else None
    outputs = (_aligned_empty(min(max(rows, 1), ROW_TILE) * features, x.dtype),
               _aligned_empty(min(max(shard, 1), PRODUCT_TILE) * features, x.dtype))
    summed = rows > ROW_TILE
    sums = np.empty((min(max(shard, 1), PRODUCT_TILE), features)) if summed else None
    for cols in _tiles(0, shard, PRODUCT_TILE):
        accumulator = None
        if summed:
            accumulator = sums[: cols[1] - cols[0]]
            accumulator.fill(0.0)
        for row_tile in _tiles(0, rows, ROW_TILE):
            if kept is not None:
                tile = kept.pop((row_tile[0], cols[0]))
            else:
                tile = _logit_tile(x, linear_weight, linear_bias, row_tile, cols, product)
            run_row_blocks(kernel, tile.shape[0], tile, row_tile[0], cols[0], *kernel_args)
            for i, gradient in (fallback or {}).items():
                if row_tile[0] <= i < row_tile[1]:
                    tile[i - row_tile[0]] = gradient[cols[0] : cols[1]]
            product_of_tile = _accumulate_products(tile, x, linear_weight, row_tile, cols, grad_input, grad_weight,
                                                   grad_bias, accumulator, outputs, finish is not None)
        if finish is not None:
            finish(cols, accumulator if summed else product_of_tile, grad_weight[cols[0] : cols[1]])
        elif accumulator is not None:
            grad_weight[cols[0] : cols[1]] = accumulator
    return grad_input, grad_weight, grad_bias


def upstream_at_py(row_scale, i):
    """``losses.upstream_at`` in Python: row i's dLoss/dloss_i."""
    return float(row_scale[i] if row_scale.shape[0] != 1 else row_scale[0])


def _accumulate_products(tile, x, linear_weight, rows, cols, grad_input, grad_weight, grad_bias, accumulator,
                         outputs, finished=False):
    """The products of one tile G of rows x cols: grad_input[rows] += G W[cols] in float64,
    G^T x[rows] into grad_weight[cols] (or added to the float64 ``accumulator`` when the rows
    take several tiles), the bias' gradient += G's column sums in float64.  Returns G^T x[rows]
    as computed, before any rounding into grad_weight; ``finished``: the caller writes
    grad_weight[cols] from it, and it is left in a buffer of ``outputs``.

    Both products are written into the aligned buffers ``outputs`` (``_aligned_empty``), not
    into arrays NumPy allocates: OpenBLAS's small-GEMM result for an element depended on
    where its output started, which changed a last bit of G W from call to call."""
    into_dx, into_dw = outputs
    features = x.shape[1]
    dx = into_dx[: (rows[1] - rows[0]) * features].reshape(rows[1] - rows[0], features)
    np.matmul(tile, np.ascontiguousarray(linear_weight[cols[0] : cols[1]], dtype=tile.dtype), out=dx)
    grad_input[rows[0] : rows[1]] += dx
    if accumulator is None and grad_weight.dtype == tile.dtype and not finished:
        # the product is the result: written in place (the GEMM's threads touch the fresh pages;
        # a copy from a buffer faulted them in one thread, 14 ms per 4 MiB tile on this machine)
        dw = np.matmul(tile.T, x[rows[0] : rows[1]], out=grad_weight[cols[0] : cols[1]])
    else:
        dw = into_dw[: (cols[1] - cols[0]) * features].reshape(cols[1] - cols[0], features)
        np.matmul(tile.T, x[rows[0] : rows[1]], out=dw)
        if accumulator is not None:
            accumulator += dw
        elif not finished:
            grad_weight[cols[0] : cols[1]] = dw  # rounded once to the output's dtype
    if grad_bias is not None:
        grad_bias[cols[0] : cols[1]] += tile.sum(axis=0, dtype=np.float64)
    return dw


# ---- public API ---------------------------------------------------------------------------------


def linear_cross_entropy(x, linear_weight, target, *, linear_bias=None, weight=None, ignore_index=-100,
                         reduction="mean", label_smoothing=0.0, z_loss=0.0, softcap=None,
                         memory_budget=DEFAULT_MEMORY_BUDGET, precision="input"):
    r"""Cross-entropy of the logits of a linear layer, without forming the (rows, classes) logits.

    Equal to ``cross_entropy(x @ linear_weight.T + linear_bias, target, ...)`` (softmaxlab's,
    with torch's ``F.cross_entropy`` semantics: class indices, class weights,
    ``ignore_index``, label smoothing, reductions), with two options of large-vocabulary
    training:

    * ``softcap=c``: the logits are ``c tanh(z / c)`` before everything (Gemma 2);
    * ``z_loss``: each row not ignored gains ``z_loss * LSE(z)^2`` (PaLM's auxiliary
      loss), not multiplied by the class weight; the mean divides the sum by the
      cross-entropy's denominator (the sum of w_y over the rows not ignored).

    The loss is :func:`cross_entropy`'s of the same logits bit for bit (the same tiles,
    merge and formula; ``docs/design.md``'s error model applies to it).  The logits are
    computed by BLAS in the inputs' dtype (for float32 inputs, float32 products, as
    ``x @ W.T`` is), one GEMM per fixed tile of classes: where BLAS rounds an element
    differently by the GEMM's width (OpenBLAS on AVX2 CPUs), they may differ from one
    ``x @ W.T`` in their last bits.  Results do not depend on ``memory_budget`` or Numba's thread
    count (the module's docstring has the exact guarantee); BLAS's own thread count can change
    the gradients' last bits (``docs/design.md``, the determinism bullets).

    Args:
        x: float32 or float64 array ``(N, D)``; not modified.
        linear_weight: array ``(C, D)`` of ``x``'s dtype, C >= 1 (a ``torch.nn.Linear``'s
            ``weight``); not modified.
        target: integer class indices ``(N,)`` in ``[0, C)`` or ``ignore_index``.
        linear_bias: optional array ``(C,)`` of ``x``'s dtype.
        weight, ignore_index, reduction, label_smoothing: as :func:`cross_entropy`.
        z_loss: the z-loss coefficient, >= 0 (PaLM used 1e-4).
        softcap: None, or the cap c > 0.
        memory_budget: bytes the chunk buffers may take (default ``DEFAULT_MEMORY_BUDGET``,
            32 MiB); at least one tile is always taken (``chunk_plan``).
        precision: ``"input"`` (default): the logits, G and the products in the inputs'
            dtype; ``"float64"``: for float32 inputs, x and each tile of W are converted to
            float64 and everything is computed as for float64 inputs (the loss is then
            ``cross_entropy`` of the float64 logits, rounded once to float32; about twice
            the time, and x's float64 copy in memory); the outputs keep the inputs' dtype.

    Returns:
        The loss in ``x``'s dtype: a NumPy scalar for ``"mean"`` and ``"sum"``, shape
        ``(N,)`` for ``"none"``.
    """
    loss, _ = _linear_cross_entropy(x, linear_weight, target, linear_bias, weight, ignore_index, reduction,
                                    label_smoothing, z_loss, softcap, memory_budget, precision, 1.0, False)
    return loss


def linear_cross_entropy_forward_backward(x, linear_weight, target, *, linear_bias=None, weight=None,
                                          ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                                          softcap=None, memory_budget=DEFAULT_MEMORY_BUDGET, precision="input",
                                          grad_output=1.0):
    r""":func:`linear_cross_entropy` and its gradients in x, the weight and the bias.

    With G = dloss/dz (rows, classes), never formed whole (``docs/proofs/linear_cross_entropy.md``):

    .. math::
        G_{ij} = g_i \Big(\big(TW_i + 2\,\zeta\,\mathrm{LSE}_i\big)\, a_{ij} - \tilde w_{ij}\Big)\,
        \big(1 - \tanh^2(u_{ij}/c)\big),\quad
        \frac{\partial L}{\partial x} = G W,\quad
        \frac{\partial L}{\partial W} = G^\top x,\quad
        \frac{\partial L}{\partial b} = \textstyle\sum_i G_{i\cdot}

    (u the logits before the cap, the last factor only with ``softcap``; g_i the upstream
    gradient and the reduction's factor).  G is computed in float64 from the row's
    statistics and rounded once to the dtype; the products are BLAS's in the dtype, per
    fixed tile, summed in float64 and rounded once.

    Args:
        x, linear_weight, target, linear_bias, weight, ignore_index, reduction,
        label_smoothing, z_loss, softcap, memory_budget, precision: as :func:`linear_cross_entropy`.
        grad_output: the upstream gradient: a real number for ``"mean"`` and ``"sum"``; for
            ``"none"`` a number or a float array ``(N,)``.

    Returns:
        ``(loss, grad_input, grad_linear_weight)``, and ``grad_linear_bias`` last when
        ``linear_bias`` is given; each gradient of its input's shape and dtype.
    """
    result, _ = _linear_cross_entropy(x, linear_weight, target, linear_bias, weight, ignore_index, reduction,
                                      label_smoothing, z_loss, softcap, memory_budget, precision, grad_output, True)
    return result
