"""Helpers shared by the loss tests: random inputs and the comparison with a float64 reference."""

from __future__ import annotations

import numpy as np

DTYPES = [np.float32, np.float64]

# (s, m1, m2, m3): NormFace, CosFace, ArcFace, ArcFace + CosFace, a multiplicative margin
MARGINS = {
    "normface": (16.0, 1.0, 0.0, 0.0),
    "cosface": (64.0, 1.0, 0.0, 0.35),
    "arcface": (64.0, 1.0, 0.5, 0.0),
    "arc+cos": (30.0, 1.0, 0.3, 0.2),
    "m1=1.35": (10.0, 1.35, 0.0, 0.0),
}
# A single class, an ordinary batch, leading batch axes with an odd class count.
LOSS_SHAPES = [(1, 1), (6, 7), (2, 3, 17)]
# Tolerance against a float64 torch reference, in units of the dtype's epsilon (the measured
# errors are ~1 ULP; torch float64 adds ~1e-16).
TOLERANCE = 8


def random_array(shape, dtype, scale=3.0, seed=0):
    """scale * N(0, 1) values of ``dtype``."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def assert_close(ours, reference, dtype, what, tolerance=TOLERANCE):
    """|ours - reference| <= tolerance eps (|reference| + max |reference|), eps of ``dtype``."""
    eps = np.finfo(dtype).eps
    reference = np.asarray(reference, dtype=np.float64)
    scale = np.max(np.abs(reference[np.isfinite(reference)]), initial=1.0)
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), reference, rtol=tolerance * eps,
                               atol=tolerance * eps * scale, err_msg=what)


def central_differences(loss, values, step=1e-6):
    """d loss / d values by central differences, entry by entry (``loss`` maps an array to a scalar)."""
    gradient = np.empty_like(values)
    for index in np.ndindex(values.shape):
        plus, minus = values.copy(), values.copy()
        plus[index] += step
        minus[index] -= step
        gradient[index] = (loss(plus) - loss(minus)) / (2 * step)
    return gradient


def compiled_here(dispatcher):
    """A copy of the Numba ``dispatcher`` that compiles in this process and never reads the disk cache.

    The suite runs with the kernels' cache on (``tests/conftest.py``): an overload loaded from
    it keeps no assembly, and a kernel loaded from it never compiles the helpers it calls, so
    their dispatchers list no signatures.  The copy compiles the same Python function with the
    same options; calling it compiles (or loads) the helpers through their own dispatchers.
    """
    return type(dispatcher)(dispatcher.py_func, locals=dispatcher.locals, targetoptions=dict(dispatcher.targetoptions))


def assembly_of(dispatcher, signature) -> str:
    """``dispatcher``'s assembly for ``signature``, from a copy compiled in this process."""
    copy = compiled_here(dispatcher)
    copy.compile(signature)
    return copy.inspect_asm(signature)
