"""softmaxlab.harness: references, accuracy and speed runs, tables, plots and the softmaxlab command.

Modules, in the order data flows through them:

* ``registry/``   THE registry: every public kernel -> implementations per provider
                  (softmaxlab, torch, jax, numpy, numpy_naive, pml), inputs per regime,
                  exact reference, cost; option variants apart.  Read by everything below.
* ``providers/``  every framework call (softmaxlab, torch, jax, numpy, pml), lazy
                  optional imports and one-line skips.
* ``regimes``     the input regimes (standard normal x3, +-1e4, near-ties, one dominant
                  logit, -inf masks, 10^6 classes).
* ``exact/``      the exact references, in one library: mpmath at 50 digits, and pairs
                  of long doubles for rows of 10^6 classes (checked against mpmath in
                  every run).
* ``metrics``     ULPs of the output dtype, relative and row-wise errors, NaN/inf counts.
* ``accuracy``    ``softmaxlab accuracy``: the sweep, tidy rows, accuracy.csv/.md.
* ``benchmarks``  the pytest-benchmark module (smoke-run by the test suite);
  ``bench``       ``softmaxlab bench``: thread pinning, the interleaved plan, tidy rows;
  ``roofline``    the same-run stream and exp loops behind "% of limit".
* ``report``      ``softmaxlab report``: derive + accuracy + bench -> index.md (``--publish``: report/);
  ``tables``, ``plots`` views of the rows; ``environment`` threads, machine, versions,
  commit; ``profiles`` full / quick / smoke; ``first_calls`` compile and JIT time;
  ``readme`` README.md's tables from results/; ``cli`` the command.
* ``selection``   what a run measures: kernels, providers (``--provider NAME=module:function``,
                  ``softmaxlab_torch``), shapes, a user's input file; errors that list the names;
  ``runs``        where a run writes (``./softmaxlab-results/...``; ``report --publish``);
  ``api``         :func:`check_accuracy` and :func:`compare_speed`, the same from Python.
* ``compare``     ``softmaxlab compare RUN_A RUN_B``: speed ratios with intervals, accuracy changes, regressions.
"""

__all__ = ["check_accuracy", "compare_speed"]


def __getattr__(name):
    # the API imports the registry (and the kernels): only when asked for
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
