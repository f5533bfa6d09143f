"""softmaxlab.torch: the kernels of ``softmaxlab.kernels`` as differentiable torch operations.

Same names and arguments as ``softmaxlab.kernels`` (the formulas are in their docstrings),
torch tensors in and out: CPU, float32 or float64 (float16, bfloat16 and CUDA tensors
raise a ``TypeError`` naming the argument; cast with ``.double()`` or ``.float()``).
Integer targets may have any integer dtype.  Gradients flow to the arguments the kernels
differentiate (``logits``, ``student``, ``cos``, ``x``, ``W``, ``centers``,
``linear_weight``); a target, teacher, weight or ``linear_bias`` that requires grad is
refused with a ``ValueError``.

Each function is a ``torch.library.custom_op`` (``softmaxlab::<name>``) with a fake
(meta) implementation and an autograd formula, generated from ``softmaxlab.adapters.operations``:

* a loss with ``reduction="mean"`` or ``"sum"`` whose input requires grad runs
  ``softmaxlab::<name>_fused``: the fused kernel, once, at grad_output = 1; backward
  multiplies the saved gradients by the upstream gradient (a number);
* otherwise ``softmaxlab::<name>`` runs the value kernel, and backward calls
  ``softmaxlab::<name>_vjp``: the fused kernel with the upstream gradient (per row for
  ``"none"``), or the maps' backward kernels (``softmax_backward``, ...).

A plain eager call (CPU tensors, no ``torch.compile`` tracing, no fake tensors, tensor
subclass, dispatch or function mode, functorch transform or ``torch.jit`` tracing) takes a
thinner route to the same kernels: a ``torch.autograd.Function`` per operation, generated
from the same table, with the same values, gradients and errors as the custom ops.  At
8x16 float64, forward and backward, it costs 55-70 us over the kernels' 10 us (of which
about 40-50 us are torch's for any autograd.Function and its backward), the custom ops
145-165 us.  Everything else goes through the custom ops.

Inputs are shared with NumPy without copies (``Tensor.numpy()``) and never written;
outputs are the kernels' arrays (``torch.from_numpy``).  Double backward
(``create_graph=True``) raises a ``RuntimeError``: the kernels have no second derivative.

Example:
    >>> import torch
    >>> import softmaxlab.torch as smt
    >>> logits = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    >>> loss = smt.cross_entropy(logits, torch.tensor([0]))
    >>> loss.backward()
    >>> logits.grad.sum().abs().item() < 1e-15
    True
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from softmaxlab.adapters.operations import ARRAY, OPERATIONS, OPTIONAL_ARRAY, Operation, check_scalar

__all__ = [operation.name for operation in OPERATIONS]

_NAMESPACE = "softmaxlab"
_UNSUPPORTED_DTYPES = (torch.float16, torch.bfloat16)


def _checked_tensor(argument, value):
    """A CPU tensor of a dtype NumPy and the kernels read (None for an absent optional array)."""
    kind, name = argument
    if value is None and kind == OPTIONAL_ARRAY:
        return None
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.device.type != "cpu":
        raise TypeError(f"{name} must be a CPU tensor (the kernels run on the CPU), got device {value.device}")
    if value.dtype in _UNSUPPORTED_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64 (cast with .float() or .double()), "
                        f"got {value.dtype}")
    return value


def _numpy_arguments(operation: Operation, values) -> dict:
    """The kernel's keyword arguments: tensors as NumPy views (no copy), scalars as they are."""
    return {
        name: value.detach().numpy() if isinstance(value, torch.Tensor) else value
        for (kind, name), value in zip(operation.arguments, values)
    }


def _tensor(array) -> torch.Tensor:
    # a "mean" loss comes back as a NumPy scalar; softmax along an inner axis as a
    # transposed view, made contiguous so that its strides are the fake tensor's
    array = np.asarray(array)
    return torch.from_numpy(array if array.flags.c_contiguous else array.copy())


def _scaled(gradient: torch.Tensor, grad_output: torch.Tensor) -> torch.Tensor:
    """gradient * grad_output for a gradient this op owns: itself when grad_output is 1
    (``loss.backward()``), else scaled in place (no new tensor of the logits' size)."""
    try:
        one = bool(grad_output.item() == 1.0)
    except RuntimeError:  # traced with fake tensors (opcheck, torch.compile): no value to test
        return gradient * grad_output
    return gradient if one else gradient.mul_(grad_output)


