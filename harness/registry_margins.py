"""Registry entries of the margin family: normalized_linear, the margin cross-entropies on
cosines (combined margin, NormFace, CosFace, ArcFace), L-Softmax / SphereFace, center loss.

Loaded by ``registry.py`` (``from . import registry_margins``); every entry is built with
:class:`~softmaxlab.harness.registry.Operation` and :func:`~softmaxlab.harness.registry.register`
as that module's docstring explains.  Their exact references (mpmath, 50 digits) live here.

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

import hashlib
import math
import warnings
from functools import partial

import mpmath
import numpy as np

from softmaxlab import kernels

from . import regimes
from .frameworks import torch_module
from .metrics import Exact
from .registry import MARGIN_BENCH_SHAPES, Cost, Implementation, Operation, register

MPMATH_DIGITS = 50
MPMATH_ENGINE = f"mpmath-{MPMATH_DIGITS}"
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


# ---- exact references (mpmath, 50 digits) -------------------------------------------------------


def _to_exact(values, shape) -> Exact:
    """mpf values (flat, C order) -> Exact(hi, lo)."""
    hi = np.empty(len(values))
    lo = np.zeros(len(values))
    with mpmath.workdps(MPMATH_DIGITS):
        for index, value in enumerate(values):
            hi[index] = float(value)
            if math.isfinite(hi[index]):
                lo[index] = float(value - mpmath.mpf(hi[index]))
    return Exact(hi.reshape(shape), lo.reshape(shape), MPMATH_ENGINE)


def _check_engine(engine: str) -> None:
    if engine not in ("auto", MPMATH_ENGINE):
        raise NotImplementedError(f"the margin references are computed with {MPMATH_ENGINE} only, got {engine!r}")


def _mp_matrix(array):
    return [[mpmath.mpf(float(v)) for v in row] for row in np.asarray(array)]


def _mp_norm(vector):
    return mpmath.sqrt(mpmath.fdot(vector, vector))


def _softmax_row(logits):
    """(log-sum-exp, probabilities) of a row of mpf logits, log S as log1p of the non-maximal terms."""
    largest = max(logits)
    winner = logits.index(largest)
    rest = mpmath.fsum(mpmath.exp(z - largest) for k, z in enumerate(logits) if k != winner)
    lse = largest + mpmath.log1p(rest)
    return lse, [mpmath.exp(z - lse) for z in logits]


_CACHE: dict = {}


def _cached(key_parts, compute):
    digest = hashlib.sha1()
    for part in key_parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    key = digest.hexdigest()
    if key not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        with mpmath.workdps(MPMATH_DIGITS):
            _CACHE[key] = compute()
    return _CACHE[key]


def margin_rows_mp(cos, target, s, m1, m2, m3):
    """Per-row losses and d loss_i / d cos_i (lists of mpf) of margin_cross_entropy, at the
    caller's mpmath precision; ``cos`` (rows, classes), ``target`` (rows,).

    The definitions of kernels/margins.py: c clamped to [-1, 1]; with m1 = 1 and m2 > 0 the arc
    branch where c > cos(pi - m2), else c - m2 sin m2 - m3; f' at c clamped to
    [-c_max, c_max], c_max = nextafter(1, 0) in the input dtype.
    """
    scale, mult, add, sub = (mpmath.mpf(float(v)) for v in (s, m1, m2, m3))
    c_max = mpmath.mpf(float(np.nextafter(cos.dtype.type(1), cos.dtype.type(0))))
    switch = math.cos(math.pi - float(m2))
    losses, gradients = [], []
    for row, label in zip(_mp_matrix(cos), target):
        c = min(max(row[label], mpmath.mpf(-1)), mpmath.mpf(1))
        c_slope = min(max(c, -c_max), c_max)
        if mult == 1 and (add == 0 or float(c) <= switch):
            value, slope = c - add * mpmath.sin(add) - sub, mpmath.mpf(1)
        else:
            value = mpmath.cos(mult * mpmath.acos(c) + add) - sub
            slope = mult * mpmath.sin(mult * mpmath.acos(c_slope) + add) / mpmath.sqrt(1 - c_slope ** 2)
        logits = [scale * v for v in row]
        logits[label] = scale * value
        lse, probabilities = _softmax_row(logits)
        losses.append(lse - logits[label])
        row_gradient = [scale * a for a in probabilities]
        row_gradient[label] = scale * slope * (probabilities[label] - 1)
        gradients.append(row_gradient)
    return losses, gradients


def exact_margin(cos, target, s, m1, m2, m3):
    """(mean loss, dcos) as Exact of margin_cross_entropy(reduction="mean", grad_output=1)
    (``margin_rows_mp``)."""

    def compute():
        rows = cos.shape[0]
        losses, gradients = margin_rows_mp(cos, target, s, m1, m2, m3)
        gradient = [g / rows for row_gradient in gradients for g in row_gradient]
        return _to_exact([mpmath.fsum(losses) / rows], ()), _to_exact(gradient, cos.shape)

    return _cached((cos, target, s, m1, m2, m3), compute)


def _psi_mp(c, m):
    """psi from its definition in theta (arccos: an independent path from the kernel's Chebyshev form)
    and dpsi/dc = (-1)^k m U_{m-1}(c)."""
    theta = mpmath.acos(c)
    branch = min(int(mpmath.floor(m * theta / mpmath.pi)), m - 1)
    sign = -1 if branch % 2 else 1
    return sign * mpmath.cos(m * theta) - 2 * branch, sign * m * mpmath.chebyu(m - 1, c)


def exact_large_margin(x, W, target, m, lambda_, normalize_weights):
    """(mean loss, dx, dW) as Exact of large_margin_cross_entropy_forward_backward.

    G = dL/dz (the target column apart); dx_i = sum_{j != y} G_ij w_j + G_iy dz_y/dx_i and
    dw_j = sum_{i: y_i != j} G_ij x_i + sum_{i: y_i = j} G_iy dz_y/dw (w = W or W / |W|),
    with the target logit's gradient of docs/proofs/margins.md#large-margin-target-logit-gradient;
    SphereFace's dW through W / |W| by projection.
    """

    def compute():
        features, raw = _mp_matrix(x), _mp_matrix(W)
        raw_norms = [_mp_norm(w) for w in raw]
        weights = [[v / n for v in w] for w, n in zip(raw, raw_norms)] if normalize_weights else raw
        w_norms = [mpmath.mpf(1)] * len(raw) if normalize_weights else raw_norms
        lam = mpmath.mpf(float(lambda_))
        rows, classes, dims = len(features), len(weights), len(features[0])
        columns = [[w[e] for w in weights] for e in range(dims)]
        losses, gradient, target_terms = [], [], []
        for row, label in zip(features, target):
            norm = _mp_norm(row)
            logits = [mpmath.fdot(row, w) for w in weights]
            dot = logits[label]
            c = min(max(dot / (norm * w_norms[label]), mpmath.mpf(-1)), mpmath.mpf(1))
            psi, slope = _psi_mp(c, m)
            logits[label] = (lam * dot + norm * w_norms[label] * psi) / (1 + lam)
            lse, probabilities = _softmax_row(logits)
            losses.append(lse - logits[label])
            g = [a / rows for a in probabilities]
            g_target = (probabilities[label] - 1) / rows
            g[label] = mpmath.mpf(0)
            gradient.append(g)
            alpha = (lam + slope) / (1 + lam)
            radial = (psi - slope * c) * norm * w_norms[label] / (1 + lam)
            target_terms.append((g_target, alpha, radial, norm))
        dx = []
        for i, (row, label) in enumerate(zip(features, target)):
            g_target, alpha, radial, norm = target_terms[i]
            dx.extend(mpmath.fdot(gradient[i], columns[e])
                      + g_target * (alpha * weights[label][e] + radial / norm ** 2 * row[e]) for e in range(dims))
        feature_columns = [[row[e] for row in features] for e in range(dims)]
        dweights = []
        for j in range(classes):
            column = [gradient[i][j] for i in range(rows)]
            dweights.append([mpmath.fdot(column, feature_columns[e]) for e in range(dims)])
        for i, (row, label) in enumerate(zip(features, target)):
            g_target, alpha, radial, norm = target_terms[i]
            dweights[label] = [d + g_target * (alpha * row[e] + radial / w_norms[label] ** 2 * weights[label][e])
                               for e, d in enumerate(dweights[label])]
        if normalize_weights:
            for j, (unit, n) in enumerate(zip(weights, raw_norms)):
                along = mpmath.fdot(unit, dweights[j])
                dweights[j] = [(dweights[j][e] - along * unit[e]) / n for e in range(dims)]
        return (_to_exact([mpmath.fsum(losses) / rows], ()), _to_exact(dx, x.shape),
                _to_exact([v for w in dweights for v in w], W.shape))

    return _cached((x, W, target, m, lambda_, normalize_weights), compute)


def exact_normalized_linear(x, W, grad_cos=None):
    """cos as Exact, or (dx, dW) as Exact when ``grad_cos`` is given."""

    def compute():
        features, weights = _mp_matrix(x), _mp_matrix(W)
        x_norms = [_mp_norm(v) for v in features]
        w_norms = [_mp_norm(v) for v in weights]
        x_units = [[v / n for v in row] for row, n in zip(features, x_norms)]
        w_units = [[v / n for v in row] for row, n in zip(weights, w_norms)]
        if grad_cos is None:
            return _to_exact([mpmath.fdot(u, w) for u in x_units for w in w_units], (x.shape[0], W.shape[0]))
        upstream = _mp_matrix(grad_cos)
        dims = x.shape[1]

        def tangent(projection, unit, norm):
            along = mpmath.fdot(unit, projection)
            return [(p - along * u) / norm for p, u in zip(projection, unit)]

        dx = []
        for i, unit in enumerate(x_units):
            projection = [mpmath.fdot(upstream[i], [w[e] for w in w_units]) for e in range(dims)]
            dx.extend(tangent(projection, unit, x_norms[i]))
        dW = []
        for j, unit in enumerate(w_units):
            column = [row[j] for row in upstream]
            projection = [mpmath.fdot(column, [u[e] for u in x_units]) for e in range(dims)]
            dW.extend(tangent(projection, unit, w_norms[j]))
        return _to_exact(dx, x.shape), _to_exact(dW, W.shape)

    key = (x, W) if grad_cos is None else (x, W, grad_cos)
    return _cached(key, compute)


def exact_center(x, target, centers, alpha=None):
    """(mean loss, dx, dcenters) as Exact, or the updated centers when ``alpha`` is given."""

    def compute():
        features, middles = _mp_matrix(x), _mp_matrix(centers)
        rows, dims = len(features), len(features[0])
        if alpha is not None:
            rate = mpmath.mpf(float(alpha))
            updated = [list(c) for c in middles]
            for j in set(int(t) for t in target):
                members = [i for i in range(rows) if target[i] == j]
                for e in range(dims):
                    total = mpmath.fsum(middles[j][e] - features[i][e] for i in members)
                    updated[j][e] = middles[j][e] - rate * total / (1 + len(members))
            return _to_exact([v for c in updated for v in c], centers.shape)
        losses, dx = [], []
        dcenters = [[mpmath.mpf(0)] * dims for _ in middles]
        for i, label in enumerate(target):
            difference = [a - b for a, b in zip(features[i], middles[label])]
            losses.append(mpmath.fdot(difference, difference) / 2)
            dx.extend(d / rows for d in difference)
            dcenters[label] = [c - d / rows for c, d in zip(dcenters[label], difference)]
        return (_to_exact([mpmath.fsum(losses) / rows], ()), _to_exact(dx, x.shape),
                _to_exact([v for c in dcenters for v in c], centers.shape))

    return _cached((x, target, centers, alpha), compute)


def _exact_for(function):
    def exact(inputs, engine):
        _check_engine(engine)
        result = function(inputs)
        return result if isinstance(result, tuple) else (result,)

    return exact


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
    """Every input read once, every output written once (D = features_for(shape))."""

    def cost(shape):
        rows, classes = shape
        features = features_for(shape)
        read = (rows + classes) * features + rows
        if outputs == "cos":
            written = rows * classes
        elif outputs == "gradients":
            read += rows * classes
            written = (rows + classes) * features
        elif outputs == "centers":
            written = classes * features
        else:
            written = rows + ((rows + classes) * features if with_gradient else 0)
        return Cost(read_elements=read, written_elements=written, exp_count=rows * classes if exps else 0)

    return cost


# ---- providers: softmaxlab ------------------------------------------------------------------------


def _softmaxlab(kernel, **parameters):
    def prepare(inputs):
        return partial(kernel, **inputs, **parameters)

    return prepare


# ---- providers: torch (plain compositions) --------------------------------------------------------


def _torch_target_function(torch, c, m1, m2, m3):
    """The target's f(c) with torch ops, the definitions of kernels/margins.py (autograd through them)."""
    if m1 == 1.0 and m2 == 0.0:
        return c - m3
    if m1 == 1.0:
        arc = c * math.cos(m2) - torch.sqrt((1.0 - c) * (1.0 + c)) * math.sin(m2)
        return torch.where(c > math.cos(math.pi - m2), arc, c - m2 * math.sin(m2)) - m3
    return torch.cos(m1 * torch.arccos(c) + m2) - m3


def _torch_runner(torch, loss_of, tensors, with_gradient):
    """``run()``: ``loss_of(*tensors)`` under no_grad, or (loss, d loss / d each tensor) by autograd.grad."""
    if not with_gradient:
        def run():
            with torch.no_grad():
                return loss_of(*tensors)

        return run

    def run():
        leaves = tuple(tensor.detach().requires_grad_(True) for tensor in tensors)
        loss = loss_of(*leaves)
        return (loss.detach(), *torch.autograd.grad(loss, leaves))

    return run


def _torch_margin(s, m1, m2, m3, with_gradient):
    """F.cross_entropy(s * (cos with the target's f(c))), and dcos by torch.autograd.grad."""

    def prepare(inputs):
        torch = torch_module()
        functional = torch.nn.functional
        cos = torch.from_numpy(inputs["cos"])
        target = torch.from_numpy(inputs["target"])
        rows = torch.arange(cos.shape[0])

        def loss_of(cosines):
            logits = cosines.clone()
            logits[rows, target] = _torch_target_function(torch, cosines[rows, target], m1, m2, m3)
            return functional.cross_entropy(s * logits, target)

        return _torch_runner(torch, loss_of, (cos,), with_gradient)

    return prepare


def _torch_normalized_linear(backward):
    def prepare(inputs):
        torch = torch_module()
        functional = torch.nn.functional
        x, W = torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["W"])
        if not backward:
            def run():
                with torch.no_grad():
                    return functional.linear(functional.normalize(x, dim=1), functional.normalize(W, dim=1))

            return run
        grad_cos = torch.from_numpy(inputs["grad_cos"])

        def run():
            features, weights = x.detach().requires_grad_(True), W.detach().requires_grad_(True)
            cos = functional.linear(functional.normalize(features, dim=1), functional.normalize(weights, dim=1))
            return torch.autograd.grad(cos, (features, weights), grad_cos)

        return run

    return prepare


