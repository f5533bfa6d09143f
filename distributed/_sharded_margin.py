"""The fused margin cross-entropy (NormFace, CosFace, ArcFace) over classes sharded across processes.

``linear_margin_cross_entropy_forward_backward`` with the class weights split as
``_sharded.py`` splits them (every process holds the whole batch ``x`` and the rows
``class_start:class_start + S_r`` of the weights, the shards tiling [0, C) in rank order).
The exchange, per call:

0. bounds: as ``_sharded.py`` (one all_gather of 3 float64);
1. pass 1 of the fused margin loss on the shard (``cosine_statistics``): per row and local
   class tile the non-target pair (s m_k, t_k); the owner of a row's target computes its
   cosine by Dot2, as the single process does;
2. round 1: an all_gather of each row's local largest non-target logit (N float64): the
   global M_o, exact and order-free;
3. each rank sums its tiles' t_k e^(s m_k - M_o) pairwise (``_margin_rows.others_sum``);
4. round 2: an all_gather of (shard sum, target cosine, owned flag), N x 3 float64: every
   rank adds the shards' sums pairwise in rank order, computes the target's f(c) and f'(c)
   from the one owner's cosine, and joins them (``join_target``): every rank holds the
   same loss and row state;
5. pass 2 on the shard (``cosine_gradients``): grad_weight_shard, the tangent part of
   u = A^T x per product tile, and the float64 partial v_r = A W_shard of grad_input; the
   partials are added in rank order (``all_reduce_sum_fixed_order``), and grad_input is
   the tangent part of the sum.

The margin applies only where the target is, on the rank that owns it; the other ranks see
the row's target cosine only through round 2.  The conditions for the single process's bits
are ``_sharded.py``'s: with shards of 2^j whole class tiles (``block_length``) the pairwise
trees are the single process's, so the loss and grad_weight_shard are its bits; grad_input
sums the same float64 product-tile terms in another association (bit-identical when every
shard is one product tile, else within the bound of ``_sharded.py``'s docstring).

Bytes one process sends (all_gathers, B (P - 1) each): 8 (P - 1) (3 + N + 3 N + N D).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..kernels._config import JIT_OPTIONS
from ..kernels._cosine_margins import combined_margin_target, derivative_limit
from ..kernels._driver.reduction import reduce_losses, row_scales
from ..kernels._driver.threads import run_row_blocks
from ..kernels._linear_cross_entropy import DEFAULT_MEMORY_BUDGET, chunk_plan
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
from ._comm import MessageLog, all_gather_rows, all_reduce_sum_fixed_order
from ._sharded import _check_tiling, _validated

__all__ = ["sharded_linear_margin_cross_entropy_forward_backward", "margin_exchange_bytes"]

#: Round 2's floats per row: the shard's sum, the target's cosine, whether the shard owns the target.
ROUND2_WIDTH = 3
SHARD_SUM, SHARD_COSINE, SHARD_OWNS = range(ROUND2_WIDTH)


def margin_exchange_bytes(rows: int, features: int, world_size: int) -> float:
    """Bytes one process sends per call: all_gathers of 3, N, 3 N and N D float64 (``_comm.sent_bytes``)."""
    return 8.0 * (world_size - 1) * (3 + rows + ROUND2_WIDTH * rows + rows * features)


@njit(nogil=True, **JIT_OPTIONS)
def _shard_sums(first, last, part, partial, largest, out):
    for i in range(first, last):
        out[i, SHARD_SUM] = others_sum(partial[i], largest[i])


@njit(nogil=True, **JIT_OPTIONS)
def _join_rows(first, last, part, gathered, largest, high, low, losses, state):
    # the shards' sums added pairwise in rank order (pairwise_sum overwrites its argument: a copy)
    for i in range(first, last):
        join_target(i, largest[i], pairwise_sum(gathered[:, i, SHARD_SUM].copy()), high, low, losses, state)


def sharded_linear_margin_cross_entropy_forward_backward(x, weight_shard, target, *, class_start, num_classes, s,
                                                         m1=1.0, m2=0.0, m3=0.0, group=None, reduction="mean",
                                                         memory_budget=DEFAULT_MEMORY_BUDGET, precision="input",
                                                         grad_output=1.0, log: MessageLog | None = None):
    r"""``linear_margin_cross_entropy_forward_backward`` of ``x`` and class weights sharded over ``group``.

    Every process of ``group`` (gloo; None: the default group) calls it with the same ``x``,
    ``target`` and options and its own shard ``weight_shard``, the classes
    ``class_start:class_start + len(weight_shard)`` of ``num_classes``; the shards tile
    [0, num_classes) in rank order.  Two rounds of per-row statistics (N and 3 N float64) and
    one of grad_input's partials (N x D float64) are exchanged, never cosines; the module
    docstring gives the exchange and when the results are the single process's bits.

    Args:
        x: float32 or float64 (N, D), the same on every rank.
        weight_shard: (S_r, D) of x's dtype, S_r >= 1.
        target: integer global class indices (N,) in [0, num_classes).
        class_start, num_classes: the shard's first global class, and C.
        s, m1, m2, m3, reduction, memory_budget, precision, grad_output: as
            ``linear_margin_cross_entropy_forward_backward``.
        log: a ``MessageLog`` recording the four all_gathers.

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
    partial, product = cosine_statistics(x_work, weight_shard, cosines,
                                         chunk_plan(rows, shard, features, x_work.dtype, budget, True))

    # round 1: the rows' largest non-target logit over every rank
    maxima = all_gather_rows(partial[:, :, 0].max(axis=1)[:, None], group, log=log, kind="sharded_margin.max")
    largest = maxima[:, :, 0].max(axis=0)

    # round 2: the shards' sums with the global max, the target's cosine from its owner
    run_row_blocks(_shard_sums, rows, partial, largest, sums)
    gathered = all_gather_rows(sums, group, log=log, kind="sharded_margin.sums")
    target_cos = (gathered[:, :, SHARD_COSINE] * gathered[:, :, SHARD_OWNS]).sum(axis=0)  # one owner: exact
    high, low, slope = combined_margin_target(target_cos, s, m1, m2, m3, derivative_limit(dtype))
    losses = np.empty(rows)
    state = np.empty((rows, 4))
    run_row_blocks(_join_rows, rows, gathered, largest, high, low, losses, state)
    loss = reduce_losses(losses, reduction, (rows,), dtype, rows)

    state[:, STATE_TARGET_FACTOR] = s * slope
    projected, grad_weight_shard = cosine_gradients(x_work, weight_shard, dtype, product, cosines, upstream, state)
    projected = all_reduce_sum_fixed_order(projected, group, log=log)
    return loss, tangent_part(projected, x, cosines.x_inverse, np.empty_like(x)), grad_weight_shard
