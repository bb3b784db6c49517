"""Offline stand-ins, for quick and demo runs when the real dataset is absent.

They exist so that ``make quickstart`` runs every milestone's real code path on
a laptop with no data and no network.  They are never used silently: the data
layer announces them, and every run records ``"real_data": false``.  No figure
from a stand-in is ever reported as an MNIST or CIFAR-10 figure.

* ``digits_as_mnist``: scikit-learn's bundled handwritten digits, 1,797 real
  8x8 scans (UCI), upscaled to 20x20 and centred in a 28x28 frame the way MNIST
  centres its digits.  Real handwriting, just far less of it.
* ``synthetic_cifar``: 10 generated classes of 32x32 colour images.  Each class
  is a fixed random low-frequency colour pattern; every sample is that pattern
  shifted, flipped, re-lit and noised.  Learnable, but not by a lookup table.
"""

from __future__ import annotations

import numpy as np


def digits_as_mnist(test_fraction: float = 0.2, seed: int = 0):
    """Return ``(train_x, train_y, test_x, test_y)`` as MNIST-shaped uint8 arrays."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # ships inside scikit-learn: no download
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None]  # (N,1,8,8) in 0..16
    images = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = F.pad(images, (4, 4, 4, 4))  # MNIST: a 20x20 digit inside a 28x28 frame
    images = (images.clamp(0, 16) * (255.0 / 16.0)).round().to(torch.uint8).numpy()
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return train_x, train_y, test_x, test_y


def synthetic_cifar(n_train: int = 5000, n_test: int = 1000, num_classes: int = 10, seed: int = 0):
    """Return ``(train_x, train_y, test_x, test_y)``: uint8 ``(N, 3, 32, 32)`` and int64 labels."""
    rng = np.random.default_rng(seed)
    # One prototype per class: 4x4x3 random colours, smoothly upsampled to 40x40
    # so that a 32x32 window can be cut from it at random offsets.
    coarse = rng.uniform(0.0, 1.0, size=(num_classes, 3, 4, 4))
    prototypes = np.stack([_smooth_upsample(c, 40) for c in coarse])

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        out = np.empty((n, 3, 32, 32), dtype=np.float32)
        for i, label in enumerate(labels):
            dy, dx = rng.integers(0, 9, size=2)
            img = prototypes[label, :, dy:dy + 32, dx:dx + 32]
            if rng.random() < 0.5:
                img = img[:, :, ::-1]
            contrast, brightness = rng.uniform(0.6, 1.4), rng.uniform(-0.2, 0.2)
            img = (img - 0.5) * contrast + 0.5 + brightness
            tint = rng.normal(0.0, 0.1, size=(3, 1, 1))  # a colour cast per image
            out[i] = img + tint + rng.normal(0.0, 0.3, size=img.shape)
        return (np.clip(out, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return train_x, train_y, test_x, test_y


def _smooth_upsample(coarse: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a (C, h, w) array to (C, size, size)."""
    c, h, w = coarse.shape
    ys = np.linspace(0, h - 1, size)
    xs = np.linspace(0, w - 1, size)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = coarse[:, y0][:, :, x0] * (1 - wx) + coarse[:, y0][:, :, x1] * wx
    bottom = coarse[:, y1][:, :, x0] * (1 - wx) + coarse[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy
