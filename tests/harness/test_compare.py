"""softmaxlab compare: speed ratios and their intervals, accuracy changes, regressions, the header, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from softmaxlab.harness import cli, compare, tables

ROOT = Path(__file__).resolve().parents[2]
VERSIONS_A = "python 3.11.7; numpy 2.4.6; numba 0.68.1; torch 2.13.0+cpu"
VERSIONS_B = "python 3.11.7; numpy 2.4.7; numba 0.68.1; torch 2.13.0+cpu"


def speed_row(provider, p20, p50, p80, *, kernel="softmax", classes=1000, **extra):
    return {"kernel": kernel, "op": kernel, "mode": "forward", "provider": provider, "rows": 64,
            "classes": classes, "dtype": "float32", "threads": 2, "p20_s": p20, "p50_s": p50, "p80_s": p80,
            "fraction_of_limit": 0.5, **extra}


def accuracy_row(provider, *, max_ulp=1.0, max_rel=1e-7, n_nonfinite=0, error="", regime="normal_x3"):
    return {"kernel": "softmax", "op": "softmax", "mode": "forward", "output": "y", "regime": regime,
            "dtype": "float32", "provider": provider, "rows": 8, "classes": 33, "reference": "mpmath-50",
            "n_values": 264, "max_ulp": max_ulp, "median_ulp": 0.3, "max_rel": max_rel, "median_rel": 1e-8,
            "max_rowwise_ulp": 0.5, "n_nonfinite": n_nonfinite, "n_special": 0, "n_special_mismatch": 0,
            "error": error}


def write_run(folder: Path, bench_rows=None, accuracy_rows=None, *, commit="09492e8", versions=VERSIONS_A,
              load=0.5, run_info=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    context = {"profile": "smoke", "machine": "AMD EPYC, 2 CPUs, 24 GiB, Linux x86_64", "load_average": load,
               "versions": versions, "commit": commit, "timestamp": "2026-12-06T05:00:00+00:00"}
    if bench_rows is not None:
        pd.DataFrame(bench_rows).assign(**context).to_csv(folder / "bench.csv", index=False)
    if accuracy_rows is not None:
        pd.DataFrame(accuracy_rows).assign(**context).to_csv(folder / "accuracy.csv", index=False)
    if run_info is not None:
        (folder / "report_run.json").write_text(json.dumps(run_info))
    return folder


def lines_of(comparison, section, **cell):
    lines = comparison[comparison["section"] == section]
    for column, value in cell.items():
        lines = lines[lines[column] == value]
    return lines


def test_speed_ratio_and_its_interval_follow_the_stated_formula(tmp_path):
    a = write_run(tmp_path / "a", [speed_row("softmaxlab", 0.95, 1.0, 1.15)])
    b = write_run(tmp_path / "b", [speed_row("softmaxlab", 1.8, 2.0, 2.1)])
    line = compare.compare_runs(a, b).iloc[0]
    assert line["ratio"] == pytest.approx(2.0)
    assert line["ratio_low"] == pytest.approx(2.0 * math.exp(-math.hypot(math.log(2.0 / 1.8), math.log(1.15))))
    assert line["ratio_high"] == pytest.approx(2.0 * math.exp(math.hypot(math.log(2.1 / 2.0), math.log(1 / 0.95))))
    assert line["status"] == "slower" and line["regression"]
    assert line["shape"] == "64x1000" and line["metric"] == "p50_s"


def test_slower_only_when_the_whole_interval_is_beyond_the_threshold(tmp_path):
    a = write_run(tmp_path / "a", [speed_row("softmaxlab", 0.9, 1.0, 1.2), speed_row("torch", 0.99, 1.0, 1.01),
                                   speed_row("jax", 0.99, 1.0, 1.01), speed_row("limit:stream", 0.99, 1.0, 1.01)])
    b = write_run(tmp_path / "b", [speed_row("softmaxlab", 0.8, 1.1, 1.5),  # 10 % slower, inside the spreads
                                   speed_row("torch", 1.19, 1.2, 1.21),  # 20 % slower, tight spreads
                                   speed_row("jax", 0.79, 0.8, 0.81),  # faster
                                   speed_row("limit:stream", 1.49, 1.5, 1.51)])  # the machine got slower
    lines = compare.compare_runs(a, b).set_index("provider")
    assert lines.loc["softmaxlab", "status"] == "" and not lines.loc["softmaxlab", "regression"]
    assert lines.loc["torch", "status"] == "slower" and lines.loc["torch", "regression"]
    assert lines.loc["jax", "status"] == "faster" and not lines.loc["jax", "regression"]
    assert lines.loc["limit:stream", "status"] == "slower" and not lines.loc["limit:stream", "regression"]
    relaxed = compare.compare_runs(a, b, speed_threshold=0.25).set_index("provider")
    assert relaxed.loc["torch", "status"] == "" and not relaxed["regression"].any()


def test_each_runs_flags_stand_beside_the_cell(tmp_path):
    a = write_run(tmp_path / "a", [speed_row("softmaxlab", 0.5, 1.0, 2.0)])
    b = write_run(tmp_path / "b", [speed_row("softmaxlab", 1.0, 1.0, 1.0, other_load=1.5, other_load_error=0.1,
                                             spare_cpus=0, fraction_of_limit=1.3)])
    line = compare.compare_runs(a, b).iloc[0]
    assert line["flag_a"] == "spread" and line["flag_b"] == f"load,{tables.ROOFLINE_FLAG}"


def test_a_slower_cell_flagged_spread_or_load_is_not_counted(tmp_path):
    quiet = {"other_load": 0.0, "other_load_error": 0.01, "spare_cpus": 0}
    a = write_run(tmp_path / "a", [speed_row(p, 0.99, 1.0, 1.01, **quiet) for p in ("softmaxlab", "torch", "jax")])
    b = write_run(tmp_path / "b", [speed_row("softmaxlab", 1.99, 2.0, 2.01, **quiet),
                                   speed_row("torch", 1.99, 2.0, 2.01, other_load=1.5, other_load_error=0.1,
                                             spare_cpus=0),
                                   speed_row("jax", 1.99, 2.0, 2.01, fraction_of_limit=1.5, **quiet)])
    lines = compare.compare_runs(a, b).set_index("provider")
    assert lines.loc["softmaxlab", "status"] == "slower" and lines.loc["softmaxlab", "regression"]
    assert lines.loc["torch", "status"] == "slower (flagged)" and not lines.loc["torch", "regression"]
    # roofline>100% says the limit loop was off, not that the cell's own timing was
    assert lines.loc["jax", "status"] == "slower" and lines.loc["jax", "regression"]
    text = compare.compare_markdown(a, b, compare.compare_runs(a, b))
    assert "## Regressions: 2" in text and "flagged spread or load in A or B: 1 (not counted" in text


def test_accuracy_regressions_beyond_the_factor_and_the_floor(tmp_path):
    a = write_run(tmp_path / "a", accuracy_rows=[
        accuracy_row("softmaxlab", max_ulp=1.0), accuracy_row("torch", max_ulp=0.3), accuracy_row("jax"),
        accuracy_row("numpy", max_ulp=8.0), accuracy_row("pml", max_rel=1e-9)])
    b = write_run(tmp_path / "b", accuracy_rows=[
        accuracy_row("softmaxlab", max_ulp=3.0),  # 3x worse
        accuracy_row("torch", max_ulp=0.9),  # 3x, but under the 1 ULP floor: rounding
        accuracy_row("jax", n_nonfinite=1, error="FloatingPointError: overflow"),
        accuracy_row("numpy", max_ulp=2.0),  # 4x better
        accuracy_row("pml", max_rel=1e-7)])  # 100x, but both under float32's epsilon (1.19e-7): rounding
    comparison = compare.compare_runs(a, b)
    assert set(comparison["section"]) == {"accuracy"}
    worse = comparison[comparison["regression"]]
    assert set(zip(worse["provider"], worse["metric"])) == {("softmaxlab", "max_ulp"), ("jax", "n_nonfinite"),
                                                            ("jax", "error")}
    assert lines_of(comparison, "accuracy", provider="jax", metric="error")["status"].item() == \
        "failed: FloatingPointError: overflow"
    assert lines_of(comparison, "accuracy", provider="numpy", metric="max_ulp")["status"].item() == "better"
    assert lines_of(comparison, "accuracy", provider="torch", metric="max_ulp")["status"].item() == ""
    assert lines_of(comparison, "accuracy", provider="pml", metric="max_rel")["status"].item() == ""
    assert compare.compare_runs(a, b, accuracy_factor=4.0)["regression"].sum() == 2  # 3x is within 4x
    # every error column of both runs is compared, whatever metrics.py adds
    assert {"max_ulp", "median_ulp", "max_rel", "median_rel", "max_rowwise_ulp", "n_nonfinite",
            "n_special_mismatch"} <= set(comparison["metric"])


def test_cells_of_one_run_only_are_listed_once_and_never_regress(tmp_path):
    a = write_run(tmp_path / "a", [speed_row("softmaxlab", 1, 1, 1), speed_row("torch", 1, 1, 1)],
                  [accuracy_row("softmaxlab"), accuracy_row("torch")])
    b = write_run(tmp_path / "b", [speed_row("softmaxlab", 1, 1, 1), speed_row("jax", 1, 1, 1)],
                  [accuracy_row("softmaxlab"), accuracy_row("softmaxlab", regime="dominant")])
    comparison = compare.compare_runs(a, b)
    assert not comparison["regression"].any()
    speed = lines_of(comparison, "speed")
    assert list(speed["provider"]) == ["softmaxlab", "torch", "jax"]  # A's order, then B's extra cells
    assert list(speed["status"]) == ["", "only in A", "only in B"]
    only = comparison[comparison["status"].str.startswith("only in") & (comparison["section"] == "accuracy")]
    assert sorted(zip(only["provider"], only["regime"], only["status"])) == [
        ("softmaxlab", "dominant", "only in B"), ("torch", "normal_x3", "only in A")]


def test_header_says_what_changed(tmp_path):
    a = write_run(tmp_path / "a", [speed_row("softmaxlab", 1, 1, 1)], commit="09492e8")
    b = write_run(tmp_path / "b", [speed_row("softmaxlab", 1, 1, 1)], commit="309d193", versions=VERSIONS_B,
                  load=1.7, run_info={"context": {}, "load_average_end": 2.2})
    header = compare.run_header(a, b).set_index("what")
    assert header.loc["commit", "A"] == "09492e8" and header.loc["commit", "changed"] == "yes"
    assert header.loc["version of numpy", "A"] == "2.4.6" and header.loc["version of numpy", "B"] == "2.4.7"
    assert "version of numba" not in header.index
    assert header.loc["1-min load average", "B"] == "1.7 (end 2.2)"
    assert header.loc["machine", "changed"] == "" and header.loc["CPU", "A"] == "AMD EPYC"
    text = compare.compare_markdown(a, b, compare.compare_runs(a, b))
    assert "| version of numpy | 2.4.6 | 2.4.7 | yes |" in text and "## Regressions: 0" in text
    assert compare.run_header(a, a).set_index("what").loc["versions", "A"] == "the same 4 packages"


def test_a_folder_whose_bench_and_accuracy_ran_apart_shows_each_files_context(tmp_path):
    mixed = write_run(tmp_path / "mixed", [speed_row("softmaxlab", 1, 1, 1)], commit="1111111")
    write_run(tmp_path / "accuracy", accuracy_rows=[accuracy_row("softmaxlab")], commit="2222222")
    (tmp_path / "accuracy" / "accuracy.csv").rename(mixed / "accuracy.csv")
    header = compare.run_header(mixed, mixed).set_index("what")
    assert header.loc["commit", "A"] == "bench.csv: 1111111; accuracy.csv: 2222222"
    assert header.loc["profile", "A"] == "smoke" and header.loc["threads", "A"] == "2"


def test_the_command_writes_csv_or_markdown_and_fails_on_regression_when_asked(tmp_path, capsys):
    a = write_run(tmp_path / "a", [speed_row("softmaxlab", 0.99, 1.0, 1.01)])
    b = write_run(tmp_path / "b", [speed_row("softmaxlab", 1.99, 2.0, 2.01)])
    assert cli.main(["compare", str(a), str(b), "--output", str(tmp_path / "out.csv")]) == 0
    out = capsys.readouterr().out
    assert "## Regressions: 1" in out and "slower **regression**" in out
    written = pd.read_csv(tmp_path / "out.csv")
    assert list(written.columns) == list(compare.COLUMNS) and written["regression"].tolist() == [True]
    assert cli.main(["compare", str(a), str(b), "--fail-on-regression", "--output", str(tmp_path / "o.md")]) == 1
    assert (tmp_path / "o.md").read_text().startswith("# softmaxlab compare")
    assert cli.main(["compare", str(a), str(a), "--fail-on-regression"]) == 0


@pytest.mark.parametrize("case, message", [
    ("missing", "no such folder; expected a run folder holding bench.csv and/or accuracy.csv"),
    ("file", "is a file; expected a run folder"),
    ("empty", "expected bench.csv or accuracy.csv in this folder, found ['notes.txt']"),
    ("disjoint", "nothing to compare: expected both runs to have rows in bench.csv or both in accuracy.csv"),
    ("columns", "expected the columns ['p50_s'] of softmaxlab's rows"),
    ("suffix", "--output: expected a file name ending in .csv or .md, got"),
])
def test_unreadable_runs_exit_2_and_say_what_was_expected(tmp_path, capsys, case, message):
    a = write_run(tmp_path / "a", [speed_row("softmaxlab", 1, 1, 1)])
    b = {"missing": tmp_path / "nowhere", "file": a / "bench.csv"}.get(case, tmp_path / "b")
    output = []
    if case == "empty":
        b.mkdir()
        (b / "notes.txt").write_text("")
    elif case == "disjoint":
        write_run(b, accuracy_rows=[accuracy_row("softmaxlab")])
    elif case == "columns":
        write_run(b, [{key: value for key, value in speed_row("softmaxlab", 1, 1, 1).items() if key != "p50_s"}])
    elif case == "suffix":
        b, output = a, ["--output", str(tmp_path / "out.txt")]
    assert cli.main(["compare", str(a), str(b), *output]) == 2
    assert message in capsys.readouterr().err


def test_the_committed_snapshot_against_itself_changes_nothing():
    comparison = compare.compare_runs(ROOT / "results", ROOT / "results")
    assert set(comparison["section"]) == {"speed", "accuracy"}
    assert not comparison["regression"].any() and (comparison["status"] == "").all()
    speed = comparison[comparison["section"] == "speed"]
    assert np.allclose(speed["ratio"], 1.0) and (speed["ratio_low"] <= 1.0).all()
