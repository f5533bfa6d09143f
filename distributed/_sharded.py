"""The fused linear cross-entropy over classes sharded across processes (the Partial FC layout).

Every process holds the whole batch ``x`` (N, D) and the rows ``class_start:class_start + S_r``
of the class weights; together the shards tile [0, C) in rank order (uneven sizes allowed).
The exchange, per call:

0. bounds: an all_gather of (class_start, S_r, C), one row of 3 float64: every rank checks
   that the shards tile [0, C) in rank order and raises the same error if they do not;
1. pass 1 of ``linear_cross_entropy`` on the shard (``statistics_pass``): per row and local
   class tile k the tile's (m_k, t_k), the smoothing gaps, and the target logit where owned;
2. round 1: rank r owns the rows block [N r // P, N (r + 1) // P) of R_r rows
   (``_comm.row_blocks``); it receives every rank's local max of its rows (an all_to_all of
   N float64, ``rows_to_owners``), takes the global M = max over ranks (exact, order-free)
   and the first rank holding it, and every rank receives every block's (M, rank) (an
   all_gather of R_r x 2 float64, ``gather_row_blocks``);
3. each rank sums its tiles' terms (1 + t_k) e^(m_k - M) with the global M (the first tile
   holding M globally contributes t_k) by ``pairwise_sum`` over its tiles
   (``shifted_sum``), and its gaps d_k + (M - anchor_k) W_k likewise (``_merge_gaps``);
4. round 2: the owner of each row receives every rank's (shard sum, shard gaps, target
   logit, owned flag) of it (an all_to_all of N x 4 float64), adds the shards' sums by
   ``pairwise_sum`` over the ranks in rank order, forms the row's loss with
   ``index_finite_cross_entropy`` (C and the class weights' total global) and its state
   (M, T, TW, LSE), and every rank receives every block's (loss, state, status) (an
   all_gather of R_r x 6 float64): every rank holds the same bits of every row;
5. pass 2 (``gradient_pass``) on the shard: G from the global row state, grad_weight_shard
   = G^T x per product tile, and the float64 partial G W_shard of grad_input; the partials are
   added in rank order and rounded once by ``all_reduce_rows_by_owner``: the owner of each
   row block receives the other ranks' partials of its rows (an all_to_all of the N x D
   float64 partial), adds them in rank order in float64, rounds them to x's dtype (s bytes),
   and every rank receives every rounded block (an all_gather of R_r x D).

Bytes process r sends (``_comm``'s model): the bounds' all_gather, 24 (P - 1); the
all_to_alls, 8 (1 + 4 + D) (N - R_r); the all_gathers of the owners' blocks,
(8 (2 + 6) + s D) R_r (P - 1).  In the mean over ranks 24 (P - 1) + (104 + (8 + s) D) N (P - 1)/P
(``exchange_bytes``): apart from the bounds' 24 bytes per rank, bounded in P.

When the bits are ``linear_cross_entropy_forward_backward``'s on the concatenated weights.
``pairwise_sum`` halves a list of n terms level by level, so its node at level L sums the
terms [k 2^L, (k + 1) 2^L) (cut at n): a shard whose tiles are such a node sums them as the
single process does, and the P shard sums then meet as the single-process tree's level-L
nodes do.  Hence, with T the class tile (``block_length``: 8192 float32, 4096 float64
classes):

* loss and G bit-identical (so grad_weight_shard too, its GEMMs being the same product
  tiles) when every shard but the last holds exactly 2^j whole class tiles (the same j, so
  class_start = r 2^j T) and the last at most 2^j tiles, for any P;
* grad_input: the single process adds the product tiles' G W in tile order, here each shard
  adds its own and the shards are added in rank order: the same terms, another association;
  bit-identical when every shard holds one product tile (``PRODUCT_TILE`` classes), else
  both float64 sums are within gamma_{K-1} sum_k |p_k| of the exact one (K product tiles,
  Higham 2002, Accuracy and Stability of Numerical Algorithms, section 4.2), so they
  differ by at most 2 gamma_{K-1} sum_k |p_k| before the one rounding to the output dtype.

Otherwise both computations sum the same exponentials in different trees; the tests bound the
difference with the recursive-summation bound.  Rows whose max logit is not finite (the
single process recomputes them alone) are refused with a ValueError on every rank.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..kernels._config import JIT_OPTIONS, STRICT_FASTMATH
from ..kernels._cross_entropy import MAX, SUM, _merge_gaps, class_index_args, class_index_options
from ..kernels._linear_cross_entropy import (
    DEFAULT_MEMORY_BUDGET,
    chunk_plan,
    finish_row,
    gradient_pass,
    start_row,
    statistics_pass,
)
from ..kernels._driver.reduction import reduce_losses
from ..kernels._numerics.rows import chunked_sum, pairwise_sum, shifted_sum
from ..kernels._validation import check_float_array, check_real_scalar
from ._comm import MessageLog, all_gather_rows, all_reduce_rows_by_owner, gather_row_blocks, row_blocks, rows_to_owners

__all__ = ["sharded_linear_cross_entropy", "sharded_linear_cross_entropy_forward_backward", "exchange_bytes"]

#: Round 2's floats per row: the shard's sum, its gaps, the target logit, whether it owns the target.
ROUND2_WIDTH = 4
SHARD_SUM, SHARD_GAPS, SHARD_TARGET, SHARD_OWNS = range(ROUND2_WIDTH)
#: Round 2's gathered floats per row: the loss, the state (M, T, TW, LSE), the status.
ROW_WIDTH = 6
ROW_LOSS, ROW_STATE, ROW_STATUS = 0, slice(1, 5), 5


def exchange_bytes(rows: int, features: int, world_size: int, itemsize: int = 8, rank: int | None = None) -> float:
    """Bytes process ``rank`` sends per call (None: the mean over ranks), x's dtype ``itemsize`` bytes.

    The bounds' all_gather of 3 float64, 24 (P - 1); all_to_alls of the rows' 1 (round 1),
    4 (round 2) and D (grad_input) float64 to their owners, 8 (5 + D) (N - R_r); the
    all_gathers of the owners' R_r rows of 2 and 6 float64 and D of x's dtype,
    (64 + s D) R_r (P - 1) (the module docstring; ``features=0`` leaves grad_input out).
    """
    return owner_exchange_bytes(rows, world_size, 8 * (1 + ROUND2_WIDTH + features),
                                8 * (2 + ROW_WIDTH) + itemsize * features, rank)


def owner_exchange_bytes(rows: int, world_size: int, to_owners: int, from_owners: int,
                         rank: int | None = None) -> float:
    """Bytes process ``rank`` (None: the mean over ranks) sends in a sharded loss's exchange: the
    bounds' all_gather (24 (P - 1)), ``to_owners`` bytes per row it does not own sent to the row's
    owner, and ``from_owners`` bytes per row it owns gathered to the P - 1 others."""
    bounds = 24.0 * (world_size - 1)
    if rank is None:
        return bounds + (to_owners + from_owners) * rows * (world_size - 1) / world_size
    blocks = row_blocks(rows, world_size)
    own = blocks[rank + 1] - blocks[rank]
    return bounds + to_owners * (rows - own) + from_owners * own * (world_size - 1)


@njit(parallel=True, **JIT_OPTIONS)
def _shard_sums(partial, largest, holds_first, kept, smoothing, out):
    """Per kept row i: the shard's T part with the global M (``shifted_sum``) and its gaps."""
    for i in prange(partial.shape[0]):
        if kept[i]:
            out[i, SHARD_SUM] = shifted_sum(partial[i, :, MAX : SUM + 1], largest[i], holds_first[i])
            out[i, SHARD_GAPS] = _merge_gaps(largest[i], partial, i) if smoothing != 0.0 else 0.0


