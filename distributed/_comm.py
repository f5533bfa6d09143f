"""The messages of the class-sharded losses, and the count of the bytes each process sends.

Every exchange goes through ``torch.distributed`` on CPU tensors (the gloo backend); torch is
imported inside the functions, so importing this module needs NumPy only.

* ``all_gather_rows(array, group)``: a float64 array of shape (rows, k) from every rank,
  returned as the (world, rows, k) array in rank order.
* ``all_reduce_sum_fixed_order(array, group)``: the elementwise sum over ranks, formed by
  gathering every rank's array and adding them in rank order, ((a_0 + a_1) + a_2) + ...
  It is not ``torch.distributed.all_reduce``: neither torch.distributed nor gloo specifies
  the order in which an all_reduce adds the ranks' values.  gloo picks among algorithms
  (ring, bcube, halving-doubling) and in its ring each chunk of the buffer starts its sum at
  a different rank, so the association of an element's sum depends on the element's
  position, on the buffer's length and on the world size, and the API does not promise that
  every rank computes the same bits.  Floating-point addition is not associative; a sum in
  one stated order is the only one whose bits a test (or another process) can predict.
  Gathered arrays are copied bit for bit, and every rank then runs the same additions in the
  same order, so every rank holds the same bits.
* ``row_blocks(rows, world)``: the rows each rank owns in the exchange below, contiguous
  blocks in rank order, rank r owning [rows r // P, rows (r + 1) // P) (sizes differ by at
  most one; a block is empty where rows < P).
* ``rows_to_owners(array, group)``: one ``all_to_all_single`` that sends each rank the other
  ranks' rows of its block, (P, R_r, k) in rank order; ``gather_row_blocks(block, rows,
  group)``: every rank's block of rows to every rank (an all_gather of blocks of unequal
  sizes, which gloo's ``all_gather`` refuses, sent as a second ``all_to_all_single``).  A row
  merged by its owner from the P ranks' values and then gathered costs a process about
  (P - 1)/P of the row's bytes twice, where an all_gather of the rows costs P - 1 times them.
* ``all_reduce_rows_by_owner(array, dtype, group)``: the rank-order sum, rounded once to
  ``dtype``, by these two: each owner adds its block's P parts in rank order
  ((a_0 + a_1) + a_2) + ... in float64 (the additions ``all_reduce_sum_fixed_order`` makes,
  element by element: the same bits) and rounds them to ``dtype``.
  ``torch.distributed.reduce_scatter`` is not used: like its all_reduce, it does not specify
  the order of the additions.
* ``MessageLog``: a record of every call (its kind, the collective, the shape and dtype of
  this process's tensor) and of the bytes this process sends, counted from the tensor's
  actual size by ``sent_bytes``.

The message model (``sent_bytes``), for a payload of B bytes per process and P processes:

* all_gather: B (P - 1).  gloo's all_gather is a ring: in each of P - 1 steps a process
  passes one rank's B bytes to its neighbour; a direct exchange (each process sends its B
  bytes to the P - 1 others) sends the same.  Equivalently, (P - 1)/P of the gathered
  P B bytes.
* all_to_all: B - K, where K is the part of this process's B bytes addressed to itself:
  every other part goes to its rank once.  For rows split by ``row_blocks`` the mean over
  ranks is exactly B (P - 1)/P.  ``all_reduce_rows_by_owner``'s all_gather of a rank's
  block (sent as an all_to_all of the block repeated P times, the self-addressed copy not
  sent) is counted as the all_gather of that block: B_r (P - 1).  So a (rows, k) float64
  array reduced by owner and rounded to a dtype of s bytes costs a process of block rows R_r
  8 k (rows - R_r) + s k R_r (P - 1) bytes, in the mean over ranks (8 + s) k rows (P - 1)/P:
  bounded in P, where ``all_reduce_sum_fixed_order`` sends 8 k rows (P - 1).
* all_reduce: 2 B (P - 1)/P, the ring all_reduce (a reduce-scatter, then an all_gather,
  each step sending one of P chunks of B/P bytes), the algorithm gloo uses by default and
  the bandwidth lower bound of an all_reduce (Patarasuk and Yuan 2009).  The count is the
  mean over ranks: with a buffer that does not split into P equal chunks one rank sends a
  few bytes more than another.

The counts are the payload only: no headers, no acknowledgements, no rendezvous traffic.
P = 1 sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ALL_GATHER", "ALL_REDUCE", "ALL_TO_ALL", "Message", "MessageLog", "all_gather_rows",
           "all_reduce_rows_by_owner", "all_reduce_sum_fixed_order", "gather_row_blocks", "logged_all_reduce",
           "row_blocks", "rows_to_owners", "sent_bytes"]

ALL_GATHER = "all_gather"
ALL_REDUCE = "all_reduce"
ALL_TO_ALL = "all_to_all"
_COLLECTIVES = (ALL_GATHER, ALL_REDUCE, ALL_TO_ALL)


def _is_count(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def sent_bytes(collective: str, payload_bytes: int, world_size: int, kept_bytes: int | None = None) -> float:
    """Bytes one process sends in ``collective`` of a ``payload_bytes`` tensor among ``world_size``.

    all_gather: payload (P - 1); all_reduce: 2 payload (P - 1)/P; all_to_all: payload minus
    ``kept_bytes``, the part addressed to this process itself (None: payload/P, an even
    split).  The module docstring gives the model.
    """
    if collective not in _COLLECTIVES:
        raise ValueError(f"collective must be one of {_COLLECTIVES}, got {collective!r}")
    if not _is_count(payload_bytes) or payload_bytes < 0:
        raise ValueError(f"payload_bytes must be a nonnegative integer, got {payload_bytes!r}")
    if not _is_count(world_size) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if kept_bytes is not None and (collective != ALL_TO_ALL or not _is_count(kept_bytes)
                                   or not 0 <= kept_bytes <= payload_bytes):
        raise ValueError(f"kept_bytes must be None or, for {ALL_TO_ALL!r} only, an integer in "
                         f"[0, payload_bytes = {payload_bytes}], got {kept_bytes!r} for {collective!r}")
    if world_size == 1:
        return 0.0
    if collective == ALL_GATHER:
        return float(payload_bytes * (world_size - 1))
    if collective == ALL_TO_ALL:
        if kept_bytes is None:
            return payload_bytes * (world_size - 1) / world_size
        return float(payload_bytes - kept_bytes)
    return 2.0 * payload_bytes * (world_size - 1) / world_size


@dataclass(frozen=True)
class Message:
    """One collective call as this process saw it."""

    kind: str  # what the caller exchanged: "all_gather_rows", "megatron.max", ...
    collective: str  # ALL_GATHER or ALL_REDUCE
    shape: tuple[int, ...]  # this process's tensor
    dtype: str
    payload_bytes: int  # this process's tensor: elements x itemsize
    world_size: int
    sent_bytes: float  # sent_bytes(collective, payload_bytes, world_size)


class MessageLog:
    """Every call's kind and the bytes this process sends, in call order.

    Pass one as ``log=`` to the functions of ``softmaxlab.distributed``; ``messages`` then
    lists their collectives and ``total_sent_bytes()`` the step's bytes.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def record(self, kind: str, collective: str, shape, dtype, itemsize: int, world_size: int,
               kept_bytes: int | None = None) -> Message:
        """Append the call of ``collective`` on a tensor of ``shape`` and ``itemsize``-byte elements
        (``kept_bytes``: an all_to_all's part addressed to this process, ``sent_bytes``)."""
        shape = tuple(int(n) for n in shape)
        payload = int(np.prod(shape, dtype=np.int64)) * int(itemsize)
        message = Message(kind, collective, shape, str(dtype), payload, int(world_size),
                          sent_bytes(collective, payload, int(world_size), kept_bytes))
        self.messages.append(message)
        return message

    def total_sent_bytes(self) -> float:
        return float(sum(message.sent_bytes for message in self.messages))

    def by_kind(self) -> dict[str, float]:
        """Bytes sent per kind, in the order the kinds first appeared."""
        totals: dict[str, float] = {}
        for message in self.messages:
            totals[message.kind] = totals.get(message.kind, 0.0) + message.sent_bytes
        return totals

    def markdown(self) -> str:
        """The calls as a Markdown table, one row a call, and their total."""
        lines = ["| kind | collective | shape | dtype | payload bytes | world | bytes sent |",
                 "|---|---|---|---|---:|---:|---:|"]
        for m in self.messages:
            lines.append(f"| {m.kind} | {m.collective} | {'x'.join(map(str, m.shape))} | {m.dtype} "
                         f"| {m.payload_bytes} | {m.world_size} | {m.sent_bytes:.0f} |")
        lines.append(f"| total | | | | | | {self.total_sent_bytes():.0f} |")
        return "\n".join(lines)


