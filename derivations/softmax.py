"""Softmax, log-softmax and logsumexp: Jacobians, shift invariance, the binary case, bounds.

.. math::
    a_j = \\mathrm{softmax}(z)_j = \\frac{e^{z_j}}{\\sum_{k=0}^{K-1} e^{z_k}},\\qquad
    \\mathrm{LSE}(z) = \\log \\sum_{k=0}^{K-1} e^{z_k}

Every statement here is proven for a general number of classes ``K`` (sums with a
symbolic number of terms); the binary case is by definition ``K = 2``.  These are the
facts the normalizer kernels (``softmaxlab.kernels.softmax``) rely on, and the first-order
rounding error bounds of the two backward formulas, relative to the magnitudes of their
terms: the scales of the harness's condition-aware error (``harness/metrics.py``).

References: J. S. Bridle, "Probabilistic interpretation of feedforward classification
network outputs, with relationships to statistical pattern recognition", 1990; the
seeds 001-003 (softmax derivative, LogSumExp as the smooth max, the max shift).
"""

from __future__ import annotations

import sympy as sp

from . import _closed_form as closed_forms
from ._closed_form import ClosedForm
from ._proof import PROVEN_SYMBOLIC, derivation, eq, evaluate_sums, label, linearize_sums, replace_indexed
from ._symbols import (
    CLASS_RANGES,
    K,
    a,
    class_sum,
    dy,
    i,
    j,
    k,
    l,
    logsumexp_of,
    normalizer,
    sigmoid,
    softmax_of,
    y,
    z,
)

FAMILY = "softmax"
PAGE = "docs/proofs/softmax.md"
TITLE = "Softmax, log-softmax and logsumexp"
INTRODUCTION = """\
The normalizers.  With logits $z \\in \\mathbb{R}^K$ (a general number of classes $K$),
$a_j = e^{z_j} / \\sum_{k=0}^{K-1} e^{z_k}$ and $\\mathrm{LSE}(z) = \\log \\sum_k e^{z_k}$.
Sums keep a symbolic number of terms; a Kronecker delta inside a sum is sifted
($\\sum_k f(k)\\,\\delta_{ki} = f(i)$ for $0 \\le i \\le K-1$).  The kernels in
`softmaxlab.kernels.softmax` cite these statements above their loops.
"""

c = sp.Symbol("c", real=True)  # a constant added to every logit
argmax = sp.Symbol("m", integer=True, nonnegative=True)  # the index of the largest logit

# the rounding error model of the backward passes (Higham 2002, Accuracy and Stability of
# Numerical Algorithms, 2.2 and 3.1): each rounding is a factor 1 + u theta, |theta| <= its bound
u = sp.Symbol("u", positive=True)  # the unit roundoff 2^-p of the dtype
rounding_alpha = sp.IndexedBase("alpha", real=True)  # the probabilities' relative errors, in u
rounding_sigma = sp.IndexedBase("sigma", real=True)  # the sum's relative error per term, in u
delta_1, delta_2 = sp.symbols("delta_1 delta_2", real=True)  # the last two roundings, in u
forward_error = sp.Symbol("c_a", nonnegative=True)  # |alpha_l| <= c_a: the forward's error in u
# magnitudes for the bounds: a_i, |dy_i|, and the sum of the absolute values of the sum's terms
size_a = sp.Symbol("a_i", positive=True)
size_dy = sp.Symbol("g_i", nonnegative=True)  # |dy_i|
size_terms = sp.Symbol("T", nonnegative=True)


# ---- closed forms ------------------------------------------------------------------------------


@closed_forms.register("softmax")
def _softmax_closed_form():
    return ClosedForm("softmax", softmax_of(z, j), [z], {z: (K,)}, outputs=[(j, K)],
                      page=f"{PAGE}#softmax-shift-invariance",
                      formula="a_j = exp(z_j) / sum_k exp(z_k)")


@closed_forms.register("log_softmax")
def _log_softmax_closed_form():
    return ClosedForm("log_softmax", z[j] - logsumexp_of(z), [z], {z: (K,)}, outputs=[(j, K)],
                      page=f"{PAGE}#log-softmax-identity",
                      formula="log a_j = z_j - log sum_k exp(z_k)")


