"""Registry entries of the losses: cross-entropy, distillation, the sigmoid losses, the hinges.

One entry per public loss kernel and one per its ``*_forward_backward``, each with its
default options, the providers softmaxlab, torch and jax, and the exact reference of
``softmaxlab.harness.exact.losses``.  Every option combination is tested in
``tests/kernels``; the variant ``cross_entropy_forward_backward[label_smoothing=0.1]``
(``VARIANTS``) times and checks label smoothing when named (``--kernels``).

Inputs (``make_inputs``): the logits of the regime; class indices ``target`` (int64, one
per row: for half of the rows, the row's argmax, so that the dominant regime has losses of
~1000 e^-30, for the others a uniform draw), binary targets in {0, 1} for the sigmoid
losses, and a teacher drawn from the same regime on its own stream for distillation.
Cross-entropy runs every regime (its long double reference covers 10^6 classes); the
others leave out the 10^6-class regime (mpmath there would take minutes).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from softmaxlab import kernels

from .. import exact, regimes
from ..providers import jax as jax_provider
from ..providers import torch as torch_provider
from ..providers.softmaxlab import with_inputs
from .core import NORMALIZER_BENCH_SHAPES, Cost, Implementation, Operation, forward_and_fused

# the regimes whose exact reference mpmath computes in seconds (all but the 10^6 classes)
SMALL_REGIMES = tuple(regime for regime in regimes.REGIMES if regime != regimes.MILLION_CLASSES_REGIME)
# the classic losses are comparisons, timed on one shape only
CLASSIC_BENCH_SHAPES = ((4096, 1000, "float32"),)
LABEL_SMOOTHING_VARIANT = 0.1


# ---- inputs ------------------------------------------------------------------------------------------


def class_index_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"logits": the regime's logits, "target": int64 class indices, one per row}.

    Even rows get the row's argmax (a confident, correct prediction: losses down to
    ~1000 e^-30 in the dominant regime), odd rows a uniform draw.
    """
    logits = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed))
    rng = regimes.rng_for(regime, shape, dtype, seed, "target")
    target = rng.integers(0, shape[1], size=shape[0]).astype(np.int64)
    finite_rows = np.isfinite(logits).any(axis=1)
    best = np.argmax(np.where(np.isfinite(logits), logits, -np.inf), axis=1)
    even = (np.arange(shape[0]) % 2 == 0) & finite_rows
    target[even] = best[even]
    return {"logits": logits, "target": target}


def binary_target_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"logits": the regime's logits, "target": 0/1 labels of ``dtype``, one per entry}."""
    logits = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed))
    rng = regimes.rng_for(regime, shape, dtype, seed, "binary-target")
    return {"logits": logits, "target": (rng.random(shape) < 0.5).astype(dtype)}


