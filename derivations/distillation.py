"""Knowledge distillation: the soft term's gradient, why it is multiplied by T^2, and its
high-temperature limit (logit matching).

.. math::
    p = \\mathrm{softmax}(v / T),\\quad q = \\mathrm{softmax}(z / T),\\quad
    C = -\\sum_l p_l \\log q_l,\\quad
    \\frac{\\partial C}{\\partial z_i} = \\frac{q_i - p_i}{T},\\quad
    \\lim_{T\\to\\infty} T^2 \\frac{\\partial C}{\\partial z_i} = \\frac{z_i - v_i}{K}
    \\ (\\textstyle\\sum z = \\sum v = 0)

All for a general number of classes ``K``.

Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural
Network", 2015, section 2.1.
"""

from __future__ import annotations

import sympy as sp

from . import _closed_form as closed_forms
from ._closed_form import ClosedForm
from ._proof import derivation, eq, evaluate_sums, impose, label
from ._symbols import CLASS_RANGES, K, class_sum, i, k, l, y, z

FAMILY = "distillation"
PAGE = "docs/proofs/distillation.md"
TITLE = "Distillation: the soft term at temperature T"
INTRODUCTION = """\
Student logits $z$, teacher logits $v$, temperature $T > 0$; soft targets
$p = \\mathrm{softmax}(v/T)$ and student probabilities $q = \\mathrm{softmax}(z/T)$, for a
general number of classes $K$.  The kernel `distillation_loss` computes
$\\alpha T^2 \\mathrm{KL}(p \\,\\|\\, q) + (1 - \\alpha)\\,\\mathrm{CE}(z, y)$ (Hinton et al. 2015).
"""

v = sp.IndexedBase("v", real=True)  # teacher logits
T = sp.Symbol("T", positive=True)  # temperature
u = sp.Symbol("u", positive=True)  # 1 / T
alpha = sp.Symbol("alpha", real=True)
p_sym = sp.IndexedBase("p", positive=True)
q_sym = sp.IndexedBase("q", positive=True)


def tempered_softmax(logits, component, temperature=T, index=k):
    """``softmax(logits / T)_component``."""
    return sp.exp(logits[component] / temperature) / class_sum(sp.exp(logits[index] / temperature), index)


def tempered_log_softmax(logits, component, temperature=T, index=k):
    """``log softmax(logits / T)_component = logits_c / T - LSE(logits / T)``."""
    return logits[component] / temperature - sp.log(class_sum(sp.exp(logits[index] / temperature), index))


def soft_cross_entropy(student=z, teacher=v, temperature=T):
    """``C = -sum_l p_l log q_l`` with ``p = softmax(v/T)``, ``q = softmax(z/T)``."""
    return -class_sum(tempered_softmax(teacher, l, temperature)
                      * tempered_log_softmax(student, l, temperature), l)


def soft_kl(student=z, teacher=v, temperature=T):
    """``KL(p || q) = sum_l p_l (log p_l - log q_l)``."""
    return class_sum(tempered_softmax(teacher, l, temperature)
                     * (tempered_log_softmax(teacher, l, temperature)
                        - tempered_log_softmax(student, l, temperature)), l)


def distillation_objective():
    """``alpha T^2 KL(p || q) + (1 - alpha) CE(z, y)`` (the kernel's loss, one row)."""
    hard = -class_sum(y[l] * (z[l] - sp.log(class_sum(sp.exp(z[k]), k))), l)
    return alpha * T ** 2 * soft_kl() + (1 - alpha) * hard


# ---- closed forms ------------------------------------------------------------------------------


@closed_forms.register("distillation_soft_term")
def _soft_term_closed_form():
    return ClosedForm("distillation_soft_term", T ** 2 * soft_kl(), [z, v, T], {z: (K,), v: (K,)},
                      page=f"{PAGE}#distillation-soft-gradient",
                      formula="T^2 KL(softmax(v/T) || softmax(z/T))")


@closed_forms.register("distillation_soft_term_gradient")
def _soft_term_gradient_closed_form():
    gradient = evaluate_sums(sp.diff(T ** 2 * soft_kl(), z[i]), CLASS_RANGES)
    return ClosedForm("distillation_soft_term_gradient", gradient, [z, v, T], {z: (K,), v: (K,)},
                      outputs=[(i, K)], page=f"{PAGE}#distillation-soft-gradient",
                      formula="T (q_i - p_i)")


