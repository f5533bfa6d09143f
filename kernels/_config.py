"""Compilation settings shared by every kernel: fastmath flags, threads, block sizes.

fastmath flags live here and nowhere else.  Two sets, because LLVM keeps fast-math
flags per instruction and honours them after inlining:

* ``STRICT_FASTMATH`` (``contract`` only) for every function whose arithmetic is
  order-sensitive: the elementary functions of ``_numerics/exp.py`` (their range reduction
  ``(x * log2e + 1.5 * 2**52) - 1.5 * 2**52`` and the split ``x - k ln2_hi - k ln2_lo``
  are exact only if nothing is re-associated) and the elementwise writes
  (``(x - M) - log S`` must not become ``x - (M + log S)``, which loses the exactness
  of ``x - M`` and costs ~1e-13 absolute at |x| = 1000; that happened, and a test
  guards it).  ``contract`` only fuses a multiply and an add into one FMA, which
  rounds once instead of twice.
* ``REDUCTION_FASTMATH`` (``contract``, ``reassoc``, ``nsz``) for the loops that only
  sum: ``reassoc`` is what lets LLVM vectorize a floating-point sum into several lanes
  (changing the order of the additions, as every vectorized library does); ``nsz``
  lets it ignore the sign of zero.

Excluded on purpose, everywhere: ``nnan`` and ``ninf`` (infinities and NaN are data
here: an all ``-inf`` row must give ``-inf``, a NaN must reach the output), ``arcp``
(``e / s`` must stay a correctly rounded division) and ``afn`` (``log`` must stay libm's).

Error model: every kernel is compiled with ``error_model="numpy"``: a float division by
zero gives inf or NaN as IEEE 754 says.  Numba's default (``"python"``) tests each
division for a zero divisor and raises ZeroDivisionError, and that branch and call
inside a loop stop LLVM from vectorizing it: binary cross-entropy's per-element loop
(the sigmoid's 1 / (1 + e)) ran at ~10 ns per element instead of 1.2 (measured).  The
kernels never rely on the exception; the Python-side validation raises the errors.

Vector width: LLVM's models of Intel's AVX-512 cores (Skylake-X to Sapphire Rapids) carry a
"prefer 256-bit vectors" tuning, so its loop vectorizer gives the kernels' scalar loops
4 float64 or 8 float32 lanes although the registers hold twice that.  ``full_width_vectors``
turns the preference off (the feature ``-prefer-256-bit`` appended to the host's feature
string in Numba's ``config.CPU_FEATURES``) on any CPU with AVX-512F, before the first
``@njit`` creates Numba's CPU target.  The setting is Numba's, for the whole process: it is
left alone where ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES`` is set, or where Numba compiled
something before softmaxlab was imported.

Caching: every kernel is cached on disk (``cache=True``) in a directory keyed by the
package version, a hash of all the kernel sources and the CPU (``_cache``;
``SOFTMAXLAB_CACHE_DIR``, default ``~/.cache/softmaxlab``; ``SOFTMAXLAB_CACHE=0`` turns
it off), so a process loads the kernels an earlier process compiled; ``softmaxlab
warmup`` fills the cache ahead of time.  Numba's own cache, used as it is, misses every
closure in a new process, can confuse two closures of one factory and keeps stale
entries after an edit of a helper module: ``_cache`` fixes each, and
``tests/kernels/test_cache.py`` tests each.
"""

from __future__ import annotations

import numba

from . import _cache


def full_width_vectors() -> bool:
    """Turn off LLVM's preference for 256-bit vectors on AVX-512 CPUs (module docstring),
    if Numba's CPU target does not exist yet and the CPU is not set by the environment;
    True when the feature string was changed."""
    from llvmlite import binding
    from numba.core import config, registry

    if config.CPU_NAME is not None or config.CPU_FEATURES is not None:
        return False
    if "_toplevel_target_context" in vars(registry.cpu_target):  # Numba has compiled: too late
        return False
    features = binding.get_host_cpu_features()
    if not features.get("avx512f", False):
        return False
    config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"
    return True


# before any kernel is decorated, and before _cache.install reads the CPU for its key
FULL_WIDTH_VECTORS = full_width_vectors()

# Options of every @njit: ``@njit(fastmath=..., **JIT_OPTIONS)``.  ``cache`` is decided
# here, once, before any kernel is decorated (``_cache.install``).
JIT_OPTIONS = {"cache": _cache.install(), "error_model": "numpy"}

STRICT_FASTMATH = {"contract"}
REDUCTION_FASTMATH = {"contract", "reassoc", "nsz"}

# Rows longer than one block are cut into blocks of BLOCK_BYTES; each block is reduced
# to a (max, sum of exp) pair and the pairs are merged, so one long row is shared
# between threads.  The block decomposition depends only on the row length and the
# dtype, never on the thread count, which keeps every result bit-identical whatever
# the number of threads.  32 KiB: a block is read twice (max, then sum of exp) and the
# second read should hit the L1 cache.
BLOCK_BYTES = 32 * 1024


def block_length(itemsize: int) -> int:
    """Number of elements of one block for an element size in bytes."""
    return BLOCK_BYTES // itemsize


def block_schedule(rows: int, classes: int, itemsize: int) -> tuple[int, bool]:
    """(block length, split): whether a row kernel shares each row's blocks between threads.

    Rows are split when they are longer than a block and fewer than twice the threads
    (otherwise whole rows are shared).  Splitting changes the schedule, not the blocks, so
    results stay bit-identical.  The thread count is asked only when a row is longer than
    a block: right after a large kernel, ``numba.get_num_threads()`` costs about 5 us.
    """
    block = block_length(itemsize)
    return block, classes > block and rows < 2 * numba.get_num_threads()


# Outputs of at least STREAMED_OUTPUT_BYTES whose rows span several blocks are written with
# non-temporal stores (``_numerics.vector``, "streamed writes"): each line goes to memory
# without being read into the cache first, a third less memory traffic for a kernel that
# reads x and writes its output once.  Below it the output may stay in cache for its next
# reader, and the ordinary stores were faster (docs/performance.md, fifteenth session).
STREAMED_OUTPUT_BYTES = 48 * 1024 * 1024
# softmax and cross-entropy's gradient keep a row's e_j in a scratch row per thread until
# its write: rows of at most this many bytes, so that the scratch row stays in the core's L2
STREAMED_ROW_BYTES = 1024 * 1024


def streamed_rows(rows: int, classes: int, itemsize: int, block: int, split: bool, keeps_row: bool) -> bool:
    """Whether a float32 row kernel streams its output (``STREAMED_OUTPUT_BYTES``): rows of
    several blocks, an output of at least that many bytes.

    A kernel that ``keeps_row`` (a row's e_j wait in a scratch row of its thread until the
    row's write: softmax, cross-entropy's gradient) streams only rows that one thread runs
    whole (not ``split``), of at most ``STREAMED_ROW_BYTES``.
    """
    if itemsize != 4 or classes <= block or rows * classes * itemsize < STREAMED_OUTPUT_BYTES:
        return False
    return not keeps_row or (not split and classes * itemsize <= STREAMED_ROW_BYTES)