def _schema(operation: Operation, extra: str, returns: int) -> str:
    arguments = ", ".join(f"{kind} {name}" for kind, name in operation.arguments) + extra
    results = "Tensor" if returns == 1 else "(" + ", ".join(["Tensor"] * returns) + ")"
    return f"({arguments}) -> {results}"


# ---- the eager route ----------------------------------------------------------------------

_is_compiling = torch.compiler.is_compiling
_grad_enabled = torch.is_grad_enabled
try:  # private torch functions (pinned torch 2.13); without them every call takes the custom ops
    _has_torch_function = torch._C._has_torch_function
    _dispatch_modes = torch._C._len_torch_dispatch_stack
    _functorch_level = torch._C._functorch.peek_interpreter_stack
    _functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    _tracing = torch._C._get_tracing_state
    _EAGER_ROUTE = True
except AttributeError:
    _EAGER_ROUTE = False


def _plain_eager(tensors: tuple) -> bool:
    """Whether a call on ``tensors`` (real CPU tensors, checked) is plain eager mode: not
    traced by torch.compile, torch.jit or a functorch transform, no __torch_function__
    override or mode (tensor subclasses other than Parameter; FakeTensor), no
    __torch_dispatch__ mode (FakeTensorMode, ...).  About 0.5 us."""
    if not _EAGER_ROUTE:
        return False
    if _is_compiling() or _has_torch_function(tensors) or _dispatch_modes() or _tracing() is not None:
        return False
    if _functorch_level() is not None:
        return False
    for tensor in tensors:
        if _functorch_wrapped(tensor):  # left over from a finished transform
            return False
    return True


_REQUIRED = object()


def _binder(operation: Operation):
    """``bind(args, kwargs)``: the call's values in the kernel's order, defaults filled in.
    A plain list-and-dict fill for the calls that bind; anything else (a missing, unknown or
    repeated argument, too many positional ones) goes to ``inspect.Signature.bind`` for the
    kernel function's own TypeError."""
    parameters = list(operation.signature.parameters.values())
    simple = all(parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
                 for parameter in parameters)
    positional = sum(parameter.kind is parameter.POSITIONAL_OR_KEYWORD for parameter in parameters)
    defaults = [_REQUIRED if parameter.default is parameter.empty else parameter.default for parameter in parameters]
    required = [index for index, default in enumerate(defaults) if default is _REQUIRED]
    slot = {parameter.name: index for index, parameter in enumerate(parameters)}

    def slow(args, kwargs):
        return list(operation.bind(args, kwargs).values())

    def bind(args, kwargs):
        given = len(args)
        if not simple or given > positional:
            return slow(args, kwargs)
        values = [*args, *defaults[given:]]
        for key, value in kwargs.items():
            index = slot.get(key, -1)
            if index < given:  # unknown (-1) or also given by position
                return slow(args, kwargs)
            values[index] = value
        for index in required:
            if values[index] is _REQUIRED:
                return slow(args, kwargs)
        return values

    return bind


def _scalar_type(kind: str):
    """The type a scalar argument of ``kind`` passes ``check_scalar`` unchanged as."""
    return {"int": int, "float": float, "str": str, "bool": bool, "float?": float}[kind]


