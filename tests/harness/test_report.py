"""The report: proof book status (present or not), index.md sections, plots, the command line."""

from __future__ import annotations

import argparse
import sys
import types
from dataclasses import dataclass

import matplotlib.image
import pytest

from softmaxlab.harness import accuracy, bench, cli, plots, report
from softmaxlab.harness.profiles import get_profile

from .test_bench import fake_report


@dataclass
class Record:
    family: str
    title: str
    status: str
    general: bool
    seconds: float


def test_missing_proof_book_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "softmaxlab.derivations.book", None)  # import -> ImportError
    frame, line, failed = report.proof_book()
    assert frame.empty and not failed
    assert line.startswith("proof book: not available (ModuleNotFoundError") and "\n" not in line


def test_proof_book_records_become_a_table(monkeypatch):
    book = types.ModuleType("softmaxlab.derivations.book")
    book.derive_all = lambda: [
        Record("softmax", "Jacobian", "proven (general K)", True, 0.1),
        Record("softmax", "LSE bounds", "proven (general K)", True, 0.2),
        Record("bounds", "figures", "checked (numeric example)", False, 0.0),
    ]
    monkeypatch.setitem(sys.modules, "softmaxlab.derivations.book", book)
    frame, line, failed = report.proof_book()
    assert list(frame.columns) == list(report.PROOF_BOOK_COLUMNS) and len(frame) == 3 and not failed
    assert "3 derivations (2 proven, 1 checked)" in line


def test_failing_proof_book_fails_the_report_but_not_the_run(monkeypatch):
    book = types.ModuleType("softmaxlab.derivations.book")
    book.derive_all = lambda: 1 / 0
    monkeypatch.setitem(sys.modules, "softmaxlab.derivations.book", book)
    frame, line, failed = report.proof_book()
    assert failed and line.startswith("proof book: failed (ZeroDivisionError")


def test_plots_are_written(tmp_path):
    rows = bench.tidy_rows(fake_report())
    for draw, name in ((plots.time_vs_classes, "time.png"), (plots.speedup_vs_torch, "speedup.png")):
        path = draw(rows, tmp_path / name)
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 300 and width > 400


def test_report_writes_index_tables_and_plots(tmp_path, monkeypatch):
    accuracy_rows, checks = accuracy.accuracy_rows(get_profile("smoke"), kernels=["softmax"], providers=["numpy"],
                                                   regime_names=["normal_x3"], progress=False)
    monkeypatch.setattr(accuracy, "accuracy_rows", lambda *args, **kwargs: (accuracy_rows, checks))
    monkeypatch.setattr(bench, "run_benchmarks", lambda *args, **kwargs: (bench.tidy_rows(fake_report()), []))
    monkeypatch.setitem(sys.modules, "softmaxlab.derivations.book", None)
    args = argparse.Namespace(profile="smoke", threads=None, results_dir=str(tmp_path / "results"),
                              report_dir=str(tmp_path / "report"), seed=0, command="report", render_only=False,
                              command_line="softmaxlab report --profile smoke")
    assert report.run(args) == 0
    index = (tmp_path / "report" / "index.md").read_text()
    for heading in ("## Proof book", "## Accuracy", "## Speed", "## Machine, versions, command"):
        assert heading in index
    assert "proof book: not available (ModuleNotFoundError" in index
    assert "| x vs torch | x vs jax |" in index
    assert "`softmaxlab report --profile smoke`" in index
    assert "![speed-up over torch](speedup_vs_torch.png)" in index
    for name in ("accuracy.csv", "bench.csv", "reference_check.csv", "first_calls.csv", "proof_book.csv",
                 "accuracy.md", "bench.md"):
        assert (tmp_path / "results" / name).exists(), name
    assert (tmp_path / "report" / "time_vs_classes.png").stat().st_size > 10_000
    # every view is rendered from the CSV rows: a re-render changes nothing
    views = {path: path.read_bytes() for path in [tmp_path / "report" / "index.md",
                                                  tmp_path / "results" / "accuracy.md", tmp_path / "results" / "bench.md"]}
    assert cli.main(["report", "--profile", "smoke", "--results-dir", str(tmp_path / "results"),
                     "--report-dir", str(tmp_path / "report"), "--render-only"]) == 0
    for path, content in views.items():
        assert path.read_bytes() == content, f"{path.name} did not regenerate identically"