def _checked_rows(array) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"array must be a NumPy array of float64, got {type(array).__name__}")
    if array.dtype != np.float64:
        raise TypeError(f"array must have dtype float64, got {array.dtype}")
    if array.ndim != 2:
        raise ValueError(f"array must have shape (rows, k), got shape {array.shape}")
    return np.ascontiguousarray(array)


def all_gather_rows(array: np.ndarray, group=None, *, log: MessageLog | None = None,
                    kind: str = "all_gather_rows") -> np.ndarray:
    """Every rank's float64 (rows, k) ``array``, as a (world, rows, k) array in rank order.

    One ``torch.distributed.all_gather`` of CPU tensors (gloo) in ``group`` (None: the default
    group).  Every rank must pass the same shape; ranks that do not, fail or hang in the
    backend.  The result is a new array; ``array`` is not modified.  ``log`` records the call
    as ``kind``.
    """
    import torch
    import torch.distributed as dist

    array = _checked_rows(array)
    world = dist.get_world_size(group)
    tensor = torch.from_numpy(array)
    gathered = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(gathered, tensor, group=group)
    if log is not None:
        log.record(kind, ALL_GATHER, array.shape, array.dtype, array.itemsize, world)
    return np.stack([part.numpy() for part in gathered])


def all_reduce_sum_fixed_order(array: np.ndarray, group=None, *, log: MessageLog | None = None) -> np.ndarray:
    """The sum over ranks of the float64 (rows, k) ``array``, added in rank order.

    ((a_0 + a_1) + a_2) + ... + a_{P-1}, elementwise, from one ``all_gather_rows``: the same
    bits on every rank, and the bits a single process adding the P arrays in that order gets
    (the module docstring says why this is not ``torch.distributed.all_reduce``).  It sends
    B (P - 1) bytes for a B-byte array where a ring all_reduce sends 2 B (P - 1)/P.
    """
    gathered = all_gather_rows(array, group, log=log, kind="all_reduce_sum_fixed_order")
    total = gathered[0].copy()
    for part in gathered[1:]:
        total += part
    return total


