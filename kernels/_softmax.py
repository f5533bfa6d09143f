"""The normalizers: softmax, log_softmax, logsumexp and the two backward functions.

Each public function validates its input in plain Python, lays the array out as
(rows, classes) with the class axis last, and calls one parallel Numba kernel built by
``_driver/rows.py``'s ``make_row_kernel`` from a block reduction, a row merge and a block write.
The exponentials of ``x - max`` take the rounding error of the difference into their
argument (``two_sum``), float32 rows in float32 arithmetic (``_numerics/exp.py``, ``exp32``, 16 lanes a
vector), float64 rows in float64; sums are accumulated in float64 over blocks of fixed
size, merged in a fixed order (see ``_numerics/rows.py``).  softmax's and log_softmax's reduce stores
the exponentials in the output row, which the write scales (softmax) or overwrites
(log_softmax) (``reduce_max_sum_exp_via``).

Proof book: ``docs/proofs/softmax.md`` (Jacobian and VJPs, shift invariance, the
bounds of logsumexp, d logsumexp / dz = softmax); each kernel's loop cites its anchor.
"""

from __future__ import annotations

import math

import numpy as np
from numba import get_thread_id, njit, types
from numba.extending import overload

from ._config import JIT_OPTIONS, STRICT_FASTMATH, block_schedule, streamed_rows
from ._driver.rows import make_row_kernel
from ._numerics.eft import fma, two_sum
from ._numerics.exp import exp64_pair
from ._numerics.rows import (
    fill,
    following_block,
    merge_max_sum_exp,
    max_sum_exp_stored,
    merge_sum_and_max,
    next_row_block,
    reduce_max_sum_exp,
    reduce_max_sum_exp_scratch,
    reduce_max_sum_exp_via,
    reduce_sum_and_max,
    reduce_sum_product,
    scale_shift_in_place,
    store_exp_product_difference,
    stream_scaled,
)
from ._numerics.vector import row_exp_product_difference32_stream, row_shifted_log32_stream
from ._outputs import thread_rows
from ._validation import (
    as_rows,
    check_axis,
    check_float_array,
    check_out,
    check_same_array_layout,
    finish_rows,
    from_rows,
    output_rows,
)

__all__ = ["softmax", "log_softmax", "logsumexp", "softmax_backward", "log_softmax_backward"]


# ---- block writes (the math of each kernel stands above its loop) ----------------------


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _softmax_factor(block_largest, largest, total):
    """exp(m_b - M) / (1 + T) as an unevaluated float64 pair (high + low).

    1 + T is split exactly (two_sum) and inverted with an FMA residual, so the pair is
    exact to ~2**-100 relative when m_b = M; otherwise exp(m_b - M) adds exp64's error.
    """
    sum_high, sum_low = two_sum(1.0, total)
    inverse = 1.0 / sum_high
    inverse_low = (fma(-inverse, sum_high, 1.0) - inverse * sum_low) / sum_high
    if block_largest == largest:
        return inverse, inverse_low
    difference_high, difference_low = two_sum(block_largest, -largest)
    scale = exp64_pair(difference_high, difference_low)
    high = scale * inverse
    return high, fma(scale, inverse, -high) + scale * inverse_low


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _softmax_row(x, unused, out, i):
    """A row of one block with a finite max, in one piece (``make_row_kernel``'s ``fused_row``).

    The arithmetic of ``reduce_max_sum_exp_via`` then ``_write_softmax`` for such a row
    (its block is the row: m_b = M, t_b = T), without the block pair and the merge.
    """
    values = x[i]
    destination = out[i]
    # e_j = exp(x_j - M) stored, T = sum_j e_j - 1; a_j = e_j / (1 + T); the next row prefetched
    largest, total = max_sum_exp_stored(values, destination, following_block(x, i, 0, values.shape[0]))
    if not math.isfinite(largest):
        return False
    high, low = _softmax_factor(largest, largest, total)
    scale_shift_in_place(destination, high, low, 0.0)
    return True


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _write_softmax(x, unused, out, i, start, stop, block_largest, block_total, largest, total):
    destination = out[i, start:stop]
    if math.isfinite(largest):
        if not math.isfinite(block_largest):
            # a block of -inf: 0 (NaN if it holds a NaN, or if S is NaN)
            fill(destination, (1.0 + block_total) / (1.0 + total))
            return
        # a_j = e_j exp(m_b - M) / S,  M = max_b m_b,  S = 1 + T = sum_b S_b exp(m_b - M)
        # (docs/proofs/softmax.md#softmax-shift-invariance)
        high, low = _softmax_factor(block_largest, largest, total)
        # a_j = e_j * (high + low), rounded once (float32: fma(e_j, fh, e_j fl))
        scale_shift_in_place(destination, high, low, 0.0)
        return
    values = x[i, start:stop]
    if largest == np.inf and total == 0.0:
        # exactly one +inf: the limit of softmax is the one-hot vector at that entry
        for j in range(values.shape[0]):
            destination[j] = 1.0 if values[j] == np.inf else 0.0
    else:
        # all -inf (T = -1, S = 0): zeros; a NaN, or several +inf (no limit): NaN
        fill(destination, 0.0 if total == -1.0 else np.nan)


