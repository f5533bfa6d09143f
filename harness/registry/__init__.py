"""THE registry: every public kernel -> its implementations, inputs, exact reference and cost.

One entry per public function of ``softmaxlab.kernels`` (``__all__``).  The accuracy run
(``softmaxlab accuracy``), the timings (``softmaxlab bench``), the bit-identity check
(``benchmarks/output_hashes.py``) and the tests (``tests/harness``) all read
:data:`REGISTRY`; no reference or framework call is written anywhere else: the exact
references are ``softmaxlab.harness.exact``, the framework calls
``softmaxlab.harness.providers``, and the entry modules only wire kernels to them.

* ``core.py``         :class:`Operation`, :class:`Implementation`, :class:`Cost` (what an
  entry holds, documented there) and the shape tables;
* ``normalizers.py``  softmax, log_softmax, logsumexp and their backward kernels;
* ``losses.py``       cross-entropy, distillation, the sigmoid losses, the hinges;
* ``margins.py``      normalized_linear, the margin losses, L-Softmax / SphereFace, center loss;
* ``linear.py``       the fused linear cross-entropy and the fused margin loss (ArcFace on x W^T's cosines).

Order: the entry modules in :data:`ENTRY_MODULES`' order, each module's ``ENTRIES`` in
their own order; the entry modules import only ``core`` (never this package), so the
order is the same whichever module a caller imports first (a test imports them in
another order in a fresh interpreter and compares).

:data:`VARIANTS` holds entries that differ from a registry entry by an option or a path
(``cross_entropy_forward_backward[label_smoothing=0.1]``, the margin losses
``[from_embeddings]``): they are not public kernels, so the default runs and the
bit-identity check leave them out; :func:`select` returns them when named (``softmaxlab
bench --kernels NAME``, ``softmaxlab accuracy --kernels NAME``).

Adding a kernel: write its exact reference in ``softmaxlab/harness/exact/``, its framework
calls in ``softmaxlab/harness/providers/``, and add one :class:`Operation` to the
``ENTRIES`` of its family's module.  Nothing else needs to change: the accuracy table, the
speed table, the plots and the smoke benchmarks pick the entry up.  A test fails when a
public kernel has no entry.
"""

from __future__ import annotations

from . import linear, losses, margins, normalizers
from .core import (
    MARGIN_BENCH_SHAPES,
    MODES,
    NORMALIZER_BENCH_SHAPES,
    PROVIDERS,
    SMOKE_BENCH_SHAPES,
    Cost,
    Implementation,
    Operation,
    check_operation,
)
from .normalizers import logit_and_gradient_inputs, logit_inputs

ENTRY_MODULES = (normalizers, losses, margins, linear)

REGISTRY: dict[str, Operation] = {}
VARIANTS: dict[str, Operation] = {}


def register(operation: Operation) -> Operation:
    """Add ``operation`` to :data:`REGISTRY`, checking the entry's shape (ValueError names the field)."""
    check_operation(operation, REGISTRY)
    REGISTRY[operation.kernel] = operation
    return operation


for _module in ENTRY_MODULES:
    for _operation in _module.ENTRIES:
        register(_operation)
    for _operation in getattr(_module, "VARIANTS", ()):
        check_operation(_operation, {**REGISTRY, **VARIANTS})
        VARIANTS[_operation.kernel] = _operation


def select(names=None, registry: dict | None = None) -> dict:
    """The entries called ``names`` (registry entries or variants), in the registry's order then the variants';
    all of ``registry`` (default :data:`REGISTRY`) when ``names`` is None.  ValueError names unknown ones."""
    registry = REGISTRY if registry is None else registry
    if names is None:
        return dict(registry)
    known = {**registry, **VARIANTS} if registry is REGISTRY else dict(registry)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"kernels must be registry names {sorted(registry)} or variants {sorted(VARIANTS)}, "
                         f"got unknown {unknown}")
    return {name: entry for name, entry in known.items() if name in names}


__all__ = [
    "REGISTRY", "VARIANTS", "ENTRY_MODULES", "register", "select", "Operation", "Implementation", "Cost",
    "MODES", "PROVIDERS", "NORMALIZER_BENCH_SHAPES", "MARGIN_BENCH_SHAPES", "SMOKE_BENCH_SHAPES",
    "logit_inputs", "logit_and_gradient_inputs",
]
