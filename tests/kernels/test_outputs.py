"""Tests for kernels/_outputs.py: the cache of large freed outputs."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from softmaxlab.kernels import (
    arcface_forward_backward,
    binary_cross_entropy_with_logits_forward_backward,
    cross_entropy_forward_backward,
    distillation_loss_forward_backward,
    log_softmax,
    log_softmax_backward,
    quadratic_cost,
    smooth_hinge_forward_backward,
    softmax,
    softmax_backward,
)
from softmaxlab.kernels import _outputs
from softmaxlab.kernels._outputs import SMALLEST_CACHED, _Cache, new_output

# 512 x 16384 float32 = 32 MiB: the smallest cached size, as a row batch
ROWS, CLASSES = 512, SMALLEST_CACHED // (512 * 4)


@pytest.fixture
def empty_cache():
    _outputs._CACHE.clear()
    yield _outputs._CACHE
    _outputs._CACHE.clear()


def test_a_dropped_output_is_reused_by_the_next_call_of_its_size(empty_cache):
    first = new_output((ROWS, CLASSES), np.float32)
    address = first.ctypes.data
    assert first.flags.c_contiguous and first.flags.writeable and first.dtype == np.float32
    del first
    second = new_output((ROWS, CLASSES), np.float32)
    assert second.ctypes.data == address
    # another shape of the same byte size takes the same buffer
    del second
    assert new_output((CLASSES, ROWS * 2), np.float16).ctypes.data == address


def test_a_view_keeps_its_buffer_out_of_the_cache(empty_cache):
    first = new_output((ROWS, CLASSES), np.float32)
    address = first.ctypes.data
    first[...] = 1.0
    view = first[ROWS // 2 :, 5]
    del first
    gc.collect()
    assert len(empty_cache.buffers) == 0
    second = new_output((ROWS, CLASSES), np.float32)
    second[...] = 2.0
    assert np.all(view == 1.0)
    assert second.ctypes.data != address
    del view
    assert len(empty_cache.buffers) == 1
    assert new_output((ROWS, CLASSES), np.float32).ctypes.data == address


def test_small_outputs_are_plain_arrays_and_none_is_kept(empty_cache):
    small = new_output((ROWS, CLASSES - 1), np.float32)
    assert small.flags.owndata
    del small
    assert len(empty_cache.buffers) == 0


def test_the_cache_keeps_at_most_its_capacity_dropping_the_oldest():
    cache = _Cache(capacity=100)
    buffers = [np.empty(40, dtype=np.uint8) for _ in range(3)]
    for buffer in buffers:
        cache.give_back(buffer)
    assert [b.ctypes.data for b in cache.buffers] == [b.ctypes.data for b in buffers[1:]]
    cache.give_back(np.empty(101, dtype=np.uint8))  # larger than the capacity: not kept
    assert len(cache.buffers) == 2
    assert cache.take(40) is buffers[2]  # the newest of that size
    assert cache.take(40) is buffers[1]
    assert cache.take(40).ctypes.data not in [b.ctypes.data for b in buffers]


def test_a_buffer_given_back_while_the_cache_is_locked_is_let_go():
    # what a lease's __del__ meets when the collector runs it inside take() on the same thread
    cache = _Cache(capacity=100)
    with cache.lock:
        cache.give_back(np.empty(10, dtype=np.uint8))
    assert cache.buffers == []


def test_kernels_write_their_whole_output_into_a_reused_buffer(empty_cache):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((ROWS, CLASSES)).astype(np.float32)
    expected = softmax(x)
    kept = expected.copy()
    expected_address = expected.__array_interface__["data"][0]
    dy = rng.standard_normal(x.shape).astype(np.float32)
    # a stale buffer full of NaN: every entry must be overwritten
    stale = new_output(x.shape, np.float32)
    stale[...] = np.nan
    stale_address = stale.ctypes.data
    del stale
    again = softmax(x)
    assert again.ctypes.data == stale_address != expected_address
    np.testing.assert_array_equal(again, kept)
    np.testing.assert_array_equal(expected, kept)  # the held result was not touched
    gradient = softmax_backward(expected, dy)
    np.testing.assert_array_equal(gradient, softmax_backward(expected, dy, out=np.empty_like(x)))
    labels = rng.integers(0, CLASSES, ROWS)
    del again, gradient
    loss, grad = cross_entropy_forward_backward(x, labels)
    assert not grad.flags.owndata
    loss_plain, grad_plain = cross_entropy_forward_backward(x, labels)
    assert loss == loss_plain
    np.testing.assert_array_equal(grad, grad_plain)


def _large_calls():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((ROWS, CLASSES)).astype(np.float32)
    target = rng.random(x.shape).astype(np.float32)
    labels = rng.integers(0, CLASSES, ROWS)
    ignored = np.where(np.arange(ROWS) % 3 == 0, -100, labels)
    cosines = np.clip(0.3 * x, -1.0, 1.0)
    y = log_softmax(x)
    return {
        "log_softmax_backward": lambda: log_softmax_backward(y, target),
        "cross_entropy_forward_backward, ignored rows": lambda: cross_entropy_forward_backward(
            x, ignored, ignore_index=-100, reduction="none")[1],
        "arcface_forward_backward": lambda: arcface_forward_backward(cosines, labels)[1],
        "distillation_loss_forward_backward": lambda: distillation_loss_forward_backward(x, target, labels)[1],
        "smooth_hinge_forward_backward": lambda: smooth_hinge_forward_backward(x, labels)[1],
        "quadratic_cost, reduction='none'": lambda: quadratic_cost(x, target, reduction="none"),
        "binary_cross_entropy_with_logits_forward_backward": lambda: (
            binary_cross_entropy_with_logits_forward_backward(x, target)[1]),
    }


@pytest.mark.parametrize("name", list(_large_calls()))
def test_every_kind_of_output_is_wholly_written_into_a_stale_buffer(empty_cache, name):
    # the row kernels, the loss drivers (ignored rows too), the margin rows and the elementwise
    # driver each take their output from the cache: none may leave a stale entry
    call = _large_calls()[name]
    expected = np.array(call())  # a copy; the output itself goes back to the cache
    empty_cache.clear()
    stale = new_output((ROWS, CLASSES), np.float32)
    stale[...] = np.nan
    address = stale.ctypes.data
    del stale
    result = call()
    assert result.__array_interface__["data"][0] == address
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize(("value", "message"), [("lots", "must be a number of MiB"), ("-1", "must be >= 0"),
                                                ("nan", "must be >= 0")])
def test_a_bad_cache_size_in_the_environment_is_named(value, message):
    result = subprocess.run([sys.executable, "-c", "import softmaxlab.kernels._outputs"], capture_output=True,
                            text=True, env={**os.environ, "SOFTMAXLAB_OUTPUT_CACHE_MB": value}, timeout=120)
    assert result.returncode != 0
    assert "SOFTMAXLAB_OUTPUT_CACHE_MB" in result.stderr and message in result.stderr


def test_a_zero_cache_size_turns_the_cache_off():
    code = ("import numpy as np; from softmaxlab.kernels._outputs import new_output, _CACHE\n"
            "a = new_output((64, 2**20), np.float32); assert a.flags.owndata; del a; assert _CACHE.buffers == []")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "SOFTMAXLAB_OUTPUT_CACHE_MB": "0"}, timeout=120)
    assert result.returncode == 0, result.stderr
