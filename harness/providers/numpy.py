"""The NumPy providers: the textbook stable formulas (``numpy``) and the naive ones (``numpy_naive``).

The naive formulas skip the max shift (the textbook formula ``exp(x) / sum(exp(x))``
without it), to show where it overflows; floating-point warnings are off for both.
"""

from __future__ import annotations

import numpy as np

from .softmaxlab import from_forward_output, on_logits


def softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logsumexp(x):
    largest = x.max(axis=-1)
    return largest + np.log(np.exp(x - largest[..., None]).sum(axis=-1))


def naive_softmax(x):
    exps = np.exp(x)
    return exps / exps.sum(axis=-1, keepdims=True)


def naive_log_softmax(x):
    return np.log(naive_softmax(x))


def naive_logsumexp(x):
    return np.log(np.exp(x).sum(axis=-1))


def softmax_backward(y, dy):
    return y * (dy - (y * dy).sum(axis=-1, keepdims=True))


def log_softmax_backward(y, dy):
    return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)


def _quiet(function):
    """Run a NumPy formula with floating-point warnings off (overflow is the point of naive)."""

    def run(*args):
        with np.errstate(all="ignore"):
            return function(*args)

    return run


def forward(formula):
    """``prepare`` of a forward formula of x."""
    return on_logits(_quiet(formula))


def backward(forward_formula, backward_formula):
    """``prepare`` of a VJP formula of (y, dy), y from ``forward_formula`` in prepare."""
    return from_forward_output(_quiet(forward_formula), _quiet(backward_formula))
