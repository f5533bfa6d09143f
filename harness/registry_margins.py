"""Old import path of the margin references (``softmaxlab.harness.exact.margins``), kept for tests/kernels."""

from .exact.margins import *  # noqa: F401,F403
