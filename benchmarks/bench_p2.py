"""Phase 2 benchmark: CIFAR-10 training throughput, classic input pipeline vs the fast path.

Both train the same 5-layer CNN (p2-cnn's recipe for the device: the medium
network on a CPU, the wide one on a GPU) with the same optimiser, batch size,
precision and memory format.  Only the input pipeline differs:

* **classic**: ``torchvision.datasets.ImageFolder`` over the JPEG files, PIL
  decoding, ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip`` +
  ``ToTensor`` + ``Normalize`` per image, ``DataLoader`` with worker
  processes (``pin_memory`` on a GPU) - what most tutorials write.
* **fast**: the decoded training set as one uint8 tensor on the device,
  crop/flip/normalise applied to whole batches there (``TensorLoader``).

Every round times ``--steps`` training steps of each, interleaved, after a
warm-up; the figure is training images per second, and the ratio is the
median of the per-round ratios.  To show *where the time goes*, the same
rounds also time each pipeline's data alone (batches produced and moved to the
device, no model) and the model alone (one batch reused, no input pipeline).

Run: ``make bench-p2`` (``DEVICE=cuda`` on a GPU).  Writes
``benchmarks/results/bench_p2_<device>.json`` (``..._quick.json`` in quick mode).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchmark import compare, environment_stamp, save_result, usable_cores  # noqa: E402
from common.data import extract_archive  # noqa: E402
from common.device import autocast_dtype, resolve_device  # noqa: E402
from phase2_depth.data import AUGMENT, cifar_splits  # noqa: E402
from phase2_depth.p2_cnn import RECIPES, build_model  # noqa: E402


def image_folder_train_root(data_dir: str | Path | None, splits, quick: bool) -> tuple[Path, str]:
    """The JPEG tree the classic path reads: the real one, or (quick mode) the stand-in written as PNGs."""
    from common.data import default_data_dir

    root = Path(data_dir) if data_dir else default_data_dir()
    for folder in (root / "cifar10-jpeg", root / "cifar10"):
        if (folder / "train").is_dir():
            return folder / "train", f"image folder {folder / 'train'}"
    if (root / "cifar10-jpeg.tar.gz").is_file():
        folder = extract_archive(root / "cifar10-jpeg.tar.gz")
        return folder / "train", f"image folder {folder / 'train'} (extracted from the archive)"
    if not quick:
        raise SystemExit(f"the classic pipeline reads image files: no cifar10-jpeg/train or cifar10-jpeg.tar.gz "
                         f"in {root} (pass --data-dir)")
    from PIL import Image

    scratch = Path(tempfile.mkdtemp(prefix="ml60-bench-p2-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    folder = scratch / "train"
    for i, (image, label) in enumerate(zip(splits.train.images.numpy(), splits.train.labels.tolist())):
        (folder / splits.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / splits.classes[label] / f"{i:05d}.png")
    return folder, f"the quick stand-in written as {len(splits.train.labels)} PNG files in {folder}"


def classic_loader(train_root: Path, batch_size: int, mean, std, workers: int, pin: bool, seed: int):
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(mean, std)])
    dataset = datasets.ImageFolder(str(train_root), transform=transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      pin_memory=pin, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def endless(loader):
    """Batches forever, epoch after epoch (the loader reshuffles each time)."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


