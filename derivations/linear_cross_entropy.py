"""The fused linear cross-entropy: its gradient in the logits (weighted target, z-loss), the
soft cap's chain rule, and the linear layer's gradients dx = G W, dW = G^T x, db = G; and the
fused margin loss's gradients through the cosine layer cos_ij = x_i . W_j / (|x_i| |W_j|).

.. math::
    u_j = \\sum_d x_d W_{jd} + b_j,\\quad z_j = c \\tanh(u_j / c),\\quad
    L = \\sum_l \\tilde w_l (\\mathrm{LSE}(z) - z_l) + \\zeta\\, \\mathrm{LSE}(z)^2

These are the facts ``kernels/_linear_cross_entropy.py`` computes its gradient G = dL/du
and the products from, and ``kernels/_linear_margin_cross_entropy.py`` its gradients through
the row normalizations.  General numbers of rows ``N``, classes ``K`` and features ``D``.

References: A. Chowdhery et al., "PaLM", 2022 (the z-loss); Gemma Team, "Gemma 2", 2024 (the
logit soft cap); E. Wijmans et al., "Cut your losses in large-vocabulary language models",
2024 (the fused linear cross-entropy); F. Wang et al., "NormFace", 2017 (the cosine layer's
gradient).
"""

from __future__ import annotations

import sympy as sp

from . import _closed_form as closed_forms
from ._closed_form import ClosedForm
from ._proof import PROVEN_SYMBOLIC, derivation, eq, evaluate_sums, label, linearize_sums, proven_for
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
The last statement is the same for the cosines $c_{ij} = x_i \\cdot W_j / (\\|x_i\\|\\,\\|W_j\\|)$
of the fused margin loss (`linear_margin_cross_entropy`): its gradient through both row
normalizations, in the form the kernel accumulates.  General $N$, $K$ and $D$.
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

N = sp.Symbol("N", integer=True, positive=True)  # rows, for the cosine layer's statement
n, r = sp.symbols("n r", integer=True, nonnegative=True)  # row indices (n summed, r free)
g = sp.IndexedBase("g", real=True)  # dL/dcos, for the cosine layer's statement

CLASS_RANGES = {i: K, j: K, l: K}
FEATURE_RANGES = {d: D, e: D}
BATCH_RANGES = {n: N, r: N, j: K, l: K, d: D, e: D}


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


def row_norm(matrix, row):
    """``|M_row| = sqrt(sum_d M_row,d^2)``."""
    return sp.sqrt(sp.Sum(matrix[row, d] ** 2, (d, 0, D - 1)))


def batch_cosine(row, column):
    """``c_row,column = x_row . W_column / (|x_row| |W_column|)`` (x is N x D here, W is K x D)."""
    return sp.Sum(x[row, d] * W[column, d], (d, 0, D - 1)) / (row_norm(x, row) * row_norm(W, column))


def cosine_weight(row, column):
    """``A_row,column = g_row,column / (|x_row| |W_column|)``."""
    return g[row, column] / (row_norm(x, row) * row_norm(W, column))


def accumulated(weight, vectors, outer, size):
    """``v_f = sum_outer weight(outer) vectors_outer,f`` as a function of ``f`` (the sums the kernel
    accumulates: ``sum_j A_rj W_j`` for dx_r, ``sum_n A_nl x_n`` for dW_l)."""
    return lambda f: sp.Sum(weight(outer) * vectors[outer, f], (outer, 0, size - 1))


def tangent_projection(vector, matrix, row, index=e):
    """Component ``index`` of ``(I - u u^T) v`` with ``u = M_row / |M_row|`` and ``v_d = vector(d)``."""
    along = sp.Sum(matrix[row, d] * vector(d), (d, 0, D - 1)) / row_norm(matrix, row) ** 2
    return vector(index) - along * matrix[row, index]


def cosine_layer_grad_x(row=r):
    """``dx_row = (I - xhat xhat^T) sum_j A_row,j W_j``, component e."""
    return tangent_projection(accumulated(lambda column: cosine_weight(row, column), W, j, K), x, row)


def cosine_layer_grad_w(column=l):
    """``dW_column = (I - What What^T) sum_n A_n,column x_n``, component e."""
    return tangent_projection(accumulated(lambda row: cosine_weight(row, column), x, n, N), W, column)


