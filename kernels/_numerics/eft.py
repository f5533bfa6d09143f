"""Error-free transformations: a rounded result and its exact rounding error.

``two_sum`` (Knuth's TwoSum) and ``two_product`` (through one FMA) return ``(s, e)`` with
``s`` the rounded result and ``s + e`` the exact one; ``fma`` is ``llvm.fma``, a * b + c
rounded once.  They need round-to-nearest and no re-association: compiled with
``STRICT_FASTMATH`` (``_config.py``).  Used by the exponentials (``exp.py``), the
differences ``x - max`` that enter them exactly, the merges of block pairs and the margin
losses' logit pairs.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from .._config import JIT_OPTIONS, STRICT_FASTMATH

__all__ = ["fma", "two_sum", "two_product"]


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with a single rounding (llvm.fma; one instruction on FMA hardware)."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        value_type = args[0].type
        function = builder.module.declare_intrinsic(
            "llvm.fma", [value_type], ir.FunctionType(value_type, [value_type] * 3)
        )
        return builder.call(function, args)

    return a(a, b, c), codegen


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def two_sum(a, b):
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum, 6 flops).

    Needs round-to-nearest and no re-association: compiled with STRICT_FASTMATH.
    """
    s = a + b
    a_part = s - b
    b_part = s - a_part
    return s, (a - a_part) + (b - b_part)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def two_product(a, b):
    """(p, e) with p = fl(a b) and p + e = a b exactly (FMA)."""
    product = a * b
    return product, fma(a, b, -product)
