"""Checks for p2-data's exercises (``make check M=p2-data``), and the mistakes they must catch.

Every expected value here is computed independently of the code under test:
by NumPy on the same pixels, by counting labels, or by cutting the windows
and mirrors with plain tensor slicing.  The code under test may be a
learner's, or a stub.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ml60.grading import exercise, expect, wrong_answer
from phase2_depth import data

# --------------------------------------------------------------------------- p2-data.1 the split

CLASS_SIZES = (500, 300, 200)      # unequal on purpose: a stratified split keeps 50% / 30% / 20%
VAL_SIZE = 100


def unbalanced_labels() -> torch.Tensor:
    """1,000 labels of 3 classes (500/300/200), in a fixed shuffled order."""
    labels = np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES)
    return torch.from_numpy(np.random.default_rng(0).permutation(labels))


def split_sets(labels: torch.Tensor, seed: int) -> tuple[set[int], set[int], list[int], list[int]]:
    """Call the split; its two parts as sets and as lists (to find repeats), shapes pre-checked."""
    result = data.stratified_split(labels, VAL_SIZE, seed)
    expect(isinstance(result, tuple) and len(result) == 2,
           f"stratified_split should return (train_idx, val_idx), got {type(result).__name__}")
    train, val = ([int(i) for i in np.asarray(part).ravel()] for part in result)
    return set(train), set(val), train, val


@exercise("p2-data.1")
def test_split_covers_every_index_once():
    labels = unbalanced_labels()
    train, val, train_list, val_list = split_sets(labels, seed=0)
    expect(len(val_list) == VAL_SIZE, f"val_size={VAL_SIZE} but the validation part has {len(val_list)} indices")
    both = train & val
    expect(not both, f"{len(both)} indices are in both train and validation (e.g. {sorted(both)[:5]}): "
                     "an image the weights learned from cannot measure how they do on new ones; "
                     "training keeps only the indices validation did not take")
    expect(len(train_list) == len(train) and len(val_list) == len(val), "an index appears twice within one part")
    missing = set(range(len(labels))) - train - val
    expect(not missing, f"{len(missing)} of {len(labels)} indices are in neither part: "
                        "every image goes to train or to validation")


@exercise("p2-data.1")
def test_split_is_stratified():
    labels = unbalanced_labels()
    for seed in (0, 1, 2):
        _, val, _, _ = split_sets(labels, seed)
        counts = np.bincount(labels[sorted(val)].numpy(), minlength=len(CLASS_SIZES)).tolist()
        wanted = [VAL_SIZE * n // sum(CLASS_SIZES) for n in CLASS_SIZES]
        expect(all(abs(c - w) <= 1 for c, w in zip(counts, wanted)),
               f"with seed {seed} the validation part has {counts} images of classes 0/1/2, but the classes "
               f"are {list(CLASS_SIZES)} of 1,000, so {wanted} of {VAL_SIZE}: the split is not stratified. "
               "Take each class's share from that class")


@exercise("p2-data.1")
def test_split_follows_the_seed():
    labels = unbalanced_labels()
    _, val_a, _, _ = split_sets(labels, seed=3)
    _, val_b, _, _ = split_sets(labels, seed=3)
    expect(val_a == val_b, "two calls with seed 3 chose different validation images: draw the shuffle from "
                           "a generator seeded with seed, so every run compares models on the same images")
    _, val_c, _, _ = split_sets(labels, seed=4)
    expect(val_a != val_c, "the split does not change with the seed (seeds 3 and 4 give the same validation "
                           "images): is it a head/tail cut of an unshuffled list? Files are often in class "
                           "or time order; shuffle (with the seed) before choosing")


@wrong_answer("p2-data.1", diagnosis="does not change with the seed")
def split_head_tail(labels, val_size, seed=0):
    """The last val_size indices become validation: no shuffle, so the seed changes nothing."""
    idx = np.arange(len(labels))
    return idx[:-val_size], idx[-val_size:]


@wrong_answer("p2-data.1", diagnosis="not stratified")
def split_unstratified(labels, val_size, seed=0):
    """A seeded random split of all indices, blind to the classes."""
    order = np.random.default_rng(seed).permutation(len(labels))
    return np.sort(order[val_size:]), np.sort(order[:val_size])


@wrong_answer("p2-data.1", diagnosis="in both train and validation")
def split_val_inside_train(labels, val_size, seed=0):
    """Validation is drawn stratified, but training keeps every index, validation's included."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    val = []
    for k in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == k))
        val.extend(members[:round(val_size * len(members) / len(labels))])
    return np.arange(len(labels)), np.sort(val)