@closed_forms.register("logsumexp")
def _logsumexp_closed_form():
    return ClosedForm("logsumexp", logsumexp_of(z), [z], {z: (K,)},
                      page=f"{PAGE}#logsumexp-bounds", formula="LSE(z) = log sum_k exp(z_k)")


@closed_forms.register("softmax_jacobian")
def _softmax_jacobian_closed_form():
    jacobian = softmax_of(z, j) * (sp.KroneckerDelta(i, j) - softmax_of(z, i))
    return ClosedForm("softmax_jacobian", jacobian, [z], {z: (K,)}, outputs=[(j, K), (i, K)],
                      page=f"{PAGE}#softmax-jacobian",
                      formula="J[..., j, i] = d a_j / d z_i = a_j (delta_ij - a_i)")


@closed_forms.register("softmax_backward")
def _softmax_backward_closed_form():
    # the Jacobian contracted with the upstream gradient, from the softmax output y = a
    contraction = class_sum(dy[l] * y[l] * (sp.KroneckerDelta(i, l) - y[i]), l)
    return ClosedForm("softmax_backward", contraction, [y, dy], {y: (K,), dy: (K,)},
                      outputs=[(i, K)], page=f"{PAGE}#softmax-vjp",
                      formula="dx_i = sum_l dy_l y_l (delta_il - y_i),  y = softmax(z)")


@closed_forms.register("log_softmax_backward")
def _log_softmax_backward_closed_form():
    # d log a_l / d z_i = delta_il - a_i, contracted with dy; a = exp(y) for y = log_softmax(z)
    contraction = class_sum(dy[l] * (sp.KroneckerDelta(i, l) - sp.exp(y[i])), l)
    return ClosedForm("log_softmax_backward", contraction, [y, dy], {y: (K,), dy: (K,)},
                      outputs=[(i, K)], page=f"{PAGE}#log-softmax-vjp",
                      formula="dx_i = sum_l dy_l (delta_il - exp(y_i)),  y = log_softmax(z)")


@closed_forms.register("logsumexp_gradient")
def _logsumexp_gradient_closed_form():
    gradient = evaluate_sums(sp.diff(logsumexp_of(z), z[i]), CLASS_RANGES)
    return ClosedForm("logsumexp_gradient", gradient, [z], {z: (K,)}, outputs=[(i, K)],
                      page=f"{PAGE}#logsumexp-gradient", formula="d LSE / d z_i = softmax(z)_i")


@closed_forms.register("sigmoid")
def _sigmoid_closed_form():
    x = sp.Symbol("x", real=True)
    return ClosedForm("sigmoid", sigmoid(x), [x], {}, page=f"{PAGE}#binary-softmax-sigmoid",
                      formula="sigma(x) = 1 / (1 + exp(-x))")


# ---- derivations ----------------------------------------------------------------------------------


@derivation(FAMILY, "softmax-jacobian", "Jacobian of softmax: d a_j / d z_i = a_j (delta_ij - a_i)",
            reference="Bridle 1990; Goodfellow, Bengio & Courville 2016, Deep Learning, 6.2.2.3")
def softmax_jacobian(proof):
    a_j, a_i = softmax_of(z, j), softmax_of(z, i)
    claimed = a_j * (sp.KroneckerDelta(i, j) - a_i)
    proof.state(eq(sp.Derivative(a[j], z[i]), a[j] * (sp.KroneckerDelta(i, j) - a[i])),
                "$z \\in \\mathbb{R}^K$ for a general $K \\ge 1$; $0 \\le i, j \\le K-1$")
    proof.step("definition", eq(a[j], a_j))
    derivative = sp.diff(a_j, z[i])
    proof.step("quotient rule (SymPy differentiates the sum termwise)",
               eq(sp.Derivative(a[j], z[i]), derivative))
    sifted = evaluate_sums(derivative, CLASS_RANGES)
    proof.step("sift the Kronecker delta in the sum", eq(sp.Derivative(a[j], z[i]), sifted))
    proof.require_identity("equals a_j (delta_ij - a_i)", sifted, claimed,
                           display=eq(sifted, claimed))
    proof.check_fixed_sizes("extra check of the unsifted derivative against a_j (delta_ij - a_i)",
                            derivative, claimed, [z], {z: (K,)}, outputs=[(j, K), (i, K)])
    proof.closed_form(closed_forms.get("softmax_jacobian"))


