"""Parity with the implementations people use: pytorch-metric-learning and InsightFace.

For the same embeddings x (N, D), weights W (C, D) and labels, our losses equal
pytorch-metric-learning's (pml) ``CosFaceLoss``, ``ArcFaceLoss``, ``NormalizedSoftmaxLoss``,
``LargeMarginSoftmaxLoss`` and ``SphereFaceLoss`` and InsightFace's combined-margin formula to
float64 rounding, loss and gradients.  What is compared, and where they deviate:

* pml keeps its weights as ``W`` of shape (D, C); ours is its transpose (``torch.nn.Linear``
  layout).  Its reducer is the mean over the batch (``MeanReducer``), our ``reduction="mean"``.
* Cosine losses (CosFace, ArcFace, NormalizedSoftmax): pml normalizes x and W with
  ``F.normalize`` and multiplies; ours is ``normalized_linear`` -> ``*_forward_backward`` ->
  ``normalized_linear_backward``.  Compared: the loss and autograd's dL/dx, dL/dW.
  ``NormalizedSoftmaxLoss(temperature=t)`` is ``normface`` with s = 1/t; ``ArcFaceLoss``'s
  margin is in degrees (``margin=28.6`` is m = 0.4992 rad).
* pml ArcFace computes ``cos(acos(c) + m)`` and back-propagates through ``acos``: at c = +-1
  its gradient is NaN (d acos/dc = -1/sqrt(1 - c^2)); ours takes the derivative at
  c_max = nextafter(1, 0) (docs/proofs/margins.md#arcface-derivative-at-the-ends) and is
  finite.  Its fallback switches at ``angle <= pi - m`` where InsightFace uses
  ``c > cos(pi - m)``: the same set up to the rounding of the threshold; the inputs here keep
  away from it.
* L-Softmax / SphereFace: pml's ``LargeMarginSoftmaxLoss`` has no lambda blend (lambda = 0)
  and back-propagates autograd's true gradient through its binomial expansion of cos(m theta)
  (its k is computed under ``no_grad``, correct since psi is C^1).  ``SphereFaceLoss``
  multiplies the cosine logits by |x| only (normalized weights): ours with
  ``normalize_weights=True``.  The original SphereFace Caffe code back-propagates a
  normalized pseudo-gradient instead; it is not compared (we compute the true gradient).
* InsightFace's current ``arcface_torch`` applies the ArcFace margin under ``torch.no_grad()``
  (its gradient treats f' as 1) and has no fallback; its earlier version (``ArcFace`` with
  ``th``/``mm``) computes ``c cos m - sqrt(1 - c^2) sin m`` with autograd and the fallback
  ``c - mm``: that formula is the one compared, loss and dcos.  The no-grad variant is
  checked to equal ours with the target's f' replaced by 1 (the dropped margin gradient).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmaxlab.kernels import (
    arcface_forward_backward,
    cosface_forward_backward,
    large_margin_cross_entropy_forward_backward,
    margin_cross_entropy_forward_backward,
    normalized_linear,
    normalized_linear_backward,
    normface_forward_backward,
)
from softmaxlab.kernels import _cosine_margins

torch = pytest.importorskip("torch")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

# pml's LargeMarginSoftmaxLoss calls scipy.special.binom on tensors (a NumPy 2 deprecation, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

TORCH_DTYPES = {np.float32: torch.float32, np.float64: torch.float64}
# Relative to the largest entry of each compared quantity.
TOLERANCE = {np.float64: 1e-13, np.float32: 2e-5}


def _problem(dtype, rows=12, classes=17, features=8, seed=0, fallback_rows=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((classes, features))
    target = rng.integers(0, classes, size=rows)
    x = rng.standard_normal((rows, features))
    # some rows close to their class (theta small), some opposite to it (theta + m > pi)
    x[: rows // 3] = W[target[: rows // 3]] + 0.3 * x[: rows // 3]
    if fallback_rows:
        x[-fallback_rows:] = -W[target[-fallback_rows:]] + 0.1 * x[-fallback_rows:]
    return x.astype(dtype), W.astype(dtype), target


def _pml(loss_function, x, W, target):
    """(loss, dx, dW) of a pml loss with its weights set to W^T, by autograd."""
    dtype = TORCH_DTYPES[x.dtype.type]
    loss_function.W.data = torch.from_numpy(np.ascontiguousarray(W.T)).to(dtype)
    embeddings = torch.from_numpy(x.copy()).requires_grad_(True)
    loss = loss_function(embeddings, torch.from_numpy(target))
    loss.backward()
    return loss.detach().numpy(), embeddings.grad.numpy(), loss_function.W.grad.numpy().T


def _ours_on_cosines(forward_backward, x, W, target, **arguments):
    cos = normalized_linear(x, W)
    loss, dcos = forward_backward(cos, target, **arguments)
    dx, dW = normalized_linear_backward(x, W, dcos)
    return loss, dx, dW


def assert_parity(ours, theirs, dtype, label):
    for name, mine, reference in zip(("loss", "dx", "dW"), ours, theirs):
        scale = max(float(np.abs(reference).max()), 1e-300)
        difference = float(np.abs(np.asarray(mine, dtype=np.float64) - reference).max()) / scale
        assert difference <= TOLERANCE[dtype], f"{label}: {name} differs from the reference by {difference:.2e} (relative)"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cosface_equals_pml(dtype):
    x, W, target = _problem(dtype)
    theirs = _pml(pml_losses.CosFaceLoss(num_classes=W.shape[0], embedding_size=W.shape[1], margin=0.35, scale=64),
                  x, W, target)
    ours = _ours_on_cosines(cosface_forward_backward, x, W, target, s=64.0, m=0.35)
    assert_parity(ours, theirs, dtype, "CosFaceLoss")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_arcface_equals_pml_including_the_fallback_region(dtype):
    x, W, target = _problem(dtype, fallback_rows=4)
    degrees = 28.6
    cos = normalized_linear(x, W)
    assert (cos[np.arange(len(target)), target][-4:] < math.cos(math.pi - math.radians(degrees)) - 1e-3).all()
    theirs = _pml(pml_losses.ArcFaceLoss(num_classes=W.shape[0], embedding_size=W.shape[1], margin=degrees, scale=64),
                  x, W, target)
    ours = _ours_on_cosines(arcface_forward_backward, x, W, target, s=64.0, m=math.radians(degrees))
    assert_parity(ours, theirs, dtype, "ArcFaceLoss")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_normface_equals_pml_normalized_softmax(dtype):
    x, W, target = _problem(dtype)
    temperature = 0.05
    theirs = _pml(pml_losses.NormalizedSoftmaxLoss(num_classes=W.shape[0], embedding_size=W.shape[1],
                                                   temperature=temperature), x, W, target)
    ours = _ours_on_cosines(normface_forward_backward, x, W, target, s=1.0 / temperature)
    assert_parity(ours, theirs, dtype, "NormalizedSoftmaxLoss")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_large_margin_softmax_equals_pml(m, dtype):
    x, W, target = _problem(dtype, seed=m, fallback_rows=2)
    W = W * np.linspace(0.5, 1.5, W.shape[0], dtype=dtype)[:, None]  # unequal weight norms matter here
    theirs = _pml(pml_losses.LargeMarginSoftmaxLoss(num_classes=W.shape[0], embedding_size=W.shape[1], margin=m,
                                                    scale=1), x, W, target)
    ours = large_margin_cross_entropy_forward_backward(x, W, target, m=m)
    assert_parity(ours, theirs, dtype, f"LargeMarginSoftmaxLoss m={m}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_sphereface_equals_pml(m, dtype):
    x, W, target = _problem(dtype, seed=10 + m, fallback_rows=2)
    W = W * np.linspace(0.5, 1.5, W.shape[0], dtype=dtype)[:, None]
    theirs = _pml(pml_losses.SphereFaceLoss(num_classes=W.shape[0], embedding_size=W.shape[1], margin=m, scale=1),
                  x, W, target)
    ours = large_margin_cross_entropy_forward_backward(x, W, target, m=m, normalize_weights=True)
    assert_parity(ours, theirs, dtype, f"SphereFaceLoss m={m}")


# ---- InsightFace's formulas --------------------------------------------------------------------


def _insightface_arcface_logits(cos, target, s, m):
    """InsightFace's ArcFace with autograd: c cos m - sqrt(1 - c^2) sin m where c > th, else c - mm."""
    rows = torch.arange(cos.shape[0])
    target_cos = cos[rows, target]
    sine = torch.sqrt(1.0 - target_cos ** 2)
    arc = target_cos * math.cos(m) - sine * math.sin(m)
    final = torch.where(target_cos > math.cos(math.pi - m), arc, target_cos - math.sin(math.pi - m) * m)
    logits = cos.clone()
    logits[rows, target] = final
    return logits * s


