"""softmaxlab.jax: the kernels of ``softmaxlab.kernels`` as differentiable JAX functions.

Same names and arguments as ``softmaxlab.kernels`` (the formulas are in their docstrings),
JAX (or NumPy) arrays in, JAX arrays out, float32 or float64 (float64 needs
``jax_enable_x64``; float16 and bfloat16 raise a ``TypeError`` naming the argument).
Each function is a ``jax.custom_vjp`` whose kernels run on the host through
``jax.pure_callback``; it works under ``jax.jit``, ``jax.grad`` and ``jax.vmap``.
Cotangents flow to the arguments the kernels differentiate (``logits``, ``student``,
``cos``, ``x``, ``W``, ``centers``); targets, teachers and weights are constants (zero
cotangent).  The scalar arguments (``reduction``, ``s``, ``axis``, ...) are static.

The gradient, as in ``softmaxlab.torch``: a loss with ``reduction="mean"`` or ``"sum"``
runs its fused kernel once in the forward pass at grad_output = 1 and the backward pass
multiplies by the cotangent; ``"none"`` and the maps call the fused kernel (with the
per-row cotangent) or the backward kernels in the backward pass.

``vmap_method="sequential"``: under ``jax.vmap`` the kernel runs once per batch element.
A batched call would be wrong for most of the table: "mean" and "sum" would reduce over
the vmapped axis too, a non-negative ``axis`` would point one axis off, and ``W``,
``centers`` and ``weight`` must keep their rank.

Errors: called outside ``jax.jit`` on concrete arrays the kernels run directly, and a bad
argument raises the kernel's ``TypeError``/``ValueError`` naming it; under ``jax.jit``
the same message arrives inside a ``JaxRuntimeError`` from the callback.

Example:
    >>> import jax, jax.numpy as jnp
    >>> import softmaxlab.jax as smj
    >>> logits = jnp.array([[2.0, 0.0, 0.0]])
    >>> grad = jax.grad(lambda z: smj.cross_entropy(z, jnp.array([0])))(logits)
    >>> bool(abs(float(grad.sum())) < 1e-6)
    True
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from softmaxlab.adapters.operations import ARRAY, OPERATIONS, OPTIONAL_ARRAY, Operation, check_scalar

__all__ = [operation.name for operation in OPERATIONS]

_UNSUPPORTED_DTYPES = (np.dtype(jnp.float16), np.dtype(jnp.bfloat16))


def _checked_array(argument, value):
    """A JAX or NumPy array of a dtype the kernels read (None for an absent optional array)."""
    kind, name = argument
    if value is None and kind == OPTIONAL_ARRAY:
        return None
    if not isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(f"{name} must be a jax.Array or numpy.ndarray, got {type(value).__name__}")
    if value.dtype in _UNSUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64 (cast with .astype), got {value.dtype}")
    return value


def _call(function, result_shapes, arrays):
    """``function(*NumPy arrays)`` on the host: directly when every array is concrete (no
    callback, the kernels' errors as raised), else through ``jax.pure_callback``."""
    def on_host(*values):
        # np.asarray: the callback receives jax.Arrays; on the CPU the view is free (read only)
        return function(*(np.asarray(value) for value in values))

    if not any(isinstance(array, jax.core.Tracer) for array in arrays):
        return jax.tree.map(lambda result, shape: jnp.asarray(result, dtype=shape.dtype), on_host(*arrays),
                            result_shapes)
    return jax.pure_callback(on_host, result_shapes, *arrays, vmap_method="sequential")


def _arrays(results) -> tuple:
    # np.asarray: a "mean" loss comes back as a NumPy scalar
    return tuple(np.asarray(result) for result in results)


@functools.lru_cache(maxsize=None)
def _differentiable(operation: Operation, present: tuple, scalars: tuple):
    """The custom_vjp function of the present arrays, for one set of static scalars.

    ``present``: the names of the array arguments given (an optional one may be None);
    ``scalars``: (name, value) of the scalar arguments.
    """
    slots = [present.index(name) for name in operation.differentiable]
    fixed = dict(scalars)
    scaled = operation.is_scaled(fixed)

    def arguments(arrays):
        # the kernel's keyword arguments, absent optional arrays as None
        given = dict(zip(present, arrays))
        return {argument.name: given.get(argument.name, fixed.get(argument.name)) for argument in operation.arguments}

    def output_shape(arrays):
        shapes = {name: array.shape for name, array in zip(present, arrays)}
        return jax.ShapeDtypeStruct(operation.output_shape(shapes, fixed), arrays[0].dtype)

    def gradient_shapes(arrays):
        return tuple(jax.ShapeDtypeStruct(arrays[slot].shape, arrays[slot].dtype) for slot in slots)

    def value(*arrays):
        return _call(lambda *host: np.asarray(operation.value(**arguments(host))), output_shape(arrays), arrays)

    @jax.custom_vjp
    def function(*arrays):
        return value(*arrays)

    def forward(*arrays):
        if scaled:
            # (loss, gradients at grad_output = 1) from one call of the fused kernel
            output, *at_one = _call(lambda *host: _arrays(operation.fused_at_one(arguments(host))),
                                    (output_shape(arrays), *gradient_shapes(arrays)), arrays)
            return output, (arrays, output, tuple(at_one))
        output = value(*arrays)
        return output, (arrays, output, None)

    def backward(residuals, cotangent):
        arrays, output, at_one = residuals
        if at_one is not None:
            # every gradient is linear in the cotangent, a number for "mean" and "sum"
            computed = [gradient * cotangent for gradient in at_one]
        else:
            computed = _call(lambda *host: _arrays(operation.vjp(arguments(host[:-2]), host[-2], host[-1])),
                             gradient_shapes(arrays), (*arrays, output, cotangent))
        result = [None] * len(arrays)  # None: a zero cotangent (targets, teachers, weights)
        for slot, gradient in zip(slots, computed):
            result[slot] = gradient
        return tuple(result)

    function.defvjp(forward, backward)
    return function


def _define(operation: Operation):
    @functools.wraps(operation.value, assigned=("__name__", "__qualname__"))
    def function(*args, **kwargs):
        bound = operation.bind(args, kwargs)
        present, arrays, scalars = [], [], []
        for argument in operation.arguments:
            value = bound[argument.name]
            if argument.kind in (ARRAY, OPTIONAL_ARRAY):
                value = _checked_array(argument, value)
                if value is not None:
                    present.append(argument.name)
                    arrays.append(value)
            else:
                scalars.append((argument.name, check_scalar(argument, value)))
        return _differentiable(operation, tuple(present), tuple(scalars))(*arrays)

    function.__module__ = __name__
    function.__doc__ = (f"Differentiable JAX version of :func:`softmaxlab.kernels.{operation.name}` (formula, "
                        f"shapes and edge cases there); cotangents for {', '.join(operation.differentiable)}.")
    function.__signature__ = operation.signature
    return function


globals().update({operation.name: _define(operation) for operation in OPERATIONS})
