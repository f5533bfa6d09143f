"""No kernel's vectorized loop checks overlap with a wrap-around range (``benchmarks/wraparound_ranges.py``).

Such a range lies past an array's end; an output placed there by the heap sends the loop
to its scalar version, and the bits depend on where the arrays lie (the fused kernels'
flaky float64 gradients, ``docs/performance.md``, fourteenth session).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from numba import njit

from tests.distributed.workers import load_script

ROOT = Path(__file__).resolve().parents[2]


def _scan():
    return load_script("benchmarks", "wraparound_ranges")


def _offset_product(destination, weights, offset, scale, shift):
    # weights[offset + j]: LLVM cannot tell that the index is not negative
    for j in range(destination.shape[0]):
        destination[j] = scale * destination[j] + shift * weights[offset + j]


def _sliced_product(destination, weights, offset, scale, shift):
    # the same arithmetic on a slice indexed by the loop's counter alone
    part = weights[offset : offset + destination.shape[0]]
    for j in range(destination.shape[0]):
        destination[j] = scale * destination[j] + shift * part[j]


def _ir(function):
    compiled = njit(fastmath={"contract"}, cache=False)(function)
    destination = np.zeros(100)
    compiled(destination, np.ones(300), 5, 1.0, 2.0)
    return "".join(compiled.inspect_llvm().values())


def test_the_scan_finds_the_range_of_an_offset_index_and_not_of_a_slice():
    scan = _scan()
    offset_ir = _ir(_offset_product)
    sliced_ir = _ir(_sliced_product)
    # both loops are vectorized behind an overlap check: only the check differs
    assert "found.conflict" in offset_ir and "found.conflict" in sliced_ir
    assert scan.wraparound_bounds(offset_ir)
    assert scan.wraparound_bounds(sliced_ir) == []


def test_no_kernel_checks_overlap_with_a_wraparound_range():
    # a process of its own: the kernels must compile there with the cache off (cached code
    # cannot be inspected); every registry case, about 3 minutes on one core
    environment = dict(os.environ, SOFTMAXLAB_CACHE="0", NUMBA_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "wraparound_ranges.py")], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " 0 wrap-around bounds" in done.stdout
