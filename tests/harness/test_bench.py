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


def fake_benchmark(provider, samples, repeat, *, classes=8, first_call_s=0.01, load=None):
    """One pytest-benchmark record; ``load``: the (wall s, others' CPU s) of its load window, else none."""
    info = {
        "kernel": "softmax", "provider": provider, "rows": 4, "classes": classes, "dtype": "float32",
        "repeat": repeat, "op": "softmax", "mode": "forward", "threads": 2, "first_call_s": first_call_s,
        "read_elements": 4 * classes, "written_elements": 4 * classes, "exp_count": 4 * classes,
        "bytes": 8 * 4 * classes * 4 // 4,
    }
    if load is not None:
        info.update(load_wall_s=load[0], load_others_cpu_s=load[1], load_tick_s=0.01, cpus=2)
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


def test_tidy_rows_record_spread_and_load_and_flag_unreliable_cells():
    benchmarks = []
    for repeat in range(2):
        benchmarks += [
            # quiet: others used 0.1 CPU-s over 2 s in each repeat
            fake_benchmark("softmaxlab", [4.0] * 9 + [5.0], repeat, load=(2.0, 0.1)),
            # loaded: others used 1.0 CPU-s over 1 s
            fake_benchmark("torch", [8.0] * 10, repeat, load=(1.0, 1.0)),
            # samples spread from 1 to 10 around a median of 5.5
            fake_benchmark("jax", [float(v) for v in range(1, 11)], repeat),
            fake_benchmark("limit:stream", [1.0] * 10, repeat),
        ]
    rows = bench.tidy_rows({"benchmarks": benchmarks}).set_index("provider")
    ours, torch_, jax_ = rows.loc["softmaxlab"], rows.loc["torch"], rows.loc["jax"]
    assert ours["spread"] == pytest.approx((np.percentile([4] * 18 + [5] * 2, 80) - 4.0) / 4.0)
    assert ours["other_load"] == pytest.approx(0.2 / 4.0)
    assert ours["other_load_error"] == pytest.approx(2 * (2 * 0.01 * 2) / 4.0)
    assert ours["spare_cpus"] == 0 and ours["flag"] == ""
    assert torch_["other_load"] == pytest.approx(1.0) and torch_["flag"] == "load"
    assert jax_["spread"] > tables.SPREAD_FLAG and jax_["flag"] == "spread"
    assert np.isnan(jax_["other_load"])  # no load window recorded: not measured, not flagged
    assert list(tables.flagged_cells(rows.reset_index())["provider"]) == ["torch", "jax"]


def test_load_window_subtracts_this_process_from_the_machine():
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    # 0.5 s wall, 150 busy ticks on the machine, 0.3 CPU-s of them this process's
    window = bench.load_window((10.0, 1000, 2.0), (10.5, 1150, 2.3))
    assert window["load_wall_s"] == pytest.approx(0.5)
    assert window["load_others_cpu_s"] == pytest.approx(150 * tick - 0.3)
    assert bench.load_window((10.0, None, 2.0), (10.5, None, 2.3))["load_others_cpu_s"] is None


def test_roofline_above_100_percent_is_a_flag_not_a_number():
    report = fake_report()
    for record in report["benchmarks"]:
        if record["extra_info"]["provider"] == "jax":  # 1.5 s, faster than the exp limit of 2.0 s
            record["stats"]["data"] = [1.5, 1.5, 1.5]
    rows = bench.tidy_rows(report)
    jax_rows = rows[rows["provider"] == "jax"]
    assert (jax_rows["fraction_of_limit"] > 1).all() and (jax_rows["flag"] == tables.ROOFLINE_FLAG).all()
    # the limit loops define the roofline: limit:stream is 2x faster than the limit but not flagged
    assert (rows.loc[rows["provider"].str.startswith("limit:"), "flag"] == "").all()
    table = tables.speed_table(rows)
    assert (table["jax % of limit"] == tables.ROOFLINE_FLAG).all()
    assert (table["softmaxlab % of limit"] == "50").all()
    assert tables.markdown(table).rstrip().endswith(tables.FLAG_LEGEND)


