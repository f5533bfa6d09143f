"""``softmaxlab warmup``: compile every public kernel for float32 and float64 into the cache.

The kernels are cached on disk (unless ``SOFTMAXLAB_CACHE=0``; see
``softmaxlab.kernels._cache``): a process that calls a
kernel compiled before by any process of the same build loads it instead of compiling
it.  ``softmaxlab warmup`` compiles them all ahead of time, with a progress bar, and
says where the cache is.  The kernels come from the public API (``kernels.__all__``) and
their inputs from the registry's input makers (regime ``normal_x3``), called as the
harness calls them (``Implementation.prepare``; a backward kernel's forward pass runs in
``prepare``).

``softmaxlab warmup --measure`` measures the first call of each kernel and dtype in a
fresh process, twice: *cold*, on an empty cache of its own (the compile, plus writing the
cache), then *warm*, a second fresh process on the cache the first one wrote.  The table
goes to ``results/first_calls_cache.csv`` and ``.md``.  Each process runs one kernel and
one dtype, so a figure never includes another kernel's compile (helpers shared with the
backward's forward pass excepted, which ``prepare`` compiles before the timed call).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DTYPES = ("float32", "float64")
SHAPE = (16, 1000)
REGIME = "normal_x3"
CHILD_TIMEOUT_S = 900


def add_arguments(parser) -> None:
    parser.add_argument("--kernels", default="", help="comma-separated public kernels (default: all of kernels.__all__)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated dtypes (default: float32,float64)")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="measure each kernel's first call in a fresh process, cold (empty cache) and warm; "
        "write results/first_calls_cache.csv and .md",
    )
    parser.add_argument("--output", default=None, help="folder of --measure's tables (default: a new folder ./softmaxlab-results/<UTC time>-<commit>/; "
                        "the committed table was written with --output results)")


def kernel_names(selection: str = "") -> list[str]:
    """The public kernels (``softmaxlab.kernels.__all__``), or the comma-separated ``selection`` of them."""
    from softmaxlab import kernels

    names = list(kernels.__all__)
    if not selection:
        return names
    chosen = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise SystemExit(f"softmaxlab warmup: not public kernels: {', '.join(unknown)}")
    return chosen


def dtype_names(selection: str) -> list[str]:
    chosen = [name.strip() for name in selection.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(DTYPES))
    if unknown or not chosen:
        raise SystemExit(f"softmaxlab warmup: dtypes must be among {DTYPES}, got {selection!r}")
    return chosen


def prepared_call(name: str, dtype: str, shape=SHAPE):
    """A zero-argument call of public kernel ``name`` on the registry's inputs for ``dtype``."""
    from .registry import REGISTRY

    operation = REGISTRY.get(name)
    if operation is None:
        raise KeyError(f"public kernel {name!r} has no registry entry (harness/registry/)")
    inputs = operation.make_inputs(REGIME, tuple(shape), dtype, 0)
    return operation.implementation("softmaxlab").prepare(inputs)


def warm_up(names, dtypes, progress=True) -> float:
    """Call every (kernel, dtype) once, compiling (and caching) what is not cached; seconds taken."""
    from tqdm import tqdm

    pairs = [(name, dtype) for name in names for dtype in dtypes]
    start = time.perf_counter()
    with tqdm(pairs, desc="warmup", unit="kernel", disable=not progress, file=sys.stderr) as bar:
        for name, dtype in bar:
            bar.set_postfix_str(f"{name} {dtype}")
            prepared_call(name, dtype)()
    return time.perf_counter() - start


# ---- --measure: first calls in fresh processes ----------------------------------------------


def _child() -> None:
    """In a fresh process: time the import, the preparation and the first call of one kernel."""
    name, dtype = sys.argv[1], sys.argv[2]
    start = time.perf_counter()
    from softmaxlab.kernels import _cache

    from . import registry  # noqa: F401  (imports the kernels)

    imported = time.perf_counter()
    run = prepared_call(name, dtype)
    prepared = time.perf_counter()
    run()
    first = time.perf_counter() - prepared
    print(json.dumps({"import_s": imported - start, "prepare_s": prepared - imported, "first_call_s": first,
                      "cache": _cache.enabled(), "cache_dir": str(_cache.cache_dir())}))


