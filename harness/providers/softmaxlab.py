"""The softmaxlab provider: the public kernels (``softmaxlab.kernels``) called on a registry entry's inputs.

Every ``prepare`` built here carries ``prepare.with_function(function)``: the same call
with ``function`` in place of the entry's kernel (the one the entry is named after).
That is how another implementation with the kernel's signature (a user's own, or
``softmaxlab.torch``'s through NumPy) runs on exactly the softmaxlab provider's inputs
and calls: ``softmaxlab.harness.selection``.
"""

from __future__ import annotations

from functools import partial


def on_logits(function):
    """``function(x)``: a forward normalizer (also the NumPy formulas, called the same way)."""

    def prepare(inputs):
        x = inputs["x"]
        return lambda: function(x)

    prepare.with_function = on_logits
    return prepare


def from_forward_output(forward, backward):
    """``backward(y, dy)`` with ``y = forward(x)`` computed in prepare (the normalizers' VJPs)."""

    def prepare(inputs):
        y = forward(inputs["x"])
        dy = inputs["dy"]
        return lambda: backward(y, dy)

    prepare.with_function = partial(from_forward_output, forward)
    return prepare


def with_inputs(function, **parameters):
    """``function(**inputs, **parameters)``: the losses and the margin family, options fixed per entry."""

    def prepare(inputs):
        return partial(function, **inputs, **parameters)

    prepare.with_function = partial(with_inputs, **parameters)
    return prepare


def margin_from_embeddings(kernels, forward_backward, **parameters):
    """(loss, dx, dW) of a margin loss from x and W: ``normalized_linear`` -> ``forward_backward``
    on the cosines -> ``normalized_linear_backward`` of dcos."""

    def prepare(inputs):
        x, W, target = inputs["x"], inputs["W"], inputs["target"]

        def run():
            cos = kernels.normalized_linear(x, W)
            loss, dcos = forward_backward(cos, target, **parameters)
            dx, dW = kernels.normalized_linear_backward(x, W, dcos)
            return loss, dx, dW

        return run

    prepare.with_function = lambda function: margin_from_embeddings(kernels, function, **parameters)
    return prepare
