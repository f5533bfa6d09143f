"""``softmaxlab bench``: side-by-side timings (pytest-benchmark) with the threads pinned.

What runs: ``harness/benchmarks.py`` under pytest with ``--benchmark-enable``, in this
process, after :func:`environment.pin_threads` gave numba, torch and JAX the same
thread count.  The plan (:class:`BenchPlan`) cuts the work into blocks of one
(kernel, shape, dtype); inside a block every provider of the registry entry and the two
roofline loops (``roofline.py``) run one after the other, and the block is repeated
``bench_repeats`` times with the providers' order rotated.  A provider's samples are
pooled over the repeats; every ratio in the tables compares measurements interleaved
this way in the same run, never numbers from different runs.

This is the one timing engine of the repository: the option and path variants of the
registry (``registry.VARIANTS``, e.g. ``cross_entropy_forward_backward[label_smoothing=0.1]``,
``cosface_forward_backward[from_embeddings]``) are timed by naming them in ``--kernels``.

Compile and JIT time never enter a timing: each implementation is called once before
its first timed round (that call's time is kept as ``first_call_s``; ``compile_s`` is
``first_call_s - p50``), and pytest-benchmark adds one warm-up round.  Inputs come from
the ``normal_x3`` regime; conversions to tensors or device arrays and the forward pass
of backward kernels happen in ``prepare``, outside the timed call.

How far a cell can be trusted is recorded with it: ``spread`` = (p80 - p20) / p50 of its
pooled samples, and the machine's load while it was timed.  Around each timed test the
machine's busy CPU time (``/proc/stat``: every CPU's user, nice, system, irq, softirq and
steal ticks) and this process's CPU time (``time.process_time``, all its threads) are
read; ``other_load`` = (machine busy - own) / wall seconds, summed over the repeats, is
the mean number of CPUs other processes (and the hypervisor's steal) kept busy during the
cell.  The counters tick at ``SC_CLK_TCK`` per CPU, so each reading may be off by one tick
per CPU: ``other_load_error`` = 2 ticks x CPUs x repeats / wall seconds bounds that.
``spare_cpus`` = the machine's CPUs - the run's threads.  Where /proc/stat is missing the
load columns are empty.  ``flag`` names what makes the cell unreliable
(``tables.cell_flags``: "spread", "load", "roofline>100%", thresholds there).

Output: tidy rows (``bench.csv``: kernel, op, mode, provider, rows, classes, dtype,
threads, p20/p50/p80 seconds, bytes moved, bytes/s, the roofline columns, spread, load
and flag, machine, versions, commit, timestamp), ``bench.md`` (the speed table with
ratios against torch and JAX, flagged cells marked) and the raw pytest-benchmark JSON
and log under ``raw/``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import environment, first_calls, roofline, tables
from .providers import as_numpy, missing_requirement, report_skip
from .profiles import Profile, add_profile_arguments, get_profile, profile_entries
from .selection import require_cases

LIMIT_PROVIDERS = ("limit:stream", "limit:exp", "limit:matmul")
BENCH_REGIME = "normal_x3"
PROFILE_ENVIRONMENT_VARIABLE = "SOFTMAXLAB_BENCH_PROFILE"

ROW_COLUMNS = (
    "kernel", "op", "mode", "provider", "rows", "classes", "dtype", "threads",
    "p20_s", "p50_s", "p80_s", "mean_s", "samples", "repeats", "first_call_s", "compile_s",
    "read_elements", "written_elements", "exp_count", "bytes", "bytes_per_s",
    "stream_limit_s", "exp_limit_s", "matmul_limit_s", "limit_s", "bound", "fraction_of_limit",
    "spread", "other_load", "other_load_error", "spare_cpus", "flag",
)
_DERIVED_COLUMNS = ("stream_limit_s", "exp_limit_s", "matmul_limit_s", "limit_s", "bound", "fraction_of_limit",
                    "flag")


@dataclass(frozen=True)
class BenchCase:
    """One pytest-benchmark test: a provider timed on a (kernel, shape, dtype) in one repeat."""

    kernel: str
    provider: str
    rows: int
    classes: int
    dtype: str
    repeat: int

    @property
    def test_id(self) -> str:
        return f"{self.kernel}-{self.rows}x{self.classes}-{self.dtype}-{self.provider}-r{self.repeat}"

    @property
    def block(self) -> tuple:
        return (self.kernel, self.rows, self.classes, self.dtype)


def profile_shapes(profile: Profile, entry) -> list:
    """The benchmark shapes of ``entry`` in ``profile`` (smoke shapes, or the matrix cut by dtype and size)."""
    if profile.bench_smoke_shapes:
        return list(entry.smoke_shapes)
    return [
        (rows, classes, dtype)
        for rows, classes, dtype in entry.bench_shapes
        if dtype in profile.dtypes and (profile.bench_max_elements is None or rows * classes <= profile.bench_max_elements)
    ]


class BenchPlan:
    """The ordered cases of a run and the prepared calls of the block being timed."""

    def __init__(self, profile: Profile, registry=None, *, kernels=None, providers=None,
                 threads: int | None = None, seed: int = 0, drop_unavailable: bool = False):
        entries = profile_entries(profile, registry, kernels)
        self.profile = profile
        self.registry = entries
        self.threads = threads
        self.seed = seed
        self.cases: list[BenchCase] = []
        for name, entry in entries.items():
            names = [
                implementation.provider
                for implementation in entry.implementations
                if implementation.timed and (providers is None or implementation.provider in providers)
            ]
            if drop_unavailable:
                names = [provider for provider in names if self._available(entry, provider)]
            for rows, classes, dtype in profile_shapes(profile, entry):
                block = list(names) + ["limit:stream"]
                cost = entry.cost((rows, classes))
                if cost.exp_count:
                    block.append("limit:exp")
                if cost.matmuls:
                    block.append("limit:matmul")
                for repeat in range(profile.bench_repeats):
                    turn = repeat % len(block)
                    for provider in block[turn:] + block[:turn]:
                        self.cases.append(BenchCase(name, provider, rows, classes, dtype, repeat))
        self._block = None
        self._inputs = None
        self._prepared: dict = {}

    @staticmethod
    def _available(entry, provider) -> bool:
        reason = missing_requirement(entry.implementation(provider).requires)
        if reason:
            report_skip(provider, reason)
        return reason is None

    # ---- preparing a case (outside any timing) -------------------------------------------

    def prepared(self, case: BenchCase):
        """(run, first_call_s, warm_call_s, first result) of ``case``, prepared once per block.

        The first call (compile/JIT included) and a second, warm call are timed here,
        outside pytest-benchmark; the previous block's inputs and prepared calls are dropped.
        """
        if case.block != self._block:
            self._prepared.clear()
            self._inputs = None
            self._block = case.block
        if case.provider not in self._prepared:
            entry = self.registry[case.kernel]
            shape = (case.rows, case.classes)
            if case.provider == "limit:stream":
                cost = entry.cost(shape)
                run = roofline.stream_runner(cost.read_elements, cost.written_elements, case.dtype)
            elif case.provider == "limit:exp":
                run = roofline.exp_runner(entry.cost(shape).exp_count, case.dtype)
            elif case.provider == "limit:matmul":
                run = roofline.matmul_runner(entry.cost(shape).matmuls, case.dtype)
            else:
                if self._inputs is None:
                    self._inputs = entry.make_inputs(BENCH_REGIME, shape, case.dtype, self.seed)
                run = entry.implementation(case.provider).prepare(self._inputs)
            result, first, warm = first_calls.timed_first_two(run)
            first_calls.record(kernel=case.kernel, provider=case.provider, dtype=case.dtype, shape=shape,
                               phase="bench", first=first, warm=warm)
            self._prepared[case.provider] = (run, first, warm, result)
        return self._prepared[case.provider]

    # ---- running a case (called by the pytest test) ---------------------------------------

    def run_case(self, benchmark, case: BenchCase) -> None:
        import pytest

        entry = self.registry[case.kernel]
        if case.provider not in LIMIT_PROVIDERS:
            reason = missing_requirement(entry.implementation(case.provider).requires)
            if reason:
                pytest.skip(f"provider {case.provider!r} skipped: {reason}")
        run, first_call_s, warm, _ = self.prepared(case)
        if benchmark.disabled:  # the normal test suite: one call, checked
            self.check_result(case, benchmark(run))
            return
        rounds = self.profile.bench_rounds(warm)
        cost = entry.cost((case.rows, case.classes))
        benchmark.group = f"{case.kernel} {case.rows}x{case.classes} {case.dtype}"
        benchmark.extra_info.update(
            asdict(case), op=entry.op, mode=entry.mode, threads=self.threads, first_call_s=first_call_s,
            read_elements=cost.read_elements, written_elements=cost.written_elements,
            exp_count=cost.exp_count, bytes=cost.bytes_moved(case.dtype),
        )
        before = load_sample()
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
        benchmark.extra_info.update(load_window(before, load_sample()))

    def check_result(self, case: BenchCase, result) -> None:
        """Smoke check: the right number of finite outputs of the case's dtype."""
        if case.provider in LIMIT_PROVIDERS:
            if not np.isfinite(result):
                raise AssertionError(f"{case.test_id}: roofline loop returned {result}")
            return
        entry = self.registry[case.kernel]
        outputs = as_numpy(result)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        if len(outputs) != len(entry.outputs):
            raise AssertionError(f"{case.test_id}: {len(outputs)} outputs, the entry names {entry.outputs}")
        for name, output in zip(entry.outputs, outputs):
            if output.dtype != np.dtype(case.dtype):
                raise AssertionError(f"{case.test_id}: output {name} has dtype {output.dtype}, expected {case.dtype}")
            if not np.isfinite(output).all():
                raise AssertionError(f"{case.test_id}: output {name} has NaN/inf on {BENCH_REGIME} inputs")


