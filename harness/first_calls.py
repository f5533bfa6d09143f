"""The ledger of first calls: compile and JIT time, measured where it happens and kept apart.

Numba compiles a kernel on its first call for each dtype; ``jax.jit`` compiles on the
first call for each shape and dtype.  Every harness call of an implementation goes
through :func:`call`: the first time a (kernel, provider, dtype, shape) is seen in the
process, the call is timed, a second (warm) call is timed too, and the pair is recorded.
``first_call_s - warm_call_s`` estimates the compile/JIT overhead; no speed figure
includes it (the benchmarks warm up before timing).
"""

from __future__ import annotations

import time

FIRST_CALLS: list[dict] = []
_SEEN: set = set()


def timed_first_two(run):
    """(result, first call's seconds, second (warm) call's seconds) of two calls of ``run``."""
    start = time.perf_counter()
    result = run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    return result, first, time.perf_counter() - start


def call(run, *, kernel: str, provider: str, dtype: str, shape: tuple, phase: str):
    """``run()``, recording the first and a warm call's time the first time the key is seen."""
    key = (kernel, provider, dtype, tuple(shape))
    if key in _SEEN:
        return run()
    result, first, warm = timed_first_two(run)
    record(kernel=kernel, provider=provider, dtype=dtype, shape=shape, phase=phase, first=first, warm=warm)
    return result


def record(*, kernel: str, provider: str, dtype: str, shape: tuple, phase: str, first: float, warm: float) -> None:
    """Add a first call measured elsewhere (once per key; later ones are ignored)."""
    key = (kernel, provider, dtype, tuple(shape))
    if key in _SEEN:
        return
    _SEEN.add(key)
    FIRST_CALLS.append(
        {
            "kernel": kernel,
            "provider": provider,
            "dtype": dtype,
            "shape": "x".join(str(n) for n in shape),
            "phase": phase,
            "first_call_s": first,
            "warm_call_s": warm,
            "compile_s": max(first - warm, 0.0),
        }
    )


def was_called(kernel: str, provider: str, dtype: str, shape: tuple) -> bool:
    return (kernel, provider, dtype, tuple(shape)) in _SEEN
