"""softmaxlab.distributed in real gloo groups of 1 to 4 spawned processes, and its parts without a group.

One group per world size runs ``workers.run_checks`` (every check's share, saved to files);
the tests below assert on what the ranks saved, against values the parent builds from the
same inputs: the rank-order gather and sum, the bytes of the message model, and single-process
float64 references of the ported losses.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from softmaxlab.distributed import MessageLog, all_gather_rows, all_reduce_rows_by_owner, row_blocks, sent_bytes
from softmaxlab.distributed._comm import gather_row_blocks, rows_to_owners

from . import workers
from .workers import ADDITIVE, ANGULAR, C, EPS, FLOOR_ROW, K, N, ROWS, SCALE, TARGET

torch = pytest.importorskip("torch")

WORLD_SIZES = (1, 2, 3, 4)
GROUP_TIMEOUT = 60.0  # seconds for one group: spawn, import torch, run, exit


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """World size -> the folder its group's ranks saved their results in."""
    from .spawn import spawn_group

    folders = {}
    for world_size in WORLD_SIZES:
        folders[world_size] = tmp_path_factory.mktemp(f"world{world_size}")
        spawn_group(workers.run_checks, world_size, (str(folders[world_size]),), timeout=GROUP_TIMEOUT)
    return folders


def _same_bits(arrays):
    return all(a.dtype == arrays[0].dtype and a.tobytes() == arrays[0].tobytes() for a in arrays)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_all_gather_rows_returns_every_ranks_rows_in_rank_order(groups, world_size):
    gathered = workers.load(groups[world_size], "gathered", world_size)
    expected = np.stack([workers.rank_rows(rank) for rank in range(world_size)])
    assert gathered[0].shape == (world_size, ROWS, K)
    assert gathered[0].tobytes() == expected.tobytes()
    assert _same_bits(gathered)


