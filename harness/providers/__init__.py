"""The providers: every framework call of the harness, one module per framework.

* ``softmaxlab.py``  the public kernels, called on the registry's inputs;
* ``torch.py``       PyTorch (forward under no_grad or autograd.grad for gradients);
* ``jax.py``         ``jax.jit`` of ``jax.nn`` compositions, awaited with ``block_until_ready``;
* ``numpy.py``       the textbook stable formulas, and the naive ones (no max shift);
* ``pml.py``         pytorch-metric-learning's margin losses.

Each module builds ``prepare(inputs) -> run`` functions (see ``registry/core.py``,
:class:`Implementation`): ``prepare`` does the untimed work (conversions, forward passes)
and ``run()`` the timed call.  Nothing here imports a framework at module import time:
``softmaxlab derive`` and the kernels' own tests must not need torch or jax.  A provider
whose framework is missing (or fails to import) is skipped with one printed line per
provider and process (:func:`missing_requirement`, :func:`report_skip`), never a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import numpy as np

_IMPORT_ERRORS: dict[str, str | None] = {}
_REPORTED_SKIPS: set[str] = set()


def missing_requirement(modules: tuple[str, ...]) -> str | None:
    """None if every module imports, else a one-line reason naming the first that does not."""
    for module in modules:
        if module not in _IMPORT_ERRORS:
            try:
                importlib.import_module(module)
                _IMPORT_ERRORS[module] = None
            except Exception as error:  # a broken install must skip, not crash the run
                _IMPORT_ERRORS[module] = f"{type(error).__name__}: {error}".splitlines()[0]
        if _IMPORT_ERRORS[module] is not None:
            return f"{module} not importable ({_IMPORT_ERRORS[module]})"
    return None


def report_skip(provider: str, reason: str, stream=None) -> None:
    """Print ``skipping provider <name>: <reason>`` once per provider and process."""
    if provider in _REPORTED_SKIPS:
        return
    _REPORTED_SKIPS.add(provider)
    print(f"softmaxlab: skipping provider {provider!r}: {reason}", file=stream or sys.stderr)


# the device the torch provider puts its tensors on while preparing a call (``on_device``)
_DEVICE = ["cpu"]


@contextlib.contextmanager
def on_device(name: str):
    """Within: the torch provider's ``tensor()`` puts the inputs on device ``name`` ("cpu", "cuda")."""
    _DEVICE.append(name)
    try:
        yield
    finally:
        _DEVICE.pop()


def current_device() -> str:
    return _DEVICE[-1]


def as_numpy(result):
    """A framework result (tensor, jax array, tuple of them) as NumPy array(s)."""
    if isinstance(result, (tuple, list)):
        return tuple(as_numpy(item) for item in result)
    if hasattr(result, "detach"):  # torch.Tensor
        return result.detach().cpu().numpy()
    return np.asarray(result)
