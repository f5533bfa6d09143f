"""Bad input for every public function of ``softmaxlab.kernels``, driven by one table.

docs/design.md, "Semantics at the edges": bad input gets a ``TypeError`` or ``ValueError`` whose
message names the argument, what was expected and what came, and inputs are never
modified.  ``SPECS`` lists each public function with a valid call and the kinds of its
arguments; ``CASES`` expands it into one case per wrong argument (wrong dtype, rank or
shape, a list or None for an array, labels out of range, parameters out of range, NaN or
inf parameters, a bad ``reduction``, ``axis`` or ``grad_output``) with the exception and
the message fragments (regular expressions) it must carry: the argument's name as a word,
what came (dtype, shape or value) and what was expected.  The API takes NumPy arrays
only: a Python list is rejected with a message that says so.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

from softmaxlab import kernels

ROWS, CLASSES, FEATURES = 3, 4, 5
LABELS = np.array([0, 3, 1])


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


def _logits():
    return _random((ROWS, CLASSES), 1)


def _cosines():
    return np.tanh(_random((ROWS, CLASSES), 2))


def _features():
    return _random((ROWS, FEATURES), 3)


def _weights():
    return _random((CLASSES, FEATURES), 4)


# ---- what a wrong value of each kind of argument must raise ---------------------------------

WRONG_DTYPES = (np.int64, np.bool_, np.float16, object, np.complex128)
# (bad value, exception, what came) for every real parameter; the message also says what is
# expected ("finite", "a real number", "an integer" for the integer parameters)
WRONG_SCALARS = (
    (math.nan, ValueError, "nan"),
    (math.inf, ValueError, "inf"),
    (-math.inf, ValueError, "-inf"),
    (10**400, ValueError, "digits"),
    ("1", TypeError, "str"),
    (None, TypeError, "NoneType"),
    (True, TypeError, "bool"),
    ([1.0], TypeError, "list"),
    (1j, TypeError, "complex"),
)
SCALAR_EXPECTED = r"finite|a real number|an integer"
ARRAY_EXPECTED = r"numpy\.ndarray"
FLOAT_EXPECTED = r"float32 or float64|dtype of \w+ \(float64\)"
NDIM_EXPECTED = r"at least 1 dimension|shape of \w+ \(|shape \(3,\)"


@dataclass(frozen=True)
class Spec:
    """A public function, a valid call (float64) and the kinds of its arguments.

    floats: float arrays (every wrong dtype, a list, None, a 0-d array); same_dtype: those
    of them that must have the first one's dtype (float32 is wrong for them); labels:
    integer class-index arrays; optional: arguments for which None is valid; scalars:
    real parameters with their out-of-range values and what the message expects;
    extra: (label, changes, exception, fragments) for the function's own cases.
    """

    function: Callable
    valid: Callable[[], dict]
    floats: tuple = ()
    same_dtype: tuple = ()
    labels: tuple = ()
    optional: tuple = ()
    scalars: dict = field(default_factory=dict)
    extra: tuple = ()
    broadcast: tuple = ()  # float arrays that broadcast: a 0-d one is valid
    soft_labels: bool = False  # float targets are class probabilities (cross_entropy)

    @property
    def parameters(self):
        return inspect.signature(self.function).parameters


@dataclass(frozen=True)
class Case:
    spec: Spec
    label: str
    changes: Callable[[dict], None]
    error: type
    fragments: tuple

    @property
    def id(self):
        return f"{self.spec.function.__name__}-{self.label}"


def _set(name, value):
    return lambda arguments: arguments.__setitem__(name, value)


def _map(name, transform):
    return lambda arguments: arguments.__setitem__(name, transform(arguments[name]))


def _both(*changes):
    def apply(arguments):
        for change in changes:
            change(arguments)

    return apply


def _word(name):
    return rf"(?<![\w.]){re.escape(name)}(?!\w)"


def _with_label(labels, row, value):
    labels = labels.copy()
    labels[row] = value
    return labels


def _float_array_cases(spec, name):
    for dtype in WRONG_DTYPES:
        dtype_name = np.dtype(dtype).name
        yield f"{name}-{dtype_name}", _map(name, lambda a, d=dtype: a.astype(d)), TypeError, (dtype_name, FLOAT_EXPECTED)
    yield f"{name}-list", _map(name, lambda a: a.tolist()), TypeError, ("list", ARRAY_EXPECTED)
    if name not in spec.optional:
        yield f"{name}-None", _set(name, None), TypeError, ("NoneType", ARRAY_EXPECTED)
    if name not in spec.broadcast:
        yield f"{name}-0d", _map(name, lambda a: np.asarray(a.ravel()[0])), ValueError, (r"\(\)", NDIM_EXPECTED)
    if name in spec.same_dtype:
        yield f"{name}-float32", _map(name, lambda a: a.astype(np.float32)), TypeError, ("float32", r"\(float64\)")


def _label_cases(spec, name):
    classes = r"\[0, 4\)"
    yield f"{name}-too-large", _map(name, lambda t: _with_label(t, 1, CLASSES)), ValueError, ("got 4", "row 1", classes)
    yield f"{name}-negative", _map(name, lambda t: _with_label(t, 1, -1)), ValueError, ("got -1", "row 1", classes)
    yield f"{name}-uint-huge", _map(name, lambda t: _with_label(t.astype(np.uint64), 2, 2**64 - 1)), ValueError, (
        "got 18446744073709551615", "row 2", classes)
    for dtype in (np.bool_, object) + (() if spec.soft_labels else (np.float64,)):
        dtype_name = np.dtype(dtype).name
        yield f"{name}-{dtype_name}", _map(name, lambda t, d=dtype: t.astype(d)), TypeError, (dtype_name, "integer")
    yield f"{name}-short", _map(name, lambda t: t[:2]), ValueError, (r"\(2,\)", r"shape \(3,\)")
    yield f"{name}-0d", _map(name, lambda t: np.asarray(t[0])), ValueError, (r"\(\)", r"shape \(3,\)")
    yield f"{name}-list", _map(name, lambda t: t.tolist()), TypeError, ("list", ARRAY_EXPECTED)
    if name not in spec.optional:
        yield f"{name}-None", _set(name, None), TypeError, ("NoneType", ARRAY_EXPECTED)


def _scalar_cases(name, out_of_range, optional=False):
    for value, error, received in WRONG_SCALARS:
        if value is None and optional:  # None is valid (linear_cross_entropy's softcap)
            continue
        yield f"{name}={received}", _set(name, value), error, (re.escape(received), SCALAR_EXPECTED)
    for value, expected in out_of_range:
        yield f"{name}={value!r}", _set(name, value), ValueError, (rf"got {re.escape(repr(value))}", expected)


def _common_cases(spec):
    """reduction, axis and grad_output, from the function's signature."""
    parameters = spec.parameters
    if "reduction" in parameters:
        yield "reduction='avg'", _set("reduction", "avg"), ValueError, ("'avg'", "'mean', 'sum', 'none'")
        yield "reduction=None", _set("reduction", None), TypeError, ("NoneType", "'mean', 'sum', 'none'")
    if "axis" in parameters:
        yield "axis=2", _set("axis", 2), ValueError, ("got 2", r"\[-2, 1\]")
        yield "axis=-3", _set("axis", -3), ValueError, ("got -3", r"\[-2, 1\]")
        for value, received in ((1.0, "float"), (True, "bool"), (None, "NoneType")):
            yield f"axis={received}", _set("axis", value), TypeError, (received, "an int")
    if "out" in parameters:
        read_only = np.zeros((ROWS, CLASSES))
        read_only.flags.writeable = False
        yield "out-list", _set("out", [[0.0] * CLASSES] * ROWS), TypeError, ("list", "numpy.ndarray")
        yield "out-wrong-shape", _set("out", np.zeros((CLASSES, ROWS))), ValueError, (r"\(4, 3\)", r"shape \(3, 4\)")
        yield "out-float32", _set("out", np.zeros((ROWS, CLASSES), np.float32)), TypeError, ("float32", "float64")
        yield "out-read-only", _set("out", read_only), ValueError, ("read-only", "writable")
    if "grad_output" in parameters:
        for value, received in (("1", "str"), (None, "NoneType"), ([1.0], "list"), (True, "bool"),
                                (np.array("1"), "<U1"), (np.array(1j), "complex128"), (np.array(True), "bool")):
            zero_d = isinstance(value, np.ndarray)
            label = f"grad_output-{'0d-' if zero_d else ''}{received}"
            received = f"0-d array of dtype {received}" if zero_d else received
            yield label, _set("grad_output", value), TypeError, (re.escape(received), "real number")
        yield "grad_output-array-for-mean", _set("grad_output", np.ones(7)), ValueError, (r"\(7,\)", "a scalar")
        yield "grad_output-wrong-shape", _both(_set("reduction", "none"), _set("grad_output", np.ones(7))), ValueError, (
            r"\(7,\)", "loss' shape")
        yield "grad_output-float16", _both(_set("reduction", "none"), _set("grad_output", np.ones(7, np.float16))), (
            TypeError), ("float16", "float32 or float64")