def _rank_order_sum(world_size, rows=ROWS):
    """The ranks' ``rank_rows`` (first ``rows`` rows) added in rank order, element by element, in Python floats."""
    parts = [workers.rank_rows(rank)[:rows] for rank in range(world_size)]
    expected = np.empty((rows, K))
    for index in np.ndindex(rows, K):
        total = parts[0][index]
        for part in parts[1:]:
            total = total + part[index]  # ((a_0 + a_1) + a_2) + ...
        expected[index] = total
    return expected


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_fixed_order_sum_is_the_rank_order_sum_on_every_rank(groups, world_size):
    sums = workers.load(groups[world_size], "fixed_sum", world_size)
    assert _same_bits(sums)
    assert sums[0].tobytes() == _rank_order_sum(world_size).tobytes()


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("rows", workers.BY_OWNER_ROWS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sum_by_owner_is_the_rank_order_sum_rounded_once_on_every_rank(groups, world_size, rows, dtype):
    sums = workers.load(groups[world_size], f"by_owner{rows}_{np.dtype(dtype).name}", world_size)
    assert _same_bits(sums)
    assert sums[0].dtype == dtype and sums[0].shape == (rows, K)
    assert sums[0].tobytes() == _rank_order_sum(world_size, rows).astype(dtype).tobytes()


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("rows", workers.BY_OWNER_ROWS)
def test_sum_by_owner_sends_the_other_ranks_rows_and_its_block(groups, world_size, rows):
    # per dtype: the all_to_all sends every row but the own block's (8 K bytes each), the
    # all_gather the rounded block to P - 1 ranks; the mean over ranks (8 + s) K rows (P - 1)/P
    bounds = row_blocks(rows, world_size)
    counted = workers.load(groups[world_size], f"by_owner{rows}_sent", world_size)
    for rank, sent in enumerate(counted):
        own = bounds[rank + 1] - bounds[rank]
        assert sent.tolist() == [8 * K * (rows - own), 8 * K * own * (world_size - 1),
                                 8 * K * (rows - own), 4 * K * own * (world_size - 1)], rank
    mean = np.mean([sent[2:].sum() for sent in counted])
    assert mean == pytest.approx((8 + 4) * K * rows * (world_size - 1) / world_size, rel=1e-15, abs=0)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_gather_row_blocks_names_a_block_of_the_wrong_size(groups, world_size):
    bounds = row_blocks(ROWS, world_size)
    for rank, message in enumerate(workers.load(groups[world_size], "block_error", world_size)):
        own = bounds[rank + 1] - bounds[rank]
        assert str(message) == f"block must hold rank {rank}'s {own} of the {ROWS} rows, got {own + 1} rows"


def test_row_blocks_split_the_rows_in_rank_order():
    assert row_blocks(5, 4) == [0, 1, 2, 3, 5]
    assert row_blocks(2, 4) == [0, 0, 1, 1, 2]  # rows < P: empty blocks
    assert row_blocks(1024, 1024) == list(range(1025))
    with pytest.raises(ValueError, match="rows must be a nonnegative integer, got -1"):
        row_blocks(-1, 2)
    with pytest.raises(ValueError, match="world_size must be a positive integer, got 0"):
        row_blocks(4, 0)


def test_the_rank_rows_make_the_order_of_a_sum_visible():
    # Without this, the tests above could not tell rank order from another order.
    parts = [workers.rank_rows(rank) for rank in range(4)]
    forward = ((parts[0] + parts[1]) + parts[2]) + parts[3]
    backward = ((parts[3] + parts[2]) + parts[1]) + parts[0]
    for rows in workers.BY_OWNER_ROWS:
        assert forward[:rows].tobytes() != backward[:rows].tobytes()
    # nor, in float32, one rounding of the float64 sum from a float32 sum of rounded parts
    for world_size in (2, 3, 4):
        rounded = parts[0].astype(np.float32)
        for part in parts[1:world_size]:
            rounded = rounded + part.astype(np.float32)
        for rows in workers.BY_OWNER_ROWS:
            assert _rank_order_sum(world_size, rows).astype(np.float32).tobytes() != rounded[:rows].tobytes()


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_message_log_counts_the_model_bytes(groups, world_size):
    gather = ROWS * K * 8 * (world_size - 1)  # all_gather: B (P - 1)
    reduce = 2 * N * 8 * (world_size - 1) / world_size  # ring all_reduce of N float64: 2 B (P - 1)/P
    expected = {"comm_sent": [gather, gather], "megatron_local_sent": [reduce] * 3,
                "megatron_global_sent": [reduce] * 4, "partial_fc_ce_sent": [reduce] * 3}
    for name, counts in expected.items():
        for rank_counts in workers.load(groups[world_size], name, world_size):
            assert rank_counts.tolist() == pytest.approx(counts, rel=1e-15, abs=0), name


def _smoothed_reference(x, weight):
    """Mean label-smoothed cross-entropy of x W^T (1 - eps on y, eps/(C - 1) elsewhere), dx, dW; float64."""
    logits = x @ weight.T
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    q = np.full((N, C), EPS / (C - 1))
    q[np.arange(N), TARGET] = 1.0 - EPS
    grad_logits = (np.exp(log_p) - q) / N
    return -(q * log_p).sum() / N, grad_logits @ weight, grad_logits.T @ x


def _assembled(folder, name, world_size):
    """The loss of each rank, the sum of the ranks' grad_x, the shards' grad_w stacked in class order."""
    losses = [float(loss) for loss in workers.load(folder, f"{name}_loss", world_size)]
    return (losses, sum(workers.load(folder, f"{name}_grad_x", world_size)),
            np.concatenate(workers.load(folder, f"{name}_grad_w", world_size)))


def _assert_agrees(folder, name, world_size, reference):
    """Every rank's loss, the summed grad_x and the stacked grad_w of ``name`` equal ``reference``'s."""
    loss, grad_x, grad_w = reference(*workers.loss_inputs()[:2])
    losses, port_grad_x, port_grad_w = _assembled(folder, name, world_size)
    assert losses == pytest.approx([loss] * world_size, rel=1e-13)
    np.testing.assert_allclose(port_grad_x, grad_x, rtol=1e-11, atol=1e-15)
    np.testing.assert_allclose(port_grad_w, grad_w, rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_megatron_with_global_smoothing_matches_the_float64_reference(groups, world_size):
    _assert_agrees(groups[world_size], "megatron_global", world_size, _smoothed_reference)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_megatron_with_local_smoothing_differs_between_ranks_of_uneven_shards(groups, world_size):
    x, weight, _ = workers.loss_inputs()
    loss, _, _ = _smoothed_reference(x, weight)
    losses, _, _ = _assembled(groups[world_size], "megatron_local", world_size)
    assert len(set(losses)) == world_size  # uneven shards: every rank its own loss
    assert max(abs(rank_loss - loss) for rank_loss in losses) > 1e-3


def test_megatron_with_local_smoothing_is_right_on_one_process(groups):
    x, weight, _ = workers.loss_inputs()
    losses, _, _ = _assembled(groups[1], "megatron_local", 1)
    assert losses[0] == pytest.approx(_smoothed_reference(x, weight)[0], rel=1e-13)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_partial_fc_caps_the_loss_at_minus_log_1e_30(groups, world_size):
    _, _, logits = workers.loss_inputs()
    shifted = logits - logits.max(axis=1, keepdims=True)
    exact = np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(N), TARGET]  # float64 logsumexp - z_y
    losses = workers.load(groups[world_size], "partial_fc_ce_loss", world_size)
    assert _same_bits(losses)
    assert exact[FLOOR_ROW] > 100.0  # the exact loss is far above the cap ...
    assert losses[0][FLOOR_ROW] == pytest.approx(-math.log(1e-30), rel=1e-15)  # ... the port stops at 69.08
    others = np.arange(N) != FLOOR_ROW
    np.testing.assert_allclose(losses[0][others], exact[others], rtol=1e-13)
    grad = np.concatenate(workers.load(groups[world_size], "partial_fc_ce_grad", world_size), axis=1)
    expected_grad = np.exp(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))
    expected_grad[np.arange(N), TARGET] -= 1.0  # the paper's backward p - onehot, the clamp ignored
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-15)