def _write_shifted_log(values, destination, largest, log_total):
    """destination[j] = (values[j] - largest) - log_total, in the dtype's arithmetic (JIT only).

    float64: x_j - M rounded (0.5 ULP of |x_j - M| <= |out|), then the difference.
    float32: 16 lanes a vector instead of 8 through float64 (the float64 write was 0.55
    of log_softmax's 3.3 ms at 4096 x 1000 on one thread, measured): x_j - M and L are
    each rounded to float32, relative errors d1, d2 <= 2**-24; both terms have the same
    sign (x_j - M <= 0 <= L), so |(x_j - M) d1 - L d2| <= 2**-24 (|x_j - M| + L) =
    2**-24 |out| < 1 ULP of out, and the difference rounds once more (0.5 ULP).  A tie
    (x_j = M) has x_j - M = 0 exactly: its -L (the dominant class's log-probability,
    -1e-10 and smaller) loses only L's rounding.
    """
    raise NotImplementedError("_write_shifted_log is only callable from JIT code")


@overload(_write_shifted_log, inline="always")
def _write_shifted_log_impl(values, destination, largest, log_total):
    if values.dtype == types.float32:

        def shifted_log32(values, destination, largest, log_total):
            shift = np.float32(largest)  # a float32 row's max: exact
            log32 = np.float32(log_total)
            for j in range(values.shape[0]):
                destination[j] = (values[j] - shift) - log32

        return shifted_log32

    def shifted_log64(values, destination, largest, log_total):
        for j in range(values.shape[0]):
            destination[j] = (values[j] - largest) - log_total

    return shifted_log64


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _stream_shifted_log(values, destination, largest, log_total):
    """``_write_shifted_log`` of a float32 row, streamed (``vector.row_shifted_log32_stream``)."""
    row_shifted_log32_stream(values, destination, np.float32(largest), np.float32(log_total))


def _log_softmax_writer(shifted_log):
    """The block write of log_softmax, its finite rows written by ``shifted_log``."""

    @njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
    def write_log_softmax(x, unused, out, i, start, stop, block_largest, block_total, largest, total):
        values = x[i, start:stop]
        destination = out[i, start:stop]
        if math.isfinite(largest):
            log_total = math.log1p(total)
            # log a_j = (x_j - M) - log1p(T)  (docs/proofs/softmax.md#log-softmax-identity)
            shifted_log(values, destination, largest, log_total)
        elif largest == np.inf and total == 0.0:
            for j in range(values.shape[0]):
                destination[j] = 0.0 if values[j] == np.inf else -np.inf
        else:
            fill(destination, -np.inf if total == -1.0 else np.nan)

    return write_log_softmax