class TrainSteps:
    """``steps`` SGD steps per call, reading batches from ``batches``; waits for the device at the end."""

    def __init__(self, model, batches, device, steps: int, channels_last: bool):
        self.model, self.batches, self.device, self.steps = model, batches, device, steps
        self.channels_last = channels_last
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.amp = autocast_dtype(device, "auto")

    def batch(self):
        x, y = next(self.batches)
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def step(self, x, y):
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            loss = self.criterion(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def __call__(self):
        for _ in range(self.steps):
            self.step(*self.batch())
        sync(self.device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tune_model_step(recipe: dict, splits, device, *, rounds: int, steps: int) -> dict:
    """Where the CPU's training step can still be won: memory format, batch size, threads (model only).

    Each variant trains its own copy of the network on a fixed batch, interleaved in rounds;
    the figure is training images per second.
    """
    from common.benchmark import torch_threads

    def variant(batch_size: int, channels_last: bool, threads: int | None):
        torch.manual_seed(0)
        model = build_model(recipe, num_classes=len(splits.classes)).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loader, _, _ = splits.loaders(batch_size, device=device, augment=AUGMENT, channels_last=channels_last)
        trainer = TrainSteps(model, endless(loader), device, steps, channels_last=channels_last)
        x, y = trainer.batch()

        def run():
            with torch_threads(threads):
                for _ in range(steps):
                    trainer.step(x, y)
                sync(device)
        return run, batch_size

    base = recipe["batch_size"]
    variants = {f"batch {base}, channels_last": variant(base, True, None),
                f"batch {base}, NCHW": variant(base, False, None),
                f"batch {base // 2}, channels_last": variant(base // 2, True, None),
                f"batch {base * 2}, channels_last": variant(base * 2, True, None),
                f"batch {base}, channels_last, 1 thread": variant(base, True, 1)}
    result = compare({name: run for name, (run, _) in variants.items()}, rounds=rounds, repeats=1, warmup=1)
    table = {name: steps * batch / (result.stats[name].p50_ms / 1000) for name, (_, batch) in variants.items()}
    print(f"\nModel step, images/s (median of {rounds} rounds; threads: {torch.get_num_threads()} unless stated):")
    for name, value in table.items():
        print(f"  {name:<34} {value:10,.0f}")
    return {"images_per_s_median": table, "comparison": result.to_dict()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, mps (default: $ML60_DEVICE, else auto)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="training steps per timed call (default: 40 GPU, 8 CPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="classic DataLoader worker processes (default: min(8, cores) on a GPU, cores-1 on a CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the device's p2-cnn recipe")
    parser.add_argument("--tune", action="store_true",
                        help="also time the model step under memory formats, batch sizes and thread counts "
                             "(on by default on a CPU)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="stand-in or 2,000 real images, tiny model, 1 round")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    cores = usable_cores()
    recipe = dict(RECIPES["quick" if args.quick else ("gpu" if cuda else "cpu")])
    batch_size = args.batch_size or recipe["batch_size"]
    steps = args.steps or (2 if args.quick else (40 if cuda else 8))
    rounds = 1 if args.quick else args.rounds
    workers = args.workers if args.workers is not None else (min(8, cores) if cuda else max(0, cores - 1))

    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, subset=(2000, 500, 500) if args.quick else None)
    train_root, classic_source = image_folder_train_root(args.data_dir, splits, args.quick)
    print(f"[bench-p2] {device}, batch {batch_size}, {steps} steps per call, {rounds} rounds, "
          f"classic reads {classic_source} with {workers} workers")

    torch.manual_seed(0)
    model = build_model(recipe, num_classes=len(splits.classes)).to(device).to(memory_format=torch.channels_last)
    classic = endless(classic_loader(train_root, batch_size, splits.mean, splits.std, workers, cuda, seed=0))
    fast_loader, _, _ = splits.loaders(batch_size, device=device, augment=AUGMENT, channels_last=True)
    fast = endless(fast_loader)
    train_classic = TrainSteps(model, classic, device, steps, channels_last=True)
    train_fast = TrainSteps(model, fast, device, steps, channels_last=True)
    fixed = train_fast.batch()

    def data_only(trainer):
        def run():
            for _ in range(steps):
                trainer.batch()
            sync(device)
        return run

    def model_only():
        for _ in range(steps):
            train_fast.step(*fixed)
        sync(device)

    candidates = {"classic": train_classic, "fast": train_fast, "classic_data_only": data_only(train_classic),
                  "fast_data_only": data_only(train_fast), "model_only": model_only}
    start = time.perf_counter()
    result = compare(candidates, rounds=rounds, repeats=1, warmup=1)
    images = steps * batch_size
    throughput = {n: images / (s.p50_ms / 1000) for n, s in result.stats.items()}
    speedup = result.speedup("classic", "fast")
    ratios = result.ratios("classic", "fast")
    summary = {
        "device": str(device), "batch_size": batch_size, "steps_per_call": steps, "rounds": rounds,
        "workers": workers, "model_widths": recipe["widths"], "channels_last": True,
        "precision": str(train_fast.amp or torch.float32), "quick": args.quick, "real_data": splits.dataset.real,
        "classic_source": classic_source,
        "images_per_s_median": throughput, "fast_vs_classic_median_of_rounds": speedup,
        "fast_vs_classic_per_round": ratios, "comparison": result.to_dict(),
        "where_time_goes": {"classic_data_share": throughput["classic"] / throughput["classic_data_only"],
                            "fast_data_share": throughput["fast"] / throughput["fast_data_only"],
                            "model_share_of_classic": throughput["classic"] / throughput["model_only"]},
    }
    if args.tune or (device.type == "cpu" and not args.quick):
        summary["model_step_tuning"] = tune_model_step(recipe, splits, device, rounds=rounds, steps=steps)
    name = f"bench_p2_{device.type}" + ("_quick" if args.quick else "")
    path = save_result(name, summary, directory=args.results_dir)
    print(f"\nTraining images/s (median of {rounds} rounds, {time.perf_counter() - start:.0f} s in all):")
    for n, v in throughput.items():
        print(f"  {n:<18} {v:12,.0f}")
    print(f"fast / classic: {speedup:.2f}x (per round {', '.join(f'{r:.2f}' for r in ratios)}). "
          f"The classic step spends ~{100 * summary['where_time_goes']['classic_data_share']:.0f}% of its time "
          f"waiting for data; the model alone runs at {throughput['model_only']:,.0f} images/s.")
    print(f"{environment_stamp()['cpu']}; wrote {path}")
    return summary


if __name__ == "__main__":
    main()
