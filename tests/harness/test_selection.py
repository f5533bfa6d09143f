"""The open harness: your own provider, shapes and inputs, errors that list the names, runs that never
write the committed snapshot, and softmaxlab.torch as a provider."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from softmaxlab import kernels
from softmaxlab.harness import accuracy, cli, runs, selection
from softmaxlab.harness.profiles import get_profile
from softmaxlab.harness.registry import REGISTRY

SMOKE = get_profile("smoke")

POOR_SOFTMAX = textwrap.dedent("""
    import numpy as np

    def softmax(x, axis=-1):
        # through float16: about 11 bits
        h = x.astype(np.float16)
        e = np.exp(h - h.max(axis=axis, keepdims=True))
        return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)

    def not_a_function():
        pass

    log_softmax = None
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``poor`` in a fresh current directory, importable as a user's would be."""
    (tmp_path / "poor.py").write_text(POOR_SOFTMAX)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("poor", None)
    yield tmp_path
    sys.modules.pop("poor", None)


def _rows(**options):
    chosen = selection.select(SMOKE, **options)
    rows, _ = accuracy.accuracy_rows(chosen.profile, registry=chosen.entries, providers=chosen.providers,
                                     regime_names=["normal_x3"], progress=False)
    return rows


def test_a_user_function_runs_beside_the_kernel_with_its_own_error(user_module):
    rows = _rows(kernels=["softmax"], providers=["softmaxlab"], extra_providers=["half=poor:softmax"],
                 dtypes=["float64"])
    worst = rows.set_index("provider")["max_ulp"]
    assert set(worst.index) == {"softmaxlab", "half"}
    assert worst["softmaxlab"] < 4
    assert worst["half"] > 1e9  # float16's 11 bits measured in float64 ULPs


def test_a_user_module_gives_the_function_of_each_kernels_name(user_module):
    provider = selection.parse_provider("mine=poor")
    assert provider.function_for("softmax") is not None
    assert provider.function_for("log_softmax") is None  # not callable
    assert provider.function_for("logsumexp") is None  # absent
    chosen = selection.select(SMOKE, kernels=["softmax", "logsumexp"], extra_providers=[provider])
    assert "mine" in chosen.entries["softmax"].providers
    assert "mine" not in chosen.entries["logsumexp"].providers


@pytest.mark.parametrize("options, message", [
    ({"kernels": ["nosuch"]}, "unknown kernel(s) ['nosuch']; kernels: softmax, log_softmax"),
    ({"kernels": ["softmax"], "providers": ["typo"]}, "unknown provider(s) ['typo']; providers: "),
    ({"kernels": ["softmax"], "providers": ["pml"]}, "provider 'pml' has no implementation of the selected"),
    ({"kernels": ["softmax"], "extra_providers": ["half"]}, "must be NAME=module:function"),
    ({"kernels": ["softmax"], "extra_providers": ["torch=poor:softmax"]}, "is a built-in provider's name"),
    ({"kernels": ["softmax"], "extra_providers": ["x=poor:nothing"]}, "has no function 'nothing'"),
    ({"kernels": ["softmax"], "extra_providers": ["x=not_a_module_here:f"]}, "cannot import 'not_a_module_here'"),
    ({"kernels": ["logsumexp"], "extra_providers": ["x=poor"]}, "has no function for any selected kernel"),
    ({"kernels": ["softmax"], "shapes": ["12by3"]}, "--shape must be ROWSxCLASSES"),
    ({"kernels": ["softmax_backward"], "providers": ["softmaxlab_torch"]}, "softmaxlab_torch"),
])
def test_a_selection_of_nothing_valid_is_an_error_that_names_the_valid_choices(user_module, options, message):
    with pytest.raises(selection.SelectionError) as error:
        selection.select(SMOKE, **options)
    assert message in str(error.value)


def test_the_quick_profile_points_a_loss_to_its_fused_entry():
    with pytest.raises(selection.SelectionError, match=r"fused entries, e.g. \['cosface_forward_backward'\]"):
        selection.select(get_profile("quick"), kernels=["cosface"])


def test_regimes_that_match_no_case_are_an_error():
    chosen = selection.select(SMOKE, kernels=["normalized_linear"])
    with pytest.raises(selection.SelectionError, match="matches no accuracy case"):
        accuracy.accuracy_rows(chosen.profile, registry=chosen.entries, regime_names=["masked"], progress=False)


