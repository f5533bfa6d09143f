"""Softmax cross-entropy with PyTorch's semantics, forward and gradient in one fused kernel.

``cross_entropy(logits, target, weight=, ignore_index=, reduction=, label_smoothing=)``
follows ``torch.nn.functional.cross_entropy`` for class-index and class-probability
targets, with every option combined.  ``cross_entropy_forward_backward`` returns the
loss and dL/dlogits from one parallel kernel and no other (rows, classes) temporary:
per block of 32 KiB, a pass for the max and one that computes e_j = exp(z_j - m_b),
sums them and stores them in the gradient's block (the block is in L1 by then); after
the row's (max, sum) merge, a pass that scales the stored e_j in place into the gradient
(one exponential per element, as ``softmax`` does).  The logits are read from memory
once, the gradient written once; ``cross_entropy`` alone skips the stores and the last
pass.

The per-row loss, for a row z with C classes, class weights w (all 1 without ``weight``)
and label smoothing eps, is ``sum_c tw_c (LSE(z) - z_c)`` with the weighted target

* class index y:          tw_c = (1 - eps) w_y [c = y] + eps w_c / C
* class probabilities p:  tw_c = w_c ((1 - eps) p_c + eps / C)

and its gradient is ``dL/dz_j = TW a_j - tw_j`` with ``a = softmax(z)`` and
``TW = sum_c tw_c`` (proof book: ``docs/proofs/cross_entropy.md``, sections
"cross-entropy gradient, soft target" and "label smoothing"; for TW = 1 it is a - y).

How the kernel keeps its accuracy:

* ``LSE(z) - z_c = (M - z_c) + log1p(T)`` with M the row max and T = S - 1 summed
  without cancellation: the terms equal to M (each exp(0) = 1 exactly) are counted, not
  summed, for float64 rows and, where T < 1/16, for float32 rows
  (``_numerics/rows.py``, ``max_sum_exp_stored``; above that T = S - 1 of the plain sum is accurate to
  2**-36).  A target that
  holds the max then has loss log1p(T), exact however small (e.g. 1000 e^-30), and
  ``a_y - 1 = -T / S`` with no ``a_y - 1`` rounding to 0.
* The smoothing term ``sum_c w_c (M - z_c)`` is a sum of non-negative terms, per block
  around the block's max and merged, never ``C LSE - sum z`` (which cancels for large
  logits).
* ``x - max`` enters the exponential exactly (``two_sum``); float32 rows take their
  exponentials in float32 arithmetic (``_numerics/exp.py``, ``exp32``, 0.87 ULP), stored in the gradient's
  block (or, for the loss alone, in one block of scratch per thread, so that
  ``cross_entropy`` and ``cross_entropy_forward_backward`` give the same loss bit for bit),
  and everything else in float64.

The kernels run on the loss driver (``_driver/losses.py``, ``make_loss_kernel``): blocks
of a fixed size, reduced, merged per row in a fixed order and written, bit-identical for
any number of threads.  The class-index kernel is built by ``make_class_index_kernel``,
whose ``finish`` hook maps the row's cross-entropy to the loss: the identity here, the
smooth hinge in ``_hinge.py`` (a function of the cross-entropy).

The module is a little over 600 lines: its two kernels (class indices, class
probabilities) share the gap sums, the merge of the gaps and the edge logic, which would
otherwise be split across modules that import each other's internals.

Edges (``docs/design.md``, "Semantics at the edges"): a target logit of -inf gives +inf loss and
a finite gradient; a row of all -inf gives +inf loss and zero gradient; NaN stays in its
row; ignored rows have zero loss and zero gradient and do not count anywhere (also not in
the smoothing term, nor in the mean's denominator); a mean over nothing (every row
ignored, every target weight 0, or an empty batch) is 0 with zero gradient (PyTorch
returns NaN there); a masked logit (-inf) whose smoothed target weight is 0 adds 0, not
0 * inf = NaN.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import get_thread_id, njit
from numba.extending import overload

from ._config import JIT_OPTIONS, STRICT_FASTMATH, block_schedule, streamed_rows
from ._driver.losses import (
    NO_WEIGHT,
    block_factor,
    exp_slot,
    infinite_index,
    logit_rows,
    make_loss_kernel,
    merge_pair,
    run_loss_kernel,
    target_minus_one,
    upstream_at,
)
from ._driver.reduction import row_scales
from ._outputs import thread_rows
from ._numerics.rows import (SUM_CHUNK, fill, following_block, gap_sums, max_sum_exp_stored, pairwise_sum,
                             scale_shift_in_place, stream_scaled, target_gap_sums)
from ._validation import (
    check_class_indices_counted,
    check_class_weight,
    check_real_scalar,
    check_reduction,
)

__all__ = ["cross_entropy", "cross_entropy_forward_backward"]

PAGE = "docs/proofs/cross_entropy.md"


ClassIndexArgs = namedtuple(
    "ClassIndexArgs",
    [
        "target",  # int64 (rows,)
        "weight",  # float64 (classes,), or NO_WEIGHT
        "row_scale",  # float64 (rows,) or (1,): ``reduction.row_scales``, read by ``upstream_at``
        "ignore_index",  # int64
        "smoothing",  # float64, epsilon
        "weighted",  # bool: whether ``weight`` is read
        "weight_total",  # float64, W = sum_c w_c (C without weights)
        "margin",  # float64, the parameter of ``finish`` (0 for cross-entropy)
    ],
)
# Large float32 gradients of long rows are streamed (``_config.streamed_rows``): the reduce
# stores a row's e_j in the thread's row of ``scratch`` (threads, classes) instead of the
# gradient, and the write scales them into the gradient with non-temporal stores
StreamedClassIndexArgs = namedtuple("StreamedClassIndexArgs", ClassIndexArgs._fields + ("scratch",))

# Columns of ``partial`` (per block) and ``stats`` (per row), both kernels of this module.
MAX = 0  # m_b, M: the max (of the block, of the row)
SUM = 1  # t_b, T: the sum of exp(z - max) minus one
ANCHOR = 2  # per block: the anchor of the gaps (the block's max, 0 if infinite)
GAPS = 3  # per block: d_b = sum_c tw_c (anchor_b - z_c)
GAP_WEIGHT = 4  # per block: the sum of the gaps' weights (W_b, or TW_b for probabilities)
TARGET_TOTAL = 2  # per row: TW = sum_c tw_c
FACTOR = 3  # per row: the gradient's factor from ``finish`` (1 for cross-entropy)
WIDTH = 5
ProbabilityArgs = namedtuple(
    "ProbabilityArgs",
    [
        "probabilities",  # (rows, classes) of the logits' dtype
        "weight",  # float64 (classes,), or NO_WEIGHT
        "row_scale",  # float64 (rows,) or (1,): ``reduction.row_scales``, read by ``upstream_at``
        "smoothing",  # float64, epsilon
        "weighted",  # bool: whether ``weight`` is read
    ],
)


@njit(fastmath=False, **JIT_OPTIONS)
def _probability_weight(probability, weight, keep, uniform):
    # tw_c = w_c ((1 - eps) p_c + eps / C), rounded as the gap sums round it (rows.target_gap_sums)
    return weight * (keep * np.float64(probability) + uniform)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _gap_sums(values, weights, anchor, weighted):
    """(sum_j w_j (anchor - z_j), sum_j w_j) over a block (w = 1 unless ``weighted``); float64.

    Each chunk of SUM_CHUNK by ``rows.gap_sums`` (its order fixed on 32 lanes), the chunks
    added in order: the same bits in every kernel that calls it (cross_entropy, the fused
    linear cross-entropy), compiled in the process or loaded from the cache.
    """
    total = 0.0
    weight_total = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        if weighted:
            partial, chunk_weight = gap_sums(chunk, weights[base : base + SUM_CHUNK], anchor)
        else:
            partial, chunk_weight = gap_sums(chunk, None, anchor)
        total += partial
        weight_total += chunk_weight
    return total, weight_total


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _probability_gap_sums(values, probabilities, weights, anchor, keep, uniform, weighted):
    """(sum_j tw_j (anchor - z_j), sum_j tw_j) over a block, tw_j = w_j ((1 - eps) p_j + eps/C);
    each chunk by ``rows.target_gap_sums`` (an order of its own), the chunks added in order."""
    total = 0.0
    weight_total = 0.0
    for base in range(0, values.shape[0], SUM_CHUNK):
        chunk = values[base : base + SUM_CHUNK]
        probability_chunk = probabilities[base : base + SUM_CHUNK]
        if weighted:
            partial, chunk_weight = target_gap_sums(chunk, probability_chunk, weights[base : base + SUM_CHUNK], anchor,
                                                    keep, uniform)
        else:
            partial, chunk_weight = target_gap_sums(chunk, probability_chunk, None, anchor, keep, uniform)
        total += partial
        weight_total += chunk_weight
    return total, weight_total


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_gaps(largest, partial, i):
    """sum_c tw_c (M - z_c) from the blocks' (anchor_b, d_b, TW_b) in ``partial[i, :, ANCHOR:]``.

    d_b = sum_{c in b} tw_c (anchor_b - z_c), so the row's sum is
    sum_b d_b + (M - anchor_b) TW_b: non-negative terms, summed pairwise.
    """
    blocks = partial.shape[1]
    if blocks == 1:
        shift = largest - partial[i, 0, ANCHOR]
        return partial[i, 0, GAPS] + (shift * partial[i, 0, GAP_WEIGHT] if shift != 0.0 else 0.0)
    terms = np.empty(blocks)
    for k in range(blocks):
        shift = largest - partial[i, k, ANCHOR]
        terms[k] = partial[i, k, GAPS] + (shift * partial[i, k, GAP_WEIGHT] if shift != 0.0 else 0.0)
    return pairwise_sum(terms)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _weighted_infinity(weight):
    """The limit of weight * (+inf): +inf, -inf, or 0 for a zero weight."""
    if weight > 0.0:
        return np.inf
    if weight < 0.0:
        return -np.inf
    return 0.0 if weight == 0.0 else np.nan


# ---- class-index targets -------------------------------------------------------------------
#
# args: ``ClassIndexArgs``; state per block: MAX m_b, SUM t_b, and with label smoothing ANCHOR
# anchor_b, GAPS d_b = sum_c w_c (anchor_b - z_c), GAP_WEIGHT W_b = sum_c w_c;
# stats per row: MAX M, SUM T, TARGET_TOTAL TW, FACTOR the gradient's factor (``finish``)



@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def cross_entropy_finish(loss, margin):
    """``make_class_index_kernel``'s ``finish`` for cross-entropy: the loss, gradient factor 1."""
    return loss, 1.0


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _gradient_factor(scale, target_total, block, total):
    """g TW exp(m_b - M) / S: what the stored e_j of a block are multiplied by."""
    return scale * target_total * block / (1.0 + total)


