"""Registry entries of the fused linear losses: ``linear_cross_entropy``, ``linear_margin_cross_entropy``
and their forward-backwards.

Inputs.  ``shape = (rows, classes)``: ``x`` (rows, D), ``linear_weight`` (classes, D),
``target`` (rows,) int64, with D = 512 at the benchmark shapes (>= 10^6 logits) and D = 16
below (the accuracy shapes, whose references are exact sums at 50 digits,
``exact.exact_linear_cross_entropy``).  The regimes set the logits z = x W^T:

* ``normal_x3``    x ~ N(0, 1), W ~ N(0, 9 / D): z ~ N(0, 9).  The benchmarks' input.
* ``large_1e4``    W ~ N(0, 10^8 / D): logits of magnitude 1e4.
* ``dominant``     x_i = 30 W_{y_i} / |W_{y_i}|^2 + noise: the target's logit about 30 above the rest.
* ``tiny_target``  x_i = -80 W_{y_i} / |W_{y_i}|^2: the target's probability below e^-80 = 1.8e-35
  (a loss of about 80 + log C, which ``-log(clamp(p, 1e-30))`` caps at 69).
* ``row_2e20``     one row of 2^20 classes, normal_x3's distribution, float32 only: its
  reference is ``exact.float64_linear_cross_entropy`` (float64 products and sums, the
  long-double cross-entropy; checked against mpmath on the first classes).

Variants: ``linear_cross_entropy[precision=float64]`` and its forward-backward, the kernel's
float64 mode, run when named.

Providers: ``softmaxlab``; ``torch``, the composition ``F.cross_entropy(x @ W.T, target)``
with autograd to x and W; ``torch_chunked``, torch's own ``F.linear_cross_entropy`` with
``LinearCrossEntropyOptions()`` (its chunked path); ``cce``, Apple's cut-cross-entropy
(``impl="torch_compile"``, its CPU implementation) where it installs.

``linear_margin_cross_entropy``: ArcFace (s = 64, m = 0.5, InsightFace's fallback where
theta + m > pi) on the cosines c_ij = x_i . W_j / (|x_i| |W_j|), same shapes and D.  Its
regimes set the cosines, not the logits' magnitude (the cosines do not depend on it):

* ``normal_x3``    x ~ N(0, 1), W ~ N(0, 1) with row norms in [0.5, 2]: c ~ N(0, 1 / D).  The
  benchmarks' input.
* ``dominant``     x_i = W_{y_i} / |W_{y_i}| + 0.05 noise: the target's cosine about 0.999 (ArcFace's
  slope f'(c) about 10), its probability near 1.
* ``tiny_target``  x_i = -W_{y_i} / |W_{y_i}| + 0.05 noise: the target's cosine near -1, on
  InsightFace's fallback c - m sin m, its logit about -79: a probability below e^-79.
* ``row_2e20``     one row of 2^20 classes, normal_x3's distribution, float32 only: its reference
  is ``exact.float64_linear_margin_cross_entropy`` (float64 cosines and products, the
  long-double cross-entropy; its error bound in ``exact/linear.py``).

The small shapes' references are ``exact.exact_linear_margin_cross_entropy`` (the margin
family's mpmath references on exact cosines); dx and dW have term magnitudes (``scales``,
``exact.linear_margin_gradient_scales``: normalized_linear_backward's for the exact dL/dcos).
Variants: ``[precision=float64]`` of both.  Benchmark shapes (512, 10575) and (512, 93431)
at D = 512: the margin family's class counts (10575: CASIA-WebFace's identities), 512 rows
at both.  Providers: ``softmaxlab``;
``torch``, ``F.normalize`` of the rows of x and W, ``x_hat @ W_hat.T``, the margin and
``F.cross_entropy`` as the margin family's torch provider builds them, autograd to x and W;
``pml``, pytorch-metric-learning's ``ArcFaceLoss`` on (x, target) with its weights W^T (the
same fallback).
"""

from __future__ import annotations

import math

import numpy as np

from softmaxlab import kernels

from .. import exact, regimes
from ..providers import pml as pml_provider
from ..providers import torch as torch_provider
from ..providers.softmaxlab import with_inputs
from .core import Cost, Implementation, Operation, forward_and_fused

