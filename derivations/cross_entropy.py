"""Cross-entropy on softmax: gradients, the entropy decomposition, label smoothing, the
hinge -> softplus(LSE) chain, and the quadratic cost beside it.

.. math::
    L(z, y) = -\\sum_{l=0}^{K-1} y_l \\log a_l,\\qquad a = \\mathrm{softmax}(z),\\qquad
    \\frac{\\partial L}{\\partial z_i} = a_i - y_i \\quad\\text{when } \\sum_l y_l = 1

Statements are proven for a general number of classes ``K``; the binary (sigmoid)
statements are about scalars.  These are the facts the loss kernels
(``cross_entropy``, ``binary_cross_entropy_with_logits``, label smoothing) rely on.

References: seeds 000 (overconfidence and label smoothing), 001 (entropy, KL, the hinge
-> softplus(LSE) chain), 002 (softmax-cross-entropy derivative, quadratic cost);
C. Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", 2016
(label smoothing); PyTorch's ``cross_entropy`` and ``binary_cross_entropy_with_logits``
(the semantics the kernels follow).
"""

from __future__ import annotations

import sympy as sp

from . import _closed_form as closed_forms
from ._closed_form import ClosedForm
from ._proof import (
    PROVEN_SYMBOLIC,
    derivation,
    eq,
    evaluate_sums,
    impose,
    label,
    linearize_sums,
    simplifies_to_zero,
)
from ._symbols import (
    CLASS_RANGES,
    K,
    a,
    class_sum,
    i,
    k,
    l,
    logsumexp_of,
    sigmoid,
    softmax_of,
    softplus,
    t,
    y,
    z,
)

FAMILY = "cross_entropy"
PAGE = "docs/proofs/cross_entropy.md"
TITLE = "Cross-entropy, label smoothing and the hinge chain"
INTRODUCTION = """\
Cross-entropy of softmax probabilities $a = \\mathrm{softmax}(z)$ against a target
distribution $y$ (one-hot for a class index $t$), for a general number of classes $K$.
Where a statement needs $\\sum_l y_l = 1$ it says so, and the proof substitutes that
hypothesis explicitly.  The binary statements (sigmoid outputs) are about scalars.
"""

epsilon = sp.Symbol("epsilon", real=True)  # label smoothing
p = sp.IndexedBase("p", positive=True)  # distributions for the entropy statements
q = sp.IndexedBase("q", positive=True)
x = sp.Symbol("x", real=True)  # a binary logit
target = sp.Symbol("y", real=True)  # a binary target in [0, 1]
positive_weight = sp.Symbol("p_w", positive=True)  # pos_weight of the binary loss

TARGET_SUMS_TO_ONE = eq(class_sum(y[l], l), 1)


def cross_entropy_of(logits, targets, index=l):
    """``-sum_l y_l log softmax(z)_l`` written with ``log a_l = z_l - LSE(z)``."""
    return -class_sum(targets[index] * (logits[index] - logsumexp_of(logits)), index)


def smoothed_target(component):
    """``(1 - eps) y_l + eps / K``: the label-smoothed target (Szegedy et al. 2016)."""
    return (1 - epsilon) * y[component] + epsilon / K


def binary_cross_entropy_of(logit, target_value, weight=1):
    """``-(w y log sigma(x) + (1 - y) log(1 - sigma(x)))``, ``w`` = pos_weight."""
    return -(weight * target_value * sp.log(sigmoid(logit))
             + (1 - target_value) * sp.log(1 - sigmoid(logit)))


# ---- closed forms ------------------------------------------------------------------------------


def _gradient_of(loss):
    return evaluate_sums(sp.diff(loss, z[i]), CLASS_RANGES)


@closed_forms.register("cross_entropy")
def _cross_entropy_closed_form():
    return ClosedForm("cross_entropy", cross_entropy_of(z, y), [z, y], {z: (K,), y: (K,)},
                      page=f"{PAGE}#cross-entropy-gradient-soft-target",
                      formula="L = -sum_l y_l (z_l - LSE(z)); one-hot y for a class index")


