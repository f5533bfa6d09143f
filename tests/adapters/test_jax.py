"""softmaxlab.jax against softmaxlab.kernels (values bit for bit, gradients from the fused
kernels), JAX's own autodiff of the reference formulas, check_grads, jit, vmap."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
smj = pytest.importorskip("softmaxlab.jax")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

from softmaxlab import kernels  # noqa: E402

from .cases import CASE_IDS, ONE_CASE_EACH, case, operation_of  # noqa: E402


# the cases also run under jax.jit (an XLA compilation each): every operation, and "none"
# (the backward pass through the fused kernel) for the row and the sum-over-rows gradients
JIT_CASES = ONE_CASE_EACH + ["cross_entropy-none", "large_margin_cross_entropy-none"]


@pytest.fixture(autouse=True, scope="module")
def float64():
    """x64 for this module only (the cases are float64)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _split(case_id):
    """(operation, the NumPy arguments, f(*differentiable arrays) with the rest fixed, the differentiable arrays)."""
    operation, arguments = operation_of(case_id), case(case_id)
    fixed = {name: jnp.asarray(value) if isinstance(value, np.ndarray) else value for name, value in arguments.items()}

    def function(*differentiable):
        return getattr(smj, operation.name)(**{**fixed, **dict(zip(operation.differentiable, differentiable))})

    return operation, arguments, function, tuple(fixed[name] for name in operation.differentiable)


def _upstream(shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.5, 2.0, shape))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_values_and_gradients_equal_the_kernels(case_id):
    operation, arguments, function, differentiable = _split(case_id)
    expected = operation.value(**arguments)
    # under jit the kernels run through pure_callback: once per operation and gradient path
    runs = (function, jax.jit(function)) if case_id in JIT_CASES else (function,)
    for run in runs:
        output, pullback = jax.vjp(run, *differentiable)
        assert output.dtype == jnp.float64 and output.shape == np.shape(expected)
        np.testing.assert_array_equal(np.asarray(output), expected)  # bit for bit
        grad_output = _upstream(output.shape)
        gradients = pullback(grad_output)
        references = operation.vjp(arguments, np.asarray(expected), np.asarray(grad_output))
        for name, gradient, reference in zip(operation.differentiable, gradients, references):
            np.testing.assert_allclose(np.asarray(gradient), reference, rtol=4e-16,
                                       atol=4e-16 * np.abs(reference).max(), err_msg=name)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_check_grads(case_id):
    """Outside jit (no XLA compilation per case): the jitted pullbacks of JIT_CASES equal the
    kernels' gradients, as the eager ones do, in test_values_and_gradients_equal_the_kernels."""
    _, _, function, differentiable = _split(case_id)
    check_grads(function, differentiable, order=1, modes=["rev"])


@pytest.mark.parametrize("case_id", ["softmax", "normalized_linear", "cross_entropy-mean", "cross_entropy-none",
                                     "large_margin_cross_entropy-sum", "center_loss-none"])
def test_vmap_equals_one_call_per_example(case_id):
    operation, arguments, function, differentiable = _split(case_id)
    batched = tuple(jnp.stack([value, 2.0 * value]) for value in differentiable)
    outputs = jax.jit(jax.vmap(function))(*batched)
    gradients = jax.jit(jax.vmap(jax.grad(lambda *values: jnp.sum(function(*values)))))(*batched)
    for index in range(2):
        single = [value[index] for value in batched]
        np.testing.assert_array_equal(np.asarray(outputs[index]), np.asarray(function(*single)))
        np.testing.assert_array_equal(np.asarray(gradients[index]),
                                      np.asarray(jax.grad(lambda *values: jnp.sum(function(*values)))(*single)))