def _index_finite_gradient(logits, args, destination, start, total, target_total, scale, block):
    """A block's gradient but the target's, row max M finite, from its stored e_j and ``block`` = exp(m_b - M).

    The target entry is left to the caller (``_index_target_gradient``): written here, the
    write was lost when this function was inlined into ``index_row`` (Numba's IR inliner;
    the gradient came out as softmax's, caught by test_every_option_combination_matches_torch).
    """
    uniform = scale * args.smoothing / logits.shape[1]  # g eps / C
    factor = _gradient_factor(scale, target_total, block, total)
    # dL/dz_j = g (TW a_j - tw_j),  a_j = e_j exp(m_b - M) / S,  tw_j = eps w_j / C  (j != y)
    # with e_j = exp(z_j - m_b) stored by the reduce (a_j - y_j without smoothing;
    # docs/proofs/cross_entropy.md#label-smoothing)
    if args.weighted and args.smoothing != 0.0:
        weights = args.weight[start : start + destination.shape[0]]
        for j in range(destination.shape[0]):
            destination[j] = factor * np.float64(destination[j]) - uniform * weights[j]
    else:
        scale_shift_in_place(destination, factor, 0.0, uniform)


# inlined into the fused row (2% at 4096 x 1000 float32, measured); called from the block path,
# whose rows of several blocks do not feel a call per block
_index_finite_gradient_inline = njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)(_index_finite_gradient)
_index_finite_gradient = njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)(_index_finite_gradient)


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _index_target_gradient(logits, args, destination, i, largest, total, target_total, scale):
    """dL/dz_y of a kept row with a finite max: g (TW (a_y - 1) + eps/C (W - w_y)), a_y - 1 = -T/S when z_y = M.

    ``destination`` is the gradient's block, as ``_index_finite_gradient`` takes it (its
    type, shared, compiles ``target_minus_one`` once)."""
    label = args.target[i]
    label_weight = args.weight[label] if args.weighted else 1.0
    difference = target_minus_one(destination, logits[i, label], largest, total)
    return scale * (target_total * difference + args.smoothing / logits.shape[1] * (args.weight_total - label_weight))


