"""The spawn helper: a worker's error reaches the parent, a group past its timeout is stopped."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from . import workers

torch = pytest.importorskip("torch")


def test_a_workers_error_is_raised_in_the_parent_and_no_process_is_left():
    from .spawn import spawn_group

    before = set(multiprocessing.active_children())
    with pytest.raises(torch.multiprocessing.ProcessRaisedException, match="failed on purpose on rank 1 of 2"):
        spawn_group(workers.fail_on_rank_one, 2, timeout=60.0)
    assert set(multiprocessing.active_children()) <= before


def test_a_group_past_its_timeout_is_stopped():
    from .spawn import spawn_group

    before = set(multiprocessing.active_children())
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="sleep_forever on 2 processes did not finish in 6.0 s"):
        spawn_group(workers.sleep_forever, 2, timeout=6.0)
    assert time.monotonic() - start < 6.0 + 10.0  # the timeout, then at most a terminate's grace
    assert set(multiprocessing.active_children()) <= before
