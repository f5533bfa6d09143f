"""The innermost loops of compiled kernels, counted: how many instructions a stored element costs.

``benchmarks/pass_costs.py`` reports these counts beside its timings, and the kernels' tests
bound them where a loop that stopped vectorizing would be slower without being wrong.  x86-64
assembly in AT&T syntax, as LLVM prints it for Numba.
"""

from __future__ import annotations

import re

__all__ = ["hot_loop"]

_LABEL = re.compile(r"^(\.LBB\w+):")
_BRANCH = re.compile(r"^\s+j\w+\s+(\.LBB\w+)")
_STORE = re.compile(r"^\s+(?:vmov[ua]p[sd]|vmovdq[ua]\d*)\s+%([xyz])mm\d+,\s*[^%]*\(")
_STORE_BYTES = {"x": 16, "y": 32, "z": 64}
# the multiplier pipes' instructions (multiplies and FMAs), the busiest in an exp loop
_MULTIPLY = re.compile(r"^\s+(?:vfn?m(?:add|sub)\d+[ps][sd]|vmul[ps][sd])\s")


def hot_loop(assembly: str, itemsize: int) -> dict:
    """Instructions per element of the innermost loop of ``assembly`` (a function's machine
    code, as Numba's ``inspect_asm`` gives it) that stores the most elements an iteration, as a
    dict: ``all``, ``vector`` (on x/y/zmm registers) and ``multiply`` (multiplies and FMAs), each
    over the elements its full-register vector stores write (their bytes over ``itemsize``), and
    ``elements``.  A loop is the lines from a label to the branch back to it with no label
    between; ``{"elements": 0}`` when no loop stores a vector."""
    lines = assembly.splitlines()
    starts, best = {}, {"elements": 0}
    for number, line in enumerate(lines):
        label = _LABEL.match(line)
        if label:
            starts = {label.group(1): number}  # a loop with a label inside is not innermost
            continue
        branch = _BRANCH.match(line)
        if branch and branch.group(1) in starts:
            body = lines[starts[branch.group(1)] + 1 : number + 1]
            instructions = [text for text in body if text.startswith("\t") and not text.startswith("\t.")]
            elements = sum(_STORE_BYTES[m.group(1)] for m in map(_STORE.match, instructions) if m) // itemsize
            if elements > best["elements"]:
                best = {
                    "all": len(instructions) / elements,
                    "vector": sum("mm" in text for text in instructions) / elements,
                    "multiply": sum(bool(_MULTIPLY.match(text)) for text in instructions) / elements,
                    "elements": elements,
                }
    return best