def _define(operation: Operation):
    """The three custom ops of one operation, its eager autograd.Functions and its public function."""
    name = operation.name
    names = [argument.name for argument in operation.arguments]
    gradients = len(operation.differentiable)
    # where each gradient goes among the op's inputs
    slots = [names.index(differentiable) for differentiable in operation.differentiable]

    def output_like(values):
        shapes = {key: value.shape for key, value in zip(names, values) if isinstance(value, torch.Tensor)}
        return values[0].new_empty(operation.output_shape(shapes, dict(zip(names, values))))

    def gradients_like(values):
        return tuple(torch.empty_like(values[slot]) for slot in slots)

    # softmaxlab::<name>: the value
    def value(*values):
        return _tensor(operation.value(**_numpy_arguments(operation, values)))

    value_op = torch.library.custom_op(f"{_NAMESPACE}::{name}", value, mutates_args=(),
                                       schema=_schema(operation, "", 1))
    value_op.register_fake(lambda *values: output_like(values))

    # softmaxlab::<name>_vjp: the gradients for an upstream gradient
    def vjp(*values):
        *inputs, output, grad_output = values
        computed = operation.vjp(_numpy_arguments(operation, inputs), output.numpy(), grad_output.numpy())
        return tuple(_tensor(gradient) for gradient in computed) if gradients > 1 else _tensor(computed[0])

    vjp_op = torch.library.custom_op(f"{_NAMESPACE}::{name}_vjp", vjp, mutates_args=(),
                                     schema=_schema(operation, ", Tensor output, Tensor grad_output", gradients))
    vjp_op.register_fake(lambda *values: gradients_like(values[:-2]) if gradients > 1
                         else gradients_like(values[:-2])[0])

    def setup_context(ctx, inputs, output):
        tensors = [value for value in inputs if isinstance(value, torch.Tensor)]
        # the fused op's outputs: (loss, gradients at grad_output = 1).  The gradients are
        # kept detached (no reference to this node: no cycle) and are this op's alone: the
        # public function returns the loss only.
        fused = isinstance(output, tuple)
        # no zeros of the logits' size for the gradients' own (unused) gradients
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors, output[0] if fused else output)
        ctx.at_one = [gradient.detach() for gradient in output[1:]] if fused else None
        ctx.inputs = [None if isinstance(value, torch.Tensor) else value for value in inputs]
        ctx.is_tensor = [isinstance(value, torch.Tensor) for value in inputs]

    def backward(ctx, grad_output, *unused_gradient_grads):
        if torch.is_grad_enabled():
            raise RuntimeError(f"softmaxlab.torch.{name}: double backward (create_graph=True) is not supported: "
                               f"the kernels compute first derivatives only")
        if grad_output is None:  # the loss itself unused (only the fused op's gradients were)
            return (None,) * len(ctx.inputs)
        saved = list(ctx.saved_tensors)
        inputs = [saved.pop(0) if is_tensor else value for value, is_tensor in zip(ctx.inputs, ctx.is_tensor)]
        output = saved[0]
        if ctx.at_one is not None and operation.is_scaled(dict(zip(names, inputs))):
            # every gradient is linear in the upstream gradient, a number for "mean" and "sum".
            # Used once: a second backward through the graph (retain_graph=True) recomputes
            # through the vjp op below.
            computed = [_scaled(gradient, grad_output) for gradient in ctx.at_one]
            ctx.at_one = None
        else:
            computed = vjp_op(*inputs, output, grad_output)
            computed = list(computed) if gradients > 1 else [computed]
        result = [None] * len(inputs)
        for slot, gradient in zip(slots, computed):
            result[slot] = gradient
        return tuple(result)

    value_op.register_autograd(backward, setup_context=setup_context)

    fused_op = None
    if operation.fused is not None:
        # softmaxlab::<name>_fused: (loss, gradients at grad_output = 1), one kernel call
        def fused(*values):
            return tuple(_tensor(array) for array in operation.fused_at_one(_numpy_arguments(operation, values)))

        fused_op = torch.library.custom_op(f"{_NAMESPACE}::{name}_fused", fused, mutates_args=(),
                                           schema=_schema(operation, "", 1 + gradients))
        fused_op.register_fake(lambda *values: (output_like(values), *gradients_like(values)))
        fused_op.register_autograd(backward, setup_context=setup_context)

    # ---- the eager route: the same kernels and gradients without the custom-op machinery
    arrays = [index for index, argument in enumerate(operation.arguments) if argument.kind in (ARRAY, OPTIONAL_ARRAY)]
    array_names = [names[index] for index in arrays]
    required_arrays = all(operation.arguments[index].kind == ARRAY for index in arrays)  # none optional
    reduction_slot = names.index("reduction") if operation.fused is not None else None

    def numpy_arguments(values):
        """The kernel's keyword arguments: the tensors as NumPy views (grad mode off or no
        tensor requiring grad: ``numpy()`` without ``detach()``)."""
        arguments = dict(zip(names, values))
        for key in array_names:
            value = arguments[key]
            if value is not None:
                arguments[key] = value.numpy()
        return arguments

    def eager_backward(ctx, grad_output):
        # one output: backward runs only with its gradient (no materialize_grads question)
        if _grad_enabled():
            raise RuntimeError(f"softmaxlab.torch.{name}: double backward (create_graph=True) is not supported: "
                               f"the kernels compute first derivatives only")
        *saved, output = ctx.saved_tensors  # unpacked as the custom ops do: the version checks
        if ctx.at_one is not None:
            # as the custom ops: the gradients at g = 1 scaled, once; a second backward through
            # a retained graph recomputes through the vjp
            computed = [_scaled(gradient, grad_output) for gradient in ctx.at_one]
            ctx.at_one = None
        else:
            inputs = list(ctx.values)
            for index, tensor in zip(ctx.present, saved):
                inputs[index] = tensor
            computed = [_tensor(gradient) for gradient in
                        operation.vjp(numpy_arguments(inputs), output.numpy(), grad_output.numpy())]
        result = [None] * len(names)
        for index, gradient in zip(slots, computed):
            result[index] = gradient
        return tuple(result)

    def eager_forward(fused):
        """The forward of the fused (loss and gradients at g = 1) or the value Function."""

        def forward(ctx, *values):
            # grad mode is off in here.  As the custom ops' setup_context: the tensor inputs and
            # the output saved (their version counters checked in backward), the scalars kept
            if fused:
                output, *at_one = operation.fused_at_one(numpy_arguments(values))
                ctx.at_one = [_tensor(gradient) for gradient in at_one]
            else:
                output = operation.value(**numpy_arguments(values))
                ctx.at_one = None
            output = _tensor(output)
            ctx.present = arrays if required_arrays else [index for index in arrays if values[index] is not None]
            ctx.save_for_backward(*(values[index] for index in ctx.present), output)
            ctx.values = values
            return output

        return forward

    def eager_apply(suffix, fused):
        cls = type(f"softmaxlab_{name}{suffix}", (torch.autograd.Function,),
                   {"forward": staticmethod(eager_forward(fused)), "backward": staticmethod(eager_backward),
                    "__module__": __name__,
                    "__doc__": f"softmaxlab.torch.{name} in plain eager mode (the custom ops' semantics)."})
        # torch.autograd.Function.apply less what it adds for functorch transforms (binding
        # the arguments to a setup_context's signature, unwrapping dead functorch wrappers):
        # the eager route is taken without functorch only, and has no setup_context
        return super(torch.autograd.Function, cls).apply

    eager_value = eager_apply("", False)
    eager_fused = eager_apply("_fused", True) if operation.fused is not None else None

    # ---- the public function: one check per argument, then the route
    bind = _binder(operation)
    differentiable = set(operation.differentiable)
    # per argument: (index, the Argument, None for an array or the scalar's type)
    checks = [(index, argument, None if argument.kind in (ARRAY, OPTIONAL_ARRAY) else _scalar_type(argument.kind),
               argument.name in differentiable)
              for index, argument in enumerate(operation.arguments)]

    @functools.wraps(operation.value, assigned=("__name__", "__qualname__"))
    def function(*args, **kwargs):
        values = bind(args, kwargs)
        tensors = []
        needs_grad = False
        for index, argument, scalar_type, has_gradient in checks:
            value = values[index]
            if scalar_type is None:
                if value is None and argument.kind == OPTIONAL_ARRAY:
                    continue
                if not isinstance(value, torch.Tensor) or not value.is_cpu or value.dtype in _UNSUPPORTED_DTYPES:
                    _checked_tensor(argument, value)  # raises, naming the argument
                if value.requires_grad:
                    if not has_gradient:
                        raise ValueError(f"{argument.name} requires grad, but softmaxlab.torch.{name} differentiates "
                                         f"{', '.join(operation.differentiable)} only: pass {argument.name}.detach()")
                    needs_grad = True
                tensors.append(value)
            elif type(value) is not scalar_type:
                values[index] = check_scalar(argument, value)
        fused = (fused_op is not None and needs_grad and _grad_enabled() and values[reduction_slot] != "none")
        if _plain_eager(tuple(tensors)):
            if needs_grad and _grad_enabled():
                return (eager_fused if fused else eager_value)(*values)
            # no tensor requires grad, or grad mode is off: numpy() needs no detach()
            return _tensor(operation.value(**numpy_arguments(values)))
        if fused:
            return fused_op(*values)[0]
        return value_op(*values)

    function.__module__ = __name__
    function.__doc__ = (f"Differentiable torch version of :func:`softmaxlab.kernels.{name}` (formula, shapes "
                        f"and edge cases there); tensors in and out, gradients for "
                        f"{', '.join(operation.differentiable)}.")
    function.__signature__ = operation.signature
    return function, value_op, vjp_op, fused_op


_DEFINED = {operation.name: _define(operation) for operation in OPERATIONS}
# the custom ops, for torch.library.opcheck: name -> (value op, vjp op, fused op or None)
custom_ops = {name: defined[1:] for name, defined in _DEFINED.items()}
globals().update({name: defined[0] for name, defined in _DEFINED.items()})
