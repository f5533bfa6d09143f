"""Spawn one gloo group per world size for a module of tests, with a kernel cache of its own."""

from __future__ import annotations

import os


def run_groups(worker, world_sizes, tmp_path_factory, prefix: str, timeout: float) -> dict:
    """World size -> the folder where ``worker(rank, world_size, folder)``'s group saved its results.

    The suite runs with the kernels' disk cache off (``tests/conftest.py``), so each spawned
    process would compile the kernels afresh; here the children share a cache of their own,
    in a fresh folder: the first group compiles and writes it, the others load it.
    """
    from .spawn import spawn_group

    saved = {key: os.environ.get(key) for key in ("SOFTMAXLAB_CACHE", "SOFTMAXLAB_CACHE_DIR")}
    os.environ["SOFTMAXLAB_CACHE"] = "1"
    os.environ["SOFTMAXLAB_CACHE_DIR"] = str(tmp_path_factory.mktemp(f"{prefix}_cache"))
    folders = {}
    try:
        for world_size in world_sizes:
            folders[world_size] = tmp_path_factory.mktemp(f"{prefix}{world_size}")
            spawn_group(worker, world_size, (str(folders[world_size]),), timeout=timeout)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return folders