def _cases(spec):
    generated = []
    for name in spec.floats:
        generated += [(name, *case) for case in _float_array_cases(spec, name)]
    for name in spec.labels:
        generated += [(name, *case) for case in _label_cases(spec, name)]
    for name, out_of_range in spec.scalars.items():
        generated += [(name, *case) for case in _scalar_cases(name, out_of_range, name in spec.optional)]
    for label, change, error, fragments in _common_cases(spec):
        generated.append((label.split("=")[0].split("-")[0], label, change, error, fragments))
    for name, label, change, error, fragments in generated:
        yield Case(spec, label, change, error, (_word(name),) + fragments)
    for label, change, error, fragments in spec.extra:
        yield Case(spec, label, change, error, fragments)


# ---- the table ---------------------------------------------------------------------------------

NORMALIZER = dict(valid=lambda: {"x": _logits(), "axis": -1}, floats=("x",))
BACKWARD = dict(
    valid=lambda: {"y": _logits(), "dy": _random((ROWS, CLASSES), 5), "axis": -1},
    floats=("y", "dy"), same_dtype=("dy",),
    extra=(("dy-transposed", _map("dy", np.transpose), ValueError, (_word("dy"), r"\(4, 3\)", r"shape of y \(3, 4\)")),),
)
LOGITS_EXTRA = (
    ("logits-no-class", _set("logits", np.zeros((ROWS, 0))), ValueError,
     (_word("logits"), r"\(3, 0\)", "at least one class")),
)
CROSS_ENTROPY = dict(
    valid=lambda: {"logits": _logits(), "target": LABELS.copy(), "weight": np.linspace(0.5, 2.0, CLASSES),
                   "ignore_index": -100, "reduction": "mean", "label_smoothing": 0.1},
    floats=("logits", "weight"), labels=("target",), optional=("weight",), soft_labels=True,
    scalars={"label_smoothing": ((-0.1, ">= 0.0"), (1.5, "<= 1.0")),
             "ignore_index": ((2.5, "an integer"), (2**63, "<= 9223372036854775807"),
                              (-(2**63) - 1, ">= -9223372036854775808"))},
    extra=LOGITS_EXTRA + (
        ("weight-length", _map("weight", lambda w: np.ones(CLASSES + 1)), ValueError,
         (_word("weight"), r"\(5,\)", r"\(4,\)")),
        ("weight-2d", _map("weight", lambda w: w[None]), ValueError, (_word("weight"), r"\(1, 4\)", r"\(4,\)")),
        ("target-not-ignore-index", _both(_set("ignore_index", -1), _map("target", lambda t: _with_label(t, 1, -100))),
         ValueError, (_word("target"), "got -100", "row 1", r"ignore_index \(-1\)")),
        ("target-probabilities-shape", _set("target", np.full(ROWS, 0.25)), ValueError,
         (_word("target"), r"\(3,\)", r"shape of logits \(3, 4\)")),
        ("target-probabilities-float32", _set("target", np.full((ROWS, CLASSES), 0.25, np.float32)), TypeError,
         (_word("target"), "float32", r"dtype of logits \(float64\)")),
        ("target-probabilities-float16", _set("target", np.full((ROWS, CLASSES), 0.25, np.float16)), TypeError,
         (_word("target"), "float16", r"dtype of logits \(float64\)")),
    ),
)
DISTILLATION = dict(
    valid=lambda: {"student": _logits(), "teacher": _random((ROWS, CLASSES), 6), "target": LABELS.copy(),
                   "temperature": 2.0, "alpha": 0.5, "reduction": "mean"},
    floats=("student", "teacher"), same_dtype=("teacher",), labels=("target",), optional=("target",),
    scalars={"temperature": ((0.0, "> 0.0"), (-1.0, "> 0.0")), "alpha": ((-0.1, ">= 0.0"), (1.1, "<= 1.0"))},
    extra=(
        ("teacher-transposed", _map("teacher", np.transpose), ValueError,
         (_word("teacher"), r"\(4, 3\)", r"shape of student \(3, 4\)")),
        ("student-no-class", _both(_set("student", np.zeros((ROWS, 0))), _set("teacher", np.zeros((ROWS, 0)))),
         ValueError, (_word("student"), r"\(3, 0\)", "at least one class")),
    ),
)
BINARY = dict(
    valid=lambda: {"logits": _logits(), "target": 1.0 / (1.0 + np.exp(-_random((ROWS, CLASSES), 7))),
                   "weight": np.linspace(0.5, 2.0, CLASSES), "pos_weight": np.full(CLASSES, 3.0),
                   "reduction": "mean"},
    floats=("logits", "target", "weight", "pos_weight"), same_dtype=("target",), optional=("weight", "pos_weight"),
    broadcast=("weight", "pos_weight"),
    extra=(
        ("target-transposed", _map("target", np.transpose), ValueError,
         (_word("target"), r"\(4, 3\)", r"shape of logits \(3, 4\)")),
        ("weight-length", _set("weight", np.ones(CLASSES + 1)), ValueError,
         (_word("weight"), r"\(5,\)", r"broadcast to the logits' shape \(3, 4\)")),
        ("weight-extra-axis", _set("weight", np.ones((2, ROWS, CLASSES))), ValueError,
         (_word("weight"), r"\(2, 3, 4\)", r"broadcast to the logits' shape \(3, 4\)")),
        ("pos_weight-rows", _set("pos_weight", np.ones(ROWS)), ValueError,
         (_word("pos_weight"), r"\(3,\)", r"broadcast to the logits' shape \(3, 4\)")),
    ),
)
QUADRATIC = dict(
    valid=lambda: {"logits": _logits(), "target": np.full((ROWS, CLASSES), 0.5), "reduction": "mean"},
    floats=("logits", "target"), same_dtype=("target",),
    extra=(("target-transposed", _map("target", np.transpose), ValueError,
            (_word("target"), r"\(4, 3\)", r"shape of logits \(3, 4\)")),),
)
HINGE = dict(
    valid=lambda: {"logits": _logits(), "target": LABELS.copy(), "margin": 0.5, "reduction": "mean"},
    floats=("logits",), labels=("target",), scalars={"margin": ()}, extra=LOGITS_EXTRA,
)
FEATURES_AND_WEIGHTS_EXTRA = (
    ("W-1d", _map("W", lambda w: w[0]), ValueError, (_word("W"), r"\(5,\)", "2-D")),
    ("W-columns", _set("W", _random((CLASSES, FEATURES + 1), 8)), ValueError, (_word("W"), r"\(4, 6\)", "5 columns")),
    ("W-no-class", _set("W", np.zeros((0, FEATURES))), ValueError, (_word("W"), r"\(0, 5\)", "at least one class")),
)
NORMALIZED_LINEAR = dict(
    valid=lambda: {"x": _features(), "W": _weights()}, floats=("x", "W"), same_dtype=("W",),
    extra=FEATURES_AND_WEIGHTS_EXTRA,
)
NORMALIZED_LINEAR_BACKWARD = dict(
    valid=lambda: {"x": _features(), "W": _weights(), "grad_cos": _random((ROWS, CLASSES), 9)},
    floats=("x", "W", "grad_cos"), same_dtype=("W", "grad_cos"),
    extra=FEATURES_AND_WEIGHTS_EXTRA + (
        ("grad_cos-transposed", _map("grad_cos", np.transpose), ValueError,
         (_word("grad_cos"), r"\(4, 3\)", r"\(3, 4\)")),
    ),
)
SCALE = {"s": ((0.0, "> 0.0"), (-1.0, "> 0.0"))}
ARC_MARGIN = ((-0.1, ">= 0.0"), (3.2, "< 3.14159"))