# --------------------------------------------------------------------------- p2-data.2 channel statistics


def brightness_varying_images() -> torch.Tensor:
    """12 images (3 x 5 x 5): each channel has its own level, and images differ in brightness."""
    rng = np.random.default_rng(7)
    base = np.array([200.0, 120.0, 40.0])[None, :, None, None]
    per_image = rng.uniform(-35, 35, (12, 1, 1, 1))          # darker and brighter images
    noise = rng.normal(0, 8, (12, 3, 5, 5))
    return torch.from_numpy(np.clip(base + per_image + noise, 0, 255).round().astype(np.uint8))


@exercise("p2-data.2")
def test_channel_stats_match_numpy():
    images = brightness_varying_images()
    result = data.channel_stats(images)
    expect(isinstance(result, (tuple, list)) and len(result) == 2,
           f"channel_stats should return (mean, std), got {type(result).__name__}")
    mean, std = (np.asarray(v, dtype=np.float64).ravel() for v in result)
    pixels = images.numpy().astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    want_mean = pixels.mean(axis=1)
    expect(mean.shape == (3,) and std.shape == (3,),
           f"3-channel images should give 3 means and 3 stds, got {mean.size} and {std.size}: one number "
           "per channel, each over all N x H x W values of that channel")
    if np.allclose(mean, want_mean * 255, rtol=1e-6):
        expect(False, f"the means are {np.round(mean, 2).tolist()}, 255 times the expected "
                      f"{np.round(want_mean, 4).tolist()}: the statistics are on the 0..255 scale; "
                      "divide by 255 first (normalisation scales to 0..1 before subtracting the mean)")
    expect(np.allclose(mean, want_mean, atol=1e-9),
           f"means {np.round(mean, 4).tolist()}, expected {np.round(want_mean, 4).tolist()}: "
           "average each channel over the batch, height and width axes together")
    sample, population = pixels.std(axis=1, ddof=1), pixels.std(axis=1)
    per_image = (images.numpy().astype(np.float64) / 255.0).std(axis=(2, 3), ddof=1).mean(axis=0)
    if np.allclose(std, per_image, atol=1e-6):
        expect(False, f"the stds {np.round(std, 4).tolist()} are each image's own std averaged per-image "
                      f"over the batch; the channel's std over all its pixels is {np.round(sample, 4).tolist()}: "
                      "the brightness differences between images are part of what normalisation must scale")
    expect(np.allclose(std, sample, atol=1e-9) or np.allclose(std, population, atol=1e-9),
           f"stds {np.round(std, 4).tolist()}, expected {np.round(sample, 4).tolist()}: the std of each "
           "channel over all N x H x W of its values (0..1 scale)")


@exercise("p2-data.2")
def test_channel_stats_of_known_images():
    images = torch.zeros(4, 2, 3, 3, dtype=torch.uint8)
    images[:2, 0] = 255                      # channel 0: half the images white, half black
    images[:, 1] = 51                        # channel 1: constant 0.2
    result = data.channel_stats(images)
    mean, std = (np.asarray(v, dtype=np.float64).ravel() for v in result)
    expect(mean.shape == (2,), f"2-channel images should give 2 means, got {mean.size}: one per channel")
    expect(np.allclose(mean, [0.5, 0.2]) and abs(std[1]) < 1e-12,
           f"channel 0 is half white and half black (mean 0.5), channel 1 a constant 0.2 (std 0); got means "
           f"{np.round(mean, 4).tolist()} and stds {np.round(std, 4).tolist()}")
    expect(std[0] > 0.45, f"channel 0 holds 0s and 1s in equal numbers, so its std is about 0.5, got "
                          f"{std[0]:.4f}: take the std over the images too, not per image (each image alone "
                          "is constant there)")


@wrong_answer("p2-data.2", diagnosis="0..255 scale")
def stats_on_byte_scale(images):
    """The mean and std of the raw bytes, 0..255, while normalisation works on 0..1."""
    x = images.to(torch.float64)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).tolist())


@wrong_answer("p2-data.2", diagnosis="averaged per-image")
def stats_per_image_then_averaged(images):
    """Each image's own mean and std, averaged over the batch: the std misses the spread between images."""
    x = images.to(torch.float64) / 255.0
    return tuple(x.mean(dim=(2, 3)).mean(0).tolist()), tuple(x.std(dim=(2, 3)).mean(0).tolist())


@wrong_answer("p2-data.2", diagnosis="one number per channel")
def stats_over_everything(images):
    """One mean and one std over all channels together, repeated per channel."""
    x = images.to(torch.float64) / 255.0
    return (x.mean().item(),), (x.std().item(),)