@njit(parallel=True, fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _combine_rows(gathered, largest, target_logit, args, classes, row_loss, state, status):
    """Each row's loss and state (M, T, TW, LSE) from the ranks' sums, added pairwise in rank order
    (``_linear_cross_entropy._merge_rows``' formulas)."""
    ranks = gathered.shape[0]
    for i in prange(gathered.shape[1]):
        if start_row(args, i, row_loss, status):
            terms = np.empty(ranks)
            for r in range(ranks):
                terms[r] = gathered[r, i, SHARD_SUM]
            total = pairwise_sum(terms)
            gaps = 0.0
            if args.smoothing != 0.0:
                for r in range(ranks):
                    terms[r] = gathered[r, i, SHARD_GAPS]
                gaps = pairwise_sum(terms)
            finish_row(args, i, classes, largest[i], target_logit[i], total, gaps, 0.0, row_loss, state)


def _row_range(args, first, last, rows):
    """``args`` for rows first:last (the targets and, where per row, the row scales)."""
    scale = args.row_scale[first:last] if args.row_scale.shape[0] == rows else args.row_scale
    return args._replace(target=np.ascontiguousarray(args.target[first:last]), row_scale=np.ascontiguousarray(scale))


def _check_tiling(bounds, num_classes):
    """Raise unless the gathered (class_start, S_r, C) rows tile [0, C) in rank order."""
    expected = 0
    for rank, (start, size, classes) in enumerate(bounds.tolist()):
        if classes != num_classes:
            raise ValueError(f"num_classes must be the same on every rank: expected {num_classes}, "
                             f"rank {rank} passed {int(classes)}")
        if start != expected:
            raise ValueError(
                f"class_start must tile [0, num_classes) in rank order: expected class_start = {expected} "
                f"on rank {rank} (the end of rank {rank - 1}'s shard), got {int(start)}"
                if rank else f"class_start must be 0 on rank 0, got {int(start)}")
        expected = start + size
    if expected != num_classes:
        raise ValueError(f"the shards (weight_shard's rows) must cover num_classes = {num_classes} classes, "
                         f"they cover {int(expected)}")


def _local_args(args, class_start, shard, class_weight, weighted):
    """``args`` for the shard's kernels: targets as local indices (a value outside [0, S_r) and
    not ``ignore_index`` where another shard owns the target), the shard's class weights;
    C's weight total and the row scales stay global."""
    labels = args.target
    ignored = labels == args.ignore_index
    local = labels - class_start
    owned = ~ignored & (local >= 0) & (local < shard)
    elsewhere = -1 if int(args.ignore_index) != -1 else -2
    local_labels = np.where(ignored, labels, np.where(owned, local, elsewhere)).astype(labels.dtype)
    weight = class_weight[class_start : class_start + shard] if weighted else class_weight
    return args._replace(target=local_labels, weight=np.ascontiguousarray(weight)), owned


def _validated(x, weight_shard, class_start, num_classes, memory_budget):
    x = check_float_array("x", x)
    if x.ndim != 2:
        raise ValueError(f"x must have shape (rows, features), got shape {x.shape}")
    weight_shard = check_float_array("weight_shard", weight_shard)
    if weight_shard.ndim != 2 or weight_shard.shape[1] != x.shape[1] or weight_shard.shape[0] < 1:
        raise ValueError(f"weight_shard must have shape (shard classes, {x.shape[1]}) with at least one class "
                         f"(x has {x.shape[1]} features), got shape {weight_shard.shape}")
    if weight_shard.dtype != x.dtype:
        raise TypeError(f"weight_shard must have the dtype of x ({x.dtype}), got {weight_shard.dtype}")
    num_classes = check_real_scalar("num_classes", num_classes, integer=True, minimum=1)
    class_start = check_real_scalar("class_start", class_start, integer=True, minimum=0)
    if class_start + weight_shard.shape[0] > num_classes:
        raise ValueError(f"class_start + len(weight_shard) must be at most num_classes = {num_classes}, "
                         f"got {class_start} + {weight_shard.shape[0]}")
    budget = check_real_scalar("memory_budget", memory_budget, integer=True, minimum=1)
    return x, weight_shard, class_start, num_classes, budget


def sharded_linear_cross_entropy_forward_backward(x, weight_shard, target, *, class_start, num_classes, group=None,
                                                  weight=None, ignore_index=-100, reduction="mean",
                                                  label_smoothing=0.0, memory_budget=DEFAULT_MEMORY_BUDGET,
                                                  grad_output=1.0, log: MessageLog | None = None):
    r"""``linear_cross_entropy_forward_backward`` of ``x`` and the class weights sharded over ``group``.

    Every process of ``group`` (a ``torch.distributed`` group on the gloo backend; None: the
    default group) calls it with the same ``x``, ``target``, ``weight`` and options and its own
    shard: ``weight_shard`` holds classes ``class_start:class_start + len(weight_shard)`` of
    the ``num_classes`` classes, and the shards tile [0, num_classes) in rank order.  Two
    rounds of per-row statistics and grad_input's partials are exchanged, each row's merged by
    the rank that owns it and the results gathered, never logits; the module docstring gives
    the exchange, the conditions under which the results are the single process's bits, and
    the bound otherwise.

    Args:
        x: float32 or float64 array (N, D), the same on every rank.
        weight_shard: array (S_r, D) of x's dtype, S_r >= 1: this rank's class weights.
        target: integer global class indices (N,) in [0, num_classes) or ``ignore_index``.
        class_start, num_classes: the shard's first global class, and C.
        weight: optional class weights (num_classes,), global.
        ignore_index, reduction, label_smoothing, memory_budget, grad_output: as
            ``linear_cross_entropy_forward_backward`` (label smoothing over the global C).
        log: a ``MessageLog`` recording the bounds' all_gather and the three rounds' two messages each.

    Returns:
        ``(loss, grad_input, grad_weight_shard)``: the loss as the single process returns it
        (the same on every rank), dloss/dx (N, D) (the same on every rank) and
        dloss/dweight_shard (S_r, D), in x's dtype.

    Raises:
        ValueError on every rank: shards that do not tile [0, num_classes); a row not ignored
        whose max logit is not finite (an overflow or a NaN), which
        ``linear_cross_entropy_forward_backward`` on the whole weight handles.  The checks of
        each rank's own arguments (shapes, dtypes, target, options) come before any message:
        they raise on the ranks whose arguments fail them, and a rank whose arguments pass
        then waits in the first all_gather until the group's timeout.
    """
    import torch.distributed as dist

    x, weight_shard, class_start, num_classes, budget = _validated(x, weight_shard, class_start, num_classes,
                                                                   memory_budget)
    reduction, smoothing, ignore_index, class_weight, weighted = class_index_options(
        num_classes, weight, ignore_index, reduction, label_smoothing)
    rows, features = x.shape
    shard = weight_shard.shape[0]
    args, denominator = class_index_args(target, class_weight, weighted, ignore_index, smoothing, reduction,
                                         grad_output, (rows,), num_classes)
    bounds = all_gather_rows(np.array([[class_start, shard, num_classes]], dtype=np.float64), group, log=log,
                             kind="sharded.bounds")
    _check_tiling(bounds[:, 0, :], num_classes)
    rank = dist.get_rank(group)
    dtype = x.dtype
    x = np.ascontiguousarray(x)
    local_args, owned = _local_args(args, class_start, shard, class_weight, weighted)
    kept = args.target != args.ignore_index

    partial, target_logit, product = statistics_pass(
        x, weight_shard, None, 0.0, local_args, chunk_plan(rows, shard, features, dtype, budget, True))

    # round 1: each row's owner finds the global max and the first rank holding it; every rank gets both
    local_max = np.where(kept, partial[:, :, MAX].max(axis=1), 0.0)
    first, last, maxima = rows_to_owners(local_max[:, None], group, log=log, kind="sharded.max")
    block_max = maxima[:, :, 0].max(axis=0)
    holder = np.argmax(maxima[:, :, 0] == block_max, axis=0).astype(np.float64)
    row_max = gather_row_blocks(np.column_stack([block_max, holder]), rows, group, log=log,
                                kind="sharded.max_rows")
    largest = np.ascontiguousarray(row_max[:, 0])
    bad = np.flatnonzero(kept & ~np.isfinite(largest))
    if bad.size:
        raise ValueError(
            f"x @ weight_shard.T must have a finite max in every row not ignored: rows {bad.tolist()} have "
            f"{largest[bad].tolist()} (the sharded loss refuses them; linear_cross_entropy_forward_backward "
            f"on the whole weight computes them)")
    holds_first = row_max[:, 1] == rank

    # round 2: the shards' sums with the global M; each row's owner combines them pairwise in rank
    # order into the row's loss, state and status, which every rank then gets
    sums = np.zeros((rows, ROUND2_WIDTH))
    _shard_sums(partial, largest, holds_first, kept, smoothing, sums)
    sums[:, SHARD_TARGET] = np.where(owned, target_logit, 0.0)
    sums[:, SHARD_OWNS] = owned
    _, _, parts = rows_to_owners(sums, group, log=log, kind="sharded.sums")
    label_logit = (parts[:, :, SHARD_TARGET] * parts[:, :, SHARD_OWNS]).sum(axis=0)  # one owner: exact
    merged = np.zeros((last - first, ROW_WIDTH))
    status = np.empty(last - first, dtype=np.int8)
    row_loss = np.empty(last - first)
    state = np.zeros((last - first, 4))
    _combine_rows(parts, largest[first:last], label_logit, _row_range(args, first, last, rows), num_classes,
                  row_loss, state, status)
    merged[:, ROW_LOSS], merged[:, ROW_STATE], merged[:, ROW_STATUS] = row_loss, state, status
    merged = gather_row_blocks(merged, rows, group, log=log, kind="sharded.rows")
    row_loss = np.ascontiguousarray(merged[:, ROW_LOSS])
    state = np.ascontiguousarray(merged[:, ROW_STATE])
    status = merged[:, ROW_STATUS].astype(np.int8)
    loss = reduce_losses(row_loss, reduction, (rows,), dtype, denominator, chunked_sum(row_loss))

    grad_input, grad_weight_shard, _ = gradient_pass(x, weight_shard, None, 0.0, 0.0, local_args, state, status,
                                                     {}, num_classes, dtype, product)
    grad_input = all_reduce_rows_by_owner(grad_input, dtype, group, log=log, kind="sharded.grad_input")
    return loss, grad_input, grad_weight_shard


def sharded_linear_cross_entropy(x, weight_shard, target, *, class_start, num_classes, group=None, weight=None,
                                 ignore_index=-100, reduction="mean", label_smoothing=0.0,
                                 memory_budget=DEFAULT_MEMORY_BUDGET, log: MessageLog | None = None):
    """``sharded_linear_cross_entropy_forward_backward`` for torch CPU tensors: a differentiable loss.

    ``x`` (N, D) and ``weight_shard`` (S_r, D) are float32 or float64 tensors (``requires_grad``
    as wanted), ``target`` an integer tensor (N,); the other arguments as the NumPy function.
    The forward runs the NumPy function with ``grad_output=1`` and keeps both gradients; the
    backward returns them times the upstream gradient g (the same bits when g = 1; for
    ``reduction="none"`` it runs the function again with ``grad_output=g``, so every rank
    must call backward).  x's gradient is the same on every rank (its partials are added
    across ranks), so a model that computes x identically on every rank stays in step.
    """
    options = dict(class_start=class_start, num_classes=num_classes, group=group, weight=weight,
                   ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing,
                   memory_budget=memory_budget, log=log)
    return differentiable(sharded_linear_cross_entropy_forward_backward, x, weight_shard, target, options)


def differentiable(forward_backward, x, weight_shard, target, options):
    """``forward_backward(x, weight_shard, target, **options)`` (a sharded NumPy loss returning
    (loss, grad_input, grad_weight_shard)) on torch CPU tensors, differentiable in x and
    weight_shard: the forward keeps both gradients for ``grad_output=1``; the backward returns
    them times the upstream gradient g, or, for ``reduction="none"``, runs the loss again with
    ``grad_output=g`` (so every rank must call backward)."""
    import torch

    for name, value in (("x", x), ("weight_shard", weight_shard), ("target", target)):
        if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
            raise TypeError(f"{name} must be a CPU torch.Tensor, got {type(value).__name__}"
                            + (f" on {value.device}" if isinstance(value, torch.Tensor) else ""))
    return _autograd_function().apply(x, weight_shard, target, (forward_backward, options))


_FUNCTION = []


def _autograd_function():
    """The ``torch.autograd.Function`` (built on first use: this module imports without torch)."""
    if _FUNCTION:
        return _FUNCTION[0]
    import torch

    class ShardedLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight_shard, target, call):
            forward_backward, options = call
            arrays = (x.detach().numpy(), weight_shard.detach().numpy(), target.detach().numpy())
            loss, grad_x, grad_w = forward_backward(*arrays, **options)
            ctx.arrays, ctx.call = arrays, call
            ctx.save_for_backward(torch.from_numpy(grad_x), torch.from_numpy(grad_w))
            return torch.from_numpy(np.asarray(loss))

        @staticmethod
        def backward(ctx, grad_loss):
            grad_x, grad_w = ctx.saved_tensors
            forward_backward, options = ctx.call
            if options["reduction"] == "none":
                options = dict(options, grad_output=grad_loss.detach().numpy().astype(np.float64))
                _, grad_x, grad_w = forward_backward(*ctx.arrays, **options)
                grad_x, grad_w = torch.from_numpy(grad_x), torch.from_numpy(grad_w)
            elif float(grad_loss) != 1.0:
                grad_x, grad_w = grad_x * grad_loss, grad_w * grad_loss
            return grad_x, grad_w, None, None

    _FUNCTION.append(ShardedLoss)
    return ShardedLoss
