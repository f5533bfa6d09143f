"""``softmaxlab accuracy``: every kernel x regime x dtype x provider against the exact reference.

For each registry entry, input regime (``regimes.py``) and dtype (float32, float64) the
inputs are drawn once, the exact reference is computed once (``exact/``: mpmath-50, or
the long double engine for rows of 10^6 classes), and every available implementation is
called on the same inputs.  Each output gives one tidy row: max and median error in ULPs
of the output dtype and relative error, the count of NaN/inf where the exact value is
finite, and of wrong infinities (``metrics.py`` defines all of it).  For the backward
entries the compared output is the gradient dx = J^T dy at x (softmaxlab's backward
kernel applied to its own forward output, torch.autograd, jax.vjp, the NumPy formula).

Where the long double engine was used, the same inputs cut to one row of
``reference_check_classes`` classes are referenced with both engines and their largest
disagreement is recorded (``reference_check.csv``): the reference is checked, not
trusted.

Writes ``accuracy.csv`` and ``accuracy.md`` (ULP and relative-error tables) to the run's
folder (``runs.py``: ``./softmaxlab-results/<UTC time>-<commit>/`` unless ``--results-dir``),
and prints the ULP table.  What runs (kernels, providers, your own ``--provider``,
``--shape``, ``--input``) is checked and built by ``selection.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import environment, exact, first_calls, regimes, runs, tables
from .providers import as_numpy, missing_requirement, report_skip
from .metrics import STAT_COLUMNS, Exact, error_stats, ulp_at
from .profiles import Profile, add_profile_arguments, get_profile, profile_entries
from .selection import require_cases

ROW_COLUMNS = (
    "kernel", "op", "mode", "output", "regime", "dtype", "provider", "rows", "classes", "reference",
) + STAT_COLUMNS + ("error",)
CHECK_COLUMNS = ("kernel", "output", "regime", "dtype", "checked_values", "engine", "max_deviation_ulp_float64",
                 "error")


def regime_shape(profile: Profile, regime: str) -> tuple[int, int]:
    """The (rows, classes) of ``regime`` in ``profile``."""
    if regime == regimes.MILLION_CLASSES_REGIME:
        return profile.million_shape
    if regime == regimes.LONG_ROW_REGIME:
        return regimes.LONG_ROW_SHAPE
    return profile.accuracy_shape


def subset_inputs(inputs: dict, shape: tuple[int, int], classes: int) -> dict:
    """The inputs cut to their first row and first ``classes`` classes.

    Arrays of the (rows, classes) shape are cut in both axes; arrays of one entry per row
    keep the first; integer ones among those (class indices) are taken modulo ``classes``
    so they stay valid; arrays of one row per class (weights) keep the first ``classes``;
    other arrays are kept.  Both engines see the same cut inputs.
    """
    cut = {}
    for name, value in inputs.items():
        value = np.asarray(value)
        if value.shape == tuple(shape):
            cut[name] = np.ascontiguousarray(value[:1, :classes])
        elif value.ndim == 2 and value.shape[0] == shape[1] and shape[1] != shape[0]:
            # one row per class (the linear cross-entropy's weights): the first classes
            cut[name] = np.ascontiguousarray(value[:classes])
        elif value.shape[:1] == (shape[0],) and value.ndim == 1:
            cut[name] = value[:1] % classes if np.issubdtype(value.dtype, np.integer) else value[:1]
        else:
            cut[name] = value
    return cut


def reference_check(entry, inputs: dict, shape, classes: int | None, regime: str, dtype: str) -> list[dict]:
    """Both engines on a cut of ``inputs``: the largest disagreement per output, in float64 ULPs."""
    cut = subset_inputs(inputs, shape, classes or shape[1])
    base = {"kernel": entry.kernel, "regime": regime, "dtype": dtype, "engine": exact.LONGDOUBLE_ENGINE}
    try:
        mpmath_values = entry.exact(cut, exact.MPMATH_ENGINE)
        longdouble_values = entry.exact(cut, exact.LONGDOUBLE_ENGINE)
    except Exception as error:  # recorded, not fatal: the sweep goes on
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        print(f"softmaxlab: reference check of {entry.kernel} {regime} {dtype} failed: {message}", file=sys.stderr)
        return [dict(base, output=name, checked_values=0, max_deviation_ulp_float64=np.nan, error=message)
                for name in entry.outputs]
    rows = []
    for name, truth, candidate in zip(entry.outputs, mpmath_values, longdouble_values):
        finite = np.isfinite(truth.hi)
        deviation = np.abs((candidate.hi[finite] - truth.hi[finite]) + (candidate.lo[finite] - truth.lo[finite]))
        ulps = deviation / ulp_at(Exact(truth.hi[finite], truth.lo[finite], truth.engine), np.float64)
        same_specials = np.array_equal(truth.hi[~finite], candidate.hi[~finite])
        rows.append(dict(
            base, output=name, checked_values=int(truth.hi.size),
            max_deviation_ulp_float64=(float(ulps.max()) if ulps.size else 0.0) if same_specials else np.inf,
            error="",
        ))
    return rows


def _as_outputs(result, count: int) -> tuple:
    values = as_numpy(result)
    if not isinstance(values, tuple):
        values = (values,)
    if len(values) != count:
        raise ValueError(f"an implementation returned {len(values)} outputs, the entry names {count}")
    return values


def accuracy_rows(
    profile: Profile,
    *,
    registry: dict | None = None,
    kernels=None,
    providers=None,
    regime_names=None,
    dtypes=None,
    seed: int = 0,
    progress: bool = True,
):
    """Run the accuracy sweep; returns (rows, reference_checks) as DataFrames (no context columns).

    ``dtypes`` defaults to the profile's.
    """
    dtypes = profile.dtypes if dtypes is None else dtypes
    selected = list(profile_entries(profile, registry, kernels).values())
    tasks = [
        (entry, regime, dtype)
        for entry in selected
        for regime in entry.regimes
        if regime_names is None or regime in regime_names
        for dtype in dtypes
    ]
    regimes_of = sorted({regime for entry in selected for regime in entry.regimes})
    require_cases(len(tasks), "accuracy", f"the selected entries {[entry.kernel for entry in selected]} have the "
                  f"regimes {regimes_of} and the dtypes {list(dtypes)}; got --regimes {regime_names}")
    rows, checks = [], []
    bar = tqdm(tasks, desc="accuracy", unit="case", disable=not progress, file=sys.stderr, leave=False)
    for entry, regime, dtype in bar:
        bar.set_postfix_str(f"{entry.kernel} {regime} {dtype}", refresh=False)
        shape = regime_shape(profile, regime)
        inputs = entry.make_inputs(regime, shape, dtype, seed)
        engine = exact.resolve_engine("auto", shape[0] * shape[1])
        try:
            references = entry.exact(inputs, engine)
        except NotImplementedError as error:  # no reference for this case: said, not fatal
            print(f"softmaxlab: {entry.kernel} / {regime} / {dtype}: no exact reference ({error})", file=sys.stderr)
            continue
        scales = entry.output_scales(inputs, engine)
        if engine == exact.LONGDOUBLE_ENGINE:
            checks.extend(reference_check(entry, inputs, shape, profile.reference_check_classes, regime, dtype))
        for implementation in entry.implementations:
            if providers is not None and implementation.provider not in providers:
                continue
            reason = missing_requirement(implementation.requires)
            if reason:
                report_skip(implementation.provider, reason)
                continue
            base = {"kernel": entry.kernel, "op": entry.op, "mode": entry.mode, "regime": regime, "dtype": dtype,
                    "provider": implementation.provider, "rows": shape[0], "classes": shape[1]}
            try:
                run = implementation.prepare(inputs)
                result = first_calls.call(run, kernel=entry.kernel, provider=implementation.provider,
                                          dtype=dtype, shape=shape, phase="accuracy")
                outputs = _as_outputs(result, len(entry.outputs))
            except Exception as error:  # one line and a row that says so; the sweep goes on
                message = f"{type(error).__name__}: {error}".splitlines()[0]
                print(f"softmaxlab: {entry.kernel} / {implementation.provider} / {regime} / {dtype} failed: "
                      f"{message}", file=sys.stderr)
                rows += [dict(base, output=name, reference=reference.engine, n_values=0, n_nonfinite=0,
                              n_special=0, n_special_mismatch=0, error=message)
                         for name, reference in zip(entry.outputs, references)]
                continue
            for name, computed, reference, scale in zip(entry.outputs, outputs, references, scales):
                row = dict(base, output=name, reference=reference.engine, error="")
                row.update(error_stats(computed, reference, dtype, scale=scale))
                rows.append(row)
    bar.close()
    return pd.DataFrame(rows, columns=ROW_COLUMNS), pd.DataFrame(checks, columns=CHECK_COLUMNS)


def accuracy_markdown(rows: pd.DataFrame, checks: pd.DataFrame, context: dict) -> str:
    """``accuracy.md``: the ULP, relative-error, row-wise and condition-aware tables, the reference check, a footnote."""
    parts = [
        "# Accuracy against exact references\n",
        "Cells: max (median) error over all entries whose exact value is finite; **bold**: NaN/inf "
        "results where the exact value is finite, or infinities that came out wrong. Backward rows "
        "compare the gradient dx = J^T dy at x. Definitions: `softmaxlab/harness/metrics.py`.\n",
        "## Error in ULPs of the output dtype\n",
        tables.markdown(tables.accuracy_table(rows, "ulp")),
        "\n## Relative error\n",
        tables.markdown(tables.accuracy_table(rows, "rel")),
        "\n## Row-wise error: max |error| in ULPs of the row's largest exact value\n",
        tables.markdown(tables.accuracy_table(rows, "rowwise")),
    ]
    conditioned = tables.accuracy_table(rows, "cond")
    if not conditioned.empty:
        parts += [
            "\n## Condition-aware error of the gradients\n",
            "Cells: max (median) |error| / (u scale + eta) in units of the unit roundoff u = 2^-p of the output "
            "dtype, scale the size of the terms that form the output (e.g. a_i (|dy_i| + sum_j a_j |dy_j|) for "
            "softmax's dx): a correctly rounded result scores at most 1 however much the terms cancel. Only "
            "the outputs that have a scale.\n",
            tables.markdown(conditioned),
        ]
    parts += [
        "\n## Cells above the best peer\n",
        f"Peers: {', '.join(tables.PEERS)} (numpy and numpy_naive are baselines). A line per cell and metric "
        "(ulp: the first table, rowwise: the third, cond: the condition-aware one) where softmaxlab's max error "
        "is above the smallest max error of a peer whose results were all finite, and above 1 (within one "
        "rounding of the exact value either result is as good as a method gives); or where softmaxlab has "
        "NaN/inf results and that peer has none. The last column gives each line's reason: a "
        "cancellation where the condition-aware error is within one rounding or at or below the peer's (read from "
        "the rows), or a measured finding of `harness/tables.py` (`GAP_REASONS`), explained in "
        "`docs/performance.md`, \"Accuracy against the peers\".\n",
        tables.peer_gaps_markdown(rows),
    ]
    if not checks.empty:
        parts += [
            "\n## Long double reference checked against mpmath-50\n",
            tables.markdown(checks.reindex(columns=list(CHECK_COLUMNS)).assign(
                max_deviation_ulp_float64=checks["max_deviation_ulp_float64"].map(tables.format_number),
                error=checks["error"].fillna("") if "error" in checks else "")),
        ]
    parts.append(f"\n{footnote(context)}\n")
    return "\n".join(parts)


def footnote(context: dict) -> str:
    text = (f"Machine: {context['machine']} (1-min load average {context.get('load_average')} at the start). "
            f"Versions: {context['versions']}. Commit {context['commit']}, {context['timestamp']}, "
            f"profile {context['profile']}")
    if "command" in context:
        text += f". Command: `{context['command']}`"
    return text + "."


def results_folder(args) -> Path:
    """``--results-dir``, the checkout's ``results/`` for ``report --publish``, else this run's new
    folder under ``./softmaxlab-results/`` (``runs.py``)."""
    if getattr(args, "publish", False):
        return runs.publish_folders(args.profile)[0]
    return runs.run_folder(args)


def raw_folder(args) -> Path:
    """Raw pytest-benchmark JSON and logs: ``results/raw/`` (git-ignored) when publishing, else the run's ``raw/``."""
    return results_folder(args) / "raw"


def add_selection_arguments(parser: argparse.ArgumentParser, bench: bool = False) -> None:
    """The options that choose what a run measures (``selection.py``), shared with ``bench``;
    the parser's epilog lists the kernels and providers."""
    parser.add_argument("--results-dir", help="where to write this run's files (default: a new folder "
                        "./softmaxlab-results/<UTC time>-<commit>/; the committed results/ only by report --publish)")
    parser.add_argument("--kernels", nargs="+", metavar="KERNEL", help="only these registry entries (or variants, "
                        "e.g. 'cross_entropy_forward_backward[label_smoothing=0.1]'); listed below")
    parser.add_argument("--providers", nargs="+", metavar="PROVIDER", help="only these providers (listed below; "
                        "softmaxlab_torch only when named)")
    parser.add_argument("--provider", action="append", default=[], metavar="NAME=module:function",
                        help="your own implementation as provider NAME: a function taking and returning what the "
                        "softmaxlab kernel of that name does (NumPy arrays), or NAME=module for one function per "
                        "kernel name; repeatable")
    parser.add_argument("--dtypes", nargs="+", metavar="DTYPE", choices=("float32", "float64"),
                        help="only these dtypes (default: the profile's)")
    if bench:
        parser.add_argument("--shape", nargs="+", metavar="ROWSxCLASSES", help="benchmark these shapes instead "
                            "of the entries' matrix (e.g. 4096x32000)")
    else:
        parser.add_argument("--shape", metavar="ROWSxCLASSES", help="every regime at this shape (e.g. 512x10575)")
    parser.add_argument("--input", metavar="FILE.npy", help="a 2-D array of your own as the first input "
                        "(logits or cosines) of the selected entries, regime file:<name>")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="run the torch and JAX providers "
                        "on this device (default cpu; cuda: as torch@cuda and jax@cuda)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    parser.epilog = _names_epilog()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _names_epilog() -> str:
    import textwrap

    from .selection import builtin_providers, kernel_names

    kernels = textwrap.fill(", ".join(kernel_names()), width=100, initial_indent="  ", subsequent_indent="  ")
    return (f"kernels:\n{kernels}\n"
            f"providers: {', '.join(builtin_providers())}; softmaxlab_torch (when named); "
            f"your own with --provider NAME=module:function")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile_arguments(parser)
    add_selection_arguments(parser)
    parser.add_argument("--regimes", nargs="+", metavar="REGIME", choices=regimes.ALL_REGIMES,
                        help=f"only these input regimes (of {', '.join(regimes.ALL_REGIMES)})")