def _margin_spec(extra_arguments, scalars):
    return dict(
        valid=lambda: {"cos": _cosines(), "target": LABELS.copy(), **extra_arguments, "reduction": "mean"},
        floats=("cos",), labels=("target",), scalars=scalars,
        extra=(("cos-no-class", _set("cos", np.zeros((ROWS, 0))), ValueError,
                (_word("cos"), r"\(3, 0\)", "at least one row and one class")),),
    )


MARGIN = _margin_spec({"s": 8.0, "m1": 1.0, "m2": 0.3, "m3": 0.1},
                      {**SCALE, "m1": ((0.0, "> 0.0"), (-1.0, "> 0.0")), "m2": ARC_MARGIN, "m3": ()})
NORMFACE = _margin_spec({"s": 8.0}, SCALE)
COSFACE = _margin_spec({"s": 8.0, "m": 0.35}, {**SCALE, "m": ()})
ARCFACE = _margin_spec({"s": 8.0, "m": 0.5}, {**SCALE, "m": ARC_MARGIN})
LARGE_MARGIN = dict(
    valid=lambda: {"x": _features(), "W": _weights(), "target": LABELS.copy(), "m": 2, "lambda_": 0.5,
                   "normalize_weights": False, "reduction": "mean"},
    floats=("x", "W"), same_dtype=("W",), labels=("target",),
    scalars={"m": ((0, "1..4"), (5, "1..4"), (-1, "1..4"), (2.5, "an integer")), "lambda_": ((-0.5, ">= 0.0"),)},
    extra=FEATURES_AND_WEIGHTS_EXTRA + (
        ("x-1d", _map("x", lambda x: x[0]), ValueError, (_word("x"), r"\(5,\)", "2-D")),
        ("x-3d", _map("x", lambda x: x[None]), ValueError, (_word("x"), r"\(1, 3, 5\)", "2-D")),
        ("x-no-row", _both(_set("x", np.zeros((0, FEATURES))), _set("target", LABELS[:0])), ValueError,
         (_word("x"), r"\(0, 5\)", "at least one row")),
        ("normalize_weights-str", _set("normalize_weights", "yes"), TypeError, (_word("normalize_weights"), "str", "a bool")),
        ("normalize_weights-int", _set("normalize_weights", 1), TypeError, (_word("normalize_weights"), "int", "a bool")),
        ("normalize_weights-None", _set("normalize_weights", None), TypeError,
         (_word("normalize_weights"), "NoneType", "a bool")),
    ),
)
CENTER_EXTRA = (
    ("centers-1d", _map("centers", lambda c: c[0]), ValueError, (_word("centers"), r"\(5,\)", "2-D")),
    ("centers-columns", _set("centers", _random((CLASSES, FEATURES + 1), 10)), ValueError,
     (_word("centers"), r"\(4, 6\)", "5 columns")),
    ("x-1d", _map("x", lambda x: x[0]), ValueError, (_word("x"), r"\(5,\)", "2-D")),
    ("x-no-row", _both(_set("x", np.zeros((0, FEATURES))), _set("target", LABELS[:0])), ValueError,
     (_word("x"), r"\(0, 5\)", "at least one row")),
)
CENTER = dict(
    valid=lambda: {"x": _features(), "target": LABELS.copy(), "centers": _weights(), "reduction": "mean"},
    floats=("x", "centers"), same_dtype=("centers",), labels=("target",), extra=CENTER_EXTRA,
)
CENTER_UPDATE = dict(
    valid=lambda: {"centers": _weights(), "x": _features(), "target": LABELS.copy(), "alpha": 0.5},
    floats=("x", "centers"), same_dtype=("centers",), labels=("target",),
    scalars={"alpha": ((-0.1, ">= 0.0"), (1.5, "<= 1.0"))}, extra=CENTER_EXTRA,
)


