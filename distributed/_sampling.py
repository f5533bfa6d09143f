"""Negative-class sampling for the sharded loss, as Partial FC samples (An et al. 2021): an approximation.

Each rank keeps, of its shard of S_r classes, every class that is the target of a row of
the batch (a positive) and enough other classes (negatives), drawn without replacement, to
keep K_r = max(positives_r, ceil(sample_rate S_r)) classes: Partial FC's count, with ceil
in place of its int() so that every shard keeps at least one class.  The loss is then the
softmax cross-entropy over the kept classes only, with no correction for the sampling: it
is not the loss over all C classes (each row's normalizer lacks the dropped classes' terms,
so the loss is lower), and its gradient is zero for the classes not kept.
``benchmarks/sharded_sampling.py`` measures how far it is from the full softmax.

Agreement without messages.  Every rank holds the whole batch, so every rank knows every
shard's positives and hence every K_r; each shard's kept classes are listed positives first
(in class order), then its negatives (in class order), so a target's index among the kept
classes, (sum of K_s over ranks s before its owner) + (its rank among its shard's positives),
is known to every rank without knowing the other shards' negatives.  Each rank draws its
negatives from ``numpy.random.default_rng([seed, step, rank])``: one seed shared by all
ranks, so the sample of every shard at every step is reproducible (and any rank could
recompute another's).  ``sample_rate == 1`` keeps every class in class order: the full
loss, the same bits as without sampling.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels._linear_cross_entropy import DEFAULT_MEMORY_BUDGET
from ..kernels._validation import check_class_indices_counted, check_real_scalar
from ._comm import MessageLog, all_gather_rows

__all__ = ["kept_counts", "remap_targets", "sample_shard", "sampled_sharded_linear_cross_entropy_forward_backward"]


def _rate(sample_rate) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float, np.floating, np.integer)) \
            or not 0.0 < float(sample_rate) <= 1.0:
        raise ValueError(f"sample_rate must be a number in (0, 1], got {sample_rate!r}")
    return float(sample_rate)


def _positives(target, start, stop, ignore_index):
    """The distinct targets in [start, stop), sorted: the shard's positives as global classes."""
    labels = np.asarray(target)
    labels = labels[(labels != ignore_index) & (labels >= start) & (labels < stop)]
    return np.unique(labels)


def kept_counts(target, bounds, sample_rate, ignore_index=-100) -> list[int]:
    """K_r = max(positives in shard r, ceil(sample_rate S_r)) for the shards [bounds[r], bounds[r + 1])."""
    rate = _rate(sample_rate)
    counts = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        positives = _positives(target, start, stop, ignore_index).size
        counts.append(stop - start if rate == 1.0 else max(positives, math.ceil(rate * (stop - start))))
    return counts


def sample_shard(target, class_start, shard_size, sample_rate, *, seed, step, rank, ignore_index=-100) -> np.ndarray:
    """This shard's kept classes as local indices (int64): its positives in class order, then its
    sampled negatives in class order; every class in class order when ``sample_rate`` is 1."""
    rate = _rate(sample_rate)
    if rate == 1.0:
        return np.arange(shard_size, dtype=np.int64)
    positives = _positives(target, class_start, class_start + shard_size, ignore_index) - class_start
    count = max(positives.size, math.ceil(rate * shard_size))
    negatives = np.setdiff1d(np.arange(shard_size, dtype=np.int64), positives, assume_unique=True)
    generator = np.random.default_rng([int(seed), int(step), int(rank)])
    chosen = np.sort(generator.choice(negatives, size=count - positives.size, replace=False))
    return np.concatenate([positives.astype(np.int64), chosen])


def remap_targets(target, bounds, counts, sample_rate, ignore_index=-100) -> np.ndarray:
    """Each row's target as an index into the kept classes (every shard's, in rank order);
    ``ignore_index`` stays."""
    labels = np.asarray(target).astype(np.int64)
    if _rate(sample_rate) == 1.0:
        return labels.copy()
    remapped = labels.copy()
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for rank, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        positives = _positives(labels, start, stop, ignore_index)
        rows = (labels != ignore_index) & (labels >= start) & (labels < stop)
        remapped[rows] = offsets[rank] + np.searchsorted(positives, labels[rows])
    return remapped


def sampled_sharded_linear_cross_entropy_forward_backward(
        x, weight_shard, target, *, class_start, num_classes, sample_rate, seed, step=0, group=None,
        ignore_index=-100, reduction="mean", label_smoothing=0.0, memory_budget=DEFAULT_MEMORY_BUDGET,
        grad_output=1.0, log: MessageLog | None = None):
    """``sharded_linear_cross_entropy_forward_backward`` over the classes kept by sampling (module docstring).

    Every rank passes the same ``x``, ``target``, options, ``seed`` and ``step`` and its own
    shard.  An all_gather of the shard bounds (3 float64) gives every rank every shard's size,
    then the sharded loss runs on the kept rows of each shard with the targets remapped
    (label smoothing spreads eps over the kept classes).  Class weights are not supported: a
    rank does not know the other shards' negatives, whose weights the total needs.

    Returns:
        ``(loss, grad_input, grad_weight_shard, kept)``: the loss over the kept classes,
        dloss/dx, dloss/dweight_shard (S_r, D) with zero rows for the classes not kept, and
        ``kept``, the local indices of the kept classes in the order the loss saw them.
    """
    import torch.distributed as dist

    from ._sharded import _check_tiling, _validated, sharded_linear_cross_entropy_forward_backward

    rate = _rate(sample_rate)
    for name, value in (("seed", seed), ("step", step)):
        check_real_scalar(name, value, integer=True, minimum=0)
    x, weight_shard, class_start, num_classes, _ = _validated(x, weight_shard, class_start, num_classes, memory_budget)
    ignore_index = check_real_scalar("ignore_index", ignore_index, integer=True)
    target, _ = check_class_indices_counted("target", target, (x.shape[0],), num_classes, ignore_index)
    shard_size = weight_shard.shape[0]
    bounds_rows = all_gather_rows(np.array([[class_start, shard_size, num_classes]], dtype=np.float64), group,
                                  log=log, kind="sampled.bounds")[:, 0, :]
    _check_tiling(bounds_rows, num_classes)
    bounds = [int(b) for b in np.concatenate([[0], np.cumsum(bounds_rows[:, 1])])]
    rank = dist.get_rank(group)
    counts = kept_counts(target, bounds, rate, ignore_index)
    kept = sample_shard(target, class_start, shard_size, rate, seed=seed, step=step, rank=rank,
                        ignore_index=ignore_index)
    loss, grad_input, grad_kept = sharded_linear_cross_entropy_forward_backward(
        x, np.ascontiguousarray(weight_shard[kept]), remap_targets(target, bounds, counts, rate, ignore_index),
        class_start=sum(counts[:rank]), num_classes=sum(counts), group=group, ignore_index=ignore_index,
        reduction=reduction, label_smoothing=label_smoothing, memory_budget=memory_budget, grad_output=grad_output,
        log=log)
    grad_weight_shard = np.zeros_like(weight_shard)
    grad_weight_shard[kept] = grad_kept
    return loss, grad_input, grad_weight_shard, kept
