"""softmaxlab.torch against softmaxlab.kernels (values bit for bit, gradients from the fused
kernels), torch's own autograd of the reference formulas, opcheck and gradcheck; its eager
route (autograd.Functions) against its custom ops, bit for bit."""

from __future__ import annotations

import contextlib
import inspect
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
smt = pytest.importorskip("softmaxlab.torch")

from softmaxlab import kernels  # noqa: E402

from .cases import CASE_IDS, ONE_CASE_EACH, case, operation_of  # noqa: E402

F = torch.nn.functional


def _tensors(arguments: dict, requires_grad=()) -> dict:
    """The case's arrays as tensors (copies: the checks below compare against the NumPy inputs)."""
    return {name: (torch.tensor(value, requires_grad=name in requires_grad) if isinstance(value, np.ndarray)
                   else value) for name, value in arguments.items()}


def _upstream(output: torch.Tensor, seed=1) -> torch.Tensor:
    """An upstream gradient other than 1: the forward_backward tests cover g != 1."""
    return torch.tensor(np.random.default_rng(seed).uniform(0.5, 2.0, output.shape), dtype=output.dtype)


class _PassThrough(torch.overrides.TorchFunctionMode):
    """A __torch_function__ mode that changes nothing: under it softmaxlab.torch takes its
    custom ops, as under torch.compile or with tensor subclasses."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


# the two routes of a call: plain eager mode (autograd.Functions) and the custom ops
ROUTES = {"eager": contextlib.nullcontext, "custom_ops": _PassThrough}


def _route(output: torch.Tensor) -> str:
    """Which route made ``output``, from its autograd node."""
    node = type(output.grad_fn).__name__
    assert node.startswith(("softmaxlab_", "GeneratedBackwardFor_softmaxlab_")), node
    return "eager" if node.startswith("softmaxlab_") else "custom_ops"


def _kernel_gradients(operation, arguments, grad_output: np.ndarray) -> tuple:
    """The gradients as the kernels give them: the fused kernel, or the maps' vjp."""
    output = operation.value(**arguments)
    return operation.vjp(arguments, np.asarray(output), grad_output)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_values_and_gradients_equal_the_kernels(case_id):
    operation, arguments = operation_of(case_id), case(case_id)
    tensors = _tensors(arguments, operation.differentiable)
    output = getattr(smt, operation.name)(**tensors)
    expected = operation.value(**arguments)
    assert output.dtype == torch.float64 and output.shape == np.shape(expected)
    np.testing.assert_array_equal(output.detach().numpy(), expected)  # bit for bit

    grad_output = _upstream(output)
    gradients = torch.autograd.grad(output, [tensors[name] for name in operation.differentiable], grad_output)
    expected_gradients = _kernel_gradients(operation, arguments, grad_output.numpy())
    for name, gradient, reference in zip(operation.differentiable, gradients, expected_gradients):
        # "mean"/"sum": the gradient at grad_output = 1 times g, one rounding from the kernel's
        np.testing.assert_allclose(gradient.numpy(), reference, rtol=4e-16, atol=4e-16 * np.abs(reference).max(),
                                   err_msg=name)
    for name, value in arguments.items():  # never written
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(tensors[name].detach().numpy(), value)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_the_eager_route_equals_the_custom_ops_bit_for_bit(case_id):
    """Values, gradients at g = 1 (the fused gradients as they are) and a second backward
    through the retained graph at g != 1 (recomputed), identical bits on both routes."""
    operation, arguments = operation_of(case_id), case(case_id)
    results = {}
    for route, context in ROUTES.items():
        tensors = _tensors(arguments, operation.differentiable)
        differentiable = [tensors[name] for name in operation.differentiable]
        with context():
            output = getattr(smt, operation.name)(**tensors)
        assert _route(output) == route
        first = torch.autograd.grad(output, differentiable, torch.ones_like(output), retain_graph=True)
        second = torch.autograd.grad(output, differentiable, _upstream(output))
        results[route] = [tensor.detach().numpy() for tensor in (output, *first, *second)]
        for name, value in arguments.items():  # never written
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(tensors[name].detach().numpy(), value)
    for eager, custom in zip(results["eager"], results["custom_ops"]):
        assert eager.dtype == custom.dtype and eager.shape == custom.shape and eager.strides == custom.strides
        np.testing.assert_array_equal(eager.view(np.uint64), custom.view(np.uint64))


