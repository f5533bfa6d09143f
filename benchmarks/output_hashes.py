"""Hash every softmaxlab output of every registry entry: a refactoring's bit-identity check.

For each registry entry, each of its input regimes and both dtypes, at the accuracy
shapes of the smoke and quick profiles and at shapes that take the split-row and
multi-block paths, the script computes the softmaxlab implementation's outputs and prints
one line per case: the entry, the regime, the shape, the dtype, a SHA-256 of the inputs
and one of the outputs (their dtypes, shapes and bytes).  Run it on two trees and diff the
files: any changed bit of any output shows as a changed line.

    python benchmarks/output_hashes.py > /tmp/hashes_new.txt
    diff /tmp/hashes_old.txt /tmp/hashes_new.txt && echo bit-identical

Threads are not pinned: results are bit-identical for any thread count by design
(tests/robustness/test_determinism.py), so a run with another count must hash the same.
"""

from __future__ import annotations

import argparse
import hashlib
import sys

import numpy as np

# Shapes beyond the profiles' accuracy shapes: several blocks per row (float32 blocks hold
# 8192 elements, float64 4096), a row split between threads, a single huge row.
EXTRA_SHAPES = ((3, 9000), (1, 70001), (2, 20000))


def _digest(values) -> str:
    hasher = hashlib.sha256()
    for value in values:
        array = np.asarray(value)
        hasher.update(f"{array.dtype.str}{array.shape}".encode())
        hasher.update(np.ascontiguousarray(array).tobytes())
    return hasher.hexdigest()[:24]


def _outputs(result) -> tuple:
    return result if isinstance(result, tuple) else (result,)


def cases(registry, regimes_module, profiles):
    """(entry, regime, shape, dtype) for every case the script hashes."""
    from softmaxlab.harness.profiles import get_profile

    for entry in registry.values():
        for regime in entry.regimes:
            shapes = []
            for name in profiles:
                profile = get_profile(name)
                shape = profile.million_shape if regime == regimes_module.MILLION_CLASSES_REGIME else profile.accuracy_shape
                if shape not in shapes:
                    shapes.append(shape)
            if regime == "normal_x3":
                shapes += [shape for shape in EXTRA_SHAPES if shape not in shapes]
            for shape in shapes:
                for dtype in ("float32", "float64"):
                    yield entry, regime, shape, dtype


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["smoke", "quick"])
    parser.add_argument("--kernels", nargs="+", default=None, help="only these registry entries")
    args = parser.parse_args(argv)

    from softmaxlab.harness import regimes
    from softmaxlab.harness.registry import REGISTRY

    registry = {name: entry for name, entry in REGISTRY.items() if args.kernels is None or name in args.kernels}
    count = 0
    for entry, regime, shape, dtype in cases(registry, regimes, args.profiles):
        inputs = entry.make_inputs(regime, shape, dtype, 0)
        run = entry.implementation("softmaxlab").prepare(inputs)
        try:
            digest = _digest(_outputs(run()))
        except (TypeError, ValueError) as error:  # a documented refusal is an output too
            digest = f"{type(error).__name__}: {error}"
        print(f"{entry.kernel}\t{regime}\t{shape[0]}x{shape[1]}\t{dtype}\t"
              f"{_digest([inputs[name] for name in sorted(inputs)])}\t{digest}", flush=True)
        count += 1
    print(f"{count} cases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
