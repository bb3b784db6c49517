"""Time to accuracy: training seconds until the test accuracy first reaches a target.

Two races, each a small list of recipes run one after another on the same
device, every recipe's clock counting training only (the per-epoch test
evaluation is paused out, as in bench-p1), compilation included:

* ``mnist-mlp``: the 784-128-10 MLP (SimpleNet) to 98% (the issue's GPU
  target: 1 s on one H100);
* ``cifar-cnn``: the 5-layer CNN to 90% (GPU target: 30 s on one H100).

The first epoch at or above the target ends a run; a run that never gets
there is reported as not reaching it, never averaged in.  On a CPU these
races take many minutes; they are meant for a GPU (``DEVICE=cuda``).

Run: ``make bench-tta DEVICE=cuda ARGS='--task cifar-cnn'`` (``--task mnist-mlp`` is the default).
Writes ``benchmarks/results/bench_tta_<task>_<device>.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.augment import BatchAugment  # noqa: E402
from common.benchmark import environment_stamp, save_result  # noqa: E402
from common.device import resolve_device  # noqa: E402
from common.loaders import TensorLoader  # noqa: E402
from common.trainer import TrainConfig, Trainer  # noqa: E402

TARGETS = {"mnist-mlp": 0.98, "cifar-cnn": 0.90}

# Candidates, fastest-looking first. Each is one run; the table reports all of them.
MNIST_RECIPES = [
    dict(batch_size=1024, epochs=12, lr=8e-3, warmup_epochs=1.0, crop_pad=2),
    dict(batch_size=512, epochs=10, lr=6e-3, warmup_epochs=1.0, crop_pad=2),
    dict(batch_size=128, epochs=10, lr=3e-3, warmup_epochs=2.0, crop_pad=2),   # p1-refactor's fast path
]
CIFAR_RECIPES = [
    dict(widths="wide", pool_first=False, epochs=40, batch_size=256, lr=0.2, compile=False, cutout=True),  # p2-cnn gpu
    dict(widths="wide", pool_first=False, epochs=40, batch_size=256, lr=0.2, compile=True, cutout=True),
    dict(widths="wide", pool_first=False, epochs=40, batch_size=512, lr=0.3, compile=True, cutout=True),
]


class ReachedTarget(Exception):
    pass


def race(trainer: Trainer, train_loader, test_loader, target: float) -> dict:
    """Fit until the test accuracy (checked after each epoch) reaches ``target``."""
    trace = []

    def after_epoch(record: dict) -> None:
        accuracy = trainer.evaluate(test_loader)["accuracy"]
        trace.append({"epoch": record["epoch"], "train_seconds": record["seconds"], "test_accuracy": accuracy})
        if accuracy >= target:
            raise ReachedTarget

    try:
        trainer.fit(train_loader, on_epoch_end=after_epoch)
        reached = False
    except ReachedTarget:
        reached = True
    seconds = sum(t["train_seconds"] for t in trace)
    return {"reached": reached, "seconds": seconds, "epochs": len(trace),
            "best_accuracy": max(t["test_accuracy"] for t in trace), "trace": trace}


def mnist_mlp(device, data_dir, recipe: dict, seed: int, quick: bool = False) -> dict:
    from common.data import load_dataset
    from phase1_foundation.models import SimpleNet
    from phase1_foundation.p1_train import MNIST_MEAN, MNIST_STD

    data = load_dataset("mnist", data_dir=data_dir, quick=quick)
    if quick:
        data.train = data.train.subset(6000)
    train = TensorLoader(data.train, recipe["batch_size"], device=device, mean=MNIST_MEAN, std=MNIST_STD,
                         augment=BatchAugment(crop_pad=recipe["crop_pad"]), seed=seed, drop_last=True)
    test = TensorLoader(data.test, 10_000, device=device, mean=MNIST_MEAN, std=MNIST_STD, shuffle=False)
    torch.manual_seed(seed)
    config = TrainConfig(epochs=recipe["epochs"], optimizer="adam", lr=recipe["lr"], schedule="onecycle",
                         warmup_epochs=recipe["warmup_epochs"], seed=seed, log_every=10**9)
    return race(Trainer(SimpleNet(), config, device=device, progress=False, announce=lambda *_: None),
                train, test, 0.90 if quick else TARGETS["mnist-mlp"])


def cifar_cnn(device, data_dir, recipe: dict, seed: int, quick: bool = False) -> dict:
    from phase2_depth.data import AUGMENT, AUGMENT_CUTOUT, cifar_splits
    from phase2_depth.p2_cnn import RECIPES, build_model

    splits = cifar_splits(data_dir=data_dir, seed=seed, quick=quick,
                          subset=(5000, 500, 1000) if quick else None)
    full = {**RECIPES["gpu"], **recipe}
    train, _, test = splits.loaders(full["batch_size"], device=device, seed=seed, channels_last=True,
                                    augment=AUGMENT_CUTOUT if full["cutout"] else AUGMENT)
    torch.manual_seed(seed)
    config = TrainConfig(epochs=full["epochs"], optimizer="sgd", lr=full["lr"], momentum=0.9, nesterov=True,
                         weight_decay=full["weight_decay"], schedule="onecycle",
                         label_smoothing=full["label_smoothing"], channels_last=True, seed=seed,
                         compile=full["compile"], log_every=10**9)
    return race(Trainer(build_model(full, num_classes=10), config, device=device, progress=False,
                        announce=lambda *_: None), train, test, 0.30 if quick else TARGETS["cifar-cnn"])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TARGETS), default="mnist-mlp")
    parser.add_argument("--quick", action="store_true", help="one short recipe on 6,000 images, target 90%%")
    parser.add_argument("--device", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", type=int, default=None, help="run only the first N candidate recipes")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    recipes = (MNIST_RECIPES if args.task == "mnist-mlp" else CIFAR_RECIPES)[: args.recipes]
    run = mnist_mlp if args.task == "mnist-mlp" else cifar_cnn
    target = TARGETS[args.task]
    if args.quick:   # the code path in seconds: one short recipe, a low bar
        small = ({"widths": "narrow", "pool_first": True, "batch_size": 128, "lr": 0.1, "epochs": 3}
                 if args.task == "cifar-cnn" else {"batch_size": 64, "epochs": 10, "lr": 3e-3})
        recipes = [{**recipes[0], "compile": False, **small}]
        target = 0.90 if args.task == "mnist-mlp" else 0.30
    runs: list[dict] = []
    name = f"bench_tta_{args.task}_{device.type}" + ("_quick" if args.quick else "")

    def summary() -> dict:
        reached = [r for r in runs if r["reached"]]
        best = min(reached, key=lambda r: r["seconds"]) if reached else None
        return {"task": args.task, "target_accuracy": target, "device": str(device), "seed": args.seed,
                "runs": runs, "best_seconds": best["seconds"] if best else None,
                "best_recipe": best["recipe"] if best else None}

    for recipe in recipes:
        result = run(device, args.data_dir, recipe, args.seed, args.quick) | {"recipe": recipe}
        runs.append(result)
        status = f"{result['seconds']:.2f} s to {100 * target:.0f}% (epoch {result['epochs']})" if result["reached"] \
            else f"NOT reached in {result['epochs']} epochs ({result['seconds']:.2f} s, best {100 * result['best_accuracy']:.2f}%)"
        print(f"[{args.task}] {recipe}: {status}", flush=True)
        path = save_result(name, summary(), directory=args.results_dir)   # after every run: nothing lost
    result = summary()
    best = next((r for r in runs if r["reached"] and r["seconds"] == result["best_seconds"]), None)
    best_text = "-" if best is None else f"{best['seconds']:.2f} s"
    stamp = environment_stamp()
    print(f"{args.task}: best {best_text} to {100 * target:.0f}% on {stamp['gpu'] or stamp['cpu']}; wrote {path}")
    return result


if __name__ == "__main__":
    main()