# ---- closed forms ------------------------------------------------------------------------------


@closed_forms.register("linear_cross_entropy_logit_gradient")
def _logit_gradient_closed_form():
    return ClosedForm("linear_cross_entropy_logit_gradient", logit_gradient(), [z, tw, zeta],
                      {z: (K,), tw: (K,)}, outputs=[(i, K)],
                      page=f"{PAGE}#z-loss-and-target-weights-gradient",
                      formula="dL/dz_i = (sum_l tw_l + 2 zeta LSE(z)) a_i - tw_i")


_COSINE_LAYER_SHAPES = {x: (N, D), W: (K, D), g: (N, K)}


@closed_forms.register("linear_margin_cross_entropy_grad_x")
def _cosine_layer_grad_x_closed_form():
    return ClosedForm("linear_margin_cross_entropy_grad_x", cosine_layer_grad_x(), [x, W, g], _COSINE_LAYER_SHAPES,
                      outputs=[(r, N), (e, D)], page=f"{PAGE}#cosine-layer-gradients",
                      formula="dx_r = (I - xhat_r xhat_r^T) sum_j A_rj W_j, A_rj = g_rj / (|x_r| |W_j|)")


@closed_forms.register("linear_margin_cross_entropy_grad_W")
def _cosine_layer_grad_w_closed_form():
    return ClosedForm("linear_margin_cross_entropy_grad_W", cosine_layer_grad_w(), [x, W, g], _COSINE_LAYER_SHAPES,
                      outputs=[(l, K), (e, D)], page=f"{PAGE}#cosine-layer-gradients",
                      formula="dW_l = (I - What_l What_l^T) sum_n A_nl x_n, A_nl = g_nl / (|x_n| |W_l|)")


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


@derivation(FAMILY, "cosine-layer-gradients",
            "the cosine layer c_ij = x_i . W_j / (|x_i| |W_j|): dL/dx_i = (I - xhat_i xhat_i^T) sum_j A_ij W_j, "
            "dL/dW_j = (I - What_j What_j^T) sum_i A_ij x_i, A_ij = g_ij / (|x_i| |W_j|)",
            reference="Wang et al. 2017 (NormFace), section 3.2, eqs. (6)-(7); the margins page",
            scope=proven_for("N", "K", "D"))
