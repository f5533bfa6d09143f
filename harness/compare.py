"""``softmaxlab compare RUN_A RUN_B``: what changed between two runs, and what got worse.

A run is any folder holding ``bench.csv``, ``accuracy.csv`` or both, as ``softmaxlab
bench``, ``accuracy`` and ``report`` write them: ``results/`` itself, ``results/smoke/``,
a ``--results-dir``.  ``report_run.json`` is read where there is one (load at the end of
the run, thread counts).  The comparison is a tidy table (:func:`compare_runs`), one
line per cell and metric, written as Markdown to stdout and, with ``--output``, as CSV
or Markdown by the file's suffix.

**Header.**  What differs between the runs: commit, profile, time, machine, CPU,
threads, the 1-minute load average at the start (and end, from ``report_run.json``),
the median CPUs other processes used during the speed cells (``other_load``, see
``bench.py``) and how many cells are flagged, and the packages whose versions differ.

**Speed.**  Per cell (kernel, mode, rows x classes, dtype, provider) of both runs, the
ratio r = p50_B / p50_A (above 1: B is slower) and an interval from the two runs'
p20-p80 spreads, combined in log space as relative errors of a quotient are::

    low  = r * exp(-sqrt(ln(p50_B / p20_B)**2 + ln(p80_A / p50_A)**2))
    high = r * exp(+sqrt(ln(p80_B / p50_B)**2 + ln(p50_A / p20_A)**2))

Each side takes the half of each spread that moves the ratio its way.  The spreads are
those of single samples, not of the medians (which would shrink with the sample count):
on a shared machine a rerun moves by about that much, so the interval is deliberately
wide.  A cell is "slower" when low > 1 + ``speed_threshold`` (default 5 %): B is slower
even at the favourable ends of both spreads; "faster" when high < 1 / (1 +
``speed_threshold``).  Each run's flags of the cell (``tables.cell_flags``: spread,
load, roofline>100%) stand beside it.  A slower cell is a regression unless it is flagged
"spread" or "load" in either run (then its status is "slower (flagged)": noise cannot be
told from a change there, and the report asks for a rerun on a quiet machine), or it is a
roofline loop (``limit:*``), which measures the machine, not the code; those are shown,
since a slower stream loop means a slower or busier machine.

**Accuracy.**  Per cell (kernel, output, regime, dtype, provider, rows x classes) of both
runs, every error column both CSVs have (those named ``max_*`` or ``median_*``: ULPs,
relative and row-wise errors, whatever ``metrics.py`` adds) and the counts of wrong
results (``n_nonfinite``, ``n_special_mismatch``).  An error column is "worse" when
max(B, floor) > ``accuracy_factor`` x max(A, floor) (default factor 2), "better" the other
way round; the floor, below which a change is rounding and never a regression, is 1 ULP
for the columns in ULPs and the dtype's machine epsilon for the others.  A count is worse
when it grew.  A cell that failed in B (its ``error`` column) and not in A is "failed".
Worse and failed cells are regressions.

Cells of only one run are listed as "only in A" / "only in B", never as regressions.
``--fail-on-regression`` makes the command exit with 1 when there is a regression (for
other projects' CI); 2 means the runs could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import tables

BENCH_FILE = "bench.csv"
ACCURACY_FILE = "accuracy.csv"
RUN_FILE = "report_run.json"  # report.RUN_FILE, named here so that compare imports no runner

SPEED_THRESHOLD = 0.05
ACCURACY_FACTOR = 2.0
SPEED_KEYS = ("kernel", "mode", "rows", "classes", "dtype", "provider")
ACCURACY_KEYS = ("kernel", "mode", "output", "regime", "rows", "classes", "dtype", "provider")
COUNT_COLUMNS = ("n_nonfinite", "n_special_mismatch")
# read as text: a commit like 09492e8 must not become the number 9.492e12
TEXT_COLUMNS = ("commit", "profile", "timestamp", "machine", "versions", "error", "flag", "kernel", "mode", "output",
                "regime", "dtype", "provider")
COLUMNS = ("section", "kernel", "mode", "output", "regime", "shape", "dtype", "provider", "metric", "a", "b",
           "ratio", "ratio_low", "ratio_high", "flag_a", "flag_b", "status", "regression")


class CompareError(ValueError):
    """A run that cannot be read or compared; the message names what was expected and what was found."""


@dataclass
class Run:
    """The rows and context of one run folder (None for a CSV the folder does not have)."""

    path: Path
    bench: pd.DataFrame | None
    accuracy: pd.DataFrame | None
    run_info: dict = field(default_factory=dict)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={column: str for column in TEXT_COLUMNS}, keep_default_na=False,
                           na_values=[""])
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise CompareError(f"{path}: expected a CSV of tidy rows, could not parse it ({error})") from None


def _require(frame: pd.DataFrame, columns, path: Path) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise CompareError(f"{path}: expected the columns {missing} of softmaxlab's rows, found "
                           f"{list(frame.columns)}")


def load_run(path) -> Run:
    """The run in folder ``path`` (see the module docstring); CompareError if there is none."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such folder; expected a run folder holding {BENCH_FILE} and/or "
                           f"{ACCURACY_FILE} (e.g. results/ or a --results-dir)")
    if not path.is_dir():
        raise CompareError(f"{path}: is a file; expected a run folder holding {BENCH_FILE} and/or {ACCURACY_FILE}")
    frames = {}
    for name, keys in ((BENCH_FILE, SPEED_KEYS + ("p50_s",)), (ACCURACY_FILE, ACCURACY_KEYS)):
        if (path / name).is_file():
            frames[name] = _read_csv(path / name)
            if not frames[name].empty:
                _require(frames[name], keys, path / name)
    if not frames:
        found = sorted(entry.name for entry in path.iterdir())[:12]
        raise CompareError(f"{path}: expected {BENCH_FILE} or {ACCURACY_FILE} in this folder, found "
                           f"{found or 'nothing'}")
    run_info = {}
    if (path / RUN_FILE).is_file():
        try:
            run_info = json.loads((path / RUN_FILE).read_text())
        except json.JSONDecodeError as error:
            raise CompareError(f"{path / RUN_FILE}: expected the JSON softmaxlab report writes ({error})") from None
    return Run(path, frames.get(BENCH_FILE), frames.get(ACCURACY_FILE), run_info)


