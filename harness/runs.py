"""Where a run writes: a fresh folder under the current directory, never the installed checkout.

* ``softmaxlab accuracy``, ``bench`` and ``report`` write, by default, everything of one
  run (CSV rows, Markdown tables, ``index.md`` and plots, raw pytest-benchmark JSON under
  ``raw/``) to ``./softmaxlab-results/<UTC time>-<commit>/`` of the current directory;
  ``--results-dir DIR`` (and ``report --report-dir``) choose another folder.
* The committed snapshot of the checkout (``results/`` and ``report/``, and README.md's
  tables) is rewritten only by ``softmaxlab report --publish``: full profile, run from
  inside the checkout (:func:`publish_folders` says why not otherwise).

So a narrowed run (``--kernels``, ``--providers``, ``--provider``, ``--shape``) can never
replace the published rows, from an editable install or not.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import environment
from .selection import SelectionError

RESULTS_ROOT = "softmaxlab-results"


def run_folder(args) -> Path:
    """This run's folder (made once per ``args``): ``--results-dir`` or a new one under
    ``./softmaxlab-results/``."""
    cached = getattr(args, "_run_folder", None)
    if cached is not None:
        return cached
    if getattr(args, "results_dir", None):
        folder = Path(args.results_dir)
    else:
        commit = environment.commit_description().replace("+", "-")
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        folder = Path.cwd() / RESULTS_ROOT / f"{stamp}-{commit}"
        suffix = 1
        while folder.exists():  # two runs in the same second
            suffix += 1
            folder = folder.with_name(f"{stamp}-{commit}-{suffix}")
    args._run_folder = folder
    return folder


def checkout_root() -> Path | None:
    """The checkout this package runs from, when the current directory is inside it; else None."""
    root = environment.repository_root().resolve()
    if not (root / ".git").exists() or not (root / "pyproject.toml").exists():
        return None
    here = Path.cwd().resolve()
    return root if here == root or root in here.parents else None


def publish_folders(profile: str) -> tuple[Path, Path]:
    """(results/, report/) of the checkout for ``report --publish``; SelectionError saying why not."""
    if profile != "full":
        raise SelectionError(f"--publish writes the committed snapshot, which is the full profile's; got --profile {profile}")
    root = checkout_root()
    if root is None:
        raise SelectionError(f"--publish rewrites results/ and report/ of the softmaxlab checkout; run it from inside "
                         f"the checkout ({environment.repository_root()}), not from {Path.cwd()}")
    return root / "results", root / "report"
