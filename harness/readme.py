"""The README's tables, rendered from the committed results, never typed.

Two blocks of ``README.md`` live between marker comments and are rewritten from the tidy
rows (rule 8 of the house style: tables are views of rows):

* ``<!-- softmaxlab:speed-table -->`` ... ``<!-- /softmaxlab:speed-table -->``: torch p50 /
  softmaxlab p50 per kernel and benchmark shape, from ``results/bench.csv`` (one table per
  set of shapes: the normalizers' and losses' matrix, the classic losses', the margin
  family's);
* ``<!-- softmaxlab:accuracy-table -->`` ... ``<!-- /softmaxlab:accuracy-table -->``: the
  largest error in ULPs over the input regimes per kernel and output, softmaxlab beside
  torch and JAX, float32 and float64, from ``results/accuracy.csv``.

``softmaxlab report --publish`` rewrites them when it writes the committed snapshot; ``softmaxlab
readme`` rewrites them from ``results/`` alone (``--check`` only compares), and
``tests/harness/test_readme.py`` fails when they differ from what ``results/`` renders.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from . import environment, tables

BLOCKS = ("speed-table", "accuracy-table")
ACCURACY_PROVIDERS = ("softmaxlab", "torch", "jax")


def _shape_label(rows: int, classes: int, dtype: str) -> str:
    return f"{rows}x{classes}" + ("" if dtype == "float32" else f" {dtype}")


def _unreliable(pair: pd.DataFrame) -> pd.Series:
    """Per (kernel, rows, classes, dtype): whether softmaxlab's or torch's cell is flagged
    "spread" or "load" (``tables.cell_flags``), which makes their ratio unreliable."""
    if not {"p20_s", "p80_s"} <= set(pair.columns):
        return pd.Series(dtype=bool)
    flags = tables.cell_flags(pair).str.contains("spread|load", regex=True)
    return flags.groupby([pair[column] for column in ("kernel", "rows", "classes", "dtype")]).any()


def speed_markdown(rows: pd.DataFrame) -> str:
    """Torch p50 / softmaxlab p50 (above 1: softmaxlab faster), one table per set of benchmark shapes;
    a ratio whose cells are flagged unreliable carries ``tables.FLAG_MARK``, explained under the tables."""
    pair = rows[rows["provider"].isin(("softmaxlab", "torch"))]
    p50 = pair.pivot_table(
        index=["kernel", "rows", "classes", "dtype"], columns="provider", values="p50_s", aggfunc="first")
    if p50.empty or not {"softmaxlab", "torch"} <= set(p50.columns):
        return "(no side-by-side timings in results/bench.csv)\n"
    ratios = (p50["torch"] / p50["softmaxlab"]).dropna()
    unreliable = _unreliable(pair)

    def cell(key) -> str:
        return f"{ratios[key]:.2f}" + (tables.FLAG_MARK if unreliable.get(key, False) else "")

    groups: dict = {}  # shapes of a kernel -> kernels, in the rows' order
    for kernel in dict.fromkeys(rows["kernel"]):
        if kernel not in ratios.index.get_level_values("kernel"):
            continue
        shapes = [shape for shape in dict.fromkeys(
            zip(*(rows.loc[rows["kernel"] == kernel, column] for column in ("rows", "classes", "dtype"))))
                  if (kernel, *shape) in ratios.index]
        shapes.sort(key=lambda shape: (shape[2] != "float32", -shape[0]))
        groups.setdefault(tuple(shapes), []).append(kernel)
    parts = []
    for shapes, kernels in groups.items():
        header = ["kernel"] + [_shape_label(*shape) for shape in shapes]
        lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * len(shapes)]
        for kernel in kernels:
            lines.append(f"| {kernel} | " + " | ".join(cell((kernel, *shape)) for shape in shapes) + " |")
        parts.append("\n".join(lines) + "\n")
    if unreliable.any():
        parts.append(f"{tables.FLAG_MARK}: softmaxlab's or torch's cell flagged unreliable in `results/bench.md` "
                     f"(p80 - p20 above {tables.SPREAD_FLAG:.0%} of p50, or another process's load).\n")
    return "\n".join(parts)


def _ulp_cell(group: pd.DataFrame) -> str:
    """Largest max_ulp over the regimes, with the NaN/inf results where the exact value is finite."""
    if group.empty:
        return ""
    text = tables.format_number(float(group["max_ulp"].max()))
    nonfinite = int(group["n_nonfinite"].sum()) + int(group["n_special_mismatch"].sum())
    return text + (f" ({nonfinite} NaN/inf)" if nonfinite else "")


def accuracy_markdown(rows: pd.DataFrame) -> str:
    """Max ULP over the regimes per (kernel, output): softmaxlab, torch, JAX side by side, per dtype.

    A kernel ``f`` whose fused ``f_forward_backward`` is in the rows is left out: the fused
    entry's ``loss`` row is the same loss, and its gradient rows follow it.
    """
    no_error = rows["error"].isna() | (rows["error"].astype(str) == "")
    rows = rows[rows["provider"].isin(ACCURACY_PROVIDERS) & no_error]
    kernels = list(dict.fromkeys(rows["kernel"]))
    kernels = [kernel for kernel in kernels if f"{kernel}_forward_backward" not in kernels]
    dtypes = [dtype for dtype in ("float32", "float64") if dtype in set(rows["dtype"])]
    header = ["kernel", "output"] + [f"{provider} {dtype}" for dtype in dtypes for provider in ACCURACY_PROVIDERS]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    groups = rows.groupby(["kernel", "output", "dtype", "provider"], sort=False)
    for kernel in kernels:
        for output in dict.fromkeys(rows.loc[rows["kernel"] == kernel, "output"]):
            cells = []
            for dtype in dtypes:
                for provider in ACCURACY_PROVIDERS:
                    key = (kernel, output, dtype, provider)
                    cells.append(_ulp_cell(groups.get_group(key)) if key in groups.groups else "")
            lines.append(f"| {kernel} | {output} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def provenance(rows: pd.DataFrame, source: str) -> str:
    """One line: which file, commit, date and machine the table's rows come from."""
    context = rows.iloc[0] if len(rows) else {}
    parts = [f"From `{source}`"]
    if "commit" in rows and len(rows):
        parts.append(f"commit {context['commit']}")
    if "timestamp" in rows and len(rows):
        parts.append(str(context["timestamp"])[:10])
    if "machine" in rows and len(rows):
        parts.append(str(context["machine"]))
    return ", ".join(parts) + "."


