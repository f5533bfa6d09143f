"""Spawn one gloo group per world size for a module of tests; the check of a rank's
grad_weight_shard against the single process's."""

from __future__ import annotations

import numpy as np
import pytest


def run_groups(worker, world_sizes, tmp_path_factory, prefix: str, timeout: float) -> dict:
    """World size -> the folder where ``worker(rank, world_size, folder)``'s group saved its results.

    The spawned processes inherit the run's kernel cache (``tests/conftest.py``): the kernels
    this run has compiled are loaded, and what a group compiles the next group loads.
    """
    from .spawn import spawn_group

    folders = {}
    for world_size in world_sizes:
        folders[world_size] = tmp_path_factory.mktemp(f"{prefix}{world_size}")
        spawn_group(worker, world_size, (str(folders[world_size]),), timeout=timeout)
    return folders


def assert_same_bits_or_the_known_float64_case(part, expected, magnitude, rank):
    """``part`` is ``expected`` bit for bit; or, for float64 only, the fused kernels' known and
    unconfirmed run-to-run case, marked as an expected failure once checked within 8 u of the
    sums' magnitude (``magnitude``: sum_i |G_ic| |x_id|, the terms of each entry).

    That case: in whole-suite runs, the parent's first float64 call has given one row's
    gradient (the last row, computed in the row kernels' second thread) different last bits
    from the spawned processes' and from its own later calls (a relative 1e-13 in grad_weight
    where its terms cancel); the loss, run alone, and float32 were always bit-identical.
    """
    assert part.dtype == expected.dtype and part.shape == expected.shape, rank
    if part.tobytes() == expected.tobytes():
        return
    assert part.dtype == np.float64, f"rank {rank}: float32 grad_weight_shard differs from the single process"
    difference = np.abs(part - expected)
    assert np.all(difference <= 8 * 2.0**-53 * magnitude), (rank, difference.max())
    pytest.xfail("float64 grad_weight: the fused kernels' unconfirmed run-to-run case (tests/distributed/groups.py)")