@derivation(FAMILY, "softmax-vjp",
            "softmax backward: sum_j dy_j d a_j / d z_i = a_i (dy_i - sum_j a_j dy_j)",
            reference="Bridle 1990; the vector-Jacobian product of the Jacobian above")
def softmax_vjp(proof):
    jacobian = a[l] * (sp.KroneckerDelta(i, l) - a[i])  # d a_l / d z_i, proven above
    contraction = class_sum(dy[l] * jacobian, l)
    claimed = a[i] * (dy[i] - class_sum(a[l] * dy[l], l))
    proof.state(eq(sp.Symbol("dx_i"), claimed),
                "$dx_i = \\sum_l dy_l\\, \\partial a_l / \\partial z_i$, with the Jacobian of "
                "[softmax-jacobian](#softmax-jacobian); general $K$")
    proof.step("contract the Jacobian with the upstream gradient", eq(sp.Symbol("dx_i"), contraction))
    sifted = evaluate_sums(sp.expand(contraction), CLASS_RANGES)
    proof.step("split the sum and sift the delta", eq(sp.Symbol("dx_i"), sifted))
    proof.require_identity("factor a_i", sifted, claimed, display=eq(sifted, claimed))
    proof.check_fixed_sizes("extra check of the contraction", contraction, claimed, [a, dy],
                            {a: (K,), dy: (K,)}, outputs=[(i, K)], distributions=(a,))
    proof.note("`softmax_backward(y, dy)` computes `y * (dy - sum(y * dy))` from the output "
               "`y = softmax(x)`: exactly the right-hand side with $a = y$.  The closed form "
               "`closed_forms.softmax_backward` is the *unsimplified* contraction, so a test "
               "against it checks the kernel's simplification too.")
    proof.closed_form(closed_forms.get("softmax_backward"))


def _first_order_rounding(proof, computed, exact, first_order):
    """Check the rounding model: ``computed - exact`` is 0 at u = 0 and its u-derivative
    there is ``first_order``; so the error is ``u first_order + O(u^2)``."""
    error = computed - exact
    linear = lambda difference: linearize_sums(sp.expand(difference))  # noqa: E731
    proof.require_identity("no rounding (u = 0) gives the exact value", error.subs(u, 0), sp.Integer(0),
                           prepare=linear, display=label("\\hat{dx}_i \\big|_{u=0} = dx_i"))
    derivative = sp.diff(error, u).subs(u, 0)
    proof.require_identity("the first-order term: d(computed - exact)/du at u = 0", derivative, first_order,
                           prepare=linear, display=eq(sp.Symbol("E_1"), first_order))


def _bound_by_the_scale(proof, triangle, constant, scale, explanation):
    """Check ``triangle <= constant * scale`` for the magnitudes (nonnegative symbols) and K >= 1
    (written K = 1 + e, e a nonnegative integer: SymPy does not derive K - 1 >= 0 itself)."""
    extra = sp.Symbol("e", integer=True, nonnegative=True)
    gap = sp.expand((constant * scale - triangle).subs(K, 1 + extra))
    proof.require_nonnegative(explanation, gap, display=sp.LessThan(triangle, constant * scale, evaluate=False))


@derivation(FAMILY, "softmax-vjp-rounding",
            "rounding error of softmax backward: |fl(dx_i) - dx_i| <= (2 c_a + K + 1) u a_i (|dy_i| + "
            "sum_l a_l |dy_l|) + O(u^2)",
            reference="Higham 2002, Accuracy and Stability of Numerical Algorithms, 2.2 (the model) and 4.2 "
                      "(recursive summation)")
