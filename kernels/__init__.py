"""softmaxlab.kernels: Numba CPU kernels for the softmax family behind validated NumPy functions.

NumPy in, NumPy out; float32 and float64; classes on the last axis unless ``axis`` says
otherwise.  See the README for the edge-case semantics and the measured accuracy.
"""

from .softmax import log_softmax, log_softmax_backward, logsumexp, softmax, softmax_backward

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward"]
