"""Margin losses: normalized_linear, NormFace/CosFace/ArcFace target logits and their
gradients (with ArcFace's ends), SphereFace/L-Softmax's psi and the Chebyshev form of
cos(m theta), and the center loss.

.. math::
    \\cos\\theta_j = \\frac{x \\cdot W_j}{\\|x\\|\\,\\|W_j\\|},\\qquad
    f(c) = \\cos(m_1 \\arccos c + m_2) - m_3,\\qquad
    \\psi(\\theta) = (-1)^k \\cos(m\\theta) - 2k \\ \\text{on}\\ [k\\pi/m, (k+1)\\pi/m]

References: F. Wang et al., "NormFace", 2017; H. Wang et al., "CosFace", 2018; F. Wang et
al., "Additive Margin Softmax", 2018; J. Deng et al., "ArcFace", 2019 (and InsightFace's
``th``/``mm`` fallback); W. Liu et al., "Large-Margin Softmax Loss", 2016 and
"SphereFace", 2017; Y. Wen et al., "A Discriminative Feature Learning Approach for Deep
Face Recognition" (center loss), 2016.
"""

from __future__ import annotations

import mpmath
import sympy as sp

from . import _closed_form as closed_forms
from ._closed_form import ClosedForm
from ._proof import (
    PROVEN_SYMBOLIC,
    derivation,
    eq,
    evaluate_sums,
    label,
    proven_for,
    simplifies_to_zero,
)

FAMILY = "margins"
PAGE = "docs/proofs/margins.md"
TITLE = "Margin losses: normalized logits, CosFace, ArcFace, SphereFace, center loss"
INTRODUCTION = """\
Features $x \\in \\mathbb{R}^D$, class weights $W \\in \\mathbb{R}^{C \\times D}$ (rows $W_j$,
like `torch.nn.Linear.weight`), cosines $c_j = \\cos\\theta_j$.  The margin losses replace
the target logit $s\\,c_y$ by $s\\,f(c_y)$ with $f(c) = \\cos(m_1\\theta + m_2) - m_3$
(NormFace: $f(c) = c$; CosFace/AM-Softmax: $m_3 = m$; ArcFace: $m_2 = m$), or, for
L-Softmax and SphereFace, by $\\|W_y\\|\\|x\\|\\psi(\\theta)$.  General $C$ and $D$
throughout; the ArcFace statements hold for $0 < m \\le \\pi/2$ (InsightFace uses
$m = 0.5$).
"""

# dimensions and indices
C = sp.Symbol("C", integer=True, positive=True)  # classes
D = sp.Symbol("D", integer=True, positive=True)  # feature dimension
j, l, t = sp.symbols("j l t", integer=True, nonnegative=True)  # class indices
d, e = sp.symbols("d e", integer=True, nonnegative=True)  # feature indices (d summed, e free)
k = sp.Symbol("k", integer=True, nonnegative=True)  # summation over classes; psi's branch
N = sp.Symbol("N", integer=True, positive=True)  # batch size
n, r = sp.symbols("n r", integer=True, nonnegative=True)  # batch rows (n summed, r free)

x = sp.IndexedBase("x", real=True)
W = sp.IndexedBase("W", real=True)
w = sp.IndexedBase("w", real=True)  # one weight row (the target's)
g = sp.IndexedBase("g", real=True)  # upstream gradient with respect to the cosines
cosines = sp.IndexedBase("c", real=True)
one_hot = sp.IndexedBase("y", real=True)
centers = sp.IndexedBase("centers", real=True)
labels = sp.IndexedBase("label", integer=True, nonnegative=True)

cosine = sp.Symbol("c", real=True)
theta = sp.Symbol("theta", real=True)
s = sp.Symbol("s", positive=True)
m = sp.Symbol("m", positive=True)
m1, m2, m3 = sp.symbols("m_1 m_2 m_3", real=True)
lam = sp.Symbol("lambda", nonnegative=True)
margin_function = sp.Function("f")
psi_function = sp.Function("psi")

FEATURE_RANGES = {e: D, d: D}
CLASS_RANGES = {j: C, l: C, t: C, k: C}


def feature_sum(summand):
    return sp.Sum(summand, (d, 0, D - 1))


def norm(vector):
    """``||v|| = sqrt(sum_d v_d^2)`` for an ``IndexedBase`` vector."""
    return sp.sqrt(feature_sum(vector[d] ** 2))


def row_norm(matrix, row):
    return sp.sqrt(feature_sum(matrix[row, d] ** 2))


def cosine_of(row):
    """``cos theta_row = x . W_row / (||x|| ||W_row||)`` (normalized_linear)."""
    return feature_sum(x[d] * W[row, d]) / (norm(x) * row_norm(W, row))


def combined_margin(c=cosine):
    """``cos(m1 arccos c + m2) - m3`` (InsightFace's combined margin, before the scale s)."""
    return sp.cos(m1 * sp.acos(c) + m2) - m3


def arcface_branch(c=cosine):
    """``cos(arccos c + m) = c cos m - sin m sqrt(1 - c^2)``."""
    return c * sp.cos(m) - sp.sin(m) * sp.sqrt(1 - c ** 2)


def arcface_fallback(c=cosine):
    """InsightFace's rule where theta + m > pi: ``cos theta - m sin m``."""
    return c - m * sp.sin(m)


def arcface_target(c=cosine):
    """ArcFace's target function with InsightFace's fallback (``th = cos(pi - m)``)."""
    return sp.Piecewise((arcface_branch(c), c > -sp.cos(m)), (arcface_fallback(c), True))


def chebyshev_by_recurrence(order, c=cosine):
    """``T_order(c)`` from ``T_0 = 1``, ``T_1 = c``, ``T_{n+1} = 2 c T_n - T_{n-1}``."""
    previous, current = sp.Integer(1), c
    if order == 0:
        return previous
    for _ in range(order - 1):
        previous, current = current, sp.expand(2 * c * current - previous)
    return current


def psi_branch(order, branch, angle=theta):
    """``(-1)^k cos(m theta) - 2k`` on branch ``k`` (L-Softmax / SphereFace)."""
    return (-1) ** branch * sp.cos(order * angle) - 2 * branch


def _over_orders(expressions):
    """``Piecewise`` selecting ``expressions[m - 1]`` for the margin ``m`` in 1..4."""
    return sp.Piecewise(*[(expression, sp.Eq(m, order)) for order, expression in
                          enumerate(expressions, 1)], (sp.nan, True))


def psi_of_cosine():
    """``psi`` as a function of ``c = cos theta`` for ``m`` in 1..4 (Chebyshev form)."""
    branch = sp.Min(sp.floor(m * sp.acos(cosine) / sp.pi), m - 1)
    return (-1) ** branch * _over_orders([chebyshev_by_recurrence(o) for o in range(1, 5)]) - 2 * branch


