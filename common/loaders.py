"""Two ways to feed a model: the classic Dataset + DataLoader, and a tensor-resident loader.

**Classic** (what the seed teaches, and what most tutorials show): a
``Dataset`` returns one ``(image, label)`` at a time, applying torchvision
transforms to a PIL image; a ``DataLoader`` collates them into batches.
Flexible, and fine for large datasets on disk, but every image passes through
Python on its own, which dominates the step time of a small model.

**Tensor-resident** (:class:`TensorLoader`): the whole split sits in memory -
on the GPU when there is one - as a single uint8 tensor (MNIST's 60,000 images
are 47 MB).  A batch is one indexing operation on a random permutation, and
augmentation + normalisation run on the whole batch at once
(:mod:`common.augment`).  Same numbers, a fraction of the time.

Both are reproducible across runs and across a resume: shuffling depends on
``(seed, epoch)`` only, set through ``set_epoch`` as with PyTorch's
``DistributedSampler``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from common.augment import BatchAugment, normalize
from common.data import Split


def epoch_generator(seed: int, epoch: int, device="cpu") -> torch.Generator:
    """A generator whose stream depends on ``(seed, epoch)`` only."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


# --------------------------------------------------------------------------- classic path


class ImageTensorDataset(Dataset):
    """A map-style Dataset over uint8 images, one PIL image at a time.

    It behaves like ``torchvision.datasets.MNIST`` / ``CIFAR10``: ``__getitem__``
    turns image ``i`` into a PIL image and applies ``transform`` to it (for
    example ``ToTensor()`` then ``Normalize(mean, std)``).
    """

    def __init__(self, split: Split, transform: Callable | None = None):
        self.images = split.images.numpy()
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        img = self.images[index]
        pil = Image.fromarray(img[0], mode="L") if img.shape[0] == 1 else Image.fromarray(img.transpose(1, 2, 0))
        return (self.transform(pil) if self.transform else pil), self.labels[index]


class EpochShuffleSampler(Sampler[int]):
    """Shuffles differently each epoch, but identically for the same ``(seed, epoch)``."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        return iter(torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


def classic_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                   num_workers: int = 0, drop_last: bool = False, rank: int = 0,
                   world_size: int = 1) -> DataLoader:
    """``DataLoader(dataset, batch_size, shuffle=...)`` with a resumable shuffle.

    Under DistributedDataParallel (``world_size > 1``) the sampler is PyTorch's
    ``DistributedSampler``: each rank gets its own 1/world_size of every
    epoch, reshuffled when the Trainer calls ``set_epoch``.
    """
    if world_size > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed,
                                     drop_last=True)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                          drop_last=True, persistent_workers=num_workers > 0)
    sampler = EpochShuffleSampler(len(dataset), seed=seed, shuffle=shuffle)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, persistent_workers=num_workers > 0)


# --------------------------------------------------------------------------- fast path


class TensorLoader:
    """Batches from a split held as one uint8 tensor on ``device``.

    Each iteration: a random permutation (seeded by ``(seed, epoch)``), then for
    each batch one gather of uint8 images, the batch augmentation, and
    normalisation to float.  Yields ``(images, labels)`` like a DataLoader.

    Args:
        split: the images (uint8 ``N, C, H, W``) and labels.
        batch_size: images per batch.
        device: where the data lives and batches are produced.
        mean, std: per-channel normalisation on the 0..1 scale.
        shuffle: a new permutation each epoch (False: dataset order).
        drop_last: drop the final short batch.
        augment: a :class:`BatchAugment`, applied to training batches.
        seed: the shuffling/augmentation seed.
        channels_last: return batches in NHWC memory format (faster convolutions).
        dtype: the float type of the returned images.
        rank, world_size: under DistributedDataParallel, this process's share:
            every rank draws the same permutation, cuts it into global batches of
            ``batch_size * world_size`` and takes its own contiguous slice of each.
    """

    def __init__(self, split: Split, batch_size: int, *, device="cpu", mean=(0.0,), std=(1.0,),
                 shuffle: bool = True, drop_last: bool = False, augment: BatchAugment | None = None,
                 seed: int = 0, channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 rank: int = 0, world_size: int = 1):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if world_size > 1 and not drop_last:
            raise ValueError("a sharded loader needs drop_last=True: every rank must take the same number of steps")
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self.batch_size = batch_size
        self.mean, self.std = tuple(mean), tuple(std)
        if len(self.mean) != self.images.shape[1] or len(self.std) != self.images.shape[1]:
            raise ValueError(f"mean/std have {len(self.mean)}/{len(self.std)} values for "
                             f"{self.images.shape[1]}-channel images")
        # Built once on the device, not once per batch.
        self._mean_t = torch.tensor(self.mean, dtype=dtype, device=self.device)
        self._std_t = torch.tensor(self.std, dtype=dtype, device=self.device)
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment = augment or BatchAugment()
        self.seed, self.epoch = seed, 0
        self.channels_last, self.dtype = channels_last, dtype

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        """Steps per epoch (the same on every rank)."""
        n, global_batch = self.dataset_size, self.batch_size * self.world_size
        return n // global_batch if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        generator = epoch_generator(self.seed, self.epoch, self.device)
        n = self.dataset_size
        if self.shuffle:
            order = torch.randperm(n, generator=generator, device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        if self.world_size > 1:   # same permutation on every rank, its own augmentation draws
            generator = epoch_generator(self.seed + 7919 * (self.rank + 1), self.epoch, self.device)
        for step in range(len(self)):
            start = (step * self.world_size + self.rank) * self.batch_size
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            if self.augment.active:
                x = self.augment(x, generator)
            x = normalize(x, self._mean_t, self._std_t, self.dtype)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]


def numpy_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, rng: np.random.Generator):
    """The same idea in plain NumPy, for phase 1's NumPy-only network."""
    order = rng.permutation(len(images))
    for start in range(0, len(images), batch_size):
        idx = order[start:start + batch_size]
        yield images[idx], labels[idx]
