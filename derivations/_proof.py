"""The record every derivation returns, and the small proof engine that fills it.

A derivation is a function that states a claim in SymPy, derives it step by step and
*checks* each step, either as an identity (the difference simplifies to zero) or as an
inequality proven from a lemma whose hypotheses SymPy verifies (a derivative's sign, a
value at an end point, termwise bounds summed over a general index range).  The first
check that does not go through raises :class:`ProofFailure`; the :func:`derivation`
wrapper turns that into the status ``"FAILED: ..."``, so a wrong claim cannot be reported
as proven.  An inequality may only rest on facts proven earlier in the same proof.

Rules of inference used beyond SymPy's own simplification (each is a textbook fact; the
page of the proof book names the rule wherever it is applied):

* *sifting*: ``sum_{k=0}^{K-1} f(k) delta_{k,i} = f(i)`` for an index ``0 <= i <= K-1``
  (SymPy returns a ``Piecewise`` on ``i <= K - 1``; :func:`resolve_index_ranges` settles
  the condition from the declared range of ``i``);
* *termwise bounds*: ``f(k) <= g(k)`` for every ``k`` implies
  ``sum_k f(k) <= sum_k g(k)`` (:meth:`Proof.sum_bound`);
* *monotonicity*: ``h(a) >= 0`` and ``h' >= 0`` on ``[a, oo)`` imply ``h >= 0`` there
  (:meth:`Proof.nonnegative_from_derivative`);
* *tangent line of a convex function*: ``h'' >= 0`` implies
  ``h(x) >= h(mu) + h'(mu) (x - mu)`` (Jensen's inequality follows by summing it);
* *instances*: a fact proven for all values of a symbol (within its assumptions) holds
  for any value SymPy shows to satisfy them (:meth:`Proof.instantiate`); a fact times a
  nonnegative factor stays nonnegative (:meth:`Proof.scale_fact`);
* *induction* over an integer parameter (base cases and step each checked).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import sympy as sp

# ---- statuses -----------------------------------------------------------------------------

#: Status of a claim proven for a general number of classes (an index range of symbolic length).
PROVEN_GENERAL_K = "proven (general K)"
#: Status of a claim proven for general values of the named sizes, e.g. ``proven_for("n")``.
def proven_for(*sizes: str) -> str:
    """``"proven (general n)"``, ``"proven (general C, D)"``: the status of a claim proven for
    general values of the sizes named (a class count, a dimension, a margin order)."""
    return f"proven (general {', '.join(sizes)})"


#: Status of a claim about scalars only (no class count in it), proven for general symbols.
PROVEN_SYMBOLIC = "proven (general symbols)"
#: Status prefix of a claim checked only for the fixed sizes listed after it.
CHECKED_FIXED = "checked"
#: Status prefix of a failed derivation.
FAILED = "FAILED"


class Label(sp.Symbol):
    """A symbol for display only, printed by ``sympy.latex`` exactly as its name is written
    (so ``label("f'(c_j)")`` does not turn into ``f'(c_{j)}``)."""

    def _latex(self, printer):
        return self.name


def label(latex_text: str) -> Label:
    """A display-only symbol whose LaTeX is ``latex_text`` verbatim."""
    return Label(latex_text)


def eq(lhs, rhs):
    """``lhs = rhs`` for display, never evaluated to ``True``/``False``."""
    return sp.Eq(lhs, rhs, evaluate=False)


class ProofFailure(Exception):
    """A step of a derivation did not check; the message says which and why."""


@dataclass(frozen=True)
class Step:
    """One line of a derivation: what was done, the SymPy expression it produced, and
    how that line was checked (``None`` for a line that only restates or defines).
    ``latex`` overrides ``sympy.latex(expression)`` on the page (for an approximate value)."""

    explanation: str
    expression: object
    check: Optional[str] = None
    latex: Optional[str] = None


@dataclass
class Derivation:
    """The record of one derivation (one statement of the proof book).

    Attributes:
        family: the page it belongs to (``"softmax"``, ``"cross_entropy"``, ...).
        slug: a stable anchor on that page (``"softmax-jacobian"``).
        title: one line that says what is claimed.
        statement: the claim, a SymPy relation (or a string for a compound claim).
        steps: the :class:`Step` list, each carrying a SymPy expression.
        status: ``"proven (general K)"``, ``"proven (general symbols)"``,
            ``"checked K=2..8"``-style, or ``"FAILED: <reason>"``.
        general: True when proven for a general class count / general symbols.
        closed_form: the lambdified closed form (:class:`ClosedForm`) or None.
        seconds: time the derivation took (never written to the pages).
        reference: the paper or source the statement comes from.
        assumptions: the hypotheses, as Markdown strings.
        notes: Markdown paragraphs printed after the steps (e.g. a documented numeric choice).
    """

    family: str
    slug: str
    title: str
    statement: object = None
    steps: list = field(default_factory=list)
    status: str = ""
    general: bool = False
    closed_form: object = None
    seconds: float = 0.0
    reference: str = ""
    assumptions: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    scope: str = ""

    @property
    def ok(self) -> bool:
        """True when the derivation did not fail."""
        return not self.status.startswith(FAILED)


# ---- simplification helpers ------------------------------------------------------------------


def resolve_index_ranges(expr, index_ranges: dict):
    """Settle the range conditions SymPy leaves after sifting Kronecker deltas.

    ``index_ranges`` maps an index symbol ``i`` to the symbolic size ``K`` of its range,
    meaning ``0 <= i <= K - 1``.  Every relation that mentions one such index and is
    implied (or refuted) by its range is replaced by ``True`` (``False``); this is shown
    by substituting ``K = i + 1 + r`` with ``r`` a nonnegative integer, under which SymPy
    decides the relation outright.
    """
    slack = sp.Symbol("slack", integer=True, nonnegative=True)

    def settle(relation):
        for index, size in index_ranges.items():
            if index not in relation.free_symbols:
                continue
            decided = relation.subs(size, index + 1 + slack)
            if decided in (sp.true, sp.false):
                return decided
        return relation

    return expr.replace(lambda e: isinstance(e, sp.core.relational.Relational), settle)


def _fold_piecewise_safely(expr):
    """``piecewise_fold``, except across a sum whose summand has a ``Piecewise`` conditioned
    on the sum's own index (folding it out of the sum would be wrong)."""
    protected = {}

    def bound_condition(summation):
        indices = {limit[0] for limit in summation.limits}
        return any(piece.cond.free_symbols & indices
                   for piecewise in summation.function.atoms(sp.Piecewise) for piece in piecewise.args)

    for summation in sorted(expr.atoms(sp.Sum), key=sp.default_sort_key):
        if bound_condition(summation):
            protected[summation] = sp.Dummy("protected_sum")
    folded = sp.piecewise_fold(expr.xreplace(protected))
    return folded.xreplace({placeholder: summation for summation, placeholder in protected.items()})


def evaluate_sums(expr, index_ranges: dict, passes: int = 4):
    """``doit()`` (sifting the Kronecker deltas) and settle the range conditions, repeated
    until nothing changes (sifting an inner sum can expose a delta to the outer one)."""
    for _ in range(passes):
        evaluated = _fold_piecewise_safely(expr.doit())
        evaluated = _fold_piecewise_safely(resolve_index_ranges(evaluated, index_ranges))
        if evaluated == expr:
            break
        expr = evaluated
    return expr


def linearize_sums(expr):
    """Linearity of sums: ``sum_v (a f(v) + b g(v)) = a sum_v f(v) + b sum_v g(v)`` for
    ``a, b`` free of ``v``, and ``sum_{v=lo}^{hi} a = (hi - lo + 1) a``.

    Dependence on ``v`` is read from ``free_symbols``, so an inner sum that merely reuses
    the name ``v`` for its own index counts as a constant.  A sum over several indices is
    linearized innermost index first.
    """

    def over(function, limits):
        if not limits:
            return function
        (index, start, stop), outer = limits[0], limits[1:]
        total = sp.S.Zero
        for term in sp.Add.make_args(sp.expand(function)):
            constant, varying = [], []
            for factor in sp.Mul.make_args(term):
                (varying if index in factor.free_symbols else constant).append(factor)
            body = sp.Mul(*varying)
            repeated = (stop - start + 1) if not varying else sp.Sum(body, (index, start, stop))
            total += over(sp.Mul(*constant) * repeated, outer)
        return total

    return expr.replace(lambda e: isinstance(e, sp.Sum), lambda e: over(e.function, list(e.limits)))


def canonical_sum_indices(expr, depth: int = 0):
    """Rename the index of every sum to a canonical name fixed by its nesting depth, so
    that ``sum_k f(k)`` and ``sum_l f(l)`` become the same expression."""
    if isinstance(expr, sp.Sum):
        function = expr.function
        limits = []
        for offset, (index, start, stop) in enumerate(expr.limits):
            canonical = sp.Symbol(f"_sum_index_{depth + offset}", integer=True)
            function = function.xreplace({index: canonical})
            limits.append((canonical, start, stop))
        function = canonical_sum_indices(function, depth + len(limits))
        return sp.Sum(function, *limits)
    if not expr.args:
        return expr
    return expr.func(*(canonical_sum_indices(argument, depth) for argument in expr.args))


def replace_indexed(expr, base, transform):
    """Replace every ``base[...]`` in ``expr`` (bound indices included) by ``transform(base[...])``."""
    return expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == base, transform)


