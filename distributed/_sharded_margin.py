"""The fused margin cross-entropy (NormFace, CosFace, ArcFace) over classes sharded across processes.

``linear_margin_cross_entropy_forward_backward`` with the class weights split as
``_sharded.py`` splits them (every process holds the whole batch ``x`` and the rows
``class_start:class_start + S_r`` of the weights, the shards tiling [0, C) in rank order).
The exchange, per call:

0. bounds: as ``_sharded.py`` (one all_gather of 3 float64);
1. pass 1 of the fused margin loss on the shard (``cosine_statistics``): per row and local
   product tile the non-target pair (s m_k, t_k); the owner of a row's target computes its
   cosine by Dot2, as the single process does;
2. round 1: the owner of each row (``_comm.row_blocks``) receives every rank's largest
   non-target logit of it (an all_to_all of N float64, ``rows_to_owners``), takes the max
   (exact, order-free), and every rank receives every block's (``gather_row_blocks``);
3. each rank sums its tiles' t_k e^(s m_k - M_o) pairwise (``_margin_rows.others_sum``);
4. round 2: the row's owner receives every rank's (shard sum, target cosine, owned flag) (an
   all_to_all of N x 3 float64), adds the shards' sums pairwise in rank order, takes the
   target's cosine from the one rank that owns the target, computes f(c) and f'(c) and
   joins them (``join_target``); every rank receives every row's (loss, M, 1/S, a_y - 1,
   s f'(c_y)) (a gather of the blocks): every rank holds the same bits of every row;
5. pass 2 on the shard (``cosine_gradients``): grad_weight_shard, the tangent part of
   u = A^T x per product tile, and the float64 partial v_r = A W_shard of grad_input; the
   owner of each row block adds the ranks' partials in rank order, takes the tangent part of
   the sum and rounds it once, and every rank receives every block
   (``all_reduce_rows_by_owner`` with ``finish``).

The margin applies only where the target is, on the rank that owns it; the other ranks see
the row's target cosine only through round 2.  The conditions for the single process's bits
are ``_sharded.py``'s in the margin's tiles, the product tiles (``PRODUCT_TILE`` classes):
with every shard but the last 2^j whole product tiles and the last at most 2^j (shards of
2^j of ``_sharded.py``'s class tiles are such shards) the pairwise trees are the single
process's, so the loss and grad_weight_shard are its bits; grad_input
sums the same float64 product-tile terms in another association (bit-identical when every
shard is one product tile, else within the bound of ``_sharded.py``'s docstring).

Bytes process r sends (``_comm``'s model): the bounds' all_gather, 24 (P - 1); the
all_to_alls, 8 (1 + 3 + D) (N - R_r); the gathers of the owners' blocks,
(8 (1 + 5) + s D) R_r (P - 1) (R_r the rows it owns, s x's itemsize).  In the mean over ranks
24 (P - 1) + (80 + (8 + s) D) N (P - 1)/P (``margin_exchange_bytes``): bounded in P but for
the bounds' 24 bytes per rank.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels._config import JIT_OPTIONS
from ..kernels._cosine_margins import combined_margin_target, derivative_limit
from ..kernels._driver.reduction import reduce_losses, row_scales
from ..kernels._driver.threads import run_row_blocks
from ..kernels._linear_cross_entropy import DEFAULT_MEMORY_BUDGET
from ..kernels._linear_margin_cross_entropy import (
    STATE_TARGET_FACTOR,
    Cosines,
    cosine_gradients,
    cosine_statistics,
    join_target,
    margin_options,
    tangent_part,
    target_cosines,
)
from ..kernels._margin_rows import others_sum
from ..kernels._normalized_linear import row_norms
from ..kernels._numerics.rows import pairwise_sum
from ..kernels._validation import check_class_indices
from ._comm import MessageLog, all_gather_rows, all_reduce_rows_by_owner, gather_row_blocks, rows_to_owners
from ._sharded import _check_tiling, _validated, differentiable, owner_exchange_bytes

__all__ = ["sharded_linear_margin_cross_entropy", "sharded_linear_margin_cross_entropy_forward_backward",
           "margin_exchange_bytes"]

#: Round 2's floats per row: the shard's sum, the target's cosine, whether the shard owns the target.
ROUND2_WIDTH = 3
SHARD_SUM, SHARD_COSINE, SHARD_OWNS = range(ROUND2_WIDTH)
#: The owners' gathered floats per row: the loss and the row state (M, 1/S, a_y - 1, s f'(c_y)).
ROW_WIDTH = 5
ROW_LOSS, ROW_STATE, ROW_TARGET_FACTOR = 0, slice(1, 5), 1 + STATE_TARGET_FACTOR


def margin_exchange_bytes(rows: int, features: int, world_size: int, itemsize: int = 8,
                          rank: int | None = None) -> float:
    """Bytes process ``rank`` sends per call (None: the mean over ranks), x's dtype ``itemsize``
    bytes: the module docstring's formula."""
    return owner_exchange_bytes(rows, world_size, 8 * (1 + ROUND2_WIDTH + features),
                                8 * (1 + ROW_WIDTH) + itemsize * features, rank)


