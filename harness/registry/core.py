"""What a registry entry is: :class:`Operation`, :class:`Implementation`, :class:`Cost`, and the checks.

An entry (:class:`Operation`) holds

* ``kernel``: the public name, e.g. ``"softmax_backward"``; ``op`` and ``mode`` are how
  the tables group it (``op="softmax"``, ``mode="backward"``; modes: forward, backward,
  forward_backward).  A variant (``VARIANTS``) is named ``<kernel>[<what differs>]``.
* ``make_inputs(regime, shape, dtype, seed) -> dict``: the keyword inputs (NumPy
  arrays, names as in the kernel's signature) for an input regime of ``regimes.py``, a
  (rows, classes) shape and a dtype.  Deterministic in its arguments.
* ``exact(inputs, engine) -> tuple[Exact, ...]``: the exact value of each output named
  in ``outputs`` (from ``softmaxlab.harness.exact``; ``engine`` is "auto", "mpmath-50" or
  "longdouble"; raise ``NotImplementedError`` for an engine you do not provide).
* ``scales(inputs, engine) -> tuple[ndarray | None, ...]`` (optional): the term
  magnitudes of each output, float64 arrays of the output's shape (None for an output
  without one), from which the accuracy run computes the condition-aware error
  (``metrics.py``); the functions live beside the exact references, in
  ``softmaxlab.harness.exact``.  ``None`` (the default): no output has one.
* ``cost((rows, classes)) -> Cost``: elements read and written once and exponentials, for
  the bytes/s and roofline columns of the speed table.
* ``implementations``: one :class:`Implementation` per provider, built by the provider
  modules (``softmaxlab.harness.providers``).  ``prepare(inputs)`` does everything that
  must not be timed (conversion to tensors or device arrays, the forward pass of a
  backward operation) and returns a zero-argument ``run`` whose call is what gets timed
  and whose result (array, tensor, or tuple, one per output) gets compared.
  ``requires`` lists the modules it needs; a missing one skips the provider with one
  printed line.  ``timed=False`` keeps an implementation out of the speed runs.
* ``regimes`` (the accuracy sweep's; empty for a timing-only variant), ``bench_shapes``
  and ``smoke_shapes`` (rows, classes, dtype).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .. import regimes
from ..metrics import Exact

MODES = ("forward", "backward", "forward_backward")
PROVIDERS = ("softmaxlab", "torch", "jax", "numpy", "numpy_naive", "pml", "torch_chunked", "cce")

# Benchmark shapes: (rows, classes, dtype).  The normalizers' matrix (docs/design.md, "Input regimes").
NORMALIZER_BENCH_SHAPES = (
    (4096, 1000, "float32"),
    (512, 32000, "float32"),
    (64, 262144, "float32"),
    (1, 4194304, "float32"),
    (4096, 1000, "float64"),
)
# The margin losses' matrix (10575 classes: CASIA-WebFace's identities, derivations/bounds.py).
MARGIN_BENCH_SHAPES = ((512, 10575, "float32"), (256, 93431, "float32"))
# What the normal test suite runs with benchmarks disabled: tiny, odd, float32 only (every
# kernel compiles once per dtype; float64 is exercised by the accuracy tests).
SMOKE_BENCH_SHAPES = ((5, 37, "float32"),)


@dataclass(frozen=True)
class Cost:
    """Work of one call: elements read once, elements written once, exponentials, matrix products.

    The speed table counts bytes as (read + written) * itemsize: every input read once
    and every output written once, the minimum any implementation must move.
    ``matmuls`` lists the matrix products (m, k, n) an implementation cannot avoid
    (``x W^T`` and, with the gradient, ``G W`` and ``G^T x``): their time on this machine
    is the third roofline, ``limit:matmul`` (``roofline.py``).
    """

    read_elements: int
    written_elements: int
    exp_count: int
    matmuls: tuple = ()

    def bytes_moved(self, dtype) -> int:
        return (self.read_elements + self.written_elements) * np.dtype(dtype).itemsize

    @property
    def matmul_flops(self) -> int:
        return sum(2 * m * k * n for m, k, n in self.matmuls)


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
    scales: Callable[[Mapping[str, np.ndarray], str], tuple] | None = field(default=None, compare=False)

    def output_scales(self, inputs: Mapping[str, np.ndarray], engine: str) -> tuple:
        """The term magnitudes of each output (``scales``), None for those without one."""
        if self.scales is None:
            return (None,) * len(self.outputs)
        values = tuple(self.scales(inputs, engine))
        if len(values) != len(self.outputs):
            raise ValueError(f"scales of {self.kernel!r} gave {len(values)} arrays, the entry names "
                             f"{len(self.outputs)} outputs")
        return values

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(implementation.provider for implementation in self.implementations)

    def implementation(self, provider: str) -> Implementation:
        for implementation in self.implementations:
            if implementation.provider == provider:
                return implementation
        raise KeyError(f"provider {provider!r} has no implementation of {self.kernel!r} (has {self.providers})")


def check_operation(operation: Operation, taken) -> None:
    """ValueError naming the field when ``operation`` is malformed or its name is in ``taken``."""
    if operation.kernel in taken:
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


def forward_and_fused(name: str):
    """(kernel, mode, with_gradient) of a loss and of its ``*_forward_backward``, in that order."""
    return ((name, "forward", False), (f"{name}_forward_backward", "forward_backward", True))
