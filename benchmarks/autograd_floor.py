"""The thinnest torch autograd route to the fused cross-entropy kernel: the floor under ``softmaxlab.torch``.

A provider for ``softmaxlab bench`` (``--provider floor=autograd_floor``, run from this
folder or with it on ``PYTHONPATH``).  ``cross_entropy_forward_backward`` here is the
same training step as the ``softmaxlab_torch`` provider's (``harness/providers/adapters.py``):
tensors from NumPy, a leaf that requires grad, the loss, ``torch.autograd.grad`` with the
upstream gradient, the results as NumPy; but through a bare ``torch.autograd.Function``
with no argument checks, no routing and no support for anything beyond the default
options: what any Python ``autograd.Function`` around the kernel costs at least.
``softmaxlab_torch``'s p50 minus this one's is what ``softmaxlab.torch`` adds over that
floor; this one's minus ``softmaxlab``'s is torch's own price for a Python-defined
differentiable operation.

    cd benchmarks && softmaxlab bench --profile full --kernels softmax cross_entropy_forward_backward \\
        --providers softmaxlab softmaxlab_torch torch --provider floor=autograd_floor \\
        --shape 8x16 --dtypes float64
"""

from __future__ import annotations

import numpy as np
import torch

from softmaxlab import kernels


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target):
        loss, grad = kernels.cross_entropy_forward_backward(logits.numpy(), target.numpy())
        ctx.grad = torch.from_numpy(grad)
        return torch.from_numpy(np.asarray(loss))

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.grad * grad_output, None


def cross_entropy_forward_backward(logits, target, grad_output=1.0):
    leaf = torch.from_numpy(logits).requires_grad_(True)
    loss = _CrossEntropy.apply(leaf, torch.from_numpy(target))
    (grad,) = torch.autograd.grad(loss, (leaf,), torch.as_tensor(grad_output, dtype=loss.dtype))
    return loss.detach().numpy(), grad.numpy()
