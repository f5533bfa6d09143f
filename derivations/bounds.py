"""Why normalized softmax needs a scale: NormFace's lower bound on the loss and CosFace's
lower bound on the scale s.

.. math::
    L \\ge \\log\\Big(1 + (n-1)\\, e^{-\\frac{n}{n-1}\\ell^2}\\Big),\\qquad
    s \\ge \\frac{C-1}{C}\\log\\frac{(C-1) P_W}{1 - P_W}

Both for a general number of classes (``n``, ``C``) and any feature dimension.

References: F. Wang, X. Xiang, J. Cheng, A. L. Yuille, "NormFace: L2 Hypersphere
Embedding for Face Verification", 2017, Proposition 2 and its proof (appendix);
H. Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", 2018,
section 3.4.
"""

from __future__ import annotations

import sympy as sp

from . import _closed_form as closed_forms
from ._closed_form import ClosedForm
from ._proof import (
    CHECKED_FIXED,
    derivation,
    eq,
    evaluate_sums,
    label,
    linearize_sums,
    proven_for,
    simplifies_to_zero,
)

FAMILY = "bounds"
PAGE = "docs/proofs/bounds.md"
TITLE = "Bounds: NormFace's loss floor and CosFace's minimum scale"
INTRODUCTION = """\
With features and class weights normalized to a common norm $\\ell$ (no bias), the
softmax loss cannot go below a floor that depends only on $\\ell$ and the number of
classes $n$ (NormFace).  So the normalized logits must be scaled; CosFace turns the same
argument into a minimum scale $s$ for a desired class-centre posterior $P_W$.  Every step
is checked for a general $n$ (sums with a symbolic number of terms) and a general feature
dimension; NormFace's own figures are checked as a numeric example.
"""

n = sp.Symbol("n", integer=True, positive=True)  # classes (n >= 2 where divided by n - 1)
ell = sp.Symbol("ell", positive=True)  # common norm of features and weights
i, j, k = sp.symbols("i j k", integer=True, nonnegative=True)
d = sp.Symbol("d", integer=True, nonnegative=True)
D = sp.Symbol("D", integer=True, positive=True)
G = sp.IndexedBase("G", real=True)  # Gram matrix G_ij = W_i . W_j
W = sp.IndexedBase("W", real=True)
X = sp.IndexedBase("x", real=True)  # the exponents of a Jensen step
Y = sp.IndexedBase("y", real=True)
C = sp.Symbol("C", integer=True, positive=True)
s = sp.Symbol("s", positive=True)
P_W = sp.Symbol("P_W", positive=True)
mean_x = sp.Symbol("mu", real=True)

RANGES = {i: n, j: n, k: n}


def class_sum(summand, index):
    return sp.Sum(summand, (index, 0, n - 1))


def off_diagonal_sum(summand, index=j, row=i):
    """``sum_{index != row} summand``, written with ``1 - delta``."""
    return class_sum((1 - sp.KroneckerDelta(index, row)) * summand, index)


def normface_bound(classes=n, norm=ell):
    """``log(1 + (n - 1) exp(-n l^2 / (n - 1)))``."""
    return sp.log(1 + (classes - 1) * sp.exp(-classes * norm ** 2 / (classes - 1)))


def cosface_minimum_scale(classes=C, posterior=P_W):
    """``(C - 1)/C log((C - 1) P_W / (1 - P_W))``."""
    return (classes - 1) / classes * sp.log((classes - 1) * posterior / (1 - posterior))


@closed_forms.register("normface_lower_bound")
def _normface_bound_closed_form():
    return ClosedForm("normface_lower_bound", normface_bound(), [n, ell], {},
                      page=f"{PAGE}#normface-lower-bound", formula="log(1 + (n - 1) exp(-n l^2 / (n - 1)))")


@closed_forms.register("cosface_minimum_scale")
def _cosface_scale_closed_form():
    return ClosedForm("cosface_minimum_scale", cosface_minimum_scale(), [C, P_W], {},
                      page=f"{PAGE}#cosface-scale-bound", formula="(C - 1)/C log((C - 1) P_W / (1 - P_W))")