def softmax_vjp_rounding(proof):
    total = class_sum(a[l] * dy[l], l)
    exact = a[i] * (dy[i] - total)
    magnitude = a[i] * (sp.Abs(dy[i]) + class_sum(a[l] * sp.Abs(dy[l]), l))
    constant = 2 * forward_error + K + 1
    proof.state(sp.LessThan(sp.Abs(sp.Symbol("\\hat{dx}_i") - sp.Symbol("dx_i")),
                            constant * u * magnitude + sp.O(u**2), evaluate=False),
                "the computed probabilities are $a_l (1 + u \\alpha_l)$ with $|\\alpha_l| \\le c_a$ (the "
                "forward's error in units of $u$)",
                "the sum $\\sum_l a_l dy_l$ is formed from them with relative errors $u \\sigma_l$ per "
                "term, $|\\sigma_l| \\le K - 1$ to first order (recursive summation; a pairwise sum has "
                "$\\lceil \\log_2 K \\rceil$)",
                "the difference and the product are each rounded once: $(1 + u \\delta_1)(1 + u \\delta_2)$, "
                "$|\\delta_1|, |\\delta_2| \\le 1$; general $K$")
    rounded_total = class_sum(a[l] * (1 + u * rounding_alpha[l]) * dy[l] * (1 + u * rounding_sigma[l]), l)
    computed = a[i] * (1 + u * rounding_alpha[i]) * (dy[i] - rounded_total) * (1 + u * delta_1) * (1 + u * delta_2)
    proof.step("the computed value in the model", eq(sp.Symbol("\\hat{dx}_i"), computed))
    first_order = (a[i] * (dy[i] - total) * (rounding_alpha[i] + delta_1 + delta_2)
                   - a[i] * class_sum(a[l] * dy[l] * (rounding_alpha[l] + rounding_sigma[l]), l))
    _first_order_rounding(proof, computed, exact, first_order)
    triangle = size_a * (size_dy + size_terms) * (forward_error + 2) + size_a * size_terms * (forward_error + K - 1)
    proof.step("triangle inequality with the bounds on alpha, sigma, delta, and |dy_i - sum_l a_l dy_l| <= "
               "g_i + T, where g_i = |dy_i| and T = sum_l a_l |dy_l|",
               sp.LessThan(sp.Abs(sp.Symbol("E_1")), triangle, evaluate=False), "by hand (the triangle inequality)")
    _bound_by_the_scale(proof, triangle, constant, size_a * (size_dy + size_terms),
                        "at most (2 c_a + K + 1) a_i (g_i + T): the gap is a_i g_i (c_a + K - 1) >= 0 for K >= 1")
    proof.note("So the harness's condition-aware error of `softmax_backward` (`harness/metrics.py`: "
               "$|\\hat{dx}_i - dx_i| / (u\\, s_i + \\eta)$ with the term magnitude $s_i = a_i (|dy_i| + "
               "\\sum_l a_l |dy_l|)$, `harness/exact/normalizers.py`) of a standard evaluation is at most "
               "$2 c_a + K + 1$ to first order, where its elementwise ULP error is unbounded: $dx_i$ "
               "itself can be $e^{-30}$ of $s_i$.  The sum's constant $K - 1$ is the depth of a recursive "
               "sum's additions; a pairwise sum has $\\lceil \\log_2 K \\rceil$ in its place.")


@derivation(FAMILY, "log-softmax-vjp-rounding",
            "rounding error of log-softmax backward: |fl(dx_i) - dx_i| <= (c_a + K + 1) u (|dy_i| + a_i "
            "sum_l |dy_l|) + O(u^2)",
            reference="Higham 2002, Accuracy and Stability of Numerical Algorithms, 2.2 and 4.2")
