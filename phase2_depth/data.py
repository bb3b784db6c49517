"""Phase 2's data: CIFAR-10 split three ways, normalised with the training split's own statistics.

Three splits, three jobs:

* **train** (45,000): the only images the weights ever learn from;
* **validation** (5,000, held out of the official training set, stratified:
  500 per class): where every choice is made - epochs, learning rate, which
  configuration wins the search;
* **test** (10,000, the official test set): touched once, at the very end, by
  the configuration already chosen.  Look at it earlier and it stops being a
  fair estimate of new data.

The per-channel mean and std come from the training split only: the
validation and test images must not leak into anything the model is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from common.augment import BatchAugment
from common.data import ImageDataset, Split, load_dataset
from common.loaders import TensorLoader

VALIDATION_SIZE = 5000
AUGMENT = BatchAugment(crop_pad=4, flip=True)          # the standard CIFAR-10 recipe
AUGMENT_CUTOUT = BatchAugment(crop_pad=4, flip=True, cutout_size=8)


@dataclass
class CifarSplits:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: ImageDataset

    def loaders(self, batch_size: int, *, device="cpu", augment: BatchAugment | None = AUGMENT, seed: int = 0,
                channels_last: bool = False, eval_batch_size: int = 1000, rank: int = 0, world_size: int = 1):
        """Training loader (shuffled, augmented; this rank's shard under DDP) and validation/test loaders
        (in order, plain, whole on every rank)."""
        common = dict(device=device, mean=self.mean, std=self.std, channels_last=channels_last)
        train = TensorLoader(self.train, batch_size, augment=augment, seed=seed, drop_last=True, rank=rank,
                             world_size=world_size, **common)
        val = TensorLoader(self.val, eval_batch_size, shuffle=False, **common)
        test = TensorLoader(self.test, eval_batch_size, shuffle=False, **common)
        return train, val, test


def add_dataset_argument(parser) -> None:
    """``--dataset``: CIFAR-10 by default, or a learner's own image folder."""
    parser.add_argument("--dataset", default="cifar10",
                        help="cifar10, or imagefolder:PATH for your own tree of train/<class>/ and test/<class>/")


def stratified_split(labels: torch.Tensor, val_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded split keeping every class's share equal in both parts."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=val_size, random_state=seed, stratify=labels.numpy())
    return np.sort(train_idx), np.sort(val_idx)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images on the 0..1 scale (float64 sums: no drift)."""
    x = images.to(torch.float64) / 255.0
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


def cifar_splits(*, data_dir=None, quick: bool = False, seed: int = 0, dataset: str = "cifar10",
                 subset: tuple[int, int, int] | None = None, announce=print) -> CifarSplits:
    """Load CIFAR-10 (or any 3-channel dataset name), split train/val, compute train statistics.

    ``subset=(n_train, n_val, n_test)`` keeps seeded random subsets (quick runs, CI).
    """
    data = load_dataset(dataset, data_dir=data_dir, quick=quick, announce=announce)
    val_size = min(VALIDATION_SIZE, len(data.train) // 10)
    train_idx, val_idx = stratified_split(data.train.labels, val_size, seed)
    train = Split(data.train.images[train_idx], data.train.labels[train_idx])
    val = Split(data.train.images[val_idx], data.train.labels[val_idx])
    test = data.test
    if subset is not None:
        train, val, test = (s.subset(n, seed) for s, n in zip((train, val, test), subset))
    mean, std = channel_stats(train.images)
    return CifarSplits(train, val, test, list(data.classes), mean, std, data)