_write_log_softmax = _log_softmax_writer(_write_shifted_log)
# the e_j in a scratch block per thread (the write does not read them), the output streamed
_write_log_softmax_streamed = _log_softmax_writer(_stream_shifted_log)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _reduce_into_thread_row(x, scratch, out, i, start, stop):
    """``reduce_max_sum_exp_via`` with the e_j stored at the block's place in this thread's
    row of ``scratch`` (threads, classes), where the streamed write reads them."""
    return max_sum_exp_stored(x[i, start:stop], scratch[get_thread_id(), start:stop], following_block(x, i, start, stop))


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _write_softmax_streamed(x, scratch, out, i, start, stop, block_largest, block_total, largest, total):
    """``_write_softmax`` with the e_j read from this thread's scratch row and the output streamed."""
    if math.isfinite(largest) and math.isfinite(block_largest):
        high, low = _softmax_factor(block_largest, largest, total)
        stream_scaled(scratch[get_thread_id(), start:stop], out[i, start:stop], high, low)
        return
    # the rows and blocks that read no e_j
    _write_softmax(x, scratch, out, i, start, stop, block_largest, block_total, largest, total)


@njit(fastmath=STRICT_FASTMATH, inline="always", **JIT_OPTIONS)
def _log_softmax_row(x, unused, out, i):
    """``_softmax_row`` for log_softmax: ``reduce_max_sum_exp_via`` then ``_write_log_softmax``."""
    values = x[i]
    destination = out[i]
    largest, total = max_sum_exp_stored(values, destination, following_block(x, i, 0, values.shape[0]))
    if not math.isfinite(largest):
        return False
    _write_shifted_log(values, destination, largest, math.log1p(total))
    return True


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_logsumexp(x, unused, out, i, start, stop, block_largest, block_total, largest, total):
    if start != 0:
        return
    # logsumexp(x) = M + log1p(T), max(x) <= logsumexp(x) <= max(x) + log K
    # (docs/proofs/softmax.md#logsumexp-bounds)
    if math.isfinite(largest):
        out[i] = largest + math.log1p(total)
    elif largest == np.inf:
        out[i] = np.inf if total == total else np.nan
    else:
        out[i] = -np.inf if total == -1.0 else np.nan


def _scaled_difference(y_values, dy_values, destination, dot):
    """destination[j] = y_j (dy_j - dot) (JIT only).

    float64 rows: dy_j - dot split exactly (TwoSum, d + e), then y_j d + y_j e with one
    rounding (an FMA): the difference, where dy_j and dot nearly cancel, adds no rounding
    of its own.  float32 rows: in float64 and rounded once to float32 (the float64
    difference's rounding is far below a float32 ULP).
    """
    raise NotImplementedError("_scaled_difference is only callable from JIT code")


@overload(_scaled_difference, inline="always", jit_options=JIT_OPTIONS)
def _scaled_difference_impl(y_values, dy_values, destination, dot):
    if y_values.dtype == types.float64:

        def exact_difference(y_values, dy_values, destination, dot):
            for j in range(y_values.shape[0]):
                y_j = y_values[j]
                high, low = two_sum(dy_values[j], -dot)
                destination[j] = fma(y_j, high, y_j * low)

        return exact_difference

    def widened(y_values, dy_values, destination, dot):
        for j in range(y_values.shape[0]):
            destination[j] = np.float64(y_values[j]) * (np.float64(dy_values[j]) - dot)

    return widened


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_softmax_backward(y, dy, out, i, start, stop, block_dot, block_unused, dot, unused):
    # dx_i = sum_j dy_j da_j/dz_i = a_i (dy_i - sum_j a_j dy_j)
    # (docs/proofs/softmax.md#softmax-jacobian, #softmax-vjp)
    _scaled_difference(y[i, start:stop], dy[i, start:stop], out[i, start:stop], dot)


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_log_softmax_backward(y, dy, out, i, start, stop, block_total, block_largest, total, largest):
    y_values = y[i, start:stop]
    dy_values = dy[i, start:stop]
    destination = out[i, start:stop]
    if largest == -np.inf:
        # an all -inf row (softmax all zeros) has zero gradient; NaN entries stay NaN
        for j in range(y_values.shape[0]):
            destination[j] = 0.0 if y_values[j] == -np.inf else np.nan
        return
    # dx_i = dy_i - exp(y_i) sum_j dy_j   (docs/proofs/softmax.md#log-softmax-vjp)
    store_exp_product_difference(
        y_values, dy_values, destination, total, largest, next_row_block(y, i, start, stop),
        next_row_block(dy, i, start, stop)
    )


