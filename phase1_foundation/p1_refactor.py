"""p1-refactor (days 18-20): the same training as Dataset, DataLoader, Model and Trainer classes.

What to take from it:

1. **Four pieces, one job each.**  ``MNISTDataset`` answers "what is example
   i?"; ``DataLoader`` batches and shuffles; ``SimpleNet`` is the model;
   :class:`Trainer` owns the loop, the optimiser, the learning-rate schedule,
   checkpoints, history and early stopping.  The loop you wrote in p1-train
   becomes ``Trainer.train_epoch``, the same lines - it just stops being
   copied into every script.  From phase 2 on, :class:`common.trainer.Trainer` plays
   this part, with what a real project adds around it (mixed precision,
   several GPUs, resumable checkpoints).
2. **A refactor must not change the result.**  With the same seed and recipe,
   the classes reproduce p1-train's test accuracy (within 0.3 points: the
   shuffling order comes from a different random stream, nothing else).
3. **Then make it fast.**  Keep all 60,000 images as one uint8 tensor
   (:class:`common.loaders.TensorLoader`), take batches by indexing, normalise
   a whole batch at once, and give the fast path its own batch size and a
   one-cycle learning-rate schedule.  Same model, 98%+ in 10 epochs, in a
   fraction of the time (``make bench-p1`` measures by how much).
4. **Know when to stop.**  Early stopping watches the validation loss and
   stops after ``patience`` epochs without a new best.  The run reports where
   patience 2 would have stopped the classic recipe (``--patience N`` really
   stops it).  Here the test set stands in for validation, as in the seed
   recipe; phase 2 holds out a proper validation split.

Run: ``make p1-refactor`` (after ``make p1-train``, whose accuracy it compares with).
Writes ``runs/p1-refactor/``: ``metrics.json``, ``fast_path.png``, and one
sub-folder per training run with its checkpoints and curves.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import Dataset
from torchvision import transforms

from common.augment import BatchAugment
from common.data import PUBLISHED_STATS, Split, load_dataset
from common.device import resolve_device
from common.loaders import TensorLoader, classic_loader
from common.plots import plot_history, save
from common.runs import atomic_torch_save, read_metrics, run_path, update_metrics
from common.schedules import lr_multiplier
from common.script import finish_run, is_full_real_run, milestone_parser, start_run
from phase1_foundation import p1_train
from phase1_foundation.models import SimpleNet

MILESTONE = "p1-refactor"
REPRODUCE_TOLERANCE = 0.003      # 0.3 points of test accuracy
FAST_TARGET_ACCURACY = 0.980     # median of 3 seeds, at most 10 epochs, real MNIST
QUICK_TARGET_ACCURACY = 0.80
MNIST_MEAN, MNIST_STD = PUBLISHED_STATS["mnist"]  # what the seed recipe normalises with
EARLY_STOP_PATIENCE = 2          # what the report says early stopping would have done with

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
        """``(image, label)`` for example ``i``: the image as a PIL image through ``transform``, the label an int.

        Image first, label second: that is the order the DataLoader collates
        into ``x, y`` batches.  The transform (``ToTensor`` + ``Normalize`` in
        the seed recipe) runs here, one image at a time, every time the
        example is asked for; with no transform the PIL image itself comes back.
        """
        # EXERCISE p1-refactor.1: example i of a Dataset
        # hint: Image.fromarray(self.images[i], mode="L"), then self.transform if there is one; return (image, label)
        from PIL import Image

        image = Image.fromarray(self.images[i], mode="L")
        return (self.transform(image) if self.transform else image), self.labels[i]
        # END EXERCISE


class Trainer:
    """Phase 1's Trainer: the loop of p1-train, and the bookkeeping around it, in one small class.

    ``train_epoch`` is the loop you wrote by hand; ``evaluate`` is p1-train's
    evaluation; ``fit`` alternates the two, keeps the history, writes
    checkpoints and stops early when the validation loss stops improving.

    The optimiser is Adam at ``lr``; ``scheduler`` sets the learning rate at
    every optimiser step from :func:`common.schedules.lr_multiplier`
    (``constant``, or ``onecycle``: a warm-up ramp, then a straight line
    down to zero).
    """

    def __init__(self, model: nn.Module, *, epochs: int, lr: float, steps_per_epoch: int,
                 schedule: str = "constant", warmup_epochs: float = 0.0, patience: int | None = None,
                 device: torch.device = torch.device("cpu"), run_dir: str | Path | None = None):
        self.device = device
        self.model = model.to(device)
        self.epochs, self.patience = epochs, patience
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        total_steps = epochs * steps_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_multiplier(
            step, total_steps=total_steps, steps_per_epoch=steps_per_epoch, schedule=schedule,
            warmup_epochs=warmup_epochs))
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.history: list[dict] = []

    def train_epoch(self, loader) -> dict:
        """One pass over ``loader``: one optimiser step per batch; returns the epoch's training figures.

        The loop of p1-train, plus what a Trainer adds:

        * ``self.model.train()`` first: ``evaluate`` left the model in eval
          mode after the previous epoch, and dropout or BatchNorm would stay
          switched off for the whole epoch;
        * ``self.scheduler.step()`` after every ``self.optimizer.step()``:
          the schedule counts optimiser steps, not epochs;
        * figures per example, not per batch: sum ``loss * len(y)`` and the
          correct predictions (from the logits each batch was trained on),
          divide by the examples seen at the end.  The last batch is usually
          smaller than the others.

        Returns ``{"train_loss": mean loss, "train_accuracy": fraction correct}``.
        """
        # EXERCISE p1-refactor.2: one training epoch
        # hint: model.train() first; per batch: to device, forward, loss, zero_grad, backward, optimizer.step,
        # hint: scheduler.step; sum loss * len(y) and correct predictions, divide by the examples seen at the end
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            logits = self.model(x)
            loss = self.criterion(logits, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(y)   # summed on the device: read once, at the end of the epoch
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        return {"train_loss": float(loss_sum) / seen, "train_accuracy": int(correct) / seen}
        # END EXERCISE

    def evaluate(self, loader) -> tuple[float, float]:
        """Mean loss and accuracy over ``loader``: p1-train's evaluation, unchanged."""
        loss, accuracy, _ = p1_train.evaluate(self.model, loader, self.device)
        return loss, accuracy

    def fit(self, train_loader, val_loader) -> list[dict]:
        """Train for ``epochs`` epochs, evaluating after each one; stop early if ``patience`` says so."""
        for epoch in range(1, self.epochs + 1):
            reshuffle(train_loader, epoch - 1)
            start = time.perf_counter()
            record = {"epoch": epoch, **self.train_epoch(train_loader), "lr": self.optimizer.param_groups[0]["lr"]}
            record["seconds"] = time.perf_counter() - start
            record["val_loss"], record["val_accuracy"] = self.evaluate(val_loader)
            self.history.append(record)
            print(f"  epoch {epoch:2d}/{self.epochs}: train loss {record['train_loss']:.4f} "
                  f"acc {100 * record['train_accuracy']:.2f}% | val loss {record['val_loss']:.4f} "
                  f"acc {100 * record['val_accuracy']:.2f}%  ({record['seconds']:.1f}s)")
            self.save_checkpoints()
            if self.patience is not None and should_stop_early(self.history, self.patience):
                print(f"  early stop: no new lowest validation loss for {self.patience} epochs")
                break
        if self.run_dir is not None:
            update_metrics(self.run_dir, history=self.history)
            plot_history(self.history, self.run_dir / "curves.png")
        return self.history

    def save_checkpoints(self) -> None:
        """``last.pt`` after every epoch; ``best.pt`` when the validation loss is the lowest so far."""
        if self.run_dir is None:
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "history": self.history}
        atomic_torch_save(state, self.run_dir / "last.pt")
        if self.history[-1]["val_loss"] <= min(h["val_loss"] for h in self.history):
            atomic_torch_save(state, self.run_dir / "best.pt")


