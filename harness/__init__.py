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
* ``report``      ``softmaxlab report``: derive + accuracy + bench -> report/index.md;
  ``tables``, ``plots`` views of the rows; ``environment`` threads, machine, versions,
  commit; ``profiles`` full / quick / smoke; ``first_calls`` compile and JIT time;
  ``readme`` README.md's tables from results/; ``cli`` the command.
* ``compare``     ``softmaxlab compare RUN_A RUN_B``: speed ratios with intervals, accuracy changes, regressions.
"""