@njit(fastmath=STRICT_FASTMATH, **JIT_OPTIONS)
def _write_log_softmax_backward_streamed(y, dy, out, i, start, stop, block_total, block_largest, total, largest):
    """``_write_log_softmax_backward`` of float32 rows with the output streamed
    (``vector.row_exp_product_difference32_stream``: the same bits and prefetches)."""
    if largest == -np.inf:
        _write_log_softmax_backward(y, dy, out, i, start, stop, block_total, block_largest, total, largest)
        return
    row_exp_product_difference32_stream(y[i, start:stop], dy[i, start:stop], out[i, start:stop], np.float64(total),
                                        next_row_block(y, i, start, stop), next_row_block(dy, i, start, stop))


_softmax_kernel = make_row_kernel(reduce_max_sum_exp_via, merge_max_sum_exp, _write_softmax, _softmax_row)
_log_softmax_kernel = make_row_kernel(reduce_max_sum_exp_via, merge_max_sum_exp, _write_log_softmax, _log_softmax_row)
_logsumexp_kernel = make_row_kernel(reduce_max_sum_exp, merge_max_sum_exp, _write_logsumexp)
# float32 rows: the exponentials in float32 arithmetic through a scratch row per thread
_logsumexp_stored_kernel = make_row_kernel(reduce_max_sum_exp_scratch, merge_max_sum_exp, _write_logsumexp)
# large float32 outputs of long rows, streamed (``_config.streamed_rows``): the same bits
_softmax_streamed_kernel = make_row_kernel(_reduce_into_thread_row, merge_max_sum_exp, _write_softmax_streamed)
_log_softmax_streamed_kernel = make_row_kernel(reduce_max_sum_exp_scratch, merge_max_sum_exp,
                                               _write_log_softmax_streamed)
_softmax_backward_kernel = make_row_kernel(reduce_sum_product, merge_sum_and_max, _write_softmax_backward)
_log_softmax_backward_kernel = make_row_kernel(
    reduce_sum_and_max, merge_sum_and_max, _write_log_softmax_backward
)
_log_softmax_backward_streamed_kernel = make_row_kernel(
    reduce_sum_and_max, merge_sum_and_max, _write_log_softmax_backward_streamed
)


def _run(kernel, a, b, out):
    """Call a row kernel, sharing rows between threads when rows are fewer than threads."""
    block, split = block_schedule(a.shape[0], a.shape[1], a.dtype.itemsize)
    kernel(a, b, out, block, split)
    return out


# ---- public API -------------------------------------------------------------------------


def softmax(x, axis=-1, *, out=None):
    r"""Softmax along ``axis``.

    .. math:: \mathrm{softmax}(x)_j = \frac{e^{x_j - M}}{\sum_k e^{x_k - M}},\quad M = \max_k x_k

    Args:
        x: float32 or float64 array of any shape (at least 1-D); not modified.
        axis: the class axis (default: the last).
        out: optional array of ``x``'s shape and dtype that receives the result and is
            returned (a loop that reuses it allocates nothing and takes no first-touch
            page faults); it may not share memory with ``x``.

    Returns:
        An array of ``x``'s shape and dtype whose slices along ``axis`` sum to 1.
        Edge cases: a slice of all ``-inf`` gives zeros; a NaN gives NaN in its slice
        only; exactly one ``+inf`` gives the one-hot vector at it (the limit), two or
        more give NaN.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import softmax
        >>> softmax(np.array([1000.0, 1000.0, 1000.0]))
        array([0.33333333, 0.33333333, 0.33333333])

    Accuracy: the bound of ``docs/design.md``, "Error model", where each term is
    derived; measured maxima in the README's accuracy table.

    Reference: J. S. Bridle, "Probabilistic interpretation of feedforward classification
    network outputs", 1990; the max shift and the blocked (max, sum) merge follow
    Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018.
    """
    x = check_float_array("x", x)
    axis = check_axis("axis", axis, x.ndim)
    out = check_out(out, x, ("x", x))
    rows = as_rows(x, axis)
    destination = output_rows(out, rows, axis)
    block, split = block_schedule(rows.shape[0], rows.shape[1], rows.dtype.itemsize)
    if streamed_rows(rows.shape[0], rows.shape[1], rows.dtype.itemsize, block, split, keeps_row=True):
        # a row's e_j wait for its write in a scratch row of the thread
        _softmax_streamed_kernel(rows, thread_rows(rows.shape[1], rows.dtype), destination, block, split)
    else:
        _softmax_kernel(rows, rows, destination, block, split)
    return finish_rows(destination, x.shape, axis, out)