LINEAR_CROSS_ENTROPY = dict(
    valid=lambda: {"x": _features(), "linear_weight": _weights(), "target": LABELS.copy(),
                   "linear_bias": np.linspace(-1.0, 1.0, CLASSES), "weight": np.linspace(0.5, 2.0, CLASSES),
                   "ignore_index": -100, "reduction": "mean", "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 30.0,
                   "memory_budget": 2**20},
    floats=("x", "linear_weight", "linear_bias", "weight"), same_dtype=("linear_weight", "linear_bias"),
    labels=("target",), optional=("linear_bias", "weight", "softcap"),
    scalars={"label_smoothing": ((-0.1, ">= 0.0"), (1.5, "<= 1.0")), "z_loss": ((-1.0, ">= 0.0"),),
             "softcap": ((0.0, "> 0.0"), (-2.0, "> 0.0")), "memory_budget": ((0, ">= 1"), (1.5, "an integer"))},
    extra=(
        ("x-1d", _map("x", lambda x: x[0]), ValueError, (_word("x"), r"\(5,\)", r"\(rows, features\)")),
        ("linear_weight-features", _map("linear_weight", lambda w: w[:, :-1]), ValueError,
         (_word("linear_weight"), r"\(4, 4\)", r"\(classes, 5\)")),
        ("linear_bias-length", _map("linear_bias", lambda b: b[:-1]), ValueError,
         (_word("linear_bias"), r"\(3,\)", r"\(4,\)")),
    ),
)

