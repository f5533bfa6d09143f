"""The timing the micro-benchmarks of this folder share (the harness has its own, with statistics)."""

from __future__ import annotations

import time


def best_seconds(function, repeats: int) -> float:
    """The fastest of ``repeats`` calls of ``function()``, in seconds, after one call that is not timed
    (compilation, first-touch page faults)."""
    function()
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest
