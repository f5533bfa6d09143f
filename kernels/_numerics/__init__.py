"""The numerics primitives, JIT only: exponentials and log1p (``exp.py``), explicit vector
loops (``vector.py``), error-free transformations (``eft.py``) and the block reductions of
the row kernels (``rows.py``).  Nothing here validates or allocates for the caller."""
