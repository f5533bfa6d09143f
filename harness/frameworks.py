"""Optional frameworks (torch, jax, pytorch-metric-learning): lazy imports, one-line skips.

Nothing here imports a framework at module import time: ``softmaxlab derive`` and the
kernels' own tests must not need torch or jax.  A provider whose framework is missing
(or fails to import) is skipped with one printed line per provider and process, never a
traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import numpy as np

_IMPORT_ERRORS: dict[str, str | None] = {}
_REPORTED_SKIPS: set[str] = set()
_JIT_CACHE: dict = {}


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


def as_numpy(result):
    """A framework result (tensor, jax array, tuple of them) as NumPy array(s)."""
    if isinstance(result, (tuple, list)):
        return tuple(as_numpy(item) for item in result)
    if hasattr(result, "detach"):  # torch.Tensor
        return result.detach().cpu().numpy()
    return np.asarray(result)


# ---- torch ---------------------------------------------------------------------------------


def torch_module():
    import torch

    return torch


# ---- jax -----------------------------------------------------------------------------------


def jax_module():
    import jax

    return jax


def jax_precision(dtype):
    """Context in which JAX keeps float64 as float64 (``jax.enable_x64``), only for float64.

    The flag is scoped instead of set globally so that other JAX users in the same
    process (the test suite) keep JAX's default float32 semantics.
    """
    if np.dtype(dtype) == np.float64:
        return jax_module().enable_x64(True)
    return contextlib.nullcontext()


def jax_jit(name: str, function):
    """``jax.jit(function)``, created once per name so every call shares its compile cache."""
    if name not in _JIT_CACHE:
        _JIT_CACHE[name] = jax_module().jit(function)
    return _JIT_CACHE[name]
