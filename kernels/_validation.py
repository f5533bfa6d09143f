"""Input checks for the public functions, in plain Python (never inside JIT code).

Each helper raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(right kind, wrong value or shape) with a message that names the argument, says what
was expected and what came.
"""

from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_float_array(name: str, value, *, min_ndim: int = 1) -> np.ndarray:
    """A float32/float64 ndarray with at least ``min_ndim`` dimensions, returned as is."""
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of float32 or float64, got {type(value).__name__}"
        )
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {value.dtype}")
    if value.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimension(s), got shape {value.shape}"
        )
    return value


def check_same_array_layout(name: str, value: np.ndarray, like_name: str, like: np.ndarray):
    """``value`` must have the shape and dtype of ``like``."""
    if value.shape != like.shape:
        raise ValueError(
            f"{name} must have the shape of {like_name} {like.shape}, got {value.shape}"
        )
    if value.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}), got {value.dtype}")


def check_axis(name: str, axis, ndim: int) -> int:
    """A valid axis for ``ndim`` dimensions, normalized to be non-negative."""
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(axis).__name__}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be in [-{ndim}, {ndim - 1}] for an array of {ndim} dimension(s), got {axis}")
    return int(axis) % ndim


def as_rows(x: np.ndarray, axis: int) -> np.ndarray:
    """A C-contiguous (rows, classes) view or copy of ``x`` with ``axis`` last.

    No copy is made when ``x`` is already contiguous with ``axis`` last; the caller's
    array is never written either way.
    """
    moved = np.moveaxis(x, axis, -1)
    classes = moved.shape[-1]
    rows = int(np.prod(moved.shape[:-1], dtype=np.int64))
    return np.ascontiguousarray(moved.reshape(rows, classes))


def from_rows(rows: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    """Inverse of :func:`as_rows` for an output of the input's shape."""
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return np.moveaxis(rows.reshape(moved_shape), -1, axis)