def _jensen_by_tangent_lines(proof, function, variable, values, count, index, mask, name):
    """Jensen's inequality ``sum_k mask_k f(v_k) >= count f(mean)`` over a general index range.

    ``values`` is the indexed family (``x[j]``), ``mask`` the 0/1 weight selecting the terms
    (``1 - delta_ij`` for j != i, or 1), ``count`` = ``sum_k mask_k``.  Proven from the
    tangent line at the mean ``mu`` (needs ``f'' >= 0``, checked), summed over the range:
    ``sum mask (f(mu) + f'(mu)(v - mu)) = count f(mu) + f'(mu)(sum mask v - count mu)`` and
    the last bracket is 0 at the mean.
    """
    mu = mean_x
    slope = sp.diff(function, variable).subs(variable, mu)
    tangent = function.subs(variable, mu) + slope * (variable - mu)
    tangent_gap = proof.convex_tangent_line(f"{name}: convex, so f(v) >= f(mu) + f'(mu)(v - mu)",
                                            function, variable, mu)
    proof.instantiate(tangent_gap, {variable: values})
    proof.sum_bound(f"{name}: sum the tangent lines over the terms", mask * tangent.subs(variable, values),
                    mask * function.subs(variable, values), (index, 0, n - 1))
    summed_tangent = sp.Sum(mask * tangent.subs(variable, values), (index, 0, n - 1))
    weighted_total = sp.Sum(mask * values, (index, 0, n - 1))
    proof.require_identity(
        f"{name}: the tangent sum is count f(mu) + f'(mu)(sum of the terms - count mu)",
        summed_tangent, count * function.subs(variable, mu) + slope * (weighted_total - count * mu),
        prepare=lambda difference: evaluate_sums(linearize_sums(sp.expand(difference)), RANGES),
    )
    proof.step(f"{name}: at mu = (sum of the terms)/count the bracket vanishes: sum f(v) >= count f(mu)",
               sp.GreaterThan(sp.Sum(mask * function.subs(variable, values), (index, 0, n - 1)),
                              count * function.subs(variable, mu), evaluate=False),
               "substitution of the mean")


@derivation(FAMILY, "normface-lower-bound",
            "NormFace: with |W_i| = |f| = l and balanced classes, L >= log(1 + (n - 1) exp(-n l^2 / (n - 1)))",
            reference="Wang et al. 2017 (NormFace), Proposition 2", scope=proven_for("n", "D"))
def normface_lower_bound(proof):
    loss_symbol = sp.Symbol("L")
    proof.state(sp.GreaterThan(loss_symbol, normface_bound(), evaluate=False),
                "$n \\ge 2$ classes, equally many samples each, every feature at its class weight "
                "($f = W_i$, the best case the bound is about); $\\|W_i\\| = \\ell$; "
                "$G_{ij} = W_i \\cdot W_j$, so $G_{ii} = \\ell^2$; any dimension $D$")
    exp_row = class_sum(sp.exp(G[i, j]), j)
    loss = -class_sum(sp.log(sp.exp(G[i, i]) / exp_row), i) / n
    proof.step("the loss averaged over the classes", eq(loss_symbol, loss))
    rest = off_diagonal_sum(sp.exp(G[i, j] - ell ** 2))
    # 1. rewrite: the argument of each log, using G_ii = l^2
    argument_difference = (exp_row / sp.exp(ell ** 2)) - (1 + rest)
    sifted = evaluate_sums(linearize_sums(sp.expand(argument_difference)), RANGES).subs(G[i, i], ell ** 2)
    if not simplifies_to_zero(sifted):
        proof.fail("rewrite of the loss", sp.sstr(sifted))
    rewritten = class_sum(sp.log(1 + rest), i) / n
    proof.step("divide by e^{G_ii} = e^{l^2}: each term is log(1 + sum_{j != i} e^{G_ij - l^2})",
               eq(loss_symbol, rewritten), "difference of the log arguments simplifies to 0 (G_ii = l^2)")
    # 2. Jensen for exp over the n - 1 terms j != i
    v = sp.Symbol("v", real=True)
    mask = 1 - sp.KroneckerDelta(j, i)
    _jensen_by_tangent_lines(proof, sp.exp(v), v, X[j], n - 1, j, mask, "exp")
    count_check = evaluate_sums(linearize_sums(off_diagonal_sum(sp.Integer(1))), RANGES)
    proof.require_identity("the number of terms j != i is n - 1", count_check, n - 1,
                           display=eq(off_diagonal_sum(sp.Integer(1)), n - 1))
    exponent_i = sp.Sum(mask * (G[i, j] - ell ** 2), (j, 0, n - 1)) / (n - 1)
    proof.step("with x_j = G_ij - l^2: sum_{j != i} e^{G_ij - l^2} >= (n - 1) exp(mean_{j != i}(G_ij - l^2))",
               sp.GreaterThan(rest, (n - 1) * sp.exp(exponent_i), evaluate=False), "the Jensen lines above")
    log_term = sp.log(1 + sp.Symbol("u", positive=True))
    proof.require_positive("log(1 + u) is increasing", sp.diff(log_term, sp.Symbol("u", positive=True)))
    stage_one = class_sum(sp.log(1 + (n - 1) * sp.exp(Y[i])), i) / n
    proof.step("so L >= (1/n) sum_i log(1 + (n - 1) e^{y_i}) with y_i = (1/(n-1)) sum_{j != i} (G_ij - l^2)",
               sp.GreaterThan(loss_symbol, stage_one, evaluate=False), "monotone log(1 + .) of the line above")
    # 3. Jensen for h(y) = log(1 + (n - 1) e^y) over the n classes
    constant = sp.Symbol("C_n", positive=True)  # stands for n - 1 > 0
    h = sp.log(1 + constant * sp.exp(v))
    _jensen_by_tangent_lines(proof, h, v, Y[i], n, i, sp.Integer(1), "log(1 + C e^y), C = n - 1 > 0")
    overall = class_sum(class_sum(mask * G[i, j], j), i) / (n * (n - 1)) - ell ** 2
    mean_exponent = class_sum(exponent_i, i) / n
    proof.require_identity("the mean of the y_i: (1/(n(n-1))) sum_i sum_{j != i} G_ij - l^2",
                           evaluate_sums(linearize_sums(sp.expand(mean_exponent)), RANGES),
                           evaluate_sums(linearize_sums(sp.expand(overall)), RANGES),
                           display=eq(label("\\bar{y}"), overall))
    proof.step("so L >= log(1 + (n - 1) exp(mean y))", sp.GreaterThan(
        loss_symbol, sp.log(1 + (n - 1) * sp.exp(overall)), evaluate=False), "the Jensen lines above")
    # 4. the Gram identity and the bound on the off-diagonal sum
    total_vector_sq = sp.Sum(class_sum(W[i, d], i) ** 2, (d, 0, D - 1))
    double = sp.Sum(sp.Sum(sp.Sum(W[i, d] * W[j, d], (j, 0, n - 1)), (i, 0, n - 1)), (d, 0, D - 1))
    proof.require_identity("|sum_i W_i|^2 = sum_d (sum_i W_id)^2 = sum_d sum_i sum_j W_id W_jd",
                           total_vector_sq, double,
                           prepare=lambda difference: sp.expand(linearize_sums(sp.expand(difference))))
    gram_order = sp.Sum(W[i, d] * W[j, d], (d, 0, D - 1), (j, 0, n - 1), (i, 0, n - 1))
    if double.reorder((0, 2)).reorder((1, 2)) != gram_order:
        proof.fail("exchanging the finite sums", sp.sstr(double.reorder((0, 2)).reorder((1, 2))))
    proof.step("finite sums commute (SymPy's Sum.reorder, which checks the limits are independent): "
               "= sum_i sum_j G_ij with G_ij = sum_d W_id W_jd",
               eq(total_vector_sq, class_sum(class_sum(G[i, j], j), i)), "Sum.reorder reproduces the Gram form")
    split = evaluate_sums(linearize_sums(sp.expand(class_sum(class_sum(G[i, j], j), i)
                                                   - class_sum(class_sum(mask * G[i, j], j), i))), RANGES)
    proof.require_identity("split off the diagonal: sum_i sum_j G_ij = sum_i G_ii + sum_i sum_{j != i} G_ij",
                           split, class_sum(G[i, i], i),
                           display=eq(class_sum(class_sum(G[i, j], j), i),
                                         class_sum(G[i, i], i) + class_sum(class_sum(mask * G[i, j], j), i)))
    proof.require_identity("sum_i G_ii = n l^2 (every |W_i| = l)",
                           linearize_sums(class_sum(G[i, i], i).xreplace({G[i, i]: ell ** 2})), n * ell ** 2,
                           display=eq(class_sum(G[i, i], i), n * ell ** 2))
    proof.sum_bound("|sum_i W_i|^2 >= 0: a sum of squares", sp.Integer(0), class_sum(W[i, d], i) ** 2,
                    (d, 0, D - 1), display=sp.GreaterThan(total_vector_sq, 0, evaluate=False))
    proof.step("so sum_i sum_{j != i} W_i . W_j >= -n l^2",
               sp.GreaterThan(class_sum(class_sum(mask * G[i, j], j), i), -n * ell ** 2, evaluate=False),
               "the three lines above")
    # 5. substitute
    lowest = -n * ell ** 2 / (n * (n - 1)) - ell ** 2
    proof.require_identity("so mean y >= -l^2/(n - 1) - l^2 = -n l^2 / (n - 1)", lowest, -n * ell ** 2 / (n - 1),
                           display=eq(lowest, -n * ell ** 2 / (n - 1)))
    proof.require_positive("h(y) = log(1 + (n - 1) e^y) is increasing", sp.diff(h, v),
                           display=sp.StrictGreaterThan(sp.Derivative(h, v), 0, evaluate=False))
    proof.step("so L >= log(1 + (n - 1) exp(-n l^2 / (n - 1)))",
               sp.GreaterThan(loss_symbol, normface_bound(), evaluate=False), "monotone h and the line above")
    proof.closed_form(closed_forms.get("normface_lower_bound"))


@derivation(FAMILY, "normface-bound-attained",
            "NormFace's bound is attained on the regular simplex (W_i . W_j = -l^2/(n - 1), needs D >= n - 1)",
            reference="Wang et al. 2017 (NormFace), proof of Proposition 2 (when the bound is attained)",
            scope=proven_for("n"))
def normface_bound_attained(proof):
    proof.state(eq(label("L_{simplex}"), normface_bound()),
                "$n \\ge 2$; $W_i = \\ell\\sqrt{n/(n-1)}\\,(e_i - \\tfrac{1}{n}\\mathbf{1})$ in $\\mathbb{R}^n$ "
                "(they span an $(n-1)$-dimensional subspace)")
    simplex = ell * sp.sqrt(n / (n - 1)) * (sp.KroneckerDelta(i, d) - sp.Rational(1, 1) / n)
    gram = sp.Sum(simplex * simplex.subs(i, j), (d, 0, n - 1))
    gram_value = evaluate_sums(linearize_sums(sp.expand(gram)), {i: n, j: n, d: n})
    claimed = ell ** 2 * n / (n - 1) * (sp.KroneckerDelta(i, j) - sp.Rational(1, 1) / n)
    proof.require_identity("Gram matrix: W_i . W_j = l^2 n/(n - 1) (delta_ij - 1/n)", gram_value, claimed,
                           display=eq(label("W_i \\cdot W_j"), claimed))
    proof.require_identity("so |W_i| = l and W_i . W_j = -l^2/(n - 1) for i != j",
                           claimed.subs(j, i) + claimed.subs(sp.KroneckerDelta(i, j), 0),
                           ell ** 2 - ell ** 2 / (n - 1))
    total = evaluate_sums(linearize_sums(sp.expand(class_sum(simplex, i))), {d: n, i: n})
    proof.require_identity("sum_i W_i = 0 (so |sum W_i|^2 = 0: the Gram step is tight)", total, sp.Integer(0))
    off_diagonal = claimed.subs(sp.KroneckerDelta(i, j), 0)
    proof.step("in the off-diagonal sum (1 - delta_ij) g(G_ij) = (1 - delta_ij) g(-l^2/(n - 1)): "
               "all its exponents are equal, so both Jensen steps are tight",
               eq(off_diagonal_sum(sp.exp(label("G_{ij}") - ell ** 2)),
                     off_diagonal_sum(sp.exp(off_diagonal - ell ** 2))), "delta_ij is 0 wherever 1 - delta_ij is not")
    rest_value = evaluate_sums(linearize_sums(sp.expand(off_diagonal_sum(sp.exp(off_diagonal - ell ** 2)))), RANGES)
    proof.require_identity("sum_{j != i} e^{G_ij - l^2} = (n - 1) e^{-n l^2/(n - 1)}",
                           rest_value, (n - 1) * sp.exp(-n * ell ** 2 / (n - 1)),
                           prepare=lambda difference: sp.simplify(sp.powsimp(sp.expand(difference))))
    loss = class_sum(sp.log(1 + (n - 1) * sp.exp(-n * ell ** 2 / (n - 1))), i) / n
    proof.require_identity("the loss (1/n) sum_i log(1 + ...) equals the bound",
                           linearize_sums(loss), normface_bound(), display=eq(label("L_{simplex}"), loss))
    proof.note("The regular simplex needs $D \\ge n - 1$: with more classes than dimensions the "
               "bound is not attained.  It is still a floor.")
    proof.closed_form(closed_forms.get("normface_lower_bound"))


@derivation(FAMILY, "normface-figures",
            "NormFace's figures: floor 8.27 at n = 10575, l = 1; e/(e + (n - 1)/e) = 0.45 (n = 10), 0.007 (n = 1000)",
            reference="Wang et al. 2017 (NormFace), section 3.3; Yi et al. 2014 (CASIA-WebFace, n = 10575)",
            scope=f"{CHECKED_FIXED} (numeric example: NormFace's figures)")
def normface_figures(proof):
    floor = normface_bound(sp.Integer(10575), sp.Integer(1))
    proof.state("\\log\\big(1 + 10574\\, e^{-10575/10574}\\big) \\approx 8.27,\\quad "
                "\\frac{e}{e + 9/e} \\approx 0.45,\\quad \\frac{e}{e + 999/e} \\approx 0.007",
                "the paper's figures, rounded as the paper prints them; evaluated here to 30 digits")
    value = sp.N(floor, 30)
    if round(float(value), 2) != 8.27:
        proof.fail("the floor at n = 10575, l = 1 is not 8.27", sp.sstr(value))
    proof.approximately("the floor at n = 10575 (CASIA-WebFace), l = 1 rounds to 8.27 (a softmax loss on "
                        "normalized features that stalls near 8.5 is already near this floor)", floor, 8,
                        "evaluated to 30 digits, rounded to 2 decimals")
    for classes, expected, digits in ((10, 0.45, 2), (1000, 0.007, 3)):
        probability = sp.E / (sp.E + (classes - 1) / sp.E)
        evaluated = sp.N(probability, 30)
        if round(float(evaluated), digits) != expected:
            proof.fail(f"e/(e + (n - 1)/e) at n = {classes}", sp.sstr(evaluated))
        proof.approximately(f"perfectly separated (cos = 1 at the target, -1 elsewhere) at n = {classes}: "
                            f"the target probability rounds to {expected}", probability, 6,
                            f"evaluated to 30 digits, rounded to {digits} decimals")
    proof.closed_form(closed_forms.get("normface_lower_bound"))


