"""softmaxlab.kernels: Numba CPU kernels for the softmax family behind validated NumPy functions.

NumPy in, NumPy out; float32 and float64; classes on the last axis unless ``axis`` says
otherwise.  See the README for the edge-case semantics and the measured accuracy.
"""

from .softmax import log_softmax, log_softmax_backward, logsumexp, softmax, softmax_backward

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward"]

# The margin family (kernels/margins.py, kernels/center.py).
from .center import center_loss, center_loss_forward_backward, center_update
from .margins import (
    arcface,
    arcface_forward_backward,
    cosface,
    cosface_forward_backward,
    large_margin_cross_entropy,
    large_margin_cross_entropy_forward_backward,
    margin_cross_entropy,
    margin_cross_entropy_forward_backward,
    normalized_linear,
    normalized_linear_backward,
    normface,
    normface_forward_backward,
)

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

# The losses of cross_entropy.py, distillation.py, sigmoid.py and classic_losses.py.
from .classic_losses import (
    multiclass_hinge,
    multiclass_hinge_forward_backward,
    quadratic_cost,
    quadratic_cost_forward_backward,
    smooth_hinge,
    smooth_hinge_forward_backward,
)
from .cross_entropy import cross_entropy, cross_entropy_forward_backward
from .distillation import distillation_loss, distillation_loss_forward_backward
from .sigmoid import binary_cross_entropy_with_logits, binary_cross_entropy_with_logits_forward_backward

__all__ += [
    "cross_entropy",
    "cross_entropy_forward_backward",
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