def psi_derivative_of_cosine():
    """``d psi / d c = (-1)^k T_m'(c)`` for ``m`` in 1..4 (a polynomial: finite at c = +-1)."""
    branch = sp.Min(sp.floor(m * sp.acos(cosine) / sp.pi), m - 1)
    return (-1) ** branch * _over_orders([sp.diff(chebyshev_by_recurrence(o), cosine) for o in range(1, 5)])


def large_margin_target_logit(psi=psi_function(cosine)):
    """``(lambda w.x + ||w|| ||x|| psi(c)) / (1 + lambda)`` with ``c = w.x / (||w|| ||x||)``."""
    dot = feature_sum(w[d] * x[d])
    c = dot / (norm(w) * norm(x))
    return (lam * dot + norm(w) * norm(x) * psi.subs(cosine, c)) / (1 + lam)


# ---- closed forms ------------------------------------------------------------------------------


@closed_forms.register("normalized_linear")
def _normalized_linear_closed_form():
    return ClosedForm("normalized_linear", cosine_of(j), [x, W], {x: (D,), W: (C, D)},
                      outputs=[(j, C)], page=f"{PAGE}#normalized-linear-gradient",
                      formula="cos[..., j] = x . W_j / (|x| |W_j|)")


def _grad_x_of_cosine(row):
    return W[row, e] / (norm(x) * row_norm(W, row)) - cosine_of(row) * x[e] / norm(x) ** 2


def _grad_w_of_cosine(row):
    return x[e] / (norm(x) * row_norm(W, row)) - cosine_of(row) * W[row, e] / row_norm(W, row) ** 2


@closed_forms.register("normalized_linear_grad_x")
def _normalized_linear_grad_x_closed_form():
    return ClosedForm("normalized_linear_grad_x", sp.Sum(g[j] * _grad_x_of_cosine(j), (j, 0, C - 1)),
                      [x, W, g], {x: (D,), W: (C, D), g: (C,)}, outputs=[(e, D)],
                      page=f"{PAGE}#normalized-linear-gradient",
                      formula="dx[..., e] = sum_j g_j (W_je / (|x||W_j|) - cos_j x_e / |x|^2)")


@closed_forms.register("normalized_linear_grad_W")
def _normalized_linear_grad_w_closed_form():
    return ClosedForm("normalized_linear_grad_W", g[j] * _grad_w_of_cosine(j),
                      [x, W, g], {x: (D,), W: (C, D), g: (C,)}, outputs=[(j, C), (e, D)],
                      page=f"{PAGE}#normalized-linear-gradient",
                      formula="dW[..., j, e] = g_j (x_e / (|x||W_j|) - cos_j W_je / |W_j|^2), "
                              "per batch row (sum over rows for the batch)")


@closed_forms.register("combined_margin_target_logit")
def _combined_margin_closed_form():
    return ClosedForm("combined_margin_target_logit", s * combined_margin(), [cosine, s, m1, m2, m3], {},
                      page=f"{PAGE}#combined-margin-derivative",
                      formula="s (cos(m1 arccos c + m2) - m3), no fallback")


@closed_forms.register("combined_margin_target_logit_derivative")
def _combined_margin_derivative_closed_form():
    return ClosedForm("combined_margin_target_logit_derivative", sp.diff(s * combined_margin(), cosine),
                      [cosine, s, m1, m2, m3], {}, page=f"{PAGE}#combined-margin-derivative",
                      formula="s m1 sin(m1 arccos c + m2) / sqrt(1 - c^2)")


@closed_forms.register("arcface_target_logit")
def _arcface_closed_form():
    return ClosedForm("arcface_target_logit", arcface_target(), [cosine, m], {},
                      page=f"{PAGE}#arcface-fallback",
                      formula="c cos m - sin m sqrt(1 - c^2) if c > -cos m else c - m sin m (times s in the loss)")


@closed_forms.register("arcface_target_logit_derivative")
def _arcface_derivative_closed_form():
    clamp = sp.Symbol("c_max", real=True)
    clamped = sp.Min(cosine, clamp)
    derivative = sp.Piecewise((sp.cos(m) + sp.sin(m) * clamped / sp.sqrt(1 - clamped ** 2), cosine > -sp.cos(m)),
                              (1, True))
    return ClosedForm("arcface_target_logit_derivative", derivative, [cosine, m, clamp], {},
                      page=f"{PAGE}#arcface-derivative-at-the-ends",
                      formula="f'(min(c, c_max)) on the arc branch, 1 in the fallback; "
                              "c_max = nextafter(1, 0) in the input dtype (see the page)")


def _margin_logits(target_function):
    """Logits ``s (c_k + y_k (f(c_k) - c_k))`` for a one-hot ``y``."""
    return s * (cosines[k] + one_hot[k] * (target_function(cosines[k]) - cosines[k]))


def _margin_cross_entropy(target_function):
    logits = _margin_logits(target_function)
    target_logit = sp.Sum(one_hot[l] * logits.subs(k, l), (l, 0, C - 1))
    return sp.log(sp.Sum(sp.exp(logits), (k, 0, C - 1))) - target_logit


@closed_forms.register("arcface_cross_entropy")
def _arcface_cross_entropy_closed_form():
    return ClosedForm("arcface_cross_entropy", _margin_cross_entropy(arcface_target), [cosines, one_hot, s, m],
                      {cosines: (C,), one_hot: (C,)}, page=f"{PAGE}#margin-cross-entropy-gradient",
                      formula="CE of logits s c_k, target logit s f(c_y) with f = ArcFace + fallback; y one-hot")


@closed_forms.register("arcface_cross_entropy_gradient")
def _arcface_cross_entropy_gradient_closed_form():
    gradient = evaluate_sums(sp.diff(_margin_cross_entropy(arcface_target), cosines[j]), CLASS_RANGES)
    return ClosedForm("arcface_cross_entropy_gradient", gradient, [cosines, one_hot, s, m],
                      {cosines: (C,), one_hot: (C,)}, outputs=[(j, C)],
                      page=f"{PAGE}#margin-cross-entropy-gradient",
                      formula="s (a_j - y_j)(1 + y_j (f'(c_j) - 1)), exact f' (infinite at c = 1)")


@closed_forms.register("combined_margin_cross_entropy")
def _combined_margin_cross_entropy_closed_form():
    return ClosedForm("combined_margin_cross_entropy", _margin_cross_entropy(combined_margin),
                      [cosines, one_hot, s, m1, m2, m3], {cosines: (C,), one_hot: (C,)},
                      page=f"{PAGE}#margin-cross-entropy-gradient",
                      formula="CE with target logit s (cos(m1 theta + m2) - m3), no fallback; y one-hot")