LINEAR_MARGIN = dict(
    valid=lambda: {"x": _features(), "linear_weight": _weights(), "target": LABELS.copy(), "s": 8.0, "m1": 1.0,
                   "m2": 0.3, "m3": 0.1, "reduction": "mean", "memory_budget": 2**20},
    floats=("x", "linear_weight"), same_dtype=("linear_weight",), labels=("target",),
    scalars={**SCALE, "m1": ((0.0, "> 0.0"),), "m2": ARC_MARGIN, "m3": (), "memory_budget": ((0, ">= 1"),)},
    extra=(
        ("x-1d", _map("x", lambda x: x[0]), ValueError, (_word("x"), r"\(5,\)", r"\(rows, features\)")),
        ("linear_weight-columns", _set("linear_weight", _random((CLASSES, FEATURES + 1), 8)), ValueError,
         (_word("linear_weight"), r"\(4, 6\)", "5 columns")),
        ("linear_weight-zero-row", _map("linear_weight", lambda w: np.concatenate([w[:1] * 0, w[1:]])), ValueError,
         (_word("linear_weight"), "row 0", "norm 0")),
    ),
)


def _loss_pair(name, spec):
    """The loss and its ``_forward_backward`` share a spec (the latter also takes grad_output)."""
    return [Spec(getattr(kernels, name), **spec), Spec(getattr(kernels, f"{name}_forward_backward"), **spec)]


