"""softmaxlab.distributed: losses over classes sharded across processes (torch.distributed).

Each process holds a slice of the classes and exchanges a few floats per row, never logits.
This package imports torch only inside the functions that use it: ``import
softmaxlab.distributed`` works without torch installed.

* ``_comm``: the messages (``all_gather_rows``, ``all_reduce_sum_fixed_order``; the rows
  sent to the ranks that own them and the owners' results gathered, ``rows_to_owners`` and
  ``gather_row_blocks``, whose bytes per process do not grow with P; by them
  ``all_reduce_rows_by_owner``, the same rank-order sum) and
  ``MessageLog``, which counts the bytes each call sends under the collective-algorithm model
  stated in ``_comm``'s docstring.
* ``ports``: torch ports of Megatron-LM's vocab-parallel cross-entropy (Shoeybi et al. 2019)
  and Partial FC's distributed margin softmax (An et al. 2021), written from their published
  formulas, as comparison points.
* ``_sharded``: ``sharded_linear_cross_entropy_forward_backward``, the fused linear
  cross-entropy with the class weights sharded (two rounds of per-row statistics, merged by
  each row's owner), with the
  single process's bits for shards of 2^j class tiles, and ``sharded_linear_cross_entropy``,
  its differentiable torch form for training (``examples/train_sharded.py``).
* ``_sharded_margin``: ``sharded_linear_margin_cross_entropy_forward_backward``, the fused
  margin cross-entropy (NormFace, CosFace, ArcFace) over the same shards, and its
  differentiable torch form ``sharded_linear_margin_cross_entropy``.
* ``_sampling``: ``sampled_sharded_linear_cross_entropy_forward_backward``, the same loss over
  every positive class of the batch and a seeded sample of the negatives, as Partial FC's
  sample rate (An et al. 2021): an approximation of the full softmax.
"""

from __future__ import annotations

from ._comm import (MessageLog, all_gather_rows, all_reduce_rows_by_owner, all_reduce_sum_fixed_order,
                    gather_row_blocks, row_blocks, rows_to_owners, sent_bytes)
from ._sampling import sampled_sharded_linear_cross_entropy_forward_backward
from ._sharded import sharded_linear_cross_entropy, sharded_linear_cross_entropy_forward_backward
from ._sharded_margin import sharded_linear_margin_cross_entropy, sharded_linear_margin_cross_entropy_forward_backward

__all__ = ["MessageLog", "all_gather_rows", "all_reduce_rows_by_owner", "all_reduce_sum_fixed_order",
           "gather_row_blocks", "row_blocks", "rows_to_owners", "sent_bytes",
           "sampled_sharded_linear_cross_entropy_forward_backward", "sharded_linear_cross_entropy",
           "sharded_linear_cross_entropy_forward_backward", "sharded_linear_margin_cross_entropy",
           "sharded_linear_margin_cross_entropy_forward_backward"]
