"""Phase 1's models: the seed's SimpleNet, its raw-tensor twin, and two points of comparison.

``SimpleNet`` is the network the curriculum starts from: two ``nn.Linear``
layers and a ReLU, written out in ``forward`` rather than hidden in
``nn.Sequential`` so you can see every step.  ``RawTwoLayerNet`` is the same
function with no ``nn.Module`` at all.  ``WideMLP`` and ``SmallCNN`` answer
"why 97-98% and not 99%" in p1-train.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SimpleNet(nn.Module):
    """784 -> 128 -> ReLU -> 10: the seed's two-layer MNIST network."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(28 * 28, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for a batch of images (N, 1, 28, 28), step by step, no ``nn.Sequential``.

        Flatten each image to 784 numbers (the batch axis stays), ``fc1``,
        ReLU, ``fc2``.  Return the raw scores (logits): ``F.cross_entropy``
        applies log-softmax itself, so a softmax here would be applied twice.
        ``nn.Module.__call__`` runs this method: ``net(x)``, not ``net.forward(x)``.
        """
        # EXERCISE p1-manual.1: SimpleNet's forward pass
        # hint: flatten each image but keep the batch axis; fc1, ReLU, fc2; return logits, no softmax
        x = x.view(x.size(0), -1)   # (N, 1, 28, 28) -> (N, 784)
        x = F.relu(self.fc1(x))
        return self.fc2(x)          # logits; the loss applies softmax
        # END EXERCISE


class RawTwoLayerNet:
    """SimpleNet from raw tensors: parameters with ``requires_grad`` and a hand-written SGD step.

    ``nn.Linear`` stores its weight as ``(out_features, in_features)`` and
    computes ``x @ W.T + b``; we keep that layout so weights copy across as-is.
    """

    def __init__(self, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor):
        self.params = [t.detach().clone().requires_grad_(True) for t in (w1, b1, w2, b2)]

    @classmethod
    def from_simple_net(cls, net: SimpleNet) -> "RawTwoLayerNet":
        return cls(net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """SimpleNet's forward pass from the four tensors in ``self.params``: logits (N, 10).

        ``w1, b1, w2, b2 = self.params``.  Flatten each sample (keep the batch
        axis), then ``hidden = relu(x @ w1.T + b1)`` and ``logits = hidden @ w2.T + b2``:
        what ``nn.Linear`` computes, with its ``(out_features, in_features)``
        weight layout.  Use the parameters themselves (not ``.data`` or
        ``.detach()`` copies), so that ``backward()`` reaches them.
        """
        # EXERCISE p1-manual.2: a forward pass from raw tensors
        # hint: nn.Linear computes x @ W.T + b: do that twice with a ReLU between, on self.params themselves
        w1, b1, w2, b2 = self.params
        x = x.view(x.size(0), -1)
        hidden = (x @ w1.T + b1).clamp(min=0)   # ReLU is max(x, 0)
        return hidden @ w2.T + b2
        # END EXERCISE

    def sgd_step(self, lr: float) -> None:
        """One step of plain SGD on ``self.params``: ``w <- w - lr * w.grad``, then clear the gradients.

        Two things make this more than one line.  The update must not be
        recorded by autograd: an in-place change to a leaf that requires grad
        raises, and an out-of-place ``w = w - lr * g`` makes a new tensor that
        is no longer a leaf (the next ``backward()`` would not fill its
        ``.grad``).  So update in place inside ``torch.no_grad()``.  And
        ``backward()`` adds into ``.grad``: clear it after the update
        (``p.grad = None``), or the next step uses the sum of both batches'
        gradients.  This is what ``optimizer.step()`` and
        ``optimizer.zero_grad()`` do for you.
        """
        # EXERCISE p1-manual.3: the SGD step by hand
        # hint: change each parameter in place where autograd is not recording; then clear its gradient
        with torch.no_grad():
            for p in self.params:
                p -= lr * p.grad
                p.grad = None
        # END EXERCISE


class WideMLP(nn.Module):
    """784 -> 1024 -> 1024 -> 10: more capacity, still no notion of 'nearby pixels'."""

    def __init__(self, hidden: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class SmallCNN(nn.Module):
    """Two 5x5 convolutions with pooling, then a small classifier.

    A convolution reuses one small filter at every position: it builds in that
    a stroke means the same thing wherever it is, which an MLP has to learn
    separately for every pixel.  That prior is what gets past 99%.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)   # 28x28 -> pool -> 14x14
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)  # 14x14 -> pool -> 7x7
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
