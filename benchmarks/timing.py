"""The timing the micro-benchmarks of this folder share (the harness has its own, with statistics)."""

from __future__ import annotations

import argparse
import time

import numpy as np


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


def alternated(variants: dict, rounds: int, calls: int) -> dict:
    """{name: [p50 seconds of ``calls`` calls, one per round]} for the zero-argument calls of
    ``variants``, timed in turn ``rounds`` times, the order reversed every other round so that
    neither variant always runs first (``call_seconds``)."""
    times = {name: [] for name in variants}
    for round_ in range(rounds):
        order = list(variants) if round_ % 2 else list(reversed(variants))
        for name in order:
            times[name].append(float(np.median(call_seconds(variants[name], calls))))
    return times


def rounds_and_threads(description: str, rounds: int, rounds_help: str, argv=None) -> argparse.Namespace:
    """``--rounds`` (default ``rounds``) and ``--threads`` (default 2) parsed from ``argv``, the
    Numba threads set to the latter: the options of the scripts that time variants in rotation."""
    import numba

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"{rounds_help} (default {rounds})")
    parser.add_argument("--threads", type=int, default=2, help="Numba threads (default 2)")
    args = parser.parse_args(argv)
    numba.set_num_threads(args.threads)
    return args