_ACTIVE_PLAN: BenchPlan | None = None


def active_plan() -> BenchPlan:
    """The plan ``softmaxlab bench`` set, else the profile named by $SOFTMAXLAB_BENCH_PROFILE (smoke)."""
    global _ACTIVE_PLAN
    if _ACTIVE_PLAN is None:
        _ACTIVE_PLAN = BenchPlan(get_profile(os.environ.get(PROFILE_ENVIRONMENT_VARIABLE, "smoke")))
    return _ACTIVE_PLAN


@contextlib.contextmanager
def plan_in_effect(plan: BenchPlan):
    global _ACTIVE_PLAN
    previous, _ACTIVE_PLAN = _ACTIVE_PLAN, plan
    try:
        yield plan
    finally:
        _ACTIVE_PLAN = previous


# ---- the machine's load during a cell (see the module docstring) ---------------------------


def _machine_busy_ticks() -> int | None:
    """Busy ticks of all CPUs since boot (first line of /proc/stat), None where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal (guest time is already inside user)
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return user + nice + system + irq + softirq + steal


def load_sample() -> tuple:
    """(wall clock s, machine busy ticks or None, this process's CPU s): one end of a load window."""
    return time.perf_counter(), _machine_busy_ticks(), time.process_time()


def load_window(before: tuple, after: tuple) -> dict:
    """The raw load of the window between two :func:`load_sample` readings (pooled by ``tidy_rows``)."""
    wall = after[0] - before[0]
    own = after[2] - before[2]
    if before[1] is None or after[1] is None:
        return {"load_wall_s": wall, "load_others_cpu_s": None, "load_tick_s": None, "cpus": os.cpu_count()}
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    return {"load_wall_s": wall, "load_others_cpu_s": (after[1] - before[1]) * tick - own, "load_tick_s": tick,
            "cpus": os.cpu_count()}


def _pooled_load(infos: list, threads) -> dict:
    """other_load, other_load_error, spare_cpus of a cell from its repeats' load windows."""
    windows = [info for info in infos if info.get("load_others_cpu_s") is not None]
    if not windows:
        return {"other_load": np.nan, "other_load_error": np.nan, "spare_cpus": np.nan}
    wall = sum(info["load_wall_s"] for info in windows)
    cpus = windows[0]["cpus"]
    return {
        "other_load": max(sum(info["load_others_cpu_s"] for info in windows) / wall, 0.0),
        "other_load_error": sum(2 * info["load_tick_s"] * cpus for info in windows) / wall,
        "spare_cpus": cpus - (threads or cpus),
    }


# ---- from pytest-benchmark's JSON to tidy rows --------------------------------------------


def tidy_rows(report: dict) -> pd.DataFrame:
    """Pool each provider's samples over the repeats; add bytes/s, the roofline, spread, load and flag columns."""
    groups: dict = defaultdict(lambda: {"samples": [], "repeats": 0, "first_call_s": 0.0, "infos": []})
    for benchmark in report.get("benchmarks", []):
        info = benchmark["extra_info"]
        key = (info["kernel"], info["provider"], info["rows"], info["classes"], info["dtype"])
        group = groups[key]
        group["samples"].extend(benchmark["stats"]["data"])
        group["repeats"] += 1
        group["first_call_s"] = max(group["first_call_s"], info["first_call_s"])
        group["info"] = info
        group["infos"].append(info)
    rows = []
    for key, group in groups.items():
        info = group["info"]
        samples = np.asarray(group["samples"], dtype=float)
        p20, p50, p80 = np.percentile(samples, [20, 50, 80])
        rows.append({
            "kernel": info["kernel"], "op": info["op"], "mode": info["mode"], "provider": info["provider"],
            "rows": info["rows"], "classes": info["classes"], "dtype": info["dtype"], "threads": info["threads"],
            "p20_s": p20, "p50_s": p50, "p80_s": p80, "mean_s": samples.mean(), "samples": samples.size,
            "repeats": group["repeats"], "first_call_s": group["first_call_s"],
            "compile_s": max(group["first_call_s"] - p50, 0.0),
            "read_elements": info["read_elements"], "written_elements": info["written_elements"],
            "exp_count": info["exp_count"], "bytes": info["bytes"], "bytes_per_s": info["bytes"] / p50,
            "spread": (p80 - p20) / p50, **_pooled_load(group["infos"], info["threads"]),
        })
    frame = pd.DataFrame(rows, columns=[c for c in ROW_COLUMNS if c not in _DERIVED_COLUMNS])
    if frame.empty:
        return frame.reindex(columns=ROW_COLUMNS)
    block = ["kernel", "rows", "classes", "dtype"]
    limits = frame[frame["provider"].isin(LIMIT_PROVIDERS)].pivot_table(
        index=block, columns="provider", values="p50_s", aggfunc="first")
    limits = limits.reindex(columns=list(LIMIT_PROVIDERS)).rename(
        columns={"limit:stream": "stream_limit_s", "limit:exp": "exp_limit_s", "limit:matmul": "matmul_limit_s"})
    limits.columns.name = None
    frame = frame.merge(limits.reset_index(), on=block, how="left")
    bounds = frame[["stream_limit_s", "exp_limit_s", "matmul_limit_s"]]
    frame["limit_s"] = bounds.max(axis=1, skipna=True)
    frame["bound"] = np.array(["memory", "exp", "matmul"])[bounds.fillna(0).to_numpy().argmax(axis=1)]
    frame["fraction_of_limit"] = frame["limit_s"] / frame["p50_s"]
    frame["flag"] = tables.cell_flags(frame)
    return frame[list(ROW_COLUMNS)]


# ---- the run -------------------------------------------------------------------------------


class _ProgressPlugin:
    """Advances a tqdm bar as pytest finishes each benchmark."""

    def __init__(self, bar):
        self.bar = bar
        self.failures: list[str] = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.bar.update(1)
            self.bar.set_postfix_str(report.nodeid.rsplit("[", 1)[-1].rstrip("]"), refresh=False)
        if report.failed:
            self.failures.append(f"{report.nodeid}: {report.longreprtext.strip().splitlines()[-1:]}")


@contextlib.contextmanager
def _outside_xdist():
    """Hide an xdist worker's environment variables (``PYTEST_XDIST_*``) for the block."""
    hidden = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("PYTEST_XDIST_")}
    try:
        yield
    finally:
        os.environ.update(hidden)