def selection_of(args, profile):
    """The run's :class:`selection.Selection` from its options (SelectionError when they select nothing)."""
    from .selection import select

    shape = getattr(args, "shape", None)
    return select(profile, kernels=getattr(args, "kernels", None), providers=getattr(args, "providers", None),
                  extra_providers=getattr(args, "provider", None) or (),
                  shapes=[shape] if isinstance(shape, str) else shape, dtypes=getattr(args, "dtypes", None),
                  input_file=getattr(args, "input", None), device=getattr(args, "device", "cpu"))


def command_line(args) -> str:
    """The command as typed (set by ``cli.main``), else one equivalent to ``args``."""
    return getattr(args, "command_line", None) or f"softmaxlab {args.command} --profile {args.profile}"


def run_accuracy(args, progress: bool = True):
    """The sweep for parsed ``args``; writes the files and returns (rows, checks, paths)."""
    selection = selection_of(args, get_profile(args.profile))
    profile = selection.profile
    context = environment.run_context(profile.name)
    context["command"] = command_line(args)
    rows, checks = accuracy_rows(profile, registry=selection.entries, providers=selection.providers,
                                 regime_names=getattr(args, "regimes", None), seed=args.seed, progress=progress)
    rows = rows.assign(**{k: v for k, v in context.items() if k != "command"})
    folder = results_folder(args)
    paths = [
        tables.write_csv(rows, folder / "accuracy.csv"),
        tables.write_csv(checks.assign(timestamp=context["timestamp"]), folder / "reference_check.csv"),
        tables.write_text(accuracy_markdown(rows, checks, context), folder / "accuracy.md"),
    ]
    return rows, checks, paths, context


def run(args) -> int:
    start = time.perf_counter()
    rows, checks, paths, _ = run_accuracy(args)
    print(tables.markdown(tables.accuracy_table(rows, "ulp")))
    if not checks.empty:
        worst = checks["max_deviation_ulp_float64"].max()
        print(f"long double reference vs mpmath-50: largest disagreement {worst:.2e} ULP of float64 "
              f"over {int(checks['checked_values'].sum())} values")
    for path in paths:
        print(f"wrote {path}")
    print(f"accuracy: {time.perf_counter() - start:.0f} s")
    return 0
