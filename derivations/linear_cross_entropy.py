"""The fused linear cross-entropy: its gradient in the logits (weighted target, z-loss), the
soft cap's chain rule, and the linear layer's gradients dx = G W, dW = G^T x, db = G.

.. math::
    u_j = \\sum_d x_d W_{jd} + b_j,\\quad z_j = c \\tanh(u_j / c),\\quad
    L = \\sum_l \\tilde w_l (\\mathrm{LSE}(z) - z_l) + \\zeta\\, \\mathrm{LSE}(z)^2

These are the facts ``kernels/_linear_cross_entropy.py`` computes its gradient G = dL/du
and the products from.  General numbers of classes ``K`` and features ``D``.

References: A. Chowdhery et al., "PaLM", 2022 (the z-loss); Gemma Team, "Gemma 2", 2024 (the
logit soft cap); E. Wijmans et al., "Cut your losses in large-vocabulary language models",
2024 (the fused linear cross-entropy).
"""

from __future__ import annotations

import sympy as sp

from . import _closed_form as closed_forms
from ._closed_form import ClosedForm
from ._proof import PROVEN_SYMBOLIC, derivation, eq, evaluate_sums, label, proven_for
from ._symbols import K, a, i, l, logsumexp_of, softmax_of, z

FAMILY = "linear_cross_entropy"
PAGE = "docs/proofs/linear_cross_entropy.md"
TITLE = "Fused linear cross-entropy: z-loss, soft cap, the linear layer's gradients"
INTRODUCTION = """\
One row: features $x \\in \\mathbb{R}^D$, a linear layer $W \\in \\mathbb{R}^{K \\times D}$
(rows $W_j$, like `torch.nn.Linear.weight`) and bias $b$, logits $u = W x + b$, optionally
soft-capped $z_j = c \\tanh(u_j / c)$ (Gemma 2), the cross-entropy against target weights
$\\tilde w$ (one-hot, class-weighted and label-smoothed targets are all of this form: see
the cross-entropy page) plus PaLM's z-loss $\\zeta\\,\\mathrm{LSE}(z)^2$.  The kernel never
forms $u$ for all classes at once; these statements are what lets it form $G = \\partial L /
\\partial u$ chunk by chunk from per-row statistics and accumulate $G W$ and $G^\\top x$.
General $K$ and $D$.
"""

D = sp.Symbol("D", integer=True, positive=True)  # features
d, e = sp.symbols("d e", integer=True, nonnegative=True)  # feature indices (d summed, e free)
j = sp.Symbol("j", integer=True, nonnegative=True)  # a class index (free)
x = sp.IndexedBase("x", real=True)
W = sp.IndexedBase("W", real=True)
b = sp.IndexedBase("b", real=True)
tw = sp.IndexedBase("tw", real=True)  # the target weights w~
G = sp.IndexedBase("G", real=True)  # dL/du, for the layer's statement
zeta = sp.Symbol("zeta", nonnegative=True)  # the z-loss coefficient
cap = sp.Symbol("c", positive=True)  # the soft cap
logit = sp.Symbol("u", real=True)

CLASS_RANGES = {i: K, j: K, l: K}
FEATURE_RANGES = {d: D, e: D}


def loss_of_logits(logits=z):
    """``sum_l tw_l (LSE(z) - z_l) + zeta LSE(z)^2``."""
    return sp.Sum(tw[l] * (logsumexp_of(logits) - logits[l]), (l, 0, K - 1)) + zeta * logsumexp_of(logits) ** 2


def logit_gradient(component=i, logits=z):
    """``(sum_l tw_l + 2 zeta LSE(z)) a_i - tw_i``: dL/dz_i."""
    total = sp.Sum(tw[l], (l, 0, K - 1))
    return (total + 2 * zeta * logsumexp_of(logits)) * softmax_of(logits, component) - tw[component]


def linear_logit(component):
    """``u_j = sum_d x_d W_jd + b_j``."""
    return sp.Sum(x[d] * W[component, d], (d, 0, D - 1)) + b[component]


def capped(value):
    """``c tanh(u / c)``."""
    return cap * sp.tanh(value / cap)


# ---- closed forms ------------------------------------------------------------------------------


