"""The ``softmaxlab_torch`` and ``softmaxlab_jax`` providers: the adapters behind the kernels' NumPy signatures.

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

``softmaxlab_jax`` is the same for ``softmaxlab.jax``, as a JAX user runs it: ``jax.jit``
of the function (``<name>``) or of ``jax.value_and_grad`` / ``jax.vjp`` of the loss
(``<name>_forward_backward``), the scalar options static, one jitted function per option
set; float64 inside ``jax.enable_x64``; results awaited and returned as NumPy.

What the timings of these providers measure beside ``softmaxlab``'s: the adapter's cost per
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
JAX_NAME = "softmaxlab_jax"
JAX_REQUIRES = ("jax",)


def _operations() -> dict:
    from softmaxlab.adapters.operations import OPERATIONS

    return {operation.name: operation for operation in OPERATIONS}


def _by_name(operation):
    """``named(args, kwargs)``: a call's arguments by name, positional ones named in the
    kernel's order (no defaults filled in: the adapter fills them as the kernel would).
    Cheaper than ``inspect.Signature.bind``, whose 10 us would be timed as the adapter's."""
    names = list(operation.signature.parameters)

    def named(args, kwargs):
        return {**dict(zip(names, args)), **kwargs} if args else kwargs

    return named


def _value(operation):
    import torch

    from softmaxlab import torch as adapter

    function = getattr(adapter, operation.name)
    named = _by_name(operation)
    no_grad = torch.no_grad()

    @functools.wraps(operation.value)
    def value(*args, **kwargs):
        tensors = {key: torch.from_numpy(item) if isinstance(item, np.ndarray) else item
                   for key, item in named(args, kwargs).items()}
        with no_grad:
            return function(**tensors).numpy()

    return value


def _forward_backward(operation):
    import torch

    from softmaxlab import torch as adapter

    function = getattr(adapter, operation.name)
    differentiable = operation.differentiable
    named = _by_name(operation)

    @functools.wraps(operation.fused)
    def forward_backward(*args, grad_output=1.0, **kwargs):
        tensors = {key: torch.from_numpy(item) if isinstance(item, np.ndarray) else item
                   for key, item in named(args, kwargs).items()}
        leaves = [tensors[key].detach().requires_grad_(True) for key in differentiable]
        tensors.update(zip(differentiable, leaves))
        loss = function(**tensors)
        upstream = torch.as_tensor(grad_output, dtype=loss.dtype).expand_as(loss)
        gradients = torch.autograd.grad(loss, leaves, upstream)
        return (loss.detach().numpy(), *(gradient.numpy() for gradient in gradients))

    return forward_backward


def _bound_arrays(operation, args, kwargs):
    """(the array arguments by name, the scalar ones as a hashable tuple) of a call."""
    arguments = operation.bind(args, kwargs)
    arrays = {key: item for key, item in arguments.items() if isinstance(item, np.ndarray)}
    scalars = tuple((key, item) for key, item in arguments.items() if key not in arrays)
    return arrays, scalars


def _jax_value(operation):
    import jax

    from softmaxlab import jax as adapter
    from softmaxlab.harness.providers.jax import jax_precision

    function = getattr(adapter, operation.name)
    jitted = {}

    @functools.wraps(operation.value)
    def value(*args, **kwargs):
        arrays, scalars = _bound_arrays(operation, args, kwargs)
        if scalars not in jitted:
            jitted[scalars] = jax.jit(lambda arrays: function(**arrays, **dict(scalars)))
        with jax_precision(next(iter(arrays.values())).dtype):
            return np.asarray(jax.block_until_ready(jitted[scalars](arrays)))

    return value


def _jax_forward_backward(operation):
    import jax
    import jax.numpy as jnp

    from softmaxlab import jax as adapter
    from softmaxlab.harness.providers.jax import jax_precision

    function = getattr(adapter, operation.name)
    differentiable = operation.differentiable
    jitted = {}

    def step(arrays, upstream, scalars):
        def loss_of(*leaves):
            return function(**{**arrays, **dict(zip(differentiable, leaves))}, **dict(scalars))

        loss, pullback = jax.vjp(loss_of, *(arrays[key] for key in differentiable))
        return (loss, *pullback(jnp.broadcast_to(upstream, loss.shape).astype(loss.dtype)))

    @functools.wraps(operation.fused)
    def forward_backward(*args, grad_output=1.0, **kwargs):
        arrays, scalars = _bound_arrays(operation, args, kwargs)
        if scalars not in jitted:
            jitted[scalars] = jax.jit(lambda arrays, upstream: step(arrays, upstream, scalars))
        dtype = arrays[differentiable[0]].dtype
        with jax_precision(dtype):
            results = jax.block_until_ready(jitted[scalars](arrays, np.asarray(grad_output, dtype=dtype)))
        return tuple(np.asarray(result) for result in results)

    return forward_backward


def function_for(kernel: str, framework: str = "torch"):
    """The NumPy-signature function of ``kernel`` (a registry entry or variant name) through
    ``softmaxlab.torch`` (or ``softmaxlab.jax`` for ``framework="jax"``), or None when the adapters have no such operation (a backward
    kernel, ``center_update``)."""
    operations = _operations()
    kernel = kernel.split("[")[0]  # a variant runs its kernel with other options or inputs
    value, forward_backward = (_value, _forward_backward) if framework == "torch" else \
        (_jax_value, _jax_forward_backward)
    if kernel in operations:
        return value(operations[kernel])
    base = kernel.removesuffix("_forward_backward")
    if base != kernel and base in operations and operations[base].fused is not None:
        return forward_backward(operations[base])
    return None