LINEAR_REGIMES = ("normal_x3", "large_1e4", "dominant", "tiny_target", regimes.LONG_ROW_REGIME)
# (N, C, dtype) at D = 512: Liger-Kernel's and the LLM-vocabulary shapes
LINEAR_BENCH_SHAPES = ((1024, 32768, "float32"), (1024, 131072, "float32"))
LINEAR_SMOKE_SHAPES = ((5, 37, "float32"),)
BENCH_FEATURES = 512
ACCURACY_FEATURES = 16
_TORCH = ("torch",)
# ArcFace, the margin the fused margin entries run with
ARCFACE = dict(s=64.0, m1=1.0, m2=0.5, m3=0.0)
MARGIN_REGIMES = ("normal_x3", "dominant", "tiny_target", regimes.LONG_ROW_REGIME)
MARGIN_BENCH_SHAPES = ((512, 10575, "float32"), (512, 93431, "float32"))


def features_for(shape) -> int:
    return BENCH_FEATURES if shape[0] * shape[1] >= 1_000_000 and shape[0] > 1 else ACCURACY_FEATURES


def linear_inputs(regime: str, shape, dtype, seed: int) -> dict:
    """{"x": (rows, D), "linear_weight": (classes, D), "target": (rows,) int64} for ``regime``."""
    rows, classes = shape
    features = features_for(shape)
    rng = regimes.rng_for(regime, shape, dtype, seed, "linear")
    target = rng.integers(0, classes, size=rows)
    weight = rng.standard_normal((classes, features))
    x = rng.standard_normal((rows, features))
    if regime in ("normal_x3", regimes.LONG_ROW_REGIME):
        weight *= 3 / np.sqrt(features)
    elif regime == "large_1e4":
        weight *= 1e4 / np.sqrt(features)
    elif regime in ("dominant", "tiny_target"):
        weight /= np.sqrt(features)
        chosen = weight[target]
        gap = 30.0 if regime == "dominant" else -80.0
        x = gap * chosen / np.sum(chosen * chosen, axis=1, keepdims=True) + 0.1 * x / np.sqrt(features)
    else:
        raise ValueError(f"regime must be one of {LINEAR_REGIMES} for the linear cross-entropy, got {regime!r}")
    return {"x": x.astype(dtype), "linear_weight": weight.astype(dtype), "target": target.astype(np.int64)}


def linear_margin_inputs(regime: str, shape, dtype, seed: int) -> dict:
    """{"x": (rows, D), "linear_weight": (classes, D), "target": (rows,) int64} for a cosine regime."""
    rows, classes = shape
    features = features_for(shape)
    rng = regimes.rng_for(regime, shape, dtype, seed, "linear_margin")
    target = rng.integers(0, classes, size=rows)
    weight = rng.standard_normal((classes, features)) * rng.uniform(0.5, 2.0, (classes, 1))
    x = rng.standard_normal((rows, features))
    if regime in ("dominant", "tiny_target"):
        chosen = weight[target] / np.linalg.norm(weight[target], axis=1, keepdims=True)
        x = (1.0 if regime == "dominant" else -1.0) * chosen + 0.05 * x / np.sqrt(features)
    elif regime not in ("normal_x3", regimes.LONG_ROW_REGIME):
        raise ValueError(f"regime must be one of {MARGIN_REGIMES} for the linear margin cross-entropy, got {regime!r}")
    return {"x": x.astype(dtype), "linear_weight": weight.astype(dtype), "target": target.astype(np.int64)}


def _exact(with_gradient, mpmath_reference=exact.exact_linear_cross_entropy,
           float64_reference=exact.float64_linear_cross_entropy, **options):
    """``exact(inputs, engine)``: the mpmath reference, or the float64 one for the long-double engine
    (the long row), on x, linear_weight and target with ``options``."""

    def compute(inputs, engine):
        reference = float64_reference if engine == exact.LONGDOUBLE_ENGINE else mpmath_reference
        result = reference(inputs["x"], inputs["linear_weight"], inputs["target"], **options)
        return result if with_gradient else result[:1]

    return compute


