"""Binary cross-entropy with logits (one sigmoid per class, multi-label), fused with its gradient.

``binary_cross_entropy_with_logits(logits, target, weight=, pos_weight=, reduction=)``
follows ``torch.nn.functional.binary_cross_entropy_with_logits``: every entry is its own
two-class problem (k sigmoid classifiers, for classes that are not mutually
exclusive).  Per entry, with sp(x) = log(1 + e^x) (softplus), sigma the logistic function,
w the weight and p_w the positive-class weight:

    l = w (p_w y sp(-x) + (1 - y) sp(x))          = w ((1 - y) x + (1 + (p_w - 1) y) sp(-x))
    dl/dx = w ((1 - y) sigma(x) - p_w y sigma(-x)) = w ((1 - y + p_w y) sigma(x) - p_w y)

(proof book: ``docs/proofs/cross_entropy.md#binary-cross-entropy-with-logits``).  The
first forms are the ones computed: two non-negative terms for targets in [0, 1], no
``x + sp(-x)`` cancellation (PyTorch's form loses all digits of sp(x) = e^-30 at x = -30:
-30 + 30.0000000000000936), sp(+-x) = max(+-x, 0) + log1p(e^-|x|) and
sigma(+-x) from e^-|x| <= 1, so logits of +-1e4 give exact zeros and ones, never
inf - inf.

The kernel is the elementwise driver's (``_driver/elementwise.py``), bit-identical for
any thread count; the quadratic cost (``_quadratic.py``) has one of its own on the same driver.
"""

from __future__ import annotations

from numba import njit

from ._config import JIT_OPTIONS, STRICT_FASTMATH
from ._driver.elementwise import elementwise_loss, make_elementwise_kernel
from ._numerics.exp import log1p_unit
from ._numerics.logistic import sigmoids_for

__all__ = ["binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_forward_backward"]

PAGE = "docs/proofs/cross_entropy.md"


# ---- per-element arithmetic (STRICT: every one of these is order-sensitive) -----------------


# inline="always": LLVM's inliner found it too large, and the call kept the loop scalar
@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _binary_term(values, x, y, weight, positive_weight):
    """(loss, dloss/dx) of one entry of binary cross-entropy with logits, in float64 (``x`` from ``values``)."""
    positive, negative, e = sigmoids_for(values, x)
    log_term = log1p_unit(e)  # vectorizable (libm's log1p is a scalar call)
    softplus = max(x, 0.0) + log_term  # sp(x)
    softplus_negative = max(-x, 0.0) + log_term  # sp(-x)
    positive_part = positive_weight * y
    negative_part = 1.0 - y
    # l = w (p_w y sp(-x) + (1 - y) sp(x)); a term whose factor is 0 adds 0, also at x = -+inf
    # (a masked logit with y = 0 costs nothing, not 0 * inf = NaN)
    inner = (positive_part * softplus_negative if positive_part != 0.0 else 0.0) + (
        negative_part * softplus if negative_part != 0.0 else 0.0
    )
    loss = weight * inner if weight != 0.0 else 0.0
    # dl/dx = w ((1 - y) sigma(x) - p_w y sigma(-x))
    gradient = weight * (negative_part * positive - positive_part * negative)
    return loss, gradient


_kernel = make_elementwise_kernel(_binary_term)


def binary_cross_entropy_with_logits(logits, target, *, weight=None, pos_weight=None, reduction="mean"):
    r"""Binary cross-entropy of a sigmoid per entry, from logits (multi-label classification).

    PyTorch's ``binary_cross_entropy_with_logits``:

    .. math::
        \ell_{ij} = w_{ij}\big(p_j\, y_{ij}\, \mathrm{sp}(-x_{ij}) + (1 - y_{ij})\, \mathrm{sp}(x_{ij})\big)
                  = -w_{ij}\big(p_j\, y_{ij} \log\sigma(x_{ij}) + (1 - y_{ij}) \log(1 - \sigma(x_{ij}))\big)

    with sp(x) = log(1 + e^x), ``w`` the weight and ``p`` the positive-class weight.

    Args:
        logits: float32 or float64 array of any shape (classes last); not modified.
        target: array of ``logits``' shape and dtype, targets in [0, 1] (soft labels allowed).
        weight: optional float array broadcastable to ``logits``' shape (e.g. ``(C,)``
            per class or ``(N, 1)`` per sample).
        pos_weight: optional float array broadcastable to ``logits``' shape, usually
            ``(C,)``: the weight of the positive term of each class.
        reduction: ``"mean"`` over every entry (default), ``"sum"`` or ``"none"``.

    Returns:
        A scalar of ``logits``' dtype, or an array of ``logits``' shape for ``"none"``.
        Stable for any finite logit: +-1e4 gives exact 0 or ``|x|``, never inf or NaN.
        The mean over an empty array is 0.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import binary_cross_entropy_with_logits
        >>> float(binary_cross_entropy_with_logits(np.array([0.0, 1e4]), np.array([1.0, 0.0]), reduction="sum"))
        10000.69314718056

    References: PyTorch's ``BCEWithLogitsLoss`` documentation; ``docs/proofs/cross_entropy.md``,
    "binary cross-entropy with logits".
    """
    loss, _ = elementwise_loss(_kernel, logits, target, reduction, 1.0, False, weight, pos_weight)
    return loss


def binary_cross_entropy_with_logits_forward_backward(logits, target, *, weight=None, pos_weight=None,
                                                      reduction="mean", grad_output=1.0):
    r""":func:`binary_cross_entropy_with_logits` and its gradient in the logits, in one kernel.

    .. math::
        \frac{\partial \ell_{ij}}{\partial x_{ij}} = w_{ij}\big((1 - y_{ij})\,\sigma(x_{ij}) - p_j\, y_{ij}\,\sigma(-x_{ij})\big)
        = w_{ij}\big((1 - y_{ij} + p_j y_{ij})\,\sigma(x_{ij}) - p_j y_{ij}\big)

    times ``grad_output`` and 1/(number of entries) for ``"mean"``.

    Args:
        logits, target, weight, pos_weight, reduction: as :func:`binary_cross_entropy_with_logits`.
        grad_output: upstream gradient: a real number, or for ``"none"`` a float array of
            ``logits``' shape.

    Returns:
        ``(loss, grad)``, ``grad`` of ``logits``' shape and dtype.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import binary_cross_entropy_with_logits_forward_backward
        >>> binary_cross_entropy_with_logits_forward_backward(np.array([0.0]), np.array([1.0]))[1]
        array([-0.5])

    References: as :func:`binary_cross_entropy_with_logits`.
    """
    return elementwise_loss(_kernel, logits, target, reduction, grad_output, True, weight, pos_weight)
