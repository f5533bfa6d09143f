"""``softmaxlab report``: derive + accuracy + bench -> ``index.md``, CSV files, plots (``--publish``: the snapshot).

One process, in this order: pin the threads (before anything imports jax), run the proof
book (``softmaxlab.derivations.book.derive_all()``, imported lazily: if the derivations
are missing the report says so in one line and goes on), the accuracy sweep, the
benchmarks, then write

* ``<results>/accuracy.csv``, ``reference_check.csv``, ``bench.csv``, ``first_calls.csv``,
  ``proof_book.csv`` and their Markdown views (``accuracy.md``, ``bench.md``);
* ``<report>/index.md``: proof book status, accuracy table, speed table with ratio
  columns against torch and JAX, the plots, and a footnote with machine, versions,
  threads, commit, timestamp and the exact command;
* ``<report>/time_vs_classes.png`` and ``<report>/speedup_vs_torch.png``;
* for the committed snapshot (``results/``), README.md's speed and accuracy tables
  (``readme.py``).

Every view is rendered from the CSV rows (and ``report_run.json``: the context, the run's
duration, thread counts, load average at the end), so ``softmaxlab report --render-only``
rebuilds them identically without running anything.

``<results>`` and ``<report>`` are the run's own folder (``runs.py``:
``./softmaxlab-results/<UTC time>-<commit>/``, or ``--results-dir`` / ``--report-dir``).
``--publish`` then makes the run the committed snapshot (``results/``, ``report/`` and the
README's tables of the checkout), unless its speed cells are flagged unreliable
(``tables.flagged_cells``; ``--force`` publishes anyway); ``--render-only --publish
--results-dir RUN`` publishes an earlier full-profile run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from . import accuracy, bench, environment, first_calls, plots, readme, runs, tables
from .profiles import add_profile_arguments, get_profile
from .selection import SelectionError

PROOF_BOOK_COLUMNS = ("family", "title", "status", "general", "seconds")


def proof_book() -> tuple[pd.DataFrame, str, bool]:
    """Run the proof book; returns (records, one-line status, failed).

    ``failed`` is True only when the derivations exist and raised; when they are not
    importable the status line says so and the report goes on.
    """
    try:
        from softmaxlab.derivations.book import derive_all
    except ImportError as error:
        return pd.DataFrame(columns=PROOF_BOOK_COLUMNS), \
            f"proof book: not available ({type(error).__name__}: {error})", False
    start = time.perf_counter()
    try:
        records = derive_all()
    except Exception as error:  # the report still shows accuracy and speed
        return pd.DataFrame(columns=PROOF_BOOK_COLUMNS), \
            f"proof book: failed ({type(error).__name__}: {error})", True
    frame = pd.DataFrame([{column: getattr(record, column, None) for column in PROOF_BOOK_COLUMNS}
                          for record in records], columns=PROOF_BOOK_COLUMNS)
    # statuses read like "proven (general K)": count them by their first word
    counts = frame["status"].astype(str).str.split().str[0].value_counts().to_dict() if not frame.empty else {}
    summary = ", ".join(f"{count} {status}" for status, count in counts.items()) or "no records"
    return frame, f"proof book: {len(frame)} derivations ({summary}) in {time.perf_counter() - start:.0f} s", False


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def index_markdown(*, book: pd.DataFrame, book_line: str, accuracy_rows: pd.DataFrame, checks: pd.DataFrame,
                   bench_rows: pd.DataFrame, compiles: pd.DataFrame, failures: list, images: list,
                   files: list, context: dict, thread_counts: dict, report_dir: Path, seconds: float,
                   load_average_end=None) -> str:
    lines = [
        "# softmaxlab report\n",
        f"Profile **{context['profile']}**, commit `{context['commit']}`, {context['timestamp']}, "
        f"{seconds:.0f} s. Regenerate with `{context['command']}`. Every table below is a view of the "
        "CSV rows listed at the end.\n",
        "## Proof book\n",
        f"{book_line}\n",
    ]
    if not book.empty:
        shown = book.assign(seconds=book["seconds"].map(lambda v: "" if pd.isna(v) else f"{float(v):.1f}"))
        lines.append(tables.markdown(shown))
    lines += [
        "## Accuracy\n",
        "Max (median) error in ULPs of the output dtype against the exact reference (mpmath at 50 digits; "
        "rows of 10^6 classes: pairs of long doubles, checked against mpmath below). **Bold**: NaN/inf "
        "where the exact value is finite, or infinities that came out wrong. Backward rows compare "
        "dx = J^T dy at x. Relative errors: `accuracy.md`; definitions: `softmaxlab/harness/metrics.py`.\n",
        _other_run(accuracy_rows, context),
        tables.markdown(tables.accuracy_table(accuracy_rows, "ulp")) if not accuracy_rows.empty
        else "Not part of this run.\n",
    ]
    if not checks.empty:
        worst = checks["max_deviation_ulp_float64"].max()
        lines.append(f"Long double reference vs mpmath-50 on {int(checks['checked_values'].sum())} values: "
                     f"largest disagreement {worst:.1e} ULP of float64.\n")
    lines += [
        "## Speed\n",
        f"p50 over pooled samples of {int(bench_rows['repeats'].max()) if not bench_rows.empty else 0} "
        f"interleaved repeats per provider, {context.get('threads')} threads for every framework "
        f"(numba {thread_counts.get('numba')}, torch {thread_counts.get('torch', '-')}, JAX through the "
        f"CPU affinity of {thread_counts.get('affinity')} CPUs). `x vs torch` = torch p50 / softmaxlab p50 "
        "(above 1: softmaxlab faster), `x vs jax` likewise; `% of limit` = roofline time / p50, the "
        "roofline being the slower of a parallel stream of the same bytes (inputs read once + outputs "
        "written once) and an L1-resident loop of the same number of exps, both timed in the same run. "
        "Compile and JIT time are excluded (first calls below).\n",
        _other_run(bench_rows, context),
        tables.markdown(tables.speed_table(bench_rows)) if not bench_rows.empty else "Not part of this run.\n",
    ]
    if failures:
        lines.append("Failed benchmark cases: " + "; ".join(failures) + "\n")
    for title, image in images:
        lines.append(f"![{title}]({_relative(image, report_dir)})\n")
    compiles = compiles[compiles["provider"].isin(("softmaxlab", "torch", "jax", "pml"))] \
        if not compiles.empty else compiles
    if not compiles.empty:
        shown = compiles.assign(
            first_call_s=compiles["first_call_s"].map(lambda v: f"{v:.3f}"),
            compile_s=compiles["compile_s"].map(lambda v: f"{v:.3f}"),
        )[["kernel", "provider", "dtype", "shape", "phase", "first_call_s", "compile_s"]]
        lines += ["### First calls (compile and JIT time, kept out of every timing)\n", tables.markdown(shown)]
    lines += [
        "## Machine, versions, command\n",
        f"- machine: {context['machine']}; 1-min load average {context.get('load_average')} when the run "
        f"started (before its own work), {load_average_end} when it ended. Other processes' load "
        "shows in the timings of a 2-thread kernel, often as multiples of the 4 ms scheduler tick",
        f"- versions: {context['versions']}",
        f"- threads: {context.get('threads')} for every framework; commit `{context['commit']}`; {context['timestamp']}",
        f"- command: `{context['command']}`",
        "- files: " + ", ".join(f"[{Path(f).name}]({_relative(f, report_dir)})" for f in files),
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_arguments(parser, threads=True)
    parser.add_argument("--results-dir", help="CSV and Markdown tables (default: a new folder "
                        "./softmaxlab-results/<UTC time>-<commit>/)")
    parser.add_argument("--report-dir", help="index.md and plots (default: the results folder)")
    parser.add_argument("--publish", action="store_true", help="write the committed snapshot: results/, report/ "
                        "and README.md's tables of the checkout (full profile, from inside the checkout)")
    parser.add_argument("--force", action="store_true", help="with --publish: publish even a run whose speed "
                        "cells are flagged unreliable")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    parser.add_argument("--render-only", action="store_true", help="rewrite the Markdown tables, plots and "
                        "index.md from the CSV rows already in --results-dir (any run's folder; with --publish, "
                        "results/) and run nothing")


RUN_FILE = "report_run.json"
RUN_FILES = ("proof_book.csv", "accuracy.csv", "reference_check.csv", "bench.csv", "first_calls.csv", RUN_FILE)


def run(args) -> int:
    publish = getattr(args, "publish", False)
    if publish:
        runs.publish_folders(args.profile)  # refuses early: not the full profile, not in the checkout
    if getattr(args, "render_only", False):
        return _render_only(args, publish)
    start = time.perf_counter()
    threads = environment.pin_threads(getattr(args, "threads", None))  # before jax is imported
    profile = get_profile(args.profile)
    # a run writes its own folder; --publish copies it into the snapshot once it passes the checks
    results_dir = runs.run_folder(args)
    report_dir = Path(args.report_dir) if getattr(args, "report_dir", None) and not publish else results_dir
    context = environment.run_context(profile.name, threads)
    context["command"] = accuracy.command_line(args)
    stages = tqdm(total=4, desc="report", unit="stage", file=sys.stderr, position=0)

    stages.set_postfix_str("derive")
    book, book_line, book_failed = proof_book()
    print(book_line, file=sys.stderr)
    stages.update(1)

    stages.set_postfix_str("accuracy")
    accuracy_rows, checks = accuracy.accuracy_rows(profile, seed=args.seed)
    stages.update(1)

    stages.set_postfix_str("bench")
    plan = bench.BenchPlan(profile, threads=threads, seed=args.seed, drop_unavailable=True)
    label = f"{profile.name}-{context['timestamp'].replace(':', '')}"
    bench_rows, failures = bench.run_benchmarks(plan, results_dir / "raw", label)
    stages.update(1)

    stages.set_postfix_str("tables and plots")
    row_context = {k: v for k, v in context.items() if k not in ("command", "threads")}
    tables.write_csv(book.assign(timestamp=context["timestamp"]), results_dir / "proof_book.csv")
    tables.write_csv(accuracy_rows.assign(**row_context), results_dir / "accuracy.csv")
    tables.write_csv(checks.assign(timestamp=context["timestamp"]), results_dir / "reference_check.csv")
    tables.write_csv(bench_rows.assign(**row_context), results_dir / "bench.csv")
    tables.write_csv(bench.compile_table(first_calls.FIRST_CALLS), results_dir / "first_calls.csv")
    run_info = {
        "context": context,
        "book_line": book_line,
        "failures": failures,
        "thread_counts": environment.thread_counts(),
        "load_average_end": environment.load_average(),
        "seconds": time.perf_counter() - start,
    }
    tables.write_text(json.dumps(run_info, indent=1, default=str) + "\n", results_dir / RUN_FILE)
    paths = render(results_dir, report_dir)
    stages.update(1)
    stages.close()
    for path in paths:
        print(f"wrote {path}")
    status = 1 if (failures or book_failed) else 0
    if publish:
        status = status or _publish(results_dir, force=getattr(args, "force", False))
    print(f"report: {time.perf_counter() - start:.0f} s")
    return status


def _render_only(args, publish: bool) -> int:
    """``--render-only``: the views of an existing run's rows; with ``--publish``, that run (or
    results/ itself) becomes the snapshot."""
    given = getattr(args, "results_dir", None)
    if not given and not publish:
        raise SelectionError("--render-only needs the run to render: --results-dir DIR (a folder written by "
                             "softmaxlab accuracy, bench or report), or --publish for results/")
    source = Path(given) if given else runs.publish_folders(args.profile)[0]
    if not source.is_dir():
        raise SelectionError(f"--results-dir {source}: no such folder")
    if publish:
        return _publish(source, force=getattr(args, "force", False))
    report_dir = Path(args.report_dir) if getattr(args, "report_dir", None) else source
    for path in render(source, report_dir):
        print(f"wrote {path}")
    return 0


def _publish(source: Path, force: bool) -> int:
    """Make the run in ``source`` the committed snapshot: its rows into results/, the views
    into results/ and report/, README.md's tables.  Refused (status 1) when its speed cells
    are flagged unreliable (``tables.flagged_cells``) unless ``force``, or when it is not a
    full-profile run."""
    results, report_dir = runs.publish_folders("full")
    bench_rows = _read_csv(source / "bench.csv")
    profiles = set(bench_rows.get("profile", pd.Series(dtype=str)).dropna()) | \
        set(_read_csv(source / "accuracy.csv").get("profile", pd.Series(dtype=str)).dropna())
    if profiles - {"full"}:
        raise SelectionError(f"--publish takes a full-profile run; {source} holds {sorted(profiles)}")
    flagged = tables.flagged_cells(bench_rows) if not bench_rows.empty else bench_rows
    if not flagged.empty and not force:
        shown = ", ".join(f"{row.kernel} {row.rows}x{row.classes} {row.dtype} {row.provider} ({row.flag})"
                          for row in flagged.head(5).itertuples())
        print(f"softmaxlab report --publish: not published: {len(flagged)} speed cells are flagged unreliable "
              f"(spread, load or a roofline fraction above 100%), e.g. {shown}. The run is in {source}: rerun on a "
              f"quiet machine, or publish it as it is with `softmaxlab report --render-only --publish "
              f"--results-dir {source} --force`", file=sys.stderr)
        return 1
    if source.resolve() != results.resolve():
        results.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, results / name)
    paths = render(results, report_dir) + _readme_tables(results)
    for path in paths:
        print(f"published {path}")
    return 0


def _readme_tables(results_dir: Path) -> list[Path]:
    """Rewrite README.md's speed and accuracy tables when ``results_dir`` is the committed snapshot."""
    if not readme.is_committed_snapshot(results_dir):
        return []
    path = environment.repository_root() / "README.md"
    return [path] if readme.update_readme(results_dir, path) else []


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return pd.DataFrame()