def _cost(with_gradient):
    """Inputs read once, outputs written once; one exp per logit (twice with the gradient: the
    second pass recomputes them); the products x W^T, and G W and G^T x with the gradient
    (the recomputed x W^T of the second pass is the implementation's choice, not counted)."""

    def cost(shape):
        rows, classes = shape
        features = features_for(shape)
        read = (rows + classes) * features + rows
        written = 1 + ((rows + classes) * features if with_gradient else 0)
        products = ((rows, features, classes),)  # x W^T
        if with_gradient:
            products += ((rows, classes, features), (classes, rows, features))  # G W, G^T x
        return Cost(read_elements=read, written_elements=written,
                    exp_count=rows * classes * (2 if with_gradient else 1), matmuls=products)

    return cost


def _entries(precision=None):
    for kernel, mode, with_gradient in forward_and_fused("linear_cross_entropy"):
        options = {} if precision is None else {"precision": precision}
        yield Operation(
            kernel=kernel if precision is None else f"{kernel}[precision={precision}]",
            op="linear_cross_entropy", mode=mode,
            outputs=("loss", "dx", "dW") if with_gradient else ("loss",),
            make_inputs=linear_inputs,
            exact=_exact(with_gradient),
            cost=_cost(with_gradient),
            implementations=(
                Implementation("softmaxlab", with_inputs(getattr(kernels, kernel), **options)),
                Implementation("torch", torch_provider.linear_cross_entropy("composition", with_gradient),
                               requires=_TORCH, description="F.cross_entropy(x @ W.T, target); autograd to x, W"),
                Implementation("torch_chunked", torch_provider.linear_cross_entropy("chunked", with_gradient),
                               requires=_TORCH,
                               description="F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())"),
                Implementation("cce", torch_provider.linear_cross_entropy("cce", with_gradient),
                               requires=("torch", "cut_cross_entropy"),
                               description="cut_cross_entropy.linear_cross_entropy(impl='torch_compile')"),
            ),
            regimes=LINEAR_REGIMES, bench_shapes=LINEAR_BENCH_SHAPES, smoke_shapes=LINEAR_SMOKE_SHAPES,
            description="cross_entropy(x W^T, target) in chunks of classes; D = 512 at the benchmark shapes",
        )


def _margin_entries(precision=None):
    options = {} if precision is None else {"precision": precision}
    for kernel, mode, with_gradient in forward_and_fused("linear_margin_cross_entropy"):
        yield Operation(
            kernel=kernel if precision is None else f"{kernel}[precision={precision}]",
            op="linear_margin_cross_entropy", mode=mode,
            outputs=("loss", "dx", "dW") if with_gradient else ("loss",),
            make_inputs=linear_margin_inputs,
            exact=_exact(with_gradient, exact.exact_linear_margin_cross_entropy,
                         exact.float64_linear_margin_cross_entropy, **ARCFACE),
            scales=(lambda inputs, engine: (None, *exact.linear_margin_gradient_scales(
                inputs["x"], inputs["linear_weight"], inputs["target"], engine=engine, **ARCFACE)))
            if with_gradient else None,
            # the products of the fused linear cross-entropy: x W^T, and A W and A^T x with the gradient
            cost=_cost(with_gradient),
            implementations=(
                Implementation("softmaxlab", with_inputs(getattr(kernels, kernel), **ARCFACE, **options)),
                Implementation("torch", torch_provider.margin_from_embeddings(**ARCFACE, with_gradient=with_gradient,
                                                                              weight="linear_weight"),
                               requires=_TORCH, description="F.normalize(x) @ F.normalize(W).T, the ArcFace target "
                                                            "logit, F.cross_entropy; autograd to x, W"),
                Implementation("pml", pml_provider.on_embeddings("ArcFaceLoss", with_gradient, weight="linear_weight",
                                                                 margin=math.degrees(ARCFACE["m2"]),
                                                                 scale=ARCFACE["s"]),
                               requires=pml_provider.REQUIRES, description="pml ArcFaceLoss(margin=28.6 degrees, "
                                                                           "scale=64), weights W^T"),
            ),
            regimes=MARGIN_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES, smoke_shapes=LINEAR_SMOKE_SHAPES,
            description="ArcFace (s = 64, m = 0.5) on the cosines of x and W in tiles of classes; D = 512 at "
                        "the benchmark shapes",
        )


ENTRIES = (*_entries(), *_margin_entries())
# the float64 mode (products of float32 inputs in float64), run when named
VARIANTS = (*_entries("float64"), *_margin_entries("float64"))