@closed_forms.register("combined_margin_cross_entropy_gradient")
def _combined_margin_cross_entropy_gradient_closed_form():
    gradient = evaluate_sums(sp.diff(_margin_cross_entropy(combined_margin), cosines[j]), CLASS_RANGES)
    return ClosedForm("combined_margin_cross_entropy_gradient", gradient, [cosines, one_hot, s, m1, m2, m3],
                      {cosines: (C,), one_hot: (C,)}, outputs=[(j, C)],
                      page=f"{PAGE}#margin-cross-entropy-gradient",
                      formula="s (a_j - y_j)(1 + y_j (f'(c_j) - 1)), f = combined margin")


@closed_forms.register("sphereface_psi")
def _psi_closed_form():
    branch = sp.Min(sp.floor(m * theta / sp.pi), m - 1)
    return ClosedForm("sphereface_psi", (-1) ** branch * sp.cos(m * theta) - 2 * branch, [theta, m], {},
                      page=f"{PAGE}#sphereface-psi-monotone",
                      formula="(-1)^k cos(m theta) - 2k, k = min(floor(m theta / pi), m - 1), theta in [0, pi]")


@closed_forms.register("sphereface_psi_of_cosine")
def _psi_of_cosine_closed_form():
    return ClosedForm("sphereface_psi_of_cosine", psi_of_cosine(), [cosine, m], {},
                      page=f"{PAGE}#chebyshev-cos-m-theta",
                      formula="(-1)^k T_m(c) - 2k, m in 1..4")


@closed_forms.register("sphereface_psi_derivative")
def _psi_derivative_closed_form():
    return ClosedForm("sphereface_psi_derivative", psi_derivative_of_cosine(), [cosine, m], {},
                      page=f"{PAGE}#chebyshev-cos-m-theta",
                      formula="d psi / d c = (-1)^k T_m'(c), m in 1..4 (finite at c = +-1)")


@closed_forms.register("large_margin_target_logit")
def _large_margin_logit_closed_form():
    return ClosedForm("large_margin_target_logit", large_margin_target_logit(psi_of_cosine()),
                      [x, w, m, lam], {x: (D,), w: (D,)}, page=f"{PAGE}#large-margin-target-logit-gradient",
                      formula="(lambda w.x + |w||x| psi(theta)) / (1 + lambda), m in 1..4")


def _large_margin_gradient(vector):
    general = sp.diff(large_margin_target_logit(), vector[e])
    concrete = general.replace(
        lambda expr: isinstance(expr, sp.Subs), lambda expr: psi_derivative_of_cosine().subs(cosine, expr.point[0])
    ).replace(lambda expr: isinstance(expr, sp.Derivative), lambda expr: psi_derivative_of_cosine().subs(
        cosine, expr.expr.args[0]))
    concrete = concrete.replace(lambda expr: expr.func == psi_function,
                                lambda expr: psi_of_cosine().subs(cosine, expr.args[0]))
    return evaluate_sums(concrete, FEATURE_RANGES)


@closed_forms.register("large_margin_target_logit_grad_x")
def _large_margin_grad_x_closed_form():
    return ClosedForm("large_margin_target_logit_grad_x", _large_margin_gradient(x), [x, w, m, lam],
                      {x: (D,), w: (D,)}, outputs=[(e, D)], page=f"{PAGE}#large-margin-target-logit-gradient",
                      formula="d/dx_e of the target logit, m in 1..4")


@closed_forms.register("large_margin_target_logit_grad_w")
def _large_margin_grad_w_closed_form():
    return ClosedForm("large_margin_target_logit_grad_w", _large_margin_gradient(w), [x, w, m, lam],
                      {x: (D,), w: (D,)}, outputs=[(e, D)], page=f"{PAGE}#large-margin-target-logit-gradient",
                      formula="d/dw_e of the target logit (w = W_y), m in 1..4")


@closed_forms.register("center_loss")
def _center_loss_closed_form():
    return ClosedForm("center_loss", feature_sum((x[d] - w[d]) ** 2) / 2, [x, w], {x: (D,), w: (D,)},
                      page=f"{PAGE}#center-loss-gradient",
                      formula="1/2 |x - c_y|^2 per row (w = centers[target])")


@closed_forms.register("center_loss_grad_x")
def _center_loss_grad_closed_form():
    gradient = evaluate_sums(sp.diff(feature_sum((x[d] - w[d]) ** 2) / 2, x[e]), FEATURE_RANGES)
    return ClosedForm("center_loss_grad_x", gradient, [x, w], {x: (D,), w: (D,)}, outputs=[(e, D)],
                      page=f"{PAGE}#center-loss-gradient", formula="x_e - c_{y,e} per row")


# ---- derivations ----------------------------------------------------------------------------------


@derivation(FAMILY, "normalized-linear-gradient",
            "normalized_linear: d cos_j / dx and d cos_j / dW_l for general C, D",
            reference="Wang et al. 2017 (NormFace), section 3.2, eqs. (6)-(7)", scope=proven_for("C", "D"))
def normalized_linear_gradient(proof):
    cos_j = cosine_of(j)
    claimed_x = _grad_x_of_cosine(j)
    claimed_w = sp.KroneckerDelta(j, l) * _grad_w_of_cosine(j)
    symbol_cos = label("\\cos\\theta_j")
    proof.state(sp.And(eq(sp.Derivative(symbol_cos, x[e]),
                             W[j, e] / (label("\\|x\\|") * label("\\|W_j\\|"))
                             - symbol_cos * x[e] / label("\\|x\\|") ** 2),
                       eq(sp.Derivative(symbol_cos, W[l, e]),
                             sp.KroneckerDelta(j, l) * (x[e] / (label("\\|x\\|") * label("\\|W_j\\|"))
                                                        - symbol_cos * W[j, e] / label("\\|W_j\\|") ** 2))),
                "$x \\in \\mathbb{R}^D$, $W \\in \\mathbb{R}^{C\\times D}$, $x \\ne 0$, $W_j \\ne 0$; general $C$, $D$")
    proof.step("definition", eq(symbol_cos, cos_j))
    derivative_x = evaluate_sums(sp.diff(cos_j, x[e]), FEATURE_RANGES)
    proof.step("differentiate with respect to x_e and sift", eq(sp.Derivative(symbol_cos, x[e]), derivative_x))
    proof.require_identity("equals W_je / (|x||W_j|) - cos_j x_e / |x|^2", derivative_x, claimed_x)
    derivative_w = evaluate_sums(sp.diff(cos_j, W[l, e]), FEATURE_RANGES)
    proof.step("differentiate with respect to W_le and sift",
               eq(sp.Derivative(symbol_cos, W[l, e]), derivative_w))
    proof.require_identity("equals delta_jl (x_e / (|x||W_j|) - cos_j W_je / |W_j|^2)", derivative_w, claimed_w)
    proof.check_fixed_sizes("extra check of both unsifted derivatives", sp.diff(cos_j, x[e]), claimed_x,
                            [x, W], {x: (D,), W: (C, D)}, outputs=[(j, C), (e, D)], sizes=range(2, 7))
    proof.check_fixed_sizes("extra check of the derivative in W", sp.diff(cos_j, W[l, e]), claimed_w,
                            [x, W], {x: (D,), W: (C, D)}, outputs=[(j, C), (l, C), (e, D)], sizes=range(2, 5))
    proof.require_identity(
        "the gradient in x is orthogonal to x (cos is scale-invariant in x)",
        evaluate_sums(sp.expand(feature_sum(x[d] * claimed_x.subs(e, d))), FEATURE_RANGES), sp.Integer(0),
        display=eq(sp.Sum(x[e] * sp.Derivative(symbol_cos, x[e]), (e, 0, D - 1)), 0),
    )
    proof.note("Backward of `normalized_linear(x, W)` with upstream $g_j = \\partial L/\\partial "
               "\\cos\\theta_j$: $dx_e = \\sum_j g_j\\,\\partial\\cos\\theta_j/\\partial x_e$ and "
               "$dW_{je} = g_j\\,\\partial\\cos\\theta_j/\\partial W_{je}$, summed over the batch "
               "rows for $dW$.")
    proof.closed_form(closed_forms.get("normalized_linear_grad_x"))