def test_an_unavailable_subcommand_says_why_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(cli.SUBCOMMANDS, "missing", ("softmaxlab.harness.no_such_module", "not there"))
    assert cli.main(["missing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("softmaxlab missing: not available (ModuleNotFoundError") and err.count("\n") == 1


@pytest.mark.parametrize("command", ["accuracy", "bench", "report"])
def test_quick_is_the_quick_profile(command):
    args = cli.build_parser().parse_args([command, "--quick"])
    assert args.profile == "quick"
    assert cli.build_parser().parse_args([command]).profile == "full"


def test_publish_copies_a_full_run_into_the_snapshot_only_when_its_cells_are_trustworthy(tmp_path, monkeypatch):
    import pandas as pd

    from softmaxlab.harness import runs, tables
    from softmaxlab.harness.selection import SelectionError

    snapshot, snapshot_report = tmp_path / "results", tmp_path / "report"
    monkeypatch.setattr(runs, "publish_folders", lambda profile: (snapshot, snapshot_report))
    accuracy_rows, checks = accuracy.accuracy_rows(get_profile("smoke"), kernels=["softmax"], providers=["numpy"],
                                                   regime_names=["normal_x3"], progress=False)
    monkeypatch.setattr(accuracy, "accuracy_rows", lambda *args, **kwargs: (accuracy_rows, checks))
    monkeypatch.setattr(bench, "run_benchmarks", lambda *args, **kwargs: (bench.tidy_rows(fake_report()), []))
    monkeypatch.setitem(sys.modules, "softmaxlab.derivations.book", None)
    run_dir = tmp_path / "run"
    args = argparse.Namespace(profile="full", threads=None, results_dir=str(run_dir), report_dir=None, seed=0,
                              command="report", render_only=False, publish=True, force=False,
                              command_line="softmaxlab report --publish")
    flagged = tables.flagged_cells(bench.tidy_rows(fake_report()))
    status = report.run(args)
    assert (run_dir / "bench.csv").exists() and (run_dir / "index.md").exists()  # the run is kept either way
    if flagged.empty:
        assert status == 0 and (snapshot / "bench.csv").exists()
    else:
        assert status == 1 and not snapshot.exists()
    # publishing the same run afterwards, forced, copies its rows
    assert cli.main(["report", "--render-only", "--publish", "--force", "--results-dir", str(run_dir)]) == 0
    assert (snapshot / "bench.csv").read_bytes() == (run_dir / "bench.csv").read_bytes()
    assert (snapshot_report / "index.md").exists()
    # a run of another profile is never published
    rows = pd.read_csv(run_dir / "bench.csv").assign(profile="quick")
    rows.to_csv(run_dir / "bench.csv", index=False)
    with pytest.raises(SelectionError, match="takes a full-profile run"):
        report._publish(run_dir, force=True)


def test_a_flagged_cell_stops_publishing_unless_forced(tmp_path, monkeypatch):
    from softmaxlab.harness import runs

    snapshot = tmp_path / "results"
    monkeypatch.setattr(runs, "publish_folders", lambda profile: (snapshot, tmp_path / "report"))
    rows = bench.tidy_rows(fake_report()).assign(profile="full")
    rows.loc[rows.index[0], ["p20_s", "p80_s"]] = (rows["p50_s"].iloc[0] * 0.2, rows["p50_s"].iloc[0] * 5)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows.assign(spread=(rows["p80_s"] - rows["p20_s"]) / rows["p50_s"]).to_csv(run_dir / "bench.csv", index=False)
    assert report._publish(run_dir, force=False) == 1 and not snapshot.exists()
    assert report._publish(run_dir, force=True) == 0 and (snapshot / "bench.csv").exists()


def test_each_view_names_the_run_that_wrote_its_rows(tmp_path):
    """A snapshot may join an accuracy run and a speed run of other commits and machines than its
    last report run (report_run.json): each view's footnote names its own rows' run."""
    import json

    accuracy_rows, checks = accuracy.accuracy_rows(get_profile("smoke"), kernels=["softmax"], providers=["numpy"],
                                                   regime_names=["normal_x3"], progress=False)

    def context(commit, machine, timestamp):
        return {"profile": "full", "commit": commit, "timestamp": timestamp, "machine": machine,
                "versions": "numpy 2.4.6", "load_average": 0.1}

    report_context = {**context("aaaaaaa", "Old host", "2026-12-01T00:00:00+00:00"), "threads": 2,
                      "command": "softmaxlab report --publish"}
    (tmp_path / "report_run.json").write_text(json.dumps({
        "context": report_context, "book_line": "proof book: -", "failures": [], "thread_counts": {},
        "load_average_end": None, "seconds": 1.0}))
    accuracy_rows.assign(**context("bbbbbbb", "Accuracy host", "2026-12-02T00:00:00+00:00")).to_csv(
        tmp_path / "accuracy.csv", index=False)
    checks.to_csv(tmp_path / "reference_check.csv", index=False)
    bench.tidy_rows(fake_report()).assign(**context("ccccccc", "Speed host", "2026-12-03T00:00:00+00:00")).to_csv(
        tmp_path / "bench.csv", index=False)
    report.render(tmp_path, tmp_path / "report")
    accuracy_view = (tmp_path / "accuracy.md").read_text()
    bench_view = (tmp_path / "bench.md").read_text()
    assert "Machine: Accuracy host" in accuracy_view and "Commit bbbbbbb" in accuracy_view
    assert "Machine: Speed host" in bench_view and "Commit ccccccc" in bench_view
    for view in (accuracy_view, bench_view):
        assert "Old host" not in view and "aaaaaaa" not in view and "softmaxlab report --publish" not in view
    index = (tmp_path / "report" / "index.md").read_text()
    assert "another run than this report's: commit `bbbbbbb`" in index
    assert "another run than this report's: commit `ccccccc`" in index
    # the report run's own rows keep its command
    accuracy_rows.assign(**context("aaaaaaa", "Old host", "2026-12-01T00:00:00+00:00")).to_csv(
        tmp_path / "accuracy.csv", index=False)
    report.render(tmp_path, tmp_path / "report")
    assert "Command: `softmaxlab report --publish`" in (tmp_path / "accuracy.md").read_text()
