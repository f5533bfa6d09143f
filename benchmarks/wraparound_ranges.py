"""List the run-time overlap checks of the compiled kernels that cover a wrap-around range.

Numba wraps a negative index around: ``a[i]`` with ``i < 0`` reads ``a[len(a) + i]``.  In a
loop whose index LLVM cannot prove non-negative (``a[c + j]`` with ``c`` an argument), the
vectorizer's run-time overlap check then covers ``a[len(a) + c + j]`` too, a range past the
array's end.  An output that the heap placed there sends the loop to its scalar version,
which contracts multiply-adds differently from the vector one: the bits then depend on
where the arrays lie.  That was the fused kernels' flaky float64 gradients
(``docs/performance.md``, fourteenth session).  The kernels index such loops by the loop's
counter on a slice (``weights = args.weight[start:stop]``, then ``weights[j]``); this script
checks that none is left.

It computes every case of ``benchmarks/output_hashes.py`` (every registry entry, regime and
dtype, at the shapes of its profiles) with the cache off, since code loaded from the cache
cannot be inspected.  Then it reads the LLVM IR of every compiled softmaxlab kernel.  Within
each function of that IR, a bound of an overlap check (``%boundN = icmp ult ptr ...``) whose
address adds an array's length (``%arg.NAME.5.K``) to a value that is not a constant is a
wrap-around range.  A constant offset from a length (the last row, ``len - 1``) is not.

    python benchmarks/wraparound_ranges.py                    # every case: about 3 min
    python benchmarks/wraparound_ranges.py --kernels cross_entropy

It prints each kernel with such a bound and exits 1 if there is one, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# an array's length (the argument's shape field, ``%arg.NAME.5.K``) plus a value
_LENGTH = r"%arg\.[\w.]+\.5\.\d+"
_VALUE = r"%[\w.\"$]+"
_LENGTH_PLUS_VALUE = re.compile(
    rf"^add (?:nsw |nuw )*i64 (?:{_LENGTH}, {_VALUE}|{_VALUE}, {_LENGTH})$"
)
_DEFINITION = re.compile(rf"\s*({_VALUE}) = (.*)")
_BOUND = re.compile(r"%bound[01]\w* = icmp")
_POINTER = re.compile(rf"ptr ({_VALUE})")


def _functions(ir: str):
    """(name, body) of each function defined in a module's IR."""
    for chunk in re.split(r"\n(?=define )", ir):
        if chunk.startswith("define "):
            yield re.search(r"@([\w.$\"]+)", chunk).group(1), chunk


def _adds_a_length(name: str, table: dict, depth: int = 0) -> bool:
    """Whether value ``name`` is computed from an array's length plus a non-constant value."""
    if depth > 16 or name not in table:
        return False
    expression = table[name]
    if _LENGTH_PLUS_VALUE.match(expression):
        return True
    return any(_adds_a_length(operand, table, depth + 1)
               for operand in re.findall(_VALUE, expression) if operand != name)


def wraparound_bounds(ir: str) -> list[tuple[str, str]]:
    """(function, bound) for each overlap-check bound of the module ``ir`` that covers a wrap-around range.

    Value names are local to a function, so each function is read on its own: a name that
    two functions define differently would otherwise chain one function's bound to the other's
    arithmetic.
    """
    found = []
    for function, body in _functions(ir):
        table = {}
        for line in body.splitlines():
            match = _DEFINITION.match(line)
            if match:
                table[match.group(1)] = match.group(2)
        for line in body.splitlines():
            if _BOUND.search(line):
                pointers = [pointer.removesuffix(".fr") for pointer in _POINTER.findall(line)]
                if any(_adds_a_length(pointer, table) for pointer in pointers):
                    found.append((function, line.strip()))
    return found


def compiled_kernels():
    """(qualified name, signature, IR) of every compiled overload of every softmaxlab kernel imported."""
    from numba.core.registry import CPUDispatcher

    seen = set()
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("softmaxlab"):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, CPUDispatcher) and id(value) not in seen:
                seen.add(id(value))
                name = f"{value.py_func.__module__}.{value.py_func.__qualname__}"
                for signature, ir in value.inspect_llvm().items():
                    yield name, signature, ir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["smoke", "quick"])
    parser.add_argument("--kernels", nargs="+", default=None, help="only these registry entries")
    args = parser.parse_args(argv)

    if "softmaxlab.kernels" in sys.modules:
        raise RuntimeError("run wraparound_ranges.py in a fresh process: the kernels must compile with the cache off")
    os.environ["SOFTMAXLAB_CACHE"] = "0"
    import warnings

    from numba.core.errors import NumbaIRAssumptionWarning

    warnings.simplefilter("ignore", NumbaIRAssumptionWarning)  # Numba's own pedantic check, not the kernels'
    import output_hashes
    from softmaxlab.harness import regimes
    from softmaxlab.harness.registry import REGISTRY

    registry = {name: entry for name, entry in REGISTRY.items() if args.kernels is None or name in args.kernels}
    cases = 0
    for entry, regime, shape, dtype in output_hashes.cases(registry, regimes, args.profiles):
        inputs = entry.make_inputs(regime, shape, dtype, 0)
        try:
            entry.implementation("softmaxlab").prepare(inputs)()
        except (TypeError, ValueError):  # a documented refusal compiles what it reached
            pass
        cases += 1

    overloads = checked = wrapped = 0
    for name, signature, ir in compiled_kernels():
        overloads += 1
        checked += "found.conflict" in ir
        for function, bound in wraparound_bounds(ir):
            wrapped += 1
            print(f"{name} {str(signature)[:70]}\n    in {function[:90]}\n    {bound}")
    print(f"{cases} cases, {overloads} compiled overloads, {checked} with run-time overlap checks, "
          f"{wrapped} wrap-around bounds")
    return 1 if wrapped else 0


if __name__ == "__main__":
    sys.exit(main())
