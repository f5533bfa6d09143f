"""The one reduction of per-row losses and the one upstream gradient, for every loss.

``reduction`` is ``"none"``, ``"mean"`` or ``"sum"``:

* ``"none"``: the float64 losses rounded once to the output dtype, in the batch's shape;
* ``"sum"`` and ``"mean"``: a NumPy scalar of the output dtype (``np.float32`` or
  ``np.float64``), as NumPy's own reductions return, rounded once from the float64 sum;
  the mean divides by its denominator (the rows, the entries, or the target weights of
  cross-entropy) and is 0 over nothing (PyTorch returns NaN there).

The upstream gradient ``grad_output`` is a real number for ``"mean"``/``"sum"`` and a
number or an array of the unreduced loss' shape for ``"none"``; ``row_scales`` turns it
into dOut/dloss_i in float64, the factor every kernel's gradient is multiplied by.
"""

from __future__ import annotations

import math

import numpy as np

from .._validation import check_grad_output

__all__ = ["reduce_losses", "row_scales"]


def reduce_losses(losses, reduction, batch_shape, dtype, denominator, total=None):
    """The loss from float64 per-row (or per-entry) losses.

    ``total`` is their sum when the kernel has formed it (in cache, in a fixed order);
    otherwise it is NumPy's pairwise ``np.sum`` in float64, which does not depend on the
    thread count either.  ``dtype`` is the output's NumPy dtype.
    """
    dtype = np.dtype(dtype)
    if reduction == "none":
        return losses.astype(dtype, copy=False).reshape(batch_shape)
    if total is None:
        total = float(np.sum(losses))
    if reduction == "sum":
        return dtype.type(total)
    return dtype.type(total / denominator if denominator != 0 else 0.0)


def row_scales(grad_output, reduction, denominator, batch_shape, per_row=False):
    """dOut/dloss_i as float64 (validated ``grad_output``).

    For ``"none"``: g_i, one per row, shape (rows,) (a scalar ``grad_output`` is broadcast).
    For ``"sum"`` and ``"mean"``: one value for every row, g or g / denominator (0 for a
    mean over nothing), as an array (1,), or (rows,) with ``per_row`` for the kernels that
    index it per row.  The loss kernels read the short form with ``losses.upstream_at``.
    """
    upstream = check_grad_output("grad_output", grad_output, reduction, batch_shape)
    rows = math.prod(batch_shape)
    if reduction == "none":
        return np.ascontiguousarray(upstream, dtype=np.float64).reshape(rows)
    value = float(upstream)
    if reduction == "mean":
        value = value / denominator if denominator != 0 else 0.0
    return np.full(rows, value) if per_row else np.array([value])