def test_traced_calls_take_the_custom_ops():
    """Fake tensors (opcheck, torch.compile's tracing) and torch.compile itself: the custom
    ops, which trace (fullgraph: no graph break at the NumPy call)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    rng = np.random.default_rng(4)
    logits, target = torch.tensor(rng.standard_normal((3, 4)), requires_grad=True), torch.tensor([0, 1, 3])
    with FakeTensorMode():
        fake = smt.cross_entropy(torch.empty(3, 4, dtype=torch.float64, requires_grad=True),
                                 torch.zeros(3, dtype=torch.long))
    assert isinstance(fake, FakeTensor) and _route(fake) == "custom_ops"
    compiled = torch.compile(lambda z, y: smt.cross_entropy(z, y, reduction="none"), backend="eager", fullgraph=True)
    np.testing.assert_array_equal(compiled(logits, target).detach().numpy(),
                                  smt.cross_entropy(logits, target, reduction="none").detach().numpy())


@pytest.mark.parametrize("name, args, kwargs", [
    ("cross_entropy", ("x",), {}),  # missing
    ("cross_entropy", ("x", "y", None), {}),  # weight is keyword-only
    ("cross_entropy", ("x", "y"), {"target": "y"}),  # twice
    ("cross_entropy", ("x", "y"), {"bogus": 1}),  # unknown
    ("softmax", ("x", -1, 0), {}),  # too many
    ("softmax", (), {"axis": -1}),  # missing, the rest by keyword
])
def test_binding_errors_are_the_kernel_signatures(name, args, kwargs):
    """The fast binding falls back to inspect.Signature.bind: its TypeError, word for word."""
    tensors = {"x": torch.zeros(2, 3, dtype=torch.float64), "y": torch.tensor([0, 1])}
    args = [tensors[value] if isinstance(value, str) else value for value in args]
    kwargs = {key: tensors[value] if isinstance(value, str) else value for key, value in kwargs.items()}
    with pytest.raises(TypeError) as ours:
        getattr(smt, name)(*args, **kwargs)
    with pytest.raises(TypeError) as signature:
        inspect.signature(getattr(kernels, name)).bind(*args, **kwargs)
    assert str(ours.value) == str(signature.value)


def test_keyword_and_positional_calls_agree():
    rng = np.random.default_rng(5)
    logits, target = torch.tensor(rng.standard_normal((3, 4))), torch.tensor([0, 1, 3])
    weight = torch.tensor(rng.uniform(0.5, 1.5, 4))
    reference = smt.cross_entropy(logits=logits, target=target, weight=weight, reduction="sum", ignore_index=1)
    for output in (smt.cross_entropy(logits, target, reduction="sum", weight=weight, ignore_index=1),
                   smt.cross_entropy(logits, target=target, ignore_index=1, weight=weight, reduction="sum")):
        assert output.item() == reference.item()
    assert reference.item() == kernels.cross_entropy(logits.numpy(), target.numpy(), weight=weight.numpy(),
                                                     reduction="sum", ignore_index=1)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_gradcheck(case_id):
    operation, arguments = operation_of(case_id), case(case_id)
    tensors = _tensors(arguments, operation.differentiable)
    inputs = tuple(tensors[name] for name in operation.differentiable)

    def function(*differentiable):
        return getattr(smt, operation.name)(**{**tensors, **dict(zip(operation.differentiable, differentiable))})

    assert torch.autograd.gradcheck(function, inputs)


@pytest.mark.parametrize("case_id", ONE_CASE_EACH + ["cross_entropy-none"])
def test_opcheck(case_id):
    operation, arguments = operation_of(case_id), case(case_id)
    value_op, vjp_op, fused_op = smt.custom_ops[operation.name]
    tensors = _tensors(arguments, operation.differentiable)
    values = [tensors[argument.name] for argument in operation.arguments]
    torch.library.opcheck(value_op, values)
    if fused_op is not None:
        torch.library.opcheck(fused_op, values)
    output = value_op(*values)
    plain = [value.detach() if isinstance(value, torch.Tensor) else value for value in values]
    torch.library.opcheck(vjp_op, plain + [output.detach(), _upstream(output)])


def _reference(case_id, tensors):
    """torch's own formula for the operations torch has."""
    name = operation_of(case_id).name
    if name in ("softmax", "log_softmax", "logsumexp"):
        function = {"softmax": torch.softmax, "log_softmax": torch.log_softmax, "logsumexp": torch.logsumexp}[name]
        return function(tensors["x"], tensors["axis"])
    if name == "normalized_linear":
        return F.normalize(tensors["x"], dim=-1) @ F.normalize(tensors["W"], dim=-1).T
    if name == "cross_entropy":
        return F.cross_entropy(tensors["logits"], tensors["target"], weight=tensors["weight"],
                               ignore_index=tensors["ignore_index"], reduction=tensors["reduction"],
                               label_smoothing=tensors["label_smoothing"])
    if name == "binary_cross_entropy_with_logits":
        return F.binary_cross_entropy_with_logits(tensors["logits"], tensors["target"], weight=tensors["weight"],
                                                  pos_weight=tensors["pos_weight"], reduction=tensors["reduction"])
    if name == "cosface":
        one_hot = F.one_hot(tensors["target"], tensors["cos"].shape[-1]).to(tensors["cos"].dtype)
        return F.cross_entropy(tensors["s"] * (tensors["cos"] - tensors["m"] * one_hot), tensors["target"],
                               reduction=tensors["reduction"])
    if name == "center_loss":
        losses = 0.5 * ((tensors["x"] - tensors["centers"][tensors["target"]]) ** 2).sum(-1)
        return {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[tensors["reduction"]]
    if name == "linear_margin_cross_entropy":  # F.normalize, x_hat @ W_hat.T, the target logit for m1 = 1
        target, rows = tensors["target"], torch.arange(tensors["x"].shape[0])
        cos = F.normalize(tensors["x"], dim=-1) @ F.normalize(tensors["linear_weight"], dim=-1).T
        m2, m3 = tensors["m2"], tensors["m3"]
        chosen = cos[rows, target]
        arc = torch.cos(torch.arccos(chosen) + m2) - m3
        logits = cos.index_put((rows, target), torch.where(chosen > math.cos(math.pi - m2), arc,
                                                           chosen - m2 * math.sin(m2) - m3))
        return F.cross_entropy(tensors["s"] * logits, target, reduction=tensors["reduction"])
    raise KeyError(name)


@pytest.mark.parametrize("case_id", ["softmax", "log_softmax", "logsumexp", "normalized_linear",
                                     "cross_entropy-mean", "cross_entropy-none", "cross_entropy_probabilities-sum",
                                     "binary_cross_entropy_with_logits-mean", "cosface-none", "center_loss-mean",
                                     "linear_margin_cross_entropy-mean", "linear_margin_cross_entropy-none"])
def test_gradients_equal_torch_autograd_of_the_formula(case_id):
    operation, arguments = operation_of(case_id), case(case_id)
    ours, theirs = _tensors(arguments, operation.differentiable), _tensors(arguments, operation.differentiable)
    output, reference = getattr(smt, operation.name)(**ours), _reference(case_id, theirs)
    np.testing.assert_allclose(output.detach().numpy(), reference.detach().numpy(), rtol=1e-14, atol=1e-15)
    grad_output = _upstream(output)
    for name in operation.differentiable:
        ours_grad, = torch.autograd.grad(output, ours[name], grad_output, retain_graph=True)
        theirs_grad, = torch.autograd.grad(reference, theirs[name], grad_output, retain_graph=True)
        np.testing.assert_allclose(ours_grad.numpy(), theirs_grad.numpy(), rtol=1e-13, atol=1e-15, err_msg=name)


def test_float32_bit_for_bit():
    """float32 in and out, no cast on the way: a loss and its fused gradient at g = 1, and a
    map's value, bit for bit.  multiclass_hinge and logsumexp: of the float32 kernels the
    quickest to compile (5 s each against 22 s for cross_entropy's and 13 s for softmax's);
    the adapter treats every operation alike, tests/kernels covers each float32 kernel."""
    rng = np.random.default_rng(0)
    logits, target = rng.standard_normal((6, 7)).astype(np.float32), rng.integers(0, 7, 6)
    tensor = torch.tensor(logits, requires_grad=True)
    loss = smt.multiclass_hinge(tensor, torch.tensor(target), margin=0.5)
    loss.backward()
    expected_loss, expected_grad = kernels.multiclass_hinge_forward_backward(logits, target, margin=0.5)
    assert loss.dtype == torch.float32 and tensor.grad.dtype == torch.float32
    assert loss.item() == expected_loss and np.count_nonzero(expected_grad) > 0
    np.testing.assert_array_equal(tensor.grad.numpy(), expected_grad)  # g = 1: the kernel's own gradient
    lse = smt.logsumexp(tensor.detach())
    assert lse.dtype == torch.float32
    np.testing.assert_array_equal(lse.numpy(), kernels.logsumexp(logits))


def test_views_and_expanded_upstream_gradients():
    """A transposed (non-contiguous) input and an expanded (stride 0) upstream gradient."""
    rng = np.random.default_rng(2)
    base = torch.tensor(rng.standard_normal((5, 4)), requires_grad=True)
    target = torch.tensor(rng.integers(0, 5, 4))
    losses = smt.cross_entropy(base.T, target, reduction="none")
    losses.backward(torch.tensor(2.0, dtype=torch.float64).expand(4))
    _, expected = kernels.cross_entropy_forward_backward(base.detach().numpy().T, target.numpy(), reduction="none",
                                                         grad_output=np.full(4, 2.0))
    np.testing.assert_array_equal(base.grad.numpy(), expected.T)
    probabilities = smt.softmax(base.T, axis=-1)
    probabilities.backward(torch.ones(5, dtype=torch.float64).expand(4, 5))
    assert torch.allclose(base.grad, torch.zeros_like(base.grad) + base.grad)  # finite, shaped like base


def test_zero_copy_views_of_the_inputs():
    from softmaxlab.torch import _numpy_arguments

    operation = operation_of("softmax")
    tensor = torch.zeros(3, 4)
    viewed = _numpy_arguments(operation, (tensor, -1))["x"]
    assert np.shares_memory(viewed, tensor.numpy())


@pytest.mark.parametrize("route", ROUTES)
def test_no_grad_runs_the_value_op_and_grad_mode_the_fused_op(route):
    logits, target = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True), torch.tensor([0, 1])
    with ROUTES[route]():
        with torch.no_grad():
            assert smt.cross_entropy(logits, target).grad_fn is None
        assert "fused" in smt.cross_entropy(logits, target).grad_fn.name()
        assert "fused" not in smt.cross_entropy(logits, target, reduction="none").grad_fn.name()