@derivation(FAMILY, "combined-margin-derivative",
            "target-logit derivatives: NormFace s, CosFace s, ArcFace s (cos m + sin m c / sqrt(1 - c^2))",
            reference="Wang et al. 2018 (CosFace) eq. (4); Deng et al. 2019 (ArcFace) eq. (3); "
                      "InsightFace combined margin",
            scope=PROVEN_SYMBOLIC)
def combined_margin_derivative(proof):
    general = sp.diff(s * combined_margin(), cosine)
    claimed = s * m1 * sp.sin(m1 * sp.acos(cosine) + m2) / sp.sqrt(1 - cosine ** 2)
    proof.state(eq(sp.Derivative(s * (sp.cos(m1 * theta + m2) - m3), cosine), claimed),
                "$\\theta = \\arccos c$, $-1 < c < 1$")
    proof.require_identity("chain rule through arccos: d theta / dc = -1/sqrt(1 - c^2)", general, claimed,
                           display=eq(sp.Derivative(s * combined_margin(), cosine), claimed))
    normface = claimed.subs({m1: 1, m2: 0})
    proof.require_identity("NormFace (m1 = 1, m2 = m3 = 0): f(c) = c, derivative s", normface, s,
                           prepare=lambda difference: sp.simplify(difference),
                           display=eq(sp.Derivative(s * combined_margin().subs({m1: 1, m2: 0, m3: 0}), cosine), s))
    cosface = s * combined_margin().subs({m1: 1, m2: 0, m3: m})
    proof.require_identity("CosFace / AM-Softmax (m3 = m): f(c) = c - m, derivative s",
                           sp.diff(cosface, cosine), s, prepare=lambda difference: sp.simplify(difference),
                           display=eq(sp.Derivative(cosface, cosine), s))
    arcface = s * arcface_branch()
    proof.require_identity("ArcFace (m2 = m): cos(theta + m) = c cos m - sin m sqrt(1 - c^2)",
                           sp.expand_trig(s * combined_margin().subs({m1: 1, m2: m, m3: 0})), arcface,
                           display=eq(s * combined_margin().subs({m1: 1, m2: m, m3: 0}), arcface))
    proof.require_identity("its derivative: s (cos m + sin m c / sqrt(1 - c^2))", sp.diff(arcface, cosine),
                           s * (sp.cos(m) + sp.sin(m) * cosine / sp.sqrt(1 - cosine ** 2)),
                           display=eq(sp.Derivative(arcface, cosine),
                                      s * (sp.cos(m) + sp.sin(m) * cosine / sp.sqrt(1 - cosine ** 2))))
    proof.closed_form(closed_forms.get("combined_margin_target_logit_derivative"))


@derivation(FAMILY, "margin-cross-entropy-gradient",
            "margin cross-entropy gradient in the cosines: s (a_j - y_j)(1 + y_j (f'(c_j) - 1))",
            reference="Wang et al. 2018 (CosFace) section 3; Deng et al. 2019 (ArcFace)", scope=proven_for("C"))
def margin_cross_entropy_gradient(proof):
    logit_k = s * (cosines[k] + sp.KroneckerDelta(k, t) * (margin_function(cosines[k]) - cosines[k]))
    loss = sp.log(sp.Sum(sp.exp(logit_k), (k, 0, C - 1))) - s * margin_function(cosines[t])
    probability = sp.exp(logit_k.subs(k, j)) / sp.Sum(sp.exp(logit_k), (k, 0, C - 1))
    derivative_f = sp.Subs(sp.Derivative(margin_function(cosine), cosine), cosine, cosines[j])
    claimed = s * (probability - sp.KroneckerDelta(j, t)) * (1 + sp.KroneckerDelta(j, t) * (derivative_f - 1))
    proof.state(eq(sp.Derivative(sp.Symbol("L"), cosines[j]),
                      s * (sp.IndexedBase("a")[j] - sp.KroneckerDelta(j, t))
                      * (1 + sp.KroneckerDelta(j, t) * (label("f'(c_j)") - 1))),
                "logits $s c_k$ for $k \\ne t$ and $s f(c_t)$ for the target $t$; any differentiable "
                "$f$; $a$ = softmax of the logits; general $C$")
    proof.step("the loss (cross-entropy of the logits)", eq(sp.Symbol("L"), loss))
    gradient = evaluate_sums(sp.diff(loss, cosines[j]), CLASS_RANGES)
    proof.step("differentiate and sift", eq(sp.Derivative(sp.Symbol("L"), cosines[j]), gradient))

    def by_cases(difference):
        # the Kronecker delta delta_jt is 0 (j != t) or 1 (j = t): check both cases
        other = difference.subs(sp.KroneckerDelta(j, t), 0)
        other = other.replace(lambda expr: isinstance(expr, sp.KroneckerDelta), lambda expr: sp.S.Zero
                              if set(expr.args) == {j, t} else expr)
        same = difference.subs(j, t)
        return sp.Integer(0) if simplifies_to_zero(same) and simplifies_to_zero(other) else difference

    proof.require_identity("equals s (a_j - delta_jt)(1 + delta_jt (f'(c_j) - 1)) (cases j = t, j != t)",
                           gradient, claimed, prepare=by_cases)
    proof.note("So a non-target cosine gets $s\\,a_j$ and the target $s\\,(a_t - 1) f'(c_t)$.  "
               "NormFace: $f' = 1$; CosFace: $f' = 1$ (the margin only shifts $a$); ArcFace: "
               "$f'$ of [arcface-derivative-at-the-ends](#arcface-derivative-at-the-ends).")
    proof.closed_form(closed_forms.get("combined_margin_cross_entropy_gradient"))


