"""Shared settings and fixtures: the kernels compiled afresh, thread-count control.

The suite runs with the kernels' disk cache off (``SOFTMAXLAB_CACHE=0``, set before any
kernel module is imported): the tests that read a kernel's assembly need it compiled in
their own process (a kernel loaded from the cache carries no assembly, and its helpers
are never compiled), and a fresh machine, as CI's, starts cold anyway.  The cache itself
is tested in ``tests/kernels/test_cache.py`` and ``tests/harness/test_warmup.py``, in
subprocesses with caches of their own.
"""

from __future__ import annotations

import os

os.environ.setdefault("SOFTMAXLAB_CACHE", "0")

import numba  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def threads():
    """Call ``threads(n)`` to run with n Numba threads; the default is restored afterwards."""
    default = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(default)