def _as_run(run) -> Run:
    return run if isinstance(run, Run) else load_run(run)


# ---- the header: what changed between the runs ------------------------------------------------


def _sources(run: Run, column: str) -> dict:
    """{file name: distinct values of a context column in it}: the CSVs, else report_run.json's context."""
    sources = {}
    for name, frame in ((BENCH_FILE, run.bench), (ACCURACY_FILE, run.accuracy)):
        if frame is not None and column in frame.columns and frame[column].notna().any():
            sources[name] = list(frame[column].dropna().unique())
    context = run.run_info.get("context", {})
    if not sources and context.get(column) is not None:
        sources[RUN_FILE] = [context[column]]
    return sources


def _values(run: Run, column: str) -> list:
    """The distinct values of a context column over the run's files, bench.csv's first."""
    return list(dict.fromkeys(value for values in _sources(run, column).values() for value in values))


def _described(run: Run, column: str, transform=str) -> str:
    """The column's value(s); where the run's files disagree (bench and accuracy run apart), each file's."""
    sources = {name: ", ".join(dict.fromkeys(transform(value) for value in values))
               for name, values in _sources(run, column).items()}
    if len(set(sources.values())) > 1:
        return "; ".join(f"{name}: {text}" for name, text in sources.items())
    return next(iter(sources.values()), "-")


def _versions(run: Run) -> dict:
    """``{"numpy": "2.4.6", ...}`` from the first versions line of the run (``environment.versions_description``)."""
    values = _values(run, "versions")
    if not values:
        return {}
    pairs = (part.strip().rsplit(" ", 1) for part in str(values[0]).split(";") if part.strip())
    return {pair[0]: pair[1] if len(pair) > 1 else "" for pair in pairs}


def _load_line(run: Run) -> str:
    start = _described(run, "load_average")
    end = run.run_info.get("load_average_end")
    return start + (f" (end {end})" if end is not None else "")


