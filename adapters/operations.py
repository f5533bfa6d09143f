"""The table the torch and JAX adapters are generated from, in NumPy terms only.

Each public function of ``softmaxlab.kernels`` that the adapters expose is one
``Operation``: its arguments (array or scalar, in the kernel's order), which arrays have a
gradient, the kernel that computes the value, and how the gradient is obtained:

* losses have a fused kernel ``f_forward_backward(..., grad_output=g)`` returning
  ``(loss, *grads)``; for ``reduction="mean"``/``"sum"`` the upstream gradient is a number
  and every gradient is linear in it, so the adapters call the fused kernel once in the
  forward pass at g = 1 and multiply by g in the backward pass (``Operation.fused_at_one``);
  for ``"none"`` g is one number per row (per entry for the elementwise losses) and sums
  over rows (``dW``, ``dcenters``) are not multiples of the sums at g = 1, so the backward
  pass calls the fused kernel again with the array g (``Operation.vjp``);
* the maps (softmax, log_softmax, logsumexp, normalized_linear) get their vector-Jacobian
  product from the kernels' backward functions (``Operation.vjp``).

Nothing here imports torch or JAX; ``softmaxlab.torch`` and ``softmaxlab.jax`` turn each
entry into a differentiable operation of their framework.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Callable, NamedTuple

import numpy as np

from softmaxlab import kernels

# The argument kinds, written as in a torch operator schema.
ARRAY, OPTIONAL_ARRAY = "Tensor", "Tensor?"
SCALAR_KINDS = ("int", "float", "str", "bool", "float?")  # "float?": a float or None


class Argument(NamedTuple):
    kind: str  # ARRAY, OPTIONAL_ARRAY or one of SCALAR_KINDS
    name: str


class Operation(NamedTuple):
    """One public kernel function and what the adapters need to differentiate it."""

    name: str
    arguments: tuple  # Argument, in the kernel's order
    differentiable: tuple  # names of the arrays with a gradient, in the order the gradients come
    value: Callable  # the kernel function: keyword arguments -> output
    vjp: Callable  # (arguments dict, output, grad_output) -> tuple of gradients
    output_shape: Callable  # (shapes dict, arguments dict) -> the output's shape
    fused: Callable | None = None  # f_forward_backward for losses, None for the maps

    @property
    def signature(self) -> inspect.Signature:
        """The kernel function's signature: the adapters take the same arguments."""
        return _SIGNATURES[self.name]

    @property
    def arrays(self) -> tuple:
        """The array arguments (optional ones included), in the kernel's order."""
        return tuple(argument for argument in self.arguments if argument.kind in (ARRAY, OPTIONAL_ARRAY))

    def bind(self, args: tuple, kwargs: dict) -> dict:
        """The arguments of a call by name, in the kernel's order, defaults filled in, as the
        kernel function would bind them (its TypeError for a missing or unknown argument)."""
        bound = _SIGNATURES[self.name].bind(*args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    def is_scaled(self, arguments: dict) -> bool:
        """Whether the gradient is the fused kernel's gradient at g = 1 times a scalar g."""
        return self.fused is not None and arguments["reduction"] != "none"

    def fused_at_one(self, arguments: dict) -> tuple:
        """(output, *gradients) at grad_output = 1, from one call of the fused kernel."""
        return self.fused(**arguments)


def check_scalar(argument: Argument, value):
    """A scalar argument of its kind (``bool`` is not a number), as the plain Python type;
    its range is the kernel's to check."""
    kind, name = argument
    if kind.endswith("?"):
        if value is None:
            return None
        kind = kind[:-1]
    if kind == "str":
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        return value
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        return bool(value)
    expected = numbers.Integral if kind == "int" else numbers.Real
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, expected):
        raise TypeError(f"{name} must be {'an int' if kind == 'int' else 'a real number'}, got {type(value).__name__}")
    return int(value) if kind == "int" else float(value)


def _parse(arguments: str) -> tuple:
    return tuple(Argument(*item.split()) for item in arguments.split(", "))


# ---- output shapes ------------------------------------------------------------------------


def _same_shape(shapes, arguments):
    return shapes["x"]


def _without_axis(shapes, arguments):
    shape = shapes["x"]
    if not shape:  # the kernel rejects a 0-d x; report its error, not an IndexError
        return shape
    axis = arguments["axis"] % len(shape)
    return shape[:axis] + shape[axis + 1 :]


def _cosine_shape(shapes, arguments):
    return shapes["x"][:-1] + shapes["W"][:1]


def _loss_shape(primary: str, elementwise: bool = False):
    """A loss' shape: () for "mean" and "sum"; for "none" the rows of ``primary`` (its shape
    without the class axis), or its entries for an elementwise loss."""

    def shape(shapes, arguments):
        if arguments["reduction"] != "none":
            return ()
        return shapes[primary] if elementwise else shapes[primary][:-1]

    return shape


# ---- vector-Jacobian products -------------------------------------------------------------


def _loss_vjp(fused):
    """The gradients from the fused kernel with the upstream gradient as its grad_output
    (an array for "none", a 0-d array otherwise; the kernels take both)."""

    def vjp(arguments, output, grad_output):
        return tuple(fused(**arguments, grad_output=grad_output)[1:])

    return vjp


