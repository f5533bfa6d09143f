"""Tests for kernels/_outputs.py: the cache of large freed outputs."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from softmaxlab.kernels import cross_entropy_forward_backward, softmax, softmax_backward
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
    first[...] = 1.0
    view = first[ROWS // 2 :, 5]
    del first
    gc.collect()
    assert len(empty_cache.buffers) == 0
    second = new_output((ROWS, CLASSES), np.float32)
    second[...] = 2.0
    assert np.all(view == 1.0)
    del view
    assert len(empty_cache.buffers) == 1
    assert new_output((ROWS, CLASSES), np.float32).ctypes.data != second.ctypes.data


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