def _torch_large_margin(with_gradient, m, lambda_, normalize_weights):
    """The SphereFace / L-Softmax logits with torch ops (psi from arccos), cross-entropy, autograd."""

    def prepare(inputs):
        torch = torch_module()
        functional = torch.nn.functional
        x, W, target = (torch.from_numpy(inputs[name]) for name in ("x", "W", "target"))
        rows = torch.arange(x.shape[0])

        def loss_of(features, weights):
            used = functional.normalize(weights, dim=1) if normalize_weights else weights
            logits = features @ used.T
            magnitude = features.norm(dim=1) * used[target].norm(dim=1)
            dot = logits[rows, target]
            cosine = (dot / magnitude).clamp(-1.0, 1.0)
            theta = torch.arccos(cosine)
            with torch.no_grad():
                branch = torch.clamp(torch.floor(m * theta / math.pi), max=m - 1)
            psi = (1.0 - 2.0 * (branch % 2)) * torch.cos(m * theta) - 2.0 * branch
            logits = logits.clone()
            logits[rows, target] = (lambda_ * dot + magnitude * psi) / (1.0 + lambda_)
            return functional.cross_entropy(logits, target)

        return _torch_runner(torch, loss_of, (x, W), with_gradient)

    return prepare


def _torch_center(with_gradient):
    def prepare(inputs):
        torch = torch_module()
        x, centers, target = (torch.from_numpy(inputs[name]) for name in ("x", "centers", "target"))

        def loss_of(features, middles):
            return 0.5 * ((features - middles[target]) ** 2).sum(dim=1).mean()

        return _torch_runner(torch, loss_of, (x, centers), with_gradient)

    return prepare


