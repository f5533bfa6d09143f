"""Old import path of the loss references (``softmaxlab.harness.exact.losses``), kept for tests/kernels."""

from .exact.losses import *  # noqa: F401,F403