# --------------------------------------------------------------------------- p2-data.3 random crop

PAD = 2


def distinct_images(n: int, seed: int, dtype=torch.uint8) -> torch.Tensor:
    """``n`` random 3 x 6 x 6 images with no zero pixel, so zero padding is recognisable."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, 3, 6, 6), generator=g, dtype=torch.uint8).to(dtype)


def crop_offsets(batch: torch.Tensor, out: torch.Tensor, pad: int) -> torch.Tensor:
    """For each output image, the (dy, dx) of the zero-padded window it equals; (-1, -1) where none does."""
    _, _, h, w = batch.shape
    padded = F.pad(batch, (pad, pad, pad, pad))
    offsets = torch.full((len(batch), 2), -1)
    for y in range(2 * pad + 1):
        for x in range(2 * pad + 1):
            match = (padded[:, :, y:y + h, x:x + w] == out).flatten(1).all(1)
            offsets[match] = torch.tensor([y, x])
    return offsets


def cropped(batch: torch.Tensor, pad: int, seed: int) -> torch.Tensor:
    out = data.random_crop(batch, pad, torch.Generator().manual_seed(seed))
    expect(isinstance(out, torch.Tensor) and out.shape == batch.shape,
           f"a crop of a {tuple(batch.shape)} batch should have the same shape, got "
           f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}: pad by pad, then cut "
           "an H x W window from each image")
    expect(out.dtype == batch.dtype, f"a {batch.dtype} batch came back as {out.dtype}: crop the pixels as they are")
    return out


@exercise("p2-data.3")
def test_every_crop_is_a_window_of_the_zero_padded_image():
    for dtype in (torch.uint8, torch.float32):
        batch = distinct_images(64, seed=1, dtype=dtype)
        offsets = crop_offsets(batch, cropped(batch, PAD, seed=0), PAD)
        lost = (offsets[:, 0] < 0).nonzero().flatten().tolist()
        expect(not lost, f"{len(lost)} of 64 {dtype} images (e.g. image {lost[:1]}) are not an H x W window of "
                         f"the image zero-padded by {PAD} on every side: F.pad(batch, (pad, pad, pad, pad)), then "
                         "rows dy .. dy+H-1 and columns dx .. dx+W-1 of the padded image, dy and dx in 0..2*pad")


@exercise("p2-data.3")
def test_each_image_gets_its_own_offset_over_the_whole_range():
    batch = distinct_images(200, seed=2)
    offsets = crop_offsets(batch, cropped(batch, PAD, seed=3), PAD)
    expect((offsets >= 0).all(), "some crops are not windows of the zero-padded image (see the other check)")
    distinct = len({tuple(o) for o in offsets.tolist()})
    expect(distinct > 1, f"every image got the same crop (offset {offsets[0].tolist()}): draw one offset per "
                         "image (len(batch) of them), not one for the whole batch")
    for axis, name in ((0, "row"), (1, "column")):
        counts = torch.bincount(offsets[:, axis], minlength=2 * PAD + 1).tolist()
        expect(counts[2 * PAD] > 0 or max(o for o, c in enumerate(counts) if c) != 2 * PAD - 1,
               f"{name} offsets over 200 images: {counts} for 0..{2 * PAD}; offset 2*pad = {2 * PAD} is never "
               "drawn: torch.randint's upper bound is excluded, so it is randint(0, 2 * pad + 1, ...)")
        expect(min(counts) > 200 / (2 * PAD + 1) / 3,
               f"{name} offsets over 200 images: {counts} for 0..{2 * PAD}, far from uniform: draw each offset "
               "uniformly from 0..2*pad")


@exercise("p2-data.3")
def test_crop_draws_from_the_generator_given():
    batch = distinct_images(32, seed=4)
    torch.manual_seed(1)
    first = cropped(batch, PAD, seed=5)
    torch.manual_seed(2)
    second = cropped(batch, PAD, seed=5)
    expect(torch.equal(first, second), "two calls with generators seeded alike gave different crops: draw the "
                                       "offsets from generator (generator=generator), not from torch's global "
                                       "random state, so a run can be repeated and resumed")
    expect(not torch.equal(first, cropped(batch, PAD, seed=6)),
           "generators with different seeds gave the same crops: the offsets must be random")


@wrong_answer("p2-data.3", diagnosis="every image got the same crop")
def crop_one_offset_for_the_batch(batch, pad, generator):
    """One offset drawn for the whole batch: every image shifted the same way."""
    _, _, h, w = batch.shape
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator))
    return F.pad(batch, (pad, pad, pad, pad))[:, :, dy:dy + h, dx:dx + w].clone()


@wrong_answer("p2-data.3", diagnosis="upper bound is excluded")
def crop_offsets_miss_the_last(batch, pad, generator):
    """randint(0, 2 * pad): the largest offset, 2 * pad, is never drawn, so crops lean up and left."""
    n, _, h, w = batch.shape
    dy = torch.randint(0, 2 * pad, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad, (n,), generator=generator)
    padded = F.pad(batch, (pad, pad, pad, pad))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


@wrong_answer("p2-data.3", diagnosis="not from torch's global")
def crop_ignores_the_generator(batch, pad, generator):
    """The offsets come from torch's global random state: the generator passed in is ignored."""
    n, _, h, w = batch.shape
    dy = torch.randint(0, 2 * pad + 1, (n,))
    dx = torch.randint(0, 2 * pad + 1, (n,))
    padded = F.pad(batch, (pad, pad, pad, pad))
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


