"""The inputs the adapter tests share: one small case per operation of the adapters' table
(``softmaxlab.adapters.operations``), as NumPy keyword arguments of the kernel function.

float64 throughout (one Numba compilation per kernel); the losses come in each reduction.
"""

from __future__ import annotations

import numpy as np

from softmaxlab.adapters.operations import OPERATIONS

REDUCTIONS = ("mean", "sum", "none")
_OPERATIONS = {operation.name: operation for operation in OPERATIONS}


def _inputs(name: str, rng: np.random.Generator) -> dict:
    """Kernel arguments of ``name`` without ``reduction`` (the maps have none)."""
    rows, classes, features = 4, 5, 3
    logits = rng.standard_normal((rows, classes)) * 2.0
    labels = rng.integers(0, classes, rows)
    cosines = rng.uniform(-0.9, 0.9, (rows, classes))
    features_x = rng.standard_normal((rows, features))
    weights_w = rng.standard_normal((classes, features))
    unit = rng.uniform(0.0, 1.0, (rows, classes))
    class_weight = rng.uniform(0.5, 1.5, classes)
    if name in ("softmax", "log_softmax", "logsumexp"):
        return {"x": rng.standard_normal((2, 3, 5)) * 2.0, "axis": 1}  # not the last axis
    if name == "normalized_linear":
        return {"x": features_x, "W": weights_w}
    if name == "cross_entropy":
        labels[1] = -100  # an ignored row
        return {"logits": logits, "target": labels, "weight": class_weight, "ignore_index": -100,
                "label_smoothing": 0.1}
    if name == "cross_entropy_probabilities":
        return {"logits": logits, "target": unit / unit.sum(axis=1, keepdims=True), "weight": None,
                "ignore_index": -100, "label_smoothing": 0.0}
    if name == "distillation_loss":
        return {"student": logits, "teacher": rng.standard_normal((rows, classes)), "target": labels,
                "temperature": 2.0, "alpha": 0.7}
    if name == "binary_cross_entropy_with_logits":
        return {"logits": logits, "target": unit, "weight": class_weight, "pos_weight": class_weight[::-1].copy()}
    if name == "margin_cross_entropy":
        return {"cos": cosines, "target": labels, "s": 8.0, "m1": 1.0, "m2": 0.3, "m3": 0.1}
    if name == "normface":
        return {"cos": cosines, "target": labels, "s": 8.0}
    if name in ("cosface", "arcface"):
        return {"cos": cosines, "target": labels, "s": 8.0, "m": 0.2}
    if name == "large_margin_cross_entropy":
        return {"x": features_x, "W": weights_w, "target": labels, "m": 2.0, "lambda_": 0.5,
                "normalize_weights": False}
    if name == "center_loss":
        return {"x": features_x, "target": labels, "centers": weights_w}
    if name in ("multiclass_hinge", "smooth_hinge"):
        return {"logits": logits, "target": labels, "margin": 0.5}
    if name == "quadratic_cost":
        return {"logits": logits, "target": unit}
    if name == "linear_cross_entropy":
        labels[2] = -100  # an ignored row
        return {"x": features_x, "linear_weight": weights_w, "target": labels,
                "linear_bias": rng.standard_normal(classes), "weight": class_weight, "ignore_index": -100,
                "label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 5.0, "memory_budget": 4096,
                "precision": "input"}
    if name == "linear_margin_cross_entropy":  # ArcFace + CosFace (InsightFace's combined margin)
        return {"x": features_x, "linear_weight": weights_w, "target": labels, "s": 8.0, "m1": 1.0, "m2": 0.3,
                "m3": 0.1, "memory_budget": 4096, "precision": "input"}
    raise KeyError(name)


def operation_of(case_id: str):
    """The operation a case id (``name`` or ``name-reduction``) exercises."""
    name = case_id.split("-")[0]
    return _OPERATIONS["cross_entropy" if name == "cross_entropy_probabilities" else name]


def case(case_id: str, seed: int = 0) -> dict:
    """The kernel arguments of a case id, e.g. ``"cross_entropy-none"`` or ``"softmax"``."""
    name, _, reduction = case_id.partition("-")
    arguments = _inputs(name, np.random.default_rng(seed))
    if reduction:
        arguments["reduction"] = reduction
    return arguments


_NAMES = [operation.name for operation in OPERATIONS] + ["cross_entropy_probabilities"]
# every operation; the losses in every reduction
CASE_IDS = [name if operation_of(name).fused is None else f"{name}-{reduction}"
            for name in _NAMES for reduction in (REDUCTIONS if operation_of(name).fused is not None else ("",))]
# one case per operation (its "mean" for the losses)
ONE_CASE_EACH = [case_id for case_id in CASE_IDS if "-" not in case_id or case_id.endswith("-mean")]
