"""Hypothesis strategies for the property tests: dtypes, shapes, class axes, memory layouts
and value regimes.

Arrays are not drawn element by element (a row of 20,000 classes would take seconds):
Hypothesis draws the structure (dtype, class count, batch shape, class axis, layout, value
regime, loss options) and a seed, and NumPy fills the values from the seed.  Shrinking
works on the structure, and every example is reproducible from its draw.

Class counts: 1, a few, hundreds, several thousand, and rows of two or three 32 KiB
blocks (more than 8192 float32 or 4096 float64 classes: ``_config.block_length``), so
that one row is cut into blocks and, for fewer rows than twice the threads, shared
between threads.  Elements per example stay below ~40,000 (milliseconds per call).

Layouts: C-contiguous, every other element along one axis (the gaps hold NaN, so a kernel
reading past the view would show it), transposed (Fortran order) and reversed (negative
stride).  The public functions copy any of them into a C-contiguous (rows, classes)
array before calling a kernel (``_validation.as_rows``, ``np.ascontiguousarray``), so
these layouts, shapes and axes compile each kernel once per dtype, not once per layout.

Value regimes (docs/design.md, "Input regimes"): standard normal, wide (x30), large
(+-1e4), offset (1e4 + normal: x - max is where float32 loses digits), one dominant logit,
near-ties (equal or 1 ulp apart), subnormals, and -inf masked entries; for the margin
losses, cosines (uniform, exactly +-1 and within ulps of 1, near-ties).  The edge
properties add special rows at random places: all -inf, NaN, one +inf, several +inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from softmaxlab.kernels._config import block_length

DTYPES = (np.float32, np.float64)
dtypes = st.sampled_from(DTYPES)
LAYOUTS = ("contiguous", "strided", "transposed", "reversed")
MAX_ELEMENTS = 40_000
MAX_ROWS = 40


# ---- value regimes: fill a (rows, classes) array of a dtype from a NumPy generator ------------


def _normal(rng, shape, dtype):
    return (rng.standard_normal(shape) * rng.choice([1.0, 3.0])).astype(dtype)


def _wide(rng, shape, dtype):
    return (rng.standard_normal(shape) * 30.0).astype(dtype)


def _large(rng, shape, dtype):
    return rng.uniform(-1e4, 1e4, shape).astype(dtype)


def _offset(rng, shape, dtype):
    # per row 1e4 or -1e4 (or 1e3) plus a spread of a few units
    offsets = rng.choice([-1e4, -1e3, 1e3, 1e4], size=(shape[0], 1))
    return (offsets + 3.0 * rng.standard_normal(shape)).astype(dtype)


def _dominant(rng, shape, dtype):
    values = rng.standard_normal(shape)
    values[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] += rng.uniform(20.0, 200.0, shape[0])
    return values.astype(dtype)


def _ties(rng, shape, dtype):
    # per row a base b; every entry b, the next float above or the next below (1 ulp apart)
    bases = rng.choice([0.0, 1.0, -2.5, 1e4, -1e4, 3.0 * rng.standard_normal()], size=(shape[0], 1))
    base = np.broadcast_to(bases.astype(dtype), shape)
    step = rng.integers(-1, 2, shape)
    up, down = np.nextafter(base, np.asarray(np.inf, dtype)), np.nextafter(base, np.asarray(-np.inf, dtype))
    return np.where(step == 0, base, np.where(step > 0, up, down)).astype(dtype)


def _subnormal(rng, shape, dtype):
    # multiples of the smallest subnormal, exact in the dtype, zeros included
    return (rng.integers(-1024, 1025, shape) * np.finfo(dtype).smallest_subnormal).astype(dtype)


def _masked(rng, shape, dtype):
    # a fraction of -inf entries, at least one finite entry per row
    values = _normal(rng, shape, dtype)
    mask = rng.random(shape) < rng.uniform(0.1, 0.9)
    mask[np.arange(shape[0]), rng.integers(0, shape[1], shape[0])] = False
    values[mask] = -np.inf
    return values


REGIMES = {
    "normal": _normal,
    "wide": _wide,
    "large": _large,
    "offset": _offset,
    "dominant": _dominant,
    "ties": _ties,
    "subnormal": _subnormal,
    "masked": _masked,
}
ALL_REGIMES = tuple(REGIMES)


def _cosines(rng, shape, dtype):
    return rng.uniform(-1.0, 1.0, shape).astype(dtype)


def _cosine_ends(rng, shape, dtype):
    # +-1 exactly, 1 - 2**-k (within an ulp or a few of 1), and ordinary cosines, mixed
    near_one = 1.0 - 2.0 ** -rng.integers(1, np.finfo(dtype).nmant + 1, shape)
    ends = rng.choice([-1.0, 1.0], shape)
    pick = rng.integers(0, 3, shape)
    return np.where(pick == 0, ends, np.where(pick == 1, near_one, rng.uniform(-1.0, 1.0, shape))).astype(dtype)


def _cosine_ties(rng, shape, dtype):
    values = _ties(rng, shape, dtype)
    return np.clip(values / max(1.0, float(np.max(np.abs(values), initial=1.0))), -1.0, 1.0).astype(dtype)


COSINE_REGIMES = {"cosines": _cosines, "cosine_ends": _cosine_ends, "cosine_ties": _cosine_ties}
_FILLS = {**REGIMES, **COSINE_REGIMES}
SPECIAL_ROWS = ("all_neg_inf", "nan", "one_pos_inf", "several_pos_inf")


def _inject_special(rng, rows: np.ndarray, kind: str) -> np.ndarray:
    """Turn a random non-empty set of rows into special rows of ``kind``; returns the row mask."""
    count, classes = rows.shape
    special = np.zeros(count, dtype=bool)
    special[rng.choice(count, rng.integers(1, count + 1), replace=False)] = True
    for index in np.flatnonzero(special):
        if kind == "all_neg_inf":
            rows[index] = -np.inf
            continue
        if kind == "nan":
            value, how_many = np.nan, rng.integers(1, 4)
        elif kind == "one_pos_inf":
            value, how_many = np.inf, 1
        else:
            value, how_many = np.inf, rng.integers(2, 4)
        rows[index, rng.choice(classes, min(how_many, classes), replace=False)] = value
    return special


# ---- shapes and layouts ----------------------------------------------------------------------


def class_counts(dtype, *, min_classes: int = 1):
    """1, a few, hundreds, several thousand, or two to three blocks' worth of classes."""
    block = block_length(np.dtype(dtype).itemsize)
    choices = st.one_of(
        st.just(1),
        st.integers(2, 40),
        st.integers(41, 700),
        st.integers(2000, 5000),
        st.builds(lambda blocks, extra: blocks * block + extra, st.integers(1, 2), st.integers(1, 300)),
    )
    return choices.map(lambda classes: max(classes, min_classes))


