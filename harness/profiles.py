"""Run profiles: how big and how long the accuracy and speed runs are.

* ``full``  the publication profile (the committed ``results/`` snapshot and the README).
* ``quick`` for iteration: ``softmaxlab report --quick`` in under 3 minutes on 2 cores.
  float32 only (every kernel compiles once per dtype, several seconds each), the losses
  through their fused ``*_forward_backward`` entries only, smaller
  accuracy inputs, and the benchmark matrix cut to its shapes of at most 6e6 logits
  (4096x1000 and 1x4194304 for the normalizers, 512x10575 for the margin losses) with
  one repeat and fewer rounds.
* ``smoke`` what the test suite runs: tiny inputs, the benchmarks' tiny shapes.

The benchmark shapes themselves come from each registry entry (``bench_shapes``;
``smoke_shapes`` for the smoke profile).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    # accuracy: shape of the ordinary regimes, and of the 10^6-class regime
    accuracy_shape: tuple[int, int]
    million_shape: tuple[int, int]
    # classes of the single row on which the long double reference is re-checked against
    # mpmath (a prefix of the first row of the 10^6-class input); None = the whole row
    reference_check_classes: int | None
    # dtypes of the accuracy sweep and of the benchmark shapes kept
    dtypes: tuple[str, ...]
    # skip every entry ``f`` for which ``f_forward_backward`` is registered too (the losses
    # then run through their fused kernels only; normalizers keep forward and backward)
    fused_only: bool
    # speed: which shapes (smoke shapes, or the matrix cut to at most bench_max_elements
    # logits), how many interleaved repeats, seconds of timing per test
    bench_smoke_shapes: bool
    bench_max_elements: int | None
    bench_repeats: int
    bench_seconds_per_test: float
    bench_min_rounds: int
    bench_max_rounds: int
    # a test of a slow call (a 256x93431 margin loss with its matrix products) stops at
    # this many seconds of rounds, but never below 3 rounds
    bench_max_seconds_per_test: float

    def bench_rounds(self, warm_call_s: float) -> int:
        """Rounds for a call that takes ``warm_call_s`` (see the fields above)."""
        import math

        warm = max(warm_call_s, 1e-7)
        rounds = min(max(math.ceil(self.bench_seconds_per_test / warm), self.bench_min_rounds), self.bench_max_rounds)
        if rounds * warm > self.bench_max_seconds_per_test:
            rounds = max(3, int(self.bench_max_seconds_per_test / warm))
        return rounds


PROFILES = {
    "full": Profile(
        name="full",
        accuracy_shape=(32, 1000),
        million_shape=(2, 1_000_000),
        reference_check_classes=200_000,
        dtypes=("float32", "float64"),
        fused_only=False,
        bench_smoke_shapes=False,
        bench_max_elements=None,
        bench_repeats=3,
        bench_seconds_per_test=0.5,
        bench_min_rounds=7,
        bench_max_rounds=400,
        bench_max_seconds_per_test=2.5,
    ),
    "quick": Profile(
        name="quick",
        accuracy_shape=(16, 257),
        million_shape=(1, 1_000_000),
        reference_check_classes=2_000,
        dtypes=("float32",),
        fused_only=True,
        bench_smoke_shapes=False,
        bench_max_elements=6_000_000,
        bench_repeats=1,
        bench_seconds_per_test=0.06,
        bench_min_rounds=3,
        bench_max_rounds=100,
        bench_max_seconds_per_test=0.5,
    ),
    "smoke": Profile(
        name="smoke",
        accuracy_shape=(8, 33),
        million_shape=(1, 1_000_000),
        reference_check_classes=1_000,
        dtypes=("float32", "float64"),
        fused_only=False,
        bench_smoke_shapes=True,
        bench_max_elements=None,
        bench_repeats=1,
        bench_seconds_per_test=0.01,
        bench_min_rounds=2,
        bench_max_rounds=5,
        bench_max_seconds_per_test=0.1,
    ),
}


def profile_entries(profile: Profile, registry: dict | None = None, kernels=None) -> dict:
    """The entries ``profile`` runs: all of ``registry`` (default: the registry), or with ``fused_only``
    the fused ones, cut to ``kernels`` (names of entries or of variants; ValueError names unknown ones)."""
    from .registry import select

    chosen = select(kernels, registry)
    every = {**select(None, registry), **chosen}
    if profile.fused_only:
        every = {name: entry for name, entry in every.items() if f"{name}_forward_backward" not in every}
    return {name: entry for name, entry in every.items() if name in chosen}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ValueError names the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}") from None


def add_profile_arguments(parser, threads: bool = False) -> None:
    """``--quick`` and ``--profile`` for a subcommand (``--quick`` is ``--profile quick``), and with
    ``threads`` the ``--threads`` of the subcommands that time (bench, report)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_const", const="quick", dest="profile",
                       help="small profile for iteration (report --quick: < 3 min on 2 cores)")
    group.add_argument("--profile", choices=sorted(PROFILES),
                       help="run profile (default: full, the publication one)")
    parser.set_defaults(profile="full")
    if threads:
        parser.add_argument("--threads", type=int, help="threads for every framework (default: all CPUs "
                            "this process may use)")
