"""The run's context: thread pinning for every framework, machine, versions, commit, time.

Thread pinning (``pin_threads``), the same count N for every framework:

* the process's CPU affinity is cut to N CPUs (``os.sched_setaffinity``).  This is what
  sizes JAX's pool: jaxlib 0.10's CPU client takes its intra-op thread count from
  ``tsl::port::MaxParallelism()``, i.e. the affinity mask, and has no flag for it
  (``XLA_FLAGS="intra_op_parallelism_threads=N"`` is not an XLA flag: without ``--`` it
  is silently ignored, with ``--`` XLA aborts on the unknown flag; checked on this
  install).  ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=true`` (the default, and a real
  flag) is set as well so that Eigen-backed ops may use that pool.  Both only act if
  jax has not been imported yet; ``pin_threads`` says so when it has.
* ``numba.set_num_threads(N)`` and ``torch.set_num_threads(N)``;
* NumPy's BLAS (the matrix products of the margin family's NumPy-side work) limited to N
  threads through threadpoolctl, when it is installed.

N defaults to the CPUs this process may run on (``len(os.sched_getaffinity(0))``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

XLA_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=true"
_BLAS_LIMITS: list = []

VERSIONED_PACKAGES = (
    "softmaxlab", "numpy", "numba", "llvmlite", "torch", "jax", "jaxlib",
    "pytorch-metric-learning", "mpmath", "pandas", "pytest-benchmark",
)


def repository_root() -> Path:
    """The checkout holding this package (editable install), else the working directory."""
    candidate = Path(__file__).resolve().parents[1]
    if (candidate / "pyproject.toml").is_file():
        return candidate
    return Path.cwd()


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pin_threads(threads: int | None = None) -> int:
    """Give numba, torch and JAX the same thread count (see the module docstring); returns it."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    count = threads or (len(cpus) if cpus else available_cpus())
    if count < 1:
        raise ValueError(f"threads must be >= 1, got {count}")
    if cpus is not None:
        if count > len(cpus):
            raise ValueError(f"threads must be <= the {len(cpus)} CPUs this process may use, got {count}")
        os.sched_setaffinity(0, cpus[:count])
    if "jax" in sys.modules:
        print(f"softmaxlab: jax was imported before pinning; its thread pool keeps the size it had then",
              file=sys.stderr)
    else:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {XLA_THREAD_FLAGS}".strip()
    import numba

    numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    try:
        import torch

        torch.set_num_threads(count)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        _BLAS_LIMITS.append(threadpool_limits(limits=count, user_api="blas"))  # kept: the limit lasts
    except ImportError:  # BLAS keeps its default (the machine's cores)
        pass
    return count


def thread_counts() -> dict:
    """What each framework reports now (for the footnote and a test)."""
    import numba

    counts = {"affinity": available_cpus(), "numba": numba.get_num_threads()}
    try:
        import torch

        counts["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    return counts


def cpu_model() -> str:
    """The CPU's model name, then what Numba compiles for: e.g. ``AMD EPYC (znver4; AVX-512)``.

    The model name alone can stand for several generations (a cloud host's ``AMD EPYC``);
    the kernels' vector loops are as wide as the JIT target allows (``vscalefps`` only with
    AVX-512F, ``kernels/_numerics/vector.py``), so a table is read with the target beside it.
    No comma inside: ``harness/compare.py`` reads the model as the description's first field.
    """
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({jit_target()})"


def jit_target() -> str:
    """Numba's CPU name and widest vector extension, e.g. ``znver3; AVX2`` (``kernels._cache.jit_cpu``)."""
    from softmaxlab.kernels._cache import jit_cpu

    cpu, features = jit_cpu()
    features = features.split(",")
    widest = next((label for flag, label in (("+avx512f", "AVX-512"), ("+avx2", "AVX2"), ("+avx", "AVX"))
                   if flag in features), "SSE")
    return f"{cpu}; {widest}"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_description() -> str:
    """e.g. ``AMD EPYC, 2 CPUs, 23 GiB, Linux x86_64``."""
    memory = memory_gib()
    parts = [cpu_model(), f"{available_cpus()} CPUs"]
    if memory:
        parts.append(f"{memory:.0f} GiB")
    parts.append(f"{platform.system()} {platform.machine()}")
    return ", ".join(parts)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def versions_description() -> str:
    """One line: ``python 3.11.9; numpy 2.4.6; ...`` (packages not installed are left out)."""
    return "; ".join(f"{name} {version}" for name, version in package_versions().items() if version != "absent")


def commit_description() -> str:
    """Short commit of the checkout, ``+dirty`` if it has uncommitted changes, else ``unknown``."""
    root = repository_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                               text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def timestamp() -> str:
    """UTC time of now, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def load_average() -> float | None:
    """The 1-minute load average (other users' processes show up here on a shared machine)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_context(profile: str, threads: int | None = None) -> dict:
    """The columns every tidy row of one run carries (``load_average``: at the run's start)."""
    context = {
        "profile": profile,
        "machine": machine_description(),
        "load_average": load_average(),
        "versions": versions_description(),
        "commit": commit_description(),
        "timestamp": timestamp(),
    }
    if threads is not None:
        context["threads"] = threads
    return context