def test_the_command_exits_2_with_the_message_and_no_traceback(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["accuracy", "--profile", "smoke", "--kernels", "softmax", "--providers", "typo"]) == 2
    err = capsys.readouterr().err
    assert "softmaxlab accuracy: unknown provider(s) ['typo']" in err and "Traceback" not in err
    assert not (tmp_path / runs.RESULTS_ROOT).exists()  # nothing written


def test_help_lists_kernels_and_providers():
    text = cli.build_parser()._subparsers._group_actions[0].choices["bench"].format_help()
    assert "cross_entropy_forward_backward[label_smoothing=0.1]" in text
    assert "softmaxlab_torch" in text and "pml" in text


def test_shape_and_dtypes_replace_the_benchmark_matrix_and_the_regimes_shape():
    chosen = selection.select(get_profile("quick"), kernels=["softmax"], shapes=["48x7"], dtypes=["float64"])
    assert chosen.entries["softmax"].bench_shapes == ((48, 7, "float64"),)
    assert chosen.profile.accuracy_shape == (48, 7) and chosen.profile.dtypes == ("float64",)
    assert chosen.profile.bench_max_elements is None and not chosen.profile.bench_smoke_shapes


def test_an_input_file_runs_as_the_first_input_under_its_own_regime(tmp_path):
    logits = np.random.default_rng(3).normal(size=(6, 11)) * 30
    path = tmp_path / "mine.npy"
    np.save(path, logits)
    chosen = selection.select(SMOKE, kernels=["softmax", "cross_entropy_forward_backward"], providers=["softmaxlab"],
                              input_file=str(path), dtypes=["float64"])
    entry = chosen.entries["cross_entropy_forward_backward"]
    assert entry.regimes == ("file:mine",)
    inputs = entry.make_inputs("file:mine", (6, 11), "float64", 0)
    np.testing.assert_array_equal(inputs["logits"], logits)
    assert inputs["target"].shape == (6,)
    rows, _ = accuracy.accuracy_rows(chosen.profile, registry=chosen.entries, providers=chosen.providers,
                                     progress=False)
    assert set(rows["regime"]) == {"file:mine"} and (rows["n_values"] > 0).all()
    with pytest.raises(selection.SelectionError, match="take no rows x classes matrix"):
        selection.select(SMOKE, kernels=["normalized_linear"], input_file=str(path))
    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(selection.SelectionError, match="2-D real array"):
        selection.select(SMOKE, kernels=["softmax"], input_file=str(tmp_path / "flat.npy"))


def test_a_run_writes_under_the_current_directory_never_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(profile="full", results_dir=None)
    folder = accuracy.results_folder(args)
    assert folder.parent == tmp_path / runs.RESULTS_ROOT
    assert accuracy.results_folder(args) == folder  # one folder per run
    assert accuracy.raw_folder(args) == folder / "raw"
    with pytest.raises(selection.SelectionError, match="from inside the checkout"):
        runs.publish_folders("full")
    with pytest.raises(selection.SelectionError, match="full profile"):
        runs.publish_folders("quick")
    assert accuracy.results_folder(argparse.Namespace(profile="quick", results_dir=str(tmp_path / "x"))) \
        == tmp_path / "x"


def test_a_narrowed_command_from_a_fresh_directory_leaves_the_checkout_unchanged(user_module):
    root = runs.environment.repository_root()
    before = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert cli.main(["accuracy", "--profile", "smoke", "--kernels", "softmax", "--providers", "softmaxlab",
                     "--provider", "half=poor:softmax", "--regimes", "normal_x3", "--dtypes", "float64"]) == 0
    after = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    assert after == before
    written = list((user_module / runs.RESULTS_ROOT).glob("*/accuracy.csv"))
    assert len(written) == 1 and "half" in written[0].read_text()


def test_entry_point_providers_are_found_by_name(user_module, monkeypatch):
    class Point:
        value = "poor:softmax"

    monkeypatch.setattr(selection, "entry_point_providers", lambda: {"packaged": Point})
    chosen = selection.select(SMOKE, kernels=["softmax"], providers=["softmaxlab", "packaged"])
    assert chosen.entries["softmax"].providers[-1] == "packaged"
    assert chosen.providers == ("softmaxlab", "packaged")