def log_softmax(x, axis=-1, *, out=None):
    r"""Log-softmax along ``axis``.

    .. math:: \log\mathrm{softmax}(x)_j = (x_j - M) - \log \sum_k e^{x_k - M}

    Args:
        x: float32 or float64 array of any shape (at least 1-D); not modified.
        axis: the class axis (default: the last).
        out: optional array of ``x``'s shape and dtype that receives the result and is
            returned (a loop that reuses it allocates nothing and takes no first-touch
            page faults); it may not share memory with ``x``.

    Returns:
        An array of ``x``'s shape and dtype.  A slice of all ``-inf`` gives ``-inf``
        (the log of softmax's zeros); NaN gives NaN in its slice; one ``+inf`` gives 0
        there and ``-inf`` elsewhere, several give NaN.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import log_softmax
        >>> log_softmax(np.array([0.0, 0.0]))
        array([-0.69314718, -0.69314718])

    Accuracy: the bound of ``docs/design.md``, "Error model", where each term is
    derived; measured maxima in the README's accuracy table.

    Reference: Bridle 1990; Milakov & Gimelshein 2018 (see :func:`softmax`).
    """
    x = check_float_array("x", x)
    axis = check_axis("axis", axis, x.ndim)
    out = check_out(out, x, ("x", x))
    rows = as_rows(x, axis)
    destination = output_rows(out, rows, axis)
    block, split = block_schedule(rows.shape[0], rows.shape[1], rows.dtype.itemsize)
    if streamed_rows(rows.shape[0], rows.shape[1], rows.dtype.itemsize, block, split, keeps_row=False):
        # the e_j in a scratch block of the thread: the write reads x, not them
        _log_softmax_streamed_kernel(rows, thread_rows(block, rows.dtype), destination, block, split)
    else:
        _log_softmax_kernel(rows, rows, destination, block, split)
    return finish_rows(destination, x.shape, axis, out)


def logsumexp(x, axis=-1):
    r"""Log of the sum of exponentials along ``axis``.

    .. math:: \mathrm{LSE}(x) = M + \log \sum_k e^{x_k - M},\qquad
              \max_k x_k \le \mathrm{LSE}(x) \le \max_k x_k + \log K

    Args:
        x: float32 or float64 array of any shape (at least 1-D); not modified.
        axis: the axis reduced over (default: the last).

    Returns:
        ``x``'s shape without ``axis``, ``x``'s dtype.  All ``-inf`` (or an empty
        axis) gives ``-inf``; any ``+inf`` gives ``+inf``; NaN gives NaN.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import logsumexp
        >>> float(logsumexp(np.array([-1000.0, -1000.0, -1000.0])))
        -998.9013877113...

    Reference: ``docs/proofs/softmax.md`` (the bounds of logsumexp); Milakov & Gimelshein 2018.
    """
    x = check_float_array("x", x)
    axis = check_axis("axis", axis, x.ndim)
    rows = as_rows(x, axis)
    out = np.empty(rows.shape[0], dtype=x.dtype)
    if rows.dtype == np.float32:
        # float64 rows gain nothing from storing: their exponentials are float64 either way
        block, split = block_schedule(rows.shape[0], rows.shape[1], rows.dtype.itemsize)
        _logsumexp_stored_kernel(rows, thread_rows(min(rows.shape[1], block), rows.dtype), out, block, split)
    else:
        _run(_logsumexp_kernel, rows, rows, out)
    return out.reshape(x.shape[:axis] + x.shape[axis + 1 :])