def _run_info(results_dir: Path, accuracy_rows: pd.DataFrame, bench_rows: pd.DataFrame) -> dict:
    """``report_run.json`` of a report run; for a folder written by ``accuracy`` or ``bench``
    alone, the same fields from the context columns of its rows."""
    path = results_dir / RUN_FILE
    if path.exists():
        return json.loads(path.read_text())
    rows = bench_rows if not bench_rows.empty else accuracy_rows
    first = rows.iloc[0].to_dict()
    context = {key: first.get(key) for key in ("profile", "commit", "timestamp", "machine", "versions",
                                                  "load_average")}
    context["threads"] = first.get("threads", "-")
    context["command"] = "softmaxlab report --render-only --results-dir " + str(results_dir)
    return {"context": context, "book_line": "proof book: not part of this run", "failures": [],
            "thread_counts": {}, "load_average_end": None, "seconds": float("nan")}


ROW_CONTEXT = ("profile", "commit", "timestamp", "machine", "versions", "load_average")


def _table_context(rows: pd.DataFrame, context: dict) -> dict:
    """The context of the run that wrote ``rows``, for their view's footnote: their own context
    columns where they carry them, ``context`` (the report run's) for the rest.  A snapshot may
    hold an accuracy run and a speed run of other commits and machines than the last report
    run; the report run's command is kept only where its commit and timestamp are the rows'."""
    if rows.empty or not set(ROW_CONTEXT) <= set(rows.columns):
        return context
    first = rows.iloc[0]
    own = {key: first[key] for key in ROW_CONTEXT}
    if "threads" in rows.columns:
        own["threads"] = first["threads"]
    merged = {**context, **own}
    if (str(own["commit"]), str(own["timestamp"])) != (str(context.get("commit")), str(context.get("timestamp"))):
        merged.pop("command", None)
    return merged