def _margin_reference(x, weight):
    """Partial FC's margin loss of the whole class set in one process: torch autograd, float64."""
    x, weight = (torch.tensor(a, requires_grad=True) for a in (x, weight))
    cos = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(weight, dim=-1).T
    rows, target = torch.arange(N), torch.from_numpy(TARGET)
    margined = (cos[rows, target].clamp(-1 + 1e-7, 1 - 1e-7).arccos() + ANGULAR).cos() - ADDITIVE
    logits = SCALE * torch.where(torch.nn.functional.one_hot(target, C).bool(), margined[:, None], cos)
    loss = torch.nn.functional.cross_entropy(logits, target)
    loss.backward()
    return loss.item(), x.grad.numpy(), weight.grad.numpy()


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_partial_fc_margin_loss_matches_the_single_process_loss(groups, world_size):
    _assert_agrees(groups[world_size], "partial_fc", world_size, _margin_reference)


def test_sent_bytes_model_and_its_errors():
    assert sent_bytes("all_gather", 96, 4) == 96 * 3
    assert sent_bytes("all_reduce", 96, 4) == 2 * 96 * 3 / 4
    assert sent_bytes("all_gather", 96, 1) == sent_bytes("all_reduce", 96, 1) == 0
    with pytest.raises(ValueError, match="collective must be one of .* got 'broadcast'"):
        sent_bytes("broadcast", 96, 4)
    with pytest.raises(ValueError, match="world_size must be a positive integer, got 0"):
        sent_bytes("all_gather", 96, 0)
    with pytest.raises(ValueError, match="payload_bytes must be a nonnegative integer, got -1"):
        sent_bytes("all_gather", -1, 2)
    assert sent_bytes("all_to_all", 96, 4, kept_bytes=40) == 56  # every part but the own one
    assert sent_bytes("all_to_all", 96, 4) == 72  # an even split: 3/4 of it
    assert sent_bytes("all_to_all", 96, 1, kept_bytes=96) == 0
    with pytest.raises(ValueError, match=r"kept_bytes must be None or, for 'all_to_all' only, an integer in "
                                         r"\[0, payload_bytes = 96\], got 97 for 'all_to_all'"):
        sent_bytes("all_to_all", 96, 4, kept_bytes=97)
    with pytest.raises(ValueError, match="kept_bytes must be None or, for 'all_to_all' only.* got 8 for 'all_gather'"):
        sent_bytes("all_gather", 96, 4, kept_bytes=8)