def _torch_center_update(alpha):
    def prepare(inputs):
        torch = torch_module()
        x, centers, target = (torch.from_numpy(inputs[name]) for name in ("x", "centers", "target"))

        def run():
            with torch.no_grad():
                differences = torch.zeros_like(centers).index_add_(0, target, centers[target] - x)
                counts = torch.zeros(centers.shape[0], dtype=centers.dtype).index_add_(
                    0, target, torch.ones(target.shape[0], dtype=centers.dtype))
                return centers - alpha * differences / (1.0 + counts)[:, None]

        return run

    return prepare


# ---- providers: pytorch-metric-learning ------------------------------------------------------------


def _pml_on_cosines(loss_class, with_gradient, **parameters):
    """pml's own target-logit code applied to given cosines, then its cross-entropy and mean."""

    def prepare(inputs):
        torch = torch_module()
        from pytorch_metric_learning import losses

        cos = torch.from_numpy(inputs["cos"])
        target = torch.from_numpy(inputs["target"])
        loss_function = getattr(losses, loss_class)(num_classes=cos.shape[1], embedding_size=1, **parameters)

        def loss_of(cosines):
            mask = loss_function.get_target_mask(cosines, target)
            target_cosines = cosines[mask == 1]
            modified = loss_function.modify_cosine_of_target_classes(target_cosines)
            logits = loss_function.scale_logits(cosines + mask * (modified - target_cosines).unsqueeze(1), None)
            return loss_function.cross_entropy(logits, target).mean()

        return _torch_runner(torch, loss_of, (cos,), with_gradient)

    return prepare


