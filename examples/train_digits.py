"""Train on scikit-learn's handwritten digits with softmaxlab's losses as torch operations.

1. A two-layer MLP trained twice from the same seed in float64, once with
   ``torch.nn.functional.cross_entropy`` and once with ``softmaxlab.torch.cross_entropy``:
   the two loss curves agree to float64 rounding (the maximum relative difference is printed).
2. An ArcFace head: embeddings and class weights normalized by
   ``softmaxlab.torch.normalized_linear``, the loss ``softmaxlab.torch.arcface``; the test
   accuracy takes the class of the largest cosine.

    python examples/train_digits.py [--epochs 30]

The digits ship with scikit-learn (``pip install -e ".[examples]"``); nothing is downloaded.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits

import softmaxlab.torch as smt

BATCH = 100


def digits(seed: int = 0):
    """(train x, train y, test x, test y): 1797 images of 8 x 8 pixels, 1400 for training, float64."""
    images, labels = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(labels))
    x = torch.tensor(images[order] / 16.0, dtype=torch.float64)
    y = torch.tensor(labels[order], dtype=torch.int64)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def mlp(outputs: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, outputs)).double()


def batches(count: int, epoch: int):
    """The same minibatches for every run: a permutation seeded by the epoch."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(epoch))
    return order.split(BATCH)


def train_classifier(loss_function, data, epochs: int, seed: int = 0):
    """The loss at every step and the test accuracy of an MLP trained with ``loss_function``."""
    x, y, x_test, y_test = data
    model = mlp(10, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    curve = []
    for epoch in range(epochs):
        for rows in batches(len(y), epoch):
            loss = loss_function(model(x[rows]), y[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
    return np.array(curve), accuracy


class ArcFaceHead(torch.nn.Module):
    """Embeddings of 32 features and one weight row per class; cosines by normalized_linear."""

    def __init__(self, classes: int = 10, features: int = 32, seed: int = 0):
        super().__init__()
        self.embed = mlp(features, seed)
        self.weight = torch.nn.Parameter(torch.randn(classes, features, dtype=torch.float64))

    def forward(self, x):
        return smt.normalized_linear(self.embed(x), self.weight)  # cos(theta), shape (N, classes)


def train_arcface(data, epochs: int, s: float = 16.0, m: float = 0.3):
    x, y, x_test, y_test = data
    model = ArcFaceHead()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for epoch in range(epochs):
        for rows in batches(len(y), epoch):
            loss = smt.arcface(model(x[rows]), y[rows], s=s, m=m)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return (model(x_test).argmax(1) == y_test).double().mean().item(), loss.item()


def main(epochs: int = 30) -> dict:
    torch.set_num_threads(1)  # small matrices: one thread is fastest, and runs are reproducible
    data = digits()
    torch_curve, torch_accuracy = train_classifier(torch.nn.functional.cross_entropy, data, epochs)
    ours_curve, ours_accuracy = train_classifier(smt.cross_entropy, data, epochs)
    difference = float(np.max(np.abs(ours_curve - torch_curve) / np.abs(torch_curve)))
    print(f"MLP, {epochs} epochs, {len(torch_curve)} steps of {BATCH}: loss {torch_curve[0]:.4f} -> "
          f"{torch_curve[-1]:.6f} (torch) and {ours_curve[-1]:.6f} (softmaxlab)")
    print(f"  max relative difference of the two loss curves: {difference:.2e}")
    print(f"  test accuracy: torch {torch_accuracy:.4f}, softmaxlab {ours_accuracy:.4f}")
    arcface_accuracy, arcface_loss = train_arcface(data, epochs)
    print(f"ArcFace head (s=16, m=0.3), {epochs} epochs: last loss {arcface_loss:.4f}, "
          f"test accuracy {arcface_accuracy:.4f}")
    return {"difference": difference, "torch_accuracy": torch_accuracy, "accuracy": ours_accuracy,
            "arcface_accuracy": arcface_accuracy}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    main(parser.parse_args().epochs)