def test_speed_table_marks_flagged_cells_and_their_ratios():
    rows = bench.tidy_rows(fake_report())
    rows.loc[(rows["provider"] == "torch") & (rows["classes"] == 8), "p80_s"] = 20.0  # spread 1.5
    table = tables.speed_table(rows).set_index("shape")
    assert table.loc["4x8", "torch ms"] == "8.00e+03" + tables.FLAG_MARK
    assert table.loc["4x8", "x vs torch"] == "2.00" + tables.FLAG_MARK
    assert table.loc["4x8", "x vs jax"] == "0.50" and table.loc["4x16", "x vs torch"] == "2.00"
    assert table.loc["4x8", "softmaxlab % of limit"] == "50"
    rows.loc[(rows["provider"] == "limit:exp") & (rows["classes"] == 16), "p20_s"] = 0.5  # spread 0.75
    table = tables.speed_table(rows).set_index("shape")
    assert table.loc["4x16", "softmaxlab % of limit"] == "50" + tables.FLAG_MARK
    assert table.loc["4x16", "jax % of limit"] == "100" + tables.FLAG_MARK
    assert table.loc["4x8", "softmaxlab % of limit"] == "50"
    unflagged = tables.speed_table(bench.tidy_rows(fake_report()))
    assert "legend" not in unflagged.attrs and tables.FLAG_MARK not in tables.markdown(unflagged)


def test_flags_of_rows_written_before_the_load_columns():
    old = bench.tidy_rows(fake_report()).drop(columns=["spread", "other_load", "other_load_error", "spare_cpus",
                                                        "flag"])
    old.loc[old["provider"] == "torch", "p20_s"] = 1.0
    assert set(tables.flagged_cells(old)["flag"]) == {"spread"}
    assert set(tables.flagged_cells(old)["provider"]) == {"torch"}


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
    if os.path.exists("/proc/stat"):  # every cell's load window was read
        assert written["other_load"].notna().all() and (written["other_load"] >= 0).all()
        assert (written["spare_cpus"] == os.cpu_count() - context["threads"]).all()
    assert context["threads"] == environment.available_cpus()
    assert "softmaxlab bench --profile smoke" in (tmp_path / "bench.md").read_text()


def test_machine_names_the_jit_target(monkeypatch):
    # the model name alone ("AMD EPYC") covers AVX2 and AVX-512 hosts; the target says which
    from numba.core import config

    described = environment.machine_description()
    model = described.split(",")[0]  # harness/compare.py reads the CPU as the first field
    assert model.endswith(f"({environment.jit_target()})")
    monkeypatch.setattr(config, "CPU_NAME", "skylake-avx512")
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx,+avx2,+fma,+avx512f,-avx512fp16")
    assert environment.jit_target() == "skylake-avx512; AVX-512"
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx,+avx2,-avx512f")
    assert environment.jit_target() == "skylake-avx512; AVX2"
    monkeypatch.setattr(config, "CPU_FEATURES", "+sse4.2,-avx")
    assert environment.jit_target() == "skylake-avx512; SSE"


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


def test_plots_draw_flagged_cells_hollow(tmp_path, monkeypatch):
    from softmaxlab.harness import plots

    figures = []
    monkeypatch.setattr(plots, "_finish", lambda figure, title, path: figures.append(figure))
    rows = bench.tidy_rows(fake_report())
    rows.loc[(rows["provider"] == "torch") & (rows["classes"] == 16), "p80_s"] = 20.0  # spread 1.5
    plots.time_vs_classes(rows, tmp_path / "time.png")
    plots.speedup_vs_torch(rows, tmp_path / "speedup.png")
    timeline, speedup = (figure.axes[0] for figure in figures)
    hollow = [line for line in timeline.get_lines() if line.get_label() == plots.FLAGGED_LABEL]
    assert len(hollow) == 1 and hollow[0].get_markerfacecolor() == "white"
    assert list(hollow[0].get_xdata()) == [16]
    # both providers' ratios to torch at 4x16 are flagged, none at 4x8
    hatched = [bar for bar in speedup.patches if bar.get_hatch() == "///"]
    assert len(hatched) == 2 and {round(bar.get_x() + bar.get_width() / 2) for bar in hatched} == {1}


def test_benchmarks_are_timed_inside_an_xdist_worker(tmp_path, monkeypatch):
    # pytest-benchmark disables itself where PYTEST_XDIST_WORKER is set; the harness's inner
    # session must not inherit that, or the plan would come back untimed
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    entry = copy_entry(copy_implementation("softmaxlab"), copy_implementation("numpy"))
    plan = bench.BenchPlan(TINY_BENCH, {"copy": entry}, threads=1)
    rows, failures = bench.run_benchmarks(plan, tmp_path, "test", progress=False)
    assert failures == []
    assert {"softmaxlab", "numpy"} <= set(rows["provider"]) and (rows["p50_s"] > 0).all()
    assert os.environ["PYTEST_XDIST_WORKER"] == "gw7"