def run_benchmarks(plan: BenchPlan, raw_folder: Path, label: str, progress: bool = True) -> tuple[pd.DataFrame, list]:
    """Run ``plan`` through pytest-benchmark in this process; returns (tidy rows, failures)."""
    import json

    import pytest

    from . import benchmarks

    raw_folder.mkdir(parents=True, exist_ok=True)
    json_path = raw_folder / f"bench-{label}.json"
    log_path = raw_folder / f"bench-{label}.log"
    # The inner run is a plain pytest session whatever runs this one: pytest-benchmark turns
    # itself off inside an xdist worker (it reads PYTEST_XDIST_WORKER), which would leave the
    # plan untimed, so the worker's variables are hidden and xdist is not loaded.
    arguments = [
        str(Path(benchmarks.__file__)), "-q", "--no-header", "-p", "no:cacheprovider", "-p", "no:xdist",
        "--import-mode=importlib", "--benchmark-enable", "--benchmark-disable-gc",
        f"--benchmark-json={json_path}", "--benchmark-sort=name",
        f"--rootdir={Path(benchmarks.__file__).parent}",
    ]
    bar = tqdm(total=len(plan.cases), desc="bench", unit="test", disable=not progress, file=sys.stderr, leave=False)
    progress_plugin = _ProgressPlugin(bar)
    with plan_in_effect(plan), _outside_xdist(), open(log_path, "w") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        exit_code = pytest.main(arguments, plugins=[progress_plugin])
    bar.close()
    failures = list(progress_plugin.failures)
    if exit_code not in (0, 5) and not failures:
        failures.append(f"pytest exited with {exit_code}; see {log_path}")
    report = json.loads(json_path.read_text()) if json_path.exists() else {}
    if plan.cases and not report.get("benchmarks") and not failures:
        failures.append(f"pytest-benchmark timed none of the {len(plan.cases)} cases; see {log_path}")
    return tidy_rows(report), failures