@derivation(FAMILY, "arcface-derivative-at-the-ends",
            "ArcFace f'(c) = cos m + sin m c / sqrt(1 - c^2): unbounded as c -> 1, clamped at c_max = nextafter(1, 0)",
            reference="Deng et al. 2019 (ArcFace); InsightFace arcface_torch", scope=PROVEN_SYMBOLIC)
def arcface_derivative_at_the_ends(proof):
    derivative = sp.diff(arcface_branch(), cosine)
    sin_m, cos_m = sp.Symbol("s_m", positive=True), sp.Symbol("c_m", nonnegative=True)
    proof.state(eq(sp.Limit(derivative, cosine, 1, "-"), sp.oo),
                "$0 < m \\le \\pi/2$, so $\\sin m > 0$ and $\\cos m \\ge 0$; the arc branch $c > -\\cos m$")
    proof.require_identity("f'(c) = cos m + sin m c / sqrt(1 - c^2)", derivative,
                           sp.cos(m) + sp.sin(m) * cosine / sp.sqrt(1 - cosine ** 2),
                           display=eq(sp.Derivative(arcface_branch(), cosine),
                                      sp.cos(m) + sp.sin(m) * cosine / sp.sqrt(1 - cosine ** 2)))
    abstract = cos_m + sin_m * cosine / sp.sqrt(1 - cosine ** 2)
    limit = sp.limit(abstract, cosine, 1, "-")
    if limit != sp.oo:
        proof.fail("limit c -> 1-", sp.sstr(limit))
    proof.step("with sin m > 0 the limit c -> 1- is +oo (c = 1 is theta = 0: the target aligned)",
               eq(sp.Limit(abstract, cosine, 1, "-"), sp.oo), "sympy.limit")
    second = sp.simplify(sp.diff(abstract, cosine))
    proof.require_positive("f''(c) = sin m / (1 - c^2)^(3/2) > 0: f' increases on (-1, 1)",
                           second.subs(cosine, sp.tanh(sp.Symbol("q", real=True))),
                           display=sp.StrictGreaterThan(sp.Derivative(abstract, cosine), 0, evaluate=False))
    proof.require_identity("at the switch c = -cos m (theta = pi - m) the arc branch has f' = 0",
                           abstract.subs(cosine, -cos_m).subs(sp.sqrt(1 - cos_m ** 2), sin_m), sp.Integer(0),
                           display=eq(label("f'(-\\cos m)"), 0))
    proof.step("so f' >= 0 on the arc branch: f is increasing there, from f'(-cos m) = 0 to +oo",
               sp.GreaterThan(label("f'(c)"), 0, evaluate=False), "from the two lines above")
    # the value error of clamping the input at 1 - delta
    delta = sp.Symbol("delta", positive=True)
    value_error = arcface_branch(sp.Integer(1)) - arcface_branch(1 - delta)
    claimed_error = delta * sp.cos(m) + sp.sin(m) * sp.sqrt(delta * (2 - delta))
    proof.require_identity("clamping the value at c = 1 - delta changes f(1) = cos m by "
                           "delta cos m + sin m sqrt(delta (2 - delta))",
                           value_error, claimed_error, prepare=lambda difference: sp.simplify(sp.expand(difference)))
    slack = sp.Symbol("b", nonnegative=True)  # delta = 1 / (1 + b) covers 0 < delta <= 1
    proof.require_nonnegative("for 0 < delta <= 1: delta (2 - delta) - delta = delta (1 - delta) >= 0 "
                              "(write delta = 1/(1 + b), b >= 0)",
                              (delta * (2 - delta) - delta).subs(delta, 1 / (1 + slack)),
                              display=sp.GreaterThan(delta * (2 - delta) - delta, 0, evaluate=False))
    proof.step("so, sqrt being increasing and delta cos m >= 0, the value error is at least sin m sqrt(delta)",
               sp.GreaterThan(claimed_error, sp.sin(m) * sp.sqrt(delta), evaluate=False),
               "from the line above")
    rows, exact_values = [], []
    threshold_m = mpmath.mpf(1) / 2
    mpmath.mp.dps = 50
    for dtype, exponent, half_ulp in (("float64", 53, mpmath.mpf(2) ** -54), ("float32", 24, mpmath.mpf(2) ** -25)):
        gap = mpmath.mpf(2) ** -exponent
        error = gap * mpmath.cos(threshold_m) + mpmath.sin(threshold_m) * mpmath.sqrt(gap * (2 - gap))
        c_max = 1 - gap
        finite = mpmath.cos(threshold_m) + mpmath.sin(threshold_m) * c_max / mpmath.sqrt(1 - c_max ** 2)
        exact = sp.cos(sp.Rational(1, 2)) + sp.sin(sp.Rational(1, 2)) * (1 - sp.Integer(2) ** -exponent) / sp.sqrt(
            1 - (1 - sp.Integer(2) ** -exponent) ** 2)
        if abs(sp.N(exact, 30) - sp.Float(mpmath.nstr(finite, 30), 30)) > 1e-15 * finite:
            proof.fail("finite derivative value", dtype)
        if not error > half_ulp:
            proof.fail("clamping the value costs more than rounding", dtype)
        exact_values.append(exact)
        rows.append((dtype, exponent, mpmath.nstr(error, 4), mpmath.nstr(half_ulp, 4),
                     mpmath.nstr(finite, 10), mpmath.nstr(mpmath.sin(threshold_m) / mpmath.sqrt(2 * gap), 10)))
    proof.approximately("at m = 1/2 and c_max = 1 - 2^-53 (float64) the finite derivative is "
                        f"f'(c_max) = {rows[0][4]}", exact_values[0], 12,
                        "SymPy's exact value evaluated to 30 digits; agrees with mpmath at 50 digits")
    proof.approximately("at m = 1/2 and c_max = 1 - 2^-24 (float32 inputs computed in float32): "
                        f"f'(c_max) = {rows[1][4]}", exact_values[1], 12,
                        "SymPy's exact value evaluated to 30 digits; agrees with mpmath at 50 digits")
    table = "\n".join(f"| {dtype} | $2^{{-{exponent}}}$ | {error} | {half} | {finite} | {approx} |"
                      for dtype, exponent, error, half, finite, approx in rows)
    proof.note(
        "**The boundary choice (for the ArcFace kernel).** $f$ itself is continuous at $c = 1$ "
        "($f(1) = \\cos m$), but $f'$ is not bounded there, and no clamp of the *value* can stay "
        "within rounding: clamping $c$ to $1 - \\delta$ changes $f$ by at least "
        "$\\sin m\\sqrt{\\delta}$, while the smallest possible $\\delta$ is the spacing of the input "
        "dtype just below 1.  So:\n\n"
        "* the **value** $f(c)$ is computed from $c$ itself, never clamped "
        "(evaluate $\\sqrt{1 - c^2}$ as $\\sqrt{(1 - c)(1 + c)}$: $1 - c$ is exact for "
        "$c \\ge 1/2$);\n"
        "* the **derivative** is evaluated at $\\min(c, c_{max})$ with "
        "$c_{max} = 1 - \\delta$, $\\delta$ = the spacing of the input dtype below 1 "
        "(`np.nextafter(1, 0)` in that dtype: $2^{-53}$ for float64, $2^{-24}$ for float32).  "
        "Every representable $c < 1$ keeps its exact derivative (the clamp does nothing there); "
        "only $c = 1$ exactly gets $f'(c_{max})$, the derivative at the nearest representable "
        "input, which is finite and, as $f'$ increases, the largest derivative any other input "
        "gets — the gradient stays monotone in $c$.\n\n"
        "| dtype | $\\delta$ | value error of clamping ($m = 1/2$) | half ULP of $f(1)$ | "
        "$f'(c_{max})$ at $m = 1/2$ | $\\approx \\sin m / \\sqrt{2\\delta}$ |\n"
        "|---|---|---|---|---|---|\n" + table + "\n\n"
        "In the fallback region ($c \\le -\\cos m$, which contains $c = -1$) the derivative is "
        "exactly 1 ([arcface-fallback](#arcface-fallback)), so no clamp is needed near $-1$.  "
        "The closed form `closed_forms.arcface_target_logit_derivative(c, m, c_max)` implements "
        "this rule."
    )
    proof.closed_form(closed_forms.get("arcface_target_logit_derivative"))