# --------------------------------------------------------------------------- p2-data.4 horizontal flip


def flipped(batch: torch.Tensor, seed: int, p: float = 0.5) -> torch.Tensor:
    out = data.random_flip(batch, torch.Generator().manual_seed(seed), p)
    expect(isinstance(out, torch.Tensor) and out.shape == batch.shape and out.dtype == batch.dtype,
           f"a flip of a {tuple(batch.shape)} {batch.dtype} batch should keep its shape and dtype, got "
           f"{(tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out


def mirrored_mask(batch: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Which outputs are their input mirrored left-right; the check fails for any that is neither."""
    same = (out == batch).flatten(1).all(1)
    mirror = (out == torch.flip(batch, dims=[3])).flatten(1).all(1)
    other = ~(same | mirror)
    if other.any():
        i = int(other.nonzero()[0])
        upside_down = bool((out[i] == torch.flip(batch[i], dims=[1])).all())
        swapped = bool((out[i] == torch.flip(batch[i], dims=[0])).all())
        reason = (" it is upside down: that reverses H; a horizontal flip reverses the last axis, W" if upside_down
                  else " its colour channels are reversed (RGB -> BGR): reverse the last axis, W, not C" if swapped
                  else "")
        expect(False, f"{int(other.sum())} of {len(batch)} images are neither unchanged nor mirrored left-right "
                      f"(image {i}:{reason or ' something else'})")
    return mirror


@exercise("p2-data.4")
def test_flip_mirrors_about_half_the_images_each_on_its_own():
    batch = distinct_images(400, seed=8)
    mirror = mirrored_mask(batch, flipped(batch, seed=0))
    share = mirror.float().mean().item()
    expect(0.0 < share < 1.0, f"{100 * share:.0f}% of 400 images were mirrored: every image got the same "
                              "decision. Toss one coin per image (len(batch) random numbers), not one per batch")
    expect(0.4 < share < 0.6, f"{100 * share:.0f}% of 400 images were mirrored with p = 0.5: compare each "
                              "image's uniform number with p")


@exercise("p2-data.4")
def test_flip_follows_p_and_the_generator():
    batch = distinct_images(64, seed=9, dtype=torch.float32)
    expect(not mirrored_mask(batch, flipped(batch, seed=1, p=0.0)).any(), "with p = 0 some images were mirrored")
    expect(mirrored_mask(batch, flipped(batch, seed=1, p=1.0)).all(), "with p = 1 some images were not mirrored")
    torch.manual_seed(1)
    first = flipped(batch, seed=2)
    torch.manual_seed(2)
    expect(torch.equal(first, flipped(batch, seed=2)),
           "two calls with generators seeded alike flipped different images: draw the coins from generator")


@wrong_answer("p2-data.4", diagnosis="upside down")
def flip_vertically(batch, generator, p=0.5):
    """Reverses axis 2, the height: the images come out upside down."""
    flip = torch.rand(len(batch), generator=generator) < p
    return torch.where(flip[:, None, None, None], batch.flip(2), batch)


@wrong_answer("p2-data.4", diagnosis="every image got the same decision")
def flip_whole_batch(batch, generator, p=0.5):
    """One coin for the batch: all images flipped, or none."""
    return batch.flip(3) if torch.rand(1, generator=generator).item() < p else batch


@wrong_answer("p2-data.4", diagnosis="colour channels are reversed")
def flip_channels(batch, generator, p=0.5):
    """Reverses axis 1, taken for 'horizontal': red and blue swap places."""
    flip = torch.rand(len(batch), generator=generator) < p
    return torch.where(flip[:, None, None, None], batch.flip(1), batch)