SPECS = [
    *(Spec(getattr(kernels, name), **NORMALIZER) for name in ("softmax", "log_softmax", "logsumexp")),
    *(Spec(getattr(kernels, name), **BACKWARD) for name in ("softmax_backward", "log_softmax_backward")),
    *_loss_pair("cross_entropy", CROSS_ENTROPY),
    *_loss_pair("distillation_loss", DISTILLATION),
    *_loss_pair("binary_cross_entropy_with_logits", BINARY),
    *_loss_pair("multiclass_hinge", HINGE),
    *_loss_pair("smooth_hinge", HINGE),
    *_loss_pair("quadratic_cost", QUADRATIC),
    Spec(kernels.normalized_linear, **NORMALIZED_LINEAR),
    Spec(kernels.normalized_linear_backward, **NORMALIZED_LINEAR_BACKWARD),
    *_loss_pair("margin_cross_entropy", MARGIN),
    *_loss_pair("normface", NORMFACE),
    *_loss_pair("cosface", COSFACE),
    *_loss_pair("arcface", ARCFACE),
    *_loss_pair("large_margin_cross_entropy", LARGE_MARGIN),
    *_loss_pair("center_loss", CENTER),
    Spec(kernels.center_update, **CENTER_UPDATE),
    *_loss_pair("linear_cross_entropy", LINEAR_CROSS_ENTROPY),
    *_loss_pair("linear_margin_cross_entropy", LINEAR_MARGIN),
]
CASES = [case for spec in SPECS for case in _cases(spec)]


