"""Torch ports of two published class-sharded softmax losses, for comparison with softmaxlab's.

Written from the papers' formulas (no code copied), on CPU tensors in a torch.distributed
process group (gloo), every collective recorded in an optional ``MessageLog``.  Each process
holds the classes ``class_start:class_start + n_local`` (its shard of the logits, or of the
class weights) and the whole batch; a target this shard does not own contributes 0 here and
is counted by the shard that owns it.

* Megatron-LM's vocab-parallel cross-entropy (Shoeybi et al. 2019, "Megatron-LM: Training
  Multi-Billion Parameter Language Models Using Model Parallelism"):
  ``megatron_cross_entropy`` on a logits shard, ``megatron_forward_backward`` on x and a
  weight shard.  Three all_reduces of N floats: MAX of the rows' local maxima, SUM of the
  target logit (0 where not owned), SUM of the sums of exponentials.  Label smoothing eps is
  applied as in Megatron-LM's implementation: the target distribution puts 1 - eps on the
  target and eps/(K - 1) on each other class, which makes the loss
  (1 - s) (log S - z_y) - s mean_j log p_j with s = eps K/(K - 1), and its gradient
  p_j - (1 - s) [j = y] - s/K.  As originally implemented, K is the LOCAL vocabulary size and
  the mean runs over the local classes only, so with shards of unequal contents each process
  computes a different loss; ``global_smoothing=True`` uses the global class count and the
  mean over all classes (one more all_reduce SUM of N floats).
* Partial FC (An et al. 2021, "Partial FC: Training 10 Million Identities on a Single
  Machine"), with the full class set (sample rate 1): ``partial_fc_cross_entropy`` on a
  logits shard, ``partial_fc_forward_backward`` on the gathered embeddings and a weight
  shard with the combined angular and additive margin of ArcFace (Deng et al. 2019) and
  CosFace (Wang et al. 2018) on the owned targets.  all_reduce MAX of the local maxima, the
  exponentials, all_reduce SUM of their sums, the target's probability p (0 where not owned)
  all_reduce SUM, loss = -log(max(p, 1e-30)): where p underflows below 1e-30 the loss is
  capped at -log(1e-30) = 69.0776 (and the gradient, p - onehot, is the unclamped one).
  Partial FC also all_gathers each process's embeddings and labels before the loss and
  returns the embeddings' gradient to the processes that own the rows; the functions here
  start from the whole batch and return this shard's part of the embeddings' gradient
  (the sum over processes is the gradient), so those exchanges are not sent here;
  ``benchmarks/distributed_messages.py`` counts them.

Both losses run in the logits' dtype.  Their backward passes are the papers' closed forms,
written as ``torch.autograd.Function``s (the collectives are outside autograd).
"""

from __future__ import annotations

import functools

from ._comm import MessageLog, logged_all_reduce

__all__ = ["PARTIAL_FC_CLAMP", "megatron_cross_entropy", "megatron_forward_backward",
           "partial_fc_cross_entropy", "partial_fc_forward_backward", "partial_fc_margin_logits"]

PARTIAL_FC_CLAMP = 1e-30  # Partial FC's floor of the target probability: the loss is at most 69.0776
_REDUCTIONS = ("mean", "none")