def impose(expr, *equalities):
    """Substitute hypotheses such as ``Eq(Sum(y[l], (l, 0, K - 1)), 1)`` into ``expr``.

    A sum in ``expr`` matches a hypothesis when both agree after renaming their indices
    canonically, so the hypothesis applies whatever the sum's index is called.
    """
    for equality in equalities:
        pattern = canonical_sum_indices(equality.lhs)
        expr = expr.replace(lambda e: isinstance(e, sp.Sum) and canonical_sum_indices(e) == pattern,
                            lambda e: equality.rhs)
    return expr


def nonnegative_by_cases(expr, known_nonnegative=()) -> bool:
    """True when ``expr >= 0`` follows from the assumptions or from facts proven earlier
    (``known_nonnegative``: expressions shown >= 0), splitting on the value (0 or 1) of
    each Kronecker delta in it when neither settles it at once."""
    if sp.simplify(expr).is_nonnegative is True:
        return True
    if any(simplifies_to_zero(expr - fact) for fact in known_nonnegative):
        return True
    deltas = sorted(expr.atoms(sp.KroneckerDelta), key=sp.default_sort_key)
    if not deltas:
        return False
    first = deltas[0]
    return all(nonnegative_by_cases(expr.xreplace({first: value}), known_nonnegative)
               for value in (sp.S.Zero, sp.S.One))


