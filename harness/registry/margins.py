"""Registry entries of the margin family: normalized_linear, the margin cross-entropies on
cosines (combined margin, NormFace, CosFace, ArcFace), L-Softmax / SphereFace, center loss.

Their exact references (mpmath, 50 digits) are ``softmaxlab.harness.exact.margins``.  The
variants ``cosface_forward_backward[from_embeddings]`` and
``arcface_forward_backward[from_embeddings]`` (``VARIANTS``, timing only, run when named)
time the whole path from embeddings x and weights W: ours ``normalized_linear`` ->
``*_forward_backward`` -> ``normalized_linear_backward``, torch's ``F.normalize``,
``F.linear``, the margin and cross-entropy with autograd to x and W, and pml's loss on
(x, labels) with its weights set to W^T.

Inputs.  ``shape = (rows, classes)``.  The cosine losses take ``cos`` (rows, classes) and
``target`` (rows,) int64; the feature losses take ``x`` (rows, D), ``W`` or ``centers``
(classes, D) and ``target``, with D = 512 for the benchmark shapes (>= 10^6 logits) and
D = 16 below (the accuracy shapes, where the references are computed in mpmath).  The input
regimes of ``regimes.py`` are read for cosines as:

* ``normal_x3``  cos = tanh(0.4 N(0, 1)), the target's uniform in [-0.95, 0.95] (both
  ArcFace branches); x, W standard normal.  The benchmarks' input.
* ``near_ties``  every cosine of a row within 3 ULPs of a row value in [-0.5, 0.9].
* ``dominant``   the target cosine is exactly 1 (the end where ArcFace's f' is unbounded:
  the reference follows the documented convention f'(1) = f'(nextafter(1, 0)),
  docs/proofs/margins.md#arcface-derivative-at-the-ends), the others 0.1 N(0, 1); for the
  feature losses x_i = 3 W_{y_i} (cos_y = 1 up to rounding).

Term magnitudes of the gradients (``scales``, the condition-aware error of ``metrics.py``):
every gradient has them (``exact.margins``): normalized_linear_backward's dx and dW, the
cosine losses' dcos, L-Softmax / SphereFace's dx and dW, the center loss's dx and dcenters.

Parameters (fixed per entry, as the frameworks' defaults): ``margin_cross_entropy`` s = 64,
(m1, m2, m3) = (1, 0.3, 0.2) (InsightFace's combined ArcFace + CosFace); ``normface`` s = 20
(pml's NormalizedSoftmaxLoss, temperature 0.05); ``cosface`` s = 64, m = 0.35; ``arcface``
s = 64, m = 0.5; ``large_margin_cross_entropy`` SphereFace, m = 4, lambda = 0; ``center_update``
alpha = 0.5.  Reduction "mean", grad_output 1.

Providers: ``softmaxlab``; ``torch``, a plain composition (the margin logits built with torch
ops, ``F.cross_entropy``, ``torch.autograd.grad``); ``pml``, pytorch-metric-learning: its
``SphereFaceLoss`` on (x, W), and on cosines its own target-logit code
(``modify_cosine_of_target_classes`` and ``scale_logits`` of ``CosFaceLoss`` / ``ArcFaceLoss``,
then cross-entropy, as its ``compute_loss`` does after the cosines).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from softmaxlab import kernels

from .. import exact, regimes
from ..providers import pml as pml_provider
from ..providers import torch as torch_provider
from ..providers.softmaxlab import margin_from_embeddings, with_inputs
from .core import MARGIN_BENCH_SHAPES, Cost, Implementation, Operation, forward_and_fused

MARGIN_REGIMES = ("normal_x3", "near_ties", "dominant")
FEATURE_REGIMES = ("normal_x3", "dominant")
BENCH_FEATURES = 512
ACCURACY_FEATURES = 16

# (s, m1, m2, m3) of each cosine entry
COSINE_LOSSES = {
    "margin_cross_entropy": (64.0, 1.0, 0.3, 0.2),
    "normface": (20.0, 1.0, 0.0, 0.0),
    "cosface": (64.0, 1.0, 0.0, 0.35),
    "arcface": (64.0, 1.0, 0.5, 0.0),
}
LARGE_MARGIN = dict(m=4, lambda_=0.0, normalize_weights=True)
CENTER_ALPHA = 0.5


def features_for(shape) -> int:
    """D of the feature inputs: 512 for the benchmark shapes, 16 for the accuracy shapes."""
    return BENCH_FEATURES if shape[0] * shape[1] >= 1_000_000 else ACCURACY_FEATURES



# ---- inputs -----------------------------------------------------------------------------------


def cosine_inputs(regime: str, shape, dtype, seed: int) -> dict:
    """{"cos": (rows, classes), "target": (rows,) int64} for a regime (see the module docstring)."""
    rows, classes = shape
    rng = regimes.rng_for(regime, shape, dtype, seed, "cosines")
    target = rng.integers(0, classes, size=rows)
    chosen = (np.arange(rows), target)
    if regime == "normal_x3":
        cos = np.tanh(0.4 * rng.standard_normal(shape))
        cos[chosen] = rng.uniform(-0.95, 0.95, size=rows)
    elif regime == "near_ties":
        centre = rng.uniform(-0.5, 0.9, size=rows).astype(dtype).astype(np.float64)
        spacing = np.spacing(np.abs(centre).astype(dtype)).astype(np.float64)
        cos = centre[:, None] + rng.integers(-3, 4, size=shape) * spacing[:, None]
    elif regime == "dominant":
        cos = np.clip(0.1 * rng.standard_normal(shape), -1.0, 1.0)
        cos[chosen] = 1.0
    else:
        raise ValueError(f"regime must be one of {MARGIN_REGIMES} for the cosine losses, got {regime!r}")
    return {"cos": np.ascontiguousarray(cos.astype(dtype)), "target": target.astype(np.int64)}


def feature_inputs(regime: str, shape, dtype, seed: int, weights_name: str = "W") -> dict:
    """{"x": (rows, D), weights_name: (classes, D), "target": (rows,)}."""
    rows, classes = shape
    features = features_for(shape)
    rng = regimes.rng_for(regime, shape, dtype, seed, "features")
    weights = rng.standard_normal((classes, features))
    target = rng.integers(0, classes, size=rows)
    if regime == "normal_x3":
        x = rng.standard_normal((rows, features))
    elif regime == "dominant":
        x = 3.0 * weights[target]
    else:
        raise ValueError(f"regime must be one of {FEATURE_REGIMES} for the feature losses, got {regime!r}")
    return {"x": x.astype(dtype), weights_name: weights.astype(dtype), "target": target.astype(np.int64)}


def normalized_linear_inputs(regime, shape, dtype, seed):
    inputs = feature_inputs(regime, shape, dtype, seed)
    del inputs["target"]
    return inputs


def normalized_linear_backward_inputs(regime, shape, dtype, seed):
    inputs = normalized_linear_inputs(regime, shape, dtype, seed)
    inputs["grad_cos"] = regimes.upstream_gradient(shape, dtype, regimes.rng_for(regime, shape, dtype, seed, "dy"))
    return inputs


def center_inputs(regime, shape, dtype, seed):
    return feature_inputs(regime, shape, dtype, seed, weights_name="centers")


# ---- costs ----------------------------------------------------------------------------------------


# Written: the per-row losses (the kernels write them before reducing; also the "none" output)
# and every gradient element.

def _cosine_cost(with_gradient):
    def cost(shape):
        elements = shape[0] * shape[1]
        return Cost(read_elements=elements + shape[0], written_elements=shape[0] + (elements if with_gradient else 0),
                    exp_count=elements)

    return cost


def _feature_cost(with_gradient, exps=True, outputs="loss"):
    """Every input read once, every output written once (D = features_for(shape)); the
    products x W^T (and G W, G^T x for the gradients) of the entries on x W^T."""

    def cost(shape):
        rows, classes = shape
        features = features_for(shape)
        read = (rows + classes) * features + rows
        forward = ((rows, features, classes),)  # x W^T
        backward = ((rows, classes, features), (classes, rows, features))  # G W, G^T x
        if outputs == "cos":
            written, matmuls = rows * classes, forward
        elif outputs == "gradients":
            read += rows * classes
            written, matmuls = (rows + classes) * features, backward
        elif outputs == "centers":
            written, matmuls = classes * features, ()
        else:
            written = rows + ((rows + classes) * features if with_gradient else 0)
            # the losses on x W^T (not the center loss, which has no product)
            matmuls = (forward + (backward if with_gradient else ())) if exps else ()
        return Cost(read_elements=read, written_elements=written, exp_count=rows * classes if exps else 0,
                    matmuls=matmuls)

    return cost


# ---- the exact references, from softmaxlab.harness.exact -------------------------------------------


def _exact_for(function, with_gradient=True, name="the margin family"):
    """``exact(inputs, engine)``: ``function(inputs)`` as a tuple (only its first output without the gradient)."""

    def compute(inputs, engine):
        exact.require_mpmath(engine, name)
        result = function(inputs)
        result = result if isinstance(result, tuple) else (result,)
        return result if with_gradient else result[:1]

    return compute


# ---- the entries ----------------------------------------------------------------------------------

_TORCH = ("torch",)
# the entries on features x and weights W (or centers), and those on cosines
_feature_operation = partial(Operation, regimes=FEATURE_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES)
_cosine_operation = partial(Operation, regimes=MARGIN_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES)
_PML_COSINE = {
    "cosface": ("CosFaceLoss", dict(margin=0.35, scale=64)),
    "arcface": ("ArcFaceLoss", dict(margin=math.degrees(0.5), scale=64)),
}


def _kernel_parameters(name, s, m1, m2, m3) -> dict:
    """The keyword options of the kernel ``name`` for margins (s, m1, m2, m3)."""
    if name == "margin_cross_entropy":
        return dict(s=s, m1=m1, m2=m2, m3=m3)
    if name == "normface":
        return dict(s=s)
    if name == "cosface":
        return dict(s=s, m=m3)
    return dict(s=s, m=m2)


def _normalized_linear_entries():
    for backward in (False, True):
        kernel = "normalized_linear_backward" if backward else "normalized_linear"
        yield _feature_operation(
            kernel=kernel, op="normalized_linear", mode="backward" if backward else "forward",
            outputs=("dx", "dW") if backward else ("cos",),
            make_inputs=normalized_linear_backward_inputs if backward else normalized_linear_inputs,
            exact=_exact_for(lambda inputs: exact.exact_normalized_linear(inputs["x"], inputs["W"],
                                                                          inputs.get("grad_cos"))),
            scales=(lambda inputs, engine: exact.normalized_linear_gradient_scales(
                inputs["x"], inputs["W"], inputs["grad_cos"])) if backward else None,
            cost=_feature_cost(backward, exps=False, outputs="gradients" if backward else "cos"),
            implementations=(
                Implementation("softmaxlab", with_inputs(getattr(kernels, kernel))),
                Implementation("torch", torch_provider.normalized_linear(backward), requires=_TORCH,
                               description=("torch.autograd.grad of " if backward else "")
                               + "F.linear(F.normalize(x), F.normalize(W))"),
            ),
            description="(dx, dW) for an upstream grad_cos; torch rebuilds the forward inside the timed call"
            if backward else "cos = x_hat W_hat^T; D = 512 at the benchmark shapes",
        )


def _cosine_entries(name, margins):
    parameters = _kernel_parameters(name, *margins)
    for kernel, mode, with_gradient in forward_and_fused(name):
        implementations = [
            Implementation("softmaxlab", with_inputs(getattr(kernels, kernel), **parameters)),
            Implementation("torch", torch_provider.margin(*margins, with_gradient), requires=_TORCH,
                           description="F.cross_entropy(s * cos with the target's f(c)); autograd"),
        ]
        if name in _PML_COSINE:
            loss_class, pml_parameters = _PML_COSINE[name]
            implementations.append(Implementation(
                "pml", pml_provider.on_cosines(loss_class, with_gradient, **pml_parameters),
                requires=pml_provider.REQUIRES,
                description=f"pml {loss_class}: modify_cosine_of_target_classes, scale_logits, cross-entropy"))
        yield _cosine_operation(
            kernel=kernel, op=name, mode=mode, outputs=("loss", "dcos") if with_gradient else ("loss",),
            make_inputs=cosine_inputs,
            exact=_exact_for(lambda inputs: exact.exact_margin(inputs["cos"], inputs["target"], *margins),
                             with_gradient),
            scales=(lambda inputs, engine: (None, exact.margin_gradient_scale(inputs["cos"], inputs["target"],
                                                                              *margins))) if with_gradient else None,
            cost=_cosine_cost(with_gradient),
            implementations=tuple(implementations),
            description=f"{name} on cosines, {parameters}, reduction mean",
        )


def _large_margin_entries():
    for kernel, mode, with_gradient in forward_and_fused("large_margin_cross_entropy"):
        yield _feature_operation(
            kernel=kernel, op="large_margin_cross_entropy", mode=mode,
            outputs=("loss", "dx", "dW") if with_gradient else ("loss",),
            make_inputs=feature_inputs,
            exact=_exact_for(lambda inputs: exact.exact_large_margin(
                inputs["x"], inputs["W"], inputs["target"], LARGE_MARGIN["m"], LARGE_MARGIN["lambda_"],
                LARGE_MARGIN["normalize_weights"]), with_gradient),
            scales=(lambda inputs, engine: (None, *exact.large_margin_gradient_scales(
                inputs["x"], inputs["W"], inputs["target"], LARGE_MARGIN["m"], LARGE_MARGIN["lambda_"],
                LARGE_MARGIN["normalize_weights"]))) if with_gradient else None,
            cost=_feature_cost(with_gradient),
            implementations=(
                Implementation("softmaxlab", with_inputs(getattr(kernels, kernel), **LARGE_MARGIN)),
                Implementation("torch", torch_provider.large_margin(with_gradient, **LARGE_MARGIN), requires=_TORCH,
                               description="SphereFace logits with torch ops (psi from arccos), cross-entropy, "
                                           "autograd"),
                Implementation("pml", pml_provider.on_embeddings("SphereFaceLoss", with_gradient,
                                                                 margin=LARGE_MARGIN["m"], scale=1),
                               requires=pml_provider.REQUIRES,
                               description="pml SphereFaceLoss(margin=4, scale=1), weights W^T"),
            ),
            description="SphereFace (A-Softmax) m = 4, lambda = 0; D = 512 at the benchmark shapes",
        )


def _center_entries():
    for kernel, mode, with_gradient in forward_and_fused("center_loss"):
        yield _feature_operation(
            kernel=kernel, op="center_loss", mode=mode,
            outputs=("loss", "dx", "dcenters") if with_gradient else ("loss",),
            make_inputs=center_inputs,
            exact=_exact_for(lambda inputs: exact.exact_center(inputs["x"], inputs["target"], inputs["centers"]),
                             with_gradient),
            scales=(lambda inputs, engine: (None, *exact.center_gradient_scales(
                inputs["x"], inputs["target"], inputs["centers"]))) if with_gradient else None,
            cost=_feature_cost(with_gradient, exps=False),
            implementations=(
                Implementation("softmaxlab", with_inputs(getattr(kernels, kernel))),
                Implementation("torch", torch_provider.center(with_gradient), requires=_TORCH,
                               description="0.5 * ((x - centers[target])**2).sum(1).mean(); autograd"),
            ),
            description="Wen et al.'s center loss, mean over the batch",
        )
    yield _feature_operation(
        kernel="center_update", op="center_loss", mode="forward", outputs=("centers",),
        make_inputs=center_inputs,
        exact=_exact_for(lambda inputs: exact.exact_center(inputs["x"], inputs["target"], inputs["centers"],
                                                           CENTER_ALPHA)),
        cost=_feature_cost(False, exps=False, outputs="centers"),
        implementations=(
            Implementation("softmaxlab", with_inputs(kernels.center_update, alpha=CENTER_ALPHA)),
            Implementation("torch", torch_provider.center(False, alpha=CENTER_ALPHA), requires=_TORCH,
                           description="index_add_ of (c_y - x) and of the counts"),
        ),
        description="c_j - alpha sum_{y_i = j}(c_j - x_i) / (1 + n_j), alpha = 0.5",
    )


def _from_embeddings_variant(name):
    """``<name>_forward_backward[from_embeddings]``: (loss, dx, dW) from x and W, timing only."""
    margins = COSINE_LOSSES[name]
    loss_class, pml_parameters = _PML_COSINE[name]
    kernel = f"{name}_forward_backward"

    def no_reference(inputs, engine):
        raise NotImplementedError(f"{kernel}[from_embeddings] is timed only (its parts have references)")

    return Operation(
        kernel=f"{kernel}[from_embeddings]", op=name, mode="forward_backward", outputs=("loss", "dx", "dW"),
        make_inputs=feature_inputs, exact=no_reference, cost=_feature_cost(True),
        implementations=(
            Implementation("softmaxlab", margin_from_embeddings(kernels, getattr(kernels, kernel),
                                                                **_kernel_parameters(name, *margins)),
                           description="normalized_linear -> forward_backward -> normalized_linear_backward"),
            Implementation("torch", torch_provider.margin_from_embeddings(*margins), requires=_TORCH,
                           description="F.normalize, F.linear, the margin, cross-entropy; autograd to x and W"),
            Implementation("pml", pml_provider.on_embeddings(loss_class, True, **pml_parameters),
                           requires=pml_provider.REQUIRES, description=f"pml {loss_class}, weights W^T"),
        ),
        regimes=(), bench_shapes=MARGIN_BENCH_SHAPES,
        description=f"{name} from embeddings, D = 512 at the benchmark shapes",
    )


ENTRIES = (
    *_normalized_linear_entries(),
    *(entry for name, margins in COSINE_LOSSES.items() for entry in _cosine_entries(name, margins)),
    *_large_margin_entries(),
    *_center_entries(),
)

VARIANTS = tuple(_from_embeddings_variant(name) for name in ("cosface", "arcface"))
