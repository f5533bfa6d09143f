"""Input checks for the public functions, in plain Python (never inside the kernels).

One scan is compiled (``_scan_labels``): a label check over a batch in one pass.

Each helper raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError``
(right kind, wrong value or shape) with a message that names the argument, says what
was expected and what came.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numba import njit

from ._config import JIT_OPTIONS
from ._outputs import new_output_like

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
    if axis == x.ndim - 1 and x.flags.c_contiguous:  # the common case, without moveaxis (~10 us)
        return x if x.ndim == 2 else x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    moved = np.moveaxis(x, axis, -1)
    classes = moved.shape[-1]
    rows = int(np.prod(moved.shape[:-1], dtype=np.int64))
    return np.ascontiguousarray(moved.reshape(rows, classes))


def from_rows(rows: np.ndarray, shape: tuple, axis: int) -> np.ndarray:
    """Inverse of :func:`as_rows` for an output of the input's shape."""
    if axis == len(shape) - 1:
        return rows.reshape(shape)
    moved_shape = shape[:axis] + shape[axis + 1 :] + (shape[axis],)
    return np.moveaxis(rows.reshape(moved_shape), -1, axis)


def check_out(out, like: np.ndarray, *inputs: tuple[str, np.ndarray]):
    """``out=``: None, or a writable ndarray of ``like``'s shape and dtype that shares no
    memory with any of ``inputs`` ((name, array) pairs), returned as is."""
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray or None, got {type(out).__name__}")
    if out.shape != like.shape:
        raise ValueError(f"out must have the result's shape {like.shape}, got {out.shape}")
    if out.dtype != like.dtype:
        raise TypeError(f"out must have the result's dtype {like.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writable, got a read-only array")
    for name, array in inputs:
        if np.shares_memory(out, array):
            raise ValueError(f"out must not share memory with {name} (the kernels read it while they write out)")
    return out


def output_rows(out, rows: np.ndarray, axis: int) -> np.ndarray:
    """The (rows, classes) array a row kernel writes: ``out`` itself, viewed as rows, when
    it is C-contiguous with ``axis`` last; otherwise a new array (``_outputs.new_output_like``;
    ``finish_rows`` copies it into ``out``)."""
    if out is not None and axis == out.ndim - 1 and out.flags.c_contiguous:
        return out.reshape(rows.shape)
    return new_output_like(rows)


def finish_rows(result: np.ndarray, shape: tuple, axis: int, out) -> np.ndarray:
    """The public result of a row kernel's ``result`` (:func:`from_rows`), stored in ``out`` if given."""
    if out is None:
        return from_rows(result, shape, axis)
    if not np.shares_memory(result, out):
        np.copyto(out, from_rows(result, shape, axis))
    return out


# ---- losses: class indices, real parameters, reduction, upstream gradient --------------
# (appended for the margin and center losses; usable by every loss)

REDUCTIONS = ("mean", "sum", "none")


def check_class_indices(name: str, target, shape: tuple, classes: int) -> np.ndarray:
    """Integer class indices of ``shape`` in ``[0, classes)``, returned as C-contiguous int64.

    A label out of range is reported with its value and its row (the first one in C order).
    """
    if not isinstance(target, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integer class indices, got {type(target).__name__}")
    if target.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype (class indices), got {target.dtype}")
    if target.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {target.shape}")
    return _scanned_labels(name, target, classes, None)[0]


def check_real_scalar(name: str, value, *, minimum=None, maximum=None, include_minimum=True,
                      include_maximum=True, integer=False):
    """A finite real number (``bool`` excluded) within the given bounds, returned as float (or int).

    ``integer=True`` asks for an integral value (an int, or a float such as 2.0) and
    returns an ``int``.
    """
    # float and int first: the checks against numbers.Real go through the ABC machinery,
    # whose cold caches cost microseconds right after a large kernel (measured)
    if type(value) not in (float, int) and (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)):
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
            value = value.item()
        else:
            kind = "an integer" if integer else "a real number"
            raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if integer and type(value) is not int and not isinstance(value, numbers.Integral):
        if not float(value).is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond the float64 range
        raise ValueError(f"{name} must be finite, got an int of {len(str(abs(int(value))))} digits") from None
    number = int(value) if integer else as_float
    if not math.isfinite(as_float):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (number < minimum or (not include_minimum and number == minimum)):
        relation = ">=" if include_minimum else ">"
        raise ValueError(f"{name} must be {relation} {minimum}, got {value!r}")
    if maximum is not None and (number > maximum or (not include_maximum and number == maximum)):
        relation = "<=" if include_maximum else "<"
        raise ValueError(f"{name} must be {relation} {maximum}, got {value!r}")
    return number