def simplifies_to_zero(expr) -> bool:
    """True when targeted simplifications bring ``expr`` to zero.

    Tries, cheapest first: ``expand``, ``factor_terms`` of the expansion (which pulls
    constants out of sums), ``cancel``/``together``, then ``simplify``.
    """
    if expr == 0:
        return True
    expr = canonical_sum_indices(expr)
    if expr == 0:
        return True
    attempts = (
        lambda e: sp.expand(e),
        lambda e: sp.factor_terms(sp.expand(e)),
        lambda e: sp.cancel(sp.together(sp.expand(e))),
        lambda e: canonical_sum_indices(sp.expand(linearize_sums(e))),
        lambda e: sp.cancel(sp.together(canonical_sum_indices(sp.expand(linearize_sums(e))))),
        lambda e: sp.simplify(e),
        lambda e: sp.simplify(sp.factor_terms(sp.expand(sp.expand_log(e)))),
    )
    for attempt in attempts:
        try:
            if attempt(expr) == 0:
                return True
        except (TypeError, ValueError, NotImplementedError):  # pragma: no cover - SymPy gaps
            continue
    return False


def is_true(relation) -> bool:
    """True when SymPy evaluates the relation (after simplification) to ``True``."""
    if relation is sp.true or relation is True:
        return True
    if isinstance(relation, sp.core.relational.Relational):
        difference = sp.simplify(relation.lhs - relation.rhs)
        if isinstance(relation, sp.GreaterThan):
            return difference.is_nonnegative is True
        if isinstance(relation, sp.StrictGreaterThan):
            return difference.is_positive is True
        if isinstance(relation, sp.LessThan):
            return difference.is_nonpositive is True
        if isinstance(relation, sp.StrictLessThan):
            return difference.is_negative is True
        if isinstance(relation, sp.Equality):
            return difference == 0
    return bool(sp.simplify(relation) is sp.true)


# ---- the proof builder -------------------------------------------------------------------------