def _softmax_vjp(arguments, output, grad_output):
    return (kernels.softmax_backward(output, grad_output, axis=arguments["axis"]),)


def _log_softmax_vjp(arguments, output, grad_output):
    return (kernels.log_softmax_backward(output, grad_output, axis=arguments["axis"]),)


def _logsumexp_vjp(arguments, output, grad_output):
    # d logsumexp(x) / dx = softmax(x) (docs/proofs/softmax.md): dx = softmax(x) g, g broadcast along axis
    axis = arguments["axis"]
    return (kernels.softmax(arguments["x"], axis=axis) * np.expand_dims(grad_output, axis),)


def _normalized_linear_vjp(arguments, output, grad_output):
    return kernels.normalized_linear_backward(arguments["x"], arguments["W"], grad_output)


# ---- the table ----------------------------------------------------------------------------


def _map(name, arguments, differentiable, vjp, output_shape):
    return Operation(name, _parse(arguments), differentiable, getattr(kernels, name), vjp, output_shape)


def _loss(name, arguments, differentiable, output_shape, fused=None):
    fused = fused or getattr(kernels, f"{name}_forward_backward")
    return Operation(name, _parse(arguments), differentiable, getattr(kernels, name), _loss_vjp(fused),
                     output_shape, fused)


def _linear_fused(**arguments):
    """linear_cross_entropy_forward_backward's (loss, grad_input, grad_linear_weight): the bias is a
    constant for the adapters (a bias that requires grad is refused), its gradient left out."""
    return kernels.linear_cross_entropy_forward_backward(**arguments)[:3]


_MARGIN = "Tensor cos, Tensor target, float s"
OPERATIONS = (
    _map("softmax", "Tensor x, int axis", ("x",), _softmax_vjp, _same_shape),
    _map("log_softmax", "Tensor x, int axis", ("x",), _log_softmax_vjp, _same_shape),
    _map("logsumexp", "Tensor x, int axis", ("x",), _logsumexp_vjp, _without_axis),
    _map("normalized_linear", "Tensor x, Tensor W", ("x", "W"), _normalized_linear_vjp, _cosine_shape),
    _loss("cross_entropy",
          "Tensor logits, Tensor target, Tensor? weight, int ignore_index, str reduction, float label_smoothing",
          ("logits",), _loss_shape("logits")),
    _loss("distillation_loss",
          "Tensor student, Tensor teacher, Tensor? target, float temperature, float alpha, str reduction",
          ("student",), _loss_shape("student")),
    _loss("binary_cross_entropy_with_logits",
          "Tensor logits, Tensor target, Tensor? weight, Tensor? pos_weight, str reduction",
          ("logits",), _loss_shape("logits", elementwise=True)),
    _loss("margin_cross_entropy", f"{_MARGIN}, float m1, float m2, float m3, str reduction",
          ("cos",), _loss_shape("cos")),
    _loss("normface", f"{_MARGIN}, str reduction", ("cos",), _loss_shape("cos")),
    _loss("cosface", f"{_MARGIN}, float m, str reduction", ("cos",), _loss_shape("cos")),
    _loss("arcface", f"{_MARGIN}, float m, str reduction", ("cos",), _loss_shape("cos")),
    # m is an integer for the kernel; "float" lets the kernel's own check report 2.5
    _loss("large_margin_cross_entropy",
          "Tensor x, Tensor W, Tensor target, float m, float lambda_, bool normalize_weights, str reduction",
          ("x", "W"), _loss_shape("x")),
    _loss("center_loss", "Tensor x, Tensor target, Tensor centers, str reduction",
          ("x", "centers"), _loss_shape("x")),
    _loss("multiclass_hinge", "Tensor logits, Tensor target, float margin, str reduction",
          ("logits",), _loss_shape("logits")),
    _loss("smooth_hinge", "Tensor logits, Tensor target, float margin, str reduction",
          ("logits",), _loss_shape("logits")),
    _loss("quadratic_cost", "Tensor logits, Tensor target, str reduction",
          ("logits",), _loss_shape("logits", elementwise=True)),
    _loss("linear_cross_entropy",
          "Tensor x, Tensor linear_weight, Tensor target, Tensor? linear_bias, Tensor? weight, int ignore_index, "
          "str reduction, float label_smoothing, float z_loss, float? softcap, int memory_budget, str precision",
          ("x", "linear_weight"), _loss_shape("x"), fused=_linear_fused),
    _loss("linear_margin_cross_entropy",
          "Tensor x, Tensor linear_weight, Tensor target, float s, float m1, float m2, float m3, str reduction, "
          "int memory_budget, str precision",
          ("x", "linear_weight"), _loss_shape("x")),
)

NAMES = tuple(operation.name for operation in OPERATIONS)
# Keywords of the NumPy functions that the adapters do not take: ``out=`` writes into a NumPy
# array the caller owns, which has no meaning for a torch operator or a JAX function.
NUMPY_ONLY = ("out",)


def _adapter_signature(function) -> inspect.Signature:
    signature = inspect.signature(function)
    return signature.replace(parameters=[parameter for name, parameter in signature.parameters.items()
                                         if name not in NUMPY_ONLY])


# the kernel functions' signatures, less NUMPY_ONLY: the adapters take the same arguments
_SIGNATURES = {operation.name: _adapter_signature(operation.value) for operation in OPERATIONS}
