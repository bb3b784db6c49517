"""p2-data (days 21-25): normalisation, augmentation, and a train/validation/test split.

What to take from it:

1. **Normalise with the training split's statistics.**  The per-channel mean
   and std are computed here from the 45,000 training images and printed next
   to the values everyone copies (0.4914, 0.4822, 0.4465 / 0.2470, 0.2435, 0.2616).
2. **A seeded, stratified split.**  5,000 of the 50,000 official training
   images become the validation set, 500 per class, the same 5,000 on every
   run with the same seed.  The test set is not touched until the very end.
3. **Augmentation**: a random 32x32 crop from the image padded by 4 pixels,
   a horizontal flip with probability 1/2, and (optionally) cutout.  Every
   epoch the network sees a slightly different version of each image, so
   memorising pixels stops working.  ``augmentations.png`` shows what it sees.
4. **Two pipelines, one distribution.**  torchvision's ``transforms.v2``
   augments one image at a time; the fast path (``random_crop`` and
   ``random_flip`` in :mod:`phase2_depth.data`) does a whole batch at once.
   Their outputs have the same statistics (measured here, asserted in the
   tests), and the fast one is much quicker.

Run: ``make p2-data``.  Writes ``runs/p2-data/``: ``metrics.json``, ``augmentations.png``.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from common.augment import normalize
from common.data import PUBLISHED_STATS
from common.plots import image_grid
from common.script import finish_run, is_full_real_run, milestone_parser, start_run
from phase2_depth.data import AUGMENT, AUGMENT_CUTOUT, add_dataset_argument, cifar_splits

MILESTONE = "p2-data"
PIPELINE_TOLERANCE = 0.02      # per-channel mean/std of augmented, normalised batches
PADDED_TOLERANCE = 0.01        # share of pixels that came from the zero padding


def torchvision_pipeline(mean, std):
    """The classic per-image pipeline, as transforms.v2 on uint8 tensors."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])


def augmented_statistics(batch: torch.Tensor, mean, std) -> dict:
    """Per-channel mean/std of a normalised augmented batch, and the share of padding pixels."""
    pad_value = torch.tensor([-m / s for m, s in zip(mean, std)]).view(1, -1, 1, 1)
    padded = torch.isclose(batch, pad_value, atol=1e-5).all(dim=1).float().mean().item()
    return {"mean": batch.mean(dim=(0, 2, 3)).tolist(), "std": batch.std(dim=(0, 2, 3)).tolist(),
            "padded_share": padded}