def _exponential_slot(args, grad, i, start, stop, write):
    """Where ``_reduce_index`` stores a block's e_j: ``exp_slot``, or for streamed rows the
    block's place in this thread's scratch row (JIT only)."""
    raise NotImplementedError("_exponential_slot is only callable from JIT code")


@overload(_exponential_slot, inline="always", jit_options=JIT_OPTIONS)
def _exponential_slot_impl(args, grad, i, start, stop, write):
    if "scratch" in args.fields:
        return lambda args, grad, i, start, stop, write: args.scratch[get_thread_id(), start:stop]
    return lambda args, grad, i, start, stop, write: exp_slot(grad, i, start, stop, write)


def _stored_gradient(logits, args, destination, start, total, target_total, scale, block):
    """``_index_finite_gradient`` of a block whose e_j the reduce stored (JIT only).

    Streamed rows read them from the thread's scratch row: without label smoothing the
    gradient is g TW a_j, the e_j times one factor, written by ``stream_scaled`` (the bits of
    ``scale_shift_in_place``); with it the e_j are copied in and scaled in place.
    """
    raise NotImplementedError("_stored_gradient is only callable from JIT code")


@overload(_stored_gradient, inline="always", jit_options=JIT_OPTIONS)
def _stored_gradient_impl(logits, args, destination, start, total, target_total, scale, block):
    if "scratch" in args.fields:

        def streamed(logits, args, destination, start, total, target_total, scale, block):
            stored = args.scratch[get_thread_id(), start : start + destination.shape[0]]
            if args.smoothing == 0.0:
                # _index_finite_gradient's write, its shift 0
                stream_scaled(stored, destination, _gradient_factor(scale, target_total, block, total), 0.0)
                return
            destination[:] = stored
            _index_finite_gradient(logits, args, destination, start, total, target_total, scale, block)

        return streamed

    def in_place(logits, args, destination, start, total, target_total, scale, block):
        _index_finite_gradient(logits, args, destination, start, total, target_total, scale, block)

    return in_place


