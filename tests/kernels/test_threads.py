"""The row blocks of ``kernels/_driver/threads.py``: which rows each call gets, and where it runs."""

from __future__ import annotations

import threading

import numba
import pytest

from softmaxlab.kernels._driver.threads import SERIAL_ELEMENTS, row_blocks, run_row_blocks


def test_row_blocks_cover_the_rows_in_order_the_first_ones_longer():
    assert row_blocks(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert row_blocks(2, 4) == [(0, 1), (1, 2)]  # never more blocks than rows
    assert row_blocks(0, 2) == [(0, 0)]


def _recorder():
    calls = []

    def kernel(first, last, part, tag):
        calls.append((first, last, part, tag, threading.current_thread() is threading.main_thread()))

    return calls, kernel


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_blocks_follow_the_thread_count_and_the_first_runs_on_the_caller(threads):
    threads(2)
    calls, kernel = _recorder()
    run_row_blocks(kernel, 5, "x")
    assert sorted(calls) == [(0, 3, 0, "x", True), (3, 5, 1, "x", False)]
    threads(1)
    calls.clear()
    run_row_blocks(kernel, 5, "x")
    assert calls == [(0, 5, 0, "x", True)]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_a_small_call_is_one_block_on_the_caller(threads):
    threads(2)
    calls, kernel = _recorder()
    run_row_blocks(kernel, 5, "x", elements=SERIAL_ELEMENTS - 1)
    assert calls == [(0, 5, 0, "x", True)]
    calls.clear()
    run_row_blocks(kernel, 5, "x", elements=SERIAL_ELEMENTS)
    assert len(calls) == 2


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two Numba threads")
def test_an_error_in_a_pool_block_reaches_the_caller(threads):
    threads(2)

    def kernel(first, last, part):
        if part == 1:
            raise ValueError(f"block {part} failed")

    with pytest.raises(ValueError, match="block 1 failed"):
        run_row_blocks(kernel, 4)
