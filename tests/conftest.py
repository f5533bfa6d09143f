"""Shared settings and fixtures: one kernel cache for the run, thread-count control.

The suite runs with the kernels' disk cache on, as users do, in a folder made for the
run and removed after it (``SOFTMAXLAB_CACHE_DIR``, set before any kernel module is
imported).  The run's processes share it: pytest-xdist's workers (the README's command
runs ``pytest -n auto``) and the processes the tests start, so a kernel compiles once per
run instead of once per process.  A kernel loaded from the cache keeps no assembly and
never compiles the helpers it calls; the tests that read assembly compile a copy in their
own process (``tests/kernels/_shared.py``, ``assembly_of``).  The cache itself is tested in
``tests/kernels/test_cache.py`` and ``tests/harness/test_warmup.py``, in subprocesses with
caches of their own.  ``SOFTMAXLAB_CACHE=0`` in the environment runs the suite without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

RUN_CACHE_VARIABLE = "SOFTMAXLAB_TEST_RUN_CACHE"
# The first process of the run (the xdist controller, or the only process) makes the
# folder; its workers, started after this module is imported, inherit the variable.
_MADE_HERE = RUN_CACHE_VARIABLE not in os.environ
if _MADE_HERE:
    os.environ[RUN_CACHE_VARIABLE] = tempfile.mkdtemp(prefix="softmaxlab-test-cache-")
os.environ["SOFTMAXLAB_CACHE_DIR"] = os.environ[RUN_CACHE_VARIABLE]
os.environ.setdefault("SOFTMAXLAB_CACHE", "1")

import numba  # noqa: E402
import pytest  # noqa: E402


def pytest_unconfigure(config):
    if _MADE_HERE:
        shutil.rmtree(os.environ[RUN_CACHE_VARIABLE], ignore_errors=True)


@pytest.fixture
def threads():
    """Call ``threads(n)`` to run with n Numba threads; the default is restored afterwards."""
    default = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(default)