def reshuffle(loader, epoch: int) -> None:
    """A new order each epoch, the same one for the same ``(seed, epoch)``: the loaders' ``set_epoch``."""
    for obj in (loader, getattr(loader, "sampler", None)):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def should_stop_early(history: list[dict], patience: int) -> bool:
    """Early stopping: True once the validation loss has gone ``patience`` epochs without a new lowest value.

    ``history`` is one dict per finished epoch, oldest first, each with
    ``val_loss`` (and ``train_loss``, which keeps falling as the model
    memorises, so it says nothing about when to stop).  Count the epochs
    since the lowest validation loss so far, not since the previous epoch:
    a loss that wobbles (0.30, 0.32, 0.31, 0.33) has not improved for three
    epochs, though two of them beat the epoch before.  With ``patience=2``,
    one bad epoch is forgiven; two in a row stop training.
    """
    # EXERCISE p1-refactor.3: early stopping with patience
    # hint: find the epoch with the lowest val_loss; stop when at least `patience` epochs have come after it
    losses = [h["val_loss"] for h in history]
    if not losses:
        return False
    best_epoch = min(range(len(losses)), key=losses.__getitem__)
    return len(losses) - 1 - best_epoch >= patience
    # END EXERCISE


def early_stop_epoch(history: list[dict], patience: int) -> int | None:
    """The epoch after which early stopping with ``patience`` would have stopped this run (None: never)."""
    for finished in range(1, len(history) + 1):
        if should_stop_early(history[:finished], patience):
            return finished
    return None