@derivation(FAMILY, "arcface-fallback",
            "ArcFace fallback c - m sin m (theta + m > pi): f' = 1; at theta = pi - m the value jumps "
            "by cos m + m sin m - 1 >= 0 (not continuous) and f' jumps from 0 to 1; f stays increasing in c",
            reference="InsightFace (th = cos(pi - m), mm = sin(pi - m) m); Deng et al. 2019", scope=PROVEN_SYMBOLIC)
def arcface_fallback_statement(proof):
    switch = -sp.cos(m)  # c at theta = pi - m
    jump = sp.cos(m) + m * sp.sin(m) - 1
    proof.state(eq(sp.Limit(label("f(c)"), cosine, switch, "+") - label("f(-\\cos m)"), jump),
                "$0 < m \\le \\pi/2$; InsightFace's rule: $f(c) = \\cos(\\theta + m)$ for $c > -\\cos m$, "
                "$f(c) = c - m\\sin m$ for $c \\le -\\cos m$")
    unevaluated_angle = sp.Add(sp.pi, -m, evaluate=False)
    proof.require_identity("theta = pi - m is c = cos(pi - m) = -cos m", sp.cos(sp.pi - m), switch,
                           display=eq(sp.cos(unevaluated_angle, evaluate=False), switch))
    proof.require_identity("fallback derivative: d/dc (c - m sin m) = 1", sp.diff(arcface_fallback(), cosine),
                           sp.Integer(1), display=eq(sp.Derivative(arcface_fallback(), cosine), 1))
    arc_value = sp.cos(sp.pi - m + m)
    proof.require_identity("arc branch at the switch: cos(pi - m + m) = -1", arc_value, sp.Integer(-1),
                           display=eq(sp.cos(sp.Add(unevaluated_angle, m, evaluate=False), evaluate=False), -1))
    proof.require_identity("fallback at the switch: -cos m - m sin m", arcface_fallback(switch),
                           -sp.cos(m) - m * sp.sin(m))
    proof.require_identity("jump (arc minus fallback) = cos m + m sin m - 1", arc_value - arcface_fallback(switch),
                           jump)
    proof.require_identity("d jump / dm = m cos m", sp.diff(jump, m), m * sp.cos(m),
                           display=eq(sp.Derivative(jump, m), m * sp.cos(m)))
    proof.require_identity("the jump is 0 at m = 0", jump.subs(m, 0), sp.Integer(0),
                           display=eq(sp.Subs(jump, m, 0), 0))
    proof.require_sign_on_interval("m cos m > 0 on (0, pi/2)", m * sp.cos(m), m,
                                   sp.Interval.open(0, sp.pi / 2), strict=True)
    proof.step("so the jump is > 0 for 0 < m <= pi/2 (mean value theorem: jump(m) = jump(0) + "
               "m xi cos xi for some 0 < xi < m)", sp.StrictGreaterThan(jump, 0, evaluate=False),
               "from the two lines above")
    at_half = sp.N(jump.subs(m, sp.Rational(1, 2)), 15)
    proof.approximately("at m = 1/2 (InsightFace's default) the jump is " + f"{float(at_half):.6f}",
                        jump.subs(m, sp.Rational(1, 2)), 6, "evaluated")
    proof.step("both branches increase in c (f' >= 0 on the arc branch, "
               "[arcface-derivative-at-the-ends](#arcface-derivative-at-the-ends); f' = 1 on the "
               "fallback) and the jump is upward as c increases: f is increasing in c, "
               "decreasing in theta", sp.GreaterThan(jump, 0, evaluate=False), "from the lines above")
    proof.note(
        "**The fallback is not continuous.**  At $\\theta = \\pi - m$ the target logit drops from "
        "$-1$ (arc branch) to $-\\cos m - m \\sin m$ (fallback) as $\\theta$ crosses into the "
        "fallback region, a jump of $\\cos m + m\\sin m - 1 \\approx m^2/2$ "
        f"({float(at_half):.4f} at $m = 0.5$); the derivative with respect to $c$ jumps from "
        "0 (arc side) to 1 (fallback side).  What the rule does preserve is monotonicity: the "
        "target logit never increases with $\\theta$, unlike $\\cos(\\theta + m)$ itself, "
        "which turns back up for $\\theta > \\pi - m$.  A kernel that follows InsightFace "
        "(as the design asks) must reproduce this jump: tests near $c = -\\cos m$ should "
        "compare each side separately.  (A continuous alternative with slope 1 would be "
        "$c + \\cos m - 1$; it is not InsightFace's rule.)"
    )
    proof.closed_form(closed_forms.get("arcface_target_logit"))


