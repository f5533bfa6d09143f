"""The ``softmaxlab_torch`` provider: ``softmaxlab.torch``'s operations behind the kernels' NumPy signatures.

For each operation of ``softmaxlab.adapters.operations`` this module has two functions
named as the kernels are, taking and returning what those kernels take and return
(NumPy arrays), so the harness runs them exactly where it runs the kernels
(``selection.py``, ``prepare.with_function``):

* ``<name>(...)``: ``softmaxlab.torch.<name>`` on ``torch.from_numpy`` views, under
  ``torch.no_grad()``, returned as ``.numpy()``;
* ``<name>_forward_backward(..., grad_output=1.0)`` for the losses: a training step of the
  loss: fresh leaves of the differentiable inputs (``requires_grad``), the loss through
  ``softmaxlab.torch.<name>`` and ``torch.autograd.grad`` with the upstream gradient,
  returned as ``(loss, *gradients)``.

What the timings of this provider measure beside ``softmaxlab``'s: the adapter's cost per
call (argument checks, the autograd node, the conversions; ``torch.from_numpy`` and
``.numpy()`` are views, about 1 us together), the rest being the same kernels.  The
backward kernels (``softmax_backward``, ...) and ``center_update`` are not adapter
operations: this provider does not have them.
"""

from __future__ import annotations

import functools

import numpy as np

NAME = "softmaxlab_torch"
REQUIRES = ("torch",)


def _operations() -> dict:
    from softmaxlab.adapters.operations import OPERATIONS

    return {operation.name: operation for operation in OPERATIONS}


def _value(operation):
    import torch

    from softmaxlab import torch as adapter

    function = getattr(adapter, operation.name)

    @functools.wraps(operation.value)
    def value(*args, **kwargs):
        arguments = operation.bind(args, kwargs)
        tensors = {key: torch.from_numpy(item) if isinstance(item, np.ndarray) else item
                   for key, item in arguments.items()}
        with torch.no_grad():
            return function(**tensors).numpy()

    return value


def _forward_backward(operation):
    import torch

    from softmaxlab import torch as adapter

    function = getattr(adapter, operation.name)
    differentiable = operation.differentiable

    @functools.wraps(operation.fused)
    def forward_backward(*args, grad_output=1.0, **kwargs):
        arguments = operation.bind(args, kwargs)
        tensors = {key: torch.from_numpy(item) if isinstance(item, np.ndarray) else item
                   for key, item in arguments.items()}
        leaves = [tensors[key].detach().requires_grad_(True) for key in differentiable]
        tensors.update(zip(differentiable, leaves))
        loss = function(**tensors)
        upstream = torch.as_tensor(grad_output, dtype=loss.dtype).expand_as(loss)
        gradients = torch.autograd.grad(loss, leaves, upstream)
        return (loss.detach().numpy(), *(gradient.numpy() for gradient in gradients))

    return forward_backward


def function_for(kernel: str):
    """The NumPy-signature function of ``kernel`` (a registry entry or variant name) through
    ``softmaxlab.torch``, or None when the adapters have no such operation (a backward
    kernel, ``center_update``)."""
    operations = _operations()
    kernel = kernel.split("[")[0]  # a variant runs its kernel with other options or inputs
    if kernel in operations:
        return _value(operations[kernel])
    base = kernel.removesuffix("_forward_backward")
    if base != kernel and base in operations and operations[base].fused is not None:
        return _forward_backward(operations[base])
    return None
