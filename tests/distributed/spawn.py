"""Run a function in a group of spawned processes joined by torch.distributed (gloo, CPU).

    spawn_group(worker, world_size, args=(), *, timeout=60.0)

runs ``worker(rank, world_size, *args)`` in ``world_size`` processes started with the
"spawn" method (a fresh interpreter each: no forked torch or Numba state), after
``init_process_group("gloo")`` with MASTER_ADDR=127.0.0.1 and a free port.  The worker must
be a module-level function (the children import it by name) and reports by writing files,
for instance ``np.save`` into a folder passed in ``args``.  A worker's exception is raised in
the parent with its traceback (``torch.multiprocessing.ProcessRaisedException``); a group
still running after ``timeout`` seconds raises ``TimeoutError``.  Every process is
terminated and joined before ``spawn_group`` returns or raises.
"""

from __future__ import annotations

import datetime
import os
import socket
import time


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_member(rank, worker, world_size, port, timeout, args):
    """One process of the group: join, run the worker, leave."""
    import torch
    import torch.distributed as dist

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn_group(worker, world_size: int, args: tuple = (), *, timeout: float = 60.0) -> None:
    """Run ``worker(rank, world_size, *args)`` on ``world_size`` spawned gloo processes; see the module docstring."""
    import torch.multiprocessing as mp

    context = mp.start_processes(_run_member, args=(worker, world_size, free_port(), timeout, args),
                                 nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{worker.__name__} on {world_size} processes did not finish in {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        for process in context.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
