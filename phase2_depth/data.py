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

Training batches are augmented here too, a whole batch at a time: a random
crop from the zero-padded image and a left-right flip, each drawn per image
(:class:`CifarAugment`).  Cutout comes from :mod:`common.augment`, which
phase 1 also uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.augment import BatchAugment, cutout
from common.data import ImageDataset, Split, load_dataset
from common.loaders import TensorLoader

VALIDATION_SIZE = 5000


def stratified_split(labels: torch.Tensor, val_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train_idx, val_idx)`` of a seeded split that keeps every class's share equal in both parts.

    ``labels`` holds one class id per image.  ``val_idx`` has ``val_size``
    indices, ``train_idx`` all the others: every index lands in exactly one
    part.  *Stratified*: a class that is 10% of ``labels`` is 10% of the
    validation set too (500 of each CIFAR-10 class in 5,000), so validation
    accuracy weighs the classes as the data does.  *Seeded*: the same seed
    gives the same split on every run (the validation set must not change
    between the runs being compared); another seed gives another split.

    Taking the first or last ``val_size`` images is not a split of the same
    distribution: files are often ordered by class, by source or by time.
    Any correct answer will do: a per-class loop over a seeded permutation, or
    scikit-learn's ``train_test_split(..., stratify=labels)``.  Both parts are
    returned sorted.
    """
    # EXERCISE p2-data.1: a seeded, stratified train/validation split
    # hint: shuffle each class's indices with a generator seeded by seed and send that class's share
    # hint: of val_size to validation; the two parts together hold every index exactly once
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(idx, test_size=val_size, random_state=seed, stratify=labels.numpy())
    return np.sort(train_idx), np.sort(val_idx)
    # END EXERCISE


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images ``(N, C, H, W)``, on the 0..1 scale.

    One mean and one std per channel (three for RGB), each over every pixel
    of every image: ``N * H * W`` values.  Normalising with them,
    ``(x / 255 - mean) / std``, gives each channel of the training data mean
    0 and std 1.  The std is that of all those pixels together, not the
    average of each image's own std (that misses how much images differ from
    one another).  Sums in float64: 46 million float32 additions drift.

    Call it on the training split only: what the model is given must not
    depend on the validation or test images.
    """
    # EXERCISE p2-data.2: per-channel mean and std
    # hint: scale to 0..1 in float64, then reduce over every axis but the channel axis (N, H and W together)
    x = images.to(torch.float64) / 255.0
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())
    # END EXERCISE


def random_crop(batch: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """torchvision's ``RandomCrop(H, padding=pad)`` on a whole batch: one random window per image.

    Each image is zero-padded by ``pad`` pixels on every side, then an
    ``H x W`` window is cut from it at offsets ``dy, dx``, each drawn
    uniformly from ``0 .. 2 * pad`` (both ends included) and separately for
    every image: the network sees each image shifted by up to ``pad`` pixels,
    a different shift every epoch.  Works on any dtype (uint8 here), on the
    batch's device, and draws its random numbers from ``generator`` alone,
    so a run can be repeated and resumed.

    The idea, one image at a time::

        padded = F.pad(batch, (pad, pad, pad, pad))
        out[i] = padded[i, :, dy[i]:dy[i] + H, dx[i]:dx[i] + W]

    A loop over the batch is a correct answer.  The fast way cuts every
    window at once with two ``gather`` calls: first each image's ``H`` rows
    (``dy[i] + 0 .. H-1``), then its ``W`` columns.
    """
    # EXERCISE p2-data.3: random crop with zero padding, one offset per image
    # hint: draw len(batch) row offsets and len(batch) column offsets in 0..2*pad from generator
    # hint: (randint's upper bound is excluded), zero-pad by pad, cut each image's window at its own offsets
    n, c, h, w = batch.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=batch.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=batch.device)
    padded = F.pad(batch, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]
    padded = padded.gather(2, rows.expand(n, c, h, w + 2 * pad))
    cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]
    return padded.gather(3, cols.expand(n, c, h, w))
    # END EXERCISE


def random_flip(batch: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """torchvision's ``RandomHorizontalFlip(p)`` on a whole batch ``(N, C, H, W)``.

    Each image, on its own coin (drawn from ``generator``), is mirrored
    left-right with probability ``p``: the last axis, W, is reversed.  A cat
    facing left is as much a cat as one facing right; an upside-down cat
    (reversing H) is not what the test set holds, and reversing C swaps the
    red and blue channels.
    """
    # EXERCISE p2-data.4: horizontal flip, one coin per image
    # hint: one uniform number per image from generator, compared with p, picks between the image
    # hint: and its mirror along the width axis (torch.where broadcasts a per-image choice)
    flip = torch.rand(len(batch), generator=generator, device=batch.device) < p
    return torch.where(flip[:, None, None, None], batch.flip(3), batch)
    # END EXERCISE


class CifarAugment(BatchAugment):
    """Phase 2's augmentation recipe for a training batch (uint8 in, uint8 out).

    Crop (:func:`random_crop`), then flip (:func:`random_flip`), then, if
    ``cutout_size``, cutout; the fields are :class:`common.augment.BatchAugment`'s.
    """

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_pad:
            batch = random_crop(batch, self.crop_pad, generator)
        if self.flip:
            batch = random_flip(batch, generator)
        if self.cutout_size:
            batch = cutout(batch, self.cutout_size, generator)
        return batch


AUGMENT = CifarAugment(crop_pad=4, flip=True)          # the standard CIFAR-10 recipe
AUGMENT_CUTOUT = CifarAugment(crop_pad=4, flip=True, cutout_size=8)


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