@derivation(FAMILY, "sphereface-psi-monotone",
            "psi(theta) = (-1)^k cos(m theta) - 2k is continuous and decreasing on [0, pi] "
            "(general m; m = 1..4 explicit)",
            reference="Liu et al. 2016 (L-Softmax) eq. (6); Liu et al. 2017 (SphereFace) eq. (7)",
            scope=proven_for("m"))
def sphereface_psi_monotone(proof):
    order = sp.Symbol("m", integer=True, positive=True)
    branch = sp.Symbol("k", integer=True, nonnegative=True)
    phase = sp.Symbol("phi", real=True)  # m theta = k pi + phi, phi in [0, pi]
    proof.state(label("\\psi\\ \\text{continuous and decreasing on}\\ [0, \\pi]"),
                "$m \\ge 1$ an integer (general); branch $k = 0..m-1$ covers "
                "$\\theta \\in [k\\pi/m, (k+1)\\pi/m]$")
    on_branch = psi_branch(order, branch, (branch * sp.pi + phase) / order)
    reduced = sp.simplify(on_branch)
    proof.require_identity("write m theta = k pi + phi, 0 <= phi <= pi: cos(k pi + phi) = (-1)^k cos phi, "
                           "(-1)^(2k) = 1", on_branch, sp.cos(phase) - 2 * branch,
                           display=eq(label("\\psi"), reduced))
    proof.require_sign_on_interval("d psi / d phi = -sin phi <= 0 on [0, pi]: decreasing on each branch",
                                   -sp.diff(sp.cos(phase) - 2 * branch, phase), phase, sp.Interval(0, sp.pi),
                                   display=sp.LessThan(sp.diff(sp.cos(phase), phase), 0, evaluate=False))
    end_of_branch = (sp.cos(phase) - 2 * branch).subs(phase, sp.pi)
    start_of_next = (sp.cos(phase) - 2 * (branch + 1)).subs(phase, 0)
    proof.require_identity("continuity at theta = (k+1) pi / m: branch k ends at -1 - 2k, branch k+1 "
                           "starts at 1 - 2(k+1)", end_of_branch, start_of_next)
    proof.require_identity("psi(0) = 1 and psi(pi) = -(2m - 1) (branch m - 1 at phi = pi)",
                           (sp.cos(phase) - 2 * (order - 1)).subs(phase, sp.pi), -(2 * order - 1))
    # the explicit check for m = 1..4, straight from the definition in theta
    for explicit in range(1, 5):
        for k_value in range(explicit):
            piece = psi_branch(explicit, k_value)
            start, stop = sp.pi * k_value / explicit, sp.pi * (k_value + 1) / explicit
            slope = sp.diff(piece, theta)
            failing = sp.solveset(slope > 0, theta, sp.Interval(start, stop))
            if failing != sp.S.EmptySet:
                proof.fail(f"m = {explicit}, k = {k_value}: psi increases on {failing}")
            if k_value + 1 < explicit:
                gap = sp.simplify(piece.subs(theta, stop) - psi_branch(explicit, k_value + 1).subs(theta, stop))
                if gap != 0:
                    proof.fail(f"m = {explicit}: psi jumps by {gap} at theta = {stop}")
    proof.step("explicitly for m = 1, 2, 3, 4: on every branch d psi / d theta <= 0 (solveset) and "
               "adjacent branches agree at their common end",
               eq(label("\\psi_{m}(\\pi)"), label("-(2m-1)")), "checked m = 1..4, all k")
    proof.note("So $\\psi$ is a continuous, decreasing replacement of $\\cos(m\\theta)$ on the whole "
               "$[0, \\pi]$ (where $\\cos(m\\theta)$ itself is not monotone for $m \\ge 2$); "
               "its range is $[-(2m-1), 1]$.")
    proof.closed_form(closed_forms.get("sphereface_psi"))


@derivation(FAMILY, "chebyshev-cos-m-theta",
            "cos(m theta) = T_m(cos theta): general m by induction on T_{m+1} = 2c T_m - T_{m-1}; m = 1..4 explicit",
            reference="Liu et al. 2016 (L-Softmax) eq. (7) (the expansion of cos(m theta))", scope=proven_for("m"))
def chebyshev_cos_m_theta(proof):
    order = sp.Symbol("m", integer=True, nonnegative=True)
    proof.state(eq(sp.cos(order * theta), sp.Function("T_m")(sp.cos(theta))),
                "$T_0 = 1$, $T_1 = c$, $T_{m+1}(c) = 2c\\,T_m(c) - T_{m-1}(c)$; every integer $m \\ge 0$")
    proof.require_identity("base cases m = 0 and m = 1", sp.cos(0 * theta) + sp.cos(1 * theta),
                           chebyshev_by_recurrence(0, sp.cos(theta)) + chebyshev_by_recurrence(1, sp.cos(theta)),
                           display=sp.And(eq(sp.cos(0 * theta), 1), eq(sp.cos(theta), sp.cos(theta))))
    step_identity = (sp.expand_trig(sp.cos(sp.Add(order * theta, theta, evaluate=False)))
                     + sp.expand_trig(sp.cos(sp.Add(order * theta, -theta, evaluate=False))))
    proof.require_identity("trig step (any m): cos((m+1)theta) + cos((m-1)theta) = 2 cos theta cos(m theta)",
                           step_identity, 2 * sp.cos(theta) * sp.cos(order * theta),
                           display=eq(sp.cos((order + 1) * theta) + sp.cos((order - 1) * theta),
                                         2 * sp.cos(theta) * sp.cos(order * theta)))
    t_m, t_previous = sp.Symbol("T_m"), label("T_{m-1}")
    induction = (2 * sp.cos(theta) * sp.cos(order * theta) - sp.cos((order - 1) * theta)).subs(
        {sp.cos(order * theta): t_m, sp.cos((order - 1) * theta): t_previous})
    proof.require_identity("induction: if cos(m theta) = T_m and cos((m-1) theta) = T_{m-1}, then "
                           "cos((m+1) theta) = 2c T_m - T_{m-1} = T_{m+1}",
                           induction, 2 * sp.cos(theta) * t_m - t_previous)
    c = cosine
    for explicit in range(1, 5):
        polynomial = chebyshev_by_recurrence(explicit)
        if not simplifies_to_zero(polynomial - sp.chebyshevt(explicit, c)):
            proof.fail(f"T_{explicit} differs from sympy.chebyshevt")
        proof.require_identity(f"m = {explicit}: cos({explicit} theta) = {sp.sstr(polynomial)} at c = cos theta",
                               sp.expand_trig(sp.cos(explicit * theta)), polynomial.subs(c, sp.cos(theta)),
                               prepare=lambda difference: sp.simplify(difference.subs(
                                   sp.sin(theta) ** 2, 1 - sp.cos(theta) ** 2)),
                               display=eq(sp.cos(explicit * theta), polynomial.subs(c, sp.cos(theta))))
    derivatives = [sp.diff(chebyshev_by_recurrence(o), c) for o in range(1, 5)]
    for explicit, derivative in enumerate(derivatives, 1):
        if not simplifies_to_zero(derivative - explicit * sp.chebyshevu(explicit - 1, c)):
            proof.fail(f"T_{explicit}' is not {explicit} U_{explicit - 1}")
    proof.step("so d psi / dc = (-1)^k T_m'(c) = (-1)^k m U_{m-1}(c), a polynomial: finite at c = +-1 "
               "(T_m'(1) = m^2), unlike ArcFace's derivative",
               eq(label("T_m'(c)"), sp.Symbol("m") * sp.Function("U_{m-1}")(c)),
               "checked for m = 1..4 against sympy.chebyshevu")
    proof.closed_form(closed_forms.get("sphereface_psi_derivative"))