# The block functions are calls, not inlined: each is used twice in the kernel (row and split
# schedules), and inlined they made the kernel's compile 17 s instead of 12 (float32, measured);
# the rows that take them (several blocks, or not fused) spend far longer in their loops.
@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce_index(logits, args, grad, i, k, start, stop, partial, write):
    if args.target[i] == args.ignore_index:
        return
    values = logits[i, start:stop]
    # e_j = exp(z_j - m_b) stored in the gradient's block (the write scales it in place), or in
    # scratch for the loss alone (the same T either way), the block read next prefetched
    # meanwhile (``following_block``; docs/performance.md, fifteenth session)
    largest, total = max_sum_exp_stored(values, _exponential_slot(args, grad, i, start, stop, write),
                                        following_block(logits, i, start, stop))
    partial[i, k, MAX] = largest
    partial[i, k, SUM] = total
    if args.smoothing != 0.0:
        anchor = largest if math.isfinite(largest) else 0.0
        partial[i, k, ANCHOR] = anchor
        partial[i, k, GAPS], partial[i, k, GAP_WEIGHT] = _gap_sums(values, args.weight[start:stop], anchor, args.weighted)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_index(logits, args, grad, i, k, start, stop, partial, stats):
    destination = grad[i, start:stop]
    label = args.target[i]
    if label == args.ignore_index:
        fill(destination, 0.0)
        return
    largest, total, target_total = stats[i, MAX], stats[i, SUM], stats[i, TARGET_TOTAL]
    scale = upstream_at(args.row_scale, i) * stats[i, FACTOR]
    uniform = scale * args.smoothing / logits.shape[1]  # g eps / C
    label_weight = args.weight[label] if args.weighted else 1.0
    if math.isfinite(largest):
        block_largest = partial[i, k, MAX]
        if math.isfinite(block_largest):
            factor = block_factor(block_largest, largest)
            _stored_gradient(logits, args, destination, start, total, target_total, scale, factor)
        else:
            fill(destination, 0.0)  # a block of only -inf: e_j = 0 (nothing was stored), factor 0
            _index_finite_gradient(logits, args, destination, start, total, target_total, scale, 0.0)
        if start <= label < stop:
            grad[i, label] = _index_target_gradient(logits, args, destination, i, largest, total, target_total, scale)
        return
    if largest == np.inf and total == 0.0:
        # one +inf: softmax is one-hot there, dL/dz_j = g (TW [z_j = inf] - tw_j)
        values = logits[i, start:stop]
        weights = args.weight[start:stop]  # indexed by j alone: see _linear_cross_entropy._chunk_gradient
        for j in range(values.shape[0]):
            one_hot = target_total if values[j] == np.inf else 0.0
            destination[j] = scale * one_hot - uniform * (weights[j] if args.weighted else 1.0)
        if start <= label < stop:
            one_hot = target_total if values[label - start] == np.inf else 0.0
            destination[label - start] = scale * (one_hot - (1.0 - args.smoothing) * label_weight) - uniform * label_weight
        return
    # every logit -inf: zero gradient (docs/design.md, "Semantics at the edges"); NaN or several +inf: NaN
    fill(destination, 0.0 if (largest == -np.inf and total == -1.0) else np.nan)


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def index_finite_cross_entropy(args, label, classes, largest, label_value, total, gaps):
    """(cross-entropy, TW) of a kept row with label ``label`` whose max M is finite.

    ``label_value`` is z_y as a float64, ``total`` the row's T, ``gaps`` = sum_c w_c (M - z_c)
    (0 without smoothing); ``args`` a ``ClassIndexArgs``.  Shared by this module's kernel and
    the fused linear cross-entropy (``_linear_cross_entropy.py``), whose loss is this one's bit for bit.
    """
    label_weight = args.weight[label] if args.weighted else 1.0
    hard = (1.0 - args.smoothing) * label_weight  # tw_y without the uniform part
    uniform = args.smoothing / classes  # eps / C, times w_c for every class
    log_total = math.log1p(total)
    # L = (1 - eps) w_y (LSE - z_y) + eps/C sum_c w_c (LSE - z_c),  LSE - z_c = (M - z_c) + log1p(T)
    loss = hard * ((largest - label_value) + log_total) if hard != 0.0 else 0.0
    # uniform, not eps: an eps below C * 2**-1074 makes eps/C 0 (as the gradient takes it), and
    # 0 * (a masked logit's +inf gap) would be NaN
    if uniform != 0.0:
        loss += uniform * (gaps + args.weight_total * log_total)
    return loss, hard + uniform * args.weight_total  # TW = sum_c tw_c


