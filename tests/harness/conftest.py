"""Shared pieces for the harness tests: small fake registries built from real entries."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from softmaxlab.harness.profiles import get_profile
from softmaxlab.harness.registry import REGISTRY, Cost, Implementation, Operation, logit_inputs


def fake_entry(kernel, *implementations) -> Operation:
    """The real ``kernel`` entry with its implementations replaced (not registered)."""
    return dataclasses.replace(REGISTRY[kernel], implementations=tuple(implementations))


def copy_implementation(provider: str, seconds_asleep: float = 0.0) -> Implementation:
    """``x.copy()``, optionally after sleeping: a cheap stand-in whose speed the test controls."""

    def prepare(inputs):
        x = inputs["x"]

        def run():
            if seconds_asleep:
                time.sleep(seconds_asleep)
            return x.copy()

        return run

    return Implementation(provider, prepare)


def copy_entry(*implementations) -> Operation:
    """A registry entry whose 'operation' is a copy of x (timing tests: no compile, no framework)."""
    return Operation(
        kernel="copy",
        op="copy",
        mode="forward",
        outputs=("y",),
        make_inputs=logit_inputs,
        exact=lambda inputs, engine: (),
        cost=lambda shape: Cost(shape[0] * shape[1], shape[0] * shape[1], 0),
        implementations=tuple(implementations),
        bench_shapes=((4, 64, "float32"),),
        smoke_shapes=((4, 64, "float32"),),
    )


# the smoke profile with timings long enough to compare and a tiny accuracy sweep
TINY_BENCH = dataclasses.replace(
    get_profile("smoke"), accuracy_shape=(4, 17), million_shape=(1, 1000), reference_check_classes=100,
    dtypes=("float32",), bench_smoke_shapes=False, bench_repeats=2, bench_seconds_per_test=0.03,
    bench_min_rounds=5, bench_max_rounds=20, bench_max_seconds_per_test=1.0,
)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)
