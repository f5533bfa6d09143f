"""Registry entries of the normalizers: softmax, log_softmax, logsumexp and the two backward kernels.

Providers: softmaxlab, torch, jax, and the NumPy formulas (``numpy``, stable, and
``numpy_naive``, the textbook formula without the max shift), the latter two kept out of
the speed runs.  The backward entries take the VJP dx = J^T dy at x: softmaxlab and NumPy
from y = forward(x) computed in prepare.
"""

from __future__ import annotations

from softmaxlab import kernels

from .. import exact, regimes
from ..providers import jax as jax_provider
from ..providers import numpy as numpy_provider
from ..providers import torch as torch_provider
from ..providers.softmaxlab import from_forward_output, on_logits
from .core import Cost, Implementation, Operation


def logit_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"x": logits of ``regime``} (the forward normalizers)."""
    return {"x": regimes.logits(regime, shape, dtype, regimes.rng_for(regime, shape, dtype, seed))}


def logit_and_gradient_inputs(regime: str, shape: tuple[int, int], dtype, seed: int) -> dict:
    """{"x": logits, "dy": upstream gradient}; ``x`` equals :func:`logit_inputs`' ``x``."""
    inputs = logit_inputs(regime, shape, dtype, seed)
    inputs["dy"] = regimes.upstream_gradient(shape, dtype, regimes.rng_for(regime, shape, dtype, seed, "dy"))
    return inputs


def _cost(read_per_element: int, written_per_row: int | None, exps: bool):
    """Elements read (``read_per_element`` per logit), written (one per logit, or per row), exps."""

    def cost(shape):
        elements = shape[0] * shape[1]
        written = elements if written_per_row is None else written_per_row * shape[0]
        return Cost(read_elements=read_per_element * elements, written_elements=written,
                    exp_count=elements if exps else 0)

    return cost


def _forward(name, output, exact_value, cost, numpy_formula, naive_formula) -> Operation:
    """One forward normalizer: softmaxlab, torch, JAX, and NumPy (stable and naive)."""
    return Operation(
        kernel=name,
        op=name,
        mode="forward",
        outputs=(output,),
        make_inputs=logit_inputs,
        exact=lambda inputs, engine: (exact_value(inputs["x"], engine),),
        cost=cost,
        implementations=(
            Implementation("softmaxlab", on_logits(getattr(kernels, name))),
            Implementation("torch", torch_provider.forward(name), requires=("torch",)),
            Implementation("jax", jax_provider.normalizer(name), requires=("jax",)),
            Implementation("numpy", numpy_provider.forward(numpy_formula), timed=False),
            Implementation("numpy_naive", numpy_provider.forward(naive_formula), timed=False),
        ),
    )


def _backward(op, exact_vjp, vjp_scale, cost, forwards, numpy_backward) -> Operation:
    """The VJP of a normalizer, from its output: ``forwards`` = (stable, naive) NumPy forwards;
    ``vjp_scale`` the term magnitudes of dx (the condition-aware error)."""
    return Operation(
        kernel=f"{op}_backward",
        op=op,
        mode="backward",
        outputs=("dx",),
        make_inputs=logit_and_gradient_inputs,
        exact=lambda inputs, engine: (exact_vjp(inputs["x"], inputs["dy"], engine),),
        scales=lambda inputs, engine: (vjp_scale(inputs["x"], inputs["dy"], engine),),
        cost=cost,
        implementations=(
            Implementation("softmaxlab", from_forward_output(getattr(kernels, op), getattr(kernels, f"{op}_backward"))),
            Implementation("torch", torch_provider.backward(op), requires=("torch",)),
            Implementation("jax", jax_provider.normalizer(op, backward=True), requires=("jax",)),
            Implementation("numpy", numpy_provider.backward(forwards[0], numpy_backward), timed=False),
            Implementation("numpy_naive", numpy_provider.backward(forwards[1], numpy_backward), timed=False),
        ),
        description=f"dx = J^T dy at x; softmaxlab and numpy from y = {op}(x) (computed in prepare)",
    )


ENTRIES = (
    _forward("softmax", "y", exact.softmax, _cost(1, None, exps=True), numpy_provider.softmax,
             numpy_provider.naive_softmax),
    _forward("log_softmax", "y", exact.log_softmax, _cost(1, None, exps=True), numpy_provider.log_softmax,
             numpy_provider.naive_log_softmax),
    _forward("logsumexp", "lse", exact.logsumexp, _cost(1, 1, exps=True), numpy_provider.logsumexp,
             numpy_provider.naive_logsumexp),
    _backward("softmax", exact.softmax_vjp, exact.softmax_vjp_scale, _cost(2, None, exps=False),
              (numpy_provider.softmax, numpy_provider.naive_softmax), numpy_provider.softmax_backward),
    _backward("log_softmax", exact.log_softmax_vjp, exact.log_softmax_vjp_scale, _cost(2, None, exps=True),
              (numpy_provider.log_softmax, numpy_provider.naive_log_softmax), numpy_provider.log_softmax_backward),
)
