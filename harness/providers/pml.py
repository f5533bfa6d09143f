"""The pytorch-metric-learning (pml) providers of the margin family.

On cosines: pml's own target-logit code (``get_target_mask``,
``modify_cosine_of_target_classes``, ``scale_logits`` of ``CosFaceLoss`` / ``ArcFaceLoss``,
then its cross-entropy and mean), as its ``compute_loss`` does after the cosines.  On
embeddings x and weights W: pml's loss called on (x, labels) with its weights set to W^T
(pml keeps them as (D, C)), gradients to x and W by autograd.
"""

from __future__ import annotations

import warnings

import numpy as np

from .torch import runner, torch_module

REQUIRES = ("torch", "pytorch_metric_learning")


def on_cosines(loss_class, with_gradient, **parameters):
    """pml's own target-logit code applied to given cosines, then its cross-entropy and mean."""

    def prepare(inputs):
        torch = torch_module()
        from pytorch_metric_learning import losses

        cos = torch.from_numpy(inputs["cos"])
        target = torch.from_numpy(inputs["target"])
        loss_function = getattr(losses, loss_class)(num_classes=cos.shape[1], embedding_size=1, **parameters)

        def loss_of(cosines):
            mask = loss_function.get_target_mask(cosines, target)
            target_cosines = cosines[mask == 1]
            modified = loss_function.modify_cosine_of_target_classes(target_cosines)
            logits = loss_function.scale_logits(cosines + mask * (modified - target_cosines).unsqueeze(1), None)
            return loss_function.cross_entropy(logits, target).mean()

        return runner(torch, loss_of, (cos,), with_gradient)

    return prepare


def on_embeddings(loss_class, with_gradient, weight="W", **parameters):
    """pml's ``loss_class(**parameters)`` on (x, target), weights W^T (the input ``weight`` is W);
    (loss, dx, dW) with the gradient."""

    def prepare(inputs):
        torch = torch_module()
        from pytorch_metric_learning import losses

        x, target = torch.from_numpy(inputs["x"]), torch.from_numpy(inputs["target"])
        W = inputs[weight]
        with warnings.catch_warnings():  # pml calls scipy.special.binom on tensors (a NumPy 2 deprecation)
            warnings.filterwarnings("ignore", message="__array_wrap__ must accept context", category=DeprecationWarning)
            loss_function = getattr(losses, loss_class)(num_classes=W.shape[0], embedding_size=W.shape[1],
                                                        **parameters)
        loss_function.W.data = torch.from_numpy(np.ascontiguousarray(W.T))

        if not with_gradient:
            def run():
                with torch.no_grad():
                    return loss_function(x, target)

            return run

        def run():
            features = x.detach().requires_grad_(True)
            loss_function.W.grad = None
            loss = loss_function(features, target)
            dx, dWt = torch.autograd.grad(loss, (features, loss_function.W))
            return loss.detach(), dx, dWt.T

        return run

    return prepare