@closed_forms.register("cross_entropy_gradient")
def _cross_entropy_gradient_closed_form():
    return ClosedForm("cross_entropy_gradient", _gradient_of(cross_entropy_of(z, y)), [z, y],
                      {z: (K,), y: (K,)}, outputs=[(i, K)],
                      page=f"{PAGE}#cross-entropy-gradient-soft-target",
                      formula="dL/dz_i = a_i sum_l y_l - y_i  (= a_i - y_i when sum_l y_l = 1)")


@closed_forms.register("label_smoothing_target")
def _label_smoothing_target_closed_form():
    return ClosedForm("label_smoothing_target", smoothed_target(i), [y, epsilon], {y: (K,)},
                      outputs=[(i, K)], page=f"{PAGE}#label-smoothing",
                      formula="(1 - eps) y_i + eps / K")


@closed_forms.register("label_smoothed_cross_entropy")
def _label_smoothed_closed_form():
    loss = (1 - epsilon) * cross_entropy_of(z, y) - epsilon / K * class_sum(z[l] - logsumexp_of(z), l)
    return ClosedForm("label_smoothed_cross_entropy", loss, [z, y, epsilon], {z: (K,), y: (K,)},
                      page=f"{PAGE}#label-smoothing",
                      formula="(1 - eps) CE(z, y) - eps/K sum_l log a_l  (PyTorch's label_smoothing)")


@closed_forms.register("label_smoothed_cross_entropy_gradient")
def _label_smoothed_gradient_closed_form():
    loss = (1 - epsilon) * cross_entropy_of(z, y) - epsilon / K * class_sum(z[l] - logsumexp_of(z), l)
    return ClosedForm("label_smoothed_cross_entropy_gradient", _gradient_of(loss), [z, y, epsilon],
                      {z: (K,), y: (K,)}, outputs=[(i, K)], page=f"{PAGE}#label-smoothing",
                      formula="a_i - ((1 - eps) y_i + eps / K) when sum_l y_l = 1")


@closed_forms.register("binary_cross_entropy_with_logits")
def _binary_cross_entropy_closed_form():
    stable = (1 - target) * x + (1 + (positive_weight - 1) * target) * softplus(-x)
    return ClosedForm("binary_cross_entropy_with_logits", stable, [x, target, positive_weight], {},
                      page=f"{PAGE}#binary-cross-entropy-with-logits",
                      formula="(1 - y) x + (1 + (p_w - 1) y) softplus(-x)")


@closed_forms.register("binary_cross_entropy_with_logits_gradient")
def _binary_cross_entropy_gradient_closed_form():
    gradient = (1 - target + positive_weight * target) * sigmoid(x) - positive_weight * target
    return ClosedForm("binary_cross_entropy_with_logits_gradient", gradient,
                      [x, target, positive_weight], {},
                      page=f"{PAGE}#binary-cross-entropy-with-logits",
                      formula="(1 - y + p_w y) sigma(x) - p_w y")


@closed_forms.register("quadratic_cost_gradient")
def _quadratic_cost_gradient_closed_form():
    activation = sigmoid(x)
    return ClosedForm("quadratic_cost_gradient", sp.diff((target - activation) ** 2 / 2, x),
                      [x, target], {}, page=f"{PAGE}#quadratic-cost-gradient",
                      formula="d/dx (y - sigma(x))^2 / 2 = -sigma(x)(1 - sigma(x))(y - sigma(x))")


# ---- derivations ----------------------------------------------------------------------------------


@derivation(FAMILY, "cross-entropy-gradient-one-hot",
            "cross-entropy gradient, one-hot target: d(-log a_t)/dz_i = a_i - delta_it",
            reference="Bridle 1990; Goodfellow, Bengio & Courville 2016, Deep Learning, 6.2.2.3")