def _pml_sphereface(with_gradient, m):
    def prepare(inputs):
        torch = torch_module()
        from pytorch_metric_learning import losses

        x, target = torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["target"])
        W = inputs["W"]
        with warnings.catch_warnings():  # pml calls scipy.special.binom on tensors (a NumPy 2 deprecation)
            warnings.filterwarnings("ignore", message="__array_wrap__ must accept context", category=DeprecationWarning)
            loss_function = losses.SphereFaceLoss(num_classes=W.shape[0], embedding_size=W.shape[1], margin=m,
                                                  scale=1)
        loss_function.W.data = torch.from_numpy(np.ascontiguousarray(W.T))

        if not with_gradient:
            def run():
                with torch.no_grad():
                    return loss_function(x, target)

            return run

        def run():
            features = x.detach().requires_grad_(True)
            loss_function.W.grad = None
            loss = loss_function(features, target)
            dx, dWt = torch.autograd.grad(loss, (features, loss_function.W))
            return loss.detach(), dx, dWt.T

        return run

    return prepare


# ---- the entries ----------------------------------------------------------------------------------

_TORCH = ("torch",)
_PML = ("torch", "pytorch_metric_learning")

register(Operation(
    kernel="normalized_linear", op="normalized_linear", mode="forward", outputs=("cos",),
    make_inputs=normalized_linear_inputs,
    exact=_exact_for(lambda inputs: exact_normalized_linear(inputs["x"], inputs["W"])),
    cost=_feature_cost(False, exps=False, outputs="cos"),
    implementations=(
        Implementation("softmaxlab", _softmaxlab(kernels.normalized_linear)),
        Implementation("torch", _torch_normalized_linear(False), requires=_TORCH,
                       description="F.linear(F.normalize(x), F.normalize(W))"),
    ),
    regimes=FEATURE_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES,
    description="cos = x_hat W_hat^T; D = 512 at the benchmark shapes",
))

