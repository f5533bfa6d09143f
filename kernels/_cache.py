"""Where the kernels' compiled code is kept between processes, and under which key.

Numba's on-disk cache (``cache=True``) is on for every kernel unless
``SOFTMAXLAB_CACHE=0`` (or ``false``, ``no``, ``off``).  A new process then loads each
kernel it has called before instead of compiling it (``softmaxlab warmup --measure``
writes the figures, ``results/first_calls_cache.md``).

Numba's own cache, used as it is, has five faults here; this module fixes each for the
functions of this package (and only these: other packages' functions are left alone):

* **Stale entries.**  Numba checks only the modification time of the file that holds
  the cached function, not of the helpers it calls (numba#1833): after an edit of
  ``_numerics/exp.py`` a cached ``softmax`` would still run the old exponential.  Here every
  function's entry is stamped with one hash of *every* source file of the package (with
  the package, Numba, llvmlite and Python versions), and the entries live in a directory
  named after that key, so an edit anywhere, a new version or a new Numba starts a new
  directory and nothing old is ever loaded.  (Modification times are not used at all,
  so a reinstall of the same sources keeps its cache.)
* **Closures never hit.**  Numba keys a closure's entry by a pickle of its cells, and a
  pickled dispatcher carries a random UUID: every factory-made kernel (``make_row_kernel``,
  ``make_loss_kernel``, ...) missed the cache in every new process and added one more
  file to it (measured: ``softmax``'s kernel wrote ``.1.nbc``, ``.2.nbc``, ... and took
  5.7 s warm).  Here a cell is described by what it is (a dispatcher by its module,
  qualified name, line, bytecode and own cells; numbers and strings by their value),
  which is the same in every process.
* **Closures told apart.**  A cell may hold the stub of an ``@overload`` made inside a
  factory (``terms`` in ``_numerics/rows.py``'s ``_make_exp_sum``): the stubs of two
  factory calls have the same code, and only the implementations registered for them
  differ.  The description includes those implementations; described by the stub alone,
  the scaled and the unscaled exponential sums shared one key and a process could load
  one for the other (``tests/kernels/test_cache.py`` proves that closures sharing a key
  hold the same cell objects).
* **The CPU.**  Numba's index key already holds the target triple, the CPU name and its
  feature string (``codegen.magic_tuple()``); the directory is also named after them, so
  a home directory shared by machines of different CPUs keeps one cache per CPU.
* **Where it goes.**  ``__pycache__`` next to the sources is read-only in an installed
  package; the cache lives in ``$SOFTMAXLAB_CACHE_DIR`` or ``~/.cache/softmaxlab``
  (``$XDG_CACHE_HOME/softmaxlab``), one subdirectory per key.  If that directory cannot
  be written the kernels compile in every process, as without the cache, with a warning.

Numba writes each index and data file to a temporary name and renames it into place
(``os.replace``), so processes filling the same cache at once never read a torn file;
the worst case is an entry written twice or an index entry lost to a concurrent writer,
which costs a compile, not a wrong result (``tests/kernels/test_cache.py`` starts eight
cold processes at once).  The thread count is not compiled into a ``parallel=True``
kernel (it is read when the kernel runs), and the results are bit-identical for any
thread count, so a kernel cached by a process with 2 threads is correct with 1 or 16.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import warnings
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SWITCH_VARIABLE = "SOFTMAXLAB_CACHE"
DIRECTORY_VARIABLE = "SOFTMAXLAB_CACHE_DIR"
_OFF = {"0", "false", "no", "off"}

_key = None
_installed = None  # None: not decided yet; else whether the cache is on


def requested() -> bool:
    """Whether the environment leaves the cache on (``SOFTMAXLAB_CACHE`` is not 0/false/no/off)."""
    return os.environ.get(SWITCH_VARIABLE, "1").strip().lower() not in _OFF


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("softmaxlab")
    except Exception:  # not installed (a bare checkout on sys.path)
        return "unknown"


def source_hash() -> str:
    """sha256 of every ``.py`` of the package (paths and contents) and the compiler's versions."""
    import llvmlite
    import numba

    digest = hashlib.sha256()
    for label in (numba.__version__, llvmlite.__version__, sys.version, sys.platform):
        digest.update(label.encode() + b"\0")
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def jit_cpu() -> tuple[str, str]:
    """(name, feature string) of the CPU Numba compiles for (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES`` honoured)."""
    from llvmlite import binding
    from numba.core import config

    name = config.CPU_NAME or binding.get_host_cpu_name()
    return name, config.CPU_FEATURES or binding.get_host_cpu_features().flatten()


def cpu_key() -> str:
    """The CPU Numba compiles for: its name and a hash of its feature string (``jit_cpu``)."""
    name, features = jit_cpu()
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return f"{safe_name}-{hashlib.sha256(features.encode()).hexdigest()[:8]}"


def cache_key() -> str:
    """``<package version>-<source hash>-<cpu>``: the name of this build's cache directory."""
    global _key
    if _key is None:
        _key = f"{package_version()}-{source_hash()[:16]}-{cpu_key()}"
    return _key