@closed_forms.register("distillation_loss")
def _distillation_loss_closed_form():
    return ClosedForm("distillation_loss", distillation_objective(), [z, v, y, T, alpha],
                      {z: (K,), v: (K,), y: (K,)}, page=f"{PAGE}#distillation-loss-gradient",
                      formula="alpha T^2 KL(p || q) + (1 - alpha) CE(z, y)")


@closed_forms.register("distillation_loss_gradient")
def _distillation_loss_gradient_closed_form():
    gradient = evaluate_sums(sp.diff(distillation_objective(), z[i]), CLASS_RANGES)
    return ClosedForm("distillation_loss_gradient", gradient, [z, v, y, T, alpha],
                      {z: (K,), v: (K,), y: (K,)}, outputs=[(i, K)],
                      page=f"{PAGE}#distillation-loss-gradient",
                      formula="alpha T (q_i - p_i) + (1 - alpha)(a_i - y_i)")


# ---- derivations ----------------------------------------------------------------------------------


def _softmax_sums_to_one(temperature=T):
    return eq(class_sum(tempered_softmax(v, l, temperature), l), 1)


@derivation(FAMILY, "distillation-soft-gradient",
            "soft-term gradient: dC/dz_i = (q_i - p_i) / T, so T^2 KL(p || q) has gradient T (q_i - p_i)",
            reference="Hinton, Vinyals & Dean 2015, section 2.1, eq. (2)")
def distillation_soft_gradient(proof):
    q_i, p_i = tempered_softmax(z, i), tempered_softmax(v, i)
    proof.state(eq(sp.Derivative(sp.Symbol("C"), z[i]), (q_sym[i] - p_sym[i]) / T),
                "$T > 0$; general $K$")
    proof.step("log q_l = z_l / T - LSE(z / T)", eq(sp.Symbol("C"), soft_cross_entropy()))
    gradient = sp.factor_terms(sp.expand(evaluate_sums(sp.diff(soft_cross_entropy(), z[i]), CLASS_RANGES)))
    proof.step("differentiate (chain rule through z / T) and sift",
               eq(sp.Derivative(sp.Symbol("C"), z[i]), gradient))
    total = sp.factor_terms(sp.expand(class_sum(tempered_softmax(v, l), l)))
    proof.require_identity("the soft targets sum to 1", total, sp.Integer(1),
                           display=eq(class_sum(p_sym[l], l), 1))
    proof.require_identity("so dC/dz_i = (q_i - p_i) / T", impose(gradient, _softmax_sums_to_one()),
                           (q_i - p_i) / T)
    proof.check_fixed_sizes("extra check of the unsifted derivative", sp.diff(soft_cross_entropy(), z[i]),
                            (q_i - p_i) / T, [z, v, T], {z: (K,), v: (K,)}, outputs=[(i, K)])
    kl_gradient = sp.factor_terms(sp.expand(evaluate_sums(sp.diff(soft_kl(), z[i]), CLASS_RANGES)))
    proof.require_identity("KL(p || q) = C - H(p) and H(p) does not depend on z: the same gradient",
                           impose(kl_gradient, _softmax_sums_to_one()), (q_i - p_i) / T,
                           display=eq(sp.Derivative(sp.Symbol("KL"), z[i]), (q_sym[i] - p_sym[i]) / T))
    proof.step("times T^2", eq(sp.Derivative(T ** 2 * sp.Symbol("KL"), z[i]), T * (q_sym[i] - p_sym[i])))
    proof.note("The soft gradient carries a factor $1/T$ explicitly and, for large $T$, a "
               "second one through $q_i - p_i = O(1/T)$ (next statement): it shrinks like "
               "$1/T^2$.  Multiplying the soft term by $T^2$ keeps its scale beside the hard "
               "term when $T$ changes (Hinton et al.: \"it is important to multiply them by "
               "$T^2$\").")
    proof.closed_form(closed_forms.get("distillation_soft_term_gradient"))


@derivation(FAMILY, "distillation-high-temperature-limit",
            "high-temperature limit: T^2 dC/dz_i -> (z_i - v_i)/K for zero-mean logits (logit matching)",
            reference="Hinton, Vinyals & Dean 2015, section 2.1, eqs. (3)-(4)")