def cross_entropy_gradient_one_hot(proof):
    loss = -(z[t] - logsumexp_of(z))
    proof.state(eq(sp.Derivative(-sp.log(a[t]), z[i]), a[i] - sp.KroneckerDelta(i, t)),
                "target class $0 \\le t \\le K-1$; general $K$")
    proof.step("log a_t = z_t - LSE(z) (softmax page, log-softmax identity)",
               eq(-sp.log(a[t]), loss))
    gradient = evaluate_sums(sp.diff(loss, z[i]), CLASS_RANGES)
    proof.step("differentiate and sift", eq(sp.Derivative(-sp.log(a[t]), z[i]), gradient))
    proof.require_identity("equals a_i - delta_it", gradient,
                           softmax_of(z, i) - sp.KroneckerDelta(i, t))
    proof.check_fixed_sizes("extra check of the unsifted derivative", sp.diff(loss, z[i]),
                            softmax_of(z, i) - sp.KroneckerDelta(i, t), [z], {z: (K,)},
                            outputs=[(i, K), (t, K)])
    proof.require_identity(
        "the one-hot target is a distribution: sum_l delta_lt = 1",
        evaluate_sums(class_sum(sp.KroneckerDelta(l, t), l), CLASS_RANGES), sp.Integer(1),
        display=eq(class_sum(sp.KroneckerDelta(l, t), l), 1),
    )
    proof.closed_form(closed_forms.get("cross_entropy_gradient"))


@derivation(FAMILY, "cross-entropy-gradient-soft-target",
            "cross-entropy gradient for any target summing to 1: dL/dz_i = a_i - y_i",
            reference="Bridle 1990 (the step a_i sum_j y_j = a_i)")
def cross_entropy_gradient_soft_target(proof):
    loss = cross_entropy_of(z, y)
    proof.state(eq(sp.Derivative(sp.Symbol("L"), z[i]), a[i] - y[i]),
                "$L = -\\sum_l y_l \\log a_l$; $\\sum_l y_l = 1$ (no sign condition on $y$ is "
                "needed); general $K$")
    proof.step("log a_l = z_l - LSE(z)", eq(sp.Symbol("L"), loss))
    gradient = sp.factor_terms(sp.expand(_gradient_of(loss)))
    proof.step("differentiate and sift", eq(sp.Derivative(sp.Symbol("L"), z[i]), gradient))
    general = softmax_of(z, i) * class_sum(y[l], l) - y[i]
    proof.require_identity("for any target: a_i sum_l y_l - y_i", gradient, general)
    imposed = impose(general, TARGET_SUMS_TO_ONE)
    proof.step("impose sum_l y_l = 1", eq(sp.Derivative(sp.Symbol("L"), z[i]), imposed))
    proof.require_identity("equals a_i - y_i", imposed, softmax_of(z, i) - y[i])
    proof.check_fixed_sizes("extra check of the unsifted derivative (y drawn summing to 1)",
                            sp.diff(loss, z[i]), softmax_of(z, i) - y[i], [z, y], {z: (K,), y: (K,)},
                            outputs=[(i, K)], distributions=(y,))
    proof.note("Without $\\sum_l y_l = 1$ the gradient is $a_i \\sum_l y_l - y_i$; the closed "
               "form `closed_forms.cross_entropy_gradient` is that general expression.")
    proof.closed_form(closed_forms.get("cross_entropy_gradient"))


@derivation(FAMILY, "cross-entropy-shift-invariance",
            "cross-entropy is unchanged by adding a constant to every logit (targets summing to 1)",
            reference="follows from softmax shift invariance (Goodfellow, Bengio & Courville 2016, 4.1)")
def cross_entropy_shift_invariance(proof):
    c = sp.Symbol("c", real=True)
    loss = cross_entropy_of(z, y)
    shifted = loss.replace(lambda e: isinstance(e, sp.Indexed) and e.base == z, lambda e: e + c)
    proof.state(eq(shifted, loss), "$\\sum_l y_l = 1$; any real $c$; general $K$")
    difference = sp.factor_terms(sp.expand(sp.expand_log(sp.factor_terms(sp.expand(shifted - loss)),
                                                         force=True)))
    proof.step("the shift adds c inside LSE and to every z_l", eq(shifted - loss, difference))
    proof.require_identity("impose sum_l y_l = 1", impose(difference, TARGET_SUMS_TO_ONE), sp.Integer(0),
                           display=eq(shifted - loss, 0))
    proof.closed_form(closed_forms.get("cross_entropy"))


@derivation(FAMILY, "cross-entropy-kl-decomposition",
            "H(p, q) = H(p) + KL(p || q), and KL(p || q) >= 0 for distributions",
            reference="Cover & Thomas, Elements of Information Theory, 2.3, 2.6")