@st.composite
def batch_shapes(draw, dims: int, max_rows: int):
    shape, budget = [], max_rows
    for _ in range(dims):
        size = draw(st.integers(1, max(1, min(5, budget))))
        shape.append(size)
        budget //= size
    return tuple(shape)


def with_layout(values: np.ndarray, layout: str, along: int) -> np.ndarray:
    """A view equal to ``values`` with the given memory layout (``along``: the axis for
    "strided" and "reversed")."""
    if layout == "strided":
        wide = list(values.shape)
        wide[along] *= 2
        buffer = np.full(wide, np.nan, dtype=values.dtype)  # the gaps: NaN
        index = tuple(slice(None, None, 2) if axis == along else slice(None) for axis in range(values.ndim))
        buffer[index] = values
        return buffer[index]
    if layout == "transposed":
        return np.ascontiguousarray(values.T).T
    if layout == "reversed":
        return np.flip(np.ascontiguousarray(np.flip(values, along)), along)
    return np.ascontiguousarray(values)


@dataclass
class ClassArray:
    """An input array and its rows.

    ``x`` is what the function is called with (any layout), ``axis`` the class axis as
    passed; ``rows`` holds the same values as a C-contiguous (rows, classes) copy with the
    class axis last, in the order of ``np.moveaxis(x, axis, -1).reshape(-1, classes)``;
    ``layout`` and ``along`` are ``with_layout``'s arguments; ``special`` marks the rows
    made special (or is None).
    """

    x: np.ndarray
    axis: int
    rows: np.ndarray
    regime: str
    layout: str
    along: int
    special: np.ndarray | None = None

    @property
    def classes(self) -> int:
        return self.rows.shape[1]

    @property
    def dtype(self):
        return self.x.dtype

    def rows_of(self, out: np.ndarray) -> np.ndarray:
        """An output of ``x``'s shape as (rows, classes), in the order of ``rows``."""
        return np.moveaxis(out, self.axis, -1).reshape(-1, self.classes)

    def like(self, rows: np.ndarray) -> np.ndarray:
        """New (rows, classes) values arranged as ``x``: same shape, class axis and layout."""
        return _arrange(rows, np.moveaxis(self.x, self.axis, -1).shape, self.axis % self.x.ndim, self.layout,
                        self.along)