def _cell_load_line(run: Run) -> str:
    if run.bench is None or run.bench.empty:
        return "-"
    flagged = tables.flagged_cells(run.bench)
    text = f"{len(flagged)} of {len(run.bench)} cells flagged"
    if "other_load_error" in run.bench.columns:
        # a cell shorter than a few ticks cannot say how busy the machine was: left out
        measured = run.bench[run.bench["other_load_error"] <= tables.LOAD_FLAG_CPUS]
        text = (f"median {measured['other_load'].median():.2f} CPUs over the {len(measured)} cells long enough "
                "to measure; " if not measured.empty else "no cell long enough to measure; ") + text
    return text


def run_header(a, b) -> pd.DataFrame:
    """One line per property of the runs: ``what``, ``A``, ``B``, ``changed`` ("yes" or "")."""
    a, b = _as_run(a), _as_run(b)
    lines = [("folder", str(a.path), str(b.path))]
    for what, column in (("commit", "commit"), ("profile", "profile"), ("time", "timestamp"),
                         ("machine", "machine"), ("threads", "threads")):
        lines.append((what, _described(a, column), _described(b, column)))

    def cpu(machine):  # environment.machine_description puts the CPU model first
        return str(machine).split(",")[0]

    lines.append(("CPU", _described(a, "machine", cpu), _described(b, "machine", cpu)))
    lines.append(("1-min load average", _load_line(a), _load_line(b)))
    lines.append(("other processes during the speed cells", _cell_load_line(a), _cell_load_line(b)))
    lines.append(("files", ", ".join(name for name, frame in ((BENCH_FILE, a.bench), (ACCURACY_FILE, a.accuracy))
                                     if frame is not None),
                  ", ".join(name for name, frame in ((BENCH_FILE, b.bench), (ACCURACY_FILE, b.accuracy))
                            if frame is not None)))
    versions_a, versions_b = _versions(a), _versions(b)
    if versions_a == versions_b:
        lines.append(("versions", f"the same {len(versions_a)} packages", f"the same {len(versions_b)} packages"))
    for package in dict.fromkeys([*versions_a, *versions_b]):
        if versions_a.get(package) != versions_b.get(package):
            lines.append((f"version of {package}", versions_a.get(package, "absent"),
                          versions_b.get(package, "absent")))
    header = pd.DataFrame(lines, columns=["what", "A", "B"])
    header["changed"] = np.where(header["A"] != header["B"], "yes", "")
    header.loc[header["what"] == "folder", "changed"] = ""
    return header


# ---- speed -----------------------------------------------------------------------------------


def _shape(frame: pd.DataFrame) -> pd.Series:
    return frame["rows"].astype("Int64").astype(str) + "x" + frame["classes"].astype("Int64").astype(str)


def _merged(a: pd.DataFrame, b: pd.DataFrame, keys: tuple, columns: list) -> pd.DataFrame:
    """Outer join of two runs' cells on ``keys`` (columns suffixed _a, _b; ``_merge`` says where each came from),
    in A's order of the cells, then those only in B in B's order."""
    def cells(frame):
        frame = frame.reindex(columns=list(dict.fromkeys([*keys, *columns])))
        frame = frame.drop_duplicates(subset=list(keys), keep="first")
        return frame.assign(_order=np.arange(len(frame)))

    merged = pd.merge(cells(a), cells(b), on=list(keys), how="outer", suffixes=("_a", "_b"), indicator=True)
    merged = merged.sort_values(["_order_a", "_order_b"], na_position="last", kind="stable")
    merged = merged.drop(columns=["_order_a", "_order_b"]).reset_index(drop=True)
    merged["shape"] = _shape(merged)
    return merged


def _presence(merged: pd.DataFrame) -> pd.Series:
    return merged["_merge"].map({"left_only": "only in A", "right_only": "only in B", "both": ""}).astype(str)