def cross_entropy_kl_decomposition(proof):
    cross = -class_sum(p[l] * sp.log(q[l]), l)
    entropy = -class_sum(p[l] * sp.log(p[l]), l)
    divergence = class_sum(p[l] * sp.log(p[l] / q[l]), l)
    proof.state(eq(cross, entropy + divergence),
                "$p_l, q_l > 0$; for $\\mathrm{KL} \\ge 0$ also $\\sum_l p_l = \\sum_l q_l = 1$; general $K$")
    proof.require_identity(
        "one sum, log(p/q) = log p - log q",
        cross, entropy + divergence,
        prepare=lambda difference: sp.simplify(sp.expand_log(difference, force=True)),
    )
    ratio = sp.Symbol("r", positive=True)
    tangent_gap = proof.convex_tangent_line("-log is convex on (0, oo): tangent line at r = 1, -log r >= -(r - 1)",
                                            -sp.log(ratio), ratio, 1)
    instance = proof.instantiate(tangent_gap, {ratio: q[l] / p[l]})
    term_gap = q[l] - p[l] - p[l] * sp.log(q[l] / p[l])
    proof.require_identity("with r = q_l / p_l, times p_l > 0: the termwise gap of -KL",
                           term_gap, proof.scale_fact(instance, p[l]),
                           display=eq(term_gap, p[l] * instance))
    proof.sum_bound("sum over l", p[l] * sp.log(q[l] / p[l]), q[l] - p[l], (l, 0, K - 1))
    closing = impose(sp.factor_terms(sp.expand(class_sum(q[l] - p[l], l))),
                     eq(class_sum(q[l], l), 1), eq(class_sum(p[l], l), 1))
    if not simplifies_to_zero(closing):
        proof.fail("sum_l (q_l - p_l) = 0", sp.sstr(closing))
    proof.step("sum_l (q_l - p_l) = 1 - 1 = 0, so -KL(p || q) <= 0",
               sp.GreaterThan(divergence, 0, evaluate=False), "distributions sum to 1")
    proof.note("So $H(p, q) \\ge H(p)$: minimizing the cross-entropy over $q$ minimizes the "
               "KL divergence, which is why the distillation loss may use either.")


@derivation(FAMILY, "label-smoothing",
            "label smoothing: loss (1-eps) CE + eps mean(-log a), gradient a - ((1 - eps) y + eps/K)",
            reference="Szegedy et al. 2016 (Rethinking the Inception Architecture), section 7; "
                      "PyTorch cross_entropy(label_smoothing=eps)")
def label_smoothing(proof):
    smoothed = sp.IndexedBase("y^{ls}")
    proof.state(eq(sp.Derivative(label("L_{ls}"), z[i]), a[i] - smoothed_target(i)),
                "$y^{ls}_l = (1 - \\varepsilon) y_l + \\varepsilon / K$; $\\sum_l y_l = 1$; general $K$")
    smoothed_loss = -class_sum(smoothed_target(l) * (z[l] - logsumexp_of(z)), l)
    torch_form = (1 - epsilon) * cross_entropy_of(z, y) - epsilon / K * class_sum(z[l] - logsumexp_of(z), l)
    proof.require_identity(
        "cross-entropy against y^ls splits into (1 - eps) CE(z, y) + eps (-(1/K) sum_l log a_l)",
        smoothed_loss, torch_form,
        prepare=lambda difference: sp.simplify(sp.factor_terms(sp.expand(difference))),
        display=eq(label("L_{ls}"), torch_form),
    )
    total = sp.factor_terms(sp.expand(class_sum(smoothed_target(l), l)).doit())
    proof.require_identity("y^ls is a distribution: its sum is (1 - eps) + eps = 1",
                           impose(total, TARGET_SUMS_TO_ONE), sp.Integer(1),
                           display=eq(class_sum(smoothed[l], l), 1))
    gradient = linearize_sums(sp.factor_terms(sp.expand(_gradient_of(smoothed_loss))))
    proof.step("differentiate and sift", eq(sp.Derivative(label("L_{ls}"), z[i]), gradient))
    proof.require_identity(
        "impose sum_l y_l = 1: the gradient is a_i - y^ls_i",
        impose(sp.factor_terms(sp.expand(gradient.doit())), TARGET_SUMS_TO_ONE),
        softmax_of(z, i) - smoothed_target(i),
        prepare=lambda difference: sp.simplify(impose(sp.factor_terms(sp.expand(difference)),
                                                      TARGET_SUMS_TO_ONE)),
    )
    proof.check_fixed_sizes("extra check of the unsifted derivative (y drawn summing to 1)",
                            sp.diff(smoothed_loss, z[i]), softmax_of(z, i) - smoothed_target(i),
                            [z, y, epsilon], {z: (K,), y: (K,)}, outputs=[(i, K)], distributions=(y,),
                            scalars={epsilon: 0.1})
    proof.note("With a one-hot $y$ this is Szegedy et al.'s loss "
               "$-(1-\\varepsilon)\\log a_t - \\varepsilon \\sum_l \\frac{1}{K}\\log a_l$ and "
               "PyTorch's `cross_entropy(..., label_smoothing=eps)`: the gradient never asks "
               "for $a_t \\to 1$, which is what curbs over-confidence (Szegedy et al. 2016; Müller, Kornblith & Hinton 2019).")
    proof.closed_form(closed_forms.get("label_smoothed_cross_entropy_gradient"))