def _snapshot(arguments):
    """Deep copies of the array and list arguments, to check that nothing was written."""
    return {name: (value.copy() if isinstance(value, np.ndarray) else value) for name, value in arguments.items()
            if isinstance(value, (np.ndarray, list))}


def _assert_unchanged(arguments, snapshot):
    for name, before in snapshot.items():
        after = arguments[name]
        if isinstance(before, np.ndarray):
            assert after.dtype == before.dtype and after.shape == before.shape, name
            assert after.tobytes() == before.tobytes(), f"{name} was modified"
        else:
            assert after == before, f"{name} was modified"


def test_every_public_function_has_cases():
    covered = {spec.function.__name__ for spec in SPECS}
    assert covered == set(kernels.__all__)
    assert len(kernels.__all__) == 36


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.function.__name__)
def test_the_valid_call_of_the_table_works_and_modifies_nothing(spec):
    arguments = spec.valid()
    snapshot = _snapshot(arguments)
    spec.function(**arguments)
    _assert_unchanged(arguments, snapshot)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_raises_a_clear_error_and_modifies_nothing(case):
    arguments = case.spec.valid()
    case.changes(arguments)
    snapshot = _snapshot(arguments)
    with pytest.raises(case.error) as raised:
        case.spec.function(**arguments)
    assert type(raised.value) is case.error, f"{type(raised.value).__name__}: {raised.value}"
    message = str(raised.value)
    for fragment in case.fragments:
        assert re.search(fragment, message), f"{fragment!r} not in {message!r}"
    _assert_unchanged(arguments, snapshot)


@pytest.mark.parametrize("function", [kernels.cross_entropy_forward_backward, kernels.center_loss_forward_backward])
@pytest.mark.parametrize("grad_output", [math.nan, math.inf])
def test_a_non_finite_grad_output_is_data_and_propagates(function, grad_output):
    # grad_output is the upstream gradient (data, like an array grad_output for "none"), not a
    # parameter: NaN or inf is not rejected, it reaches the gradient as IEEE arithmetic says
    spec = next(spec for spec in SPECS if spec.function is function)
    gradient = function(**spec.valid(), grad_output=grad_output)[1]
    assert not np.isfinite(gradient).any()
