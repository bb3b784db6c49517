"""Smoke tests on the real datasets, when ``ML60_DATA_DIR`` points at them (CI does).

These fail, never skip, when the variable is set and the data is missing or damaged.
"""

from __future__ import annotations

import pytest

from common.data import load_dataset

pytestmark = [pytest.mark.foundation, pytest.mark.real_data]

# From ../shared/datasets/README.md and the official MNIST description.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_loads_in_full(real_data_dir):
    ds = load_dataset("mnist", data_dir=real_data_dir, download=False, quick=False, announce=lambda m: None)
    assert ds.real and ds.image_shape == (1, 28, 28)
    assert len(ds.train) == 60_000 and len(ds.test) == 10_000
    assert ds.train.class_counts(10) == MNIST_TRAIN_COUNTS
    assert ds.test.class_counts(10) == MNIST_TEST_COUNTS
    mean, std = ds.channel_stats()
    # The published 0.1307 / 0.3081 are these figures rounded to four digits (0.130660..., 0.308108...):
    # hold them to that rounding, not to a tolerance wider than the rounding itself.
    assert (round(mean[0], 4), round(std[0], 4)) == (0.1307, 0.3081), (mean, std)


def test_real_mnist_through_torchvision(real_data_dir):
    from torchvision.datasets import MNIST

    from common.data import torchvision_mnist_root

    test = MNIST(str(torchvision_mnist_root("mnist", real_data_dir)), train=False, download=False)
    assert len(test) == 10_000 and int(test.targets[0]) == 7  # the first test digit is a 7