def log_softmax_vjp_rounding(proof):
    total = class_sum(dy[l], l)
    exact = dy[i] - a[i] * total
    magnitude = sp.Abs(dy[i]) + a[i] * class_sum(sp.Abs(dy[l]), l)
    constant = forward_error + K + 1
    proof.state(sp.LessThan(sp.Abs(sp.Symbol("\\hat{dx}_i") - sp.Symbol("dx_i")),
                            constant * u * magnitude + sp.O(u**2), evaluate=False),
                "the computed $a_i = e^{y_i}$ is $a_i (1 + u \\alpha_i)$ with $|\\alpha_i| \\le c_a$ (it "
                "includes $|y_i|$, the condition of $e^{y}$ at the rounded output $y_i$)",
                "the sum $\\sum_l dy_l$ has relative errors $u \\sigma_l$ per term, $|\\sigma_l| \\le K - 1$ "
                "to first order",
                "the product and the difference are each rounded once, $|\\delta_1|, |\\delta_2| \\le 1$; "
                "general $K$")
    rounded_total = class_sum(dy[l] * (1 + u * rounding_sigma[l]), l)
    computed = (dy[i] - a[i] * (1 + u * rounding_alpha[i]) * rounded_total * (1 + u * delta_1)) * (1 + u * delta_2)
    proof.step("the computed value in the model", eq(sp.Symbol("\\hat{dx}_i"), computed))
    first_order = (delta_2 * (dy[i] - a[i] * total) - a[i] * total * (rounding_alpha[i] + delta_1)
                   - a[i] * class_sum(dy[l] * rounding_sigma[l], l))
    _first_order_rounding(proof, computed, exact, first_order)
    triangle = (size_dy + size_a * size_terms) + size_a * size_terms * (forward_error + 1) \
        + size_a * size_terms * (K - 1)
    proof.step("triangle inequality with the bounds on alpha, sigma, delta, where g_i = |dy_i| and T = sum_l |dy_l|",
               sp.LessThan(sp.Abs(sp.Symbol("E_1")), triangle, evaluate=False), "by hand (the triangle inequality)")
    _bound_by_the_scale(proof, triangle, constant, size_dy + size_a * size_terms,
                        "at most (c_a + K + 1)(g_i + a_i T): the gap is g_i (c_a + K) >= 0")
    proof.note("The term magnitude of `log_softmax_backward` in the harness is $|dy_i| + a_i \\sum_l |dy_l|$ "
               "(`harness/exact/normalizers.py`): a standard evaluation scores at most $c_a + K + 1$ to "
               "first order.")


@derivation(FAMILY, "softmax-shift-invariance",
            "shift invariance: softmax(z + c) = softmax(z) and LSE(z + c) = LSE(z) + c",
            reference="Goodfellow, Bengio & Courville 2016, Deep Learning, 4.1 (overflow and underflow); Milakov & Gimelshein 2018")
def softmax_shift_invariance(proof):
    def shift(expr):
        return replace_indexed(expr, z, lambda logit: logit + c)

    a_j = softmax_of(z, j)
    a_shifted = shift(a_j)
    proof.state(eq(a_shifted, a_j), "any real constant $c$ added to every logit; general $K$")
    pulled_out = sp.Mul(sp.exp(c) * sp.exp(z[j]), 1 / (sp.exp(c) * normalizer()), evaluate=False)
    proof.require_identity("the constant leaves the sum: $e^{z_k + c} = e^{c} e^{z_k}$ (linearity)",
                           a_shifted, pulled_out, display=eq(a_shifted, pulled_out),
                           prepare=lambda difference: sp.factor_terms(sp.expand(difference)))
    proof.require_identity("e^c cancels", pulled_out, a_j, display=eq(pulled_out, a_j))
    lse_shifted = shift(logsumexp_of(z))
    proof.require_identity(
        "for logsumexp the factor e^c becomes + c",
        lse_shifted, logsumexp_of(z) + c,
        prepare=lambda difference: sp.expand_log(sp.factor_terms(sp.expand(difference)), force=True),
    )
    proof.note("With $c = -\\max_k z_k$ the largest exponent is $0$: no overflow, and the "
               "denominator is at least $1$.  The kernels compute $a_j = e^{z_j - M} / S$ "
               "and $\\mathrm{LSE} = M + \\log S$ with $M = \\max_k z_k$.")
    proof.closed_form(closed_forms.get("softmax"))


@derivation(FAMILY, "log-softmax-identity", "log-softmax: log a_j = z_j - LSE(z)",
            reference="Boyd & Vandenberghe 2004, Convex Optimization, 3.1.5 (log-sum-exp)")
def log_softmax_identity(proof):
    proof.state(eq(sp.log(a[j]), z[j] - logsumexp_of(z)), "general $K$")
    log_a = sp.log(softmax_of(z, j))
    proof.require_identity("log of a quotient of positive quantities", log_a, z[j] - logsumexp_of(z),
                           prepare=lambda difference: sp.expand_log(difference, force=True))
    proof.note("The kernel's `log_softmax` evaluates $(z_j - M) - \\log S$ with $M = \\max_k z_k$: this "
               "identity with the shift of [softmax-shift-invariance](#softmax-shift-invariance).  It "
               "never forms $\\log$ of an underflowed $a_j$.")
    proof.closed_form(closed_forms.get("log_softmax"))


@derivation(FAMILY, "log-softmax-vjp",
            "log-softmax backward: d log a_j / d z_i = delta_ij - a_i, so dx_i = dy_i - a_i sum_j dy_j",
            reference="Bridle 1990")
def log_softmax_vjp(proof):
    log_a_j = z[j] - logsumexp_of(z)
    proof.state(eq(sp.Derivative(sp.log(a[j]), z[i]), sp.KroneckerDelta(i, j) - a[i]),
                "general $K$; the backward pass reads $a_i = e^{y_i}$ from "
                "$y = \\log\\mathrm{softmax}(z)$")
    derivative = evaluate_sums(sp.diff(log_a_j, z[i]), CLASS_RANGES)
    proof.step("differentiate z_j - LSE(z) and sift", eq(sp.Derivative(sp.log(a[j]), z[i]), derivative))
    proof.require_identity("equals delta_ij - a_i", derivative,
                           sp.KroneckerDelta(i, j) - softmax_of(z, i))
    proof.check_fixed_sizes("extra check of the unsifted derivative", sp.diff(log_a_j, z[i]),
                            sp.KroneckerDelta(i, j) - softmax_of(z, i), [z], {z: (K,)},
                            outputs=[(j, K), (i, K)])
    contraction = class_sum(dy[l] * (sp.KroneckerDelta(i, l) - a[i]), l)
    sifted = evaluate_sums(sp.expand(contraction), CLASS_RANGES)
    proof.step("contract with the upstream gradient and sift", eq(contraction, sifted))
    proof.require_identity("dx_i = dy_i - a_i sum_l dy_l", sifted,
                           dy[i] - a[i] * class_sum(dy[l], l))
    proof.closed_form(closed_forms.get("log_softmax_backward"))


@derivation(FAMILY, "binary-softmax-sigmoid",
            "binary softmax is the sigmoid of the logit difference: a_0 = sigma(z_0 - z_1)",
            reference="Bishop 2006, Pattern Recognition and Machine Learning, 4.3.2 and 4.3.4", scope=PROVEN_SYMBOLIC)
def binary_softmax_sigmoid(proof):
    z0, z1 = sp.symbols("z_0 z_1", real=True)
    a0 = sp.exp(z0) / (sp.exp(z0) + sp.exp(z1))
    proof.state(eq(a0, sigmoid(z0 - z1)), "$K = 2$ (the binary case, by definition); real $z_0, z_1$")
    divided = sp.Mul(1, 1 / (1 + sp.exp(z1) / sp.exp(z0)), evaluate=False)
    proof.step("divide numerator and denominator by $e^{z_0}$", eq(a0, divided))
    proof.require_identity("equals 1 / (1 + exp(-(z_0 - z_1)))", a0, sigmoid(z0 - z1))
    proof.require_identity("and a_1 = 1 - a_0 = sigma(z_1 - z_0)",
                           sp.exp(z1) / (sp.exp(z0) + sp.exp(z1)), sigmoid(z1 - z0))
    proof.closed_form(closed_forms.get("sigmoid"))


@derivation(FAMILY, "logsumexp-gradient", "gradient of logsumexp is softmax: d LSE / d z_i = a_i",
            reference="Boyd & Vandenberghe 2004, Convex Optimization, 3.1.5 (the gradient of log-sum-exp)")