def _arrange(rows: np.ndarray, moved_shape: tuple, position: int, layout: str, along: int) -> np.ndarray:
    return with_layout(np.moveaxis(rows.reshape(moved_shape), -1, position), layout, along)


@st.composite
def class_arrays(draw, regimes=ALL_REGIMES, special: str | None = None, dtype=None, classes=None,
                 last_axis: bool = False, max_dims: int = 3, max_rows: int = MAX_ROWS):
    """A ``ClassArray``: dtype, class count, 1-3 dimensions, class axis, layout and values drawn.

    ``classes`` (a strategy) replaces the default class counts; ``last_axis`` keeps the
    classes on the last axis (the losses); ``special`` makes some rows special
    (``SPECIAL_ROWS``).
    """
    dtype = np.dtype(draw(dtypes) if dtype is None else dtype)
    minimum = 2 if special == "several_pos_inf" else 1
    count = draw(class_counts(dtype, min_classes=minimum) if classes is None else classes)
    dims = draw(st.integers(1, max_dims))
    batch = draw(batch_shapes(dims - 1, max(1, min(max_rows, MAX_ELEMENTS // count))))
    position = dims - 1 if last_axis else draw(st.integers(0, dims - 1))
    axis = position - dims if draw(st.booleans()) else position
    regime = draw(st.sampled_from(regimes))
    layout = draw(st.sampled_from(LAYOUTS))
    along = draw(st.integers(0, dims - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = _FILLS[regime](rng, (int(np.prod(batch, dtype=np.int64)), count), dtype)
    marked = _inject_special(rng, rows, special) if special else None
    x = _arrange(rows, batch + (count,), position, layout, along)
    return ClassArray(x, axis, rows.copy(), regime, layout, along, marked)


# ---- loss options ----------------------------------------------------------------------------

REDUCTIONS = ("mean", "sum", "none")
INDEX_DTYPES = (np.int64, np.int32, np.uint16)


def seeds():
    return st.integers(0, 2**32 - 1).map(np.random.default_rng)


@st.composite
def upstream(draw, batch_shape: tuple):
    """(reduction, grad_output): a number, or for "none" sometimes an array of the batch shape."""
    reduction = draw(st.sampled_from(REDUCTIONS))
    rng = draw(seeds())
    if reduction == "none" and draw(st.booleans()):
        return reduction, rng.uniform(-2.0, 2.0, batch_shape).astype(draw(dtypes))
    return reduction, draw(st.sampled_from([1.0, float(rng.uniform(-2.0, 2.0))]))


@st.composite
def matrices(draw, shape: tuple, dtype, scales=(1.0,)):
    """A standard normal array of ``shape`` times a drawn scale, in a drawn layout (rows of norm > 0)."""
    rng = draw(seeds())
    values = (rng.standard_normal(shape) * draw(st.sampled_from(scales))).astype(dtype)
    return with_layout(values, draw(st.sampled_from(LAYOUTS)), draw(st.integers(0, len(shape) - 1)))


def row_scales(reduction: str, grad_output, batch_shape: tuple, denominator: float) -> np.ndarray:
    """dOut/dloss_i per row (float64, flat): what each row's loss is multiplied by."""
    rows = int(np.prod(batch_shape, dtype=np.int64))
    if reduction == "none":
        return np.broadcast_to(np.asarray(grad_output, dtype=np.float64), batch_shape).reshape(rows).copy()
    value = float(grad_output)
    if reduction == "mean":
        value = value / denominator if denominator != 0 else 0.0
    return np.full(rows, value)


def class_indices(rng, batch_shape: tuple, classes: int, dtype=np.int64) -> np.ndarray:
    return rng.integers(0, classes, batch_shape).astype(dtype)


def probability_rows(rng, shape: tuple, dtype) -> np.ndarray:
    """Non-negative rows (class probabilities, some exactly 0), summing to about 1."""
    weights = rng.exponential(size=shape) * (rng.random(shape) < 0.8)
    totals = weights.sum(axis=-1, keepdims=True)
    return (weights / np.where(totals == 0.0, 1.0, totals)).astype(dtype)
