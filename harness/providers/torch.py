"""The torch providers: ``torch``'s own functions and plain compositions of torch ops, gradients by autograd.

Inputs become tensors through :func:`tensor` (NumPy views on the CPU; copies on the device
of ``--device cuda``, made in prepare).  Forward calls run under ``torch.no_grad()``; a gradient is ``torch.autograd.grad`` of the
loss with respect to fresh leaves made from the inputs inside the timed call (the
normalizers' VJPs keep one graph, built in prepare).
"""

from __future__ import annotations

import math

from . import current_device


def torch_module():
    import torch

    return torch


def runner(torch, loss_of, tensors, with_gradient):
    """``run()``: ``loss_of(*tensors)`` under no_grad, or (loss, d loss / d each tensor) by autograd.grad."""
    if not with_gradient:
        def run():
            with torch.no_grad():
                return loss_of(*tensors)

        return run

    def run():
        leaves = tuple(value.detach().requires_grad_(True) for value in tensors)
        loss = loss_of(*leaves)
        return (loss.detach(), *torch.autograd.grad(loss, leaves))

    return run


def tensor(torch, array):
    """``array`` as a tensor: a view of it on the CPU, else a copy on the device the call is
    prepared for (``--device``, ``providers.on_device``)."""
    values = torch.from_numpy(array)
    device = current_device()
    return values if device == "cpu" else values.to(device)


# ---- the normalizers ------------------------------------------------------------------------


def forward(name):
    """torch.softmax / torch.log_softmax / torch.logsumexp on ``tensor(torch, x)``, dim -1."""

    def prepare(inputs):
        torch = torch_module()
        function = getattr(torch, name)
        x = tensor(torch, inputs["x"])
        return lambda: function(x, -1)

    return prepare


def backward(name):
    """torch.autograd.grad of torch.<name>(x) with upstream dy (graph built once, kept)."""

    def prepare(inputs):
        torch = torch_module()
        x = tensor(torch, inputs["x"].copy()).requires_grad_(True)
        y = getattr(torch, name)(x, -1)
        dy = tensor(torch, inputs["dy"])
        return lambda: torch.autograd.grad(y, x, dy, retain_graph=True)[0]

    return prepare


# ---- the losses: ``formula(torch, F, **tensors)`` -----------------------------------------------


def loss(formula, first_input, with_gradient):
    """``formula(torch, F, **tensors)`` on the inputs as tensors; the gradient is to ``first_input``."""

    def prepare(inputs):
        torch = torch_module()
        functional = torch.nn.functional
        tensors = {name: tensor(torch, value) for name, value in inputs.items()}
        others = {name: value for name, value in tensors.items() if name != first_input}

        def loss_of(first):
            return formula(torch, functional, **{first_input: first}, **others)

        return runner(torch, loss_of, (tensors[first_input],), with_gradient)

    return prepare


def cross_entropy(torch, F, logits, target, label_smoothing=0.0):
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def distillation(torch, F, student, teacher, target, temperature=4.0, alpha=0.9):
    soft = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                    reduction="batchmean")
    return alpha * temperature * temperature * soft + (1 - alpha) * F.cross_entropy(student, target)


def binary_cross_entropy(torch, F, logits, target):
    return F.binary_cross_entropy_with_logits(logits, target)


def quadratic_cost(torch, F, logits, target):
    return 0.5 * F.mse_loss(torch.sigmoid(logits), target)


def multiclass_hinge(torch, F, logits, target):
    return F.multi_margin_loss(logits, target, margin=1.0) * logits.shape[-1]  # torch divides by C


def smooth_hinge(torch, F, logits, target):
    mask = F.one_hot(target, logits.shape[-1]).bool()
    others = torch.logsumexp(logits.masked_fill(mask, -float("inf")), -1)
    return F.softplus(others - logits.gather(1, target[:, None])[:, 0]).mean()


# ---- the margin family (plain compositions) ---------------------------------------------------


def target_function(torch, c, m1, m2, m3):
    """The target's f(c) with torch ops, the definitions of kernels/_cosine_margins.py (autograd through them)."""
    if m1 == 1.0 and m2 == 0.0:
        return c - m3
    if m1 == 1.0:
        arc = c * math.cos(m2) - torch.sqrt((1.0 - c) * (1.0 + c)) * math.sin(m2)
        return torch.where(c > math.cos(math.pi - m2), arc, c - m2 * math.sin(m2)) - m3
    return torch.cos(m1 * torch.arccos(c) + m2) - m3


def _margin_loss(torch, cosines, rows, target, s, m1, m2, m3):
    """F.cross_entropy(s * (cos with the target's f(c))); ``rows`` = torch.arange(rows)."""
    logits = cosines.clone()
    logits[rows, target] = target_function(torch, cosines[rows, target], m1, m2, m3)
    return torch.nn.functional.cross_entropy(s * logits, target)


def _normalized_linear(torch, x, W):
    functional = torch.nn.functional
    return functional.linear(functional.normalize(x, dim=1), functional.normalize(W, dim=1))


