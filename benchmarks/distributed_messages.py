"""Bytes each process sends per training step, class-sharded softmax losses, as formulas of N, C, P, k, D.

    python benchmarks/distributed_messages.py                 # the table: N = 1024, D = 512, k = 4
    python benchmarks/distributed_messages.py --k 3 --procs 2 16 --classes 1e6

P processes each hold C/P of the classes; N rows (the whole batch, on every process), D
features; k floats per row of statistics in softmaxlab's planned exchange.

The collective-algorithm model (``softmaxlab.distributed._comm.sent_bytes``, the model its
``MessageLog`` counts with), for B bytes per process:

* all_gather: each process sends (P - 1)/P of the gathered buffer of P B bytes, B (P - 1)
  (gloo's ring: P - 1 steps, one rank's B bytes each);
* all_reduce: 2 (P - 1)/P of the buffer (the ring: a reduce-scatter, then an all_gather of
  the reduced chunks);
* reduce-scatter (a reduce of each rank's rows to that rank, as Partial FC returns the
  embeddings' gradients): (P - 1)/P of the buffer.

The exchanges, per process and step:

* softmaxlab: an all_gather of the N x k float64 per-row statistics, merged in rank order
  (``all_reduce_sum_fixed_order``'s pattern): 8 N k (P - 1).
* softmaxlab's ``sharded_linear_cross_entropy_forward_backward`` (every step's whole
  exchange, ``softmaxlab.distributed._sharded.exchange_bytes``): the shard bounds'
  all_gather (3 float64), then each row's statistics (1 float64 in round 1, 4 in round 2)
  and grad_input's float64 partials (D) sent to the rank that owns the row, which merges them
  in rank order, and the owners' merged rows (2 + 6 float64, D of x's dtype) gathered: in
  the mean over ranks 24 (P - 1) + (104 + (8 + s) D) N (P - 1)/P, bounded in P.
  ``sharded_linear_margin_cross_entropy_forward_backward`` likewise
  (``_sharded_margin.margin_exchange_bytes``): 24 (P - 1) + (80 + (8 + s) D) N (P - 1)/P.
* Megatron-LM (Shoeybi et al. 2019): three all_reduces of N float32 (max, target logit, sum of
  exponentials): 3 x 2 (P - 1)/P 4 N.
* Partial FC (An et al. 2021): all_gather of the embeddings (N x D float32 gathered) and the
  labels (N int64), all_reduces of the max, the sum of exponentials and the target's
  probability (N float32 each), and the embeddings' gradients reduced to their owners
  (N x D float32): (P - 1)/P (4 N D + 8 N) + 3 x 2 (P - 1)/P 4 N + (P - 1)/P 4 N D.
* x's gradient, for softmaxlab and Megatron-LM (every process holds the whole batch, and its
  shard gives a part of dx = G W): an all_reduce of N x D float32, 2 (P - 1)/P 4 N D; shown
  apart, because it does not depend on the loss and dwarfs the statistics.
* For scale, gathering the logits instead: (P - 1)/P 4 N C.
* The statistics merged by their owners instead of all_gathered (the sharded losses'
  pattern): each process sends the statistics of rows block r to process r (an all-to-all,
  (P - 1)/P of the N k floats), which merges them in rank order, then the merged rows are
  gathered ((P - 1)/P again): 2 (P - 1)/P 8 N k, the same fixed order and bits.
None of the losses' own exchanges depends on C: the classes enter only the compute.  The
counts are the payload only (no headers, no rendezvous), the mean over ranks.
"""

from __future__ import annotations

import argparse

FLOAT32, FLOAT64, INT64 = 4, 8, 8


def _all_gather(payload, procs):
    """Bytes one process sends in an all_gather of ``payload`` bytes per process: (P - 1)/P of the gathered buffer."""
    return payload * (procs - 1)


def _all_reduce(buffer, procs):
    """Bytes one process sends in a ring all_reduce of ``buffer`` bytes."""
    return 2 * buffer * (procs - 1) / procs


def _reduce_scatter(buffer, procs):
    """Bytes one process sends in a reduce-scatter of ``buffer`` bytes (each process keeps 1/P of it)."""
    return buffer * (procs - 1) / procs


