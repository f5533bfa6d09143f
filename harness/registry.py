"""THE registry: every public kernel -> its implementations, inputs, exact reference and cost.

One entry per public function of ``softmaxlab.kernels`` (``__all__``).  The accuracy run
(``softmaxlab accuracy``), the pytest-benchmark timings (``harness/benchmarks.py``,
``softmaxlab bench``) and the tests (``tests/harness``) all read :data:`REGISTRY`; no
reference or framework call is written anywhere else.  A test fails when a public kernel
has no entry.

An entry (:class:`Operation`) holds

* ``kernel``: the public name, e.g. ``"softmax_backward"``; ``op`` and ``mode`` are how
  the tables group it (``op="softmax"``, ``mode="backward"``; modes: forward, backward,
  forward_backward).
* ``make_inputs(regime, shape, dtype, seed) -> dict``: the keyword inputs (NumPy
  arrays, names as in the kernel's signature) for an input regime of ``regimes.py``, a
  (rows, classes) shape and a dtype.  Deterministic in its arguments.
* ``exact(inputs, engine) -> tuple[Exact, ...]``: the exact value of each output named
  in ``outputs`` (see ``exact.py``; ``engine`` is "auto", "mpmath-50" or "longdouble";
  raise ``NotImplementedError`` for an engine you do not provide).
* ``cost((rows, classes)) -> Cost``: elements read and written once and exponentials, for
  the bytes/s and roofline columns of the speed table.
* ``implementations``: one :class:`Implementation` per provider.  ``prepare(inputs)``
  does everything that must not be timed (conversion to tensors or device arrays, the
  forward pass of a backward operation) and returns a zero-argument ``run`` whose call is
  what gets timed and whose result (array, tensor, or tuple, one per output) gets
  compared.  ``requires`` lists the modules it needs; a missing one skips the provider
  with one printed line.  ``timed=False`` keeps an implementation out of the speed runs.

Providers: ``softmaxlab`` (required in every entry), ``torch``, ``jax`` (``jax.jit``,
results awaited with ``block_until_ready``), ``numpy`` (the textbook stable formula),
``numpy_naive`` (no max shift: ``exp(x) / sum(exp(x))``, seed 003's formula, to show
where it overflows) and, for the margin losses, ``pml`` (pytorch-metric-learning).

Adding a kernel (e.g. ``cross_entropy``): write its exact reference next to the others
(``exact.py``), then one call::

    register(Operation(
        kernel="cross_entropy", op="cross_entropy", mode="forward", outputs=("loss",),
        make_inputs=cross_entropy_inputs,           # regime, shape, dtype, seed -> dict
        exact=lambda inputs, engine: (exact.cross_entropy(**inputs, engine=engine),),
        cost=lambda shape: Cost(read_elements=shape[0] * shape[1], written_elements=1,
                                exp_count=shape[0] * shape[1]),
        implementations=(
            Implementation("softmaxlab", lambda inputs: partial(kernels.cross_entropy, **inputs)),
            Implementation("torch", _torch_cross_entropy, requires=("torch",)),
        ),
        bench_shapes=MARGIN_BENCH_SHAPES,           # optional; default: the normalizers' matrix
    ))

``cross_entropy_forward_backward`` is its own entry (mode "forward_backward", outputs
``("loss", "dlogits")``).  Nothing else needs to change: the accuracy table, the speed
table, the plots and the smoke benchmarks pick the entry up.  A family with many entries
may keep them in a module of its own, imported at the end of this file (as
``registry_margins`` is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from softmaxlab import kernels

from . import exact, regimes
from .frameworks import jax_jit, jax_module, jax_precision, torch_module
from .metrics import Exact

MODES = ("forward", "backward", "forward_backward")
PROVIDERS = ("softmaxlab", "torch", "jax", "numpy", "numpy_naive", "pml")

# Benchmark shapes: (rows, classes, dtype).  DESIGN.md's matrix for the normalizers.
NORMALIZER_BENCH_SHAPES = (
    (4096, 1000, "float32"),
    (512, 32000, "float32"),
    (64, 262144, "float32"),
    (1, 4194304, "float32"),
    (4096, 1000, "float64"),
)
# The margin losses' matrix (for their entries, when they land).
MARGIN_BENCH_SHAPES = ((512, 10575, "float32"), (256, 93431, "float32"))
# What the normal test suite runs with benchmarks disabled: tiny, odd, float32 only (every
# kernel compiles once per dtype; float64 is exercised by the accuracy tests).
SMOKE_BENCH_SHAPES = ((5, 37, "float32"),)


@dataclass(frozen=True)
class Cost:
    """Work of one call: elements read once, elements written once, exponentials.

    The speed table counts bytes as (read + written) * itemsize: every input read once
    and every output written once, the minimum any implementation must move.
    """

    read_elements: int
    written_elements: int
    exp_count: int

    def bytes_moved(self, dtype) -> int:
        return (self.read_elements + self.written_elements) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class Implementation:
    """One provider's implementation of an operation (see the module docstring)."""

    provider: str
    prepare: Callable[[Mapping[str, np.ndarray]], Callable[[], object]]
    requires: tuple[str, ...] = ()
    timed: bool = True
    description: str = ""