def _insightface_combined_logits(cos, target, s, m1, m2, m3):
    """The combined margin cos(m1 theta + m2) - m3 on the target (autograd through arccos)."""
    rows = torch.arange(cos.shape[0])
    final = torch.cos(m1 * torch.arccos(cos[rows, target]) + m2) - m3
    logits = cos.clone()
    logits[rows, target] = final
    return logits * s


def _torch_loss_and_gradient(make_logits, cos, target):
    cosines = torch.from_numpy(cos.copy()).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(make_logits(cosines, torch.from_numpy(target)), torch.from_numpy(target))
    loss.backward()
    return loss.detach().numpy(), cosines.grad.numpy()


def _cosine_problem(rows=16, classes=29, seed=3):
    rng = np.random.default_rng(seed)
    cos = rng.uniform(-0.9, 0.9, size=(rows, classes))
    target = rng.integers(0, classes, size=rows)
    cos[np.arange(rows), target] = np.concatenate([rng.uniform(0.2, 0.95, rows - 4), [-0.95, -0.93, -0.99, -0.9]])
    return cos, target


def test_arcface_equals_insightface_formula_with_autograd():
    cos, target = _cosine_problem()
    s, m = 64.0, 0.5
    theirs = _torch_loss_and_gradient(lambda c, t: _insightface_arcface_logits(c, t, s, m), cos, target)
    ours = arcface_forward_backward(cos, target, s=s, m=m)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-14)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=1e-13 * np.abs(theirs[1]).max())