def cache_root() -> Path:
    explicit = os.environ.get(DIRECTORY_VARIABLE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "softmaxlab"


def cache_dir() -> Path:
    """The directory holding this build's compiled kernels."""
    return cache_root() / cache_key()


def enabled() -> bool:
    """Whether the kernels of this process are cached on disk (decided once, at import)."""
    return bool(_installed)


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _in_package(py_file) -> bool:
    try:
        return Path(py_file).resolve().is_relative_to(PACKAGE_DIR)
    except (OSError, TypeError, ValueError):
        return False


# ---- deterministic description of a closure's cells ---------------------------------------


class _Undescribable(Exception):
    pass


def _describe(value, depth=0):
    """A description of ``value`` that is the same in every process (or _Undescribable)."""
    import numpy as np
    from numba.core import types
    from numba.core.dispatcher import Dispatcher

    if depth > 20:
        raise _Undescribable("too deep")
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return (type(value).__name__, repr(value))
    if isinstance(value, (np.generic, np.dtype)):
        return ("numpy", type(value).__name__, repr(value))
    if isinstance(value, types.Type):
        return ("numba-type", str(value))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_describe(item, depth + 1) for item in value))
    if isinstance(value, Dispatcher):
        return ("dispatcher",) + _describe_function(value.py_func, depth)
    if callable(value) and hasattr(value, "__code__"):
        return ("function",) + _describe_function(value, depth) + _describe_registrations(value, depth)
    raise _Undescribable(type(value).__name__)


def _describe_registrations(function, depth):
    """What Numba compiles for a plain function: the implementations ``@overload`` registered for it.

    A closure's cell may hold the stub of an ``@overload`` made inside a factory (the
    ``terms`` of ``_make_exp_sum``): the stubs of two factory calls have the same code and
    no cells, and only their implementations (closures over the factory's flags) differ.
    Described by the stub alone, two different kernels got one cache key and the second
    loaded the first's code (``distillation_loss`` then ran the unscaled exponential sum).
    A registration that cannot be described (an ``@intrinsic``) makes the key undescribable,
    which falls back to Numba's own key: a cache miss, never a wrong hit.
    """
    from numba.core.typing import templates

    described = []
    for registered, function_type in templates.builtin_registry.globals:
        if registered is not function:
            continue
        for template in getattr(function_type, "templates", ()):
            implementation = getattr(template, "_overload_func", None)
            if implementation is None:
                raise _Undescribable(f"registration of {function.__qualname__}")
            described.append(("overload",) + _describe_function(implementation, depth + 1))
    return tuple(described)


def _describe_function(function, depth):
    code = function.__code__
    cells = tuple(_describe(cell.cell_contents, depth + 1) for cell in (function.__closure__ or ()))
    return (
        function.__module__,
        function.__qualname__,
        code.co_firstlineno,
        hashlib.sha256(code.co_code).hexdigest(),
        cells,
    )


def _closure_bytes(py_func):
    if py_func.__closure__ is None:
        return b""
    return repr(tuple(_describe(cell.cell_contents) for cell in py_func.__closure__)).encode()


# ---- installation into Numba ------------------------------------------------------------------


def _make_locator_class():
    from numba.core import caching

    class SoftmaxlabCacheLocator(caching._CacheLocator):
        """Numba cache locator for this package's functions: ``cache_dir()``, stamped by ``cache_key()``."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file  # Numba's warning for an uncachable function names it
            self._lineno = py_func.__code__.co_firstlineno
            relative = Path(py_file).resolve().relative_to(PACKAGE_DIR).with_suffix("")
            self._module = ".".join(relative.parts)

        @classmethod
        def from_function(cls, py_func, py_file):
            if not (_installed and _in_package(py_file)):
                return None
            return cls(py_func, py_file)

        def ensure_cache_path(self):
            os.makedirs(self.get_cache_path(), exist_ok=True)

        def get_cache_path(self):
            return str(cache_dir())

        def get_source_stamp(self):
            return cache_key()

        def get_disambiguator(self):
            # the line, and the module path (two modules of one name in different folders)
            return f"{self._lineno}-{hashlib.sha256(self._module.encode()).hexdigest()[:6]}"

    return SoftmaxlabCacheLocator


def _install_into_numba():
    from numba.core import caching

    locator = _make_locator_class()
    implementation = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in Numba 0.6x
    implementation._locator_classes.insert(0, locator)
    original = caching.FunctionCache._index_key

    def _index_key(self, sig, codegen):
        if not isinstance(getattr(self._impl, "locator", None), locator):
            return original(self, sig, codegen)
        try:
            cells = _closure_bytes(self._py_func)
        except _Undescribable:
            return original(self, sig, codegen)  # misses in a new process, as Numba's own key
        digest = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
        return (sig, codegen.magic_tuple(), (digest(self._py_func.__code__.co_code), digest(cells)))

    _index_key.softmaxlab = True
    caching.FunctionCache._index_key = _index_key
    return locator


def install() -> bool:
    """Turn the cache on for this package's functions unless disabled; returns whether it is on.

    Called once by ``_config`` before any kernel is decorated (``JIT_OPTIONS["cache"]``).
    """
    global _installed
    if _installed is not None:
        return _installed
    if not requested():
        _installed = False
        return False
    directory = cache_dir()
    if not _writable(directory):
        warnings.warn(
            f"softmaxlab: cannot write the kernel cache {directory}; compiling in every process "
            f"(set {DIRECTORY_VARIABLE} to a writable directory, or {SWITCH_VARIABLE}=0)",
            RuntimeWarning,
            stacklevel=2,
        )
        _installed = False
        return False
    try:
        _installed = True
        _install_into_numba()
    except (ImportError, AttributeError, TypeError) as error:  # a Numba whose internals moved
        _installed = False
        warnings.warn(f"softmaxlab: kernel cache off ({type(error).__name__}: {error})", RuntimeWarning, stacklevel=2)
    return _installed