@closed_forms.register("linear_cross_entropy_logit_gradient")
def _logit_gradient_closed_form():
    return ClosedForm("linear_cross_entropy_logit_gradient", logit_gradient(), [z, tw, zeta],
                      {z: (K,), tw: (K,)}, outputs=[(i, K)],
                      page=f"{PAGE}#z-loss-and-target-weights-gradient",
                      formula="dL/dz_i = (sum_l tw_l + 2 zeta LSE(z)) a_i - tw_i")


# ---- derivations ----------------------------------------------------------------------------------


@derivation(FAMILY, "z-loss-and-target-weights-gradient",
            "cross-entropy with target weights and z-loss: dL/dz_i = (TW + 2 zeta LSE) a_i - tw_i",
            reference="Chowdhery et al. 2022 (PaLM), section 5 (z-loss); the cross-entropy page")
def z_loss_and_target_weights_gradient(proof):
    total = label("TW")
    proof.state(eq(sp.Derivative(sp.Symbol("L"), z[i]),
                   (total + 2 * zeta * label("\\mathrm{LSE}(z)")) * a[i] - tw[i]),
                "$L = \\sum_l \\tilde w_l (\\mathrm{LSE}(z) - z_l) + \\zeta\\,\\mathrm{LSE}(z)^2$, "
                "$TW = \\sum_l \\tilde w_l$; any real target weights; general $K$")
    loss = loss_of_logits()
    proof.step("the loss", eq(sp.Symbol("L"), loss))
    gradient = evaluate_sums(sp.diff(loss, z[i]), CLASS_RANGES)
    proof.step("differentiate and sift", eq(sp.Derivative(sp.Symbol("L"), z[i]), gradient))
    proof.require_identity("equals (TW + 2 zeta LSE) a_i - tw_i", gradient, logit_gradient(),
                           prepare=lambda difference: sp.simplify(sp.expand(difference)))
    proof.check_fixed_sizes("extra check of the unsifted derivative", sp.diff(loss, z[i]), logit_gradient(),
                            [z, tw, zeta], {z: (K,), tw: (K,)}, outputs=[(i, K)])
    proof.closed_form(closed_forms.get("linear_cross_entropy_logit_gradient"))
    proof.note("Without the z-loss ($\\zeta = 0$) this is the cross-entropy page's $TW\\,a_i - "
               "\\tilde w_i$; the z-loss only raises the softmax's coefficient from $TW$ to $TW + "
               "2\\zeta\\,\\mathrm{LSE}$, so the kernel forms both terms from the row's (max, sum) "
               "and one exponential per logit.  For the target $y$ the kernel writes "
               "$TW\\,(a_y - 1) + (TW - \\tilde w_y) + 2\\zeta\\,\\mathrm{LSE}\\,a_y$, the same value "
               "with $a_y - 1 = -T/S$ free of cancellation.")


@derivation(FAMILY, "soft-cap-chain-rule",
            "the soft cap c tanh(u / c): derivative 1 - tanh(u / c)^2, in (0, 1]",
            reference="Gemma Team 2024 (Gemma 2), section 2 (logit soft-capping)", scope=PROVEN_SYMBOLIC)
def soft_cap_chain_rule(proof):
    derivative = 1 - sp.tanh(logit / cap) ** 2
    proof.state(eq(sp.Derivative(capped(logit), logit), derivative), "$c > 0$, real $u$")
    proof.require_identity("differentiate: d tanh(v)/dv = 1 - tanh(v)^2, times c / c",
                           sp.diff(capped(logit), logit), derivative,
                           prepare=lambda difference: sp.simplify(difference.rewrite(sp.exp)),
                           display=eq(sp.Derivative(capped(logit), logit), derivative))
    proof.require_identity("the same as 1 / cosh(u / c)^2",
                           derivative, 1 / sp.cosh(logit / cap) ** 2,
                           prepare=lambda difference: sp.simplify(difference.rewrite(sp.exp)))
    proof.require_positive("positive: cosh of a real is positive", 1 / sp.cosh(logit / cap) ** 2)
    proof.require_nonnegative("at most 1: 1 minus it is tanh(u / c)^2 >= 0", sp.tanh(logit / cap) ** 2)
    proof.note("So $\\partial L/\\partial u_j = \\partial L/\\partial z_j\\,(1 - \\tanh^2(u_j/c))$: the "
               "kernel multiplies each entry of the logit gradient by this factor, computed in float64 "
               "from the logit before the cap.  It never amplifies the gradient.")