class Proof:
    """Collects the statement, steps and checks of one derivation.

    Each ``require_*`` method adds a step and raises :class:`ProofFailure` if its check
    does not go through.
    """

    def __init__(self, family: str, slug: str, title: str, *, reference: str = "",
                 scope: str = PROVEN_GENERAL_K):
        self.record = Derivation(family=family, slug=slug, title=title, reference=reference,
                                 scope=scope)
        #: expressions proven >= 0 earlier in this proof, for every value of their symbols
        #: allowed by the symbols' assumptions; only these may justify a termwise bound
        self.facts = []

    # -- content --
    def state(self, statement, *assumptions: str):
        """The claim and its hypotheses."""
        self.record.statement = statement
        self.record.assumptions.extend(assumptions)

    def step(self, explanation: str, expression, check: Optional[str] = None, *,
             latex: Optional[str] = None):
        """A line that restates or defines (no check), or records a check made elsewhere."""
        if isinstance(expression, sp.logic.boolalg.BooleanAtom):
            raise ProofFailure(f"{explanation}: the displayed relation evaluated to {expression}; "
                               "build it unevaluated")
        self.record.steps.append(Step(explanation, expression, check, latex))
        return expression

    def approximately(self, explanation: str, exact, digits: int, check: str):
        """A line ``exact ~ value`` for a number evaluated to ``digits`` significant digits."""
        value = sp.N(exact, digits)
        return self.step(explanation, eq(exact, value), check,
                         latex=f"{sp.latex(exact)} \\approx {sp.latex(value)}")

    def note(self, markdown: str):
        """A paragraph of Markdown printed after the steps."""
        self.record.notes.append(markdown)

    def closed_form(self, closed_form):
        """Attach the lambdified closed form of the proven expression."""
        self.record.closed_form = closed_form

    # -- checks --
    def fail(self, explanation: str, detail: str = ""):
        raise ProofFailure(f"{explanation}" + (f" ({detail})" if detail else ""))

    def require_identity(self, explanation: str, lhs, rhs, *, prepare: Callable = None,
                         display=None):
        """Check ``lhs == rhs`` by simplifying ``prepare(lhs - rhs)`` to zero."""
        difference = lhs - rhs
        if prepare is not None:
            difference = prepare(difference)
        if not simplifies_to_zero(difference):
            self.fail(explanation, f"the difference does not simplify to 0: {sp.sstr(difference)}")
        if display is not None:
            return self.step(explanation, display, "difference simplifies to 0")
        if sp.latex(lhs) == sp.latex(rhs):  # SymPy's automatic evaluation already made them equal
            return self.step(explanation, rhs, "both sides evaluate to this expression")
        return self.step(explanation, eq(lhs, rhs), "difference simplifies to 0")

    def require_true(self, explanation: str, relation, *, display=None, how: str = "SymPy decides the relation"):
        """Check a relation that SymPy can decide from the symbols' assumptions."""
        if not is_true(relation):
            self.fail(explanation, f"SymPy cannot confirm {sp.sstr(relation)}")
        return self.step(explanation, display if display is not None else relation, how)

    def require_positive(self, explanation: str, expr, *, display=None):
        """Check ``expr > 0`` from the assumptions on its symbols (after ``simplify``)."""
        simplified = sp.simplify(expr)
        if simplified.is_positive is not True:
            self.fail(explanation, f"cannot show {sp.sstr(simplified)} > 0")
        shown = display if display is not None else sp.StrictGreaterThan(expr, 0, evaluate=False)
        self.facts.append(expr)
        return self.step(explanation, shown, "positive from the symbols' assumptions")

    def require_nonnegative(self, explanation: str, expr, *, display=None):
        """Check ``expr >= 0`` from the assumptions on its symbols (after ``simplify``)."""
        simplified = sp.simplify(expr)
        if simplified.is_nonnegative is not True:
            self.fail(explanation, f"cannot show {sp.sstr(simplified)} >= 0")
        shown = display if display is not None else sp.GreaterThan(expr, 0, evaluate=False)
        self.facts.append(expr)
        return self.step(explanation, shown, "nonnegative from the symbols' assumptions")

    def nonnegative_from_derivative(self, explanation: str, expr, variable, start, *, display=None):
        """Prove ``expr(variable) >= 0`` for ``variable >= start``.

        Rule (monotonicity): ``expr(start) >= 0`` and ``d expr / d variable >= 0`` for
        ``variable >= start``.  The derivative's sign is decided by SymPy after writing
        ``variable = start + u`` with ``u >= 0``.
        """
        at_start = sp.simplify(expr.subs(variable, start))
        if at_start.is_nonnegative is not True:
            self.fail(explanation, f"value at {start} is {sp.sstr(at_start)}, not shown >= 0")
        offset = sp.Symbol("u", nonnegative=True)
        derivative = sp.simplify(sp.diff(expr, variable).subs(variable, start + offset))
        if derivative.is_nonnegative is not True:
            self.fail(explanation, f"derivative {sp.sstr(derivative)} not shown >= 0")
        shown = display if display is not None else sp.GreaterThan(expr, 0, evaluate=False)
        self.step(
            explanation, shown,
            f"monotonicity: value {sp.sstr(at_start)} at {sp.sstr(start)} and derivative "
            f"{sp.sstr(sp.diff(expr, variable))} >= 0 beyond it",
        )
        self.facts.append(expr)
        return expr

    def sum_bound(self, explanation: str, lower_term, upper_term, limits, *, display=None):
        """Prove ``sum lower_term <= sum upper_term`` over ``limits`` = (index, start, stop).

        Rule (termwise bounds): the summand gap ``upper_term - lower_term`` is nonnegative
        for a general index: SymPy decides it from the assumptions, or it is a fact proven
        earlier in this proof (``self.facts``), splitting on the 0/1 value of Kronecker
        deltas where needed.
        """
        gap = upper_term - lower_term
        if not nonnegative_by_cases(gap, self.facts):
            self.fail(explanation, f"termwise gap {sp.sstr(gap)} not shown >= 0")
        relation = sp.LessThan(sp.Sum(lower_term, limits), sp.Sum(upper_term, limits), evaluate=False)
        return self.step(explanation, display if display is not None else relation,
                         "termwise bound summed over the index range")

    def instantiate(self, fact, substitution: dict):
        """Register the instance ``fact.subs(substitution)`` of a proven fact.

        A fact holds for every value of its symbols allowed by their assumptions, so each
        substituted value must carry the assumptions (positive, nonnegative, real) of the
        symbol it replaces; SymPy checks that.
        """
        if not any(simplifies_to_zero(fact - known) for known in self.facts):
            self.fail("instantiate", f"{sp.sstr(fact)} is not a proven fact")
        for symbol, value in substitution.items():
            for assumption in ("positive", "nonnegative", "real"):
                if getattr(symbol, f"is_{assumption}") and getattr(value, f"is_{assumption}") is not True:
                    self.fail("instantiate", f"{sp.sstr(value)} is not known to be {assumption} "
                                             f"like {sp.sstr(symbol)}")
        instance = fact.subs(substitution)
        self.facts.append(instance)
        return instance

    def scale_fact(self, fact, factor):
        """Register ``factor * fact`` for a proven fact and a ``factor`` SymPy shows >= 0."""
        if not any(simplifies_to_zero(fact - known) for known in self.facts):
            self.fail("scale", f"{sp.sstr(fact)} is not a proven fact")
        if sp.simplify(factor).is_nonnegative is not True:
            self.fail("scale", f"{sp.sstr(factor)} is not shown >= 0")
        product = factor * fact
        self.facts.append(product)
        return product

    def require_sign_on_interval(self, explanation: str, expr, variable, interval, *,
                                 strict: bool = False, display=None):
        """Check ``expr >= 0`` (``> 0`` when ``strict``) for ``variable`` in ``interval``:
        SymPy's ``solveset`` finds no point of the interval where it fails."""
        failing = sp.solveset(expr <= 0 if strict else expr < 0, variable, interval)
        if failing != sp.S.EmptySet:
            self.fail(explanation, f"fails on {sp.sstr(failing)}")
        relation = (sp.StrictGreaterThan if strict else sp.GreaterThan)(expr, 0, evaluate=False)
        return self.step(explanation, display if display is not None else relation,
                         f"solveset finds no counterexample in {sp.sstr(interval)}")

    def check_fixed_sizes(self, explanation: str, lhs, rhs, arguments, shapes, *, outputs=(),
                          sizes=range(2, 9), distributions=(), scalars=None, seed: int = 0,
                          tolerance: float = 1e-11):
        """An extra check beside a general proof: evaluate ``lhs`` and ``rhs`` in float64 at
        random inputs for each fixed size in ``sizes`` (every size symbol takes that value)
        and require agreement to ``tolerance`` relative to the size of ``rhs``.

        ``lhs`` is typically the unsimplified derivative straight from ``sympy.diff``
        (Kronecker deltas and all), so this checks the sifting and simplification of the
        general proof by independent arithmetic.  ``distributions`` names the ``IndexedBase``
        arguments drawn as probability vectors (positive, summing to 1 on the last axis).
        """
        import numpy as np

        from ._closed_form import ClosedForm

        difference = ClosedForm("difference", lhs - rhs, arguments, shapes, outputs=outputs)
        reference = ClosedForm("reference", rhs, arguments, shapes, outputs=outputs)
        generator = np.random.default_rng(seed)
        scalars = scalars or {}
        for size in sizes:
            values = []
            for argument in arguments:
                if isinstance(argument, sp.IndexedBase):
                    shape = (3,) + tuple(size for _ in shapes[argument])
                    if argument in distributions:
                        weights = generator.random(shape) + 0.05
                        values.append(weights / weights.sum(axis=-1, keepdims=True))
                    else:
                        values.append(generator.standard_normal(shape))
                else:
                    values.append(scalars[argument] if argument in scalars else generator.uniform(0.5, 2.0))
            error = np.max(np.abs(difference(*values)))
            scale = max(1.0, float(np.max(np.abs(reference(*values)))))
            if not error <= tolerance * scale:
                self.fail(explanation, f"size {size}: difference {error:.3g}")
        first, last = min(sizes), max(sizes)
        names = ", ".join(sorted({str(symbol) for dims in shapes.values() for symbol in dims}))
        return self.step(explanation, label(f"{names} \\in \\{{{first}, \\dots, {last}\\}}"),
                         f"extra check: float64 at random inputs for {names} = {first}..{last}, "
                         f"agreement to {tolerance:g} relative")

    def convex_tangent_line(self, explanation: str, function, variable, point, *, display=None):
        """Prove the tangent-line inequality ``f(v) >= f(p) + f'(p)(v - p)`` for all ``v``.

        Rule: a twice-differentiable ``f`` with ``f'' >= 0`` lies above its tangents
        (Taylor with the Lagrange remainder ``f''(xi)(v - p)^2 / 2 >= 0``); ``f'' >= 0`` is
        decided by SymPy.  Registers and returns the gap ``f(v) - f(p) - f'(p)(v - p)``.
        Jensen's inequality follows by summing it at ``p`` = the mean.
        """
        second = sp.simplify(sp.diff(function, variable, 2))
        if second.is_nonnegative is not True:
            self.fail(explanation, f"second derivative {sp.sstr(second)} not shown >= 0")
        slope = sp.diff(function, variable).subs(variable, point)
        tangent = function.subs(variable, point) + slope * (variable - point)
        gap = function - tangent
        shown = display if display is not None else sp.GreaterThan(gap, 0, evaluate=False)
        self.step(explanation, shown, f"convex: second derivative {sp.sstr(second)} >= 0, so f lies "
                                      "above its tangent lines")
        self.facts.append(gap)
        return gap


