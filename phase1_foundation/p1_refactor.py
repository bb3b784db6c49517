"""p1-refactor (days 18-20): the same training as Dataset, DataLoader, Model and Trainer classes.

What to take from it:

1. **Four pieces, one job each.**  ``MNISTDataset`` answers "what is example
   i?"; ``DataLoader`` batches and shuffles; ``SimpleNet`` is the model;
   :class:`common.trainer.Trainer` owns the loop, the optimiser, checkpoints
   and history.  The loop you wrote in p1-train is still inside the Trainer,
   unchanged - it just stops being copied into every script.
2. **A refactor must not change the result.**  With the same seed and recipe,
   the classes reproduce p1-train's test accuracy (within 0.3 points: the
   shuffling order comes from a different random stream, nothing else).
3. **Then make it fast.**  Keep all 60,000 images as one uint8 tensor
   (:class:`common.loaders.TensorLoader`), take batches by indexing, normalise
   a whole batch at once, and give the fast path its own batch size and a
   one-cycle learning-rate schedule.  Same model, 98%+ in 10 epochs, in a
   fraction of the time (``make bench-p1`` measures by how much).

Run: ``make p1-refactor`` (after ``make p1-train``, whose accuracy it compares with).
Writes ``runs/p1-refactor/``: ``metrics.json``, ``fast_path.png``, and one
sub-folder per training run with its checkpoints and curves.
"""

from __future__ import annotations

import statistics

import torch
from torch.utils.data import Dataset
from torchvision import transforms

from common.augment import BatchAugment
from common.data import PUBLISHED_STATS, Split, load_dataset
from common.device import resolve_device
from common.loaders import TensorLoader, classic_loader
from common.plots import save
from common.runs import read_metrics, runs_root
from common.script import finish_run, is_full_real_run, milestone_parser, start_run
from common.trainer import TrainConfig, Trainer
from phase1_foundation.models import SimpleNet

MILESTONE = "p1-refactor"
REPRODUCE_TOLERANCE = 0.003      # 0.3 points of test accuracy
FAST_TARGET_ACCURACY = 0.980     # median of 3 seeds, at most 10 epochs, real MNIST
QUICK_TARGET_ACCURACY = 0.80
MNIST_MEAN, MNIST_STD = PUBLISHED_STATS["mnist"]  # what the seed recipe normalises with

# The fast path's own recipe: bigger batches (fewer, cheaper steps), a one-cycle
# schedule (warm up, then anneal to zero), and light translation augmentation
# so that the small MLP generalises a little better.
FAST_RECIPE = dict(batch_size=128, epochs=10, optimizer="adam", lr=3e-3, schedule="onecycle",
                   warmup_epochs=2.0, crop_pad=2)


class MNISTDataset(Dataset):
    """Example ``i`` of a split: the image through ``transform``, and its label.

    That is the whole Dataset protocol: ``__len__`` and ``__getitem__``.
    torchvision's ``MNIST`` class does exactly this after reading the files.
    """

    def __init__(self, split: Split, transform=None):
        self.images = split.images[:, 0].numpy()   # (N, 28, 28) uint8
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        image = Image.fromarray(self.images[i], mode="L")
        return (self.transform(image) if self.transform else image), self.labels[i]