@dataclass(frozen=True)
class Operation:
    """A registry entry: one public kernel and everything the harness needs about it."""

    kernel: str
    op: str
    mode: str
    outputs: tuple[str, ...]
    make_inputs: Callable[[str, tuple[int, int], object, int], dict]
    exact: Callable[[Mapping[str, np.ndarray], str], tuple[Exact, ...]]
    cost: Callable[[tuple[int, int]], Cost]
    implementations: tuple[Implementation, ...]
    regimes: tuple[str, ...] = regimes.REGIMES
    bench_shapes: tuple[tuple[int, int, str], ...] = NORMALIZER_BENCH_SHAPES
    smoke_shapes: tuple[tuple[int, int, str], ...] = SMOKE_BENCH_SHAPES
    description: str = field(default="", compare=False)

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(implementation.provider for implementation in self.implementations)

    def implementation(self, provider: str) -> Implementation:
        for implementation in self.implementations:
            if implementation.provider == provider:
                return implementation
        raise KeyError(f"provider {provider!r} has no implementation of {self.kernel!r} (has {self.providers})")


REGISTRY: dict[str, Operation] = {}


def register(operation: Operation) -> Operation:
    """Add ``operation`` to :data:`REGISTRY`, checking the entry's shape (ValueError names the field)."""
    if operation.kernel in REGISTRY:
        raise ValueError(f"kernel {operation.kernel!r} is already registered")
    if operation.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {operation.mode!r} for {operation.kernel!r}")
    if not operation.outputs:
        raise ValueError(f"outputs must name at least one output of {operation.kernel!r}")
    providers = operation.providers
    if len(set(providers)) != len(providers):
        raise ValueError(f"implementations of {operation.kernel!r} repeat a provider: {providers}")
    if "softmaxlab" not in providers:
        raise ValueError(f"implementations of {operation.kernel!r} must include 'softmaxlab', got {providers}")
    unknown = set(providers) - set(PROVIDERS)
    if unknown:
        raise ValueError(f"implementations of {operation.kernel!r} name unknown providers {sorted(unknown)}; known: {PROVIDERS}")
    REGISTRY[operation.kernel] = operation
    return operation


# ---- inputs ---------------------------------------------------------------------------------


def logit_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"x": logits of ``regime``} (the forward normalizers)."""
    return {"x": regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed))}


def logit_and_gradient_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"x": logits, "dy": upstream gradient}; ``x`` equals :func:`logit_inputs`' ``x``."""
    inputs = logit_inputs(regime, shape, dtype, seed)
    inputs["dy"] = regimes.upstream_gradient(shape, dtype, regimes.rng_for(regime, shape, dtype, seed, "dy"))
    return inputs