register(Operation(
    kernel="normalized_linear_backward", op="normalized_linear", mode="backward", outputs=("dx", "dW"),
    make_inputs=normalized_linear_backward_inputs,
    exact=_exact_for(lambda inputs: exact_normalized_linear(inputs["x"], inputs["W"], inputs["grad_cos"])),
    cost=_feature_cost(True, exps=False, outputs="gradients"),
    implementations=(
        Implementation("softmaxlab", _softmaxlab(kernels.normalized_linear_backward)),
        Implementation("torch", _torch_normalized_linear(True), requires=_TORCH,
                       description="torch.autograd.grad of F.linear(F.normalize(x), F.normalize(W))"),
    ),
    regimes=FEATURE_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES,
    description="(dx, dW) for an upstream grad_cos; torch rebuilds the forward inside the timed call",
))

_PML_COSINE = {
    "cosface": ("CosFaceLoss", dict(margin=0.35, scale=64)),
    "arcface": ("ArcFaceLoss", dict(margin=math.degrees(0.5), scale=64)),
}

for _name, (_s, _m1, _m2, _m3) in COSINE_LOSSES.items():
    if _name == "margin_cross_entropy":
        _parameters = dict(s=_s, m1=_m1, m2=_m2, m3=_m3)
    elif _name == "normface":
        _parameters = dict(s=_s)
    elif _name == "cosface":
        _parameters = dict(s=_s, m=_m3)
    else:
        _parameters = dict(s=_s, m=_m2)
    for _with_gradient in (False, True):
        _kernel = f"{_name}_forward_backward" if _with_gradient else _name
        _implementations = [
            Implementation("softmaxlab", _softmaxlab(getattr(kernels, _kernel), **_parameters)),
            Implementation("torch", _torch_margin(_s, _m1, _m2, _m3, _with_gradient), requires=_TORCH,
                           description="F.cross_entropy(s * cos with the target's f(c)); autograd"),
        ]
        if _name in _PML_COSINE:
            _class, _pml_parameters = _PML_COSINE[_name]
            _implementations.append(Implementation(
                "pml", _pml_on_cosines(_class, _with_gradient, **_pml_parameters), requires=_PML,
                description=f"pml {_class}: modify_cosine_of_target_classes, scale_logits, cross-entropy"))

        def _exact(inputs, engine, _margins=(_s, _m1, _m2, _m3), _with_gradient=_with_gradient):
            _check_engine(engine)
            loss, dcos = exact_margin(inputs["cos"], inputs["target"], *_margins)
            return (loss, dcos) if _with_gradient else (loss,)

        register(Operation(
            kernel=_kernel, op=_name, mode="forward_backward" if _with_gradient else "forward",
            outputs=("loss", "dcos") if _with_gradient else ("loss",),
            make_inputs=cosine_inputs, exact=_exact, cost=_cosine_cost(_with_gradient),
            implementations=tuple(_implementations), regimes=MARGIN_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES,
            description=f"{_name} on cosines, {_parameters}, reduction mean",
        ))

