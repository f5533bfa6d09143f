"""The harness from Python: check your own implementation, time it beside the others, as pandas DataFrames.

    >>> import numpy as np
    >>> from softmaxlab.harness import check_accuracy
    >>> def my_softmax(x, axis=-1):
    ...     e = np.exp(x - x.max(axis=axis, keepdims=True))
    ...     return e / e.sum(axis=axis, keepdims=True)
    >>> rows = check_accuracy(my_softmax, kernel="softmax", providers=("softmaxlab",),
    ...                       regimes=("normal_x3",), dtypes=("float64",), profile="smoke")
    >>> sorted(rows["provider"])
    ['mine', 'softmaxlab']

The function takes and returns what the softmaxlab kernel of that name takes and returns
(NumPy arrays): it runs in the softmaxlab provider's place, on the same inputs
(``selection.py``).  Nothing is written to disk unless ``results_dir`` is given.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from .profiles import get_profile
from .selection import ExtraProvider, select


def _extras(functions: Mapping[str, Callable]) -> list[ExtraProvider]:
    for name, function in functions.items():
        if not callable(function):
            raise TypeError(f"functions[{name!r}] must be callable, got {type(function).__name__}")
    return [ExtraProvider(name, f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', name)}",
                          lambda kernel, function=function: function)
            for name, function in functions.items()]


def _functions(function, name: str) -> dict:
    return dict(function) if isinstance(function, Mapping) else {name: function}


def check_accuracy(function, *, kernel: str, name: str = "mine", providers=("softmaxlab", "torch"),
                   regimes=None, dtypes=None, shape=None, profile: str = "quick", seed: int = 0) -> pd.DataFrame:
    """Errors of ``function`` (or of each function of a {name: function} dict) against the exact
    reference of ``kernel``, beside ``providers``: the rows of ``softmaxlab accuracy``
    (``max_ulp``, ``median_ulp``, ``max_rel``, ... per output, regime and dtype)."""
    from .accuracy import accuracy_rows

    functions = _functions(function, name)
    selection = select(get_profile(profile), kernels=[kernel], providers=list(providers),
                       extra_providers=_extras(functions), shapes=None if shape is None else [shape], dtypes=dtypes)
    rows, _ = accuracy_rows(selection.profile, registry=selection.entries, providers=selection.providers,
                            regime_names=regimes, seed=seed, progress=False)
    return rows


def compare_speed(functions: Mapping[str, Callable], *, kernel: str, providers=("softmaxlab", "torch"),
                  shapes=None, dtypes=("float32",), threads: int | None = None, profile: str = "quick",
                  results_dir=None) -> pd.DataFrame:
    """Timings of each {name: function} beside ``providers`` on ``kernel``'s benchmark shapes (or
    ``shapes``, e.g. ``["4096x1000"]``), interleaved in one run with threads pinned equal: the rows
    of ``softmaxlab bench`` (``p20_s``, ``p50_s``, ``p80_s``, ... per provider and shape)."""
    from .bench import run_bench

    selection = select(get_profile(profile), kernels=[kernel], providers=list(providers),
                       extra_providers=_extras(functions), shapes=shapes, dtypes=dtypes)
    with tempfile.TemporaryDirectory() as scratch:
        args = argparse.Namespace(profile=profile, threads=threads, seed=0, providers=selection.providers,
                                  kernels=None, command="bench",
                                  results_dir=str(results_dir) if results_dir is not None else str(Path(scratch)))
        args.command_line = f"softmaxlab.harness.compare_speed(kernel={kernel!r})"
        rows, failures, _, _ = run_bench(args, progress=False, registry=selection.entries,
                                         profile=selection.profile)
    if failures:
        raise RuntimeError(f"compare_speed: cases failed: {failures}")
    return rows
