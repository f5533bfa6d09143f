"""pytest-benchmark module: one test per (kernel, shape, dtype, provider, repeat) of the plan.

Collected twice:

* by the normal test suite (``tests/harness/test_benchmarks.py`` imports the two names
  below), where pyproject's ``--benchmark-disable`` makes each case a smoke test: the
  tiny ``smoke_shapes`` of every registry entry, one call per provider, output checked;
* by ``softmaxlab bench`` (``harness/bench.py``), which runs pytest on this file with
  ``--benchmark-enable`` after pinning threads, with the plan of the requested profile:
  the providers of each (kernel, shape, dtype) block interleaved, repeat after repeat,
  so that every ratio compares measurements taken minutes apart at most.

Everything but the pytest hooks lives in ``bench.py`` (imported by its canonical name),
so this file can be imported under any module name pytest chooses.
"""

from __future__ import annotations

from softmaxlab.harness import bench


def pytest_generate_tests(metafunc):
    if "bench_case" in metafunc.fixturenames:
        plan = bench.active_plan()
        metafunc.parametrize("bench_case", plan.cases, ids=[case.test_id for case in plan.cases])


def test_benchmark(benchmark, bench_case):
    bench.active_plan().run_case(benchmark, bench_case)
