"""README.md's speed and accuracy tables are views of the committed results/ (harness/readme.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from softmaxlab.harness import environment, readme

ROOT = environment.repository_root()


def test_readme_tables_equal_what_the_committed_results_render():
    text = (ROOT / "README.md").read_text()
    rendered = readme.rewrite(text, readme.render_blocks(ROOT / "results"))
    assert rendered == text, "README.md's tables drifted from results/: run `softmaxlab readme`"


def test_rewrite_replaces_only_between_the_markers():
    text = ("intro\n<!-- softmaxlab:speed-table -->\nold\n<!-- /softmaxlab:speed-table -->\nafter\n"
            "<!-- softmaxlab:accuracy-table -->\n<!-- /softmaxlab:accuracy-table -->\n")
    new = readme.rewrite(text, {"speed-table": "| a |\n", "accuracy-table": "| b |\n"})
    assert new == ("intro\n<!-- softmaxlab:speed-table -->\n\n| a |\n\n<!-- /softmaxlab:speed-table -->\nafter\n"
                   "<!-- softmaxlab:accuracy-table -->\n\n| b |\n\n<!-- /softmaxlab:accuracy-table -->\n")
    assert readme.rewrite(new, {"speed-table": "| a |\n", "accuracy-table": "| b |\n"}) == new
    with pytest.raises(ValueError, match="no block"):
        readme.rewrite("no markers", {"speed-table": ""})


def test_speed_table_is_torch_over_softmaxlab_per_shape():
    rows = pd.DataFrame([
        dict(kernel="softmax", provider=provider, rows=4, classes=8, dtype=dtype, p50_s=p50)
        for provider, p50 in (("softmaxlab", 1.0), ("torch", 2.5), ("jax", 9.0))
        for dtype in ("float32", "float64")
    ])
    assert readme.speed_markdown(rows) == (
        "| kernel | 4x8 | 4x8 float64 |\n|---|---:|---:|\n| softmax | 2.50 | 2.50 |\n")


def test_accuracy_table_takes_the_largest_error_over_the_regimes():
    base = dict(kernel="softmax", output="y", dtype="float32", n_nonfinite=0, n_special_mismatch=0, error="")
    rows = pd.DataFrame([
        dict(base, provider="softmaxlab", regime="normal_x3", max_ulp=0.5),
        dict(base, provider="softmaxlab", regime="dominant", max_ulp=1.25),
        dict(base, provider="torch", regime="normal_x3", max_ulp=18.0, n_nonfinite=2),
        dict(base, provider="numpy", regime="normal_x3", max_ulp=0.1),
    ])
    table = readme.accuracy_markdown(rows).splitlines()
    assert table[0] == "| kernel | output | softmaxlab float32 | torch float32 | jax float32 |"
    assert table[2] == "| softmax | y | 1.25 | 18 (2 NaN/inf) |  |"


def test_accuracy_table_lets_the_fused_entry_stand_for_its_forward():
    base = dict(dtype="float64", n_nonfinite=0, n_special_mismatch=0, error="", provider="softmaxlab",
                regime="normal_x3", max_ulp=0.5)
    rows = pd.DataFrame([dict(base, kernel="cross_entropy", output="loss"),
                         dict(base, kernel="cross_entropy_forward_backward", output="loss"),
                         dict(base, kernel="cross_entropy_forward_backward", output="dlogits", max_ulp=1.5)])
    table = readme.accuracy_markdown(rows).splitlines()
    assert [line.split(" | ")[:2] for line in table[2:]] == [["| cross_entropy_forward_backward", "loss"],
                                                            ["| cross_entropy_forward_backward", "dlogits"]]
    assert table[3].endswith("| 1.5 |  |  |")


def test_speed_table_marks_a_ratio_whose_cells_are_flagged():
    def row(provider, dtype, p20, p50, p80):
        return dict(kernel="softmax", provider=provider, rows=4, classes=8, dtype=dtype, p20_s=p20, p50_s=p50,
                    p80_s=p80)

    rows = pd.DataFrame([row("softmaxlab", "float32", 0.9, 1.0, 1.1), row("torch", "float32", 2.4, 2.5, 2.6),
                         row("softmaxlab", "float64", 0.9, 1.0, 1.1), row("torch", "float64", 1.0, 2.5, 4.0)])
    text = readme.speed_markdown(rows)
    assert "| softmax | 2.50 | 2.50\u2020 |" in text
    assert "\u2020: softmaxlab's or torch's cell flagged unreliable" in text
    quiet = readme.speed_markdown(rows.assign(p20_s=rows["p50_s"], p80_s=rows["p50_s"]))
    assert "\u2020" not in quiet