def first_call_in_fresh_process(name: str, dtype: str, cache_root: Path | None, timeout: float = CHILD_TIMEOUT_S) -> dict:
    """``_child``'s figures for one kernel and dtype; ``cache_root`` None runs with the cache off."""
    env = dict(os.environ)
    if cache_root is None:
        env["SOFTMAXLAB_CACHE"] = "0"
    else:
        env["SOFTMAXLAB_CACHE"] = "1"
        env["SOFTMAXLAB_CACHE_DIR"] = str(cache_root)
    code = "import sys; from softmaxlab.harness.warmup import _child; _child()"
    done = subprocess.run([sys.executable, "-c", code, name, dtype], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"first call of {name} {dtype} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_first_calls(names, dtypes, progress=True) -> list[dict]:
    """Cold then warm first call of each (kernel, dtype), each in a fresh process and its own cache."""
    from tqdm import tqdm

    from .environment import load_average

    rows = []
    pairs = [(name, dtype) for name in names for dtype in dtypes]
    with tqdm(pairs, desc="first calls", unit="kernel", disable=not progress, file=sys.stderr) as bar:
        for name, dtype in bar:
            bar.set_postfix_str(f"{name} {dtype}")
            root = Path(tempfile.mkdtemp(prefix="softmaxlab-cache-"))
            load = load_average()
            try:
                cold = first_call_in_fresh_process(name, dtype, root)
                warm = first_call_in_fresh_process(name, dtype, root)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                print(f"softmaxlab warmup --measure: {name} {dtype}: {error}", file=sys.stderr)
                failed = {"first_call_s": float("nan"), "prepare_s": float("nan"), "import_s": float("nan")}
                cold = warm = failed
            finally:
                shutil.rmtree(root, ignore_errors=True)
            rows.append({
                "kernel": name,
                "dtype": dtype,
                "cold_first_call_s": round(cold["first_call_s"], 4),
                "warm_first_call_s": round(warm["first_call_s"], 4),
                "cold_prepare_s": round(cold["prepare_s"], 4),
                "warm_prepare_s": round(warm["prepare_s"], 4),
                "warm_import_s": round(warm["import_s"], 4),
                "load_average": load,
            })
    return rows


def write_first_call_tables(rows: list[dict], output: Path, command_line: str = "") -> tuple[Path, Path]:
    import pandas as pd

    from . import environment
    from .tables import format_number, markdown, write_csv, write_text

    frame = pd.DataFrame(rows)
    csv_path = write_csv(frame, Path(output) / "first_calls_cache.csv")
    shown = frame[["kernel", "dtype", "cold_first_call_s", "warm_first_call_s", "warm_import_s"]].copy()
    for column in ("cold_first_call_s", "warm_first_call_s", "warm_import_s"):
        shown[column] = shown[column].map(format_number)
    lines = [
        "# First call of each kernel in a fresh process: cold and warm cache",
        "",
        f"Command: `{command_line or 'softmaxlab warmup --measure'}`.  Machine: {environment.machine_description()}; "
        f"{environment.versions_description()}; commit {environment.commit_description()}; "
        f"{environment.timestamp()}.",
        "",
        "cold: a fresh process on an empty cache (Numba compiles the kernel and writes the cache); "
        "warm: a second fresh process on that cache.  Seconds of the first call after the inputs are "
        f"prepared ({REGIME}, {SHAPE[0]} x {SHAPE[1]}; a backward kernel's forward pass runs before, untimed); "
        "warm_import_s: importing the kernels and the harness registry.  Load averages (shared machine) are in the CSV.",
        "",
        f"Total: cold {frame['cold_first_call_s'].sum():.1f} s, warm {frame['warm_first_call_s'].sum():.2f} s; "
        f"slowest warm first call {frame['warm_first_call_s'].max():.3f} s "
        f"({frame.loc[frame['warm_first_call_s'].idxmax(), 'kernel']}).",
        "",
        markdown(shown),
    ]
    md_path = write_text("\n".join(lines), Path(output) / "first_calls_cache.md")
    return csv_path, md_path


def run(args) -> int:
    from softmaxlab.kernels import _cache

    names = kernel_names(args.kernels)
    dtypes = dtype_names(args.dtypes)
    if args.measure:
        from .runs import run_folder

        rows = measure_first_calls(names, dtypes)
        args.results_dir = args.output  # --output, else a new folder under ./softmaxlab-results/
        output = run_folder(args)
        csv_path, md_path = write_first_call_tables(rows, output, getattr(args, "command_line", ""))
        print(f"wrote {csv_path} and {md_path}")
        return 0
    if not _cache.enabled():
        print(f"softmaxlab warmup: the kernel cache is off (set {_cache.SWITCH_VARIABLE}=1; or not writable); "
              "compiling in this process only, nothing is kept", file=sys.stderr)
    seconds = warm_up(names, dtypes)
    where = _cache.cache_dir() if _cache.enabled() else "(none)"
    print(f"warmed {len(names)} kernels x {len(dtypes)} dtypes in {seconds:.1f} s; cache: {where}")
    return 0
