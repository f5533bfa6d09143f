"""Rows split over Python threads, for kernels that alternate with BLAS calls.

A Numba ``prange`` kernel runs on the OpenMP team of Numba's ``omp`` threading layer.
When the parallel region ends, GNU OpenMP's workers spin before they sleep (its default
wait policy); a BLAS call made right after it (NumPy's OpenBLAS runs its own pthreads)
shares the cores with those spinning threads.  Measured on 2 cores: a 512 x 512 x 1024
float32 ``np.matmul`` took 2.9 ms alone and 6.9 ms right after a ``prange`` kernel,
3.3 ms after it with ``GOMP_SPINCOUNT=10000``.  The environment variable cannot be set
from here: GNU OpenMP reads it once, when it is loaded, and torch loads it on import.

So the kernels that take turns with BLAS (the fused linear cross-entropy's tiles) are
serial Numba functions compiled with ``nogil=True``, called here on contiguous blocks of
rows from a pool of Python threads, whose idle workers wait on a lock and take no CPU.
The number of blocks is ``numba.get_num_threads()``, so ``numba.set_num_threads`` keeps
its meaning; a kernel must compute each row alone (no sum across rows), which makes its
result independent of the split.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba

__all__ = ["run_row_blocks", "row_blocks"]

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_workers = 0


def _forget_pool() -> None:
    """A forked child has none of the parent's threads: it starts its own pool when needed."""
    global _pool, _pool_workers
    _pool, _pool_workers = None, 0


os.register_at_fork(after_in_child=_forget_pool)


def _workers(count: int) -> ThreadPoolExecutor:
    global _pool, _pool_workers
    with _lock:
        if _pool is None or _pool_workers < count:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="softmaxlab-rows")
            _pool_workers = count
        return _pool


def row_blocks(rows: int, parts: int) -> list[tuple[int, int]]:
    """[0, rows) cut into ``parts`` contiguous blocks (at most ``rows``), the first ones a row longer."""
    parts = max(1, min(parts, rows))
    size, extra = divmod(rows, parts)
    blocks, first = [], 0
    for part in range(parts):
        last = first + size + (part < extra)
        blocks.append((first, last))
        first = last
    return blocks


#: Below this many elements a call runs as one block on the calling thread: handing a block to
#: the pool and waiting for it costs tens of microseconds, the time of such a kernel.
SERIAL_ELEMENTS = 1 << 15


def run_row_blocks(kernel, rows: int, *args, elements: int | None = None) -> None:
    """``kernel(first, last, part, *args)`` for the blocks of ``row_blocks(rows, numba.get_num_threads())``.

    ``part`` numbers the block (0, 1, ...), for per-block scratch.  The calling thread
    runs block 0; the others run on the pool and are waited for; an exception in any
    block is raised here.  ``elements``, the call's size where the caller knows it: below
    ``SERIAL_ELEMENTS`` one block (the rows are computed alone either way).
    """
    parts = 1 if elements is not None and elements < SERIAL_ELEMENTS else numba.get_num_threads()
    blocks = row_blocks(rows, parts)
    if len(blocks) == 1:
        kernel(0, rows, 0, *args)
        return
    pool = _workers(len(blocks) - 1)
    futures = [pool.submit(kernel, first, last, part, *args) for part, (first, last) in enumerate(blocks) if part]
    try:
        kernel(blocks[0][0], blocks[0][1], 0, *args)
    finally:
        for future in futures:
            future.result()