def test_message_log_totals_and_table():
    log = MessageLog()
    log.record("stats", "all_gather", (1024, 4), "float64", 8, 8)
    log.record("max", "all_reduce", (1024,), "float32", 4, 8)
    log.record("stats", "all_gather", (1024, 4), "float64", 8, 8)
    assert [m.payload_bytes for m in log.messages] == [32768, 4096, 32768]
    assert log.by_kind() == {"stats": 2 * 32768 * 7, "max": 2 * 4096 * 7 / 8}
    assert log.total_sent_bytes() == 2 * 32768 * 7 + 2 * 4096 * 7 / 8
    assert log.markdown().splitlines()[-1] == f"| total | | | | | | {2 * 32768 * 7 + 7168} |"


@pytest.mark.parametrize(("array", "error", "message"), [
    ([[1.0]], TypeError, "array must be a NumPy array of float64, got list"),
    (np.ones((2, 3), np.float32), TypeError, "array must have dtype float64, got float32"),
    (np.ones(3), ValueError, r"array must have shape \(rows, k\), got shape \(3,\)"),
])
def test_all_gather_rows_names_a_bad_array_before_any_message(array, error, message):
    with pytest.raises(error, match=message):
        all_gather_rows(array)  # no process group exists here: the check comes first
    with pytest.raises(error, match=message):
        all_reduce_rows_by_owner(array, np.float64)


def test_sum_by_owner_names_a_bad_dtype_before_any_message():
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        all_reduce_rows_by_owner(np.ones((2, 3)), np.float16)
    with pytest.raises(TypeError, match=r"block must be a 2-D NumPy array of float32 or float64, got float16 "
                                        r"of shape \(2, 3\)"):
        gather_row_blocks(np.ones((2, 3), np.float16), 2)
    with pytest.raises(TypeError, match=r"array must have dtype float64, got float32"):
        rows_to_owners(np.ones((2, 3), np.float32))


def test_the_package_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
            "import softmaxlab.distributed, softmaxlab.distributed.ports\n"
            "print(softmaxlab.distributed.sent_bytes('all_gather', 8, 3))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "16.0"


def _messages_benchmark():
    """benchmarks/distributed_messages.py, loaded from its file."""
    return workers.load_script("benchmarks", "distributed_messages")


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_the_benchmarks_formulas_are_the_counted_messages(groups, world_size):
    formulas = _messages_benchmark().bytes_per_step
    folder = groups[world_size]
    ours = formulas(rows=ROWS, classes=C, procs=world_size, k=K)["softmaxlab"]
    ports = formulas(rows=N, classes=C, procs=world_size, stat_bytes=8)  # the tests' ports run in float64
    assert workers.load(folder, "comm_sent", world_size)[0][0] == ours
    assert sum(workers.load(folder, "megatron_local_sent", world_size)[0]) == pytest.approx(ports["megatron"], rel=1e-15)
    assert sum(workers.load(folder, "partial_fc_ce_sent", world_size)[0]) == pytest.approx(ports["partial_fc_loss"],
                                                                                          rel=1e-15)