@njit(nogil=True, **JIT_OPTIONS)
def _shard_sums(first, last, part, partial, largest, out):
    for i in range(first, last):
        out[i, SHARD_SUM] = others_sum(partial[i], largest[i])


@njit(nogil=True, **JIT_OPTIONS)
def _join_rows(first, last, part, sums, largest, high, low, merged):
    """The owner's rows: the shards' sums (ranks x rows) added pairwise in rank order and joined
    with the target (``join_target``) into merged[i] = (loss, M, 1/S, a_y - 1, .)."""
    for i in range(first, last):
        join_target(i, largest[i], pairwise_sum(sums[:, i].copy()), high, low, merged[:, ROW_LOSS],
                    merged[:, ROW_STATE])


def sharded_linear_margin_cross_entropy_forward_backward(x, weight_shard, target, *, class_start, num_classes, s,
                                                         m1=1.0, m2=0.0, m3=0.0, group=None, reduction="mean",
                                                         memory_budget=DEFAULT_MEMORY_BUDGET, precision="input",
                                                         grad_output=1.0, log: MessageLog | None = None):
    r"""``linear_margin_cross_entropy_forward_backward`` of ``x`` and class weights sharded over ``group``.

    Every process of ``group`` (gloo; None: the default group) calls it with the same ``x``,
    ``target`` and options and its own shard ``weight_shard``, the classes
    ``class_start:class_start + len(weight_shard)`` of ``num_classes``; the shards tile
    [0, num_classes) in rank order.  Two rounds of per-row statistics and grad_input's partials
    are exchanged, each row's merged by the rank that owns it and the results gathered, never
    cosines; the module docstring gives the exchange and when the results are the single
    process's bits.

    Args:
        x: float32 or float64 (N, D), the same on every rank.
        weight_shard: (S_r, D) of x's dtype, S_r >= 1.
        target: integer global class indices (N,) in [0, num_classes).
        class_start, num_classes: the shard's first global class, and C.
        s, m1, m2, m3, reduction, memory_budget, precision, grad_output: as
            ``linear_margin_cross_entropy_forward_backward``.
        log: a ``MessageLog`` recording the bounds' all_gather and the three rounds' two messages each.

    Returns:
        ``(loss, grad_input, grad_weight_shard)``: the loss and dloss/dx the same on every
        rank, dloss/dweight_shard (S_r, D); in x's dtype.

    Raises:
        ValueError on every rank for shards that do not tile [0, num_classes).  Each rank's
        own arguments are checked before any message (see ``sharded_linear_cross_entropy_forward_backward``).
    """
    s, m1, m2, m3, reduction, budget = margin_options(s, m1, m2, m3, reduction, precision, memory_budget)
    x, weight_shard, class_start, num_classes, budget = _validated(x, weight_shard, class_start, num_classes, budget)
    rows, features = x.shape
    shard = weight_shard.shape[0]
    targets = check_class_indices("target", target, (rows,), num_classes)
    upstream = row_scales(grad_output, reduction, rows, (rows,), per_row=True)
    x, weight_shard = np.ascontiguousarray(x), np.ascontiguousarray(weight_shard)
    x_norms, w_norms = row_norms("x", x), row_norms("weight_shard", weight_shard)
    bounds = all_gather_rows(np.array([[class_start, shard, num_classes]], dtype=np.float64), group, log=log,
                             kind="sharded_margin.bounds")
    _check_tiling(bounds[:, 0, :], num_classes)
    dtype = x.dtype

    local = targets - class_start
    owned = (local >= 0) & (local < shard)
    local_targets = np.where(owned, local, -1)
    sums = np.zeros((rows, ROUND2_WIDTH))
    mine = np.flatnonzero(owned)
    if mine.size:
        sums[mine, SHARD_COSINE] = target_cosines(x[mine], weight_shard, local_targets[mine], x_norms[mine], w_norms)
    sums[:, SHARD_OWNS] = owned

    x_work = np.ascontiguousarray(x, dtype=np.float64 if precision == "float64" else dtype)
    cosines = Cosines(local_targets, 1.0 / x_norms, 1.0 / w_norms, s)
    partial, product, kept = cosine_statistics(x_work, weight_shard, cosines, budget)

    # round 1: each row's owner takes its largest non-target logit over every rank; every rank gets it
    first, last, maxima = rows_to_owners(partial[:, :, 0].max(axis=1)[:, None], group, log=log,
                                         kind="sharded_margin.max")
    largest = gather_row_blocks(maxima[:, :, 0].max(axis=0)[:, None], rows, group, log=log,
                                kind="sharded_margin.max_rows")[:, 0]

    # round 2: the shards' sums with the global max and the target's cosine from its owner go to the
    # row's owner, which joins them into the row's loss and state; every rank gets every row's
    run_row_blocks(_shard_sums, rows, partial, largest, sums)
    _, _, parts = rows_to_owners(sums, group, log=log, kind="sharded_margin.sums")
    target_cos = (parts[:, :, SHARD_COSINE] * parts[:, :, SHARD_OWNS]).sum(axis=0)  # one owner: exact
    high, low, slope = combined_margin_target(target_cos, s, m1, m2, m3, derivative_limit(dtype))
    merged = np.empty((last - first, ROW_WIDTH))
    run_row_blocks(_join_rows, last - first, np.ascontiguousarray(parts[:, :, SHARD_SUM]),
                   np.ascontiguousarray(largest[first:last]), high, low, merged)
    merged[:, ROW_TARGET_FACTOR] = s * slope
    merged = gather_row_blocks(merged, rows, group, log=log, kind="sharded_margin.rows")
    state = np.ascontiguousarray(merged[:, ROW_STATE])
    loss = reduce_losses(np.ascontiguousarray(merged[:, ROW_LOSS]), reduction, (rows,), dtype, rows)

    projected, grad_weight_shard = cosine_gradients(x_work, weight_shard, dtype, product, cosines, upstream, state,
                                                    kept)

    def tangent_rows(start, stop, total):  # the owner's rows of grad_input, before the one rounding
        return tangent_part(total, x[start:stop], cosines.x_inverse[start:stop], np.empty_like(total))

    grad_input = all_reduce_rows_by_owner(projected, dtype, group, log=log, kind="sharded_margin.grad_input",
                                          finish=tangent_rows)
    return loss, grad_input, grad_weight_shard


def sharded_linear_margin_cross_entropy(x, weight_shard, target, *, class_start, num_classes, s, m1=1.0, m2=0.0,
                                        m3=0.0, group=None, reduction="mean", memory_budget=DEFAULT_MEMORY_BUDGET,
                                        precision="input", log: MessageLog | None = None):
    """``sharded_linear_margin_cross_entropy_forward_backward`` for torch CPU tensors: a differentiable
    loss (an ArcFace head over sharded classes: ``examples/train_sharded.py``).

    ``x`` (N, D) and ``weight_shard`` (S_r, D) float32 or float64 tensors, ``target`` an integer
    tensor (N,); the other arguments as the NumPy function; the backward as
    ``sharded_linear_cross_entropy``'s.  x's gradient is the same on every rank.
    """
    options = dict(class_start=class_start, num_classes=num_classes, s=s, m1=m1, m2=m2, m3=m3, group=group,
                   reduction=reduction, memory_budget=memory_budget, precision=precision, log=log)
    return differentiable(sharded_linear_margin_cross_entropy_forward_backward, x, weight_shard, target, options)
