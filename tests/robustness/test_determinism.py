"""Thread-count independence and run-to-run reproducibility of every public kernel.

docs/design.md, "Semantics at the edges": row-parallel kernels give bit-identical results for
any thread count.  Every public function runs with 1 and 2 Numba threads (the ``threads``
fixture of ``tests/conftest.py``) and twice with 2 threads, in both dtypes, on three
shapes: short rows (one row per thread), a single long row (more than one 32 KiB block:
8192 float32 or 4096 float64 classes, cut into (row, block) tasks that the threads share)
and three long rows (row by row on 1 thread, but (row, block) tasks on 2 threads, since
there are fewer rows than twice the threads: the two schedules must agree).  Every output
(loss and every gradient) must be bit-identical.

The matrix products of ``normalized_linear`` (and its backward) and
``large_margin_cross_entropy`` are NumPy's BLAS, whose threads Numba's setting does not
touch: reproducible run to run, so these functions too are bit-identical for any Numba
thread count.  Result: every public function is bit-identical, no bound needed.
"""

from __future__ import annotations

import numpy as np
import pytest

from softmaxlab import kernels
from softmaxlab.kernels._config import block_length

DTYPES = (np.float32, np.float64)
FEATURES = 8


def long_row(dtype):
    """A row length of several blocks plus a partial one (3 blocks and 5 elements)."""
    return 3 * block_length(np.dtype(dtype).itemsize) + 5


SHAPES = {
    "short-rows": lambda dtype: (6, 37),
    "one-long-row": lambda dtype: (1, long_row(dtype)),
    "three-long-rows": lambda dtype: (3, long_row(dtype)),
}


class Inputs:
    """Random inputs of one dtype and shape (rows, classes), seeded: every call the same."""

    def __init__(self, dtype, rows, classes):
        self.dtype, self.rows, self.classes = dtype, rows, classes
        self.rng = np.random.default_rng(rows * 100003 + classes)

    def array(self, shape, scale=1.0):
        return (self.rng.standard_normal(shape) * scale).astype(self.dtype)

    def logits(self):
        return self.array((self.rows, self.classes), 4.0)

    def labels(self):
        # the last class and one in the last block, so that the target lies in a later block
        labels = self.rng.integers(0, self.classes, self.rows)
        labels[-1] = self.classes - 1
        return labels

    def probabilities(self):
        return kernels.softmax(self.logits())

    def cosines(self):
        return np.tanh(self.logits())

    def features(self):
        return self.array((self.rows, FEATURES))

    def weights(self):
        return self.array((self.classes, FEATURES))


def _cross_entropy(inputs):
    target = inputs.labels()
    target[0] = -100  # an ignored row
    return {"logits": inputs.logits(), "target": target, "weight": np.linspace(0.5, 2.0, inputs.classes),
            "label_smoothing": 0.1}


def _margins(extra):
    return lambda inputs: {"cos": inputs.cosines(), "target": inputs.labels(), **extra}


def _large_margin(normalize_weights):
    return lambda inputs: {"x": inputs.features(), "W": inputs.weights(), "target": inputs.labels(), "m": 3,
                           "lambda_": 0.5, "normalize_weights": normalize_weights}


def _center(inputs):
    return {"x": inputs.features(), "target": inputs.labels(), "centers": inputs.weights()}


