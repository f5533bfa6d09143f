"""The repository's own promises: CI runs the README's test command, torch stays pinned."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = 'pip install -c constraints.txt -e ".[test]" && pytest -n auto'
MAIN_COMMAND = 'pip install -c constraints.txt -e ".[all]" && softmaxlab report'


def test_readme_states_both_commands_at_the_top():
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    assert TEST_COMMAND in head
    assert MAIN_COMMAND in head


def test_ci_runs_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1] == TEST_COMMAND


def test_torch_is_pinned_to_the_cpu_build():
    pins = (ROOT / "constraints.txt").read_text()
    assert re.search(r"^torch==2\.13\.0$", pins, flags=re.MULTILINE)