def _check_shard(logits_shard, target, class_start, num_classes=None):
    """Validate a logits shard (N, n_local), its int64 targets (N,), and the shard's class range."""
    import torch

    if not isinstance(logits_shard, torch.Tensor) or logits_shard.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"logits_shard must be a float32 or float64 torch.Tensor, got "
                        f"{getattr(logits_shard, 'dtype', type(logits_shard).__name__)}")
    if logits_shard.ndim != 2 or logits_shard.shape[1] < 1:
        raise ValueError(f"logits_shard must have shape (N, n_local) with n_local >= 1, got {tuple(logits_shard.shape)}")
    if not isinstance(target, torch.Tensor) or target.dtype != torch.int64 or target.shape != logits_shard.shape[:1]:
        raise ValueError(f"target must be an int64 tensor of shape ({logits_shard.shape[0]},), got "
                         f"{getattr(target, 'dtype', type(target).__name__)} of shape {tuple(getattr(target, 'shape', ()))}")
    if isinstance(class_start, bool) or not isinstance(class_start, int) or class_start < 0:
        raise ValueError(f"class_start must be a nonnegative int, got {class_start!r}")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if class_start + logits_shard.shape[1] > num_classes:
            raise ValueError(f"class_start + n_local must be at most num_classes = {num_classes}, got "
                             f"{class_start} + {logits_shard.shape[1]}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
            raise ValueError(f"target must be in [0, {num_classes}), got values in "
                             f"[{int(target.min())}, {int(target.max())}]")


def _check_features(x, weight_shard, x_name):
    """Validate the rows ``x`` (N, D) and the class weights ``weight_shard`` (n_local, D): float tensors, same dtype."""
    import torch

    for name, value in ((x_name, x), ("weight_shard", weight_shard)):
        if not isinstance(value, torch.Tensor) or value.dtype not in (torch.float32, torch.float64) or value.ndim != 2:
            raise TypeError(f"{name} must be a 2-D float32 or float64 torch.Tensor, got "
                            f"{getattr(value, 'dtype', type(value).__name__)} of shape {tuple(getattr(value, 'shape', ()))}")
    if x.dtype != weight_shard.dtype or x.shape[1] != weight_shard.shape[1]:
        raise ValueError(f"weight_shard must be {x.dtype} with {x.shape[1]} columns like {x_name}, got "
                         f"{weight_shard.dtype} with {weight_shard.shape[1]}")


def _owned(target, class_start, n_local):
    """Which rows' targets this shard owns, and the local column of each (0 where not owned)."""
    import torch

    owned = (target >= class_start) & (target < class_start + n_local)
    return owned, torch.where(owned, target - class_start, torch.zeros_like(target))


@functools.cache
def _megatron_function():
    import torch
    import torch.distributed as dist

    class MegatronVocabParallelCrossEntropy(torch.autograd.Function):
        """Per-row loss of Shoeybi et al. 2019's vocab-parallel cross-entropy; manual backward."""

        @staticmethod
        def forward(ctx, logits, target, class_start, num_classes, smoothing_eps, global_smoothing, group, log):
            rows = torch.arange(logits.shape[0])
            local_max = logits.amax(dim=-1)
            logged_all_reduce(local_max, dist.ReduceOp.MAX, group, log=log, kind="megatron.max")
            shifted = logits - local_max[:, None]
            owned, column = _owned(target, class_start, logits.shape[1])
            predicted = torch.where(owned, shifted[rows, column], torch.zeros_like(local_max))
            logged_all_reduce(predicted, dist.ReduceOp.SUM, group, log=log, kind="megatron.target_logit")
            exp_logits = shifted.exp()
            sum_exp = exp_logits.sum(dim=-1)
            logged_all_reduce(sum_exp, dist.ReduceOp.SUM, group, log=log, kind="megatron.sum_exp")
            loss = sum_exp.log() - predicted
            softmax = exp_logits / sum_exp[:, None]
            smoothing = 0.0
            classes = num_classes if global_smoothing else logits.shape[1]
            if smoothing_eps > 0:
                smoothing = smoothing_eps * classes / (classes - 1)
                log_probs = softmax.log()
                if global_smoothing:
                    sum_log_probs = log_probs.sum(dim=-1)
                    logged_all_reduce(sum_log_probs, dist.ReduceOp.SUM, group, log=log, kind="megatron.sum_log_probs")
                    mean_log_probs = sum_log_probs / classes
                else:
                    mean_log_probs = log_probs.mean(dim=-1)  # over this shard's classes only: the original
                loss = (1.0 - smoothing) * loss - smoothing * mean_log_probs
            ctx.save_for_backward(softmax, owned, column)
            ctx.smoothing, ctx.classes = smoothing, classes
            return loss

        @staticmethod
        def backward(ctx, grad_loss):
            softmax, owned, column = ctx.saved_tensors
            grad = softmax.clone()
            rows = torch.arange(grad.shape[0])
            grad[rows, column] -= (1.0 - ctx.smoothing) * owned.to(grad.dtype)
            if ctx.smoothing:
                grad -= ctx.smoothing / ctx.classes
            return grad * grad_loss[:, None], None, None, None, None, None, None, None

    return MegatronVocabParallelCrossEntropy


def megatron_cross_entropy(logits_shard, target, *, class_start: int, num_classes: int,
                           label_smoothing: float = 0.0, global_smoothing: bool = False,
                           group=None, log: MessageLog | None = None):
    """The per-row loss (N,) of Megatron-LM's vocab-parallel cross-entropy on this shard.

    ``logits_shard`` (N, n_local) holds classes ``class_start:class_start + n_local`` of
    ``num_classes``; ``target`` (N,) int64 global class indices.  Differentiable in
    ``logits_shard``.  ``label_smoothing`` eps with the local class count and local mean as
    originally implemented, or with the global ones where ``global_smoothing`` (the module
    docstring gives the formula).  With the local version a shard of one class divides by
    K - 1 = 0, as the original does.
    """
    _check_shard(logits_shard, target, class_start, num_classes)
    if not (isinstance(label_smoothing, (int, float)) and 0.0 <= label_smoothing < 1.0):
        raise ValueError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    return _megatron_function().apply(logits_shard, target, class_start, num_classes, float(label_smoothing),
                                      bool(global_smoothing), group, log)


@functools.cache
def _partial_fc_function():
    import torch
    import torch.distributed as dist

    class PartialFCCrossEntropy(torch.autograd.Function):
        """Per-row loss of An et al. 2021's distributed softmax cross-entropy; manual backward."""

        @staticmethod
        def forward(ctx, logits, target, class_start, group, log):
            rows = torch.arange(logits.shape[0])
            max_logits = logits.amax(dim=-1, keepdim=True)
            logged_all_reduce(max_logits, dist.ReduceOp.MAX, group, log=log, kind="partial_fc.max")
            probs = (logits - max_logits).exp()
            sum_exp = probs.sum(dim=-1, keepdim=True)
            logged_all_reduce(sum_exp, dist.ReduceOp.SUM, group, log=log, kind="partial_fc.sum_exp")
            probs = probs / sum_exp
            owned, column = _owned(target, class_start, logits.shape[1])
            target_prob = torch.where(owned, probs[rows, column], torch.zeros_like(sum_exp[:, 0]))
            logged_all_reduce(target_prob, dist.ReduceOp.SUM, group, log=log, kind="partial_fc.target_prob")
            ctx.save_for_backward(probs, owned, column)
            return -target_prob.clamp_min(PARTIAL_FC_CLAMP).log()

        @staticmethod
        def backward(ctx, grad_loss):
            probs, owned, column = ctx.saved_tensors
            grad = probs.clone()
            grad[torch.arange(grad.shape[0]), column] -= owned.to(grad.dtype)
            return grad * grad_loss[:, None], None, None, None, None

    return PartialFCCrossEntropy


def partial_fc_cross_entropy(logits_shard, target, *, class_start: int, reduction: str = "mean",
                             group=None, log: MessageLog | None = None):
    """Partial FC's distributed cross-entropy on this shard: -log(max(p_y, 1e-30)), mean or per row.

    ``logits_shard`` (N, n_local) holds classes ``class_start:class_start + n_local``
    (already scaled and with the margin); ``target`` (N,) int64 global class indices.
    Differentiable in ``logits_shard``; the gradient is p - onehot(y), as in the paper's
    backward, also where the clamp is active.
    """
    _check_shard(logits_shard, target, class_start)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    loss = _partial_fc_function().apply(logits_shard, target, class_start, group, log)
    return loss.mean() if reduction == "mean" else loss


def partial_fc_margin_logits(embeddings, weight_shard, target, *, class_start: int, scale: float = 64.0,
                             angular_margin: float = 0.5, additive_margin: float = 0.0):
    """s (cos(theta_y + m2) - m3) at owned targets, s cos theta elsewhere; (N, n_local), autograd.

    cos theta = <x/|x|, w/|w|>.  ArcFace (Deng et al. 2019) is m2 = 0.5, m3 = 0; CosFace
    (Wang et al. 2018) m2 = 0, m3 = 0.35.  theta = arccos of the cosine clamped to
    [-1 + 1e-7, 1 - 1e-7], where arccos has a finite derivative.  The gradient is this
    formula's, by autograd.
    """
    import torch

    _check_features(embeddings, weight_shard, "embeddings")
    _check_shard(embeddings.new_empty((embeddings.shape[0], weight_shard.shape[0])), target, class_start)
    cos = torch.nn.functional.normalize(embeddings, dim=-1) @ torch.nn.functional.normalize(weight_shard, dim=-1).T
    owned, column = _owned(target, class_start, weight_shard.shape[0])
    rows = torch.nonzero(owned).flatten()
    cos_target = cos[rows, column[rows]]
    if angular_margin:
        theta = cos_target.clamp(-1.0 + 1e-7, 1.0 - 1e-7).arccos()
        cos_target = (theta + angular_margin).cos()
    margined = cos.index_put((rows, column[rows]), cos_target - additive_margin)
    return scale * margined


def _forward_backward(loss_of_logits, x, weight_shard):
    """(loss, grad x, grad weight_shard) of loss_of_logits(x', W') at x, weight_shard."""
    x = x.detach().clone().requires_grad_(True)
    weight = weight_shard.detach().clone().requires_grad_(True)
    loss = loss_of_logits(x, weight)
    loss.backward()
    return loss.detach(), x.grad, weight.grad


def megatron_forward_backward(x, weight_shard, target, *, class_start: int, num_classes: int,
                              label_smoothing: float = 0.0, global_smoothing: bool = False,
                              group=None, log: MessageLog | None = None):
    """Mean Megatron loss of the logits x W_shard^T, and its gradients.

    Returns (loss, grad_x, grad_weight_shard); grad_x is this shard's part, whose sum over the
    processes is the gradient of x (Megatron-LM sums it with an all_reduce, not sent here).
    """
    _check_features(x, weight_shard, "x")
    return _forward_backward(
        lambda xx, ww: megatron_cross_entropy(xx @ ww.T, target, class_start=class_start, num_classes=num_classes,
                                              label_smoothing=label_smoothing, global_smoothing=global_smoothing,
                                              group=group, log=log).mean(),
        x, weight_shard)


def partial_fc_forward_backward(embeddings, weight_shard, target, *, class_start: int, scale: float = 64.0,
                                angular_margin: float = 0.5, additive_margin: float = 0.0,
                                group=None, log: MessageLog | None = None):
    """Mean Partial FC margin loss of the whole batch's ``embeddings`` on this weight shard, and its gradients.

    Returns (loss, grad_embeddings, grad_weight_shard); grad_embeddings is this shard's part
    (the module docstring says what Partial FC sends around these).
    """
    _check_features(embeddings, weight_shard, "embeddings")
    return _forward_backward(
        lambda xx, ww: partial_fc_cross_entropy(
            partial_fc_margin_logits(xx, ww, target, class_start=class_start, scale=scale,
                                     angular_margin=angular_margin, additive_margin=additive_margin),
            target, class_start=class_start, group=group, log=log),
        embeddings, weight_shard)

