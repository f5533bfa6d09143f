"""The quadratic cost of a sigmoid unit, the counter-example to cross-entropy.

``(y - sigma(x))^2 / 2`` per entry has the gradient ``(a - y) a (1 - a)``, which vanishes
when the unit saturates on the wrong side (a = 0.98 for y = 0 learns slower than
a = 0.82): the reason cross-entropy (gradient a - y) is used instead (Nielsen,
"Neural networks and deep learning", ch. 3; ``docs/proofs/cross_entropy.md``, "quadratic
cost on a sigmoid").  Its kernel is the elementwise driver's (``_driver/elementwise.py``).
"""

from __future__ import annotations

from numba import njit

from ._config import JIT_OPTIONS, STRICT_FASTMATH
from ._driver.elementwise import elementwise_loss, make_elementwise_kernel
from ._numerics.logistic import sigmoids_for

__all__ = ["quadratic_cost", "quadratic_cost_forward_backward"]

PAGE = "docs/proofs/cross_entropy.md"


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _quadratic_term(values, x, y):
    """(loss, dloss/dx) of one entry of the quadratic cost 1/2 (y - sigma(x))^2, in float64 (``x`` from ``values``)."""
    positive, negative, e = sigmoids_for(values, x)
    # a - y = (1 - y) a - y (1 - a): no cancellation when a rounds to 1 (a = 1 - 4e-18 at x = 40)
    difference = (1.0 - y) * positive - y * negative
    # l = (a - y)^2 / 2,  dl/dx = (a - y) a (1 - a)  with a = sigma(x), 1 - a = sigma(-x)
    return 0.5 * difference * difference, difference * (positive * negative)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _quadratic_entry(values, x, y, weight, positive_weight):
    return _quadratic_term(values, x, y)


_kernel = make_elementwise_kernel(_quadratic_entry)


def quadratic_cost(logits, target, *, reduction="mean"):
    r"""Quadratic cost of a sigmoid unit per entry (the counter-example to cross-entropy).

    .. math:: \ell = \tfrac12\,\big(y - \sigma(x)\big)^2

    Args:
        logits: float32 or float64 array of any shape; not modified.
        target: array of ``logits``' shape and dtype (targets in [0, 1]).
        reduction: ``"mean"`` over every entry (default), ``"sum"`` or ``"none"``.

    Returns:
        A scalar of ``logits``' dtype, or an array of its shape for ``"none"``.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import quadratic_cost
        >>> float(quadratic_cost(np.array([0.0]), np.array([1.0])))
        0.125

    References: M. Nielsen, "Neural networks and deep learning", ch. 3 (the learning
    slowdown); ``docs/proofs/cross_entropy.md``, "quadratic cost on a sigmoid".
    """
    loss, _ = elementwise_loss(_kernel, logits, target, reduction, 1.0, False)
    return loss


def quadratic_cost_forward_backward(logits, target, *, reduction="mean", grad_output=1.0):
    r""":func:`quadratic_cost` and its gradient in the logits, from one kernel.

    .. math:: \frac{\partial \ell}{\partial x} = (a - y)\, a\, (1 - a) = -a (1 - a)(y - a),\qquad a = \sigma(x)

    (``1 - a`` is computed as sigma(-x), without cancellation).  The factor a (1 - a)
    is why a saturated unit learns slowly: 0.0192 at a = 0.98 against a - y = 0.98 for
    cross-entropy.

    Args:
        logits, target, reduction: as :func:`quadratic_cost`.
        grad_output: upstream gradient (a float array of ``logits``' shape for ``"none"``).

    Returns:
        ``(loss, grad)``.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import quadratic_cost_forward_backward
        >>> quadratic_cost_forward_backward(np.array([0.0]), np.array([1.0]))[1]
        array([-0.125])

    References: as :func:`quadratic_cost`.
    """
    return elementwise_loss(_kernel, logits, target, reduction, grad_output, True)
