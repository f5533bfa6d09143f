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
* ``all_reduce_rows_by_owner(array, dtype, group)``: the same rank-order sum, rounded once to
  ``dtype``, sent as a reduce-scatter and an all_gather instead of one all_gather of the
  whole arrays: one ``all_to_all_single`` sends each rank the other ranks' rows of its
  block, which it adds in rank order ((a_0 + a_1) + a_2) + ... in float64 (the additions
  ``all_reduce_sum_fixed_order`` makes, element by element: the same bits) and rounds to
  ``dtype``; a second ``all_to_all_single`` sends each rank's rounded block to every other
  rank (an all_gather of blocks of unequal sizes, which gloo's ``all_gather`` refuses).
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
           "all_reduce_rows_by_owner", "all_reduce_sum_fixed_order", "logged_all_reduce", "row_blocks",
           "sent_bytes"]

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
        return float(payload_bytes - kept_bytes) if kept_bytes is not None else payload_bytes * (world_size - 1) / world_size
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


def all_reduce_rows_by_owner(array: np.ndarray, dtype, group=None, *, log: MessageLog | None = None,
                             kind: str = "rows_by_owner") -> np.ndarray:
    """The sum over ranks of the float64 (rows, k) ``array``, added in rank order, rounded once to ``dtype``.

    Every element is ((a_0 + a_1) + a_2) + ... + a_{P-1} in float64, the bits of
    ``all_reduce_sum_fixed_order``, then ``astype(dtype)``: the same bits on every rank.
    The owner of each row block (``row_blocks``) receives the other ranks' rows of its block
    in one ``all_to_all_single`` (recorded as ``kind + ".reduce"``), adds them in rank order
    and rounds them; a second ``all_to_all_single`` gives every rank every rounded block
    (recorded as the all_gather ``kind + ".gather"``).  A process owning R_r of the rows
    sends 8 k (rows - R_r) + s k R_r (P - 1) bytes (s: ``dtype``'s itemsize), the mean over
    ranks (8 + s) k rows (P - 1)/P.  Every rank must pass the same shape and ``dtype``.
    """
    import torch
    import torch.distributed as dist

    array = _checked_rows(array)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    rows, width = array.shape
    bounds = row_blocks(rows, world)
    sizes = np.diff(bounds).tolist()
    own = sizes[rank]

    # reduce-scatter: the rows of this rank's block from every rank, in rank order
    received = torch.empty((world * own, width), dtype=torch.float64)
    dist.all_to_all_single(received, torch.from_numpy(array), output_split_sizes=[own] * world,
                           input_split_sizes=sizes, group=group)
    if log is not None:
        log.record(f"{kind}.reduce", ALL_TO_ALL, array.shape, array.dtype, array.itemsize, world,
                   kept_bytes=own * width * array.itemsize)
    parts = received.numpy().reshape(world, own, width)
    total = parts[0].copy()
    for part in parts[1:]:
        total += part
    block = total.astype(dtype)
    del received, parts, total  # the float64 rows are no longer needed: a lower peak for the gather

    # all_gather of the blocks: this block to every rank (its own copy is not sent)
    gathered = np.empty((rows, width), dtype=dtype)
    dist.all_to_all_single(torch.from_numpy(gathered), torch.from_numpy(np.tile(block, (world, 1))),
                           output_split_sizes=sizes, input_split_sizes=[own] * world, group=group)
    if log is not None:
        log.record(f"{kind}.gather", ALL_GATHER, block.shape, block.dtype, block.itemsize, world)
    return gathered


def logged_all_reduce(tensor, op, group=None, *, log: MessageLog | None = None, kind: str = "all_reduce"):
    """``torch.distributed.all_reduce(tensor, op, group)`` in place, recorded in ``log`` as ``kind``."""
    import torch.distributed as dist

    dist.all_reduce(tensor, op=op, group=group)
    if log is not None:
        log.record(kind, ALL_REDUCE, tensor.shape, tensor.dtype, tensor.element_size(), dist.get_world_size(group))
    return tensor
