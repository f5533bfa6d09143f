"""The kernels' on-disk cache (kernels/_cache.py): each known hazard of Numba's cache, tested.

Every process here is a fresh Python on a cache directory of the test's own; one small
kernel (``logsumexp``, float32) keeps the compiles few.  ``NUMBA_DEBUG_CACHE=1`` makes
Numba print a line for each cache file it loads or saves, which tells a hit from a miss.
The input has rows longer than one block, so the thread count changes the schedule
(rows split between threads with 2 threads, whole rows with 1) and the bits must not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from softmaxlab.kernels import _cache

TIMEOUT_S = 600
RACERS = 8

CHILD = textwrap.dedent(
    """
    import hashlib, json, os, sys, time
    import numpy as np
    if os.environ.get("FAKE_VERSION"):  # a build of another version, for the version test
        import importlib.metadata as metadata
        real_version = metadata.version
        metadata.version = lambda name: os.environ["FAKE_VERSION"] if name == "softmaxlab" else real_version(name)
    from softmaxlab.kernels import _cache, logsumexp

    def compute():
        if os.environ.get("COMPUTE") == "smoothed":
            return smoothed()
        x = (np.random.default_rng(7).standard_normal((3, 20000)) * 3).astype(np.float32)
        return logsumexp(x)

    def smoothed():
        # cross-entropy with label smoothing, and with class-probability targets, float64 rows
        # of several sum chunks and blocks
        from softmaxlab.kernels import cross_entropy
        rng = np.random.default_rng(1)
        losses = []
        for problem in range(40):
            rows, classes = int(rng.integers(1, 8)), int(rng.integers(3000, 12000))
            logits = rng.standard_normal((rows, classes)) * rng.uniform(0.5, 8)
            target = rng.integers(0, classes, rows)
            losses.append(cross_entropy(logits, target, reduction="none", label_smoothing=0.2))
            if problem < 5:
                probabilities = rng.dirichlet(np.ones(classes), rows)
                losses.append(cross_entropy(logits, probabilities, reduction="none"))
        return np.concatenate(losses)

    def main():
        go = os.environ.get("GO_FILE")
        if go:  # start together: say ready, wait for the go
            open(os.environ["READY_FILE"], "w").close()
            deadline = time.monotonic() + 300
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.01)
        mode = os.environ.get("CALL_FROM", "main")
        if mode == "thread":
            import threading
            box = []
            worker = threading.Thread(target=lambda: box.append(compute()))
            worker.start()
            worker.join(300)
            result = box[0]
        elif mode == "pool":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            start = os.environ["POOL_START"]
            # with "spawn" the parent runs the kernel (and starts Numba's threads) before the
            # pool; not with "fork": forking a process whose OpenMP threads have started aborts
            # the child (GNU OpenMP is not fork-safe, with or without the cache)
            result = compute() if start == "spawn" else None
            context = multiprocessing.get_context(start)
            with ProcessPoolExecutor(2, mp_context=context) as pool:
                results = [future.result(timeout=300) for future in [pool.submit(compute) for _ in range(2)]]
            result = results[0] if result is None else result
            assert all(r.tobytes() == result.tobytes() for r in results), "pool workers disagree"
        else:
            result = compute()
        sys.stdout.flush()
        print(json.dumps({"bits": hashlib.sha256(result.tobytes()).hexdigest(), "values": result.tolist(),
                          "cache": _cache.enabled(),
                          "cache_dir": str(_cache.cache_dir()) if _cache.enabled() else None}))

    if __name__ == "__main__":
        main()
    """
)


def _environment(cache_root, **extra):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SOFTMAXLAB_", "NUMBA_"))}
    env.update(NUMBA_DEBUG_CACHE="1", SOFTMAXLAB_CACHE="1", SOFTMAXLAB_CACHE_DIR=str(cache_root))
    env.update({key: str(value) for key, value in extra.items()})
    return env


def _parse(stdout: str) -> dict:
    lines = stdout.strip().splitlines()
    result = json.loads(lines[-1])
    result["loaded"] = sum("data loaded" in line for line in lines)
    result["saved"] = sum("data saved" in line for line in lines)
    return result


def _run(script: Path, cache_root, **extra) -> dict:
    done = subprocess.run([sys.executable, str(script)], env=_environment(cache_root, **extra), capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stderr[-3000:]}"
    return _parse(done.stdout)


def _reference(x_seed=7):
    x = (np.random.default_rng(x_seed).standard_normal((3, 20000)) * 3).astype(np.float64)
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("child") / "child.py"
    path.write_text(CHILD)
    return path


@pytest.fixture(scope="module")
def race(script, tmp_path_factory):
    """Eight processes started at once on one empty cache: (cache root, their results)."""
    root = tmp_path_factory.mktemp("cache")
    signals = tmp_path_factory.mktemp("signals")
    go = signals / "go"
    processes = []
    try:
        for k in range(RACERS):
            env = _environment(root, GO_FILE=go, READY_FILE=signals / f"ready{k}", NUMBA_NUM_THREADS=2)
            processes.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
        deadline = time.monotonic() + TIMEOUT_S
        while sum((signals / f"ready{k}").exists() for k in range(RACERS)) < RACERS:
            assert time.monotonic() < deadline, "the racers did not start"
            assert all(p.poll() is None for p in processes), "a racer died before the start"
            time.sleep(0.05)
        go.touch()
        outputs = []
        for process in processes:
            stdout, stderr = process.communicate(timeout=TIMEOUT_S)
            outputs.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    return root, outputs


def test_eight_cold_processes_at_once_all_finish_correctly(race):
    root, outputs = race
    for returncode, _, stderr in outputs:
        assert returncode == 0, stderr[-3000:]
    results = [_parse(stdout) for _, stdout, _ in outputs]
    assert all(result["cache"] for result in results)
    assert len({result["bits"] for result in results}) == 1, "the racers' results differ"
    np.testing.assert_allclose(results[0]["values"], _reference(), rtol=4e-7)
    assert any(result["saved"] for result in results), "nobody wrote the cache"
    # nothing torn or half-written is left: every file is complete and renamed into place
    directory = Path(results[0]["cache_dir"])
    assert directory.parent == root
    assert not list(directory.glob("*.tmp.*"))
    assert list(directory.glob("*.nbi")) and list(directory.glob("*.nbc"))


def test_a_process_after_the_race_loads_everything_and_compiles_nothing(race, script):
    # also the closure test: the factory-made kernels (make_row_kernel's) hit the cache
    # in a new process (Numba's own key, a pickle with a random UUID, never does)
    root, outputs = race
    warm = _run(script, root)
    assert warm["loaded"] > 0
    assert warm["saved"] == 0, "a kernel was compiled again instead of loaded"
    assert warm["bits"] == _parse(outputs[0][1])["bits"]


def test_cached_kernel_gives_the_bits_of_a_fresh_compile_with_any_thread_count(race, script, tmp_path):
    root, outputs = race
    fresh = _run(script, tmp_path / "unused", SOFTMAXLAB_CACHE="0", NUMBA_NUM_THREADS=2)
    assert not fresh["cache"] and fresh["loaded"] == fresh["saved"] == 0
    assert not (tmp_path / "unused").exists(), "SOFTMAXLAB_CACHE=0 still wrote a cache"
    # written by 2-thread processes, loaded by a 1-thread one (whole rows instead of split rows)
    serial = _run(script, root, NUMBA_NUM_THREADS=1)
    assert serial["loaded"] > 0 and serial["saved"] == 0
    assert serial["bits"] == fresh["bits"] == _parse(outputs[0][1])["bits"]


def test_smoothing_and_probability_targets_give_the_same_bits_compiled_or_loaded(script, tmp_path):
    # cross_entropy's sums of the logits' gaps to the max (label smoothing) were a loop whose
    # order LLVM chose (reassoc): the function, linked into the kernel and into the block
    # function it calls, was vectorized differently in each copy, and which copy ran depended
    # on whether the kernel was compiled here or loaded (5 of these 40 float64 problems
    # changed their loss's last bits, and every problem with probability targets, whose sum
    # of the target weights is the same loop).  The order is now fixed (vector.row_gap_sums,
    # row_target_gap_sums).
    fresh = _run(script, tmp_path / "unused", SOFTMAXLAB_CACHE="0", COMPUTE="smoothed")
    written = _run(script, tmp_path / "cache", COMPUTE="smoothed")
    loaded = _run(script, tmp_path / "cache", COMPUTE="smoothed")
    assert written["saved"] > 0
    assert loaded["loaded"] > 0 and loaded["saved"] == 0
    assert fresh["bits"] == written["bits"] == loaded["bits"]


@pytest.mark.parametrize("call_from, start", [("thread", None), ("pool", "spawn"), ("pool", "fork")])
def test_cached_kernel_called_from_a_thread_and_from_a_process_pool(race, script, call_from, start):
    root, outputs = race
    extra = {"CALL_FROM": call_from} | ({"POOL_START": start} if start else {})
    result = _run(script, root, **extra)
    assert result["bits"] == _parse(outputs[0][1])["bits"]
    assert result["saved"] == 0
    if call_from == "thread":
        assert result["loaded"] > 0


def test_a_cache_written_by_another_version_is_not_used(race, script):
    root, outputs = race
    first = Path(_parse(outputs[0][1])["cache_dir"])
    before = {path.name: path.stat().st_mtime_ns for path in first.iterdir()}
    other = _run(script, root, FAKE_VERSION="99.0.0")
    assert Path(other["cache_dir"]).name.startswith("99.0.0-")
    assert Path(other["cache_dir"]) != first
    assert other["loaded"] == 0 and other["saved"] > 0, "another version's cache was used"
    assert other["bits"] == _parse(outputs[0][1])["bits"]
    assert {path.name: path.stat().st_mtime_ns for path in first.iterdir()} == before


def test_entries_copied_under_another_key_are_stale(race, script, tmp_path):
    # even in the right directory, an index stamped with another key is not read: the
    # version's files, copied to where the 99.0.0 build looks, are all ignored
    root, outputs = race
    first = Path(_parse(outputs[0][1])["cache_dir"])
    copied_root = tmp_path / "copied"
    target = copied_root / first.name.replace(first.name.split("-")[0], "99.0.1", 1)
    shutil.copytree(first, target)
    other = _run(script, copied_root, FAKE_VERSION="99.0.1")
    assert Path(other["cache_dir"]) == target
    assert other["loaded"] == 0 and other["saved"] > 0


def test_an_edit_of_any_kernel_source_changes_the_key(tmp_path, monkeypatch):
    # numba#1833: Numba only checks the file of the cached function, not its helpers'
    copy = tmp_path / "kernels"
    shutil.copytree(_cache.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(_cache, "PACKAGE_DIR", copy)
    original = _cache.source_hash()
    helper = sorted(path for path in copy.rglob("*.py") if path.name != "__init__.py")[0]
    helper.write_text(helper.read_text() + "\n# an edit\n")
    assert _cache.source_hash() != original
    (copy / "new_helper.py").write_text("X = 1\n")
    helper.write_text(helper.read_text().removesuffix("\n# an edit\n"))
    assert _cache.source_hash() != original


def test_the_key_names_the_version_and_the_cpu():
    from llvmlite import binding

    key = _cache.cache_key()
    assert key.startswith(_cache.package_version() + "-")
    assert binding.get_host_cpu_name() in key or os.environ.get("NUMBA_CPU_NAME")
    assert _cache.cache_dir().name == key


@pytest.mark.parametrize("value, expected", [("0", False), ("off", False), ("No", False), ("", True), ("1", True), ("True", True)])
def test_the_switch(monkeypatch, value, expected):
    monkeypatch.setenv(_cache.SWITCH_VARIABLE, value)
    assert _cache.requested() is expected


def test_the_cache_is_on_by_default(monkeypatch):
    monkeypatch.delenv(_cache.SWITCH_VARIABLE, raising=False)
    assert _cache.requested()


def test_an_unwritable_cache_directory_turns_the_cache_off_with_a_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = "from softmaxlab.kernels import _cache, _config; print(_cache.enabled(), _config.JIT_OPTIONS['cache'])"
    env = _environment(blocker, SOFTMAXLAB_CACHE="1")
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["False", "False"]
    assert "cannot write the kernel cache" in done.stderr


def _package_dispatchers():
    import gc

    import softmaxlab.kernels  # noqa: F401  (every kernel module imported)
    from numba.core.dispatcher import Dispatcher

    return [obj for obj in gc.get_objects()
            if issubclass(type(obj), Dispatcher) and _cache._in_package(obj.py_func.__code__.co_filename)]


def test_closures_that_compile_differently_never_share_a_cache_key():
    """Two dispatchers with one cache entry must be the same computation.

    The entry of a function is found by its module, line, bytecode and the description of
    its closure's cells.  Where two distinct closures get one description, the cells must
    hold the very same objects: then both compile to the same code.  Two closures of
    ``_make_exp_sum`` once differed only in the ``@overload`` registered for a stub in their
    cells, shared a key, and the second loaded the first's code (wrong values).
    """
    groups = {}
    for dispatcher in _package_dispatchers():
        function = dispatcher.py_func
        try:
            cells = _cache._closure_bytes(function)
        except _cache._Undescribable:
            continue  # Numba's own key: never shared across processes
        key = (function.__module__, function.__qualname__, function.__code__.co_firstlineno,
               function.__code__.co_code, cells)
        groups.setdefault(key, []).append(function)
    assert len(groups) > 100  # every kernel module was seen
    for (module, name, *_), functions in groups.items():
        contents = [tuple(cell.cell_contents for cell in (function.__closure__ or ())) for function in functions]
        for other in contents[1:]:
            assert len(other) == len(contents[0]) and all(a is b for a, b in zip(other, contents[0])), (
                f"{module}.{name}: {len(functions)} closures share a cache key but hold different cells")


def test_stubs_of_overloads_made_in_one_factory_are_told_apart():
    from softmaxlab.kernels._numerics import rows as _rows

    keys = {_cache._closure_bytes(kernel.py_func)
            for kernel in (_rows.exp_sum_minus_one, _rows.scaled_exp_sum, _rows.store_exp_sum)}
    assert len(keys) == 3


def test_an_uncachable_function_of_the_package_gets_numbas_warning_not_an_attribute_error(tmp_path):
    """A jitted function Numba cannot cache (one holding a dynamic global, e.g. a call of
    set_parallel_chunksize) makes Numba warn, naming the file through the locator."""
    package_file = _cache.PACKAGE_DIR / "_softmax.py"
    code = textwrap.dedent(f"""
        import warnings
        from numba import njit, set_parallel_chunksize
        from softmaxlab.kernels import _cache
        from numba.core import caching
        def probe(n):
            return set_parallel_chunksize(n)
        probe.__code__ = probe.__code__.replace(co_filename={str(package_file)!r})
        jitted = njit(cache=True)(probe)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jitted(0)
        assert any("Cannot cache compiled function" in str(w.message) for w in caught), caught
        print("warned")
    """)
    env = {**os.environ, "SOFTMAXLAB_CACHE": "1", "SOFTMAXLAB_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "warned" in done.stdout, done.stderr[-2000:]