def test_the_benchmarks_table_has_every_p_and_c_and_no_c_in_the_losses_exchanges():
    module = _messages_benchmark()
    lines = module.markdown_table().splitlines()
    assert len(lines) == 4 + 4 * 3
    for p in (2, 8, 64, 1024):
        sent = [module.bytes_per_step(1024, c, p) for c in (10**6, 10**7, 10**8)]
        for key in ("softmaxlab", "softmaxlab_by_owner", "megatron", "partial_fc_loss", "partial_fc_embeddings"):
            assert sent[0][key] == sent[1][key] == sent[2][key]
        assert sent[0]["logits_all_gather"] < sent[1]["logits_all_gather"] < sent[2]["logits_all_gather"]
    assert module.bytes_per_step(1024, 10**6, 1024)["softmaxlab"] == 8 * 1024 * 4 * 1023  # 32 MiB: grows like P
    with pytest.raises(ValueError, match="procs must be a positive int, got 0"):
        module.bytes_per_step(1024, 10**6, 0)


def _port_call(name, **changes):
    """A call of ``ports.<name>`` on valid float64 inputs of 3 rows and a shard of classes 2:5 of 6, with ``changes``."""
    from softmaxlab.distributed import ports

    arguments = {"target": torch.tensor([0, 3, 5]), "class_start": 2}
    if name.endswith("forward_backward") or name == "partial_fc_margin_logits":
        arguments.update({"x" if name.startswith("megatron") else "embeddings": torch.ones(3, 4, dtype=torch.float64),
                          "weight_shard": torch.ones(3, 4, dtype=torch.float64)})
    else:
        arguments["logits_shard"] = torch.zeros(3, 3, dtype=torch.float64)
    if name.startswith("megatron"):
        arguments["num_classes"] = 6
    arguments.update(changes)
    return lambda: getattr(ports, name)(**arguments)


@pytest.mark.parametrize(("name", "changes", "error", "message"), [
    ("megatron_cross_entropy", {"target": torch.tensor([0, 3, 6])}, ValueError, r"target must be in \[0, 6\), got values in \[0, 6\]"),
    ("megatron_cross_entropy", {"target": torch.tensor([0, 3], dtype=torch.int64)}, ValueError,
     r"target must be an int64 tensor of shape \(3,\), got torch.int64 of shape \(2,\)"),
    ("megatron_cross_entropy", {"label_smoothing": 1.0}, ValueError, r"label_smoothing must be a number in \[0, 1\), got 1.0"),
    ("megatron_cross_entropy", {"class_start": 4}, ValueError, "class_start \\+ n_local must be at most num_classes = 6, got 4 \\+ 3"),
    ("megatron_cross_entropy", {"logits_shard": torch.zeros(3, 3, dtype=torch.float16)}, TypeError,
     "logits_shard must be a float32 or float64 torch.Tensor, got torch.float16"),
    ("partial_fc_cross_entropy", {"reduction": "sum"}, ValueError, r"reduction must be one of \('mean', 'none'\), got 'sum'"),
    ("partial_fc_cross_entropy", {"class_start": -1}, ValueError, "class_start must be a nonnegative int, got -1"),
    ("megatron_forward_backward", {"weight_shard": torch.ones(3, 5, dtype=torch.float64)}, ValueError,
     "weight_shard must be torch.float64 with 4 columns like x, got torch.float64 with 5"),
    ("partial_fc_margin_logits", {"embeddings": torch.ones(3, 4)}, ValueError,
     "weight_shard must be torch.float32 with 4 columns like embeddings, got torch.float64 with 4"),
    ("partial_fc_forward_backward", {"embeddings": [[1.0]]}, TypeError,
     r"embeddings must be a 2-D float32 or float64 torch.Tensor, got list of shape \(\)"),
])
def test_the_ports_name_a_bad_argument_before_any_message(name, changes, error, message):
    with pytest.raises(error, match=message):
        _port_call(name, **changes)()  # no process group exists here: the checks come first
