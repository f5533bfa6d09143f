"""Input regimes: the logits every accuracy run and benchmark draws from (docs/design.md, "Input regimes").

Each regime is a function ``(shape, dtype, rng) -> logits`` of the given (rows, classes)
shape and float dtype; the values are drawn in float64 and rounded once to ``dtype``,
and the exact references are computed from the rounded values (so the rounding of the
inputs is never counted as an error).

* ``normal_x3``   3 * N(0, 1): the ordinary case (also the benchmarks' input).
* ``large_1e4``   logits of magnitude 1e4: a third of the rows at +1e4 + 3 N(0, 1) (the
  naive ``exp(x) / sum(exp(x))`` overflows to inf / inf), a third at -1e4 + 3 N(0, 1)
  (it underflows to 0 / 0), a third uniform in [-1e4, 1e4] (a huge spread).
* ``near_ties``   every logit of a row within 3 ULPs of a row value c in [-10, 10]: the
  softmax is 1/K up to a few ULPs and the sum must not drift.
* ``dominant``    3 N(0, 1) with one logit per row raised 30 above the row's maximum:
  the softmax is ~1 - K e^-30 there (log-softmax ~ -K e^-30, which a float32
  ``log(sum)`` rounds to 0) and ~e^-30 elsewhere.
* ``masked``      3 N(0, 1) with a quarter of the entries set to -inf, and every
  eighth row (row 0 included) entirely -inf (the kernels' conventions, docs/design.md: softmax 0, log_softmax
  and logsumexp -inf, gradients 0).
* ``classes_1e6`` 3 N(0, 1) in rows of 10^6 classes (the profile gives the row count);
  exact reference by the long-double engine, checked against mpmath (see ``exact``).

The upstream gradient ``dy`` of the backward operations is N(0, 1) in every regime,
drawn from its own stream so that ``x`` is the same for every operation.
"""

from __future__ import annotations

import zlib

import numpy as np

REGIMES = ("normal_x3", "large_1e4", "near_ties", "dominant", "masked", "classes_1e6")

# The regime whose rows have 10^6 classes (its shape comes from the profile).
MILLION_CLASSES_REGIME = "classes_1e6"
# The fused linear cross-entropy's one row of 2^20 classes (registry/linear.py), any profile.
LONG_ROW_REGIME = "row_2e20"
LONG_ROW_SHAPE = (1, 1 << 20)
# Every regime name an entry may run: the logits regimes above and the linear cross-entropy's own.
ALL_REGIMES = REGIMES + ("tiny_target", LONG_ROW_REGIME)


def rng_for(regime: str, shape: tuple[int, ...], dtype, seed: int, stream: str = "x") -> np.random.Generator:
    """A generator determined by (regime, shape, dtype, seed, stream) and nothing else.

    Every operation of a regime then sees the same ``x`` (the exact references share
    their work across operations) and ``dy`` comes from a stream of its own.
    """
    key = f"{regime}|{tuple(shape)}|{np.dtype(dtype).name}|{seed}|{stream}".encode()
    return np.random.default_rng([seed, zlib.crc32(key)])


def _normal_x3(shape, rng):
    return 3.0 * rng.standard_normal(shape)


def _large_1e4(shape, rng):
    rows = shape[0]
    values = 3.0 * rng.standard_normal(shape)
    kind = np.arange(rows) % 3
    values[kind == 0] += 1e4
    values[kind == 1] -= 1e4
    spread = kind == 2
    values[spread] = rng.uniform(-1e4, 1e4, size=(int(spread.sum()),) + tuple(shape[1:]))
    return values


def _near_ties(shape, rng, dtype):
    rows = shape[0]
    centre = rng.uniform(-10.0, 10.0, size=rows).astype(dtype)
    spacing = np.spacing(np.abs(centre)).astype(np.float64)
    offsets = rng.integers(-3, 4, size=shape)
    return centre.astype(np.float64)[:, None] + offsets * spacing[:, None]


def _dominant(shape, rng):
    values = 3.0 * rng.standard_normal(shape)
    winner = rng.integers(0, shape[1], size=shape[0])
    rows = np.arange(shape[0])
    values[rows, winner] = values.max(axis=1) + 30.0
    return values


def _masked(shape, rng):
    values = 3.0 * rng.standard_normal(shape)
    values[rng.random(shape) < 0.25] = -np.inf
    values[::8] = -np.inf
    return values


def logits(regime: str, shape: tuple[int, int], dtype, rng: np.random.Generator) -> np.ndarray:
    """Logits of ``regime`` with ``shape`` (rows, classes) and ``dtype`` (see the module docstring)."""
    dtype = np.dtype(dtype)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (rows, classes) with both >= 1, got {shape}")
    if regime in ("normal_x3", MILLION_CLASSES_REGIME):
        values = _normal_x3(shape, rng)
    elif regime == "large_1e4":
        values = _large_1e4(shape, rng)
    elif regime == "near_ties":
        values = _near_ties(shape, rng, dtype)
    elif regime == "dominant":
        values = _dominant(shape, rng)
    elif regime == "masked":
        values = _masked(shape, rng)
    else:
        raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
    return np.ascontiguousarray(values.astype(dtype))


def upstream_gradient(shape: tuple[int, ...], dtype, rng: np.random.Generator) -> np.ndarray:
    """An upstream gradient ``dy`` of N(0, 1) entries, shape ``shape``, dtype ``dtype``."""
    return rng.standard_normal(shape).astype(dtype)
