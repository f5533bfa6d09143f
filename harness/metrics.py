"""Error metrics against an exact reference: ULPs of the output dtype, relative error, and a
condition-aware error for outputs formed by cancellation.

The exact value of every output is held as an unevaluated float64 pair ``hi + lo``
(``hi`` the float64 nearest to the exact value, ``lo`` the rest rounded to float64):
106 bits, enough to measure float64 results to a small fraction of an ULP.  See
:class:`Exact`.

ULP definition (Harrison's "ulp at the exact value", in the output dtype ``T``)::

    ulp_T(v) = 2 ** (max(floor(log2 |v|), emin_T) - (p_T - 1))

with ``p_T`` the precision (24 for float32, 53 for float64) and ``emin_T`` the smallest
normal exponent (-126, -1022).  It is the spacing of ``T`` numbers in the binade that
holds the exact value ``v`` (not the computed one, so a wrong result cannot shrink its
own yardstick).  Edge cases:

* ``v = 0`` and subnormal ``v``: the binade clamps at ``emin_T``, so the ULP is the
  subnormal spacing (2**-149, 2**-1074); an error is then an absolute error in units of
  the smallest subnormal, and a correctly rounded result is still within 0.5 ULP.
* ``|v|`` above the largest finite ``T``: the ULP of the top binade.
* A binade boundary between ``v`` and ``hi`` (``hi`` a power of two and ``lo`` of the
  opposite sign) is resolved with ``lo``.

Errors are ``|computed - v|`` evaluated as ``|(computed - hi) - lo|`` in float64 (the
first difference is exact whenever computed and ``hi`` are within a factor of two).
Relative error is that over ``|v|``; for ``v = 0`` it is 0 when the result is 0 and
``inf`` otherwise.

Row-wise ULPs (``max_rowwise_ulp``): the error over ulp_T of the largest exact magnitude
of the entry's row (last axis).  Elementwise ULPs of a gradient are unbounded where
dx_j = a_j (dy_j - sum a dy) cancels to almost nothing, for any implementation that
starts from rounded values; the row-wise figure is the normwise view of the same errors.

Condition-aware error (``max_cond``, ``median_cond``): an output formed as a difference of
larger terms, e.g. softmax's gradient dx_i = a_i (dy_i - sum_j a_j dy_j), is measured
against the size of the terms that formed it, not against its own size.  Each such output
comes with a per-entry *term magnitude* ``scale_i`` >= |exact_i| (the value of the formula
with every term replaced by its absolute value, e.g. a_i (|dy_i| + sum_j a_j |dy_j|);
the registry entries name them, ``harness/exact/`` computes them in float64 from the
inputs and the exact values), and the error is::

    cond_i = |computed_i - exact_i| / (u_T * scale_i + eta_T)

in units of the unit roundoff ``u_T = 2 ** -p_T`` (2**-24, 2**-53), with ``eta_T =
2 ** (emin_T - p_T + 1)`` the smallest subnormal (2**-149, 2**-1074; a rounding into the
subnormal range errs by up to half of it, and half of float64's would underflow to 0).
A correctly rounded result scores at most 1 whatever the cancellation (its error is at
most ``u_T |exact_i| + eta_T / 2``), and a standard evaluation of the formula scores a
small constant times the depth of its sums (a first-order rounding error analysis:
``docs/proofs/softmax.md``); the elementwise ULP error of the same result is unbounded.  Where an output has no scale (forward values, and gradients
whose scale is not written yet) the columns are NaN; entries whose scale is NaN are left
out of the statistics.

Non-finite values are counted, not averaged: where the exact value is finite and the
result is NaN or +-inf, the entry counts in ``n_nonfinite`` and is left out of the ULP
statistics; where the exact value is itself +-inf (e.g. the log-softmax of a masked
entry), the entry counts in ``n_special`` and, if the result differs, in
``n_special_mismatch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# dtype -> (precision p in bits, smallest normal exponent emin, largest exponent emax)
_FORMATS = {
    np.dtype(np.float32): (24, -126, 127),
    np.dtype(np.float64): (53, -1022, 1023),
}

STAT_COLUMNS = (
    "n_values",
    "max_ulp",
    "median_ulp",
    "max_rel",
    "median_rel",
    "max_rowwise_ulp",
    "max_cond",
    "median_cond",
    "n_nonfinite",
    "n_special",
    "n_special_mismatch",
)


@dataclass(frozen=True)
class Exact:
    """The exact value of an output as a float64 pair: value = hi + lo (to ~2**-106).

    ``hi`` is the float64 nearest to the exact value (``+-inf`` for an infinite exact
    value, NaN where the mathematics has no value), ``lo`` the remainder rounded to
    float64 (0 where ``hi`` is not finite).  ``engine`` names how it was computed
    (``"mpmath-50"`` or ``"longdouble"``).
    """

    hi: np.ndarray
    lo: np.ndarray
    engine: str

    def __post_init__(self):
        if self.hi.shape != self.lo.shape:
            raise ValueError(f"lo must have the shape of hi {self.hi.shape}, got {self.lo.shape}")


def output_format(dtype) -> tuple[int, int, int]:
    """(precision, emin, emax) of a float32/float64 dtype; ValueError names the dtype."""
    try:
        return _FORMATS[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}") from None


def ulp_at(exact: Exact, dtype) -> np.ndarray:
    """ulp_T at the exact values (see the module docstring), as a float64 array."""
    precision, emin, emax = output_format(dtype)
    hi = np.asarray(exact.hi, dtype=np.float64)
    lo = np.asarray(exact.lo, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mantissa, exponent = np.frexp(np.abs(hi))  # |hi| = mantissa * 2**exponent, mantissa in [0.5, 1)
        binade = exponent.astype(np.int64) - 1  # floor(log2 |hi|)
        # hi = +-2**k exactly and lo pulls the exact value below it: one binade down
        below_power_of_two = (mantissa == 0.5) & (np.sign(lo) == -np.sign(hi)) & (lo != 0)
    binade = binade - below_power_of_two
    binade = np.where(hi == 0, emin, binade)
    binade = np.clip(binade, emin, emax)
    return np.ldexp(1.0, binade - (precision - 1))


def absolute_error(computed: np.ndarray, exact: Exact) -> np.ndarray:
    """|computed - (hi + lo)| evaluated as |(computed - hi) - lo| in float64."""
    computed = np.asarray(computed, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs((computed - exact.hi) - exact.lo)


def unit_roundoff(dtype) -> float:
    """u_T = 2**-p_T: 2**-24 for float32, 2**-53 for float64."""
    precision, _, _ = output_format(dtype)
    return 2.0**-precision


def underflow_error(dtype) -> float:
    """eta_T = 2**(emin_T - p_T + 1), the smallest subnormal: twice the absolute error of a rounding there."""
    precision, emin, _ = output_format(dtype)
    return 2.0 ** (emin - precision + 1)


def condition_error(computed, exact: Exact, scale, dtype) -> np.ndarray:
    """|computed - exact| / (u_T scale + eta_T) per entry (the module docstring); NaN where ``scale`` is NaN."""
    scale = np.asarray(scale, dtype=np.float64)
    if scale.shape != exact.hi.shape:
        raise ValueError(f"scale must have the exact value's shape {exact.hi.shape}, got {scale.shape}")
    if (scale < 0).any():
        raise ValueError("scale must be a magnitude (>= 0 or NaN), got a negative entry")
    with np.errstate(invalid="ignore"):
        return absolute_error(computed, exact) / (unit_roundoff(dtype) * scale + underflow_error(dtype))


def error_stats(computed, exact: Exact, dtype, scale=None) -> dict:
    """Tidy error statistics of ``computed`` against ``exact`` in the output ``dtype``.

    Returns a dict with the keys of :data:`STAT_COLUMNS`: ``n_values`` (entries whose
    exact value is finite), max and median error in ULPs and relative error over those
    of them that came out finite, and the non-finite counts.  Statistics are NaN when no
    entry is finite on both sides.  ``scale`` (the term magnitudes, exact's shape) gives
    the condition-aware statistics over those entries whose scale is not NaN; without
    it, or where every scale is NaN, they are NaN.
    """
    computed = np.asarray(computed)
    if computed.shape != exact.hi.shape:
        raise ValueError(f"computed must have the exact value's shape {exact.hi.shape}, got {computed.shape}")
    conditioned = np.full(exact.hi.size, np.nan) if scale is None else condition_error(computed, exact, scale,
                                                                                     dtype).ravel()
    computed64 = computed.astype(np.float64).ravel()
    hi = exact.hi.ravel()
    lo = exact.lo.ravel()
    magnitudes = np.where(np.isfinite(exact.hi), np.abs(exact.hi), 0.0)
    if exact.hi.ndim >= 2:
        magnitudes = np.broadcast_to(magnitudes.max(axis=-1, keepdims=True), exact.hi.shape)
    row_scale = magnitudes.ravel()

    exact_finite = np.isfinite(hi)
    computed_finite = np.isfinite(computed64)
    both_finite = exact_finite & computed_finite

    special = ~exact_finite
    same_special = (computed64 == hi) | (np.isnan(computed64) & np.isnan(hi))
    stats = {
        "n_values": int(exact_finite.sum()),
        "n_nonfinite": int((exact_finite & ~computed_finite).sum()),
        "n_special": int(special.sum()),
        "n_special_mismatch": int((special & ~same_special).sum()),
    }
    if not both_finite.any():
        stats.update(max_ulp=np.nan, median_ulp=np.nan, max_rel=np.nan, median_rel=np.nan, max_rowwise_ulp=np.nan,
                     max_cond=np.nan, median_cond=np.nan)
        return {key: stats[key] for key in STAT_COLUMNS}

    selected = Exact(hi[both_finite], lo[both_finite], exact.engine)
    error = absolute_error(computed64[both_finite], selected)
    ulps = error / ulp_at(selected, dtype)
    magnitude = np.abs(selected.hi)  # |hi + lo| to float64 precision
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(magnitude > 0, error / magnitude, np.where(error == 0, 0.0, np.inf))
    scale = row_scale[both_finite]
    rowwise = error / ulp_at(Exact(scale, np.zeros_like(scale), exact.engine), dtype)
    conditioned = conditioned[both_finite]
    conditioned = conditioned[~np.isnan(conditioned)]
    stats.update(
        max_cond=float(conditioned.max()) if conditioned.size else np.nan,
        median_cond=float(np.median(conditioned)) if conditioned.size else np.nan,
        max_rowwise_ulp=float(rowwise.max()),
        max_ulp=float(ulps.max()),
        median_ulp=float(np.median(ulps)),
        max_rel=float(relative.max()),
        median_rel=float(np.median(relative)),
    )
    return {key: stats[key] for key in STAT_COLUMNS}