def _other_run(rows: pd.DataFrame, context: dict) -> str:
    """A line naming the run that wrote ``rows`` where it is not the report run of ``context``."""
    own = _table_context(rows, context)
    if "command" in own or "command" not in context:
        return ""
    return (f"These rows come from another run than this report's: commit `{own['commit']}`, {own['timestamp']}, "
            f"{own['machine']}, {own.get('threads')} threads.\n")


def render(results_dir: Path, report_dir: Path) -> list[Path]:
    """Write every view (accuracy.md, bench.md, the plots, index.md) from the CSV rows alone.

    ``softmaxlab report --render-only`` calls this on an existing results folder; a run
    calls it after writing the rows, so the views of a run and a re-render are identical.
    """
    results_dir, report_dir = Path(results_dir), Path(report_dir)
    book = _read_csv(results_dir / "proof_book.csv").reindex(columns=list(PROOF_BOOK_COLUMNS))
    accuracy_rows = _read_csv(results_dir / "accuracy.csv")
    checks = _read_csv(results_dir / "reference_check.csv")
    bench_rows = _read_csv(results_dir / "bench.csv")
    compiles = _read_csv(results_dir / "first_calls.csv")
    if accuracy_rows.empty and bench_rows.empty:
        raise SelectionError(f"{results_dir} holds no accuracy.csv or bench.csv rows to render")
    run_info = _run_info(results_dir, accuracy_rows, bench_rows)
    context = run_info["context"]
    files = [results_dir / name for name in ("proof_book.csv", "accuracy.csv", "reference_check.csv", "bench.csv",
                                              "first_calls.csv")]
    files = [path for path in files if path.exists()]
    if not accuracy_rows.empty:
        files.append(tables.write_text(accuracy.accuracy_markdown(accuracy_rows, checks,
                                                                  _table_context(accuracy_rows, context)),
                                       results_dir / "accuracy.md"))
    if not bench_rows.empty:
        files.append(tables.write_text(bench.bench_markdown(bench_rows, compiles, _table_context(bench_rows, context)),
                                       results_dir / "bench.md"))
    report_dir.mkdir(parents=True, exist_ok=True)
    images = [
        ("time per element vs classes", plots.time_vs_classes(bench_rows, report_dir / "time_vs_classes.png")),
        ("speed-up over torch", plots.speedup_vs_torch(bench_rows, report_dir / "speedup_vs_torch.png")),
    ] if not bench_rows.empty else []
    images = [(title, path) for title, path in images if path is not None]
    index = index_markdown(
        book=book, book_line=run_info["book_line"], accuracy_rows=accuracy_rows, checks=checks,
        bench_rows=bench_rows, compiles=compiles, failures=run_info["failures"], images=images, files=files,
        context=context, thread_counts=run_info["thread_counts"], report_dir=report_dir,
        seconds=run_info["seconds"], load_average_end=run_info["load_average_end"],
    )
    index_path = tables.write_text(index, report_dir / "index.md")
    return files + [path for _, path in images] + [index_path]
