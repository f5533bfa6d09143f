"""softmaxlab.adapters: what the torch and JAX adapters share (``operations``, NumPy only).

The adapters themselves are ``softmaxlab.torch`` and ``softmaxlab.jax``; each imports its
framework, and only when it is imported.
"""