@derivation(FAMILY, "large-margin-target-logit-gradient",
            "L-Softmax / SphereFace target logit gradient in x (and, by symmetry, in W_y), general D",
            reference="Liu et al. 2016 (L-Softmax) section 3.2 (with lambda); Liu et al. 2017 (SphereFace)",
            scope=proven_for("D"))
def large_margin_target_logit_gradient(proof):
    logit = large_margin_target_logit()
    dot = feature_sum(w[d] * x[d])
    c = dot / (norm(w) * norm(x))
    psi_value = psi_function(c)
    psi_slope = sp.Subs(sp.Derivative(psi_function(cosine), cosine), cosine, c)
    claimed = (lam * w[e] + psi_value * norm(w) * x[e] / norm(x)
               + psi_slope * (w[e] - c * norm(w) * x[e] / norm(x))) / (1 + lam)
    proof.state(eq(sp.Derivative(sp.Symbol("f_y"), x[e]),
                      (lam * w[e] + label("\\psi") * label("\\|w\\|") * x[e] / label("\\|x\\|")
                       + label("\\psi'") * (w[e] - sp.Symbol("c") * label("\\|w\\|") * x[e] / label("\\|x\\|")))
                      / (1 + lam)),
                "$f_y = (\\lambda\\, w\\cdot x + \\|w\\|\\|x\\|\\psi(c))/(1+\\lambda)$, $w = W_y$, "
                "$c = w\\cdot x/(\\|w\\|\\|x\\|)$, any differentiable $\\psi$; general $D$")
    proof.step("the target logit", eq(sp.Symbol("f_y"), logit))
    gradient = evaluate_sums(sp.diff(logit, x[e]), FEATURE_RANGES)
    proof.step("differentiate and sift", eq(sp.Derivative(sp.Symbol("f_y"), x[e]), gradient))
    proof.require_identity("collect psi and psi'", gradient, claimed)
    proof.note("The gradient in $w$ is the same with $x$ and $w$ exchanged (the logit is symmetric "
               "in them).  With $\\psi' = (-1)^k T_m'(c)$ "
               "([chebyshev-cos-m-theta](#chebyshev-cos-m-theta)) the gradient is bounded: "
               "no clamp is needed at $c = \\pm 1$.")
    proof.closed_form(closed_forms.get("large_margin_target_logit_grad_x"))


@derivation(FAMILY, "center-loss-gradient",
            "center loss L = 1/(2N) sum_n |x_n - c_{y_n}|^2: dL/dx_n = (x_n - c_{y_n})/N, "
            "dL/dc_j = (1/N) sum_{n: y_n = j} (c_j - x_n)",
            reference="Wen et al. 2016, eqs. (2)-(4)", scope=proven_for("N", "D"))
def center_loss_gradient(proof):
    batch_x = sp.IndexedBase("x", real=True)
    loss = sp.Sum(feature_sum((batch_x[n, d] - centers[labels[n], d]) ** 2) / 2, (n, 0, N - 1)) / N
    proof.state(eq(sp.Derivative(sp.Symbol("L"), centers[j, e]),
                      sp.Sum(sp.KroneckerDelta(labels[n], j) * (centers[j, e] - batch_x[n, e]), (n, 0, N - 1)) / N),
                "batch of $N$ rows, labels $y_n$ (written `labels[n]`), centers $c_j \\in \\mathbb{R}^D$; "
                "general $N$, $D$, $C$")
    proof.step("the loss", eq(sp.Symbol("L"), loss))
    grad_x = evaluate_sums(sp.diff(loss, batch_x[r, e]), {e: D, r: N})
    proof.require_identity("d L / d x_re = (x_re - c_{y_r, e}) / N", grad_x,
                           (batch_x[r, e] - centers[labels[r], e]) / N)
    grad_c = evaluate_sums(sp.diff(loss, centers[j, e]), {e: D})
    proof.step("differentiate with respect to the center c_je and sift over d",
               eq(sp.Derivative(sp.Symbol("L"), centers[j, e]), grad_c))
    claimed = sp.Sum(sp.KroneckerDelta(labels[n], j) * (centers[j, e] - batch_x[n, e]), (n, 0, N - 1)) / N

    def sift_label(difference):
        # delta(label_n, j) c_{label_n, e} = delta(label_n, j) c_{j, e}
        return sp.expand(difference).replace(
            lambda expr: isinstance(expr, sp.Mul) and any(isinstance(f, sp.KroneckerDelta) for f in expr.args),
            lambda expr: expr.xreplace({centers[labels[n], e]: centers[j, e]}))

    proof.require_identity("only the rows with y_n = j contribute: (1/N) sum_n delta(y_n, j)(c_je - x_ne)",
                           grad_c, claimed, prepare=lambda difference: sp.simplify(sift_label(difference)))
    count = sp.Sum(sp.KroneckerDelta(labels[n], j), (n, 0, N - 1))
    update = sp.Sum(sp.KroneckerDelta(labels[n], j) * (centers[j, e] - batch_x[n, e]), (n, 0, N - 1)) / (1 + count)
    proof.require_identity("Wen et al.'s update Delta c_j = sum_{y_n = j}(c_j - x_n) / (1 + n_j) is the "
                           "gradient times N / (1 + n_j) (a damped step, not the gradient)",
                           update, claimed * N / (1 + count))
    proof.closed_form(closed_forms.get("center_loss_grad_x"))


DERIVATIONS = [
    normalized_linear_gradient,
    combined_margin_derivative,
    margin_cross_entropy_gradient,
    arcface_derivative_at_the_ends,
    arcface_fallback_statement,
    sphereface_psi_monotone,
    chebyshev_cos_m_theta,
    large_margin_target_logit_gradient,
    center_loss_gradient,
]
