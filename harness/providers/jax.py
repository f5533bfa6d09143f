"""The JAX providers: ``jax.jit`` of ``jax.nn`` compositions on device arrays, awaited with ``block_until_ready``.

float64 runs inside ``jax.enable_x64`` (:func:`jax_precision`), scoped so that other JAX
users in the same process keep JAX's float32 default; each jitted function is created
once per name (:func:`jax_jit`) so every call shares its compile cache.
"""

from __future__ import annotations

import contextlib

import numpy as np

_JIT_CACHE: dict = {}


def jax_module():
    import jax

    return jax


def jax_precision(dtype):
    """Context in which JAX keeps float64 as float64 (``jax.enable_x64``), only for float64.

    The flag is scoped instead of set globally so that other JAX users in the same
    process (the test suite) keep JAX's default float32 semantics.
    """
    if np.dtype(dtype) == np.float64:
        return jax_module().enable_x64(True)
    return contextlib.nullcontext()


def jax_jit(name: str, function):
    """``jax.jit(function)``, created once per name so every call shares its compile cache."""
    if name not in _JIT_CACHE:
        _JIT_CACHE[name] = jax_module().jit(function)
    return _JIT_CACHE[name]


def _awaited(dtype, function, *arguments):
    """``run()``: ``function(*arguments)`` in the dtype's precision, awaited (``jax.block_until_ready``)."""

    def run():
        with jax_precision(dtype):
            return jax_module().block_until_ready(function(*arguments))

    return run


# ---- the normalizers ------------------------------------------------------------------------


def _normalizer(name):
    jax = jax_module()
    return {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax, "logsumexp": jax.nn.logsumexp}[name]


def normalizer(name, backward=False):
    """jax.jit(jax.nn.<name>) on a device array put there in prepare; with ``backward`` its jitted VJP
    at x (from ``jax.vjp``, residuals computed in prepare) applied to dy."""

    def prepare(inputs):
        jax = jax_module()
        x = inputs["x"]

        def function(values):
            return _normalizer(name)(values, axis=-1)

        with jax_precision(x.dtype):
            device_x = jax.device_put(x)
            if backward:
                device_dy = jax.device_put(inputs["dy"])
                _, pullback = jax.vjp(function, device_x)
        if not backward:
            return _awaited(x.dtype, jax_jit(name, function), device_x)
        return _awaited(x.dtype, jax_jit("vjp", lambda pullback, upstream: pullback(upstream)[0]), pullback, device_dy)

    return prepare


# ---- the losses: ``formula(jnp, nn, **arrays)`` ------------------------------------------------


def loss(name, formula, first_input, with_gradient):
    """``jax.jit(formula)`` (or of ``jax.value_and_grad(formula)`` to ``first_input``) on device arrays."""

    def prepare(inputs):
        jax = jax_module()
        dtype = inputs[first_input].dtype
        names = list(inputs)
        with jax_precision(dtype):
            # class indices as int32 unless JAX runs in 64 bits (it would truncate with a warning)
            device = [jax.device_put(inputs[key].astype(np.int32) if inputs[key].dtype.kind in "iu"
                                     and dtype != np.float64 else inputs[key]) for key in names]
        position = names.index(first_input)

        def positional(*values):
            return formula(jax.numpy, jax.nn, **dict(zip(names, values)))

        function = jax_jit(f"{name}-{'fb' if with_gradient else 'f'}",
                           jax.value_and_grad(positional, argnums=position) if with_gradient else positional)
        return _awaited(dtype, function, *device)

    return prepare


def cross_entropy(jnp, nn, logits, target):
    log_probabilities = nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probabilities, target[:, None], axis=-1))


def cross_entropy_label_smoothing(label_smoothing):
    """Cross-entropy against (1 - eps) one-hot + eps uniform, as torch's ``label_smoothing``."""

    def formula(jnp, nn, logits, target):
        log_probabilities = nn.log_softmax(logits, axis=-1)
        picked = -jnp.take_along_axis(log_probabilities, target[:, None], axis=-1)[:, 0]
        uniform = -jnp.mean(log_probabilities, axis=-1)
        return jnp.mean((1 - label_smoothing) * picked + label_smoothing * uniform)

    return formula


def distillation(jnp, nn, student, teacher, target, temperature=4.0, alpha=0.9):
    log_q = nn.log_softmax(student / temperature, axis=-1)
    log_p = nn.log_softmax(teacher / temperature, axis=-1)
    p = jnp.exp(log_p)
    divergence = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    hard = -jnp.take_along_axis(nn.log_softmax(student, axis=-1), target[:, None], axis=-1)[:, 0]
    return jnp.mean(alpha * temperature * temperature * divergence + (1 - alpha) * hard)


def binary_cross_entropy(jnp, nn, logits, target):
    return -jnp.mean(target * nn.log_sigmoid(logits) + (1 - target) * nn.log_sigmoid(-logits))


def quadratic_cost(jnp, nn, logits, target):
    return 0.5 * jnp.mean((nn.sigmoid(logits) - target) ** 2)


def multiclass_hinge(jnp, nn, logits, target):
    label_logits = jnp.take_along_axis(logits, target[:, None], axis=-1)
    hinges = jnp.maximum(logits - label_logits + 1.0, 0.0)
    not_label = jnp.arange(logits.shape[-1])[None, :] != target[:, None]
    return jnp.mean(jnp.sum(jnp.where(not_label, hinges, 0.0), axis=-1))


def smooth_hinge(jnp, nn, logits, target):
    not_label = jnp.arange(logits.shape[-1])[None, :] != target[:, None]
    others = nn.logsumexp(jnp.where(not_label, logits, -jnp.inf), axis=-1)
    label_logits = jnp.take_along_axis(logits, target[:, None], axis=-1)[:, 0]
    return jnp.mean(nn.softplus(others - label_logits))