def speed_comparison(a: pd.DataFrame, b: pd.DataFrame, speed_threshold: float = SPEED_THRESHOLD) -> pd.DataFrame:
    """Speed lines of :func:`compare_runs` from two runs' bench rows (formula: module docstring)."""
    a = a.assign(flag=tables.cell_flags(a))
    b = b.assign(flag=tables.cell_flags(b))
    m = _merged(a, b, SPEED_KEYS, ["p20_s", "p50_s", "p80_s", "flag"])
    ratio = m["p50_s_b"] / m["p50_s_a"]
    with np.errstate(divide="ignore", invalid="ignore"):
        down = np.sqrt(np.log(m["p50_s_b"] / m["p20_s_b"]) ** 2 + np.log(m["p80_s_a"] / m["p50_s_a"]) ** 2)
        up = np.sqrt(np.log(m["p80_s_b"] / m["p50_s_b"]) ** 2 + np.log(m["p50_s_a"] / m["p20_s_a"]) ** 2)
    low, high = ratio * np.exp(-down), ratio * np.exp(up)
    flag_a, flag_b = m["flag_a"].fillna(""), m["flag_b"].fillna("")
    noisy = (flag_a + "," + flag_b).str.split(",").map(lambda flags: bool({"spread", "load"} & set(flags)))
    slower = low > 1 + speed_threshold
    status = _presence(m).mask(slower, "slower").mask(slower & noisy, "slower (flagged)")
    status = status.mask(high < 1 / (1 + speed_threshold), "faster")
    limit = m["provider"].astype(str).str.startswith("limit:")
    return pd.DataFrame({
        "section": "speed", "kernel": m["kernel"], "mode": m["mode"], "output": "", "regime": "",
        "shape": m["shape"], "dtype": m["dtype"], "provider": m["provider"], "metric": "p50_s",
        "a": m["p50_s_a"], "b": m["p50_s_b"], "ratio": ratio, "ratio_low": low, "ratio_high": high,
        "flag_a": flag_a, "flag_b": flag_b, "status": status,
        "regression": (status == "slower") & ~limit,
    }, columns=list(COLUMNS))


# ---- accuracy --------------------------------------------------------------------------------


