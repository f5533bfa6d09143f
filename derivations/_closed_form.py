"""Lambdified closed forms: the very SymPy expressions the proof book proves, made callable
on NumPy arrays, for testing kernels against their derivations.

A closed form is built from an expression over indexed symbols (``z[k]``, ``W[j, d]``)
and sums with a symbolic number of terms (``Sum(exp(z[k]), (k, 0, K - 1))``).  It is
evaluated with :func:`sympy.lambdify` (NumPy printer): an indexed symbol ``z[k]`` reads
the trailing axes of the array passed for ``z`` (``z[..., k]``), sizes such as ``K`` are
read from those axes, a sum becomes a Python loop over its index, and the output indices
(``j`` for the components of softmax) are looped over and stacked on trailing axes.  Any
leading (batch) axes broadcast.  This is a reference, not a fast path: a vector output of
a sum costs O(K^2) array operations, fine for the small inputs of tests.

The formulas are the proven ones, without overflow guards: for large logits evaluate them
on shifted logits, which the shift-invariance statement
(``docs/proofs/softmax.md#softmax-shift-invariance``) allows.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, Sequence, Tuple

import numpy as np
import sympy as sp

__all__ = ["ClosedForm", "register", "get", "names"]


class _TrailingAxes:
    """Wraps an array so that ``wrapped[k]`` / ``wrapped[j, d]`` index its trailing axes."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array = array

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        return self.array[(Ellipsis,) + tuple(int(i) for i in index)]


def _kronecker_delta(first, second):
    return 1.0 if first == second else 0.0


class ClosedForm:
    """A SymPy expression, proven in the proof book, callable on NumPy float64 arrays.

    Args:
        name: the registry name (``"softmax"``).
        expression: the SymPy expression (free in the arguments, sizes and output indices).
        arguments: the inputs in call order: ``IndexedBase`` objects (arrays) or
            ``Symbol`` objects (scalars or arrays broadcast over the batch axes).
        shapes: for each ``IndexedBase`` argument, the size symbols of its trailing axes,
            e.g. ``{z: (K,)}`` or ``{W: (C, D)}``.
        outputs: the output indices and their size symbols, e.g. ``((j, K),)``; the result
            has these as trailing axes, after the broadcast batch axes.
        page: the proof-book page and anchor the expression is proven on.
        formula: a one-line plain-text formula for the docstring.
    """

    def __init__(self, name: str, expression, arguments: Sequence, shapes: Dict, *,
                 outputs: Sequence[Tuple] = (), page: str = "", formula: str = ""):
        self.name = name
        self.expression = expression
        self.arguments = tuple(arguments)
        self.shapes = dict(shapes)
        self.outputs = tuple(outputs)
        self.page = page
        self.formula = formula
        self.sizes = sorted(
            {size for dims in self.shapes.values() for size in dims}
            | {size for _, size in self.outputs},
            key=lambda symbol: symbol.name,
        )
        parameters = list(self.arguments) + list(self.sizes) + [index for index, _ in self.outputs]
        self._function = sp.lambdify(
            parameters, expression,
            modules=[{"KroneckerDelta": _kronecker_delta}, "numpy"],
        )
        self.__doc__ = (
            f"{name}({', '.join(str(a) for a in self.arguments)}): {formula}\n\n"
            f"Lambdified from the SymPy expression proven in {page}."
        )

    def __repr__(self) -> str:
        return f"<ClosedForm {self.name}({', '.join(str(a) for a in self.arguments)}) from {self.page}>"

    @property
    def source(self) -> str:
        """The Python source lambdify generated."""
        import inspect

        return inspect.getsource(self._function)

    def __call__(self, *values):
        if len(values) != len(self.arguments):
            raise TypeError(
                f"{self.name} takes {len(self.arguments)} arguments "
                f"({', '.join(str(a) for a in self.arguments)}), got {len(values)}"
            )
        sizes: Dict[sp.Symbol, int] = {}
        batch_shapes = []
        prepared = []
        for argument, value in zip(self.arguments, values):
            array = np.asarray(value, dtype=np.float64)
            if isinstance(argument, sp.IndexedBase):
                dims = self.shapes[argument]
                if array.ndim < len(dims):
                    raise ValueError(
                        f"{self.name}: {argument} needs at least {len(dims)} axes "
                        f"({', '.join(map(str, dims))}), got shape {array.shape}"
                    )
                for size, length in zip(dims, array.shape[array.ndim - len(dims):]):
                    if sizes.setdefault(size, length) != length:
                        raise ValueError(
                            f"{self.name}: size {size} is {sizes[size]} from an earlier "
                            f"argument but {length} along {argument}'s axis"
                        )
                batch_shapes.append(array.shape[: array.ndim - len(dims)])
                prepared.append(_TrailingAxes(array))
            else:
                batch_shapes.append(array.shape)
                prepared.append(array)
        batch = np.broadcast_shapes(*batch_shapes) if batch_shapes else ()
        size_values = [sizes[size] for size in self.sizes]
        output_lengths = [sizes[size] for _, size in self.outputs]
        result = np.empty(batch + tuple(output_lengths), dtype=np.float64)
        for combination in itertools.product(*(range(n) for n in output_lengths)):
            value = self._function(*prepared, *size_values, *combination)
            result[(Ellipsis,) + combination] = np.broadcast_to(value, batch)
        return result


# ---- registry ------------------------------------------------------------------------------------

_BUILDERS: Dict[str, Callable[[], ClosedForm]] = {}
_BUILT: Dict[str, ClosedForm] = {}


def register(name: str):
    """Register a function that builds the closed form ``name`` (built once, on first use)."""

    def add(builder: Callable[[], ClosedForm]):
        if name in _BUILDERS:
            raise ValueError(f"closed form {name!r} registered twice")
        _BUILDERS[name] = builder
        return builder

    return add


def get(name: str) -> ClosedForm:
    """The closed form registered as ``name``."""
    if name not in _BUILT:
        if name not in _BUILDERS:
            raise KeyError(f"no closed form named {name!r}; known: {', '.join(sorted(_BUILDERS))}")
        _BUILT[name] = _BUILDERS[name]()
    return _BUILT[name]


def names() -> list:
    """The registered names, sorted."""
    return sorted(_BUILDERS)