@derivation(FAMILY, "linear-layer-gradients",
            "the linear layer u = W x + b: dL/dx = G W, dL/dW = G^T x (outer product), dL/db = G",
            reference="Goodfellow, Bengio & Courville 2016, Deep Learning, 6.5.2 (the chain rule)",
            scope=proven_for("K", "D"))
def linear_layer_gradients(proof):
    proof.state(sp.And(eq(sp.Derivative(sp.Symbol("L"), x[e]), sp.Sum(G[j] * W[j, e], (j, 0, K - 1))),
                       eq(sp.Derivative(sp.Symbol("L"), W[l, e]), G[l] * x[e]),
                       eq(sp.Derivative(sp.Symbol("L"), b[l]), G[l])),
                "$u_j = \\sum_d x_d W_{jd} + b_j$, $G_j = \\partial L/\\partial u_j$ for any "
                "differentiable $L(u)$; general $K$, $D$; over a batch, $dW$ and $db$ sum over the rows")
    derivative_x = evaluate_sums(sp.diff(linear_logit(j), x[e]), FEATURE_RANGES)
    proof.require_identity("du_j/dx_e = W_je", derivative_x, W[j, e],
                           display=eq(sp.Derivative(label("u_j"), x[e]), W[j, e]))
    derivative_w = evaluate_sums(sp.diff(linear_logit(j), W[l, e]), FEATURE_RANGES)
    proof.require_identity("du_j/dW_le = delta_jl x_e", derivative_w, sp.KroneckerDelta(j, l) * x[e],
                           display=eq(sp.Derivative(label("u_j"), W[l, e]), sp.KroneckerDelta(j, l) * x[e]))
    derivative_b = sp.diff(linear_logit(j), b[l])
    proof.require_identity("du_j/db_l = delta_jl", derivative_b, sp.KroneckerDelta(j, l),
                           display=eq(sp.Derivative(label("u_j"), b[l]), sp.KroneckerDelta(j, l)))
    chain_w = evaluate_sums(sp.Sum(G[j] * derivative_w, (j, 0, K - 1)), CLASS_RANGES)
    proof.require_identity("chain rule, sum_j G_j du_j/dW_le = G_l x_e", chain_w, G[l] * x[e])
    chain_b = evaluate_sums(sp.Sum(G[j] * derivative_b, (j, 0, K - 1)), CLASS_RANGES)
    proof.require_identity("chain rule, sum_j G_j du_j/db_l = G_l", chain_b, G[l])
    # the whole composition, soft cap and z-loss included, differentiated by SymPy at fixed sizes
    logits = sp.IndexedBase("z_u", real=True)
    composite = loss_of_logits(logits).replace(
        lambda expression: isinstance(expression, sp.Indexed) and expression.base == logits,
        lambda expression: capped(linear_logit(expression.indices[0])))
    gradient = sp.Sum(logit_gradient(j, logits) * (1 - sp.tanh(linear_logit(j) / cap) ** 2) * W[j, e],
                      (j, 0, K - 1)).replace(
        lambda expression: isinstance(expression, sp.Indexed) and expression.base == logits,
        lambda expression: capped(linear_logit(expression.indices[0])))
    proof.check_fixed_sizes("extra check: dL/dx_e of the whole composition (soft cap, z-loss) equals "
                            "sum_j G_j W_je with G from the two statements above",
                            sp.diff(composite, x[e]), gradient, [x, W, b, tw, zeta, cap],
                            {x: (D,), W: (K, D), b: (K,), tw: (K,)}, outputs=[(e, D)], sizes=range(2, 4),
                            tolerance=1e-10)
    proof.note("Over a batch: $dX = G W$ (rows, features) and $dW = G^\\top X$, $db = \\sum_i G_{i\\cdot}$. "
               "The kernel forms $G$ one tile of rows and classes at a time and adds each tile's "
               "products in float64, so neither $G$ nor the logits are ever whole.")


DERIVATIONS = [
    z_loss_and_target_weights_gradient,
    soft_cap_chain_rule,
    linear_layer_gradients,
]