def render_blocks(results_dir: Path) -> dict[str, str]:
    """{block name: markdown} from ``bench.csv`` and ``accuracy.csv`` of ``results_dir``."""
    results_dir = Path(results_dir)
    # a commit such as 09492e8 reads as a number unless it is read as text
    bench = pd.read_csv(results_dir / "bench.csv", dtype={"commit": str})
    accuracy = pd.read_csv(results_dir / "accuracy.csv", dtype={"commit": str})
    threads = f" ({int(bench['threads'].iloc[0])} threads for every framework)" if "threads" in bench and len(bench) else ""
    return {
        "speed-table": speed_markdown(bench) + "\n" + provenance(bench, "results/bench.csv")[:-1] + threads + ".\n",
        "accuracy-table": accuracy_markdown(accuracy) + "\n" + provenance(accuracy, "results/accuracy.csv") + "\n",
    }


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- softmaxlab:{name} -->\n)(.*?)(<!-- /softmaxlab:{name} -->)", re.S)


def rewrite(text: str, blocks: dict[str, str]) -> str:
    """``text`` with each block's content replaced; ValueError when a block's markers are missing."""
    for name, content in blocks.items():
        pattern = _pattern(name)
        if not pattern.search(text):
            raise ValueError(f"README has no block <!-- softmaxlab:{name} --> ... <!-- /softmaxlab:{name} -->")
        text = pattern.sub(lambda match: match.group(1) + "\n" + content + "\n" + match.group(3), text, count=1)
    return text


def update_readme(results_dir: Path | None = None, readme: Path | None = None, check: bool = False) -> bool:
    """Rewrite (or with ``check`` only compare) the README's blocks; True when they were out of date."""
    root = environment.repository_root()
    readme = Path(readme or root / "README.md")
    text = readme.read_text()
    updated = rewrite(text, render_blocks(results_dir or root / "results"))
    if updated != text and not check:
        readme.write_text(updated)
    return updated != text


def is_committed_snapshot(results_dir: Path) -> bool:
    """Whether ``results_dir`` is the committed ``results/`` the README quotes."""
    return Path(results_dir).resolve() == (environment.repository_root() / "results").resolve()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", help="where bench.csv and accuracy.csv are (default: results/)")
    parser.add_argument("--readme", help="the README to rewrite (default: README.md of the checkout)")
    parser.add_argument("--check", action="store_true", help="only say whether the blocks are out of date "
                        "(exit status 1 if they are)")


def run(args) -> int:
    stale = update_readme(args.results_dir, args.readme, check=args.check)
    if args.check:
        print("README tables are out of date" if stale else "README tables are up to date",
              file=sys.stderr if stale else sys.stdout)
        return 1 if stale else 0
    print("rewrote the README tables" if stale else "README tables already up to date")
    return 0