def error_columns(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The error statistics both runs have (``max_*``, ``median_*``), then the counts of wrong results."""
    common = [column for column in a.columns if column in b.columns]
    errors = [column for column in common if column.startswith(("max_", "median_"))
              and pd.api.types.is_numeric_dtype(a[column]) and pd.api.types.is_numeric_dtype(b[column])]
    return errors + [column for column in COUNT_COLUMNS if column in common]


def _floor(metric: str, dtype: pd.Series) -> pd.Series:
    """Below this an error change is rounding: 1 ULP for ULP columns, else the dtype's machine epsilon."""
    if "ulp" in metric:
        return pd.Series(1.0, index=dtype.index)
    return dtype.map(lambda name: float(np.finfo(name).eps) if name in ("float32", "float64") else 0.0)


def accuracy_comparison(a: pd.DataFrame, b: pd.DataFrame, accuracy_factor: float = ACCURACY_FACTOR) -> pd.DataFrame:
    """Accuracy lines of :func:`compare_runs` from two runs' accuracy rows (rules: module docstring)."""
    if accuracy_factor < 1:
        raise CompareError(f"accuracy_factor must be >= 1 (how many times larger an error must get), "
                           f"got {accuracy_factor}")
    metrics = error_columns(a, b)
    m = _merged(a, b, ACCURACY_KEYS, metrics + ["error"])
    presence = _presence(m)
    failed_a = m["error_a"].fillna("").astype(str) != ""
    failed_b = m["error_b"].fillna("").astype(str) != ""
    base = {"section": "accuracy", "kernel": m["kernel"], "mode": m["mode"], "output": m["output"],
            "regime": m["regime"], "shape": m["shape"], "dtype": m["dtype"], "provider": m["provider"],
            "flag_a": "", "flag_b": ""}
    parts = []
    for metric in metrics:
        values_a, values_b = m[f"{metric}_a"].astype(float), m[f"{metric}_b"].astype(float)
        if metric in COUNT_COLUMNS:
            worse, better = values_b > values_a, values_b < values_a
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = (values_b / values_a).where(values_a > 0)
        else:
            floor = _floor(metric, m["dtype"])
            floored_a, floored_b = np.maximum(values_a, floor), np.maximum(values_b, floor)
            worse = floored_b > accuracy_factor * floored_a
            better = floored_a > accuracy_factor * floored_b
            ratio = floored_b / floored_a
        status = presence.mask(worse, "worse").mask(better, "better")
        parts.append(pd.DataFrame(dict(base, metric=metric, a=values_a, b=values_b, ratio=ratio, ratio_low=np.nan,
                                       ratio_high=np.nan, status=status, regression=status == "worse")))
    newly_failed = failed_b & ~failed_a & (m["_merge"] == "both")
    if newly_failed.any():
        failures = pd.DataFrame(dict(base, metric="error", a=np.nan, b=np.nan, ratio=np.nan, ratio_low=np.nan,
                                     ratio_high=np.nan, status="failed: " + m["error_b"].astype(str),
                                     regression=True))
        parts.append(failures[newly_failed])
    if not parts:  # no error column in common: still say which cells are in one run only
        parts.append(pd.DataFrame(dict(base, metric="", a=np.nan, b=np.nan, ratio=np.nan, ratio_low=np.nan,
                                       ratio_high=np.nan, status=presence, regression=False)))
    lines = pd.concat(parts)
    # one "only in A/B" line per cell is enough
    lines = lines[~lines["status"].str.startswith("only in") | ~lines.index.duplicated(keep="first")]
    return lines.sort_index(kind="stable").reset_index(drop=True).reindex(columns=list(COLUMNS))


# ---- both -----------------------------------------------------------------------------------


def compare_runs(a, b, *, speed_threshold: float = SPEED_THRESHOLD,
                 accuracy_factor: float = ACCURACY_FACTOR) -> pd.DataFrame:
    """Compare run B against run A (folders or :class:`Run`); the tidy lines of the module docstring.

    Columns: ``section`` (speed, accuracy), the cell (kernel, mode, output, regime, shape,
    dtype, provider), ``metric``, its values ``a`` and ``b``, ``ratio`` (B / A; for speed
    with ``ratio_low``, ``ratio_high``), the cells' flags ``flag_a``, ``flag_b``,
    ``status`` (slower, slower (flagged), faster, worse, better, failed: ..., only in A,
    only in B, or "") and ``regression``.  Only sections both runs have are compared;
    CompareError when they share none.
    """
    a, b = _as_run(a), _as_run(b)
    if speed_threshold < 0:
        raise CompareError(f"speed_threshold must be >= 0 (a fraction, 0.05 = 5 %), got {speed_threshold}")
    sections = []
    if a.bench is not None and b.bench is not None and not (a.bench.empty and b.bench.empty):
        sections.append(speed_comparison(a.bench, b.bench, speed_threshold))
    if a.accuracy is not None and b.accuracy is not None and not (a.accuracy.empty and b.accuracy.empty):
        sections.append(accuracy_comparison(a.accuracy, b.accuracy, accuracy_factor))
    if not sections:
        def files(run):
            return [name for name, frame in ((BENCH_FILE, run.bench), (ACCURACY_FILE, run.accuracy))
                    if frame is not None and not frame.empty] or "no rows"

        raise CompareError(f"nothing to compare: expected both runs to have rows in {BENCH_FILE} or both in "
                           f"{ACCURACY_FILE}; {a.path} has {files(a)}, {b.path} has {files(b)}")
    return pd.concat(sections, ignore_index=True)


# ---- Markdown ----------------------------------------------------------------------------------


def _speed_markdown(lines: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "kernel": lines["kernel"], "mode": lines["mode"], "shape": lines["shape"], "dtype": lines["dtype"],
        "provider": lines["provider"],
        "A ms": (1e3 * lines["a"]).map(tables.format_number), "B ms": (1e3 * lines["b"]).map(tables.format_number),
        "B / A": lines["ratio"].map(tables.format_number),
        "interval": [("" if pd.isna(low) else f"{tables.format_number(low)} - {tables.format_number(high)}")
                     for low, high in zip(lines["ratio_low"], lines["ratio_high"])],
        "flags A": lines["flag_a"], "flags B": lines["flag_b"],
        "status": lines["status"] + np.where(lines["regression"], " **regression**", ""),
    })
    return tables.markdown(shown)


def _accuracy_markdown(lines: pd.DataFrame) -> str:
    shown = pd.DataFrame({
        "kernel": lines["kernel"], "output": lines["output"], "regime": lines["regime"], "shape": lines["shape"],
        "dtype": lines["dtype"], "provider": lines["provider"], "metric": lines["metric"],
        "A": lines["a"].map(tables.format_number), "B": lines["b"].map(tables.format_number),
        "B / A": lines["ratio"].map(tables.format_number),
        "status": lines["status"] + np.where(lines["regression"], " **regression**", ""),
    })
    return tables.markdown(shown)


