"""examples/train_digits.py in a short run: the two loss curves agree, the ArcFace head learns."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_digits.py"


def test_train_digits_short_run(capsys):
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(epochs=2)
    assert results["difference"] < 1e-12  # float64 rounding, not a different curve
    assert results["accuracy"] == results["torch_accuracy"]
    assert results["arcface_accuracy"] > 0.5  # chance is 0.1
    assert "max relative difference" in capsys.readouterr().out
