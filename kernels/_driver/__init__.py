"""The drivers: parallel kernels built from small block and row functions.

* ``rows.py``: ``make_row_kernel``, a pair of floats per block (softmax and its kin,
  the margin losses' rows);
* ``losses.py``: ``make_loss_kernel`` and ``run_loss_kernel``, a state of ``width``
  floats per block (cross-entropy, distillation, the hinges), and the block helpers
  the losses share;
* ``elementwise.py``: the kernel of the elementwise losses (binary cross-entropy,
  quadratic cost);
* ``reduction.py``: the one reduction of per-row losses and the one upstream gradient
  (``reduction="none" | "mean" | "sum"``, ``grad_output``) of every loss.
"""
