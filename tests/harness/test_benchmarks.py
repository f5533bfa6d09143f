"""The pytest-benchmark cases of every registry entry, smoke-run by the normal suite.

With pyproject's ``--benchmark-disable`` each case calls its implementation once on the
entry's tiny ``smoke_shapes`` and checks the outputs; ``softmaxlab bench`` runs the same
module with benchmarks enabled (see ``softmaxlab/harness/benchmarks.py``).
"""

from softmaxlab.harness.benchmarks import pytest_generate_tests, test_benchmark  # noqa: F401