def bytes_per_step(rows: int, classes: int, procs: int, k: int = 4, dim: int = 512,
                   stat_bytes: int = FLOAT32) -> dict[str, float]:
    """Bytes one process sends per step, per exchange (the module docstring's formulas).

    ``stat_bytes`` is the itemsize of Megatron-LM's and Partial FC's per-row statistics
    (float32 in both; 8 for the float64 ports the tests run).  Keys: ``softmaxlab`` (the
    all_gather of statistics), ``softmaxlab_by_owner`` (the statistics merged by their owners),
    ``softmaxlab_sharded`` and ``softmaxlab_sharded_margin`` (the sharded losses' whole
    exchange, float32 inputs), ``megatron``, ``partial_fc_loss`` (its three all_reduces),
    ``partial_fc_embeddings`` (its embeddings and labels out, gradients back),
    ``dx_all_reduce``, ``logits_all_gather``.
    """
    for name, value in (("rows", rows), ("classes", classes), ("procs", procs), ("k", k), ("dim", dim),
                        ("stat_bytes", stat_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    from softmaxlab.distributed._sharded import exchange_bytes
    from softmaxlab.distributed._sharded_margin import margin_exchange_bytes

    stats = FLOAT64 * rows * k
    embeddings = FLOAT32 * rows * dim
    return {
        "softmaxlab": float(_all_gather(stats, procs)),
        "softmaxlab_by_owner": 2 * _reduce_scatter(stats, procs),
        "softmaxlab_sharded": exchange_bytes(rows, dim, procs, FLOAT32),
        "softmaxlab_sharded_margin": margin_exchange_bytes(rows, dim, procs, FLOAT32),
        "megatron": 3 * _all_reduce(stat_bytes * rows, procs),
        "partial_fc_loss": 3 * _all_reduce(stat_bytes * rows, procs),
        "partial_fc_embeddings": (_all_gather((embeddings + INT64 * rows) / procs, procs)
                                  + _reduce_scatter(embeddings, procs)),
        "dx_all_reduce": _all_reduce(embeddings, procs),
        "logits_all_gather": _all_gather(FLOAT32 * rows * classes / procs, procs),
    }


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024


COLUMNS = {  # bytes_per_step's keys, as the table's columns, in order
    "softmaxlab": "softmaxlab: stats all_gather",
    "softmaxlab_by_owner": "softmaxlab: stats merged by owner",
    "softmaxlab_sharded": "softmaxlab sharded LCE: bounds, 2 rounds, dx, by owner",
    "softmaxlab_sharded_margin": "softmaxlab sharded ArcFace: bounds, 2 rounds, dx, by owner",
    "megatron": "Megatron-LM: 3 all_reduces",
    "partial_fc_loss": "Partial FC: 3 all_reduces",
    "partial_fc_embeddings": "Partial FC: embeddings, labels, grads",
    "dx_all_reduce": "dx all_reduce (softmaxlab, Megatron-LM)",
    "logits_all_gather": "logits all_gather (for scale)",
}


def markdown_table(rows: int = 1024, dim: int = 512, k: int = 4, procs=(2, 8, 64, 1024),
                   classes=(10**6, 10**7, 10**8)) -> str:
    """The bytes per process and step for every (P, C), as a Markdown table."""
    lines = [f"N = {rows}, D = {dim}, k = {k}; bytes each process sends per step",
             "",
             "| P | C | " + " | ".join(COLUMNS.values()) + " |",
             "|---:|---:|" + "---:|" * len(COLUMNS)]
    for p in procs:
        for c in classes:
            sent = bytes_per_step(rows, c, p, k, dim)
            lines.append(f"| {p} | {c:.0e} | " + " | ".join(_human(sent[key]) for key in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024, help="N, rows per step (default 1024)")
    parser.add_argument("--dim", type=int, default=512, help="D, features per row (default 512)")
    parser.add_argument("--k", type=int, default=4, help="floats per row in softmaxlab's exchange (default 4)")
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 8, 64, 1024], help="P values")
    parser.add_argument("--classes", type=float, nargs="+", default=[1e6, 1e7, 1e8], help="C values")
    args = parser.parse_args(argv)
    try:
        print(markdown_table(args.rows, args.dim, args.k, args.procs, [int(c) for c in args.classes]))
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
