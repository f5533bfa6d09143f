"""Shared fixtures: thread-count control for the determinism tests."""

from __future__ import annotations

import numba
import pytest


@pytest.fixture
def threads():
    """Call ``threads(n)`` to run with n Numba threads; the default is restored afterwards."""
    default = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(default)