def _reference(name, arguments):
    """JAX's own formula for the operations jax.nn has."""
    if name in ("softmax", "log_softmax", "logsumexp"):
        function = {"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax,
                    "logsumexp": jax.nn.logsumexp}[name]
        return lambda x: function(x, axis=arguments["axis"])
    if name == "cross_entropy":  # probabilities, no smoothing
        return lambda logits: jnp.sum(-arguments["target"] * jax.nn.log_softmax(logits, axis=-1), axis=-1)
    if name == "binary_cross_entropy_with_logits":
        target, weight, positive = arguments["target"], arguments["weight"], arguments["pos_weight"]
        return lambda logits: weight * (positive * target * jax.nn.softplus(-logits)
                                        + (1 - target) * jax.nn.softplus(logits))
    raise KeyError(name)


@pytest.mark.parametrize("case_id", ["softmax", "log_softmax", "logsumexp", "cross_entropy_probabilities-none",
                                     "binary_cross_entropy_with_logits-none"])
def test_gradients_equal_jax_autodiff_of_the_formula(case_id):
    operation, arguments, function, (primary,) = _split(case_id)
    reference = _reference(operation.name, arguments)
    np.testing.assert_allclose(np.asarray(function(primary)), np.asarray(reference(primary)), rtol=1e-14, atol=1e-15)
    output, pullback = jax.vjp(function, primary)
    reference_output, reference_pullback = jax.vjp(reference, primary)
    grad_output = _upstream(output.shape)
    np.testing.assert_allclose(np.asarray(pullback(grad_output)[0]), np.asarray(reference_pullback(grad_output)[0]),
                               rtol=1e-13, atol=1e-15)


def test_float32_bit_for_bit():
    """float32 in and out under jit: a loss and its fused gradient at g = 1 bit for bit
    (multiclass_hinge: of the float32 kernels one of the quickest to compile; the adapter
    treats every operation alike, tests/kernels covers each float32 kernel)."""
    rng = np.random.default_rng(0)
    logits, target = rng.standard_normal((6, 7)).astype(np.float32), rng.integers(0, 7, 6)
    loss, grad = jax.jit(jax.value_and_grad(lambda z: smj.multiclass_hinge(z, jnp.asarray(target), margin=0.5)))(
        jnp.asarray(logits))
    expected_loss, expected_grad = kernels.multiclass_hinge_forward_backward(logits, target, margin=0.5)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.float32
    assert float(loss) == float(expected_loss) and np.count_nonzero(expected_grad) > 0
    np.testing.assert_array_equal(np.asarray(grad), expected_grad)  # g = 1: the kernel's own gradient


@pytest.mark.parametrize("call, error, message", [
    (lambda x, y: smj.cross_entropy(x.astype(jnp.bfloat16), y), TypeError, "logits must have dtype float32 or float64"),
    (lambda x, y: smj.softmax(x.astype(jnp.float16)), TypeError, "x must have dtype float32 or float64"),
    (lambda x, y: smj.cross_entropy(x.tolist(), y), TypeError, "logits must be a jax.Array or numpy.ndarray"),
    (lambda x, y: smj.cross_entropy(x, y, reduction=None), TypeError, "reduction must be a str"),
    (lambda x, y: smj.cross_entropy(x, y, reduction="avg"), ValueError, "reduction must be one of"),
    (lambda x, y: smj.cross_entropy(x, jnp.array([0, 3])), ValueError, "target must hold class indices"),
    (lambda x, y: smj.arcface(x, y, s="64"), TypeError, "s must be a real number"),
    (lambda x, y: smj.arcface(x, y, s=-1.0), ValueError, "s must be > 0"),
    (lambda x, y: smj.cross_entropy(x, y, bogus=1), TypeError, "bogus"),
])
def test_bad_input_names_the_argument(call, error, message):
    logits, target = jnp.zeros((2, 3)), jnp.array([0, 1])
    with pytest.raises(error, match=message):
        call(logits, target)


def test_bad_input_under_jit_carries_the_kernels_message():
    with pytest.raises(Exception, match="target must hold class indices"):
        jax.jit(lambda z: smj.cross_entropy(z, jnp.array([0, 3])))(jnp.zeros((2, 3)))