def compare_markdown(a, b, comparison: pd.DataFrame, *, speed_threshold: float = SPEED_THRESHOLD,
                     accuracy_factor: float = ACCURACY_FACTOR) -> str:
    """The report: header, regressions, every speed cell, the accuracy lines that changed."""
    a, b = _as_run(a), _as_run(b)
    regressions = comparison[comparison["regression"]]
    speed = comparison[comparison["section"] == "speed"]
    accuracy = comparison[comparison["section"] == "accuracy"]
    parts = [
        "# softmaxlab compare\n",
        f"A = `{a.path}`, B = `{b.path}`. Speed: B p50 / A p50 (above 1: B slower), interval from both runs' "
        f"p20-p80 spreads; slower or faster beyond {speed_threshold:.0%} at the interval's near end. Accuracy: "
        f"worse or better by more than {accuracy_factor:g}x (errors under 1 ULP, or under the dtype's epsilon, "
        "count as that floor); counts of wrong results, any increase. Formulas: "
        "`softmaxlab/harness/compare.py`.\n",
        "## What changed\n",
        tables.markdown(run_header(a, b)),
        f"## Regressions: {len(regressions)}\n",
    ]
    if regressions.empty:
        parts.append("None beyond the noise.\n")
    else:
        for section, lines in regressions.groupby("section", sort=False):
            parts.append(_speed_markdown(lines) if section == "speed" else _accuracy_markdown(lines))
    flagged = speed[speed["status"] == "slower (flagged)"]
    if not flagged.empty:
        parts += [f"### Slower, but flagged spread or load in A or B: {len(flagged)} (not counted; rerun on a "
                  "quiet machine to judge them)\n", _speed_markdown(flagged)]
    if not speed.empty:
        counts = speed["status"].replace("", "within the noise").value_counts()
        parts += [f"## Speed: {len(speed)} cells ("
                  + ", ".join(f"{count} {status}" for status, count in counts.items()) + ")\n",
                  _speed_markdown(speed)]
    if not accuracy.empty:
        changed = accuracy[(accuracy["status"] != "") | ~np.isclose(accuracy["a"], accuracy["b"], rtol=0, atol=0,
                                                                    equal_nan=True)]
        parts.append(f"## Accuracy: {len(changed)} of {len(accuracy)} values changed\n")
        if not changed.empty:
            parts.append(_accuracy_markdown(changed))
    return "\n".join(parts)


# ---- the command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", metavar="RUN_A", help="the baseline: a folder with bench.csv and/or accuracy.csv")
    parser.add_argument("run_b", metavar="RUN_B", help="the run compared against it")
    parser.add_argument("--output", metavar="FILE", help="also write the comparison to FILE: .csv (the tidy "
                        "lines) or .md (the report printed)")
    parser.add_argument("--speed-threshold", type=float, default=SPEED_THRESHOLD, metavar="FRACTION",
                        help=f"a cell is slower when B/A's interval lies above 1 + FRACTION (default "
                        f"{SPEED_THRESHOLD})")
    parser.add_argument("--accuracy-factor", type=float, default=ACCURACY_FACTOR, metavar="FACTOR",
                        help=f"an error is worse when it grew more than FACTOR times (default {ACCURACY_FACTOR:g})")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="exit with 1 when any cell regressed (for CI)")


def run(args) -> int:
    output = Path(args.output) if getattr(args, "output", None) else None
    try:
        if output is not None and output.suffix not in (".csv", ".md"):
            raise CompareError(f"--output: expected a file name ending in .csv or .md, got {str(output)!r}")
        a, b = load_run(args.run_a), load_run(args.run_b)
        comparison = compare_runs(a, b, speed_threshold=args.speed_threshold, accuracy_factor=args.accuracy_factor)
    except CompareError as error:
        print(f"softmaxlab compare: {error}", file=sys.stderr)
        return 2
    text = compare_markdown(a, b, comparison, speed_threshold=args.speed_threshold,
                            accuracy_factor=args.accuracy_factor)
    print(text)
    if output is not None:
        if output.suffix == ".csv":
            tables.write_csv(comparison, output)
        else:
            tables.write_text(text, output)
        print(f"wrote {output}", file=sys.stderr)
    regressions = int(comparison["regression"].sum())
    if regressions:
        print(f"softmaxlab compare: {regressions} regressions", file=sys.stderr)
    return 1 if (regressions and args.fail_on_regression) else 0