def margin(s, m1, m2, m3, with_gradient):
    """F.cross_entropy(s * (cos with the target's f(c))), and dcos by torch.autograd.grad."""

    def prepare(inputs):
        torch = torch_module()
        cos = tensor(torch, inputs["cos"])
        target = tensor(torch, inputs["target"])
        rows = torch.arange(cos.shape[0])
        return runner(torch, lambda cosines: _margin_loss(torch, cosines, rows, target, s, m1, m2, m3), (cos,),
                      with_gradient)

    return prepare


def margin_from_embeddings(s, m1, m2, m3, with_gradient=True, weight="W"):
    """The margin loss on cos = F.linear(F.normalize(x), F.normalize(W)) (the input ``weight`` is W):
    the loss, or (loss, dx, dW) by autograd to x and W."""

    def prepare(inputs):
        torch = torch_module()
        x, W, target = (tensor(torch, inputs[name]) for name in ("x", weight, "target"))
        rows = torch.arange(x.shape[0])
        return runner(torch, lambda features, weights: _margin_loss(
            torch, _normalized_linear(torch, features, weights), rows, target, s, m1, m2, m3), (x, W), with_gradient)

    return prepare


def normalized_linear(backward):
    def prepare(inputs):
        torch = torch_module()
        x, W = tensor(torch, inputs["x"]), tensor(torch, inputs["W"])
        if not backward:
            def run():
                with torch.no_grad():
                    return _normalized_linear(torch, x, W)

            return run
        grad_cos = tensor(torch, inputs["grad_cos"])

        def run():
            features, weights = x.detach().requires_grad_(True), W.detach().requires_grad_(True)
            return torch.autograd.grad(_normalized_linear(torch, features, weights), (features, weights), grad_cos)

        return run

    return prepare


def large_margin(with_gradient, m, lambda_, normalize_weights):
    """The SphereFace / L-Softmax logits with torch ops (psi from arccos), cross-entropy, autograd."""

    def prepare(inputs):
        torch = torch_module()
        functional = torch.nn.functional
        x, W, target = (tensor(torch, inputs[name]) for name in ("x", "W", "target"))
        rows = torch.arange(x.shape[0])

        def loss_of(features, weights):
            used = functional.normalize(weights, dim=1) if normalize_weights else weights
            logits = features @ used.T
            magnitude = features.norm(dim=1) * used[target].norm(dim=1)
            dot = logits[rows, target]
            cosine = (dot / magnitude).clamp(-1.0, 1.0)
            theta = torch.arccos(cosine)
            with torch.no_grad():
                branch = torch.clamp(torch.floor(m * theta / math.pi), max=m - 1)
            psi = (1.0 - 2.0 * (branch % 2)) * torch.cos(m * theta) - 2.0 * branch
            logits = logits.clone()
            logits[rows, target] = (lambda_ * dot + magnitude * psi) / (1.0 + lambda_)
            return functional.cross_entropy(logits, target)

        return runner(torch, loss_of, (x, W), with_gradient)

    return prepare


def center(with_gradient, alpha=None):
    """0.5 * ((x - centers[target])**2).sum(1).mean() (autograd), or with ``alpha`` the updated centers
    c_j - alpha sum_{y_i = j}(c_j - x_i) / (1 + n_j) by ``index_add_``."""

    def prepare(inputs):
        torch = torch_module()
        x, centers, target = (tensor(torch, inputs[name]) for name in ("x", "centers", "target"))

        def loss_of(features, middles):
            return 0.5 * ((features - middles[target]) ** 2).sum(dim=1).mean()

        def updated(features, middles):
            differences = torch.zeros_like(middles).index_add_(0, target, middles[target] - features)
            counts = torch.zeros(middles.shape[0], dtype=middles.dtype).index_add_(
                0, target, torch.ones(target.shape[0], dtype=middles.dtype))
            return middles - alpha * differences / (1.0 + counts)[:, None]

        return runner(torch, loss_of if alpha is None else updated, (x, centers), with_gradient)

    return prepare


# ---- the fused linear cross-entropy ---------------------------------------------------------------


def _linear_loss(torch, variant):
    """``loss_of(x, W)`` for the target of a call: the composition, torch's chunked
    ``F.linear_cross_entropy``, or cut-cross-entropy's CPU path (``torch.compile``)."""
    functional = torch.nn.functional
    if variant == "composition":
        return lambda target: (lambda x, W: functional.cross_entropy(x @ W.T, target))
    if variant == "chunked":
        options = torch.nn.LinearCrossEntropyOptions()
        return lambda target: (lambda x, W: functional.linear_cross_entropy(x, W, target, options=options))
    import cut_cross_entropy

    return lambda target: (lambda x, W: cut_cross_entropy.linear_cross_entropy(x, W, target, impl="torch_compile"))


def linear_cross_entropy(variant, with_gradient):
    """The loss of ``x @ W.T`` against ``target`` by ``variant`` ("composition", "chunked",
    "cce"); with the gradient, (loss, dx, dW) by autograd to x and W."""

    def prepare(inputs):
        torch = torch_module()
        x, W, target = (tensor(torch, inputs[name]) for name in ("x", "linear_weight", "target"))
        return runner(torch, _linear_loss(torch, variant)(target), (x, W), with_gradient)

    return prepare
