"""Each existing kernel against the lambdified closed form of the statement it relies on.

float64, random and edge inputs.  The closed forms are the proven expressions with no
overflow guard, so they are evaluated on logits shifted by their row maximum, which the
shift-invariance statement allows (docs/proofs/softmax.md#softmax-shift-invariance).
A kernel that disagrees fails with the page and anchor of the statement it breaks.

The five normalizers, and the fused margin loss ``linear_margin_cross_entropy`` against the
cosine layer's gradients (docs/proofs/linear_cross_entropy.md#cosine-layer-gradients); the
other loss and margin kernels are tested against ``closed_forms`` in their own test files
(tests/kernels/).
"""

from __future__ import annotations

import numpy as np
import pytest

from softmaxlab.derivations import closed_forms
from softmaxlab.kernels import (
    linear_margin_cross_entropy_forward_backward,
    log_softmax,
    log_softmax_backward,
    logsumexp,
    softmax,
    softmax_backward,
)

RNG = np.random.default_rng(7)
PAGE = "docs/proofs/softmax.md"


def _shifted(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits - M, M) with M the row maximum (finite rows here)."""
    largest = np.max(logits, axis=-1, keepdims=True)
    return logits - largest, largest


def _masked(shape):
    logits = RNG.standard_normal(shape) * 3
    logits[..., 1] = -np.inf
    logits[..., -1] = -np.inf
    return logits


# name -> logits (float64, classes on the last axis); an odd shape, edges and a long row
INPUTS = {
    "standard normal x3": RNG.standard_normal((3, 7)) * 3,
    "batch of batches": RNG.standard_normal((2, 3, 5)),
    "large logits +-1e4": np.array([[1e4, -1e4, 1e4 - 1.0, 0.0, 1e4 - 30.0], [-1e4, -1e4 + 2.0, -1e4, -9999.5, -1e4]]),
    "near ties": 1.0 + np.arange(6)[None, :] * 1e-12 + np.zeros((2, 1)),
    "one dominant logit": np.array([[40.0, 0.0, 0.1, -0.1], [0.0, 0.0, 0.0, 700.0]]),
    "masked -inf entries": _masked((3, 6)),
    "one class": np.array([[3.5], [-2.0]]),
    "64 classes": RNG.standard_normal((2, 64)) * 5,
}


def _relative_atol(reference: np.ndarray) -> float:
    finite = np.abs(reference[np.isfinite(reference)])
    return 1e-14 * (finite.max() if finite.size else 1.0)


def assert_agrees(kernel_output, reference, anchor, rtol=1e-12):
    np.testing.assert_allclose(
        kernel_output, reference, rtol=rtol, atol=_relative_atol(reference),
        err_msg=f"the kernel breaks the statement proven in {PAGE}#{anchor}",
    )


def assert_within(kernel_output, reference, scale, anchor, units=64.0):
    """|kernel - reference| <= units * eps * scale elementwise, where ``scale`` bounds the
    magnitude of the terms that cancel in the backward formulas (so a result near zero
    is judged against the size of what was subtracted, not against itself)."""
    error = np.abs(kernel_output - reference)
    bound = units * np.finfo(np.float64).eps * scale
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (
        f"the kernel breaks the statement proven in {PAGE}#{anchor}: at {worst} the kernel gives "
        f"{kernel_output[worst]!r}, the proof {reference[worst]!r} (allowed error {bound[worst]:.3g})"
    )


@pytest.mark.parametrize("name", INPUTS)
def test_softmax_kernel_matches_the_proven_softmax(name):
    logits = INPUTS[name]
    shifted, _ = _shifted(logits)
    assert_agrees(softmax(logits), closed_forms.softmax(shifted), "softmax-shift-invariance")


@pytest.mark.parametrize("name", INPUTS)
def test_log_softmax_kernel_matches_the_proven_identity(name):
    logits = INPUTS[name]
    shifted, _ = _shifted(logits)
    assert_agrees(log_softmax(logits), closed_forms.log_softmax(shifted), "log-softmax-identity")


@pytest.mark.parametrize("name", INPUTS)
def test_logsumexp_kernel_matches_the_proven_form_and_bounds(name):
    logits = INPUTS[name]
    shifted, largest = _shifted(logits)
    result = logsumexp(logits)
    assert_agrees(result, largest[..., 0] + closed_forms.logsumexp(shifted), "logsumexp-bounds")
    classes = logits.shape[-1]
    assert np.all(result >= largest[..., 0]) and np.all(result <= largest[..., 0] + np.log(classes) * (1 + 1e-15)), \
        f"max(z) <= LSE(z) <= max(z) + log K fails ({PAGE}#logsumexp-bounds)"


@pytest.mark.parametrize("name", INPUTS)
def test_softmax_backward_kernel_matches_the_jacobian(name):
    logits = INPUTS[name]
    probabilities = softmax(logits)
    upstream = RNG.standard_normal(logits.shape)
    reference = closed_forms.softmax_backward(probabilities, upstream)
    # dx_i = y_i (dy_i - sum_j y_j dy_j): terms of size y_i (|dy_i| + sum_j y_j |dy_j|)
    scale = probabilities * (np.abs(upstream) + np.sum(probabilities * np.abs(upstream), axis=-1, keepdims=True))
    assert_within(softmax_backward(probabilities, upstream), reference, scale, "softmax-vjp")


@pytest.mark.parametrize("name", INPUTS)
def test_log_softmax_backward_kernel_matches_the_jacobian(name):
    logits = INPUTS[name]
    log_probabilities = log_softmax(logits)
    upstream = RNG.standard_normal(logits.shape)
    reference = closed_forms.log_softmax_backward(log_probabilities, upstream)
    # dx_i = dy_i - a_i sum_j dy_j: terms of size |dy_i| + a_i sum_j |dy_j|
    scale = np.abs(upstream) + np.exp(log_probabilities) * np.sum(np.abs(upstream), axis=-1, keepdims=True)
    assert_within(log_softmax_backward(log_probabilities, upstream), reference, scale, "log-softmax-vjp")


def test_softmax_kernel_on_a_non_last_axis_matches_the_proof():
    logits = RNG.standard_normal((4, 6, 3))
    shifted, _ = _shifted(np.moveaxis(logits, 1, -1))
    assert_agrees(np.moveaxis(softmax(logits, axis=1), 1, -1), closed_forms.softmax(shifted),
                  "softmax-shift-invariance")


def test_the_comparison_catches_a_backward_without_the_jacobians_minus_a_i_term():
    # a plausible bug: dx = y * dy (the diagonal of the Jacobian only)
    logits = INPUTS["standard normal x3"]
    probabilities = softmax(logits)
    upstream = RNG.standard_normal(logits.shape)
    scale = probabilities * (np.abs(upstream) + np.sum(probabilities * np.abs(upstream), axis=-1, keepdims=True))
    with pytest.raises(AssertionError, match="softmax-vjp"):
        assert_within(probabilities * upstream, closed_forms.softmax_backward(probabilities, upstream), scale,
                      "softmax-vjp")


# (s, m1, m2, m3): NormFace, CosFace, ArcFace (the target cosines stay above cos(pi - m2), where
# the combined margin's closed form, which has no fallback, is the kernel's function)
COSINE_MARGINS = {"normface": (16.0, 1.0, 0.0, 0.0), "cosface": (16.0, 1.0, 0.0, 0.35),
                  "arcface": (16.0, 1.0, 0.5, 0.0)}


@pytest.mark.parametrize("preset", COSINE_MARGINS)
def test_linear_margin_cross_entropy_matches_the_proven_cosine_layer_gradients(preset):
    s, m1, m2, m3 = COSINE_MARGINS[preset]
    rows, classes, features = 5, 7, 6
    rng = np.random.default_rng(11)
    weights = rng.standard_normal((classes, features)) * rng.uniform(0.5, 2.0, (classes, 1))
    target = rng.integers(0, classes, rows)
    x = (0.5 * weights[target] / np.linalg.norm(weights[target], axis=1, keepdims=True)
         + 0.5 * rng.standard_normal((rows, features))) * rng.uniform(0.5, 3.0, (rows, 1))
    loss, grad_x, grad_w = linear_margin_cross_entropy_forward_backward(x, weights, target, s=s, m1=m1, m2=m2, m3=m3)
    cosines = closed_forms.normalized_linear(x, weights)
    assert cosines[np.arange(rows), target].min() > np.cos(np.pi - m2)
    one_hot = np.eye(classes)[target]
    # the closed form forms a_iy - 1 with cancellation (an absolute error of a few u): rows whose
    # target probability stays below 0.95 keep that within the bound below
    logits = s * cosines
    logits[np.arange(rows), target] = s * closed_forms.combined_margin_target_logit(
        cosines[np.arange(rows), target], 1.0, m1, m2, m3)
    assert closed_forms.softmax(logits)[np.arange(rows), target].max() < 0.95
    # dL/dc of the mean loss (margins.md#margin-cross-entropy-gradient), then the cosine layer
    upstream = closed_forms.combined_margin_cross_entropy_gradient(cosines, one_hot, s, m1, m2, m3) / rows
    proven_loss = closed_forms.combined_margin_cross_entropy(cosines, one_hot, s, m1, m2, m3).mean()
    proven_x = closed_forms.linear_margin_cross_entropy_grad_x(x, weights, upstream)
    proven_w = closed_forms.linear_margin_cross_entropy_grad_W(x, weights, upstream)
    # Bound: the kernel's cosines differ from exact ones by delta <= (D + 2) u (BLAS products
    # times float64 inverse norms), which moves each a_ij and so each g_ij by at most 2 s delta
    # relatively (4 s delta with the target's f'); the products, sums and projection add (D + 8) u
    # of the terms, at most 2 sum_j |g_ij| / |x_i| per entry of dx_i (|W_j / |W_j|| <= 1
    # componentwise, the projection at most doubles), likewise per class for dW_j.
    u = np.finfo(np.float64).eps / 2
    relative = 4 * s * (features + 2) * u + (features + 8) * u
    page = closed_forms.linear_margin_cross_entropy_grad_x.page
    bound_x = 2 * relative * np.abs(upstream).sum(axis=1) / np.linalg.norm(x, axis=1)
    bound_w = 2 * relative * np.abs(upstream).sum(axis=0) / np.linalg.norm(weights, axis=1)
    for name, ours, proven, bound in (("grad_input", grad_x, proven_x, bound_x[:, None]),
                                      ("grad_linear_weight", grad_w, proven_w, bound_w[:, None])):
        error = np.abs(ours - proven)
        assert np.all(error <= bound), (f"{name} breaks the statement proven in {page}: largest error "
                                        f"{error.max():.3g}, allowed {np.broadcast_to(bound, error.shape).min():.3g}")
    assert abs(float(loss) - proven_loss) <= relative * (1 + abs(proven_loss)), (
        f"the loss {float(loss)!r} differs from the proven composition's {proven_loss!r} "
        f"({closed_forms.combined_margin_cross_entropy.page})")
