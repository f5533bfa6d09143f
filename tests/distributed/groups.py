"""Spawn one gloo group per world size for a module of tests; the check of a rank's
grad_weight_shard against the single process's, bit for bit."""

from __future__ import annotations

import numpy as np


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


def assert_same_bits(part, expected, rank):
    """``part`` is ``expected`` bit for bit (dtype, shape and every bit of every entry)."""
    assert part.dtype == expected.dtype and part.shape == expected.shape, rank
    assert part.tobytes() == expected.tobytes(), (rank, float(np.abs(part - expected).max()))
