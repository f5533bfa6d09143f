"""Every derivation checks, the checker rejects wrong claims, and the lambdified closed
forms agree with independent numerics (central differences, PyTorch, direct formulas).

A failing test names the statement (page and anchor) whose closed form disagrees.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy as sp

from softmaxlab.derivations import closed_forms
from softmaxlab.derivations._proof import (
    CHECKED_FIXED,
    FAILED,
    Derivation,
    Proof,
    ProofFailure,
    derivation,
    evaluate_sums,
    run_derivation,
)
from softmaxlab.derivations._symbols import CLASS_RANGES, K, a, i, j, softmax_of, z

#: The statements the issue asks for, by anchor; each must be proven in general.
REQUIRED_GENERAL = [
    "softmax-jacobian", "softmax-shift-invariance", "binary-softmax-sigmoid", "logsumexp-gradient",
    "logsumexp-bounds", "cross-entropy-gradient-one-hot", "cross-entropy-gradient-soft-target",
    "cross-entropy-kl-decomposition", "label-smoothing", "hinge-softplus-chain", "quadratic-cost-gradient",
    "distillation-soft-gradient", "distillation-high-temperature-limit", "normalized-linear-gradient",
    "combined-margin-derivative", "arcface-derivative-at-the-ends", "arcface-fallback",
    "sphereface-psi-monotone", "chebyshev-cos-m-theta", "center-loss-gradient", "normface-lower-bound",
    "normface-bound-attained", "cosface-scale-bound", "softmax-vjp-rounding", "log-softmax-vjp-rounding",
]

RNG = np.random.default_rng(20240611)


# ---- the records -------------------------------------------------------------------------------


def test_every_derivation_checks(records):
    failed = [f"{r.family}/{r.slug}: {r.status}" for r in records if not r.ok]
    assert not failed, "derivations that do not check:\n" + "\n".join(failed)


def test_records_have_the_interface_the_harness_reads(records):
    assert records, "derive_all returned nothing"
    for record in records:
        assert isinstance(record, Derivation)
        assert isinstance(record.family, str) and isinstance(record.title, str) and record.title
        assert isinstance(record.status, str) and isinstance(record.general, bool)
        assert record.statement is not None and record.steps
        assert all(isinstance(step.expression, (sp.Basic, str)) for step in record.steps)
        assert record.closed_form is None or callable(record.closed_form)
        assert isinstance(record.seconds, float) and record.seconds >= 0.0
    slugs = [record.slug for record in records]
    assert len(slugs) == len(set(slugs)), "anchors must be unique"


def test_required_statements_are_proven_in_general(records_by_slug):
    missing = [slug for slug in REQUIRED_GENERAL if slug not in records_by_slug]
    assert not missing, f"statements missing from the book: {missing}"
    not_general = [slug for slug in REQUIRED_GENERAL if not records_by_slug[slug].general]
    assert not not_general, f"statements not proven in general: {not_general}"
    for slug in REQUIRED_GENERAL:
        assert records_by_slug[slug].status.startswith("proven ("), slug


def test_fixed_size_statements_say_so(records):
    for record in records:
        assert record.general == (not record.status.startswith(CHECKED_FIXED)), record.slug


# ---- the checker rejects wrong claims ----------------------------------------------------------


@derivation("test", "wrong-jacobian", "a wrong Jacobian: d a_j / d z_i = a_j (delta_ij + a_i)")
def _wrong_jacobian(proof: Proof):
    derivative = evaluate_sums(sp.diff(softmax_of(z, j), z[i]), CLASS_RANGES)
    proof.require_identity("claimed", derivative, softmax_of(z, j) * (sp.KroneckerDelta(i, j) + softmax_of(z, i)))


@derivation("test", "wrong-bound", "a wrong termwise bound: sum_k exp(z_k) <= 0")
def _wrong_bound(proof: Proof):
    proof.sum_bound("claimed", sp.exp(z[j]), sp.Integer(0), (j, 0, K - 1))


@derivation("test", "unproven-termwise-bound", "a termwise bound used before it is proven")
def _unproven_termwise_bound(proof: Proof):
    # exp(-d) <= 1 for d >= 0 is true, but SymPy cannot decide it and no lemma proved it here
    gap = sp.Symbol("d", nonnegative=True)
    proof.sum_bound("claimed", sp.exp(-gap), sp.Integer(1), (j, 0, K - 1))


@derivation("test", "evaluated-display", "a display that SymPy evaluates to True")
def _evaluated_display(proof: Proof):
    proof.step("oops", sp.Eq(a[i], a[i]))


@derivation("test", "wrong-at-fixed-sizes", "a wrong identity caught by the fixed-size check")
def _wrong_at_fixed_sizes(proof: Proof):
    derivative = sp.diff(softmax_of(z, j), z[i])
    proof.check_fixed_sizes("claimed", derivative, softmax_of(z, j) * sp.KroneckerDelta(i, j), [z], {z: (K,)},
                            outputs=[(j, K), (i, K)])


@pytest.mark.parametrize("wrong", [_wrong_jacobian, _wrong_bound, _unproven_termwise_bound, _evaluated_display,
                                   _wrong_at_fixed_sizes])
def test_a_wrong_claim_fails(wrong):
    record = run_derivation(wrong)
    assert record.status.startswith(FAILED) and not record.general and not record.ok


def test_a_failure_keeps_the_steps_made_before_it():
    @derivation("test", "late-failure", "a derivation that fails at its second check")
    def late(proof: Proof):
        proof.require_identity("true", sp.Integer(1), sp.Integer(1))
        raise ProofFailure("second check")

    record = run_derivation(late)
    assert record.status == f"{FAILED}: second check" and len(record.steps) == 1


# ---- closed forms against independent numerics --------------------------------------------------


def test_closed_forms_are_importable_by_name_and_cite_their_page(records):
    assert "softmax" in closed_forms.names() and closed_forms.get("softmax") is closed_forms.softmax
    with pytest.raises(AttributeError):
        closed_forms.no_such_closed_form  # noqa: B018
    anchors = {f"docs/proofs/{record.family}.md#{record.slug}" for record in records}
    for name in closed_forms.names():
        assert closed_forms.get(name).page in anchors, f"{name} cites {closed_forms.get(name).page}"
    for record in records:
        if record.closed_form is not None:
            assert record.closed_form is closed_forms.get(record.closed_form.name)


def central_difference(function, point: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """d function / d point (function returns a scalar per leading row), float64 central differences."""
    gradient = np.empty_like(point)
    for index in np.ndindex(point.shape[-1:]):
        offset = np.zeros_like(point)
        offset[(Ellipsis,) + index] = step
        gradient[(Ellipsis,) + index] = (function(point + offset) - function(point - offset)) / (2 * step)
    return gradient


def assert_close(actual, expected, page, rtol=1e-7, atol=1e-9):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                               err_msg=f"closed form disagrees with {page}")


def _probabilities(shape):
    weights = RNG.random(shape) + 0.05
    return weights / weights.sum(axis=-1, keepdims=True)


def test_softmax_jacobian_matches_central_differences():
    logits = RNG.standard_normal((2, 5))
    jacobian = closed_forms.softmax_jacobian(logits)  # [..., j, i]
    for component in range(5):
        numeric = central_difference(lambda x: closed_forms.softmax(x)[..., component], logits)
        assert_close(jacobian[..., component, :], numeric, closed_forms.softmax_jacobian.page)


def test_logsumexp_gradient_is_softmax():
    logits = RNG.standard_normal((3, 6))
    numeric = central_difference(closed_forms.logsumexp, logits)
    assert_close(closed_forms.logsumexp_gradient(logits), numeric, closed_forms.logsumexp_gradient.page)
    assert_close(closed_forms.logsumexp_gradient(logits), closed_forms.softmax(logits),
                 closed_forms.logsumexp_gradient.page, rtol=1e-13)


@pytest.mark.parametrize("sums_to_one", [True, False])
def test_cross_entropy_gradient_matches_central_differences(sums_to_one):
    logits = RNG.standard_normal((3, 4))
    target = _probabilities((3, 4)) * (1.0 if sums_to_one else 1.7)
    numeric = central_difference(lambda x: closed_forms.cross_entropy(x, target), logits)
    gradient = closed_forms.cross_entropy_gradient(logits, target)
    assert_close(gradient, numeric, closed_forms.cross_entropy_gradient.page)
    if sums_to_one:
        assert_close(gradient, closed_forms.softmax(logits) - target, closed_forms.cross_entropy_gradient.page,
                     rtol=1e-12, atol=1e-14)


def test_cross_entropy_and_label_smoothing_match_torch():
    torch = pytest.importorskip("torch")
    logits = RNG.standard_normal((4, 6))
    labels = np.array([0, 5, 2, 2])
    one_hot = np.eye(6)[labels]
    for epsilon in (0.0, 0.1, 0.35):
        logits_t = torch.tensor(logits, requires_grad=True)
        loss = torch.nn.functional.cross_entropy(logits_t, torch.tensor(labels), reduction="sum",
                                                 label_smoothing=epsilon)
        loss.backward()
        page = closed_forms.label_smoothed_cross_entropy.page
        assert_close(closed_forms.label_smoothed_cross_entropy(logits, one_hot, epsilon).sum(), loss.item(),
                     page, rtol=1e-12)
        assert_close(closed_forms.label_smoothed_cross_entropy_gradient(logits, one_hot, epsilon),
                     logits_t.grad.numpy(), page, rtol=1e-12, atol=1e-15)
        smoothed = closed_forms.label_smoothing_target(one_hot, epsilon)
        assert_close(closed_forms.cross_entropy(logits, smoothed),
                     closed_forms.label_smoothed_cross_entropy(logits, one_hot, epsilon), page, rtol=1e-12)


def test_binary_cross_entropy_with_logits_matches_torch():
    torch = pytest.importorskip("torch")
    logits = np.array([-30.0, -3.0, -0.2, 0.0, 0.7, 4.0, 35.0])
    target = np.array([0.0, 1.0, 0.3, 1.0, 0.0, 0.5, 1.0])
    for positive_weight in (1.0, 2.5):
        logits_t = torch.tensor(logits, requires_grad=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits_t, torch.tensor(target), pos_weight=torch.tensor(positive_weight), reduction="none")
        loss.sum().backward()
        page = closed_forms.binary_cross_entropy_with_logits.page
        assert_close(closed_forms.binary_cross_entropy_with_logits(logits, target, positive_weight),
                     loss.detach().numpy(), page, rtol=1e-12, atol=1e-14)
        assert_close(closed_forms.binary_cross_entropy_with_logits_gradient(logits, target, positive_weight),
                     logits_t.grad.numpy(), page, rtol=1e-12, atol=1e-14)


def test_quadratic_cost_gradient_and_the_seed_example():
    logits = np.array([-2.0, 0.0, 1.5])
    target = np.array([0.0, 1.0, 0.0])
    cost = lambda x: (target - 1 / (1 + np.exp(-x))) ** 2 / 2  # noqa: E731  (elementwise)
    numeric = (cost(logits + 1e-6) - cost(logits - 1e-6)) / 2e-6
    assert_close(closed_forms.quadratic_cost_gradient(logits, target), numeric,
                 closed_forms.quadratic_cost_gradient.page)
    # Nielsen's chapter 3 example: outputs 0.82 and 0.98 for target 0; the worse start learns more slowly
    starts = np.log(np.array([0.82, 0.98]) / (1 - np.array([0.82, 0.98])))
    quadratic = closed_forms.quadratic_cost_gradient(starts, np.zeros(2))
    assert quadratic[1] < quadratic[0]


def test_distillation_closed_forms():
    torch = pytest.importorskip("torch")
    student, teacher = RNG.standard_normal((3, 5)) * 2, RNG.standard_normal((3, 5)) * 2
    target = np.eye(5)[[1, 4, 0]]
    temperature, alpha = 3.0, 0.7
    soft = closed_forms.distillation_soft_term
    numeric = central_difference(lambda x: soft(x, teacher, temperature), student)
    assert_close(closed_forms.distillation_soft_term_gradient(student, teacher, temperature), numeric, soft.page)
    # the soft gradient is T (q - p), q and p the tempered softmaxes
    q, p = closed_forms.softmax(student / temperature), closed_forms.softmax(teacher / temperature)
    assert_close(closed_forms.distillation_soft_term_gradient(student, teacher, temperature),
                 temperature * (q - p), soft.page, rtol=1e-12, atol=1e-14)
    # against PyTorch's KL formulation (Hinton et al.): T^2 KL(p || q)
    kl = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(student) / temperature, -1),
                                    torch.log_softmax(torch.tensor(teacher) / temperature, -1),
                                    log_target=True, reduction="none").sum(-1) * temperature ** 2
    assert_close(soft(student, teacher, temperature), kl.numpy(), soft.page, rtol=1e-12)
    full = closed_forms.distillation_loss_gradient
    numeric = central_difference(lambda x: closed_forms.distillation_loss(x, teacher, target, temperature, alpha),
                                 student)
    assert_close(full(student, teacher, target, temperature, alpha), numeric, full.page)


def test_distillation_high_temperature_limit_numerically(records_by_slug):
    page = "docs/proofs/distillation.md#distillation-high-temperature-limit"
    student, teacher = RNG.standard_normal(6), RNG.standard_normal(6)
    student, teacher = student - student.mean(), teacher - teacher.mean()
    for temperature in (1e2, 1e3):
        # the soft term is T^2 C, so its gradient is T^2 dC/dz = T (q - p) -> (z - v)/K, error O(1/T)
        scaled = closed_forms.distillation_soft_term_gradient(student, teacher, temperature)
        assert_close(scaled, (student - teacher) / 6, page, rtol=0, atol=5.0 / temperature)
    assert records_by_slug["distillation-high-temperature-limit"].ok


def test_normalized_linear_gradients_match_central_differences():
    features, weights = RNG.standard_normal((2, 4)), RNG.standard_normal((3, 4))
    upstream = RNG.standard_normal((2, 3))
    page = closed_forms.normalized_linear_grad_x.page
    loss = lambda x: (closed_forms.normalized_linear(x, weights) * upstream).sum(-1)  # noqa: E731
    assert_close(closed_forms.normalized_linear_grad_x(features, weights, upstream),
                 central_difference(loss, features), page)
    per_row_dw = closed_forms.normalized_linear_grad_W(features, weights, upstream)  # (2, 3, 4)
    for row in range(3):
        def loss_of_row(w_row, row=row):
            changed = np.broadcast_to(weights, w_row.shape[:-1] + weights.shape).copy()
            changed[..., row, :] = w_row
            return (closed_forms.normalized_linear(features, changed) * upstream).sum(-1).sum(-1)
        numeric = central_difference(loss_of_row, weights[row][None, :]).ravel()
        assert_close(per_row_dw[:, row, :].sum(0), numeric, page)
    cosines = closed_forms.normalized_linear(features, weights)
    direct = (features @ weights.T) / np.linalg.norm(features, axis=-1)[:, None] / np.linalg.norm(weights, axis=-1)
    assert_close(cosines, direct, page, rtol=1e-13)


def test_cosine_layer_gradients_are_normalized_linears_over_a_batch_and_match_central_differences():
    features, weights = RNG.standard_normal((3, 4)), RNG.standard_normal((5, 4))
    upstream = RNG.standard_normal((3, 5))
    page = closed_forms.linear_margin_cross_entropy_grad_x.page
    dx = closed_forms.linear_margin_cross_entropy_grad_x(features, weights, upstream)
    dW = closed_forms.linear_margin_cross_entropy_grad_W(features, weights, upstream)
    assert dx.shape == features.shape and dW.shape == weights.shape
    # the per-row statement of the margins page, summed over the rows for dW
    assert_close(dx, closed_forms.normalized_linear_grad_x(features, weights, upstream), page, rtol=1e-13, atol=1e-15)
    assert_close(dW, closed_forms.normalized_linear_grad_W(features, weights, upstream).sum(0), page, rtol=1e-13,
                 atol=1e-15)
    loss = lambda x: (closed_forms.normalized_linear(x, weights) * upstream).sum(-1)  # noqa: E731
    assert_close(dx, central_difference(loss, features), page)
    def loss_of_weights(flat):
        return (closed_forms.normalized_linear(features, flat.reshape(5, 4)) * upstream).sum()

    assert_close(dW, central_difference(loss_of_weights, weights.reshape(1, -1)).reshape(5, 4), page)
    # tangent: each row's gradient is orthogonal to its own row (the cosines are scale-invariant)
    np.testing.assert_allclose((dx * features).sum(-1), 0.0, atol=1e-14)
    np.testing.assert_allclose((dW * weights).sum(-1), 0.0, atol=1e-14)


def _one_hot(labels, classes):
    return np.eye(classes)[labels]


@pytest.mark.parametrize("margins", [(1.0, 0.0, 0.0), (1.0, 0.0, 0.35), (1.0, 0.5, 0.0), (1.0, 0.3, 0.2)])
def test_margin_cross_entropy_gradient_matches_central_differences(margins):
    cosines = RNG.uniform(-0.6, 0.9, size=(3, 5))
    target = _one_hot([0, 3, 4], 5)
    scale = 8.0
    loss = lambda c: closed_forms.combined_margin_cross_entropy(c, target, scale, *margins)  # noqa: E731
    gradient = closed_forms.combined_margin_cross_entropy_gradient(cosines, target, scale, *margins)
    assert_close(gradient, central_difference(loss, cosines, 1e-6), closed_forms.combined_margin_cross_entropy.page,
                 rtol=1e-6, atol=1e-6)


def test_arcface_cross_entropy_uses_the_fallback_and_its_gradient():
    margin, scale = 0.5, 16.0
    cosines = np.array([[0.7, -0.1, 0.2], [-0.95, 0.1, 0.3]])  # row 2: target in the fallback region
    target = _one_hot([0, 0], 3)
    page = closed_forms.arcface_cross_entropy.page
    loss = lambda c: closed_forms.arcface_cross_entropy(c, target, scale, margin)  # noqa: E731
    assert_close(closed_forms.arcface_cross_entropy_gradient(cosines, target, scale, margin),
                 central_difference(loss, cosines, 1e-6), page, rtol=1e-6, atol=1e-6)
    target_logit = closed_forms.arcface_target_logit(cosines[:, 0], margin)
    assert_close(target_logit, [math.cos(math.acos(0.7) + margin), -0.95 - margin * math.sin(margin)], page,
                 rtol=1e-14)


def test_arcface_derivative_clamp_gives_the_documented_finite_value(records_by_slug):
    record = records_by_slug["arcface-derivative-at-the-ends"]
    derivative = closed_forms.arcface_target_logit_derivative
    margin = 0.5
    with mpmath.workdps(50):
        for dtype in (np.float64, np.float32):
            c_max = float(np.nextafter(dtype(1), dtype(0)))
            at_one = derivative(np.array(1.0), margin, c_max)
            exact = mpmath.cos(margin) + mpmath.sin(margin) * c_max / mpmath.sqrt(1 - mpmath.mpf(c_max) ** 2)
            assert np.isfinite(at_one) and abs(at_one - float(exact)) <= 1e-6 * float(exact), derivative.page
            assert any(mpmath.nstr(exact, 10) in note for note in record.notes), \
                f"the page should document f'(c_max) = {mpmath.nstr(exact, 10)} for {dtype.__name__}"
            below = np.nextafter(c_max, 0.0)  # the clamp changes nothing below c_max
            exact_below = math.cos(margin) + math.sin(margin) * below / math.sqrt((1 - below) * (1 + below))
            assert_close(derivative(np.array(below), margin, c_max), exact_below, derivative.page, rtol=1e-6)
        # exactly 1 in the fallback region, 0 at the switch from the arc side
        assert derivative(np.array(-0.99), margin, 0.5) == 1.0
        switch = -math.cos(margin)
        assert abs(derivative(np.array(switch + 1e-9), margin, 1.0 - 2 ** -53)) < 1e-4


def test_arcface_fallback_jump_matches_the_page():
    margin = 0.5
    switch = -math.cos(margin)
    above = closed_forms.arcface_target_logit(np.array(np.nextafter(switch, 1.0)), margin)
    at = closed_forms.arcface_target_logit(np.array(switch), margin)
    assert_close(above - at, math.cos(margin) + margin * math.sin(margin) - 1, closed_forms.arcface_target_logit.page,
                 rtol=1e-6)
    grid = np.linspace(-1.0, 1.0, 4001)
    values = closed_forms.arcface_target_logit(grid, margin)
    assert np.all(np.diff(values) > 0), "the target logit must increase with cos (decrease with theta)"


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_sphereface_psi_is_continuous_decreasing_and_matches_chebyshev(order):
    page = closed_forms.sphereface_psi.page
    angles = np.linspace(0.0, math.pi, 20001)
    psi = closed_forms.sphereface_psi(angles, order)
    assert np.all(np.diff(psi) <= 1e-12), f"psi increases somewhere ({page})"
    assert np.max(np.abs(np.diff(psi))) < 1e-2, f"psi jumps ({page})"
    assert psi[0] == pytest.approx(1.0) and psi[-1] == pytest.approx(-(2 * order - 1))
    interior = angles[1:-1]
    assert_close(closed_forms.sphereface_psi_of_cosine(np.cos(interior), order), psi[1:-1], page, rtol=1e-9,
                 atol=1e-9)
    cosines = np.linspace(-0.999, 0.999, 41)
    numeric = (closed_forms.sphereface_psi_of_cosine(cosines + 1e-7, order)
               - closed_forms.sphereface_psi_of_cosine(cosines - 1e-7, order)) / 2e-7
    smooth = np.abs(np.diff(np.floor(order * np.arccos(np.stack([cosines - 1e-7, cosines + 1e-7])) / math.pi),
                            axis=0)).ravel() == 0
    assert_close(closed_forms.sphereface_psi_derivative(cosines, order)[smooth], numeric[smooth],
                 closed_forms.sphereface_psi_derivative.page, rtol=1e-6, atol=1e-6)


def test_large_margin_target_logit_gradients_match_central_differences():
    features, weight = RNG.standard_normal((3, 4)), RNG.standard_normal(4)
    for order, lam in ((1, 0.0), (2, 0.0), (3, 1.5), (4, 5.0)):
        page = closed_forms.large_margin_target_logit_grad_x.page
        logit_x = lambda x: closed_forms.large_margin_target_logit(x, weight, order, lam)  # noqa: E731
        assert_close(closed_forms.large_margin_target_logit_grad_x(features, weight, order, lam),
                     central_difference(logit_x, features), page, rtol=1e-6, atol=1e-7)
        logit_w = lambda w: closed_forms.large_margin_target_logit(features, w, order, lam)  # noqa: E731
        numeric_w = central_difference(logit_w, np.broadcast_to(weight, features.shape).copy())
        assert_close(closed_forms.large_margin_target_logit_grad_w(features, weight, order, lam), numeric_w, page,
                     rtol=1e-6, atol=1e-7)
        with_m1 = closed_forms.large_margin_target_logit(features, weight, 1, 0.0)
        assert_close(with_m1, features @ weight, page, rtol=1e-12)  # m = 1: the plain logit


def test_center_loss_gradient_matches_central_differences():
    features, centers = RNG.standard_normal((3, 5)), RNG.standard_normal((3, 5))
    assert_close(closed_forms.center_loss_grad_x(features, centers),
                 central_difference(lambda x: closed_forms.center_loss(x, centers), features),
                 closed_forms.center_loss_grad_x.page)


def test_normface_bound_is_a_floor_and_the_simplex_attains_it():
    page = closed_forms.normface_lower_bound.page
    classes, norm = 6, 1.7
    for _ in range(20):
        weights = RNG.standard_normal((classes, 8))
        weights *= norm / np.linalg.norm(weights, axis=1, keepdims=True)
        gram = weights @ weights.T
        loss = np.mean(np.log(np.exp(gram).sum(1)) - np.diag(gram))
        assert loss >= closed_forms.normface_lower_bound(classes, norm) - 1e-12, page
    simplex = norm * math.sqrt(classes / (classes - 1)) * (np.eye(classes) - 1.0 / classes)
    gram = simplex @ simplex.T
    loss = np.mean(np.log(np.exp(gram).sum(1)) - np.diag(gram))
    assert_close(loss, closed_forms.normface_lower_bound(classes, norm), page, rtol=1e-12)
    assert round(float(closed_forms.normface_lower_bound(10575, 1.0)), 2) == 8.27


def test_cosface_minimum_scale_reaches_the_posterior():
    page = closed_forms.cosface_minimum_scale.page
    for classes, posterior in ((10, 0.5), (1000, 0.9), (10575, 0.99)):
        scale = closed_forms.cosface_minimum_scale(classes, posterior)
        best = 1 / (1 + (classes - 1) * math.exp(-classes * scale / (classes - 1)))
        assert_close(best, posterior, page, rtol=1e-12)