def row_blocks(rows: int, world_size: int) -> list[int]:
    """The P + 1 bounds of the rows' blocks: rank r owns rows [rows r // P, rows (r + 1) // P)."""
    if not _is_count(rows) or rows < 0:
        raise ValueError(f"rows must be a nonnegative integer, got {rows!r}")
    if not _is_count(world_size) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    return [rows * rank // world_size for rank in range(world_size + 1)]


def rows_to_owners(array: np.ndarray, group=None, *, log: MessageLog | None = None,
                   kind: str = "rows_to_owners") -> tuple[int, int, np.ndarray]:
    """This rank's row block of every rank's float64 (rows, k) ``array``: (start, stop, (P, stop - start, k)).

    One ``torch.distributed.all_to_all_single``: rank r sends rows ``row_blocks`` [b_s, b_{s+1})
    of its array to rank s and receives rows [b_r, b_{r+1}) of every rank's, in rank order
    (the reduce-scatter's messages, without the sum).  Recorded as the all_to_all ``kind``:
    8 k (rows - R_r) bytes for R_r = b_{r+1} - b_r.  Every rank must pass the same shape.
    """
    import torch
    import torch.distributed as dist

    array = _checked_rows(array)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    rows, width = array.shape
    bounds = row_blocks(rows, world)
    own = bounds[rank + 1] - bounds[rank]
    received = torch.empty((world * own, width), dtype=torch.float64)
    dist.all_to_all_single(received, torch.from_numpy(array), output_split_sizes=[own] * world,
                           input_split_sizes=np.diff(bounds).tolist(), group=group)
    if log is not None:
        log.record(kind, ALL_TO_ALL, array.shape, array.dtype, array.itemsize, world,
                   kept_bytes=own * width * array.itemsize)
    return bounds[rank], bounds[rank + 1], received.numpy().reshape(world, own, width)


def gather_row_blocks(block: np.ndarray, rows: int, group=None, *, log: MessageLog | None = None,
                      kind: str = "gather_row_blocks") -> np.ndarray:
    """Every rank's (R_r, k) ``block`` of rows (``row_blocks(rows, P)``), stacked in rank order: (rows, k).

    float32 or float64, the same dtype and k on every rank.  gloo's all_gather needs blocks of
    one size, so the blocks go by one ``all_to_all_single`` of this block repeated P times
    (the copy addressed to this rank is not sent); recorded as the all_gather ``kind`` of the
    block, R_r k s (P - 1) bytes.
    """
    import torch
    import torch.distributed as dist

    if not isinstance(block, np.ndarray) or block.dtype not in (np.float32, np.float64) or block.ndim != 2:
        raise TypeError(f"block must be a 2-D NumPy array of float32 or float64, got "
                        f"{getattr(block, 'dtype', type(block).__name__)} of shape {getattr(block, 'shape', ())}")
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    bounds = row_blocks(rows, world)
    own = bounds[rank + 1] - bounds[rank]
    if block.shape[0] != own:
        raise ValueError(f"block must hold rank {rank}'s {own} of the {rows} rows, got {block.shape[0]} rows")
    gathered = np.empty((rows, block.shape[1]), dtype=block.dtype)
    dist.all_to_all_single(torch.from_numpy(gathered), torch.from_numpy(np.tile(block, (world, 1))),
                           output_split_sizes=np.diff(bounds).tolist(), input_split_sizes=[own] * world,
                           group=group)
    if log is not None:
        log.record(kind, ALL_GATHER, block.shape, block.dtype, block.itemsize, world)
    return gathered


def all_reduce_rows_by_owner(array: np.ndarray, dtype, group=None, *, log: MessageLog | None = None,
                             kind: str = "rows_by_owner", finish=None) -> np.ndarray:
    """The sum over ranks of the float64 (rows, k) ``array``, added in rank order, rounded once to ``dtype``.

    Every element is ((a_0 + a_1) + a_2) + ... + a_{P-1} in float64, the bits of
    ``all_reduce_sum_fixed_order``, then ``astype(dtype)``: the same bits on every rank.
    The owner of each row block (``row_blocks``) receives the other ranks' rows of its block
    (``rows_to_owners``, recorded as ``kind + ".reduce"``), adds them in rank order and rounds
    them; every rank then receives every rounded block (``gather_row_blocks``, recorded as
    ``kind + ".gather"``).  A process owning R_r of the rows sends 8 k (rows - R_r)
    + s k R_r (P - 1) bytes (s: ``dtype``'s itemsize), the mean over ranks (8 + s) k rows
    (P - 1)/P.  Every rank must pass the same shape and ``dtype``.  With ``finish``, the owner
    rounds ``finish(start, stop, total)`` instead of its float64 sum ``total`` of rows
    [start, stop) (the same shape).
    """
    array = _checked_rows(array)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    start, stop, parts = rows_to_owners(array, group, log=log, kind=f"{kind}.reduce")
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    block = (total if finish is None else finish(start, stop, total)).astype(dtype)
    del parts, total  # the float64 rows are no longer needed: a lower peak for the gather
    return gather_row_blocks(block, array.shape[0], group, log=log, kind=f"{kind}.gather")


def logged_all_reduce(tensor, op, group=None, *, log: MessageLog | None = None, kind: str = "all_reduce"):
    """``torch.distributed.all_reduce(tensor, op, group)`` in place, recorded in ``log`` as ``kind``."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=op, group=group)
    if log is not None:
        log.record(kind, ALL_REDUCE, tensor.shape, tensor.dtype, tensor.element_size(), dist.get_world_size(group))
    return tensor
