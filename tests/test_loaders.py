"""The tensor-resident loader and batch augmentation: shapes, ranges, equivalence, reproducibility."""

from __future__ import annotations

import pytest
import torch

from common.augment import (BatchAugment, crop_with_offsets, crop_with_offsets_loop, cutout, normalize,
                            random_flip, random_offsets)
from common.data import Split
from common.loaders import ImageTensorDataset, TensorLoader, classic_loader

pytestmark = pytest.mark.foundation


def make_split(n=100, c=3, h=32, w=32, seed=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8), torch.arange(n) % 10)


def test_vectorised_crop_equals_the_plain_loop():
    batch = make_split(37).images
    g = torch.Generator().manual_seed(3)
    dy, dx = random_offsets(len(batch), 4, g, "cpu")
    assert torch.equal(crop_with_offsets(batch, 4, dy, dx), crop_with_offsets_loop(batch, 4, dy, dx))


def test_crop_offsets_cover_the_whole_range_and_pad_with_zeros():
    g = torch.Generator().manual_seed(0)
    dy, dx = random_offsets(5000, 4, g, "cpu")
    assert set(dy.tolist()) == set(range(9)) and set(dx.tolist()) == set(range(9))
    ones = torch.full((1, 1, 8, 8), 255, dtype=torch.uint8)
    shifted = crop_with_offsets(ones, 4, torch.tensor([0]), torch.tensor([0]))  # window at the top-left
    assert shifted[0, 0, :4].eq(0).all() and shifted[0, 0, 4:, 4:].eq(255).all()


def test_flip_mirrors_about_half_the_batch():
    batch = make_split(2000, c=1, h=4, w=4).images
    out = random_flip(batch, torch.Generator().manual_seed(0))
    flipped = (out == batch.flip(3)).flatten(1).all(1) & ~(out == batch).flatten(1).all(1)
    unchanged = (out == batch).flatten(1).all(1)
    assert bool((flipped | unchanged).all())
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_cutout_zeroes_one_square_at_most():
    batch = torch.full((200, 3, 32, 32), 7, dtype=torch.uint8)
    out = cutout(batch, 8, torch.Generator().manual_seed(0))
    zeros_per_image = (out[:, 0] == 0).flatten(1).sum(1)
    assert zeros_per_image.max().item() == 64 and zeros_per_image.min().item() >= 16  # clipped at corners
    assert torch.equal(out[:, 0] == 0, out[:, 2] == 0)  # same square in every channel


def test_normalize_matches_totensor_then_normalize():
    from torchvision import transforms

    split = make_split(4)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    ds = ImageTensorDataset(split, transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)]))
    expected = torch.stack([ds[i][0] for i in range(4)])
    assert torch.allclose(normalize(split.images, mean, std), expected, atol=1e-6)


def test_loader_shapes_ranges_and_coverage():
    split = make_split(103)
    loader = TensorLoader(split, 16, mean=(0.5,) * 3, std=(0.25,) * 3,
                          augment=BatchAugment(crop_pad=4, flip=True, cutout_size=8), seed=1)
    batches = list(loader)
    assert len(loader) == len(batches) == 7 and batches[-1][0].shape == (7, 3, 32, 32)
    x, y = batches[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-6 and x.max() <= (1 - 0.5) / 0.25 + 1e-6
    labels = torch.cat([b[1] for b in batches])
    assert sorted(labels.tolist()) == sorted(split.labels.tolist()), "every example once per epoch"
    assert len(TensorLoader(split, 16, mean=(0.5,) * 3, std=(0.25,) * 3, drop_last=True)) == 6


def test_loader_is_reproducible_per_seed_and_epoch():
    split = make_split(64)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, augment=BatchAugment(crop_pad=4, flip=True))

    def epoch_batches(seed, epoch):
        loader = TensorLoader(split, 16, seed=seed, **kw)
        loader.set_epoch(epoch)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(epoch_batches(0, 3), epoch_batches(0, 3))
    assert not torch.equal(epoch_batches(0, 3), epoch_batches(0, 4))
    assert not torch.equal(epoch_batches(0, 3), epoch_batches(1, 3))


def test_unshuffled_loader_keeps_order_and_channels_last():
    split = make_split(10)
    loader = TensorLoader(split, 4, mean=(0.0,) * 3, std=(1.0,) * 3, shuffle=False, channels_last=True)
    x, y = next(iter(loader))
    assert y.tolist() == [0, 1, 2, 3] and x.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="mean/std"):
        TensorLoader(split, 4, mean=(0.5,), std=(0.5,))


def test_classic_loader_shuffle_is_resumable():
    from torchvision import transforms

    ds = ImageTensorDataset(make_split(30, c=1, h=28, w=28), transforms.ToTensor())
    order = []
    for _ in range(2):
        loader = classic_loader(ds, 10, seed=5)
        loader.sampler.set_epoch(2)
        order.append(torch.cat([y for _, y in loader]).tolist())
    assert order[0] == order[1] and sorted(order[0]) == sorted(ds.labels)
