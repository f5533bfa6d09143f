"""New output arrays, with the memory of large freed outputs kept for the next call.

An output above glibc's largest mmap threshold (32 MiB) comes from a fresh ``mmap`` on
every call and goes back to the system when the caller drops it, so each call faults
its pages in again, and, with NumPy's transparent-huge-page ``madvise``, a fault may stop
to compact memory (``benchmarks/fresh_outputs.py`` measures both; the figures are in
``docs/performance.md``).  Below that size glibc reuses freed memory itself.

So :func:`new_output` hands out large outputs from a small cache of freed buffers, as
PyTorch's GPU allocator does for device memory.  The returned array is an ordinary
writable ndarray whose ``base`` is a ``_Lease``: the lease, kept alive by the array and
by every view of it, gives its buffer back to the cache when the last of them is gone.
A buffer is taken again only by a request of the same byte size (a training loop's
shapes repeat), the oldest is dropped beyond ``SOFTMAXLAB_OUTPUT_CACHE_MB`` (default
512; ``0`` turns the cache off), and a buffer larger than that is never kept.  The
values of a reused buffer are those of the output it last was, as ``np.empty`` promises
nothing either: every kernel writes the whole of its output.
"""

from __future__ import annotations

import os
import threading

import numba
import numpy as np

# Outputs from this size on are cached; below it glibc's heap reuses freed memory itself
# (its dynamic mmap threshold rises to at most 32 MiB on 64-bit Linux).
SMALLEST_CACHED = 32 * 1024 * 1024


def _capacity_from_environment() -> int:
    text = os.environ.get("SOFTMAXLAB_OUTPUT_CACHE_MB", "512")
    try:
        megabytes = float(text)
    except ValueError:
        raise ValueError(f"SOFTMAXLAB_OUTPUT_CACHE_MB must be a number of MiB (0: no cache), got {text!r}") from None
    if not megabytes >= 0:
        raise ValueError(f"SOFTMAXLAB_OUTPUT_CACHE_MB must be >= 0, got {text!r}")
    return int(megabytes * 1024 * 1024)


class _Cache:
    """Freed buffers (uint8 arrays), oldest first, at most ``capacity`` bytes in all."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.buffers: list[np.ndarray] = []
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A buffer of ``nbytes``: the newest cached one of that size, or a new one."""
        with self.lock:
            for k in range(len(self.buffers) - 1, -1, -1):
                if self.buffers[k].nbytes == nbytes:
                    return self.buffers.pop(k)
        return np.empty(nbytes, dtype=np.uint8)

    def give_back(self, buffer: np.ndarray) -> None:
        """Keep ``buffer`` for a later ``take``, dropping the oldest beyond the capacity.

        Called from a lease's ``__del__``, which the garbage collector may run inside
        ``take`` on the same thread: the lock is then held, and the buffer is let go
        rather than waited for.
        """
        if buffer.nbytes > self.capacity or not self.lock.acquire(blocking=False):
            return
        try:
            self.buffers.append(buffer)
            held = sum(b.nbytes for b in self.buffers)
            while held > self.capacity:
                held -= self.buffers.pop(0).nbytes
        finally:
            self.lock.release()

    def clear(self) -> None:
        with self.lock:
            self.buffers.clear()


_CACHE = _Cache(_capacity_from_environment())
# a child forked while another thread held the lock would wait for it forever
os.register_at_fork(after_in_child=lambda: setattr(_CACHE, "lock", threading.Lock()))


class _Lease:
    """The base of a cached output: exposes its buffer as the output's array (NumPy's
    ``__array_interface__``) and gives the buffer back when no array refers to it."""

    __slots__ = ("buffer", "__array_interface__")

    def __init__(self, buffer: np.ndarray, shape: tuple, dtype: np.dtype):
        self.buffer = buffer
        self.__array_interface__ = {
            "shape": shape,
            "typestr": dtype.str,
            "data": (buffer.ctypes.data, False),
            "version": 3,
        }

    def __del__(self):
        cache = _CACHE  # None while the interpreter shuts down
        if cache is not None:
            cache.give_back(self.buffer)


def new_output(shape: tuple, dtype) -> np.ndarray:
    """An uninitialized C-contiguous array, as ``np.empty(shape, dtype)``; large ones from the cache."""
    dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < SMALLEST_CACHED or nbytes > _CACHE.capacity:
        return np.empty(shape, dtype=dtype)
    return np.asarray(_Lease(_CACHE.take(nbytes), shape, dtype))


def new_output_like(array: np.ndarray) -> np.ndarray:
    """:func:`new_output` of ``array``'s shape and dtype."""
    return new_output(array.shape, array.dtype)


def thread_rows(length: int, dtype) -> np.ndarray:
    """Scratch of one row of ``length`` per thread of Numba's pool, indexed by ``get_thread_id``
    (below the thread count, which ``NUMBA_NUM_THREADS`` bounds without asking the pool)."""
    return np.empty((numba.config.NUMBA_NUM_THREADS, length), dtype=dtype)