@pytest.mark.parametrize("margins", [(1.0, 0.0, 0.35), (1.0, 0.3, 0.2), (1.35, 0.0, 0.0), (1.2, 0.1, 0.1)])
def test_combined_margin_equals_insightface_formula(margins):
    m1, m2, m3 = margins
    cos, target = _cosine_problem(seed=4)
    cos[np.arange(len(target)), target] = np.abs(cos[np.arange(len(target)), target])  # no fallback region
    theirs = _torch_loss_and_gradient(lambda c, t: _insightface_combined_logits(c, t, 30.0, m1, m2, m3), cos, target)
    ours = margin_cross_entropy_forward_backward(cos, target, s=30.0, m1=m1, m2=m2, m3=m3)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-14)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-12, atol=1e-13 * np.abs(theirs[1]).max())


def test_insightface_no_grad_arcface_drops_the_margin_gradient():
    # arcface_torch: arccos, + m, cos under torch.no_grad(), then * s: the loss is ours where
    # theta + m <= pi, the gradient is ours with f'(c_y) replaced by 1
    cos, target = _cosine_problem(seed=5)
    rows = np.arange(len(target))
    cos[rows, target] = np.abs(cos[rows, target])
    s, m = 64.0, 0.5

    def no_grad_logits(c, t):
        logits = c * 1.0
        with torch.no_grad():
            angles = torch.arccos(logits)
            angles[torch.arange(len(t)), t] += m
            logits.copy_(torch.cos(angles))
        return logits * s

    loss, dcos = _torch_loss_and_gradient(no_grad_logits, cos, target)
    ours_loss, ours_dcos = arcface_forward_backward(cos, target, s=s, m=m)
    np.testing.assert_allclose(ours_loss, loss, rtol=1e-13)
    _, _, slope = _cosine_margins.combined_margin_target(cos[rows, target], s, 1.0, m, 0.0, 1 - 2.0 ** -53)
    without_margin_gradient = ours_dcos.copy()
    without_margin_gradient[rows, target] /= slope
    np.testing.assert_allclose(dcos, without_margin_gradient, rtol=1e-12, atol=1e-14)
    assert not np.allclose(dcos[rows, target], ours_dcos[rows, target])


def test_pml_arcface_gradient_is_not_finite_at_cos_one_where_ours_is():
    loss_function = pml_losses.ArcFaceLoss(num_classes=3, embedding_size=2)
    target_cos = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    loss_function.modify_cosine_of_target_classes(target_cos).sum().backward()
    assert not torch.isfinite(target_cos.grad[:2]).any()  # d acos / dc = -1/sqrt(1 - c^2) at c = +-1
    cos = np.array([[1.0, 0.0, 0.2], [-1.0, 0.1, 0.0], [0.5, 0.3, -0.2]])
    loss, dcos = arcface_forward_backward(cos, np.array([0, 0, 0]), s=64.0, m=math.radians(28.6))
    assert np.isfinite(loss) and np.isfinite(dcos).all()