@derivation(FAMILY, "hinge-softplus-chain",
            "the hinge chain: softplus(LSE_{k != t} z_k - z_t) = -log a_t (softmax cross-entropy)",
            reference="softplus as the smooth ReLU and log-sum-exp as the smooth max (Boyd & Vandenberghe 2004, 3.1.5; Dugas et al. 2001)")
def hinge_softplus_chain(proof):
    others = class_sum(sp.exp(z[k]) * (1 - sp.KroneckerDelta(k, t)), k)
    smoothed_hinge = softplus(sp.log(others) - z[t])
    proof.state(eq(smoothed_hinge, -sp.log(a[t])),
                "target class $0 \\le t \\le K-1$, $K \\ge 2$; general $K$")
    value = sp.Symbol("x", real=True)
    proof.require_identity("softplus(x) - x = softplus(-x)", softplus(value) - value, softplus(-value),
                           prepare=lambda difference: sp.simplify(sp.expand_log(difference, force=True)))
    proof.require_positive("softplus(-x) > 0, so softplus(x) > x", softplus(-value))
    proof.require_positive("softplus(x) > 0, so softplus(x) >= max(x, 0): it smooths the hinge",
                           softplus(value))
    proof.step("max_{k != t} z_k <= LSE_{k != t} z_k (softmax page, logsumexp bounds over K - 1 terms), "
               "so the smoothed hinge bounds the hinge max(max_{k != t} z_k - z_t, 0) from above",
               sp.LessThan(sp.Max(sp.Symbol("x"), 0), softplus(sp.Symbol("x")), evaluate=False),
               "from the two lines above")
    split = evaluate_sums(sp.expand(others), CLASS_RANGES)
    proof.require_identity("the sum over k != t is S - e^{z_t}", others, split,
                           prepare=lambda difference: evaluate_sums(sp.expand(difference), CLASS_RANGES),
                           display=eq(others, split))
    unfolded = sp.log(1 + sp.expand(sp.exp(sp.log(split) - z[t])))
    proof.step("exp(log u) = u", eq(smoothed_hinge, unfolded))
    proof.require_identity("1 + (S - e^{z_t}) e^{-z_t} = S / e^{z_t}", unfolded, -sp.log(softmax_of(z, t)),
                           prepare=lambda difference: sp.simplify(difference))
    gradient = evaluate_sums(sp.diff(sp.log(others), z[i]), CLASS_RANGES)
    proof.step("the non-target LSE passes gradient to the non-targets by their softmax "
               "(sums to 1; the target gets -1 from -z_t)",
               eq(sp.Derivative(sp.log(others), z[i]), gradient))
    proof.closed_form(closed_forms.get("cross_entropy"))


@derivation(FAMILY, "quadratic-cost-gradient",
            "quadratic cost on a sigmoid: dC/dz = -a(1 - a)(y - a), beside cross-entropy's a - y",
            reference="Nielsen, Neural Networks and Deep Learning, ch. 3",
            scope=PROVEN_SYMBOLIC)