def _backward_rows(name_y, y, name_dy, dy, axis):
    y = check_float_array(name_y, y)
    dy = check_float_array(name_dy, dy)
    check_same_array_layout(name_dy, dy, name_y, y)
    axis = check_axis("axis", axis, y.ndim)
    return as_rows(y, axis), as_rows(dy, axis), axis


def softmax_backward(y, dy, axis=-1, *, out=None):
    r"""Vector-Jacobian product of softmax, from its output.

    .. math:: dx_i = y_i \Big(dy_i - \sum_j y_j\, dy_j\Big),\qquad y = \mathrm{softmax}(x)

    Args:
        y: the output of :func:`softmax` (float32 or float64).
        dy: the upstream gradient, same shape and dtype as ``y``.
        axis: the class axis used in the forward call.
        out: optional array of ``y``'s shape and dtype that receives dx and is returned;
            it may not share memory with ``y`` or ``dy``.

    Returns:
        dx, shaped like ``y``.  Rows of zeros in ``y`` (all ``-inf`` inputs) give zeros.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import softmax_backward
        >>> softmax_backward(np.array([0.5, 0.5]), np.array([1.0, 0.0]))
        array([ 0.25, -0.25])

    Accuracy: sum_j y_j dy_j in float64, compensated for float64 rows (Dot2, within about
    one rounding); the bound of docs/proofs/softmax.md#softmax-vjp-rounding, relative to
    the terms y_i (|dy_i| + sum_j y_j |dy_j|), since dx_i is their difference.

    Reference: the Jacobian d a_j / d z_i = a_j (delta_ij - a_i), docs/proofs/softmax.md#softmax-vjp.
    """
    y_rows, dy_rows, axis = _backward_rows("y", y, "dy", dy, axis)
    out = check_out(out, y, ("y", y), ("dy", dy))
    result = _run(_softmax_backward_kernel, y_rows, dy_rows, output_rows(out, y_rows, axis))
    return finish_rows(result, y.shape, axis, out)


def log_softmax_backward(y, dy, axis=-1, *, out=None):
    r"""Vector-Jacobian product of log-softmax, from its output.

    .. math:: dx_i = dy_i - e^{y_i} \sum_j dy_j,\qquad y = \log\mathrm{softmax}(x)

    Args:
        y: the output of :func:`log_softmax` (float32 or float64).
        dy: the upstream gradient, same shape and dtype as ``y``.
        axis: the class axis used in the forward call.
        out: optional array of ``y``'s shape and dtype that receives dx and is returned;
            it may not share memory with ``y`` or ``dy``.

    Returns:
        dx, shaped like ``y``.  A row of all ``-inf`` in ``y`` gives zeros.

    Example:
        >>> import numpy as np
        >>> from softmaxlab.kernels import log_softmax_backward
        >>> log_softmax_backward(np.log(np.array([0.25, 0.75])), np.array([1.0, 0.0]))
        array([ 0.75, -0.75])

    Accuracy: sum_j dy_j in float64, compensated for float64 rows; the bound of
    docs/proofs/softmax.md#log-softmax-vjp-rounding, relative to |dy_i| + e^{y_i} sum_j |dy_j|.

    Reference: d log a_j / d z_i = delta_ij - a_i, docs/proofs/softmax.md#log-softmax-vjp.
    """
    y_rows, dy_rows, axis = _backward_rows("y", y, "dy", dy, axis)
    out = check_out(out, y, ("y", y), ("dy", dy))
    destination = output_rows(out, y_rows, axis)
    block, split = block_schedule(y_rows.shape[0], y_rows.shape[1], y_rows.dtype.itemsize)
    kernel = _log_softmax_backward_kernel
    if streamed_rows(y_rows.shape[0], y_rows.shape[1], y_rows.dtype.itemsize, block, split, keeps_row=False):
        kernel = _log_softmax_backward_streamed_kernel
    kernel(y_rows, dy_rows, destination, block, split)
    return finish_rows(destination, y.shape, axis, out)