# (function name, label, builder of its keyword arguments); a loss and its _forward_backward
# share a builder
LOSSES = [
    ("cross_entropy", "indices", _cross_entropy),
    ("cross_entropy", "probabilities", lambda inputs: {"logits": inputs.logits(), "target": inputs.probabilities(),
                                                       "label_smoothing": 0.2}),
    ("distillation_loss", "hard", lambda inputs: {"student": inputs.logits(), "teacher": inputs.logits(),
                                                  "target": inputs.labels(), "temperature": 3.0, "alpha": 0.7}),
    ("distillation_loss", "soft", lambda inputs: {"student": inputs.logits(), "teacher": inputs.logits(),
                                                  "temperature": 0.7}),
    ("binary_cross_entropy_with_logits", "weighted",
     lambda inputs: {"logits": inputs.logits(), "target": kernels.softmax(inputs.logits()) * 0.9,
                     "weight": np.linspace(0.5, 2.0, inputs.classes), "pos_weight": np.full(inputs.classes, 3.0)}),
    ("multiclass_hinge", "margin", lambda inputs: {"logits": inputs.logits(), "target": inputs.labels(), "margin": 2.0}),
    ("smooth_hinge", "margin", lambda inputs: {"logits": inputs.logits(), "target": inputs.labels(), "margin": 0.5}),
    ("quadratic_cost", "soft", lambda inputs: {"logits": inputs.logits(), "target": inputs.probabilities()}),
    ("margin_cross_entropy", "combined", _margins({"s": 16.0, "m1": 1.0, "m2": 0.3, "m3": 0.1})),
    ("normface", "s", _margins({"s": 16.0})),
    ("cosface", "default", _margins({})),
    ("arcface", "default", _margins({})),
    ("large_margin_cross_entropy", "l-softmax", _large_margin(False)),
    ("large_margin_cross_entropy", "sphereface", _large_margin(True)),
    ("center_loss", "batch", _center),
    ("linear_cross_entropy", "every option",
     lambda inputs: {"x": inputs.features(), "linear_weight": inputs.weights(), "target": inputs.labels(),
                     "linear_bias": inputs.array((inputs.classes,)), "label_smoothing": 0.1, "z_loss": 1e-3,
                     "softcap": 20.0}),
    ("linear_margin_cross_entropy", "arcface",
     lambda inputs: {"x": inputs.features(), "linear_weight": inputs.weights(), "target": inputs.labels(),
                     "s": 64.0, "m2": 0.5}),
]
CALLS = [
    ("softmax", "x", lambda inputs: {"x": inputs.logits()}),
    ("log_softmax", "x", lambda inputs: {"x": inputs.logits()}),
    ("logsumexp", "x", lambda inputs: {"x": inputs.logits()}),
    ("softmax_backward", "y", lambda inputs: {"y": inputs.probabilities(), "dy": inputs.logits()}),
    ("log_softmax_backward", "y", lambda inputs: {"y": kernels.log_softmax(inputs.logits()), "dy": inputs.logits()}),
    ("normalized_linear", "x", lambda inputs: {"x": inputs.features(), "W": inputs.weights()}),
    ("normalized_linear_backward", "x", lambda inputs: {"x": inputs.features(), "W": inputs.weights(),
                                                        "grad_cos": inputs.logits()}),
    ("center_update", "alpha", lambda inputs: {**_center(inputs), "alpha": 0.5}),
    *LOSSES,
    *((f"{name}_forward_backward", label, builder) for name, label, builder in LOSSES),
]


def outputs(result):
    """Every output of a call as a list of arrays (a loss, or a tuple of loss and gradients)."""
    return [np.asarray(value) for value in (result if isinstance(result, tuple) else (result,))]


def assert_bit_identical(first, second):
    first, second = outputs(first), outputs(second)
    assert len(first) == len(second)
    for index, (a, b) in enumerate(zip(first, second)):
        assert a.dtype == b.dtype and a.shape == b.shape, index
        assert a.tobytes() == b.tobytes(), f"output {index} differs: max |a - b| = {np.nanmax(np.abs(a - b))}"


def test_every_public_function_is_covered():
    assert {name for name, _, _ in CALLS} == set(kernels.__all__)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda dtype: np.dtype(dtype).name)
@pytest.mark.parametrize("name, label, builder", CALLS, ids=[f"{name}-{label}" for name, label, _ in CALLS])
def test_one_and_two_threads_and_repeated_runs_are_bit_identical(threads, name, label, builder, dtype, shape):
    arguments = builder(Inputs(dtype, *SHAPES[shape](dtype)))
    function = getattr(kernels, name)
    threads(1)
    one = function(**arguments)
    threads(2)
    two = function(**arguments)
    again = function(**arguments)
    assert_bit_identical(one, two)
    assert_bit_identical(two, again)
    assert outputs(one)[0].dtype == dtype
