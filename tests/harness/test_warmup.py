"""``softmaxlab warmup``: every public kernel found, compiled into the cache, then loaded; the table."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from softmaxlab import kernels
from softmaxlab.harness import cli, warmup
from softmaxlab.harness.registry import REGISTRY

TIMEOUT_S = 600


def test_warmup_covers_every_public_kernel_through_the_registry():
    assert warmup.kernel_names() == list(kernels.__all__)
    assert set(warmup.kernel_names()) <= set(REGISTRY)
    assert warmup.kernel_names("logsumexp, softmax") == ["logsumexp", "softmax"]
    with pytest.raises(SystemExit, match="not public kernels: _softmax_kernel"):
        warmup.kernel_names("softmax,_softmax_kernel")
    with pytest.raises(SystemExit):
        warmup.dtype_names("float16")


def test_warmup_is_a_subcommand():
    args = cli.build_parser().parse_args(["warmup", "--kernels", "softmax", "--measure"])
    assert args.module_name == "softmaxlab.harness.warmup" and args.measure and args.kernels == "softmax"


def _warmup(cache_root, *arguments):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SOFTMAXLAB_", "NUMBA_"))}
    env.update(SOFTMAXLAB_CACHE="1", SOFTMAXLAB_CACHE_DIR=str(cache_root), NUMBA_DEBUG_CACHE="1")
    code = "import sys; from softmaxlab.harness.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, "warmup", *arguments], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_warmup_fills_the_cache_and_a_new_process_only_loads(tmp_path):
    first = _warmup(tmp_path, "--kernels", "logsumexp", "--dtypes", "float32")
    assert "data saved" in first.stdout
    assert f"cache: {tmp_path}" in first.stdout
    assert "warmup" in first.stderr and "logsumexp float32" in first.stderr  # the progress bar
    (directory,) = tmp_path.iterdir()
    assert list(directory.glob("*.nbi"))
    second = _warmup(tmp_path, "--kernels", "logsumexp", "--dtypes", "float32")
    assert "data loaded" in second.stdout and "data saved" not in second.stdout


def test_measure_writes_the_cold_and_warm_table(tmp_path, monkeypatch):
    calls = []

    def fake_first_call(name, dtype, cache_root, timeout=None):
        calls.append((name, dtype, cache_root))
        seen = sum(1 for call in calls if call[2] == cache_root)
        return {"import_s": 0.5, "prepare_s": 0.01, "first_call_s": 9.0 if seen == 1 else 0.1}

    monkeypatch.setattr(warmup, "first_call_in_fresh_process", fake_first_call)
    rows = warmup.measure_first_calls(["softmax", "logsumexp"], ["float32", "float64"], progress=False)
    assert [(row["kernel"], row["dtype"]) for row in rows] == [
        ("softmax", "float32"), ("softmax", "float64"), ("logsumexp", "float32"), ("logsumexp", "float64")]
    # cold then warm on the same (fresh, then removed) cache root, a new one for each pair
    assert len({call[2] for call in calls}) == 4 and all(not call[2].exists() for call in calls)
    assert all(row["cold_first_call_s"] == 9.0 and row["warm_first_call_s"] == 0.1 for row in rows)
    csv_path, md_path = warmup.write_first_call_tables(rows, tmp_path, "softmaxlab warmup --measure")
    assert csv_path.read_text().splitlines()[0].startswith("kernel,dtype,cold_first_call_s,warm_first_call_s")
    text = md_path.read_text()
    assert "| logsumexp | float64 | 9 | 0.1 |" in text
    assert "cold 36.0 s, warm 0.40 s" in text


def test_a_failing_pair_is_recorded_not_fatal(monkeypatch):
    def failing(name, dtype, cache_root, timeout=None):
        raise RuntimeError("compile failed")

    monkeypatch.setattr(warmup, "first_call_in_fresh_process", failing)
    (row,) = warmup.measure_first_calls(["softmax"], ["float32"], progress=False)
    assert math.isnan(row["cold_first_call_s"]) and math.isnan(row["warm_first_call_s"])