def compare_pipelines(images: torch.Tensor, mean, std, repeats: int, seed: int) -> dict:
    """Augment the same images with both pipelines and compare what comes out."""
    torch.manual_seed(seed)
    tv = torchvision_pipeline(mean, std)
    start = time.perf_counter()
    tv_out = torch.cat([torch.stack([tv(img) for img in images]) for _ in range(repeats)])
    tv_s = time.perf_counter() - start
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    fast_out = torch.cat([normalize(AUGMENT(images, g), mean, std) for _ in range(repeats)])
    fast_s = time.perf_counter() - start
    a, b = augmented_statistics(tv_out, mean, std), augmented_statistics(fast_out, mean, std)
    n = len(images) * repeats
    return {"images": n, "torchvision": a, "fast": b,
            "max_mean_diff": max(abs(x - y) for x, y in zip(a["mean"], b["mean"])),
            "max_std_diff": max(abs(x - y) for x, y in zip(a["std"], b["std"])),
            "padded_share_diff": abs(a["padded_share"] - b["padded_share"]),
            "torchvision_images_per_s": n / tv_s, "fast_images_per_s": n / fast_s}


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    add_dataset_argument(parser)
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    print(__doc__.split("\n\n")[0])
    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset)
    nc = len(splits.classes)

    print("\n-- 1. Per-channel statistics of the training split (0..1 scale) --")
    published_mean, published_std = PUBLISHED_STATS["cifar10"]
    for c, channel in enumerate("RGB"):
        print(f"  {channel}: mean {splits.mean[c]:.4f} (published {published_mean[c]:.4f}), "
              f"std {splits.std[c]:.4f} (published {published_std[c]:.4f})")

    print("\n-- 2. The split (seeded, stratified) --")
    counts = {name: s.class_counts(nc) for name, s in (("train", splits.train), ("val", splits.val),
                                                       ("test", splits.test))}
    for name, c in counts.items():
        print(f"  {name:<5} {sum(c):>6,} images; per class {min(c):,}-{max(c):,}")
    overlap = len(set(map(bytes, splits.val.images[:200].numpy())) & set(map(bytes, splits.train.images.numpy())))

    print("\n-- 3. What augmentation shows the network (augmentations.png) --")
    g = torch.Generator().manual_seed(args.seed)
    picks = torch.stack([(splits.train.labels == k).nonzero()[0, 0] for k in range(min(nc, 8))])
    originals = splits.train.images[picks]
    rows = [originals] + [AUGMENT(originals, g) for _ in range(4)] + [AUGMENT_CUTOUT(originals, g)]
    grid = torch.stack(rows, dim=1).reshape(-1, *originals.shape[1:])
    titles = [("original " if i == 0 else ("cutout" if i == 5 else f"augmented {i}")) + (
        f"\n{splits.classes[int(splits.train.labels[p])]}" if i == 0 else "")
        for p in picks for i in range(6)]
    image_grid(grid.numpy(), titles, run_dir / "augmentations.png", columns=6,
               title="Random crop (pad 4) + flip; last column adds cutout")

    print("\n-- 4. transforms.v2 (one image at a time) vs the batched fast path --")
    sample = splits.train.subset(500 if args.quick else 2000, seed=args.seed).images
    comparison = compare_pipelines(sample, splits.mean, splits.std, repeats=2 if args.quick else 5, seed=args.seed)
    for name in ("torchvision", "fast"):
        s = comparison[name]
        print(f"  {name:<11} mean {np.round(s['mean'], 4).tolist()} std {np.round(s['std'], 4).tolist()} "
              f"padding {100 * s['padded_share']:.2f}% of pixels; "
              f"{comparison[name + '_images_per_s']:,.0f} images/s")
    print(f"  largest difference: mean {comparison['max_mean_diff']:.4f}, std {comparison['max_std_diff']:.4f}, "
          f"padding share {comparison['padded_share_diff']:.4f}")

    label = "" if splits.dataset.real else " (stand-in data)"
    speedup = comparison["fast_images_per_s"] / comparison["torchvision_images_per_s"]
    print(f"\nResult: {len(splits.train):,}/{len(splits.val):,}/{len(splits.test):,} split, same augmented "
          f"statistics from both pipelines, the batched one {speedup:.0f}x faster.")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "split", "value": [len(splits.train), len(splits.val), len(splits.test)],
                                  "display": f"{len(splits.train):,}/{len(splits.val):,}/{len(splits.test):,} split; "
                                             f"pipelines agree, batched {speedup:.0f}x faster{label}"},
                      data=splits.dataset.provenance(), mean=list(splits.mean), std=list(splits.std),
                      published_mean=list(published_mean), published_std=list(published_std),
                      class_counts=counts, val_train_overlap_in_sample=overlap, pipelines=comparison)


def check(metrics: dict) -> list[str]:
    problems = []
    counts = metrics.get("class_counts", {})
    val, train = counts.get("val", []), counts.get("train", [])
    if not val or max(val) - min(val) > 1:
        problems.append(f"validation split is not stratified: {val}")
    if is_full_real_run(metrics):
        if sum(val) != 5000 or sum(train) != 45000:
            problems.append(f"split is {sum(train)}/{sum(val)}, expected 45000/5000")
        if max(abs(a - b) for a, b in zip(metrics["mean"], metrics["published_mean"])) > 0.01:
            problems.append("training-split mean is far from the published CIFAR-10 mean")
    if metrics.get("val_train_overlap_in_sample", 1) != 0:
        problems.append("validation images also appear in the training split")
    p = metrics.get("pipelines", {})
    if not (p.get("max_mean_diff", 1) < PIPELINE_TOLERANCE and p.get("max_std_diff", 1) < PIPELINE_TOLERANCE
            and p.get("padded_share_diff", 1) < PADDED_TOLERANCE):
        problems.append("transforms.v2 and the fast pipeline give different statistics")
    return problems


if __name__ == "__main__":
    main()
