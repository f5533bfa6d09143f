"""The accuracy sweep: documented columns, and errors that show up where they should."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from softmaxlab import kernels
from softmaxlab.harness import accuracy, cli, environment, tables
from softmaxlab.harness.metrics import STAT_COLUMNS
from softmaxlab.harness.profiles import get_profile
from softmaxlab.harness.registry import REGISTRY, Implementation

from .conftest import fake_entry

SMOKE = get_profile("smoke")


def wrong_softmax(relative_error: float) -> Implementation:
    """softmaxlab's softmax times (1 + relative_error): a deliberately wrong implementation."""

    def prepare(inputs):
        x = inputs["x"]
        return lambda: (kernels.softmax(x) * (1 + relative_error)).astype(x.dtype)

    return Implementation("numpy", prepare)


def test_rows_have_the_documented_columns():
    rows, checks = accuracy.accuracy_rows(SMOKE, kernels=["logsumexp"], providers=["softmaxlab"],
                                          regime_names=["normal_x3", "masked"], dtypes=["float32"], progress=False)
    assert tuple(rows.columns) == accuracy.ROW_COLUMNS
    assert set(STAT_COLUMNS) <= set(rows.columns)
    assert len(rows) == 2  # 2 regimes x 1 dtype x 1 provider x 1 output
    assert checks.empty  # mpmath only: nothing to cross-check
    table = tables.accuracy_table(rows)
    assert list(table.columns) == ["kernel", "output", "regime", "dtype", "softmaxlab"]


def test_a_wrong_implementation_shows_a_large_error():
    entry = fake_entry("softmax", REGISTRY["softmax"].implementation("softmaxlab"), wrong_softmax(1e-3))
    rows, _ = accuracy.accuracy_rows(SMOKE, registry={"softmax": entry}, regime_names=["normal_x3"],
                                     progress=False)
    by_provider = rows.set_index(["provider", "dtype"])
    # 1e-3 relative is 2**-10: about 2**13 float32 ULPs and 2**42 float64 ULPs
    assert by_provider.loc[("numpy", "float32"), "max_ulp"] > 4000
    assert by_provider.loc[("numpy", "float64"), "max_ulp"] > 1e12
    assert by_provider.loc[("numpy", "float64"), "median_rel"] == pytest.approx(1e-3, rel=1e-6)
    assert (by_provider.loc["softmaxlab", "max_ulp"] < 8).all()


def test_naive_softmax_overflows_on_large_logits():
    rows, _ = accuracy.accuracy_rows(SMOKE, kernels=["softmax"], providers=["softmaxlab", "numpy_naive"],
                                     regime_names=["large_1e4"], progress=False)  # both dtypes
    by_provider = rows.set_index(["provider", "dtype"])
    assert (by_provider.loc["numpy_naive", "n_nonfinite"] > 0).all()
    assert (by_provider.loc["softmaxlab", "n_nonfinite"] == 0).all()


def test_missing_provider_is_skipped_with_one_line(capsys):
    missing = Implementation("pml", lambda inputs: None, requires=("softmaxlab_no_such_framework",))
    entry = fake_entry("logsumexp", REGISTRY["logsumexp"].implementation("softmaxlab"), missing)
    rows, _ = accuracy.accuracy_rows(SMOKE, registry={"logsumexp": entry}, regime_names=["normal_x3"],
                                     dtypes=["float32"], progress=False)
    assert set(rows["provider"]) == {"softmaxlab"}
    err = capsys.readouterr().err
    assert err.count("skipping provider 'pml'") == 1 and "Traceback" not in err


def test_reference_check_compares_the_two_engines():
    entry = REGISTRY["softmax_backward"]
    inputs = entry.make_inputs("normal_x3", (2, 500), "float64", 0)
    rows = accuracy.reference_check(entry, inputs, (2, 500), 200, "normal_x3", "float64")
    assert [row["checked_values"] for row in rows] == [200]
    assert rows[0]["max_deviation_ulp_float64"] < 1e-6


