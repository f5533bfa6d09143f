"""Symbols shared by the derivations, and the expression builders for the normalizers.

Indices run over ``0 .. K - 1`` (a symbolic ``K``), so every statement built from these is
about a general number of classes.
"""

from __future__ import annotations

import sympy as sp

#: Number of classes: a general positive integer.
K = sp.Symbol("K", integer=True, positive=True)
#: Free class indices (the row and column of a Jacobian, a target class).
i, j, t = sp.symbols("i j t", integer=True, nonnegative=True)
#: Summation indices (bound inside sums only).
k, l = sp.symbols("k l", integer=True, nonnegative=True)

#: Logits, upstream gradients, target distributions (real; targets are nonnegative).
z = sp.IndexedBase("z", real=True)
dy = sp.IndexedBase("dy", real=True)
y = sp.IndexedBase("y", real=True)

#: Softmax probabilities as symbols of their own (positive), for statements about ``a``.
a = sp.IndexedBase("a", positive=True)

#: The index ranges, for :func:`resolve_index_ranges`: each free index lies in 0..K-1.
CLASS_RANGES = {i: K, j: K, t: K}


def class_sum(summand, index=k):
    """``sum_{index=0}^{K-1} summand``."""
    return sp.Sum(summand, (index, 0, K - 1))


def normalizer(logits=z, index=k):
    """``S(z) = sum_{k=0}^{K-1} exp(z_k)``, the softmax denominator."""
    return class_sum(sp.exp(logits[index]), index)


def softmax_of(logits, component, index=k):
    """``softmax(z)_j = exp(z_j) / sum_k exp(z_k)`` (Bridle 1990)."""
    return sp.exp(logits[component]) / normalizer(logits, index)


def logsumexp_of(logits, index=k):
    """``LSE(z) = log sum_k exp(z_k)``."""
    return sp.log(normalizer(logits, index))


def sigmoid(x):
    """``sigma(x) = 1 / (1 + exp(-x))``."""
    return 1 / (1 + sp.exp(-x))


def softplus(x):
    """``softplus(x) = log(1 + exp(x))``, the smooth ReLU."""
    return sp.log(1 + sp.exp(x))