def cosine_layer_gradients(proof):
    sum_x, sum_w = label("\\sum_j A_{rj} W_j"), label("\\sum_n A_{nl} x_n")
    proof.state(sp.And(eq(label("\\nabla_{x_r} L"), label("(I - \\hat x_r \\hat x_r^\\top)") * sum_x),
                       eq(label("\\nabla_{W_l} L"), label("(I - \\hat W_l \\hat W_l^\\top)") * sum_w),
                       eq(label("A_{nj}"), g[n, j] / (label("\\|x_n\\|") * label("\\|W_j\\|")))),
                "$x \\in \\mathbb{R}^{N\\times D}$, $W \\in \\mathbb{R}^{K\\times D}$, no zero row; "
                "$c_{nj} = x_n \\cdot W_j / (\\|x_n\\|\\,\\|W_j\\|)$, $g_{nj} = \\partial L / \\partial c_{nj}$ "
                "for any differentiable $L(c)$ (margin_cross_entropy's on the margins page); "
                "$\\hat x_r = x_r / \\|x_r\\|$, $\\hat W_l = W_l / \\|W_l\\|$; general $N$, $K$, $D$")
    proof.step("definition", eq(label("c_{nj}"), batch_cosine(n, j)))
    dot = sp.Sum(x[n, d] * W[j, d], (d, 0, D - 1))
    # per variable: its row index in c_nj and that index's range, the free row it is differentiated
    # at, the other matrix and its index, the claimed gradient, and A as a function of the other index
    sides = ((x, n, N, r, W, j, K, cosine_layer_grad_x(), lambda column: cosine_weight(r, column), "x_re"),
             (W, j, K, l, x, n, N, cosine_layer_grad_w(), lambda row: cosine_weight(row, l), "W_le"))
    for own, index, size, free, other, outer, outer_size, claimed, weight, name in sides:
        # c_nj depends on x only through its row x_n, and on W only through W_j
        term = (other[outer, e] - dot / row_norm(own, index) ** 2 * own[index, e]) / (row_norm(x, n) * row_norm(W, j))
        derivative = evaluate_sums(sp.diff(batch_cosine(n, j), own[free, e]), BATCH_RANGES)
        delta = sp.KroneckerDelta(index, free)
        proof.require_identity(f"differentiate with respect to {name} and sift: c_nj depends on it only where "
                               f"{index} = {free}",
                               derivative, delta * term,
                               display=eq(sp.Derivative(label("c_{nj}"), own[free, e]), delta * term))
        # the chain rule: the finite double sum over n and j, the sifted index outermost
        chain = evaluate_sums(sp.Sum(delta * sp.Sum(g[n, j] * term, (outer, 0, outer_size - 1)),
                                     (index, 0, size - 1)), BATCH_RANGES)
        proof.step(f"chain rule: dL/d{name} = sum_n sum_j g_nj dc_nj/d{name}; sift {index} = {free}",
                   eq(sp.Derivative(sp.Symbol("L"), own[free, e]), chain))
        # (I - u u^T) sum_j A_j v_j = sum_j A_j (I - u u^T) v_j: the projection is linear, i.e. the
        # finite sums over the feature d and the class j (or the row n) exchange
        along = sp.Sum(own[free, d] * accumulated(weight, other, outer, outer_size)(d), (d, 0, D - 1))
        double = sp.Sum(own[free, d] * weight(outer) * other[outer, d], (outer, 0, outer_size - 1), (d, 0, D - 1))
        exchanged = double.reorder_limit(0, 1)
        proof.require_identity(f"exchange the finite sums over d and {outer} in the projection of the {name} "
                               "gradient (linearity, then SymPy's reorder_limit of the double sum)",
                               along, double, prepare=lambda difference: sp.expand(linearize_sums(difference)),
                               display=eq(along, exchanged))
        if not claimed.has(along):
            proof.fail(f"the projected form of the {name} gradient has no sum {sp.sstr(along)}")
        nested = sp.Sum(sp.Sum(exchanged.function, exchanged.limits[0]), exchanged.limits[1])
        proof.require_identity(f"the chain rule's dL/d{name} equals the projected form",
                               chain, claimed.xreplace({along: nested}),
                               prepare=lambda difference: sp.expand(linearize_sums(difference)))
        proof.check_fixed_sizes(f"extra check: the unsifted dL/d{name} = sum_n sum_j g_nj dc_nj/d{name} equals the "
                                "projected form",
                                sp.diff(sp.Sum(g[n, j] * batch_cosine(n, j), (j, 0, K - 1), (n, 0, N - 1)),
                                        own[free, e]),
                                claimed, [x, W, g], _COSINE_LAYER_SHAPES, outputs=[(free, size), (e, D)],
                                sizes=range(2, 5))
    proof.require_identity(
        "each term is normalized_linear's d cos_j / dx_e (margins page) times g_rj",
        cosine_weight(r, j) * (W[j, e] - sp.Sum(x[r, d] * W[j, d], (d, 0, D - 1)) / row_norm(x, r) ** 2 * x[r, e]),
        g[r, j] * (W[j, e] / (row_norm(x, r) * row_norm(W, j))
                   - batch_cosine(r, j) * x[r, e] / row_norm(x, r) ** 2))
    proof.note("So the fused kernel computes the same gradient as `normalized_linear_backward` after "
               "`margin_cross_entropy_forward_backward`, rearranged: it scales each tile of $g = \\partial L / "
               "\\partial c$ by the reciprocal norms into $A$, accumulates $A W$ and $A^\\top x$ as the linear "
               "cross-entropy accumulates $G W$ and $G^\\top x$ (the statement above), and projects each row "
               "of the sums once at the end, $v - (\\hat u \\cdot v)\\,\\hat u$.  The cosines are clamped to "
               "$[-1, 1]$ against rounding; in exact arithmetic $|c_{nj}| \\le 1$ (Cauchy-Schwarz), so the "
               "clamp does not change the function differentiated here.")
    proof.closed_form(closed_forms.get("linear_margin_cross_entropy_grad_x"))


DERIVATIONS = [
    z_loss_and_target_weights_gradient,
    soft_cap_chain_rule,
    linear_layer_gradients,
    cosine_layer_gradients,
]