def classic(data, args, device, run_dir) -> dict:
    """The p1-train recipe, rebuilt from the four classes."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])
    train, test = _splits(data, args)
    train_loader = classic_loader(MNISTDataset(train, transform), batch_size=64, shuffle=True, seed=args.seed)
    test_loader = classic_loader(MNISTDataset(test, transform), batch_size=1000, shuffle=False)
    torch.manual_seed(args.seed)
    model = SimpleNet()
    epochs = args.epochs or (2 if args.quick else 10)
    config = TrainConfig(epochs=epochs, optimizer="adam", lr=1e-3, seed=args.seed)
    # The seed recipe reports the test set after every epoch; phase 2 brings a proper validation split.
    trainer = Trainer(model, config, device=device, run_dir=run_dir / "classic")
    history = trainer.fit(train_loader, val_loader=test_loader)
    return {"test_accuracy": history[-1]["val_accuracy"], "epochs": epochs,
            "seconds": sum(h["seconds"] for h in history), "history": history}


def fast(data, args, device, run_dir, seed: int) -> dict:
    """Same model, tensor-resident data, and a recipe of its own."""
    recipe = FAST_RECIPE
    train, test = _splits(data, args)
    train_loader = TensorLoader(train, recipe["batch_size"], device=device, mean=MNIST_MEAN, std=MNIST_STD,
                                augment=BatchAugment(crop_pad=recipe["crop_pad"]), seed=seed)
    test_loader = TensorLoader(test, 2000, device=device, mean=MNIST_MEAN, std=MNIST_STD, shuffle=False)
    torch.manual_seed(seed)
    epochs = min(recipe["epochs"], args.epochs or recipe["epochs"])
    config = TrainConfig(epochs=epochs, optimizer=recipe["optimizer"], lr=recipe["lr"],
                         schedule=recipe["schedule"], warmup_epochs=min(recipe["warmup_epochs"], epochs / 3),
                         seed=seed)
    trainer = Trainer(SimpleNet(), config, device=device, run_dir=run_dir / f"fast-seed{seed}")
    history = trainer.fit(train_loader, val_loader=test_loader)
    return {"seed": seed, "test_accuracy": history[-1]["val_accuracy"], "epochs": epochs,
            "seconds": sum(h["seconds"] for h in history), "history": history}


def _splits(data, args) -> tuple[Split, Split]:
    if args.quick:
        return data.train.subset(6000, seed=args.seed), data.test.subset(2000, seed=args.seed)
    return data.train, data.test


def p1_train_accuracy(quick: bool) -> tuple[float | None, str]:
    """p1-train's recorded test accuracy, if it ran in the same mode."""
    path = runs_root() / "p1-train"
    try:
        metrics = read_metrics(path)
    except (OSError, ValueError):
        return None, f"no p1-train run in {path}/ (run `make p1-train` first)"
    if bool(metrics.get("quick")) != quick:
        return None, f"the p1-train run in {path}/ is a {'quick' if metrics.get('quick') else 'full'} run; run it in the same mode"
    return metrics.get("test_accuracy"), f"{path}/metrics.json"


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--epochs", type=int, default=None, help="classic recipe epochs (default 10; quick: 2)")
    parser.add_argument("--seeds", type=int, default=None, help="fast-path seeds (default 3; quick: 1)")
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    device = resolve_device(args.device)
    print(__doc__.split("\n\n")[0])
    data = load_dataset("mnist", data_dir=args.data_dir, quick=args.quick)

    print("\n-- 1. The p1-train recipe, rebuilt from Dataset, DataLoader, Model and Trainer --")
    classic_result = classic(data, args, device, run_dir)
    reference, reference_source = p1_train_accuracy(args.quick)
    difference = None if reference is None else classic_result["test_accuracy"] - reference
    if difference is None:
        print(f"  not compared with p1-train: {reference_source}")
    else:
        print(f"  refactored {100 * classic_result['test_accuracy']:.2f}% vs p1-train {100 * reference:.2f}%: "
              f"{100 * difference:+.2f} points (tolerance ±{100 * REPRODUCE_TOLERANCE:.1f})")

    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    print(f"\n-- 2. The fast path: tensor-resident data, batch {FAST_RECIPE['batch_size']}, "
          f"{FAST_RECIPE['schedule']} lr {FAST_RECIPE['lr']:g}, seeds {seeds} --")
    fast_runs = [fast(data, args, device, run_dir, seed) for seed in seeds]
    accuracies = [r["test_accuracy"] for r in fast_runs]
    median = statistics.median(accuracies)
    speedup = classic_result["seconds"] / classic_result["epochs"] / (
        statistics.median(r["seconds"] / r["epochs"] for r in fast_runs))
    print(f"  test accuracy per seed: {', '.join(f'{100 * a:.2f}%' for a in accuracies)}; median {100 * median:.2f}%")
    print(f"  seconds per epoch: classic {classic_result['seconds'] / classic_result['epochs']:.1f}s, "
          f"fast {fast_runs[0]['seconds'] / fast_runs[0]['epochs']:.2f}s ({speedup:.0f}x per epoch; "
          "time to accuracy: make bench-p1)")
    _plot(classic_result, fast_runs, run_dir / "fast_path.png")

    label = "" if data.real else " (stand-in data)"
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "fast_median_test_accuracy", "value": median,
                                  "display": f"fast path {100 * median:.2f}% median of {len(seeds)}{label}"},
                      data=data.provenance(), classic=classic_result,
                      reproduce={"p1_train_test_accuracy": reference, "source": reference_source,
                                 "refactor_test_accuracy": classic_result["test_accuracy"],
                                 "difference": difference, "tolerance": REPRODUCE_TOLERANCE},
                      fast={"recipe": FAST_RECIPE, "runs": fast_runs, "test_accuracies": accuracies,
                            "median_test_accuracy": median, "per_epoch_speedup": speedup})


def _plot(classic_result: dict, fast_runs: list[dict], path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    h = classic_result["history"]
    ax.plot([r["epoch"] for r in h], [100 * r["val_accuracy"] for r in h], "-o", label="classic (DataLoader, batch 64)")
    for run in fast_runs:
        ax.plot([r["epoch"] for r in run["history"]], [100 * r["val_accuracy"] for r in run["history"]], "-s",
                markersize=3, label=f"fast path, seed {run['seed']}")
    ax.axhline(98, color="#444", linestyle=":", label="98%")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="Same SimpleNet, two data paths")
    ax.set_ylim(max(80, ax.get_ylim()[0]), 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def check(metrics: dict) -> list[str]:
    problems = []
    full_real = is_full_real_run(metrics)
    fast_result = metrics.get("fast", {})
    target = FAST_TARGET_ACCURACY if full_real else QUICK_TARGET_ACCURACY
    median = fast_result.get("median_test_accuracy", 0.0)
    if not median >= target:
        problems.append(f"fast path median {100 * median:.2f}% below {100 * target:.1f}%")
    if full_real and len(fast_result.get("test_accuracies", [])) < 3:
        problems.append("fewer than 3 fast-path seeds")
    if any(r.get("epochs", 99) > 10 for r in fast_result.get("runs", [])):
        problems.append("fast path used more than 10 epochs")
    difference = metrics.get("reproduce", {}).get("difference")
    if difference is None:
        problems.append("not compared with p1-train: " + str(metrics.get("reproduce", {}).get("source")))
    elif full_real and not abs(difference) <= REPRODUCE_TOLERANCE:
        problems.append(f"refactor differs from p1-train by {100 * difference:+.2f} points")
    return problems


if __name__ == "__main__":
    main()