def distillation_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"student", "teacher": logits of the regime (own streams), "target": class indices}."""
    inputs = class_index_inputs(regime, shape, dtype, seed)
    teacher = regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed, "teacher"))
    return {"student": inputs["logits"], "teacher": teacher, "target": inputs["target"]}

# ---- costs ------------------------------------------------------------------------------------------------


def _row_loss_cost(inputs_per_element: int, exps_per_element: int, with_gradient: bool):
    """Inputs of N x C read once (plus the labels), per-row losses (and the gradient) written."""

    def cost(shape):
        elements = shape[0] * shape[1]
        return Cost(read_elements=inputs_per_element * elements + shape[0],
                    written_elements=shape[0] + (elements if with_gradient else 0),
                    exp_count=exps_per_element * elements)

    return cost


# ---- the entries -------------------------------------------------------------------------------------------

_LOSSES = (
    # kernel, exact reference, inputs, torch formula, jax formula, first input, inputs read per element,
    # exps per element, regimes, bench shapes
    ("cross_entropy", exact.exact_cross_entropy, class_index_inputs, torch_provider.cross_entropy,
     jax_provider.cross_entropy, "logits", 1, 1, regimes.REGIMES, NORMALIZER_BENCH_SHAPES),
    ("distillation_loss", exact.exact_distillation_loss, distillation_inputs, torch_provider.distillation,
     jax_provider.distillation, "student", 2, 3, SMALL_REGIMES, NORMALIZER_BENCH_SHAPES),
    ("binary_cross_entropy_with_logits", exact.exact_binary_cross_entropy_with_logits, binary_target_inputs,
     torch_provider.binary_cross_entropy, jax_provider.binary_cross_entropy, "logits", 2, 1, SMALL_REGIMES,
     CLASSIC_BENCH_SHAPES),
    ("quadratic_cost", exact.exact_quadratic_cost, binary_target_inputs, torch_provider.quadratic_cost,
     jax_provider.quadratic_cost, "logits", 2, 1, SMALL_REGIMES, CLASSIC_BENCH_SHAPES),
    ("multiclass_hinge", exact.exact_multiclass_hinge, class_index_inputs, torch_provider.multiclass_hinge,
     jax_provider.multiclass_hinge, "logits", 1, 0, SMALL_REGIMES, CLASSIC_BENCH_SHAPES),
    ("smooth_hinge", exact.exact_smooth_hinge, class_index_inputs, torch_provider.smooth_hinge,
     jax_provider.smooth_hinge, "logits", 1, 1, SMALL_REGIMES, CLASSIC_BENCH_SHAPES),
)


# the term magnitudes of the gradients (the condition-aware error); the smooth hinge, not
# named here, has none yet
GRADIENT_SCALES = {
    "cross_entropy": exact.cross_entropy_gradient_scale,
    "distillation_loss": exact.distillation_gradient_scale,
    "binary_cross_entropy_with_logits": exact.binary_cross_entropy_gradient_scale,
    "quadratic_cost": exact.quadratic_cost_gradient_scale,
    "multiclass_hinge": exact.multiclass_hinge_gradient_scale,
}


def _gradient_scales(name, parameters):
    """``scales`` of a fused entry: (None for the loss, the gradient's term magnitudes)."""
    if name not in GRADIENT_SCALES:
        return None
    scale = partial(GRADIENT_SCALES[name], **parameters)
    return lambda inputs, engine: (None, scale(**inputs, engine=engine))


def _exact_outputs(reference, with_gradient):
    def compute(inputs, engine):
        loss, grad = reference(**inputs, engine=engine)
        return (loss, grad) if with_gradient else (loss,)

    return compute


def _loss_entry(name, reference, make_inputs, torch_formula, jax_formula, first, reads, exps, regime_names,
                bench_shapes, kernel, mode, with_gradient, *, variant="", jit_name=None, parameters=None):
    parameters = parameters or {}
    return Operation(
        kernel=kernel + variant,
        op=name,
        mode=mode,
        outputs=("loss", f"d{first}") if with_gradient else ("loss",),
        make_inputs=make_inputs,
        exact=_exact_outputs(partial(reference, **parameters), with_gradient),
        scales=_gradient_scales(name, parameters) if with_gradient else None,
        cost=_row_loss_cost(reads, exps, with_gradient),
        implementations=(
            Implementation("softmaxlab", with_inputs(getattr(kernels, kernel), **parameters)),
            Implementation("torch", torch_provider.loss(partial(torch_formula, **parameters), first, with_gradient),
                           requires=("torch",)),
            Implementation("jax", jax_provider.loss(jit_name or name, jax_formula, first, with_gradient),
                           requires=("jax",)),
        ),
        regimes=regime_names,
        bench_shapes=bench_shapes,
        description=f"{name} with " + (f"{parameters}" if parameters else "its default options")
        + (f", gradient in {first}" if with_gradient else ""),
    )


ENTRIES = tuple(
    _loss_entry(*loss, kernel, mode, with_gradient)
    for loss in _LOSSES
    for kernel, mode, with_gradient in forward_and_fused(loss[0])
)

# cross-entropy with label smoothing, forward and backward: timed and checked when named
VARIANTS = (
    _loss_entry("cross_entropy", exact.exact_cross_entropy, class_index_inputs, torch_provider.cross_entropy,
                jax_provider.cross_entropy_label_smoothing(LABEL_SMOOTHING_VARIANT), "logits", 1, 1, SMALL_REGIMES,
                NORMALIZER_BENCH_SHAPES, "cross_entropy_forward_backward", "forward_backward", True,
                variant=f"[label_smoothing={LABEL_SMOOTHING_VARIANT:g}]",
                jit_name=f"cross_entropy-label_smoothing={LABEL_SMOOTHING_VARIANT:g}",
                parameters={"label_smoothing": LABEL_SMOOTHING_VARIANT}),
)