@derivation(FAMILY, "cosface-scale-bound",
            "CosFace: a class-centre posterior of at least P_W needs s >= (C - 1)/C log((C - 1) P_W / (1 - P_W))",
            reference="Wang et al. 2018 (CosFace), section 3.4, eq. (9)", scope=proven_for("C"))
def cosface_scale_bound(proof):
    proof.state(sp.GreaterThan(s, cosface_minimum_scale(), evaluate=False),
                "$C \\ge 2$ classes, unit weights and features, logits $s\\,W_j\\cdot f$; every class centre "
                "$f = W_i$ reaches posterior $P_i \\ge P_W$, $0 < P_W < 1$")
    floor = normface_bound(C, sp.sqrt(s))
    proof.step("the NormFace argument with l^2 = s (scale the unit vectors by sqrt(s)): the mean of "
               "-log P_i is at least log(1 + (C - 1) e^{-C s/(C - 1)})",
               sp.GreaterThan(label("\\frac{1}{C}\\sum_i -\\log P_i"), floor, evaluate=False),
               "normface-lower-bound with n = C, l^2 = s")
    proof.step("P_i >= P_W for every i gives -log P_W >= that mean",
               sp.GreaterThan(-sp.log(P_W), floor, evaluate=False), "-log is decreasing")
    best = 1 / (1 + (C - 1) * sp.exp(-C * s / (C - 1)))
    proof.require_identity("exponentiate: P_W <= 1/(1 + (C - 1) e^{-C s/(C - 1)})",
                           sp.exp(-floor), best, display=sp.LessThan(P_W, best, evaluate=False))
    paper = sp.exp(s) / (sp.exp(s) + (C - 1) * sp.exp(-s / (C - 1)))
    proof.require_identity("which is the paper's e^s / (e^s + (C - 1) e^{-s/(C - 1)})", paper, best,
                           prepare=lambda difference: sp.simplify(sp.powsimp(difference)))
    two_or_more = sp.Symbol("c", positive=True)  # C - 1 > 0
    proof.require_positive("the right side increases with s", sp.diff(best, s).subs(C, two_or_more + 1),
                           display=sp.StrictGreaterThan(sp.Derivative(best, s), 0, evaluate=False))
    odds = sp.Symbol("r", positive=True)  # P_W = 1 / (1 + r) covers 0 < P_W < 1
    solutions = sp.solve(eq(best.subs(C, two_or_more + 1), P_W), s)
    if len(solutions) != 1:
        proof.fail("solving for s", sp.sstr(solutions))
    proof.step("solve the equality for s (SymPy's solve, C = c + 1 with c > 0)", eq(s, solutions[0]))
    proof.require_identity("= (C - 1)/C log((C - 1) P_W / (1 - P_W)) (checked with P_W = 1/(1 + r), r > 0)",
                           solutions[0].subs(P_W, 1 / (1 + odds)),
                           cosface_minimum_scale(two_or_more + 1, 1 / (1 + odds)),
                           prepare=lambda difference: sp.simplify(sp.expand_log(sp.simplify(difference))),
                           display=eq(s, cosface_minimum_scale()))
    proof.step("the bound increases with s, so P_W <= bound(s) exactly when s >= that root",
               sp.GreaterThan(s, cosface_minimum_scale(), evaluate=False), "monotonicity")
    example = sp.N(cosface_minimum_scale(sp.Integer(10575), sp.Rational(9, 10)), 6)
    proof.note(f"Example: $C = 10575$ (CASIA-WebFace), $P_W = 0.9$: $s \\ge {float(example):.3f}$; "
               "CosFace uses $s = 64$, AM-Softmax $s = 30$, comfortably above.  The bound grows "
               "like $\\log C$.")
    proof.closed_form(closed_forms.get("cosface_minimum_scale"))


DERIVATIONS = [
    normface_lower_bound,
    normface_bound_attained,
    normface_figures,
    cosface_scale_bound,
]