def distillation_high_temperature_limit(proof):
    mean_free = [eq(class_sum(z[k], k), 0), eq(class_sum(v[k], k), 0)]
    proof.state(eq(sp.Limit(T ** 2 * sp.Derivative(sp.Symbol("C"), z[i]), T, sp.oo), (z[i] - v[i]) / K),
                "$\\sum_k z_k = \\sum_k v_k = 0$ (zero-mean logits); general $K$")
    q_u = tempered_softmax(z, i, 1 / u)
    p_u = tempered_softmax(v, i, 1 / u)
    difference = q_u - p_u
    proof.step("with u = 1/T, T^2 dC/dz_i = T (q_i - p_i) = (q_i(u) - p_i(u)) / u",
               eq(T ** 2 * sp.Derivative(sp.Symbol("C"), z[i]), difference / u))
    at_zero = sp.factor_terms(difference.subs(u, 0).doit())
    proof.require_identity("at u = 0 both are uniform: q_i(0) - p_i(0) = 1/K - 1/K = 0", at_zero,
                           sp.Integer(0), display=eq(label("q_i(0) - p_i(0)"), 0))
    slope = sp.factor_terms(sp.expand(sp.diff(difference, u).subs(u, 0).doit()))
    proof.step("so the limit u -> 0+ of (q_i - p_i)/u is the derivative at u = 0 (definition of "
               "the derivative)", eq(sp.Limit(difference / u, u, 0, "+"), slope))
    general = (z[i] - class_sum(z[k], k) / K) / K - (v[i] - class_sum(v[k], k) / K) / K
    proof.require_identity("in general: ((z_i - mean z) - (v_i - mean v)) / K", slope, general)
    proof.require_identity("zero-mean logits: (z_i - v_i) / K", impose(slope, *mean_free), (z[i] - v[i]) / K)
    matching = sp.diff(class_sum((z[k] - v[k]) ** 2, k) / 2, z[i])
    proof.require_identity(
        "which is 1/K times the gradient of the logit-matching objective (1/2) sum_k (z_k - v_k)^2",
        evaluate_sums(matching, CLASS_RANGES) / K, (z[i] - v[i]) / K,
    )
    proof.note("So at high temperature $\\partial C / \\partial z_i \\approx (z_i - v_i)/(K T^2)$ "
               "(Hinton et al.'s $\\frac{1}{NT^2}(z_i - v_i)$ with $N = K$ classes): distillation "
               "becomes logit matching, and the limit of $T^2\\,\\partial C/\\partial z_i$ does "
               "not depend on $T$ — the reason for the factor $T^2$.")
    proof.closed_form(closed_forms.get("distillation_soft_term_gradient"))


@derivation(FAMILY, "distillation-loss-gradient",
            "distillation loss gradient: alpha T (q_i - p_i) + (1 - alpha)(a_i - y_i)",
            reference="Hinton, Vinyals & Dean 2015; the kernel's distillation_loss")
def distillation_loss_gradient(proof):
    objective = distillation_objective()
    a_i = sp.exp(z[i]) / class_sum(sp.exp(z[k]), k)
    claimed = alpha * T * (tempered_softmax(z, i) - tempered_softmax(v, i)) + (1 - alpha) * (a_i - y[i])
    proof.state(eq(sp.Derivative(sp.Symbol("L"), z[i]), claimed),
                "$L = \\alpha T^2 \\mathrm{KL}(p\\,\\|\\,q) + (1-\\alpha)\\,\\mathrm{CE}(z, y)$, "
                "$\\sum_l y_l = 1$; general $K$")
    gradient = sp.factor_terms(sp.expand(evaluate_sums(sp.diff(objective, z[i]), CLASS_RANGES)))
    proof.step("differentiate both terms and sift", eq(sp.Derivative(sp.Symbol("L"), z[i]), gradient))
    proof.require_identity("impose sum p = 1 and sum y = 1",
                           impose(gradient, _softmax_sums_to_one(), eq(class_sum(y[l], l), 1)), claimed)
    proof.check_fixed_sizes("extra check of the unsifted derivative (y drawn summing to 1)",
                            sp.diff(objective, z[i]), claimed, [z, v, y, T, alpha],
                            {z: (K,), v: (K,), y: (K,)}, outputs=[(i, K)], distributions=(y,),
                            scalars={alpha: 0.7})
    proof.closed_form(closed_forms.get("distillation_loss_gradient"))


DERIVATIONS = [
    distillation_soft_gradient,
    distillation_high_temperature_limit,
    distillation_loss_gradient,
]
