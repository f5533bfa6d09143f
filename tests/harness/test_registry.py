"""The registry: it covers every public kernel, and its entries are well formed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from softmaxlab import kernels
from softmaxlab.harness import providers, regimes
from softmaxlab.harness.registry import ENTRY_MODULES, MODES, PROVIDERS, REGISTRY, VARIANTS, Implementation, register

from .conftest import fake_entry


def test_every_public_kernel_has_a_registry_entry():
    missing = [name for name in kernels.__all__ if name not in REGISTRY]
    assert not missing, (
        f"public kernels without a registry entry: {missing}; add one Operation "
        "per kernel to the ENTRIES of its family in softmaxlab/harness/registry/ (see registry/__init__.py)"
    )


def test_every_registry_entry_is_a_public_kernel():
    """(An entry for a kernel that is not exported would benchmark something users cannot call.)"""
    assert set(REGISTRY) <= set(kernels.__all__)


@pytest.mark.parametrize("kernel", sorted(REGISTRY))
def test_entry_is_well_formed(kernel):
    entry = REGISTRY[kernel]
    assert entry.mode in MODES
    assert entry.providers[0] == "softmaxlab"
    assert set(entry.providers) <= set(PROVIDERS)
    assert set(entry.regimes) <= set(regimes.ALL_REGIMES)
    for rows, classes, dtype in entry.bench_shapes + entry.smoke_shapes:
        cost = entry.cost((rows, classes))
        assert cost.read_elements > 0 and cost.written_elements > 0 and cost.exp_count >= 0
        assert cost.bytes_moved(dtype) == (cost.read_elements + cost.written_elements) * np.dtype(dtype).itemsize


@pytest.mark.parametrize("kernel", sorted(REGISTRY))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_inputs_are_deterministic_and_of_the_dtype(kernel, dtype):
    entry = REGISTRY[kernel]
    for regime in entry.regimes:
        first = entry.make_inputs(regime, (3, 11), dtype, 7)
        again = entry.make_inputs(regime, (3, 11), dtype, 7)
        other_seed = entry.make_inputs(regime, (3, 11), dtype, 8)
        for name, values in first.items():
            if np.issubdtype(values.dtype, np.floating):
                assert values.dtype == np.dtype(dtype), f"{kernel} {regime}: {name} is {values.dtype}"
            np.testing.assert_array_equal(values, again[name])
        assert any(not np.array_equal(values, other_seed[name], equal_nan=True) for name, values in first.items())


def test_forward_and_backward_entries_see_the_same_logits():
    forward = REGISTRY["softmax"].make_inputs("masked", (9, 13), "float32", 3)
    backward = REGISTRY["softmax_backward"].make_inputs("masked", (9, 13), "float32", 3)
    np.testing.assert_array_equal(forward["x"], backward["x"])


def test_regimes_have_their_documented_shape():
    shape, dtype = (16, 40), np.float32
    draw = lambda regime: regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, 0))  # noqa: E731
    assert np.abs(draw("large_1e4")).max() > 5e3
    masked = draw("masked")
    assert np.isneginf(masked[0]).all() and np.isneginf(masked[8]).all()
    assert 0.1 < np.isneginf(masked[1:8]).mean() < 0.4
    ties = draw("near_ties")
    assert (np.ptp(ties, axis=1) <= 6 * np.spacing(np.abs(ties).max(axis=1))).all()
    dominant = draw("dominant")
    top_two = np.sort(dominant, axis=1)[:, -2:]
    assert (top_two[:, 1] - top_two[:, 0] >= 29.9).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(kernel="softmax"), "already registered"),
        (dict(kernel="new_kernel", mode="sideways"), "mode must be one of"),
        (dict(kernel="new_kernel", outputs=()), "outputs must name"),
    ],
)
def test_register_rejects_bad_entries(change, message):
    with pytest.raises(ValueError, match=message):
        register(dataclasses.replace(REGISTRY["softmax"], **change))
    assert "new_kernel" not in REGISTRY


def test_register_requires_softmaxlab_and_known_providers():
    torch_only = dataclasses.replace(fake_entry("softmax", REGISTRY["softmax"].implementation("torch")),
                                     kernel="new_kernel")
    with pytest.raises(ValueError, match="must include 'softmaxlab'"):
        register(torch_only)
    unknown = dataclasses.replace(
        fake_entry("softmax", REGISTRY["softmax"].implementation("softmaxlab"),
                   Implementation("tensorflow", lambda inputs: None)),
        kernel="new_kernel",
    )
    with pytest.raises(ValueError, match="unknown providers"):
        register(unknown)
    assert "new_kernel" not in REGISTRY


def test_missing_framework_is_one_line_not_a_traceback(capsys):
    reason = providers.missing_requirement(("softmaxlab_no_such_framework",))
    assert reason.startswith("softmaxlab_no_such_framework not importable (ModuleNotFoundError")
    providers.report_skip("fake-provider", reason)
    providers.report_skip("fake-provider", reason)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipping provider 'fake-provider'" in err and "Traceback" not in err


def test_registry_order_is_the_entry_modules_order():
    assert list(REGISTRY) == [entry.kernel for module in ENTRY_MODULES for entry in module.ENTRIES]


ORDER_SCRIPT = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from softmaxlab.harness.registry import REGISTRY, VARIANTS
print(",".join(REGISTRY)); print(",".join(VARIANTS))
"""


def test_registry_order_does_not_depend_on_which_module_is_imported_first():
    """In a fresh interpreter, import the entry modules last-first (and the users before the registry)."""
    first = ["softmaxlab.harness.registry.margins", "softmaxlab.harness.registry.losses",
             "softmaxlab.harness.exact", "softmaxlab.harness.bench", "softmaxlab.harness.registry.normalizers"]
    output = subprocess.run([sys.executable, "-c", ORDER_SCRIPT, *first], capture_output=True, text=True, check=True)
    registry_line, variants_line = output.stdout.strip().splitlines()
    assert registry_line.split(",") == list(REGISTRY)
    assert variants_line.split(",") == list(VARIANTS)