def make_class_index_kernel(finish, plain, fused=True):
    """The class-index loss kernel (``make_loss_kernel``) whose row loss is ``finish`` of the cross-entropy.

    ``finish(l, margin) -> (loss, factor)`` (a JIT function) maps a row's cross-entropy l to
    its loss and the factor its gradient is multiplied by: ``cross_entropy_finish`` here
    (inlined, the identity and 1), ``_hinge._smooth_hinge_of_cross_entropy`` for the smooth
    hinge.  Each call builds its own kernel, compiled on its first use.  ``plain`` (True for cross-entropy) lets the
    fused row take its shortcut for the default options, which leaves ``finish`` out.
    Without ``fused`` every row takes the block functions (the tests compare both).
    ``args`` is a ``ClassIndexArgs``.
    """

    @njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
    def index_finite_loss(logits, args, i, largest, total, gaps):
        """(loss, TW, gradient factor) of a kept row whose max M is finite; ``gaps`` = sum_c w_c (M - z_c)."""
        label = args.target[i]
        loss, target_total = index_finite_cross_entropy(
            args, label, logits.shape[1], largest, np.float64(logits[i, label]), total, gaps
        )
        loss, factor = finish(loss, args.margin)
        return loss, target_total, factor

    @njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
    def index_row(logits, args, grad, row_loss, i, write):
        """A kept row of one block with a finite max in one piece (``make_loss_kernel``'s ``fused_row``).

        The arithmetic of ``_reduce_index``, ``merge_index`` and ``_write_index`` for such a
        row (its block is the row: m_b = M, anchor M, the gaps unshifted), without the block
        state: 4-5% faster than the three at 4096 x 1000 float32, 7-9% with label smoothing
        (measured side by side, 1 and 2 threads).
        """
        label = args.target[i]
        if label == args.ignore_index:
            return False
        values = logits[i]
        classes = values.shape[0]
        destination = exp_slot(grad, i, 0, classes, write)
        # the next row prefetched while this one takes its exponentials (``following_block``)
        largest, total = max_sum_exp_stored(values, destination, following_block(logits, i, 0, classes))
        if not math.isfinite(largest):
            return False
        if plain and args.smoothing == 0.0 and not args.weighted:
            # the default options, spelled out: the general expressions below with tw = onehot(y),
            # TW = 1 and no uniform part, which they give exactly (2.5-3% faster at 4096 x 1000
            # float32, measured; a shift of 0 known here saves the gradient loop its branch)
            row_loss[i] = (largest - np.float64(values[label])) + math.log1p(total)
            if write:
                scale = upstream_at(args.row_scale, i)
                # dL/dz_j = g a_j (j != y), g (a_y - 1);  a_y - 1 + 0.0: the general expression's +0
                # for a row whose T is 0
                scale_shift_in_place(destination, scale / (1.0 + total), 0.0, 0.0)
                grad[i, label] = scale * (target_minus_one(destination, values[label], largest, total) + 0.0)
            return True
        gaps = _gap_sums(values, args.weight[0:classes], largest, args.weighted)[0] if args.smoothing != 0.0 else 0.0
        loss, target_total, factor = index_finite_loss(logits, args, i, largest, total, gaps)
        row_loss[i] = loss
        if write:
            scale = upstream_at(args.row_scale, i) * factor
            _index_finite_gradient_inline(logits, args, destination, 0, total, target_total, scale, 1.0)
            grad[i, label] = _index_target_gradient(logits, args, destination, i, largest, total, target_total, scale)
        return True

    @njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
    def merge_index(logits, args, i, partial, stats):
        label = args.target[i]
        stats[i, FACTOR] = 1.0
        if label == args.ignore_index:
            return 0.0
        classes = logits.shape[1]
        largest, total = merge_pair(logits, i, partial, MAX)
        stats[i, MAX] = largest
        stats[i, SUM] = total
        if math.isfinite(largest):
            gaps = _merge_gaps(largest, partial, i) if args.smoothing != 0.0 else 0.0
            loss, stats[i, TARGET_TOTAL], stats[i, FACTOR] = index_finite_loss(logits, args, i, largest, total, gaps)
            return loss
        label_weight = args.weight[label] if args.weighted else 1.0
        hard = (1.0 - args.smoothing) * label_weight  # tw_y without the uniform part
        uniform = args.smoothing / classes  # eps / C, times w_c for every class
        stats[i, TARGET_TOTAL] = hard + uniform * args.weight_total  # TW = sum_c tw_c
        if total != total:  # a NaN in the row
            loss = np.nan
        elif largest == -np.inf:  # every logit -inf: LSE - z_c = +inf for every class
            loss = _weighted_infinity(hard) + (_weighted_infinity(uniform * args.weight_total) if args.smoothing != 0.0 else 0.0)
        elif total != 0.0:  # several +inf: softmax has no limit
            loss = np.nan
        else:
            # exactly one +inf, at k: softmax is one-hot at k, LSE - z_k -> 0, LSE - z_c = +inf elsewhere
            k = infinite_index(logits[i])
            loss = 0.0 if label == k else _weighted_infinity(hard)
            if args.smoothing != 0.0:
                loss += _weighted_infinity(uniform * (args.weight_total - (args.weight[k] if args.weighted else 1.0)))
        loss, stats[i, FACTOR] = finish(loss, args.margin)
        return loss

    if fused:
        return make_loss_kernel(_reduce_index, merge_index, _write_index, WIDTH, index_row)
    return make_loss_kernel(_reduce_index, merge_index, _write_index, WIDTH)


