"""The softmaxlab provider: the public kernels (``softmaxlab.kernels``) called on a registry entry's inputs."""

from __future__ import annotations

from functools import partial


def on_logits(function):
    """``function(x)``: a forward normalizer (also the NumPy formulas, called the same way)."""

    def prepare(inputs):
        x = inputs["x"]
        return lambda: function(x)

    return prepare


def from_forward_output(forward, backward):
    """``backward(y, dy)`` with ``y = forward(x)`` computed in prepare (the normalizers' VJPs)."""

    def prepare(inputs):
        y = forward(inputs["x"])
        dy = inputs["dy"]
        return lambda: backward(y, dy)

    return prepare


def with_inputs(function, **parameters):
    """``function(**inputs, **parameters)``: the losses and the margin family, options fixed per entry."""

    def prepare(inputs):
        return partial(function, **inputs, **parameters)

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

    return prepare