for _with_gradient in (False, True):
    _kernel = "large_margin_cross_entropy_forward_backward" if _with_gradient else "large_margin_cross_entropy"

    def _exact_large(inputs, engine, _with_gradient=_with_gradient):
        _check_engine(engine)
        result = exact_large_margin(inputs["x"], inputs["W"], inputs["target"], LARGE_MARGIN["m"],
                                    LARGE_MARGIN["lambda_"], LARGE_MARGIN["normalize_weights"])
        return result if _with_gradient else result[:1]

    register(Operation(
        kernel=_kernel, op="large_margin_cross_entropy", mode="forward_backward" if _with_gradient else "forward",
        outputs=("loss", "dx", "dW") if _with_gradient else ("loss",),
        make_inputs=feature_inputs, exact=_exact_large, cost=_feature_cost(_with_gradient),
        implementations=(
            Implementation("softmaxlab", _softmaxlab(getattr(kernels, _kernel), **LARGE_MARGIN)),
            Implementation("torch", _torch_large_margin(_with_gradient, **LARGE_MARGIN), requires=_TORCH,
                           description="SphereFace logits with torch ops (psi from arccos), cross-entropy, autograd"),
            Implementation("pml", _pml_sphereface(_with_gradient, LARGE_MARGIN["m"]), requires=_PML,
                           description="pml SphereFaceLoss(margin=4, scale=1), weights W^T"),
        ),
        regimes=FEATURE_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES,
        description="SphereFace (A-Softmax) m = 4, lambda = 0; D = 512 at the benchmark shapes",
    ))