def compile_table(records: list[dict]) -> pd.DataFrame:
    """First call per (kernel, provider, dtype) in this process: where compile/JIT time went."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    frame = frame[~frame["provider"].isin(LIMIT_PROVIDERS + ("numpy", "numpy_naive"))]
    return frame.groupby(["kernel", "provider", "dtype"], sort=False).head(1).reset_index(drop=True)


def bench_markdown(rows: pd.DataFrame, compiles: pd.DataFrame, context: dict) -> str:
    from .accuracy import footnote

    parts = [
        "# Speed\n",
        f"p50 of pooled samples over {int(rows['repeats'].max()) if not rows.empty else 0} interleaved "
        f"repeats, {context.get('threads')} threads for every framework. `x vs torch` = torch p50 / "
        "softmaxlab p50 (above 1: softmaxlab faster). `% of limit` = roofline time / p50, the roofline "
        "being the slower of a stream of the same bytes (inputs read once + outputs written once) and "
        "an L1-resident loop of the same number of exps, both timed in the same run.\n",
        tables.markdown(tables.speed_table(rows)),
    ]
    if not compiles.empty:
        shown = compiles.assign(
            first_call_s=compiles["first_call_s"].map(lambda v: f"{v:.3f}"),
            warm_call_s=compiles["warm_call_s"].map(lambda v: f"{v:.4f}"),
            compile_s=compiles["compile_s"].map(lambda v: f"{v:.3f}"),
        )[["kernel", "provider", "dtype", "shape", "phase", "first_call_s", "warm_call_s", "compile_s"]]
        parts += ["\n## First calls (compile and JIT time, excluded from every timing)\n", tables.markdown(shown)]
    parts.append(f"\n{footnote(context)}\n")
    return "\n".join(parts)


def results_folder(args) -> Path:
    from .accuracy import results_folder as accuracy_results_folder

    return accuracy_results_folder(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .accuracy import add_selection_arguments

    add_profile_arguments(parser, threads=True)
    add_selection_arguments(parser, bench=True)


def run_bench(args, progress: bool = True, registry=None, profile: Profile | None = None):
    """Pin threads, run the plan, write the files; returns (rows, failures, paths, context)."""
    from .accuracy import command_line

    from .accuracy import selection_of

    threads = environment.pin_threads(getattr(args, "threads", None))
    if registry is None:
        selection = selection_of(args, get_profile(args.profile))
        profile, registry, providers, kernels = selection.profile, selection.entries, selection.providers, None
    else:  # a caller's own entries (and profile), as they are
        profile = profile or get_profile(args.profile)
        providers = getattr(args, "providers", None)
        kernels = getattr(args, "kernels", None)
    context = environment.run_context(profile.name, threads)
    context["command"] = command_line(args)
    plan = BenchPlan(profile, registry, kernels=kernels, providers=providers, threads=threads, seed=args.seed,
                     drop_unavailable=True)
    require_cases(len(plan.cases), "benchmark", f"kernels {sorted(plan.registry)}, providers {providers}")
    folder = results_folder(args)
    label = f"{profile.name}-{context['timestamp'].replace(':', '')}"
    from .accuracy import raw_folder

    rows, failures = run_benchmarks(plan, raw_folder(args), label, progress=progress)
    rows = rows.assign(**{k: v for k, v in context.items() if k not in ("command", "threads")})
    compiles = compile_table(first_calls.FIRST_CALLS)
    paths = [
        tables.write_csv(rows, folder / "bench.csv"),
        tables.write_csv(compiles, folder / "first_calls.csv"),
        tables.write_text(bench_markdown(rows, compiles, context), folder / "bench.md"),
    ]
    return rows, failures, paths, context


def run(args) -> int:
    start = time.perf_counter()
    rows, failures, paths, _ = run_bench(args)
    print(tables.markdown(tables.speed_table(rows)))
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    for path in paths:
        print(f"wrote {path}")
    print(f"bench: {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0