def test_accuracy_command_writes_csv_and_markdown(tmp_path):
    code = cli.main(["accuracy", "--profile", "smoke", "--kernels", "log_softmax", "--providers", "softmaxlab",
                     "numpy", "--regimes", "dominant", "--dtypes", "float32", "--results-dir", str(tmp_path)])
    assert code == 0
    rows = pd.read_csv(tmp_path / "accuracy.csv")
    assert set(accuracy.ROW_COLUMNS) | {"machine", "versions", "commit", "timestamp"} <= set(rows.columns)
    assert set(rows["provider"]) == {"softmaxlab", "numpy"}
    text = (tmp_path / "accuracy.md").read_text()
    assert "## Error in ULPs of the output dtype" in text
    assert "softmaxlab accuracy --profile smoke" in text


def test_results_folders_never_default_to_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Args:
        profile = "full"
        results_dir = None

    assert accuracy.results_folder(Args).parent == tmp_path / "softmaxlab-results"
    Args.publish = True  # report --publish, from inside the checkout
    monkeypatch.chdir(environment.repository_root())
    assert accuracy.results_folder(Args) == environment.repository_root() / "results"


def test_regime_rows_are_finite_where_expected():
    """softmaxlab returns no NaN/inf on any regime where the exact value is finite."""
    rows, _ = accuracy.accuracy_rows(SMOKE, kernels=["softmax", "log_softmax_backward"], providers=["softmaxlab"],
                                     regime_names=["masked", "dominant"], dtypes=["float32"], progress=False)
    assert (rows["n_nonfinite"] == 0).all() and (rows["n_special_mismatch"] == 0).all()
    assert np.isfinite(rows["max_ulp"]).all()


def test_a_failing_implementation_is_a_row_not_a_crash(capsys):
    def prepare(inputs):
        def run():
            raise RuntimeError("deliberately broken")

        return run

    entry = fake_entry("logsumexp", REGISTRY["logsumexp"].implementation("softmaxlab"), Implementation("torch", prepare))
    rows, _ = accuracy.accuracy_rows(SMOKE, registry={"logsumexp": entry}, regime_names=["normal_x3"],
                                     dtypes=["float32"], progress=False)
    failed = rows.set_index("provider").loc["torch"]
    assert failed["error"] == "RuntimeError: deliberately broken"
    assert "**failed: RuntimeError**" in tables.accuracy_table(rows).iloc[0]["torch"]
    assert "logsumexp / torch / normal_x3 / float32 failed" in capsys.readouterr().err


def test_reference_check_keeps_class_indices_valid():
    inputs = {"x": np.zeros((2, 10)), "target": np.array([9, 3])}
    cut = accuracy.subset_inputs(inputs, (2, 10), 4)
    assert cut["x"].shape == (1, 4) and cut["target"].tolist() == [1]


def test_gradients_get_the_condition_aware_error_for_every_provider():
    rows, checks = accuracy.accuracy_rows(SMOKE, kernels=["softmax_backward", "cross_entropy_forward_backward"],
                                          providers=["softmaxlab", "numpy"], regime_names=["dominant"],
                                          dtypes=["float32"], progress=False)
    by_output = rows.set_index(["kernel", "output", "provider"])
    gradients = by_output.loc[[("softmax_backward", "dx", "softmaxlab"), ("softmax_backward", "dx", "numpy"),
                               ("cross_entropy_forward_backward", "dlogits", "softmaxlab")]]
    assert np.isfinite(gradients[["max_cond", "median_cond"]].to_numpy()).all()
    assert np.isnan(by_output.loc[("cross_entropy_forward_backward", "loss", "softmaxlab"), "max_cond"])
    # the dominant logit: dx of the winner cancels to ~e^-30 of its terms, so the elementwise
    # ULP error is huge while the error in u of the terms stays at the forward's few ULP
    ours = by_output.loc[("softmax_backward", "dx", "softmaxlab")]
    assert ours["max_ulp"] > 1e3 and ours["max_cond"] < 16
    table = tables.accuracy_table(rows, "cond")
    assert set(zip(table["kernel"], table["output"])) == {("softmax_backward", "dx"),
                                                        ("cross_entropy_forward_backward", "dlogits")}
    context = {"machine": "m", "versions": "v", "commit": "c", "timestamp": "t", "profile": "smoke"}
    text = accuracy.accuracy_markdown(rows, checks, context)
    assert "## Condition-aware error of the gradients" in text
    forward_only = rows[rows["output"] == "loss"]
    assert "## Condition-aware error" not in accuracy.accuracy_markdown(forward_only, checks, context)
    assert tables.accuracy_table(forward_only, "cond").empty
    # rows written before the columns existed (a committed CSV) have no condition-aware table
    assert tables.accuracy_table(rows.drop(columns=["max_cond", "median_cond"]), "cond").empty


