"""The speed harness: tidy rows, interleaving, thread pinning, and a slow provider shows up slower."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pandas as pd
import pytest

from softmaxlab.harness import bench, environment, tables
from softmaxlab.harness.profiles import get_profile
from softmaxlab.harness.registry import REGISTRY

from .conftest import TINY_BENCH, copy_entry, copy_implementation


def fake_benchmark(provider, samples, repeat, *, classes=8, first_call_s=0.01):
    info = {
        "kernel": "softmax", "provider": provider, "rows": 4, "classes": classes, "dtype": "float32",
        "repeat": repeat, "op": "softmax", "mode": "forward", "threads": 2, "first_call_s": first_call_s,
        "read_elements": 4 * classes, "written_elements": 4 * classes, "exp_count": 4 * classes,
        "bytes": 8 * 4 * classes * 4 // 4,
    }
    return {"extra_info": info, "stats": {"data": list(samples)}}


def fake_report():
    """Two shapes, two repeats, five providers (the first shape's numbers are the ones tested)."""
    benchmarks = []
    for classes in (8, 16):
        for repeat in range(2):
            benchmarks += [
                fake_benchmark("softmaxlab", [4.0, 4.0, 4.0 + repeat], repeat, classes=classes,
                               first_call_s=3.0 if repeat == 0 else 4.0),
                fake_benchmark("torch", [8.0, 8.0, 9.0], repeat, classes=classes),
                fake_benchmark("jax", [2.0, 2.0, 2.0], repeat, classes=classes),
                fake_benchmark("limit:stream", [1.0, 1.0, 1.0], repeat, classes=classes),
                fake_benchmark("limit:exp", [2.0, 2.0, 2.0], repeat, classes=classes),
            ]
    return {"benchmarks": benchmarks}


def test_tidy_rows_pool_repeats_and_add_the_roofline():
    all_rows = bench.tidy_rows(fake_report())
    assert list(all_rows.columns) == list(bench.ROW_COLUMNS) and len(all_rows) == 10
    rows = all_rows[all_rows["classes"] == 8].set_index("provider")
    ours = rows.loc["softmaxlab"]
    assert ours["samples"] == 6 and ours["repeats"] == 2
    assert ours["p50_s"] == np.percentile([4, 4, 4, 4, 4, 5], 50)
    assert ours["p80_s"] == np.percentile([4, 4, 4, 4, 4, 5], 80)
    assert ours["first_call_s"] == 4.0 and ours["compile_s"] == 0.0
    assert ours["limit_s"] == 2.0 and ours["bound"] == "exp"
    assert ours["fraction_of_limit"] == pytest.approx(0.5)
    assert ours["bytes_per_s"] == pytest.approx(ours["bytes"] / 4.0)


def test_speed_table_has_ratio_columns():
    table = tables.speed_table(bench.tidy_rows(fake_report()))
    line = table.iloc[0]
    assert line["x vs torch"] == "2.00" and line["x vs jax"] == "0.50"
    assert {"softmaxlab ms", "torch ms", "jax ms", "softmaxlab % of limit", "bound"} <= set(table.columns)


def test_plan_interleaves_providers_and_rotates_their_order():
    plan = bench.BenchPlan(get_profile("full"), {"softmax": REGISTRY["softmax"]})
    first_block = [case for case in plan.cases if case.block == plan.cases[0].block]
    assert plan.cases[: len(first_block)] == first_block  # a block's cases are contiguous
    by_repeat = {}
    for case in first_block:
        by_repeat.setdefault(case.repeat, []).append(case.provider)
    expected = {"softmaxlab", "torch", "jax", "limit:stream", "limit:exp"}
    assert all(sorted(order) == sorted(expected) for order in by_repeat.values())
    assert len({tuple(order) for order in by_repeat.values()}) == len(by_repeat) > 1
    shapes = {(case.rows, case.classes, case.dtype) for case in plan.cases}
    assert shapes == set(REGISTRY["softmax"].bench_shapes)


def test_a_slow_implementation_shows_up_slower(tmp_path):
    entry = copy_entry(copy_implementation("softmaxlab"), copy_implementation("numpy", seconds_asleep=0.003))
    plan = bench.BenchPlan(TINY_BENCH, {"copy": entry}, threads=1)
    rows, failures = bench.run_benchmarks(plan, tmp_path, "test", progress=False)
    assert failures == []
    p50 = rows.set_index("provider")["p50_s"]
    assert p50["numpy"] > p50["softmaxlab"] + 0.0025
    assert set(rows["provider"]) == {"softmaxlab", "numpy", "limit:stream"}
    assert (rows["repeats"] == 2).all() and (rows["samples"] >= 10).all()
    assert (tmp_path / "bench-test.json").exists()


def test_bench_command_writes_tidy_rows(tmp_path):
    entry = copy_entry(copy_implementation("softmaxlab"), copy_implementation("numpy"))
    args = argparse.Namespace(profile="smoke", threads=None, results_dir=str(tmp_path), kernels=None,
                              providers=None, seed=0, command="bench", command_line="softmaxlab bench --profile smoke")
    rows, failures, paths, context = bench.run_bench(args, progress=False, registry={"copy": entry})
    assert failures == []
    written = pd.read_csv(tmp_path / "bench.csv")
    assert set(bench.ROW_COLUMNS) | {"machine", "versions", "commit", "timestamp", "profile"} <= set(written.columns)
    assert context["threads"] == environment.available_cpus()
    assert "softmaxlab bench --profile smoke" in (tmp_path / "bench.md").read_text()


def test_pin_threads_sets_every_framework():
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least 2 CPUs and sched_setaffinity")
    affinity = os.sched_getaffinity(0)
    counts_before = environment.thread_counts()
    try:
        assert environment.pin_threads(1) == 1
        counts = environment.thread_counts()
        assert counts["affinity"] == 1 and counts["numba"] == 1
        assert counts.get("torch", 1) == 1
    finally:
        os.sched_setaffinity(0, affinity)
        environment.pin_threads(counts_before["numba"])
        if "torch" in counts_before:
            import torch

            torch.set_num_threads(counts_before["torch"])
    with pytest.raises(ValueError, match="threads must be <="):
        environment.pin_threads(len(affinity) + 1)


def test_rounds_fill_the_time_per_test_but_stop_for_slow_calls():
    full = get_profile("full")
    assert full.bench_rounds(0.001) == full.bench_max_rounds  # 500 wanted, capped
    assert full.bench_rounds(0.05) == max(10, full.bench_min_rounds)
    assert full.bench_rounds(2.0) == 3  # 7 rounds of 2 s would pass the 2.5 s cap
