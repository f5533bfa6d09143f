"""Views of the tidy rows: Markdown tables (pandas pivots) and CSV writing.

Tables are never edited by hand; they are regenerated from the CSV rows.  The Markdown
writer is a few lines here rather than ``DataFrame.to_markdown`` so that no extra
dependency (tabulate) is needed.
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import pandas as pd

PROVIDER_ORDER = ("softmaxlab", "torch", "jax", "numpy", "numpy_naive", "pml", "torch_chunked", "cce")
REGIME_ORDER = ("normal_x3", "large_1e4", "near_ties", "dominant", "masked", "classes_1e6", "tiny_target", "row_2e20")


def markdown(frame: pd.DataFrame, index: bool = False) -> str:
    """A GitHub Markdown table of ``frame`` (cells as they are; NaN as empty), then its
    ``attrs["legend"]`` line if it has one."""
    legend = frame.attrs.get("legend")
    if index:
        frame = frame.reset_index()
    header = [str(column) for column in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        cells = ["" if (isinstance(value, float) and math.isnan(value)) else str(value) for value in row]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    if legend:
        lines += ["", legend]
    return "\n".join(lines) + "\n"


def ordered(values, order) -> list:
    """``values`` in ``order`` first, the rest after in their own order."""
    values = list(dict.fromkeys(values))
    return [v for v in order if v in values] + [v for v in values if v not in order]


def format_number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    if abs(value) >= 10 ** digits or abs(value) < 10 ** -2:
        return f"{value:.{max(digits - 1, 1)}e}"
    return f"{value:.{digits}g}"


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def write_text(text: str, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---- accuracy ----------------------------------------------------------------------------


def _accuracy_cell(row, metric: str) -> str:
    """``max (median)`` of ``metric`` ("ulp", "rel", "cond"; "rowwise": max only), non-finite counts in bold."""
    finite = row["n_values"] - row["n_nonfinite"]
    if isinstance(row.get("error"), str) and row["error"]:
        return f"**failed: {row['error'].split(':')[0]}**"
    if row["n_values"] and not finite:
        text = f"**all {row['n_values']} NaN/inf**"
    elif not row["n_values"]:
        text = "-"
    elif metric == "rowwise":
        text = format_number(row["max_rowwise_ulp"])
    else:
        text = f"{format_number(row[f'max_{metric}'])} ({format_number(row[f'median_{metric}'], 2)})"
    flags = []
    if row["n_nonfinite"] and finite:
        flags.append(f"{row['n_nonfinite']} of {row['n_values']} NaN/inf")
    if row["n_special_mismatch"]:
        flags.append(f"{row['n_special_mismatch']} of {row['n_special']} infinities wrong")
    if flags:
        text += " **" + "; ".join(flags) + "**"
    return text


def accuracy_table(rows: pd.DataFrame, metric: str = "ulp") -> pd.DataFrame:
    """Pivot: one line per (kernel, output, regime, dtype), one column per provider.

    Cells are ``max (median)`` errors in ULPs of the output dtype (``metric="ulp"``) or
    relative (``"rel"``), or the max row-wise ULP error (``"rowwise"``), or the
    condition-aware error in units of u (``"cond"``: only the outputs that have it, i.e. a
    non-NaN ``max_cond`` in some row; none in rows written before it existed), with the
    count of NaN/inf results where the exact value is finite, and of wrong infinities, in
    bold.  Kernels keep the order of the rows (the registry's).
    """
    if metric not in ("ulp", "rel", "rowwise", "cond"):
        raise ValueError(f"metric must be 'ulp', 'rel', 'rowwise' or 'cond', got {metric!r}")
    keys = ["kernel", "output", "regime", "dtype"]
    if metric == "cond":
        measured = rows.reindex(columns=["kernel", "output", "max_cond"]).dropna()
        rows = rows[pd.Series(list(zip(rows["kernel"], rows["output"])), index=rows.index).isin(
            set(zip(measured["kernel"], measured["output"])))]
        if rows.empty:
            return pd.DataFrame(columns=keys)
    cells = rows.assign(cell=rows.apply(_accuracy_cell, axis=1, metric=metric))
    table = cells.pivot_table(index=keys, columns="provider", values="cell", aggfunc="first")
    table = table[ordered(table.columns, PROVIDER_ORDER)].reset_index()
    kernel_rank = {kernel: rank for rank, kernel in enumerate(dict.fromkeys(rows["kernel"]))}
    output_rank = {key: rank for rank, key in enumerate(dict.fromkeys(zip(rows["kernel"], rows["output"])))}
    table["_order"] = list(zip(
        table["kernel"].map(kernel_rank),
        [output_rank[key] for key in zip(table["kernel"], table["output"])],
        table["regime"].map(lambda r: REGIME_ORDER.index(r) if r in REGIME_ORDER else 99),
        table["dtype"],
    ))
    table = table.sort_values("_order").drop(columns="_order")
    table.columns.name = None
    return table.reset_index(drop=True)


# ---- accuracy: the cells where a peer is more accurate ------------------------------------
#
# The peers are the frameworks softmaxlab is measured against; numpy and numpy_naive are
# textbook formulas that serve as baselines, not peers.  A softmaxlab cell is "above the
# best peer" on a metric when its max error exceeds the smallest max error among the peers
# whose results were all finite where the exact value is, and exceeds 1 (ULP, row-wise ULP,
# or u for the condition-aware error): at or below 1 both results are within one rounding
# of the exact value, and which of two such is closer says nothing about the method.  A
# softmaxlab cell with NaN/inf where a peer's has none is above it whatever the numbers.

PEERS = ("torch", "jax", "pml", "torch_chunked", "cce")
GAP_METRICS = {"ulp": "max_ulp", "rowwise": "max_rowwise_ulp", "cond": "max_cond"}
GAP_COLUMNS = ["kernel", "output", "regime", "dtype", "metric", "softmaxlab", "best peer", "peer's error", "ratio",
               "reason"]

# Every line of ``peer_gaps`` carries a reason.  One is read from the rows themselves: an
# elementwise or row-wise ULP error of an output formed by cancellation, where softmaxlab's
# condition-aware error is within one rounding or at or below the best peer's (the ULP
# figure then measures the cancellation, not the method: ``metrics.py``).  The others are
# measured findings, each explained in ``docs/performance.md``, "Accuracy against the
# peers", matched by (kernel pattern, output, regimes, dtypes, metrics), ``*`` for any; a
# line that matches none says "not explained".
GAP_REASONS = (
    ("linear_cross_entropy*", "loss", ("dominant",), "*", "*",
     "the loss is cross_entropy of the BLAS logits bit for bit: their rounding decides it "
     "(precision=\"float64\" gives 0.43 ULP)"),
    ("linear_cross_entropy_forward_backward", "*", "*", "*", "*",
     "the products' rounding: BLAS GEMMs per fixed tile, within 4.5x of the peers' GEMMs here and far below "
     "them in the dominant and 2^20-class regimes"),
    ("linear_margin_cross_entropy_forward_backward", "*", "*", "*", "*",
     "the products' rounding through the two normalizations: condition-aware 34-280 u in every implementation, "
     "softmaxlab's at most 1.41x torch's"),
    ("distillation_loss*", "loss", ("near_ties",), ("float64",), "*",
     "KL of near-equal rows: every method errs by about u T^2 log C per row (up to 100 ULP, JAX alike); "
     "the mean of 32 rows decides which is lower"),
    ("log_softmax_backward", "dx", "*", ("float64",), ("cond",),
     "e^y from exp64 (0.66 ULP) times the compensated sum, then one rounding: within two roundings of its terms"),
    ("softmax", "y", ("classes_1e6",), ("float64",), ("rowwise",),
     "S summed in float64 lanes over 10^6 terms (not compensated): within two roundings"),
    ("log_softmax", "y", ("near_ties",), ("float64",), "*", "within one rounding of the best peer"),
)


def _matches(pattern, value) -> bool:
    return pattern == "*" or (value in pattern if isinstance(pattern, tuple) else fnmatch.fnmatchcase(value, pattern))


def gap_reason(line: dict, cell: pd.DataFrame) -> str:
    """The reason of one ``peer_gaps`` line (its columns as a dict) given its cell's rows (see ``GAP_REASONS``)."""
    if line["metric"] in ("ulp", "rowwise") and "max_cond" in cell:
        ours = cell[(cell["provider"] == "softmaxlab") & cell["max_cond"].notna()]
        peers = [float(row["max_cond"]) for _, row in cell[cell["provider"].isin(PEERS)].iterrows()
                 if _clean(row) and pd.notna(row["max_cond"])]
        if not ours.empty and peers:
            ours_cond, best = float(ours["max_cond"].iloc[0]), min(peers)
            if ours_cond <= max(best, 1.0):
                return (f"cancellation: condition-aware error {format_number(ours_cond)} u, "
                        f"best peer {format_number(best)} u")
    for kernel, output, regimes, dtypes, metrics, reason in GAP_REASONS:
        if (_matches(kernel, line["kernel"]) and _matches(output, line["output"]) and _matches(regimes, line["regime"])
                and _matches(dtypes, line["dtype"]) and _matches(metrics, line["metric"])):
            return reason
    return "not explained"


def _failed(row) -> bool:
    """The implementation raised (the row carries its error message)."""
    return isinstance(row.get("error"), str) and bool(row["error"])


def _clean(row) -> bool:
    """The row ran, and every result is finite where the exact value is, with no wrong infinity."""
    return not _failed(row) and row["n_values"] > 0 and not row["n_nonfinite"] and not row["n_special_mismatch"]


def peer_gaps(rows: pd.DataFrame) -> pd.DataFrame:
    """The cells where softmaxlab's max error is above the best peer's (the rule above), one line per metric.

    Columns ``GAP_COLUMNS``: the cell, the metric ("ulp", "rowwise", "cond"), softmaxlab's max
    error ("NaN/inf" when it has non-finite results a peer has not), the best peer and its max
    error, their ratio, and the reason (``gap_reason``).  Empty when softmaxlab is at or
    below the best peer everywhere.
    """
    gaps = []
    keys = ["kernel", "output", "regime", "dtype"]
    for key, cell in rows.groupby(keys, sort=False):
        first = len(gaps)
        ours = cell[cell["provider"] == "softmaxlab"]
        peers = cell[cell["provider"].isin(PEERS)]
        if ours.empty or peers.empty:
            continue
        ours = ours.iloc[0]
        clean_peers = [row for _, row in peers.iterrows() if _clean(row)]
        for metric, column in GAP_METRICS.items():
            measured = [(float(row[column]), row["provider"]) for row in clean_peers
                        if column in row and pd.notna(row[column])]
            if not measured:
                continue
            best, peer = min(measured)
            if not _clean(ours):
                if not _failed(ours):
                    gaps.append(list(key) + [metric, "NaN/inf", peer, best, float("nan")])
                continue
            value = float(ours[column]) if column in ours and pd.notna(ours[column]) else float("nan")
            if math.isnan(value) or value <= 1.0 or value <= best:
                continue
            gaps.append(list(key) + [metric, value, peer, best, value / best if best > 0 else float("inf")])
        for line in gaps[first:]:
            line.append(gap_reason(dict(zip(GAP_COLUMNS, line)), cell))
    return pd.DataFrame(gaps, columns=GAP_COLUMNS)


def peer_gaps_markdown(rows: pd.DataFrame) -> str:
    """``peer_gaps`` as a Markdown table (numbers formatted), or a sentence when there is none."""
    gaps = peer_gaps(rows)
    if gaps.empty:
        return "softmaxlab is at or below the best peer in every cell and metric.\n"
    shown = gaps.assign(**{column: gaps[column].map(lambda v: v if isinstance(v, str) else format_number(v))
                           for column in ("softmaxlab", "peer's error", "ratio")})
    return markdown(shown)


# ---- speed: how far a cell can be trusted ------------------------------------------------
#
# A speed cell (one provider on one kernel, shape and dtype) is flagged, never dropped:
#
# * "spread": its samples' p80 - p20 exceeds SPREAD_FLAG times their p50, i.e. the middle
#   60 % of the timings spans more than a quarter of the median, too wide to quote the
#   median to the digits the tables print;
# * "load": other processes kept more than LOAD_FLAG_CPUS CPUs busy beyond the ones the run
#   left free while the cell was timed (``other_load - other_load_error - spare_cpus``,
#   measured by ``bench.py`` from /proc/stat; the error is the counters' tick resolution,
#   so a cell too short to measure is not flagged);
# * "roofline>100%": a provider faster than the same run's roofline, which it cannot be:
#   the limit loop or the cell was disturbed, or the cost model counts work the kernel
#   does not do (``roofline.py``).  Its fraction is shown as the flag, not as a number.
#
# The flags are computed from the row's numbers whenever a view is drawn (``cell_flags``),
# so rows written before these columns existed get the spread and roofline flags too.

SPREAD_FLAG = 0.25
LOAD_FLAG_CPUS = 0.25
ROOFLINE_FLAG = "roofline>100%"
FLAG_MARK = "\u2020"  # the dagger after a flagged number
FLAG_LEGEND = (f"{FLAG_MARK}: unreliable cell, flagged \"spread\" (p80 - p20 above {SPREAD_FLAG:.0%} of p50) or "
               f"\"load\" (other processes used over {LOAD_FLAG_CPUS} CPU beyond the free ones during the cell), or "
               f"on a % of limit, a flagged limit loop; {ROOFLINE_FLAG}: faster than the same run's roofline, "
               "a measurement error.")


def cell_flags(rows: pd.DataFrame) -> pd.Series:
    """Per row, the flags of the speed cell ("spread", "load", "roofline>100%", comma-joined; "" if none).

    Needs ``p20_s``, ``p50_s``, ``p80_s``; ``other_load``, ``other_load_error``,
    ``spare_cpus`` and ``fraction_of_limit`` are used where present.  The limit loops
    (providers ``limit:*``) are never flagged "roofline>100%": they define the roofline.
    """
    # comparisons with NaN (a column of rows that predate it, an unmeasured load) are False
    flags = {"spread": ((rows["p80_s"] - rows["p20_s"]) > SPREAD_FLAG * rows["p50_s"]).to_numpy()}
    if {"other_load", "other_load_error", "spare_cpus"} <= set(rows.columns):
        excess = rows["other_load"] - rows["other_load_error"] - rows["spare_cpus"]
        flags["load"] = (excess > LOAD_FLAG_CPUS).to_numpy()
    if "fraction_of_limit" in rows.columns:
        measured = ~rows["provider"].astype(str).str.startswith("limit:")
        flags[ROOFLINE_FLAG] = (measured & (rows["fraction_of_limit"] > 1.0)).to_numpy()
    return pd.Series([",".join(name for name, mask in flags.items() if mask[i]) for i in range(len(rows))],
                     index=rows.index, dtype=object)


def flagged_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """The speed cells of ``rows`` with at least one flag, with their ``flag`` column (see above).

    The limit loops' rows are included: a flagged limit loop makes its block's "% of limit"
    unreliable.  ``softmaxlab report --publish`` refuses a run for which this is not empty,
    unless forced.
    """
    flags = cell_flags(rows)
    return rows.assign(flag=flags)[flags != ""]


# ---- speed -----------------------------------------------------------------------------


def speed_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Pivot: one line per (kernel, shape, dtype); p50 per provider, ratios, roofline.

    ``x vs torch`` is torch's p50 over softmaxlab's (above 1: softmaxlab is faster), from
    measurements interleaved in the same run; likewise ``x vs jax`` and ``x vs pml``.  ``% of limit`` is
    the roofline time (max of the streaming time of the same bytes and the exp-loop time
    of the same exponentials, both measured in the same run) over the provider's p50.
    Flagged cells (``cell_flags``) carry FLAG_MARK after their time and the ratios they
    enter, or ROOFLINE_FLAG in place of their fraction; the table's ``attrs["legend"]``
    then holds the legend line, which :func:`markdown` prints under the table.
    """
    is_limit = rows["provider"].str.startswith("limit:")
    measured = rows[~is_limit]
    measured = measured.assign(_flag=cell_flags(measured))
    limits = rows[is_limit]
    limit_flags = cell_flags(limits)
    noisy_limits = limits[limit_flags.str.contains("spread|load", regex=True)]
    noisy_blocks = set(zip(*(noisy_limits[column] for column in ("kernel", "rows", "classes", "dtype"))))
    providers = ordered(measured["provider"], PROVIDER_ORDER)
    others = [provider for provider in ("torch", "jax", "pml") if provider in providers]
    lines = []
    keys = ["op", "mode", "kernel", "rows", "classes", "dtype"]
    for key, group in measured.groupby(keys, sort=False):
        by_provider = group.set_index("provider")
        line = dict(zip(keys, key))
        line["shape"] = f"{key[3]}x{key[4]}"
        p50 = by_provider["p50_s"]
        flags = by_provider["_flag"].str.split(",")
        mark = {provider: FLAG_MARK if {"spread", "load"} & set(flags[provider]) else "" for provider in p50.index}
        for provider in providers:
            line[f"{provider} ms"] = format_number(1e3 * p50[provider]) + mark[provider] if provider in p50 else ""
        for other in others:
            both = "softmaxlab" in p50 and other in p50
            line[f"x vs {other}"] = f"{p50[other] / p50['softmaxlab']:.2f}" + (mark[other] or mark["softmaxlab"]) \
                if both else ""
        for provider in providers:
            fraction = by_provider["fraction_of_limit"].get(provider, float("nan"))
            if provider in p50 and ROOFLINE_FLAG in flags[provider]:
                line[f"{provider} % of limit"] = ROOFLINE_FLAG
            else:
                limit_mark = FLAG_MARK if key[2:] in noisy_blocks else ""
                line[f"{provider} % of limit"] = "" if pd.isna(fraction) else f"{100 * fraction:.0f}{limit_mark}"
        line["bound"] = by_provider["bound"].iloc[0]
        line["GB/s (softmaxlab)"] = (
            format_number(by_provider.loc["softmaxlab", "bytes_per_s"] / 1e9) if "softmaxlab" in p50 else ""
        )
        lines.append(line)
    table = pd.DataFrame(lines)
    if table.empty:
        return table
    kernel_rank = {kernel: rank for rank, kernel in enumerate(dict.fromkeys(rows["kernel"]))}
    table["_kernel"] = table["kernel"].map(kernel_rank)
    table["_dtype"] = table["dtype"].map({"float32": 0, "float64": 1})
    table = table.sort_values(["_kernel", "_dtype", "classes"]).drop(
        columns=["_kernel", "_dtype", "op", "mode", "rows", "classes"])
    front = ["kernel", "shape", "dtype"]
    table = table[front + [c for c in table.columns if c not in front]].reset_index(drop=True)
    if (measured["_flag"] != "").any() or noisy_blocks:
        table.attrs["legend"] = FLAG_LEGEND
    return table