# also compiled for ``StreamedClassIndexArgs`` (one kernel: a second one would hold closures
# of its own with the same cache key, ``tests/kernels/test_cache.py``)
_index_kernel = make_class_index_kernel(cross_entropy_finish, plain=True)


# ---- class-probability targets -------------------------------------------------------------
#
# args: ``ProbabilityArgs``; state per block: MAX m_b, SUM t_b, ANCHOR anchor_b,
# GAPS d_b = sum_c tw_c (anchor_b - z_c), GAP_WEIGHT TW_b = sum_c tw_c;
# stats per row: MAX M, SUM T, TARGET_TOTAL TW (FACTOR unused)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce_probability(logits, args, grad, i, k, start, stop, partial, write):
    values = logits[i, start:stop]
    largest, total = max_sum_exp_stored(values, exp_slot(grad, i, start, stop, write),
                                        following_block(logits, i, start, stop))
    anchor = largest if math.isfinite(largest) else 0.0
    partial[i, k, MAX] = largest
    partial[i, k, SUM] = total
    partial[i, k, ANCHOR] = anchor
    partial[i, k, GAPS], partial[i, k, GAP_WEIGHT] = _probability_gap_sums(
        values, args.probabilities[i, start:stop], args.weight[start:stop], anchor, 1.0 - args.smoothing,
        args.smoothing / logits.shape[1], args.weighted,
    )


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _merge_probability(logits, args, i, partial, stats):
    largest, total = merge_pair(logits, i, partial, MAX)
    target_total = pairwise_sum(partial[i, :, GAP_WEIGHT].copy()) if partial.shape[1] > 1 else partial[i, 0, GAP_WEIGHT]
    stats[i, MAX] = largest
    stats[i, SUM] = total
    stats[i, TARGET_TOTAL] = target_total
    if math.isfinite(largest):
        # L = sum_c tw_c (LSE - z_c) = sum_c tw_c (M - z_c) + TW log1p(T)
        log_total = math.log1p(total)
        return _merge_gaps(largest, partial, i) + (target_total * log_total if target_total != 0.0 else 0.0)
    if total != total:
        return np.nan
    if largest == -np.inf:
        return _weighted_infinity(target_total)
    if total != 0.0:
        return np.nan
    k = infinite_index(logits[i])
    uniform = args.smoothing / logits.shape[1]
    target_k = _probability_weight(args.probabilities[i, k], args.weight[k] if args.weighted else 1.0, 1.0 - args.smoothing, uniform)
    return _weighted_infinity(target_total - target_k)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_probability(logits, args, grad, i, k, start, stop, partial, stats):
    destination = grad[i, start:stop]
    targets = args.probabilities[i, start:stop]
    largest, total, target_total = stats[i, MAX], stats[i, SUM], stats[i, TARGET_TOTAL]
    scale = upstream_at(args.row_scale, i)
    keep = scale * (1.0 - args.smoothing)
    uniform = scale * args.smoothing / logits.shape[1]
    if math.isfinite(largest):
        block_largest = partial[i, k, MAX]
        factor = scale * target_total * block_factor(block_largest, largest) / (1.0 + total)
        if not math.isfinite(block_largest):  # a block of only -inf: e_j = 0, nothing was stored
            factor = 0.0
            fill(destination, 0.0)
        # dL/dz_j = g (TW a_j - tw_j),  a_j = e_j exp(m_b - M) / S,  tw_j = w_j ((1 - eps) p_j + eps / C)
        # (docs/proofs/cross_entropy.md#cross-entropy-gradient-soft-target)
        if args.weighted:
            weights = args.weight[start:stop]
            for j in range(destination.shape[0]):
                destination[j] = factor * np.float64(destination[j]) - weights[j] * (
                    keep * np.float64(targets[j]) + uniform
                )
        else:
            for j in range(destination.shape[0]):
                destination[j] = factor * np.float64(destination[j]) - (keep * np.float64(targets[j]) + uniform)
        return
    if largest == np.inf and total == 0.0:
        values = logits[i, start:stop]
        weights = args.weight[start:stop]
        for j in range(values.shape[0]):
            one_hot = scale * target_total if values[j] == np.inf else 0.0
            class_weight = weights[j] if args.weighted else 1.0
            destination[j] = one_hot - class_weight * (keep * np.float64(targets[j]) + uniform)
        return
    fill(destination, 0.0 if (largest == -np.inf and total == -1.0) else np.nan)