def check_reduction(name: str, reduction) -> str:
    """One of ``REDUCTIONS`` ("mean", "sum", "none")."""
    if not isinstance(reduction, str):
        raise TypeError(f"{name} must be one of {REDUCTIONS}, got {type(reduction).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name} must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_grad_output(name: str, grad_output, reduction: str, shape: tuple) -> np.ndarray:
    """The upstream gradient of a loss as float64: a real scalar for "mean"/"sum", an
    array of the unreduced loss' ``shape`` (or a scalar, broadcast) for "none"."""
    # float and int go straight to the end, before the checks against numbers.Real (ABC machinery)
    if type(grad_output) not in (float, int):
        if isinstance(grad_output, np.ndarray) and grad_output.ndim > 0:
            if reduction != "none":
                raise ValueError(
                    f"{name} must be a scalar for reduction={reduction!r}, got an array of shape {grad_output.shape}"
                )
            if grad_output.dtype.kind not in "iuf" or grad_output.dtype == np.float16:
                raise TypeError(f"{name} must have a float32 or float64 dtype, got {grad_output.dtype}")
            if grad_output.shape != tuple(shape):
                raise ValueError(f"{name} must have the loss' shape {tuple(shape)}, got {grad_output.shape}")
            return grad_output.astype(np.float64)
        if isinstance(grad_output, (bool, np.bool_)) or not isinstance(grad_output, (numbers.Real, np.ndarray)):
            raise TypeError(f"{name} must be a real number or a numpy.ndarray, got {type(grad_output).__name__}")
        if isinstance(grad_output, np.ndarray) and grad_output.dtype.kind not in "iuf":
            raise TypeError(
                f"{name} must be a real number or a numpy.ndarray, got a 0-d array of dtype {grad_output.dtype}"
            )
    value = float(grad_output)
    return np.full(tuple(shape), value) if reduction == "none" else np.asarray(value)


# ---- losses: ignored labels, class weights, broadcast weights -----------------------------
# (appended for cross_entropy, distillation_loss, the sigmoid and the classic losses)


def check_class_indices_counted(name: str, target, shape: tuple, classes: int, ignore_index: int):
    """As :func:`check_class_indices`, but labels equal to ``ignore_index`` are allowed too;
    also counts the labels not ignored (one compiled scan).

    Returns (C-contiguous int64 labels, count); the first label that is neither in
    ``[0, classes)`` nor ``ignore_index`` is reported with its value and its row.
    """
    if not isinstance(target, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy.ndarray of integer class indices (or of float class probabilities), "
            f"got {type(target).__name__}"
        )
    if target.dtype.kind not in "iu":
        raise TypeError(f"{name} must have an integer dtype (class indices) or a float dtype (probabilities), "
                        f"got {target.dtype}")
    if target.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (the logits' shape without the class axis), "
                         f"got {target.shape}")
    return _scanned_labels(name, target, classes, ignore_index)


def _scanned_labels(name: str, target: np.ndarray, classes: int, ignore_index):
    """(C-contiguous int64 labels, number not ignored) of an integer array, every label in
    [0, classes) or equal to ``ignore_index`` (None: no label is ignored); the first other
    label is reported with its value and its row."""
    if target.dtype.kind == "u" and target.size and int(target.max()) > np.iinfo(np.int64).max:
        labels = np.minimum(target, np.uint64(np.iinfo(np.int64).max)).astype(np.int64)
    else:
        labels = target.astype(np.int64, copy=False)  # read only: the caller's array is never written
    labels = np.ascontiguousarray(labels)
    # one compiled pass instead of five NumPy temporaries (~20 us after a large kernel, whose
    # data have evicted NumPy's from the caches: measured)
    ignoring = ignore_index is not None
    first, kept = _scan_labels(labels.reshape(-1), classes, ignore_index if ignoring else 0, ignoring)
    if first >= 0:
        row = tuple(int(k) for k in np.unravel_index(first, target.shape)) if target.ndim > 1 else first
        allowed = f"[0, {classes}) or ignore_index ({ignore_index})" if ignoring else f"[0, {classes})"
        raise ValueError(f"{name} must hold class indices in {allowed}, got {int(target.ravel()[first])} at row {row}")
    return labels, kept


@njit(**JIT_OPTIONS)
def _scan_labels(labels, classes, ignore_index, ignoring):
    """(index of the first label neither in [0, classes) nor, with ``ignoring``, equal to
    ``ignore_index`` (-1 if none), number of labels not ignored)."""
    kept = 0
    for j in range(labels.shape[0]):
        label = labels[j]
        if not (ignoring and label == ignore_index):
            if label < 0 or label >= classes:
                return j, kept
            kept += 1
    return -1, kept


def check_class_weight(name: str, weight, classes: int) -> np.ndarray:
    """A float32/float64 array of one weight per class, shape ``(classes,)``, returned as float64."""
    weight = check_float_array(name, weight)
    if weight.shape != (classes,):
        raise ValueError(f"{name} must have shape ({classes},) (one weight per class), got {weight.shape}")
    return np.ascontiguousarray(weight, dtype=np.float64)


def check_broadcast_weight(name: str, weight, shape: tuple) -> np.ndarray:
    """A float32/float64 array that broadcasts to ``shape`` (returned unchanged)."""
    weight = check_float_array(name, weight, min_ndim=0)
    try:
        np.broadcast_shapes(weight.shape, tuple(shape))
    except ValueError:
        raise ValueError(f"{name} must broadcast to the logits' shape {tuple(shape)}, got {weight.shape}") from None
    if np.broadcast_shapes(weight.shape, tuple(shape)) != tuple(shape):
        raise ValueError(f"{name} must broadcast to the logits' shape {tuple(shape)}, got {weight.shape}")
    return weight