def _elementwise_cost(exps: bool):
    def cost(shape):
        elements = shape[0] * shape[1]
        return Cost(read_elements=elements, written_elements=elements, exp_count=elements if exps else 0)

    return cost


def _row_reduction_cost(shape):
    elements = shape[0] * shape[1]
    return Cost(read_elements=elements, written_elements=shape[0], exp_count=elements)


def _backward_cost(exps: bool):
    def cost(shape):
        elements = shape[0] * shape[1]
        return Cost(read_elements=2 * elements, written_elements=elements, exp_count=elements if exps else 0)

    return cost


# ---- NumPy formulas (the "numpy" and "numpy_naive" providers) ------------------------------


def _numpy_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    exps = np.exp(shifted)
    return exps / exps.sum(axis=-1, keepdims=True)


def _numpy_log_softmax(x):
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _numpy_logsumexp(x):
    largest = x.max(axis=-1)
    return largest + np.log(np.exp(x - largest[..., None]).sum(axis=-1))


def _naive_softmax(x):
    exps = np.exp(x)
    return exps / exps.sum(axis=-1, keepdims=True)


def _naive_log_softmax(x):
    return np.log(_naive_softmax(x))


def _naive_logsumexp(x):
    return np.log(np.exp(x).sum(axis=-1))


def _numpy_softmax_backward(y, dy):
    return y * (dy - (y * dy).sum(axis=-1, keepdims=True))


def _numpy_log_softmax_backward(y, dy):
    return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)


def _quiet(function):
    """Run a NumPy formula with floating-point warnings off (overflow is the point of naive)."""

    def run(*args):
        with np.errstate(all="ignore"):
            return function(*args)

    return run


# ---- providers of the normalizers ----------------------------------------------------------
#
# Each ``*_forward`` / ``*_backward`` function below builds the ``prepare`` of one provider.


def _softmaxlab_forward(kernel):
    def prepare(inputs):
        x = inputs["x"]
        return lambda: kernel(x)

    return prepare


def _softmaxlab_backward(forward, backward):
    def prepare(inputs):
        y = forward(inputs["x"])
        dy = inputs["dy"]
        return lambda: backward(y, dy)

    return prepare


def _numpy_forward(formula):
    return _softmaxlab_forward(_quiet(formula))


def _numpy_backward(forward, backward):
    return _softmaxlab_backward(_quiet(forward), _quiet(backward))


def _torch_forward(name):
    """torch.softmax / torch.log_softmax / torch.logsumexp on ``torch.from_numpy(x)``, dim -1."""

    def prepare(inputs):
        torch = torch_module()
        function = getattr(torch, name)
        x = torch.from_numpy(inputs["x"])
        return lambda: function(x, -1)

    return prepare


def _torch_backward(name):
    """torch.autograd.grad of torch.<name>(x) with upstream dy (graph built once, kept)."""

    def prepare(inputs):
        torch = torch_module()
        x = torch.from_numpy(inputs["x"].copy()).requires_grad_(True)
        y = getattr(torch, name)(x, -1)
        dy = torch.from_numpy(inputs["dy"])
        return lambda: torch.autograd.grad(y, x, dy, retain_graph=True)[0]

    return prepare


def _jax_function(name):
    jax = jax_module()
    return {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax, "logsumexp": jax.nn.logsumexp}[name]


def _jax_forward(name):
    """jax.jit(jax.nn.<name>) on a device array put there in prepare."""

    def prepare(inputs):
        jax = jax_module()
        x = inputs["x"]
        with jax_precision(x.dtype):
            device_x = jax.device_put(x)
        function = jax_jit(name, lambda values: _jax_function(name)(values, axis=-1))

        def run():
            with jax_precision(x.dtype):
                return function(device_x).block_until_ready()

        return run

    return prepare


