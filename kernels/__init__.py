"""softmaxlab.kernels: Numba CPU kernels for the softmax family behind validated NumPy functions.

NumPy in, NumPy out; float32 and float64; classes on the last axis unless ``axis`` says
otherwise.  See the README for the edge-case semantics and the measured accuracy.

Every loss takes ``reduction="mean" | "sum" | "none"`` and returns, for ``"mean"`` and
``"sum"``, a NumPy scalar of the output dtype (``np.float32`` or ``np.float64``), as
NumPy's own reductions do; for ``"none"`` an array of the unreduced loss' shape and
dtype.  ``*_forward_backward`` returns that loss with the gradients, scaled by
``grad_output`` (one reduction and one upstream gradient for all: ``_driver/reduction.py``).

The names below are the whole public interface; every implementation module is private
(``_softmax.py``, ``_cross_entropy.py``, ...; the drivers in ``_driver/``, the numerics
primitives in ``_numerics/``).
"""

from ._softmax import log_softmax, log_softmax_backward, logsumexp, softmax, softmax_backward

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward"]

# The margin family.
from ._center import center_loss, center_loss_forward_backward, center_update
from ._cosine_margins import (
    arcface,
    arcface_forward_backward,
    cosface,
    cosface_forward_backward,
    margin_cross_entropy,
    margin_cross_entropy_forward_backward,
    normface,
    normface_forward_backward,
)
from ._large_margin import large_margin_cross_entropy, large_margin_cross_entropy_forward_backward
from ._normalized_linear import normalized_linear, normalized_linear_backward

__all__ += [
    "normalized_linear",
    "normalized_linear_backward",
    "margin_cross_entropy",
    "margin_cross_entropy_forward_backward",
    "normface",
    "normface_forward_backward",
    "cosface",
    "cosface_forward_backward",
    "arcface",
    "arcface_forward_backward",
    "large_margin_cross_entropy",
    "large_margin_cross_entropy_forward_backward",
    "center_loss",
    "center_loss_forward_backward",
    "center_update",
]

# The softmax and sigmoid losses.
from ._cross_entropy import cross_entropy, cross_entropy_forward_backward
from ._distillation import distillation_loss, distillation_loss_forward_backward
from ._linear_cross_entropy import linear_cross_entropy, linear_cross_entropy_forward_backward
from ._linear_margin_cross_entropy import linear_margin_cross_entropy, linear_margin_cross_entropy_forward_backward
from ._hinge import multiclass_hinge, multiclass_hinge_forward_backward, smooth_hinge, smooth_hinge_forward_backward
from ._quadratic import quadratic_cost, quadratic_cost_forward_backward
from ._sigmoid import binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_forward_backward

__all__ += [
    "cross_entropy",
    "cross_entropy_forward_backward",
    "linear_cross_entropy",
    "linear_cross_entropy_forward_backward",
    "linear_margin_cross_entropy",
    "linear_margin_cross_entropy_forward_backward",
    "distillation_loss",
    "distillation_loss_forward_backward",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_forward_backward",
    "multiclass_hinge",
    "multiclass_hinge_forward_backward",
    "smooth_hinge",
    "smooth_hinge_forward_backward",
    "quadratic_cost",
    "quadratic_cost_forward_backward",
]