def quadratic_cost_gradient(proof):
    activation = sigmoid(x)
    out = sp.Symbol("a", positive=True)
    quadratic = (target - activation) ** 2 / 2
    cross = binary_cross_entropy_of(x, target)
    proof.state(eq(sp.Derivative(label("C_{quad}"), x), -out * (1 - out) * (target - out)),
                "one sigmoid neuron $a = \\sigma(x)$, target $y$")
    proof.require_identity("sigma' = sigma (1 - sigma)", sp.diff(activation, x),
                           activation * (1 - activation))
    proof.require_identity("quadratic cost C = (y - a)^2 / 2: dC/dx = -a (1 - a)(y - a)",
                           sp.diff(quadratic, x), -activation * (1 - activation) * (target - activation))
    proof.require_identity("cross-entropy C = -(y log a + (1 - y) log(1 - a)): dC/dx = a - y",
                           sp.diff(cross, x), activation - target,
                           prepare=lambda difference: sp.simplify(difference))
    ratio = sp.simplify((out * (1 - out) * (out - target)) / (out - target))
    proof.step("the quadratic gradient is the cross-entropy gradient times a(1 - a), "
               "which vanishes as a -> 0 or 1: a saturated, wrong neuron learns slowly",
               eq(sp.Symbol("ratio"), ratio))
    starts = (sp.Rational(82, 100), sp.Rational(98, 100))  # Nielsen's chapter 3: outputs before training, target 0
    quadratic_at = [start * (1 - start) * (start - 0) for start in starts]
    proof.require_true("Nielsen's two starts (target 0): the worse start, a = 0.98, gets the smaller "
                       "quadratic gradient", sp.StrictGreaterThan(quadratic_at[0], quadratic_at[1], evaluate=False),
                       how="exact rational arithmetic")
    examples = [f"$a = {float(start):.2f}$, $y = 0$: quadratic gradient {float(value):.4f}, cross-entropy "
                f"{float(start):.2f}" for start, value in zip(starts, quadratic_at)]
    proof.note("Nielsen's experiment (Neural Networks and Deep Learning, ch. 3): " + "; ".join(examples) + ".  The update "
               "$\\delta = a(1-a)(y-a)$ of a sigmoid output neuron is $-\\partial C_{quad}/\\partial x$.")
    proof.closed_form(closed_forms.get("quadratic_cost_gradient"))


@derivation(FAMILY, "binary-cross-entropy-with-logits",
            "binary cross-entropy with logits (pos_weight p_w): stable form and gradient "
            "(1 - y + p_w y) sigma(x) - p_w y",
            reference="PyTorch binary_cross_entropy_with_logits (pos_weight semantics)", scope=PROVEN_SYMBOLIC)
def binary_cross_entropy_with_logits(proof):
    loss = binary_cross_entropy_of(x, target, positive_weight)
    stable = (1 - target) * x + (1 + (positive_weight - 1) * target) * softplus(-x)
    gradient = (1 - target + positive_weight * target) * sigmoid(x) - positive_weight * target
    proof.state(eq(sp.Derivative(label("\\ell"), x), gradient),
                "$\\ell = -(p_w\\, y \\log\\sigma(x) + (1 - y)\\log(1 - \\sigma(x)))$, "
                "one logit per class (multi-label); $p_w > 0$")
    proof.require_identity("log sigma(x) = -softplus(-x), log(1 - sigma(x)) = -x - softplus(-x)",
                           loss, stable, prepare=lambda difference: sp.simplify(sp.expand_log(difference, force=True)),
                           display=eq(label("\\ell"), stable))
    proof.require_identity("differentiate", sp.diff(stable, x), gradient)
    proof.require_identity("with p_w = 1: sigma(x) - y", gradient.subs(positive_weight, 1),
                           sigmoid(x) - target)
    proof.note("The stable form evaluates $\\mathrm{softplus}(-x) = \\max(-x, 0) + "
               "\\log(1 + e^{-|x|})$ without overflow; it is PyTorch's formula.")
    proof.closed_form(closed_forms.get("binary_cross_entropy_with_logits_gradient"))


DERIVATIONS = [
    cross_entropy_gradient_one_hot,
    cross_entropy_gradient_soft_target,
    cross_entropy_shift_invariance,
    cross_entropy_kl_decomposition,
    label_smoothing,
    hinge_softplus_chain,
    quadratic_cost_gradient,
    binary_cross_entropy_with_logits,
]
