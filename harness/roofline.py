"""The machine's limits, measured in the same run as the kernels: a roofline per benchmark.

Every benchmark block (one kernel, one shape, one dtype) also times two reference loops
with the same thread count (Numba's pool, pinned like every framework's), interleaved
with the providers:

* ``limit:stream``: a streaming kernel that moves exactly the bytes the speed table
  counts for the operation: it reads ``read_elements`` and writes ``written_elements``
  of the dtype once each (a parallel copy of the first ``written_elements`` and a sum
  of the rest), from and into arrays allocated and touched before timing.  For softmax
  it is a plain copy of the input's size; for logsumexp almost a pure read; for the
  backward kernels two inputs in, one out.  Counted bytes: (read + written) * itemsize,
  the minimum an implementation must move; write-allocate traffic is not counted, for
  the kernels or for this loop.
* ``limit:exp``: ``exp_count`` exponentials over a 8-16 KiB buffer per thread that
  stays in L1, stored into another that stays in L1 as the kernels' exp pass stores:
  the compute-bound time of the same number of exponentials.  They are the kernels' exponential of ``x - max``
  (``softmaxlab.kernels._numerics.exp``: ``exp32_difference_floored`` in float32 arithmetic for
  float32, ``exp64_difference_floored`` for float64), the fastest exp in this
  environment; the float32 kernels that scale by a temperature or a margin use the
  slower float64-evaluated one, so their fraction of this limit is lower.

* ``limit:matmul``: the matrix products of the operation's cost (``Cost.matmuls``, e.g.
  x W^T, G W and G^T x for a fused linear loss with its gradient) as NumPy's BLAS takes
  them (OpenBLAS, the threads pinned like every framework's), on arrays allocated before
  timing: the arithmetic-bound time of the products alone.  Only for the entries that
  have products.

A row's roofline time is the largest of these; ``fraction_of_limit`` = roofline / p50.
A provider cannot beat these loops by more than noise, so a fraction above 1 is a
measurement error (a disturbed limit loop or cell, or a cost model counting work the
kernel skips): ``tables.cell_flags`` flags it "roofline>100%" and the tables print that
flag in place of the percentage.  The limit loops' own rows are never flagged so.
Limits of the machine as such would be higher (non-temporal stores, a hand-written
exp); these two are what a straightforward loop on this machine achieves, which is the
right yardstick for kernels written the same way.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from softmaxlab.kernels._numerics.exp import exp32_difference_floored, exp64_difference_floored
from softmaxlab.kernels._numerics.rows import cast_like

# Only sums are re-associated (to let LLVM vectorize them); nothing else is relaxed.
_SUM_FASTMATH = {"reassoc", "nsz", "contract"}
_EXP_BUFFER_ELEMENTS = 2048
_STREAM_TASK_ELEMENTS = 1 << 15


@njit(parallel=True, fastmath=_SUM_FASTMATH, cache=False)
def _stream(source, destination, tasks):
    # task t: destination[t-th slice] = source[first part of its t-th slice], and the
    # rest of that slice is summed; every element is read or written exactly once
    n_source = source.shape[0]
    n_destination = destination.shape[0]
    partial = np.zeros(tasks)
    for task in prange(tasks):
        source_slice = source[task * n_source // tasks : (task + 1) * n_source // tasks]
        written = destination[task * n_destination // tasks : (task + 1) * n_destination // tasks]
        for j in range(written.shape[0]):
            written[j] = source_slice[j]
        rest = source_slice[written.shape[0] :]
        total = 0.0
        for j in range(rest.shape[0]):
            total += rest[j]
        partial[task] = total
    return partial.sum()


def _kernel_exp(values, value, shift):
    """exp(value - shift), value <= shift, as the kernels of ``values``' dtype take it (JIT only)."""
    raise NotImplementedError("_kernel_exp is only callable from JIT code")


@overload(_kernel_exp)
def _kernel_exp_overload(values, value, shift):
    if values.dtype == types.float32:
        return lambda values, value, shift: exp32_difference_floored(value, shift)
    return lambda values, value, shift: exp64_difference_floored(value, shift)


@njit(fastmath=_SUM_FASTMATH, cache=False)
def _exp_store(chunk, shift, destination):
    # stored, as the kernels' exp pass stores (a loop that sums them instead was given 8
    # lanes, not 16, by LLVM: 1.5 ms instead of 1.1 for 4M float32 exps on one thread)
    for j in range(chunk.shape[0]):
        destination[j] = _kernel_exp(chunk, chunk[j], shift)


@njit(parallel=True, fastmath=_SUM_FASTMATH, cache=False)
def _exp_loop(buffers, outputs, count):
    # count exponentials split over the rows of ``buffers`` (values in [-10, 0], one row per
    # thread, its results in the same row of ``outputs``: both stay in L1), each row swept
    # repeatedly; the shift (>= 0) changes with every sweep so no sweep can be hoisted
    tasks = buffers.shape[0]
    partial = np.zeros(tasks)
    for task in prange(tasks):
        values = buffers[task]
        remaining = (task + 1) * count // tasks - task * count // tasks
        total = 0.0
        sweep = 0
        while remaining > 0:
            length = min(remaining, values.shape[0])
            shift = cast_like(values, sweep * 1e-7)  # in the dtype, as a row max is
            _exp_store(values[:length], shift, outputs[task])
            total += outputs[task, length - 1]
            remaining -= length
            sweep += 1
        partial[task] = total
    return partial.sum()


def matmul_runner(matmuls, dtype):
    """A zero-argument call that takes the matrix products ``matmuls`` ((m, k, n): an m x k times
    a k x n) with NumPy, into outputs allocated here."""
    rng = np.random.default_rng(0)
    operands = [(rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype),
                 np.empty((m, n), dtype=dtype)) for m, k, n in matmuls]

    def run():
        for left, right, out in operands:
            np.matmul(left, right, out=out)
        return float(operands[-1][2][0, 0]) if operands else 0.0

    return run


def stream_runner(read_elements: int, written_elements: int, dtype):
    """A zero-argument call that streams the given element counts (see the module docstring)."""
    if written_elements > read_elements:
        raise ValueError(f"written_elements ({written_elements}) must not exceed read_elements ({read_elements})")
    source = np.ones(read_elements, dtype=dtype)
    destination = np.zeros(written_elements, dtype=dtype)
    tasks = max(1, min(read_elements // _STREAM_TASK_ELEMENTS, 1 << 14))
    return lambda: _stream(source, destination, tasks)


def exp_runner(exp_count: int, dtype, threads: int | None = None):
    """A zero-argument call computing ``exp_count`` exponentials from L1-resident data."""
    if exp_count < 1:
        raise ValueError(f"exp_count must be >= 1, got {exp_count}")
    threads = threads or numba.get_num_threads()
    rng = np.random.default_rng(0)
    buffers = rng.uniform(-10.0, 0.0, size=(threads, _EXP_BUFFER_ELEMENTS)).astype(dtype)
    outputs = np.zeros_like(buffers)
    return lambda: _exp_loop(buffers, outputs, exp_count)