for _with_gradient in (False, True):
    _kernel = "center_loss_forward_backward" if _with_gradient else "center_loss"

    def _exact_center(inputs, engine, _with_gradient=_with_gradient):
        _check_engine(engine)
        result = exact_center(inputs["x"], inputs["target"], inputs["centers"])
        return result if _with_gradient else result[:1]

    register(Operation(
        kernel=_kernel, op="center_loss", mode="forward_backward" if _with_gradient else "forward",
        outputs=("loss", "dx", "dcenters") if _with_gradient else ("loss",),
        make_inputs=center_inputs, exact=_exact_center, cost=_feature_cost(_with_gradient, exps=False),
        implementations=(
            Implementation("softmaxlab", _softmaxlab(getattr(kernels, _kernel))),
            Implementation("torch", _torch_center(_with_gradient), requires=_TORCH,
                           description="0.5 * ((x - centers[target])**2).sum(1).mean(); autograd"),
        ),
        regimes=FEATURE_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES,
        description="Wen et al.'s center loss, mean over the batch",
    ))

register(Operation(
    kernel="center_update", op="center_loss", mode="forward", outputs=("centers",),
    make_inputs=center_inputs,
    exact=_exact_for(lambda inputs: exact_center(inputs["x"], inputs["target"], inputs["centers"], CENTER_ALPHA)),
    cost=_feature_cost(False, exps=False, outputs="centers"),
    implementations=(
        Implementation("softmaxlab", _softmaxlab(kernels.center_update, alpha=CENTER_ALPHA)),
        Implementation("torch", _torch_center_update(CENTER_ALPHA), requires=_TORCH,
                       description="index_add_ of (c_y - x) and of the counts"),
    ),
    regimes=FEATURE_REGIMES, bench_shapes=MARGIN_BENCH_SHAPES,
    description="c_j - alpha sum_{y_i = j}(c_j - x_i) / (1 + n_j), alpha = 0.5",
))