def _jax_backward(name):
    """The jitted VJP of jax.nn.<name> at x (from ``jax.vjp``, residuals computed in prepare)."""

    def prepare(inputs):
        jax = jax_module()
        x = inputs["x"]
        with jax_precision(x.dtype):
            device_x = jax.device_put(x)
            device_dy = jax.device_put(inputs["dy"])
            _, pullback = jax.vjp(lambda values: _jax_function(name)(values, axis=-1), device_x)
        apply_pullback = jax_jit("vjp", lambda pullback, upstream: pullback(upstream)[0])

        def run():
            with jax_precision(x.dtype):
                return apply_pullback(pullback, device_dy).block_until_ready()

        return run

    return prepare


# ---- the entries ------------------------------------------------------------------------------

def _register_normalizer(name, output, exact_value, cost, numpy_function, naive_function):
    """One forward normalizer: softmaxlab, torch, JAX, and NumPy (stable and naive)."""
    register(
        Operation(
            kernel=name,
            op=name,
            mode="forward",
            outputs=(output,),
            make_inputs=logit_inputs,
            exact=lambda inputs, engine: (exact_value(inputs["x"], engine),),
            cost=cost,
            implementations=(
                Implementation("softmaxlab", _softmaxlab_forward(getattr(kernels, name))),
                Implementation("torch", _torch_forward(name), requires=("torch",)),
                Implementation("jax", _jax_forward(name), requires=("jax",)),
                Implementation("numpy", _numpy_forward(numpy_function), timed=False),
                Implementation("numpy_naive", _numpy_forward(naive_function), timed=False),
            ),
        )
    )


def _register_normalizer_backward(op, exact_vjp, cost, forwards, numpy_backward):
    """The VJP of a normalizer, from its output: ``forwards`` = (stable, naive) NumPy forwards."""
    register(
        Operation(
            kernel=f"{op}_backward",
            op=op,
            mode="backward",
            outputs=("dx",),
            make_inputs=logit_and_gradient_inputs,
            exact=lambda inputs, engine: (exact_vjp(inputs["x"], inputs["dy"], engine),),
            cost=cost,
            implementations=(
                Implementation(
                    "softmaxlab", _softmaxlab_backward(getattr(kernels, op), getattr(kernels, f"{op}_backward"))
                ),
                Implementation("torch", _torch_backward(op), requires=("torch",)),
                Implementation("jax", _jax_backward(op), requires=("jax",)),
                Implementation("numpy", _numpy_backward(forwards[0], numpy_backward), timed=False),
                Implementation("numpy_naive", _numpy_backward(forwards[1], numpy_backward), timed=False),
            ),
            description=f"dx = J^T dy at x; softmaxlab and numpy from y = {op}(x) (computed in prepare)",
        )
    )


_register_normalizer("softmax", "y", exact.softmax, _elementwise_cost(exps=True), _numpy_softmax, _naive_softmax)
_register_normalizer(
    "log_softmax", "y", exact.log_softmax, _elementwise_cost(exps=True), _numpy_log_softmax, _naive_log_softmax
)
_register_normalizer("logsumexp", "lse", exact.logsumexp, _row_reduction_cost, _numpy_logsumexp, _naive_logsumexp)
_register_normalizer_backward(
    "softmax", exact.softmax_vjp, _backward_cost(exps=False), (_numpy_softmax, _naive_softmax), _numpy_softmax_backward
)
_register_normalizer_backward(
    "log_softmax",
    exact.log_softmax_vjp,
    _backward_cost(exps=True),
    (_numpy_log_softmax, _naive_log_softmax),
    _numpy_log_softmax_backward,
)


# ---- entries kept in their own modules (one line each) -------------------------------------
from . import registry_losses  # noqa: E402,F401  (cross-entropy, distillation, sigmoid, classic losses)
from . import registry_margins  # noqa: E402,F401  (normalized_linear, the margin losses, center loss)