_probability_kernel = make_loss_kernel(_reduce_probability, _merge_probability, _write_probability, WIDTH)


# ---- public API ------------------------------------------------------------------------------


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, grad_output, write):
    logits, rows, batch_shape = logit_rows(logits)
    classes = rows.shape[1]
    reduction, smoothing, ignore_index, class_weight, weighted = class_index_options(
        classes, weight, ignore_index, reduction, label_smoothing
    )
    if isinstance(target, np.ndarray) and target.dtype.kind == "f":
        # class probabilities, one row per row of logits
        if target.shape != logits.shape:
            raise ValueError(
                f"target of a float dtype holds class probabilities and must have the shape of logits "
                f"{logits.shape}, got {target.shape} (class indices need an integer dtype)"
            )
        if target.dtype != logits.dtype:
            raise TypeError(f"target (class probabilities) must have the dtype of logits ({logits.dtype}), got {target.dtype}")
        if ignore_index >= 0:  # as torch: a class probability target has no index to ignore
            raise ValueError(f"ignore_index is not supported for class-probability targets: it must be left "
                             f"negative (the default -100), got {ignore_index}")
        probabilities = np.ascontiguousarray(target.reshape(rows.shape))
        denominator = rows.shape[0]
        scale = row_scales(grad_output, reduction, denominator, batch_shape)
        args = ProbabilityArgs(probabilities, class_weight, scale, smoothing, weighted)
        loss, grad = run_loss_kernel(_probability_kernel, rows, args, write, reduction, denominator, logits.shape)
    else:
        args, denominator = class_index_args(target, class_weight, weighted, ignore_index, smoothing, reduction,
                                             grad_output, batch_shape, classes)
        block, split = block_schedule(rows.shape[0], classes, rows.dtype.itemsize)
        if write and streamed_rows(rows.shape[0], classes, rows.dtype.itemsize, block, split, keeps_row=True):
            # a row's e_j wait for its write in a scratch row of the thread
            args = StreamedClassIndexArgs(*args, thread_rows(classes, rows.dtype))
        loss, grad = run_loss_kernel(_index_kernel, rows, args, write, reduction, denominator, logits.shape)
    return loss, grad


def class_index_options(classes, weight, ignore_index, reduction, label_smoothing):
    """Validated (reduction, smoothing, ignore_index, class weight as float64 or ``NO_WEIGHT``, weighted)."""
    reduction = check_reduction("reduction", reduction)
    smoothing = check_real_scalar("label_smoothing", label_smoothing, minimum=0.0, maximum=1.0)
    ignore_index = check_real_scalar("ignore_index", ignore_index, integer=True, minimum=_INT64_MIN, maximum=_INT64_MAX)
    if weight is None:
        return reduction, smoothing, ignore_index, NO_WEIGHT, False
    return reduction, smoothing, ignore_index, check_class_weight("weight", weight, classes), True


