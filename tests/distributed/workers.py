"""The inputs of the distributed tests and the worker every spawned process runs.

Shared by the parent (which builds the expected values from the same inputs) and the
children (which import this module by name under the "spawn" start method).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROWS, K = 5, 3  # the (rows, k) arrays of the message tests
BY_OWNER_ROWS = (ROWS, 2)  # rows of the sums by owner: uneven blocks at P = 2, 3, 4; empty blocks at P = 3, 4
N, D, C = 6, 8, 14  # the losses' batch, feature size and global class count
TARGET = np.array([0, 13, 2, 5, 9, 4])  # targets in every shard of every split below
EPS = 0.1  # label smoothing
SCALE, ANGULAR, ADDITIVE = 16.0, 0.3, 0.1  # the margin loss's s, m2, m3
FLOOR_ROW, FLOOR_GAP = 0, 120.0  # row 0's target logit lies 120 below its max: p_y ~ e^-120 < 1e-30


def rank_rows(rank: int) -> np.ndarray:
    """Rank ``rank``'s (ROWS, K) array: signs and magnitudes from 1e-8 to 1e16, so the order of a sum shows."""
    rng = np.random.default_rng(100 + rank)
    return rng.standard_normal((ROWS, K)) * 10.0 ** rng.integers(-8, 17, size=(ROWS, K))


def shard_bounds(world_size: int) -> list[int]:
    """Class boundaries of ``world_size`` uneven shards of C classes: 2, 3, 4, ... classes, the rest to the last."""
    sizes = [rank + 2 for rank in range(world_size - 1)]
    return [0, *np.cumsum([*sizes, C - sum(sizes)]).tolist()]


def loss_inputs():
    """x (N, D), the class weights (C, D), and full logits (C classes, row FLOOR_ROW's target far below its max)."""
    rng = np.random.default_rng(7)
    x, weight = rng.standard_normal((N, D)), rng.standard_normal((C, D))
    logits = 3.0 * rng.standard_normal((N, C))
    logits[FLOOR_ROW, TARGET[FLOOR_ROW]] = logits[FLOOR_ROW].max() - FLOOR_GAP
    return x, weight, logits


def load_script(folder: str, name: str):
    """The module of the repository's ``folder/name.py``, loaded from its file (``benchmarks/``
    and ``examples/`` are no packages)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(out_dir: str, name: str, rank: int, value) -> None:
    np.save(Path(out_dir) / f"{name}.rank{rank}.npy", np.asarray(value))


def load(out_dir, name: str, world_size: int) -> list[np.ndarray]:
    """Every rank's saved ``name``, in rank order."""
    return [np.load(Path(out_dir) / f"{name}.rank{rank}.npy") for rank in range(world_size)]


def run_checks(rank: int, world_size: int, out_dir: str) -> None:
    """One process's share of every distributed test; results saved as ``<name>.rank<r>.npy``."""
    import torch

    from softmaxlab.distributed import (MessageLog, all_gather_rows, all_reduce_rows_by_owner,
                                        all_reduce_sum_fixed_order, gather_row_blocks)
    from softmaxlab.distributed import ports

    def sent(log):
        return [message.sent_bytes for message in log.messages]

    log = MessageLog()
    save(out_dir, "gathered", rank, all_gather_rows(rank_rows(rank), log=log))
    save(out_dir, "fixed_sum", rank, all_reduce_sum_fixed_order(rank_rows(rank), log=log))
    save(out_dir, "comm_sent", rank, sent(log))

    for rows in BY_OWNER_ROWS:
        log = MessageLog()
        for dtype in (np.float64, np.float32):
            summed = all_reduce_rows_by_owner(rank_rows(rank)[:rows], dtype, log=log)
            save(out_dir, f"by_owner{rows}_{np.dtype(dtype).name}", rank, summed)
        save(out_dir, f"by_owner{rows}_sent", rank, sent(log))
    try:  # one row more than this rank's block: refused before any message
        gather_row_blocks(np.ones((ROWS * (rank + 1) // world_size - ROWS * rank // world_size + 1, K)), ROWS)
        save(out_dir, "block_error", rank, "no error")
    except ValueError as error:
        save(out_dir, "block_error", rank, str(error))

    bounds = shard_bounds(world_size)
    start, stop = bounds[rank], bounds[rank + 1]
    x, weight, logits = (torch.from_numpy(a) for a in loss_inputs())
    target = torch.from_numpy(TARGET)
    for name, global_smoothing in (("megatron_local", False), ("megatron_global", True)):
        log = MessageLog()
        loss, grad_x, grad_w = ports.megatron_forward_backward(
            x, weight[start:stop], target, class_start=start, num_classes=C, label_smoothing=EPS,
            global_smoothing=global_smoothing, log=log)
        for part, value in (("loss", loss), ("grad_x", grad_x), ("grad_w", grad_w), ("sent", sent(log))):
            save(out_dir, f"{name}_{part}", rank, value)

    log = MessageLog()
    shard = logits[:, start:stop].clone().requires_grad_(True)
    loss = ports.partial_fc_cross_entropy(shard, target, class_start=start, reduction="none", log=log)
    loss.sum().backward()
    for part, value in (("loss", loss.detach()), ("grad", shard.grad), ("sent", sent(log))):
        save(out_dir, f"partial_fc_ce_{part}", rank, value)

    loss, grad_x, grad_w = ports.partial_fc_forward_backward(
        x, weight[start:stop], target, class_start=start, scale=SCALE, angular_margin=ANGULAR,
        additive_margin=ADDITIVE)
    for part, value in (("loss", loss), ("grad_x", grad_x), ("grad_w", grad_w)):
        save(out_dir, f"partial_fc_{part}", rank, value)


def fail_on_rank_one(rank: int, world_size: int) -> None:
    """Raise on rank 1, return on the others: the helper must raise the error in the parent."""
    if rank == 1:
        raise ValueError(f"worker failed on purpose on rank {rank} of {world_size}")


def sleep_forever(rank: int, world_size: int) -> None:
    """Never return: the helper must stop the group at its timeout."""
    import time

    while True:
        time.sleep(1)