def classic(data, args, device, run_dir) -> dict:
    """The p1-train recipe, rebuilt from the four classes."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MNIST_MEAN, MNIST_STD)])
    train, test = _splits(data, args)
    train_set = MNISTDataset(train, transform)
    image, label = train_set[0]
    print(f"  MNISTDataset: {len(train_set):,} examples; example 0 is a {tuple(image.shape)} tensor, label {label}")
    train_loader = classic_loader(train_set, batch_size=64, shuffle=True, seed=args.seed)
    test_loader = classic_loader(MNISTDataset(test, transform), batch_size=1000, shuffle=False)
    torch.manual_seed(args.seed)
    model = SimpleNet()
    epochs = args.epochs or (2 if args.quick else 10)
    # The seed recipe reports the test set after every epoch; phase 2 brings a proper validation split.
    trainer = Trainer(model, epochs=epochs, lr=1e-3, steps_per_epoch=len(train_loader),
                      patience=getattr(args, "patience", None), device=device, run_dir=run_dir / "classic")
    history = trainer.fit(train_loader, test_loader)
    return {"test_accuracy": history[-1]["val_accuracy"], "epochs": len(history),
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
    trainer = Trainer(SimpleNet(), epochs=epochs, lr=recipe["lr"], steps_per_epoch=len(train_loader),
                      schedule=recipe["schedule"], warmup_epochs=min(recipe["warmup_epochs"], epochs / 3),
                      device=device, run_dir=run_dir / f"fast-seed{seed}")
    history = trainer.fit(train_loader, test_loader)
    return {"seed": seed, "test_accuracy": history[-1]["val_accuracy"], "epochs": epochs,
            "seconds": sum(h["seconds"] for h in history), "history": history}


def _splits(data, args) -> tuple[Split, Split]:
    if args.quick:
        return data.train.subset(6000, seed=args.seed), data.test.subset(2000, seed=args.seed)
    return data.train, data.test


def p1_train_accuracy(quick: bool) -> tuple[float | None, str]:
    """p1-train's recorded test accuracy, from its run in the same mode (runs/p1-train/, or its quick/ folder)."""
    path = run_path("p1-train", quick=quick)
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
    parser.add_argument("--patience", type=int, default=None,
                        help="stop the classic recipe after this many epochs without a new lowest test loss "
                             "(default: train every epoch, and report where patience "
                             f"{EARLY_STOP_PATIENCE} would have stopped)")
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
              f"{100 * difference:+.2f} points (a full run is held to ±{100 * REPRODUCE_TOLERANCE:.1f}"
              + ("; a quick run, with its two epochs on a tenth of the data, is not)" if args.quick else ")"))
    early_stopping = early_stopping_report(classic_result["history"])

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
                      data=data.provenance(), classic=classic_result, early_stopping=early_stopping,
                      reproduce={"p1_train_test_accuracy": reference, "source": reference_source,
                                 "refactor_test_accuracy": classic_result["test_accuracy"],
                                 "difference": difference, "tolerance": REPRODUCE_TOLERANCE},
                      fast={"recipe": FAST_RECIPE, "runs": fast_runs, "test_accuracies": accuracies,
                            "median_test_accuracy": median, "per_epoch_speedup": speedup})


def early_stopping_report(history: list[dict]) -> dict:
    """Where early stopping with ``EARLY_STOP_PATIENCE`` would have stopped the classic run, and why."""
    losses = [h["val_loss"] for h in history]
    lowest = 1 + losses.index(min(losses))
    stop = early_stop_epoch(history, EARLY_STOP_PATIENCE)
    where = f"after epoch {stop} of {len(history)}" if stop else f"nowhere in {len(history)} epochs"
    print(f"  early stopping on the test loss, patience {EARLY_STOP_PATIENCE}: it would stop {where} "
          f"(lowest test loss {min(losses):.4f} at epoch {lowest})")
    return {"patience": EARLY_STOP_PATIENCE, "monitor": "val_loss (the test set, as in the seed recipe)",
            "would_stop_after_epoch": stop, "lowest_val_loss_epoch": lowest}


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