def derivation(family: str, slug: str, title: str, *, reference: str = "",
               scope: str = PROVEN_GENERAL_K):
    """Declare a derivation.

    The decorated body receives a :class:`Proof` and fills it (statement, steps, checks,
    closed form); the decorator turns it into a function of no arguments that runs the
    body, times it, sets the status and returns the :class:`Derivation` record.
    ``scope`` is the status on success (``"proven (general K)"``, ``proven_for("m")``, ...).
    """

    def declare(body: Callable[[Proof], None]) -> Callable[[], Derivation]:
        @functools.wraps(body)
        def derive() -> Derivation:
            proof = Proof(family, slug, title, reference=reference, scope=scope)
            started = time.perf_counter()
            try:
                body(proof)
                proof.record.status = proof.record.scope
                proof.record.general = not proof.record.scope.startswith(CHECKED_FIXED)
            except Exception as error:  # noqa: BLE001 - every failure becomes a FAILED status
                kind = "" if isinstance(error, ProofFailure) else f"{type(error).__name__}: "
                proof.record.status = f"{FAILED}: {kind}{error}"
                proof.record.general = False
            proof.record.seconds = time.perf_counter() - started
            return proof.record

        derive.derivation_info = dict(family=family, slug=slug, title=title)
        return derive

    return declare


def run_derivation(derive: Callable[[], Derivation]) -> Derivation:
    """Run one declared derivation and return its record (never raises on a failed check)."""
    return derive()
