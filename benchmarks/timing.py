"""The timing the micro-benchmarks of this folder share (the harness has its own, with statistics)."""

from __future__ import annotations

import time


def call_seconds(function, calls: int) -> list[float]:
    """The durations of ``calls`` calls of ``function()``, in seconds, after one call that is not
    timed (compilation, first-touch page faults)."""
    function()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def best_seconds(function, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``function()``, in seconds (``call_seconds``)."""
    return min(call_seconds(function, repeats))
