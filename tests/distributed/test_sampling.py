"""Negative-class sampling (``distributed/_sampling.py``): the pure functions and the argument checks.

The sampled loss in spawned groups is tested in ``test_sharded.py`` (its groups run
``sharded_workers.sampled_call``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from softmaxlab.distributed import sampled_sharded_linear_cross_entropy_forward_backward as sampled
from softmaxlab.distributed._sampling import kept_counts, remap_targets, sample_shard

pytest.importorskip("torch")

TARGET = np.array([3, 3, 17, -100, 40, 41, 99, 0])
BOUNDS = [0, 20, 45, 100]  # shards of 20, 25 and 55 classes


def test_a_shard_keeps_its_positives_first_then_sorted_negatives():
    kept = sample_shard(TARGET, 20, 25, 0.3, seed=5, step=0, rank=1)
    assert kept[:2].tolist() == [20, 21]  # classes 40 and 41, local
    assert kept.size == math.ceil(0.3 * 25) == 8
    negatives = kept[2:]
    assert np.all(np.diff(negatives) > 0) and not set(negatives) & {20, 21}
    assert np.all((negatives >= 0) & (negatives < 25))


def test_a_shard_keeps_every_positive_when_they_outnumber_the_rate():
    kept = sample_shard(TARGET, 0, 20, 0.05, seed=5, step=0, rank=0)  # ceil(1) < 3 positives: 0, 3, 17
    assert kept.tolist() == [0, 3, 17]


def test_the_sample_is_the_seeds_and_steps_and_ranks():
    def draw(seed=5, step=0, rank=2):
        return sample_shard(TARGET, 45, 55, 0.2, seed=seed, step=step, rank=rank)
    assert draw().tolist() == draw().tolist()
    assert draw().tolist() != draw(step=1).tolist()
    assert draw().tolist() != draw(seed=6).tolist()
    assert draw().tolist() != draw(rank=1).tolist()


def test_rate_one_keeps_every_class_in_class_order():
    assert sample_shard(TARGET, 20, 25, 1.0, seed=5, step=0, rank=1).tolist() == list(range(25))
    assert kept_counts(TARGET, BOUNDS, 1.0) == [20, 25, 55]
    assert remap_targets(TARGET, BOUNDS, [20, 25, 55], 1.0).tolist() == TARGET.tolist()


def test_the_remapped_targets_point_at_the_same_classes():
    counts = kept_counts(TARGET, BOUNDS, 0.3)
    assert counts == [max(3, math.ceil(0.3 * 20)), 8, math.ceil(0.3 * 55)]
    order = np.concatenate([start + sample_shard(TARGET, start, stop - start, 0.3, seed=1, step=2, rank=rank)
                            for rank, (start, stop) in enumerate(zip(BOUNDS[:-1], BOUNDS[1:]))])
    remapped = remap_targets(TARGET, BOUNDS, counts, 0.3)
    kept = TARGET != -100
    assert np.all(order[remapped[kept]] == TARGET[kept])
    assert remapped[~kept].tolist() == [-100]


@pytest.mark.parametrize(("changes", "error", "message"), [
    ({"sample_rate": 0.0}, ValueError, r"sample_rate must be a number in \(0, 1\], got 0.0"),
    ({"sample_rate": 1.5}, ValueError, r"sample_rate must be a number in \(0, 1\], got 1.5"),
    ({"sample_rate": True}, ValueError, r"sample_rate must be a number in \(0, 1\], got True"),
    ({"seed": -1}, ValueError, "seed"),
    ({"step": 0.5}, (TypeError, ValueError), "step"),
    ({"target": np.array([0, 100])}, ValueError, "target"),
    ({"weight_shard": np.ones((20, 3), np.float32)}, (TypeError, ValueError), "weight_shard"),
])
def test_bad_arguments_are_named_before_any_message(changes, error, message):
    arguments = dict(x=np.ones((2, 4)), weight_shard=np.ones((20, 4)), target=np.array([0, 3]), class_start=0,
                     num_classes=100, sample_rate=0.5, seed=1, step=0)
    arguments.update(changes)
    with pytest.raises(error, match=message):
        sampled(**arguments)  # no process group exists here: the checks come first