@pytest.mark.parametrize("route", ROUTES)
def test_second_backward_through_a_retained_graph(route):
    """The fused gradients serve the first backward; a second one recomputes them."""
    logits = torch.tensor(np.random.default_rng(3).standard_normal((3, 4)), requires_grad=True)
    with ROUTES[route]():
        loss = smt.cross_entropy(logits, torch.tensor([0, 1, 3]))
    assert _route(loss) == route
    first, = torch.autograd.grad(loss, logits, retain_graph=True)
    second, = torch.autograd.grad(loss, logits, torch.tensor(3.0, dtype=torch.float64))
    _, expected = kernels.cross_entropy_forward_backward(logits.detach().numpy(), np.array([0, 1, 3]))
    np.testing.assert_array_equal(first.numpy(), expected)
    np.testing.assert_allclose(second.numpy(), 3.0 * expected, rtol=4e-16)


@pytest.mark.parametrize("route", ROUTES)
def test_double_backward_is_refused(route):
    logits = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    for reduction in ("mean", "none"):
        with ROUTES[route]():
            loss = smt.cross_entropy(logits, torch.tensor([0, 1]), reduction=reduction).sum()
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(loss, logits, create_graph=True)


@pytest.mark.parametrize("call, error, message", [
    (lambda x, y: smt.cross_entropy(x.to(torch.bfloat16), y), TypeError, "logits must have dtype float32 or float64"),
    (lambda x, y: smt.softmax(x.half()), TypeError, "x must have dtype float32 or float64"),
    (lambda x, y: smt.softmax(x.to("meta")), TypeError, "x must be a CPU tensor"),
    (lambda x, y: smt.cross_entropy(x.numpy(), y), TypeError, "logits must be a torch.Tensor"),
    (lambda x, y: smt.cross_entropy(x, y, weight=[1.0, 2.0, 3.0]), TypeError, "weight must be a torch.Tensor"),
    (lambda x, y: smt.cross_entropy(x, y, reduction=None), TypeError, "reduction must be a str"),
    (lambda x, y: smt.cross_entropy(x, y, reduction="avg"), ValueError, "reduction must be one of"),
    (lambda x, y: smt.cross_entropy(x, y.int(), ignore_index=1.5), TypeError, "ignore_index must be an int"),
    (lambda x, y: smt.cross_entropy(x, torch.tensor([0, 3])), ValueError, "target must hold class indices"),
    (lambda x, y: smt.cross_entropy(x.int(), y), TypeError, "logits must have dtype float32 or float64"),
    (lambda x, y: smt.arcface(x, y, s="64"), TypeError, "s must be a real number"),
    (lambda x, y: smt.arcface(x, y, s=-1.0), ValueError, "s must be > 0"),
    (lambda x, y: smt.distillation_loss(x, x.detach().requires_grad_()), ValueError, "teacher requires grad"),
    (lambda x, y: smt.cross_entropy(x, y, bogus=1), TypeError, "bogus"),
])
@pytest.mark.parametrize("route", ROUTES)
def test_bad_input_names_the_argument(call, error, message, route):
    logits, target = torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0, 1])
    with ROUTES[route](), pytest.raises(error, match=message):
        call(logits, target)