def _gap_row(provider, max_ulp, rowwise=0.5, cond=float("nan"), nonfinite=0, regime="normal_x3"):
    return {"kernel": "k", "output": "dx", "regime": regime, "dtype": "float32", "provider": provider,
            "n_values": 10, "n_nonfinite": nonfinite, "n_special_mismatch": 0, "error": "",
            "max_ulp": max_ulp, "max_rowwise_ulp": rowwise, "max_cond": cond}


def test_peer_gaps_give_each_line_its_reason():
    rows = pd.DataFrame([
        # a cancellation: ULPs far above torch's, the condition-aware error within one rounding
        _gap_row("softmaxlab", 4e5, cond=0.9), _gap_row("torch", 2e3, cond=0.7),
        # the same, but the condition-aware error above the peer's too: the cond line is the gap
        _gap_row("softmaxlab", 4e5, cond=3.0, regime="near_ties"), _gap_row("torch", 2e3, cond=1.5, regime="near_ties"),
    ])
    reasons = {(row.regime, row.metric): row.reason for row in tables.peer_gaps(rows).itertuples()}
    assert reasons[("normal_x3", "ulp")] == "cancellation: condition-aware error 0.9 u, best peer 0.7 u"
    assert reasons[("near_ties", "ulp")] == "not explained" and reasons[("near_ties", "cond")] == "not explained"
    # a named finding (GAP_REASONS) by kernel pattern, output, regime, dtype and metric
    named = pd.DataFrame([dict(_gap_row(provider, error, regime="near_ties"), kernel="distillation_loss",
                               output="loss", dtype="float64") for provider, error in (("softmaxlab", 6.0), ("jax", 0.8))])
    (line,) = tables.peer_gaps(named).itertuples()
    assert line.reason.startswith("KL of near-equal rows")


def test_the_published_accuracy_table_names_a_reason_for_every_gap():
    published = Path(__file__).resolve().parents[2] / "results" / "accuracy.csv"
    gaps = tables.peer_gaps(pd.read_csv(published))
    unexplained = gaps[gaps["reason"] == "not explained"]
    assert unexplained.empty, unexplained.drop(columns="reason").to_string()


def test_peer_gaps_name_the_cells_above_the_best_clean_peer():
    rows = pd.DataFrame([
        # above torch (the best clean peer); jax's lower error does not count: it has NaN results
        _gap_row("softmaxlab", 40.0), _gap_row("torch", 8.0), _gap_row("jax", 2.0, nonfinite=3),
        # within one rounding: not a gap, however the two compare
        _gap_row("softmaxlab", 0.9, regime="dominant"), _gap_row("torch", 0.1, regime="dominant"),
        # at or below: not a gap; a baseline (numpy) is not a peer
        _gap_row("softmaxlab", 3.0, regime="masked"), _gap_row("torch", 3.0, regime="masked"),
        _gap_row("numpy", 0.5, regime="masked"),
        # softmaxlab's NaN where the peer has none
        _gap_row("softmaxlab", 0.2, nonfinite=1, regime="near_ties"), _gap_row("pml", 9.0, regime="near_ties"),
    ])
    gaps = tables.peer_gaps(rows)
    lines = {(row.regime, row.metric): row for row in gaps.itertuples()}
    assert set(lines) == {("normal_x3", "ulp"), ("near_ties", "ulp"), ("near_ties", "rowwise")}
    above = lines[("normal_x3", "ulp")]
    assert (above.softmaxlab, above._7, above._8, above.ratio) == (40.0, "torch", 8.0, 5.0)
    assert lines[("near_ties", "ulp")].softmaxlab == "NaN/inf"
    assert "| k | dx | normal_x3 | float32 | ulp | 40 | torch | 8 | 5 | not explained |" in tables.peer_gaps_markdown(rows)
    clean = rows[rows["regime"].isin(["dominant", "masked"])]
    assert tables.peer_gaps_markdown(clean).startswith("softmaxlab is at or below the best peer")