def test_the_softmaxlab_torch_provider_computes_what_the_kernels_compute():
    pytest.importorskip("torch")
    from softmaxlab.harness.providers import adapters

    rng = np.random.default_rng(0)
    logits, target = rng.normal(size=(5, 9)), rng.integers(0, 9, size=5)
    loss, grad = adapters.function_for("cross_entropy_forward_backward")(logits, target, label_smoothing=0.1,
                                                                        grad_output=2.0)
    expected_loss, expected_grad = kernels.cross_entropy_forward_backward(logits, target, label_smoothing=0.1,
                                                                          grad_output=2.0)
    assert loss == expected_loss
    np.testing.assert_array_equal(grad, expected_grad)
    np.testing.assert_array_equal(adapters.function_for("softmax")(logits), kernels.softmax(logits))
    assert adapters.function_for("softmax_backward") is None
    assert adapters.function_for("center_update") is None
    rows = _rows(kernels=["cross_entropy_forward_backward[label_smoothing=0.1]"],
                 providers=["softmaxlab", "softmaxlab_torch"], dtypes=["float64"])
    by = rows.pivot_table(index="output", columns="provider", values="max_ulp")
    assert (by["softmaxlab_torch"] == by["softmaxlab"]).all()  # the same kernels, the same bits


def test_check_accuracy_returns_rows_for_a_function():
    from softmaxlab.harness import check_accuracy

    def poor(x, axis=-1):
        return kernels.softmax(x.astype(np.float32), axis=axis).astype(x.dtype)

    rows = check_accuracy(poor, kernel="softmax", providers=("softmaxlab",), regimes=("normal_x3",),
                          dtypes=("float64",), profile="smoke")
    worst = rows.set_index("provider")["max_ulp"]
    assert worst["mine"] > 1e6 > 4 > worst["softmaxlab"]
    with pytest.raises(TypeError, match=r"functions\['mine'\] must be callable"):
        check_accuracy(3, kernel="softmax")
    assert REGISTRY["softmax"].providers == ("softmaxlab", "torch", "jax", "numpy", "numpy_naive")  # untouched


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="checks the refusal on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_an_error():
    with pytest.raises(selection.SelectionError, match="no CUDA device here"):
        selection.select(SMOKE, kernels=["softmax"], device="cuda")
    with pytest.raises(selection.SelectionError, match="must be cpu or cuda"):
        selection.select(SMOKE, kernels=["softmax"], device="tpu")


@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_device_cuda_runs_torch_on_the_gpu_beside_the_cpu_providers():
    rows = _rows(kernels=["softmax"], providers=["softmaxlab", "torch"], dtypes=["float32"], device="cuda")
    assert set(rows["provider"]) == {"softmaxlab", "torch@cuda"}
    assert (rows["n_values"] > 0).all() and (rows["max_ulp"] < 1e3).all()


def test_the_softmaxlab_jax_provider_is_a_jitted_training_step_with_the_kernels_bits():
    pytest.importorskip("jax")
    from softmaxlab.harness.providers import adapters

    rng = np.random.default_rng(1)
    logits, target = rng.normal(size=(4, 7)), rng.integers(0, 7, size=4)
    step = adapters.function_for("cross_entropy_forward_backward", "jax")
    for options in ({"label_smoothing": 0.1, "grad_output": 2.0},
                    {"reduction": "none", "grad_output": np.arange(4.0)}):
        computed = step(logits, target, **options)
        expected = kernels.cross_entropy_forward_backward(logits, target, **options)
        for ours, theirs in zip(computed, expected):
            assert ours.dtype == np.float64
            np.testing.assert_array_equal(ours, theirs)
    values = logits.astype(np.float32)
    np.testing.assert_array_equal(adapters.function_for("softmax", "jax")(values), kernels.softmax(values))
    assert "softmaxlab_jax" in selection.select(SMOKE, kernels=["softmax"], providers=["softmaxlab_jax"]).providers


def test_compare_speed_times_a_function_beside_the_kernel_in_one_run(tmp_path):
    from softmaxlab.harness import compare_speed

    def numpy_softmax(x, axis=-1):
        e = np.exp(x - x.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    rows = compare_speed({"mine": numpy_softmax}, kernel="softmax", providers=("softmaxlab",), shapes=["6x9"],
                         profile="smoke", results_dir=tmp_path)
    timed = rows[~rows["provider"].str.startswith("limit:")].set_index("provider")
    assert set(timed.index) == {"softmaxlab", "mine"}
    assert (timed["p50_s"] > 0).all() and set(timed["classes"]) == {9}
    with pytest.raises(TypeError, match=r"functions\['mine'\] must be callable"):
        compare_speed({"mine": None}, kernel="softmax")
