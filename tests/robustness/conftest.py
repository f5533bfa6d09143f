"""Hypothesis profiles for the robustness suite, chosen by ``SOFTMAXLAB_HYPOTHESIS_PROFILE``.

* ``ci`` (the default): 200 examples per property, derandomized (the examples are a
  function of the test alone, so every CI run checks the same ones and a failure
  reproduces), no example database (nothing is written to ``.hypothesis/``).
* ``thorough``: ten times as many examples, drawn afresh on every run (not derandomized)
  and remembered in the example database, so a failure found once is replayed first next
  time; ``print_blob`` prints the line that reproduces a failing example.

Both have ``deadline=None``: the first example of a property pays the lazy Numba
compilation of its kernels (seconds), the others milliseconds.  No health check is
suppressed: the strategies draw structure and a seed, never arrays element by element,
so generating an example is cheap.

Usage: ``SOFTMAXLAB_HYPOTHESIS_PROFILE=thorough pytest tests/robustness``.

The fixture ``one_numba_thread`` (opted into by the property modules with ``pytestmark``)
runs a test on one Numba thread.  The kernels give bit-identical results for any thread
count (docs/design.md, "The row driver"; ``test_determinism.py`` checks it), and both schedules of the row
kernels still run (one row longer than a block is split into block tasks, several rows
go one per task).  What it saves is the cost of a parallel launch on this shared 2-core
machine: about 120 us per call with two OpenMP threads while other work runs, against
23 us on one thread (measured), across ~10^4 calls per property.
"""

from __future__ import annotations

import os

import numba
import pytest
from hypothesis import settings

PROFILE_VARIABLE = "SOFTMAXLAB_HYPOTHESIS_PROFILE"
CI_EXAMPLES = 200

settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True, database=None,
                          print_blob=True)
settings.register_profile("thorough", max_examples=10 * CI_EXAMPLES, deadline=None, derandomize=False,
                          print_blob=True)
settings.load_profile(os.environ.get(PROFILE_VARIABLE, "ci"))


@pytest.fixture
def one_numba_thread():
    default = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(default)
