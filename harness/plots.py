"""Plots drawn from the tidy benchmark rows (views only: no number is computed here twice).

* ``time_vs_classes.png``: per kernel, p50 time per element (ns, log scale) against the
  number of classes, one line per provider, p20-p80 as error bars, and the roofline of
  the same run (dashed).  float32 rows of the benchmark matrix; the row count changes
  with the class count (4096x1000 ... 1x4194304), hence time per element.
* ``speedup_vs_torch.png``: per kernel, torch's p50 over each provider's p50 for every
  shape of the matrix (above 1: faster than torch), log scale.

Flagged cells (``tables.cell_flags``: spread, load, roofline>100%) are drawn hollow: an
unfilled marker on the time plot, a hatched unfilled bar (either side of the ratio
flagged) on the speed-up plot, with a legend entry saying so.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .tables import PROVIDER_ORDER, cell_flags, ordered  # noqa: E402

PROVIDER_COLORS = {"softmaxlab": "tab:blue", "torch": "tab:orange", "jax": "tab:green", "numpy": "tab:gray",
                   "numpy_naive": "tab:brown", "pml": "tab:purple"}
PROVIDER_MARKERS = {"softmaxlab": "o", "torch": "s", "jax": "^", "pml": "D"}


def _kernel_title(frame: pd.DataFrame, kernel: str) -> str:
    return kernel.replace("_forward_backward", " (fwd+bwd)")


def _panels(count: int):
    """A grid for ``count`` panels; returns (figure, panels, spare) with spare an empty slot or None."""
    columns = min(count, 3)
    rows = int(np.ceil(count / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.9 * rows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.axis("off")
    spare = axes.flat[count] if axes.size > count else None
    return figure, list(axes.flat[:count]), spare


FLAGGED_LABEL = "hollow: flagged cell (spread, load or roofline>100%)"


def _legend(panels, spare):
    """One legend of every label used in any panel: in the spare slot, else in the first panel."""
    entries = {}
    for panel in panels:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if spare is not None:
        spare.legend(list(entries.values()), list(entries), loc="center", fontsize=10, frameon=False)
    else:
        panels[0].legend(list(entries.values()), list(entries), fontsize=8)


def _finish(figure, title: str, path) -> None:
    """Title above the panels (room kept for it whatever the figure's height), then save."""
    figure.suptitle(title)
    height = figure.get_figheight()
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _log_axis(axis):
    axis.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    axis.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def time_vs_classes(rows: pd.DataFrame, path: Path, dtype: str = "float32") -> Path | None:
    """Draw ``time_vs_classes.png`` (see the module docstring); None if there is nothing to draw."""
    frame = rows[rows["dtype"] == dtype].copy()
    if frame.empty:
        return None
    frame["elements"] = frame["rows"] * frame["classes"]
    frame["flag"] = cell_flags(frame)
    class_counts = frame.groupby("kernel", sort=False)["classes"].nunique()
    kernels = [kernel for kernel in dict.fromkeys(frame["kernel"]) if class_counts[kernel] >= 2]
    if not kernels:
        return None
    figure, axes, spare = _panels(len(kernels))
    for axis, kernel in zip(axes, kernels):
        data = frame[frame["kernel"] == kernel].sort_values("classes")
        measured = data[~data["provider"].str.startswith("limit:")]
        for provider in ordered(measured["provider"], PROVIDER_ORDER):
            line = measured[measured["provider"] == provider]
            per_element = 1e9 * line["p50_s"] / line["elements"]
            lower = per_element - 1e9 * line["p20_s"] / line["elements"]
            upper = 1e9 * line["p80_s"] / line["elements"] - per_element
            axis.errorbar(line["classes"], per_element, yerr=[lower.clip(lower=0), upper.clip(lower=0)],
                          label=provider, color=PROVIDER_COLORS.get(provider), marker=PROVIDER_MARKERS.get(provider, "o"),
                          capsize=3, linewidth=1.8)
            flagged = (line["flag"] != "").to_numpy()
            if flagged.any():  # the same marker, white inside, over the filled one
                axis.plot(line["classes"][flagged], per_element[flagged], linestyle="none",
                          marker=PROVIDER_MARKERS.get(provider, "o"), markerfacecolor="white",
                          markeredgecolor=PROVIDER_COLORS.get(provider), markeredgewidth=1.5, zorder=3,
                          label=FLAGGED_LABEL)
        roofline = data.groupby("classes").agg(limit_s=("limit_s", "first"), elements=("elements", "first"))
        axis.plot(roofline.index, 1e9 * roofline["limit_s"] / roofline["elements"], "k--", linewidth=1,
                  label="roofline (same run)")
        axis.set_xscale("log")
        axis.set_yscale("log")
        _log_axis(axis)
        shapes = data.drop_duplicates("classes")
        axis.set_xticks(shapes["classes"])
        axis.set_xticklabels([f"{r}x{c}" for r, c in zip(shapes["rows"], shapes["classes"])], rotation=20, fontsize=8)
        axis.minorticks_off()
        axis.set_title(_kernel_title(frame, kernel))
        axis.set_xlabel("rows x classes")
        axis.set_ylabel("ns per element (p50; bars p20-p80)")
        axis.grid(True, which="major", alpha=0.3)
    _legend(axes, spare)
    threads = rows["threads"].iloc[0] if "threads" in rows else "?"
    _finish(figure, f"Time per element vs classes, {dtype}, {threads} threads (lower is faster)", path)
    return Path(path)


def speedup_vs_torch(rows: pd.DataFrame, path: Path) -> Path | None:
    """Draw ``speedup_vs_torch.png`` (see the module docstring); None without torch rows."""
    measured = rows[~rows["provider"].str.startswith("limit:")].copy()
    if measured.empty or "torch" not in set(measured["provider"]):
        return None
    measured["shape"] = measured["rows"].astype(str) + "x" + measured["classes"].astype(str) + \
        np.where(measured["dtype"] == "float64", " f64", "")
    measured["flagged"] = cell_flags(measured) != ""
    kernels = list(dict.fromkeys(measured["kernel"]))
    figure, axes, spare = _panels(len(kernels))
    for axis, kernel in zip(axes, kernels):
        data = measured[measured["kernel"] == kernel]
        p50 = data.pivot_table(index="shape", columns="provider", values="p50_s", aggfunc="first")
        p50 = p50.loc[list(dict.fromkeys(data.sort_values(["dtype", "classes"])["shape"]))]
        flagged = data.pivot_table(index="shape", columns="provider", values="flagged", aggfunc="any")
        flagged = flagged.reindex(index=p50.index, columns=p50.columns).fillna(False).astype(bool)
        providers = [p for p in ordered(p50.columns, PROVIDER_ORDER) if p != "torch"]
        width = 0.8 / max(len(providers), 1)
        positions = np.arange(len(p50.index))
        for offset, provider in enumerate(providers):
            speedup = p50["torch"] / p50[provider]
            # bars grow from the torch line (1) up or down, so slower-than-torch reads at a glance
            bars = axis.bar(positions + (offset - (len(providers) - 1) / 2) * width, speedup - 1.0, width,
                            bottom=1.0, label=provider, color=PROVIDER_COLORS.get(provider))
            unreliable = (flagged[provider] | flagged["torch"]).to_numpy()
            if unreliable.any():  # hatched white bars over the flagged ones (the legend keeps the solid colour)
                axis.bar([bar.get_x() + bar.get_width() / 2 for bar, hit in zip(bars, unreliable) if hit],
                         (speedup - 1.0)[unreliable], width, bottom=1.0, facecolor="white",
                         edgecolor=PROVIDER_COLORS.get(provider), hatch="///", label=FLAGGED_LABEL)
            for bar, value in zip(bars, speedup):
                if np.isfinite(value):
                    axis.annotate(f"{value:.2g}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                                  va="bottom" if value >= 1 else "top", fontsize=7)
        axis.axhline(1.0, color="tab:orange", linewidth=1.5, label="torch = 1")
        axis.set_yscale("log")
        _log_axis(axis)
        low, high = np.nanmin(p50["torch"].values[:, None] / p50[providers].values), \
            np.nanmax(p50["torch"].values[:, None] / p50[providers].values)
        axis.set_ylim(min(low, 1.0) / 1.4, max(high, 1.0) * 1.4)
        axis.set_xticks(positions)
        axis.set_xticklabels(p50.index, rotation=20, fontsize=8)
        axis.set_title(_kernel_title(measured, kernel))
        axis.set_ylabel("speed-up over torch (p50 ratio)")
        axis.grid(True, axis="y", which="both", alpha=0.3)
    _legend(axes, spare)
    _finish(figure, "Speed-up over torch, same-run interleaved measurements (above 1: faster than torch)", path)
    return Path(path)