def logsumexp_gradient(proof):
    proof.state(eq(sp.Derivative(sp.Symbol("LSE"), z[i]), a[i]), "general $K$")
    derivative = sp.diff(logsumexp_of(z), z[i])
    proof.step("chain rule", eq(sp.Derivative(logsumexp_of(z), z[i]), derivative))
    sifted = evaluate_sums(derivative, CLASS_RANGES)
    proof.step("sift", eq(sp.Derivative(logsumexp_of(z), z[i]), sifted))
    proof.require_identity("equals softmax(z)_i", sifted, softmax_of(z, i))
    proof.check_fixed_sizes("extra check of the unsifted derivative", derivative, softmax_of(z, i), [z],
                            {z: (K,)}, outputs=[(i, K)])
    gradient_sum = class_sum(softmax_of(z, l), l)
    total = sp.factor_terms(sp.expand(gradient_sum.doit()))
    proof.require_identity("so the gradient sums to 1", total, sp.Integer(1),
                           prepare=lambda difference: sp.cancel(sp.factor_terms(difference)),
                           display=eq(gradient_sum, 1))
    proof.closed_form(closed_forms.get("logsumexp_gradient"))


@derivation(FAMILY, "logsumexp-bounds", "max(z) <= LSE(z) <= max(z) + log K",
            reference="Boyd & Vandenberghe 2004, Convex Optimization, 3.1.5 (max x <= LSE(x) <= max x + log n)")
def logsumexp_bounds(proof):
    top = z[argmax]
    lse = logsumexp_of(z)
    proof.state(sp.And(sp.LessThan(top, lse, evaluate=False),
                       sp.LessThan(lse, top + sp.log(K), evaluate=False), evaluate=False),
                "$z_m = \\max_k z_k$, i.e. $z_k \\le z_m$ for every $k$; general $K$")
    scaled = class_sum(sp.exp(z[k] - top))
    proof.require_identity(
        "take out the largest logit: LSE(z) = z_m + log sum_k exp(z_k - z_m)",
        lse, top + sp.log(scaled),
        prepare=lambda difference: sp.expand_log(sp.factor_terms(sp.expand(difference)), force=True),
    )
    gap = sp.Symbol("d_k", nonnegative=True)  # d_k = z_m - z_k >= 0
    proof.nonnegative_from_derivative(
        "each term is at most 1: 1 - exp(-d_k) >= 0 for d_k = z_m - z_k >= 0",
        1 - sp.exp(-gap), gap, 0,
    )
    term = sp.exp(-gap)
    proof.sum_bound("sum the termwise bound", term, sp.Integer(1), (k, 0, K - 1),
                    display=sp.LessThan(scaled, class_sum(sp.Integer(1)).doit(), evaluate=False))
    # lower bound: the term k = m equals 1 and the others are positive
    others = class_sum(sp.exp(z[k] - top) * (1 - sp.KroneckerDelta(k, argmax)))
    proof.require_identity(
        "split off the term k = m, which is exp(0) = 1",
        scaled, 1 + others,
        prepare=lambda difference: evaluate_sums(sp.expand(difference), {argmax: K}),
        display=eq(scaled, 1 + others),
    )
    proof.sum_bound("the remaining terms are nonnegative", sp.Integer(0),
                    sp.exp(sp.Symbol("x_k", real=True)) * (1 - sp.KroneckerDelta(k, argmax)),
                    (k, 0, K - 1), display=sp.GreaterThan(others, 0, evaluate=False))
    s = sp.Symbol("s", positive=True)
    proof.require_positive("log is increasing on (0, oo)", sp.diff(sp.log(s), s),
                           display=sp.StrictGreaterThan(sp.Derivative(sp.log(s), s), 0, evaluate=False))
    proof.step("so log 1 <= log sum_k exp(z_k - z_m) <= log K; add z_m",
               sp.And(sp.LessThan(top, lse, evaluate=False),
                      sp.LessThan(lse, top + sp.log(K), evaluate=False), evaluate=False),
               "follows from the checked lines above")
    proof.note("Equality on the left needs every other term to vanish (a limit); on the "
               "right, all logits equal.  The kernels' `logsumexp` computes $M + \\log S$ "
               "with $1 \\le S \\le K$, which is this statement.")
    proof.closed_form(closed_forms.get("logsumexp"))


DERIVATIONS = [
    softmax_jacobian,
    softmax_vjp,
    softmax_vjp_rounding,
    softmax_shift_invariance,
    log_softmax_identity,
    log_softmax_vjp,
    log_softmax_vjp_rounding,
    binary_softmax_sigmoid,
    logsumexp_gradient,
    logsumexp_bounds,
]
