"""The registry: it covers every public kernel, and its entries are well formed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from softmaxlab import kernels
from softmaxlab.harness import exact, providers, regimes
from softmaxlab.harness.registry import ENTRY_MODULES, MODES, PROVIDERS, REGISTRY, VARIANTS, Implementation, register
from softmaxlab.harness.registry import linear

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


# ---- the fused margin loss's entries ------------------------------------------------------------------

LINEAR_MARGIN = ("linear_margin_cross_entropy", "linear_margin_cross_entropy_forward_backward")
LINEAR_MARGIN_ENTRIES = {name: {**REGISTRY, **VARIANTS}[name]
                         for name in LINEAR_MARGIN + tuple(f"{kernel}[precision=float64]" for kernel in LINEAR_MARGIN)}


def test_the_fused_margin_entries_time_the_issue_shape_and_count_the_linear_products():
    fused = REGISTRY["linear_margin_cross_entropy_forward_backward"]
    assert (512, 93431, "float32") in fused.bench_shapes
    rows, classes = 512, 93431
    features = linear.features_for((rows, classes))
    assert features == 512
    product = 2 * rows * features * classes
    # x W^T, and A W and A^T x with the gradient: the linear cross-entropy's products
    assert fused.cost((rows, classes)).matmul_flops == 3 * product
    assert REGISTRY["linear_margin_cross_entropy"].cost((rows, classes)).matmul_flops == product
    assert fused.cost((rows, classes)) == REGISTRY["linear_cross_entropy_forward_backward"].cost((rows, classes))


def _cosines(inputs):
    x, weights = (inputs[name].astype(np.float64) for name in ("x", "linear_weight"))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (weights / np.linalg.norm(weights, axis=1,
                                                                                        keepdims=True)).T


def test_the_fused_margin_regimes_set_the_target_cosine():
    entry = REGISTRY["linear_margin_cross_entropy"]
    s, m = linear.ARCFACE["s"], linear.ARCFACE["m2"]
    rows = np.arange(6)
    for regime in entry.regimes:
        inputs = entry.make_inputs(regime, (6, 40), "float64", 0)
        cosines = _cosines(inputs)
        chosen = cosines[rows, inputs["target"]]
        if regime == "dominant":
            assert chosen.min() > 0.99
        elif regime == "tiny_target":
            assert chosen.max() < -0.99 < np.cos(np.pi - m) + 0.2  # on InsightFace's fallback c - m sin m
            logits = s * cosines
            logits[rows, inputs["target"]] = s * (chosen - m * np.sin(m))
            log_probability = logits[rows, inputs["target"]] - np.logaddexp.reduce(logits, axis=1)
            assert log_probability.max() < -79
        else:  # c ~ N(0, 1 / D), D = 16
            assert 0.15 < cosines.std() < 0.4 and np.abs(cosines).max() < 0.99
    with pytest.raises(ValueError, match="regime must be one of"):
        entry.make_inputs("masked", (6, 40), "float64", 0)


def _fused_margin_bounds(inputs, products_dtype, output_dtype):
    """Bounds on |kernel - exact| of (loss, dx per row, dW per class).  The kernel's cosines differ from
    the exact ones by delta (measured here: products in ``products_dtype`` times float64 inverse norms),
    which moves every dL/dc_ij by at most 4 s delta of |dL/dc_ij|; the products, sums and projections add
    (D + 8) u of their terms; an entry of dx_i is at most 2 sum_j |dL/dc_ij| / |x_i| (|W_j| / |W_j| <= 1,
    the projection at most doubles it), of dW_j likewise over the rows."""
    x, weights = (inputs[name].astype(np.float64) for name in ("x", "linear_weight"))
    x_norms, w_norms = np.linalg.norm(x, axis=1), np.linalg.norm(weights, axis=1)
    products = inputs["x"].astype(products_dtype) @ inputs["linear_weight"].astype(products_dtype).T
    cosines = exact.exact_normalized_linear(x, weights).hi
    delta = np.abs(np.clip(products / x_norms[:, None] / w_norms, -1, 1) - cosines).max()
    loss, dcos = exact.exact_margin(cosines, inputs["target"], *linear.ARCFACE.values())
    relative = 4 * linear.ARCFACE["s"] * delta + (x.shape[1] + 8) * np.finfo(output_dtype).eps / 2
    magnitudes = np.abs(dcos.hi)
    return (relative * (1 + abs(float(loss.hi))), 2 * relative * magnitudes.sum(axis=1) / x_norms,
            2 * relative * magnitudes.sum(axis=0) / w_norms)


def _as_float64(output):
    return np.asarray(output.detach() if hasattr(output, "detach") else output, dtype=np.float64)


@pytest.mark.parametrize("kernel", LINEAR_MARGIN_ENTRIES)
@pytest.mark.parametrize("regime", ["normal_x3", "dominant", "tiny_target"])
def test_the_fused_margin_entries_run_and_the_kernel_agrees_with_the_references(kernel, regime):
    """Every provider runs and returns the entry's outputs in the input's shapes; softmaxlab's are within
    the cosines' bound of the (mpmath) reference; the gradients' term magnitudes bound them."""
    entry = LINEAR_MARGIN_ENTRIES[kernel]
    for dtype in ("float32", "float64"):
        inputs = entry.make_inputs(regime, (4, 23), dtype, 1)
        references = entry.exact(inputs, exact.MPMATH_ENGINE)
        for scale, reference in zip(entry.output_scales(inputs, exact.MPMATH_ENGINE), references):
            assert scale is None or np.all(scale >= np.abs(reference.hi) * (1 - 1e-12))  # a term magnitude
        shapes = {"loss": (), "dx": inputs["x"].shape, "dW": inputs["linear_weight"].shape}
        for implementation in entry.implementations:
            if providers.missing_requirement(implementation.requires):
                continue
            outputs = implementation.prepare(inputs)()
            outputs = tuple(map(_as_float64, outputs if isinstance(outputs, tuple) else (outputs,)))
            assert [output.shape for output in outputs] == [shapes[name] for name in entry.outputs]
            assert all(np.isfinite(output).all() for output in outputs), implementation.provider
        products = np.float64 if "precision=float64" in kernel else dtype
        bounds = _fused_margin_bounds(inputs, products, dtype)
        ours = entry.implementation("softmaxlab").prepare(inputs)()
        ours = ours if isinstance(ours, tuple) else (ours,)
        assert ours[0].dtype == np.dtype(dtype)
        for name, output, reference, bound in zip(entry.outputs, ours, references, bounds):
            error = np.abs(output - reference.hi)
            bound = np.reshape(bound, error.shape[:1] + (1,) * (error.ndim - 1))  # per row of dx, class of dW
            assert np.all(error <= bound), (f"{kernel} {regime} {dtype} {name}: error {error.max():.3g} beyond "
                                            f"the cosines' bound {bound.min():.3g}")