def class_index_args(target, class_weight, weighted, ignore_index, smoothing, reduction, grad_output, batch_shape,
                     classes):
    """(``ClassIndexArgs``, the mean's denominator) of validated class-index targets.

    The denominator is the sum of w_y over the rows not ignored (their number without
    weights); the row scales are ``reduction.row_scales`` of ``grad_output``.
    """
    labels, kept = check_class_indices_counted("target", target, batch_shape, classes, ignore_index)
    labels = labels.reshape(-1)
    denominator = float(np.sum(class_weight[labels[labels != ignore_index]])) if weighted else kept
    scale = row_scales(grad_output, reduction, denominator, batch_shape)
    weight_total = float(np.sum(class_weight)) if weighted else float(classes)
    args = ClassIndexArgs(labels, class_weight, scale, np.int64(ignore_index), smoothing, weighted, weight_total, 0.0)
    return args, denominator


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    r"""Softmax cross-entropy between logits and class indices or class probabilities.

    PyTorch's ``torch.nn.functional.cross_entropy`` with the classes on the last axis.
    For a row ``z`` with ``C`` classes and class weights ``w`` (all 1 by default):

    .. math::
        \ell = \sum_c \tilde w_c \,\big(\mathrm{LSE}(z) - z_c\big),\qquad
        \tilde w_c = \begin{cases}
            (1-\varepsilon)\, w_y [c = y] + \varepsilon\, w_c / C & \text{class index } y\\
            w_c \big((1-\varepsilon)\, p_c + \varepsilon / C\big) & \text{probabilities } p
        \end{cases}

    Label smoothing mixes the target with the uniform distribution (Szegedy et al. 2016). With
    ``reduction="mean"`` the losses are summed and divided by the sum of ``w_y`` over the
    rows not ignored (class indices) or by the number of rows (probabilities).

    Args:
        logits: float32 or float64 array ``(..., C)``, C >= 1; not modified.
        target: integer class indices of shape ``logits.shape[:-1]`` (any integer dtype),
            or class probabilities of ``logits``' shape and dtype.
        weight: optional float array ``(C,)`` of class weights.
        ignore_index: class-index rows with this label get zero loss and gradient and do
            not count in the mean (or anywhere else, label smoothing included).  With
            class probabilities it must stay negative (a ValueError otherwise, as torch).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        label_smoothing: epsilon in [0, 1].

    Returns:
        The loss in ``logits``' dtype: a scalar, or shape ``logits.shape[:-1]`` for
        ``"none"``.  A mean over nothing (every row ignored, every target weight 0, an
        empty batch) is 0 (PyTorch returns NaN).  A target logit of -inf gives +inf.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import cross_entropy
        >>> logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> round(float(cross_entropy(logits, np.array([0, 2]))), 4)
        0.6691
        >>> round(float(cross_entropy(logits, np.array([0, -100]))), 4)  # second row ignored
        0.2395

    References: C. Szegedy et al., "Rethinking the Inception architecture" (label
    smoothing), 2016; PyTorch's ``cross_entropy`` documentation; the gradient a - y:
    ``docs/proofs/cross_entropy.md``.
    """
    loss, _ = _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, 1.0, False)
    return loss


def cross_entropy_forward_backward(logits, target, *, weight=None, ignore_index=-100, reduction="mean",
                                   label_smoothing=0.0, grad_output=1.0):
    r""":func:`cross_entropy` and its gradient in the logits, from one fused kernel.

    .. math::
        \frac{\partial \ell}{\partial z_j} = \Big(\sum_c \tilde w_c\Big)\,\mathrm{softmax}(z)_j - \tilde w_j

    (``a - y`` for a one-hot target without weights or smoothing; ``a - ((1-eps) y +
    eps/C)`` with smoothing), times ``grad_output`` and the reduction's factor.

    Args:
        logits, target, weight, ignore_index, reduction, label_smoothing: as
            :func:`cross_entropy`.
        grad_output: the upstream gradient dOut/dloss: a real number for ``"mean"`` and
            ``"sum"``; for ``"none"`` a number or a float array of ``logits.shape[:-1]``.

    Returns:
        ``(loss, grad)``: the loss as :func:`cross_entropy` returns it and ``grad`` of
        ``logits``' shape and dtype.  Ignored rows, rows of all -inf and a mean over
        nothing have zero gradient; a target logit of -inf has a finite gradient.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import cross_entropy_forward_backward
        >>> loss, grad = cross_entropy_forward_backward(np.array([[0.0, 0.0]]), np.array([1]))
        >>> grad
        array([[ 0.5, -0.5]])

    References: as :func:`cross_entropy`; fused forward and gradient as in Liger-Kernel's
    cross-entropy, the online normalizer of Milakov & Gimelshein 2018.
    """
    return _cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing, grad_output, True)
