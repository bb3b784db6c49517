"""Under the hood (phase 2, beside p2-cnn): why Adam, why warm-up, why BatchNorm - measured, not asserted.

p2-cnn's recipe uses SGD with momentum, a warm-up and BatchNorm in every
block.  This script takes each choice apart on real CIFAR-10 at a CPU-sized
budget: the narrow CNN of :mod:`phase2_depth.models`, 10,000 training images,
a few hundred steps per experiment, scored on the validation split.  It is
not a milestone: nothing here is a target, only measurements.

0. **An ill-conditioned quadratic** (milliseconds): one coordinate 1,000 times
   steeper than another.  Gradient descent's step is limited by the steepest
   direction and crawls along the flat one; Adam divides each coordinate's
   step by that coordinate's own gradient scale (:func:`adam_step`) and moves
   every coordinate at about ``lr`` per step.  That is the kind of problem
   Adam wins: gradients of very different scales in different parameters.
1. **An LR range test** (Smith 2015, "Cyclical Learning Rates", section 3.3):
   one pass over the data with the learning rate raised exponentially each
   step (:func:`lr_range_schedule`), the loss recorded, for SGD+momentum and
   for Adam (``lr_range.png``).  The suggestion (:func:`suggest_lr`) is **the
   learning rate at the minimum of the smoothed loss, divided by 10**: the
   minimum is where the steps start doing harm, a tenth of it is safely on
   the descending part.  The steepest-descent point is recorded too; it is
   noisier on a short pass.
2. **SGD vs SGD+momentum vs Adam**, each at the best of a three-point grid
   (the range test's suggestion times 1/3, 1 and 3; plain SGD's grid is
   centred on ten times momentum's suggestion, because momentum 0.9 makes
   each gradient count about 1 / (1 - 0.9) = 10 times), the same steps and
   the same batches for all: validation accuracy and training loss
   (``optimizers.png``).
3. **Warm-up on and off** at a high learning rate (SGD+momentum at 0.3,
   past the range test's minimum, about 0.04 on CIFAR-10): the loss over the first
   100 steps (``warmup.png``).  Without warm-up the first, large and
   badly-aimed updates of a fresh network throw the loss up; a linear ramp
   over 30 steps reaches the same rate without the spike.
4. **BatchNorm on and off**: a short run (30 steps) at each learning rate
   of a sweep, with BatchNorm and without it (the network without it
   starts from He initialisation, the fair baseline: see
   :func:`without_batchnorm`).  A run is **stable** when every loss is
   finite, none is above 10 times the first, and the mean of the last 5 is
   below the first (:func:`is_stable`).  Reported for each network: the
   largest stable learning rate, the mean of the last 5 losses and the
   highest loss at every rate, and the per-layer gradient norms over the
   first steps at a rate where both train (``batchnorm.png``).
   BatchNorm makes each layer's output independent of the scale of its
   weights, so a step that is too large inflates the weights instead of the
   activations, and the next steps are relatively smaller: the loss spikes
   and comes back instead of running off to infinity.  "Stable" is not
   "learning": the figures show at which rates the loss actually fell.

Run: ``.venv/bin/python -m phase2_depth.under_the_hood --threads 1`` (8 to
14 minutes measured on a busy 2-core machine, where one thread was faster
than two; ``--quick``: well under a minute, on the stand-in data when the
real data is absent).  Writes ``runs/under-the-hood/``: ``metrics.json``,
``lr_range.png``, ``optimizers.png``, ``warmup.png``, ``batchnorm.png``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from common.script import finish_run, milestone_parser, start_run
from phase2_depth.data import add_dataset_argument, cifar_splits
from phase2_depth.models import WIDTHS, FiveLayerCNN

NAME = "under-the-hood"

# The experiments' sizes.  "full": about 10 minutes on 2 cores; "quick": seconds.
SIZES = {
    "full": dict(train=10_000, val=2_000, batch=128, widths="narrow", range_steps=78, grid_steps=78, evals=3,
                 warmup_steps=100, warmup_ramp=30, bn_steps=30, bn_lrs=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0)),
    "quick": dict(train=512, val=256, batch=32, widths=(8, 8, 16, 16, 16), range_steps=12, grid_steps=6,
                  evals=1, warmup_steps=16, warmup_ramp=6, bn_steps=6, bn_lrs=(0.03, 0.3, 3.0)),
}
RANGES = {"sgd_momentum": (1e-4, 10.0), "adam": (1e-6, 1.0)}   # lr_min, lr_max of each range test
HIGH_LR = {"optimizer": "sgd_momentum", "lr": 0.3}              # the warm-up experiment's peak rate
GRAD_NORM_LR = 0.03                                               # batchnorm.png's gradient norms: stable for both
DIVERGED = 4.0            # a range test stops once the smoothed loss passes 4x its minimum


# --------------------------------------------------------------------------- the exercises


def lr_range_schedule(step: int, total_steps: int, lr_min: float, lr_max: float) -> float:
    """The learning rate at step ``step`` (0-based) of an LR range test's exponential sweep.

    Step 0 runs at ``lr_min``, the last step (``total_steps - 1``) at
    ``lr_max``, and every step multiplies the rate by the same factor,
    ``(lr_max / lr_min) ** (1 / (total_steps - 1))``: equal steps on a log
    axis.  A sweep from 1e-4 to 10 over 6 steps visits 1e-4, 1e-3, 1e-2,
    1e-1, 1, 10.  A linear sweep would spend nearly all its steps at the top
    decade and skip the small rates where training starts to work.
    """
    # EXERCISE p2-cnn.5: the LR range test's exponential sweep
    # hint: the fraction done is step / (total_steps - 1), 0 at the first step and 1 at the last;
    # hint: lr_min times (lr_max / lr_min) to the power of that fraction
    fraction = step / max(1, total_steps - 1)
    return lr_min * (lr_max / lr_min) ** fraction
    # END EXERCISE


def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int,
              *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Adam update, as ``torch.optim.Adam`` does it: ``(new_param, new_exp_avg, new_exp_avg_sq)``.

    ``step`` counts from 1 (the first update is step 1).  With ``b1, b2 = betas``::

        m = b1 * exp_avg + (1 - b1) * grad            # the mean of the gradients
        v = b2 * exp_avg_sq + (1 - b2) * grad ** 2    # the mean of their squares
        m_hat = m / (1 - b1 ** step)                  # bias correction: m and v start at 0
        v_hat = v / (1 - b2 ** step)
        new_param = param - lr * m_hat / (sqrt(v_hat) + eps)

    Each coordinate's step is its mean gradient divided by its own RMS
    gradient: about ``lr`` whatever the gradient's scale.  Without the bias
    correction the first step would be (1 - b1) / sqrt(1 - b2), about 3.2
    times ``lr`` with the default betas.  The inputs are not modified; new
    tensors are returned.
    """
    # EXERCISE p2-cnn.6: one Adam step with bias correction
    # hint: update the two running means first (the second one of grad squared), then divide each by
    # hint: 1 - beta ** step; eps is added to the square root, outside it
    beta1, beta2 = betas
    m = beta1 * exp_avg + (1 - beta1) * grad
    v = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    return param - lr * m_hat / (v_hat.sqrt() + eps), m, v
    # END EXERCISE


# --------------------------------------------------------------------------- small tools


def smoothed(values: list[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average with bias correction (fast.ai's range test smoothing); NaN stays NaN."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            out.append(float("nan"))
            avg = float("nan")
            continue
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest_lr(lrs: list[float], losses: list[float], beta: float = 0.9) -> dict:
    """What a range test suggests: the lr at the smoothed loss's minimum / 10 (used), and the steepest descent.

    Both are looked for only before the loss blows up (the first non-finite
    value).  ``steepest`` is the lr where the smoothed loss falls fastest per
    unit of log(lr).
    """
    smooth = smoothed(losses, beta)
    n = next((i for i, v in enumerate(smooth) if not math.isfinite(v)), len(smooth))
    if n == 0:
        raise ValueError("the range test has no finite loss")
    best = min(range(n), key=lambda i: smooth[i])
    slopes = [(smooth[i + 1] - smooth[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(max(0, best))]
    steepest = min(range(len(slopes)), key=lambda i: slopes[i]) if slopes else 0
    return {"suggested": lrs[best] / 10, "rule": "lr at the minimum of the smoothed loss / 10",
            "min_loss_lr": lrs[best], "min_loss": smooth[best], "steepest": lrs[steepest]}


def round_lr(lr: float) -> float:
    """Two significant digits: a learning rate to write down."""
    return float(f"{lr:.2g}")


def without_batchnorm(model: FiveLayerCNN, he_init: bool = True) -> FiveLayerCNN:
    """The same network with every BatchNorm2d removed (each convolution gets its bias back).

    ``he_init``: the convolutions start from He et al.'s initialisation for
    ReLU networks (normal, variance 2 / fan_in, zero bias), which keeps the
    activations' scale from layer to layer without BatchNorm's help.  With
    PyTorch's default initialisation instead (``he_init=False``) the signal
    shrinks at every layer and the first gradients come out about 100 times
    smaller than with BatchNorm: a network that looks "stable" at high
    learning rates only because its steps are tiny.
    """
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        conv = getattr(model, name)[0]
        new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1, bias=True)
        if he_init:
            nn.init.kaiming_normal_(new.weight, nonlinearity="relu")
            nn.init.zeros_(new.bias)
        setattr(model, name, nn.Sequential(new, nn.ReLU(inplace=True)))
    return model


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "classifier")


def layer_grad_norms(model: nn.Module) -> dict[str, float]:
    """The gradient norm of each layer's weight (the convolution kernel, the classifier's matrix)."""
    out = {}
    for layer in LAYERS:
        module = getattr(model, layer)
        weight = module[0].weight if isinstance(module, nn.Sequential) else module.weight
        out[layer] = weight.grad.norm().item() if weight.grad is not None else float("nan")
    return out


@dataclass
class Problem:
    """What the experiments train on: a model factory, a batch stream and a validation loader."""

    model: Callable[[bool], nn.Module]               # batchnorm on/off -> a fresh, seeded model
    batches: Callable[[], Iterator]                  # a fresh stream of (x, y), the same order every call
    val: object | None = None                        # an iterable of (x, y), or None


def train(problem: Problem, optimizer: str, lr_at: Callable[[int], float], steps: int, *, batchnorm: bool = True,
          grad_norms: bool = False, evaluate_at: tuple[int, ...] = (), stop: Callable[[list[float]], bool] | None = None
          ) -> dict:
    """``steps`` optimiser steps at learning rate ``lr_at(step)``; every loss, and what was asked for."""
    model = problem.model(batchnorm).train()
    opt = make_optimizer(optimizer, model.parameters(), lr_at(0))
    stream = problem.batches()
    losses, lrs, norms, evals = [], [], [], []
    for step in range(steps):
        lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(stream)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        losses.append(value)
        lrs.append(lr)
        if grad_norms:
            norms.append(layer_grad_norms(model))
        if not math.isfinite(value) or (stop is not None and stop(losses)):
            break
        opt.step()
        if step + 1 in evaluate_at:
            evals.append({"step": step + 1, **evaluate(model, problem.val)})
            model.train()
    return {"losses": losses, "lrs": lrs, "grad_norms": norms, "evals": evals, "model": model}


@torch.no_grad()
def evaluate(model: nn.Module, loader) -> dict:
    model.eval()
    total, correct, loss = 0, 0, 0.0
    for x, y in loader:
        logits = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    return {"val_loss": loss / total, "val_accuracy": correct / total}


# --------------------------------------------------------------------------- the experiments


def ill_conditioned(steps: int = 100, curvatures=(1.0, 1e-3)) -> dict:
    """Experiment 0: minimise 0.5 * sum(h_i * w_i^2) from w = 1, by gradient descent and by Adam (by hand).

    Each at the best learning rate of a grid (the same grid for both); the
    figure is the loss after ``steps`` steps.  Gradient descent's rate must
    stay below 2 / max(h) or the steep coordinate diverges, so the flat one
    moves by at most 2 * h_min / h_max of its distance per step.
    """
    h = torch.tensor(curvatures, dtype=torch.float64)
    grid = [10.0 ** (k / 2) for k in range(-8, 3)]       # 1e-4 .. 10

    def run(method: str, lr: float) -> float:
        w = torch.ones_like(h)
        m, v = torch.zeros_like(h), torch.zeros_like(h)
        for t in range(1, steps + 1):
            g = h * w
            if method == "gd":
                w = w - lr * g
            else:
                w, m, v = adam_step(w, g, m, v, t, lr=lr)
        loss = 0.5 * (h * w * w).sum().item()
        return loss if math.isfinite(loss) else float("inf")

    out = {"curvatures": list(curvatures), "steps": steps, "start_loss": 0.5 * h.sum().item()}
    for method in ("gd", "adam"):
        results = {lr: run(method, lr) for lr in grid}
        best = min(results, key=results.get)
        out[method] = {"best_lr": best, "loss": results[best]}
    return out


def lr_range_test(problem: Problem, optimizer: str, steps: int, lr_min: float, lr_max: float) -> dict:
    """Experiment 1: one pass, the rate raised exponentially each step; stops once the loss has clearly blown up."""
    def blown_up(losses: list[float]) -> bool:
        smooth = smoothed(losses)
        return len(smooth) > 5 and smooth[-1] > DIVERGED * min(smooth)

    run = train(problem, optimizer, lambda s: lr_range_schedule(s, steps, lr_min, lr_max), steps, stop=blown_up)
    return {"optimizer": optimizer, "lr_min": lr_min, "lr_max": lr_max, "steps": steps,
            "steps_run": len(run["losses"]), "lrs": run["lrs"], "losses": run["losses"],
            **suggest_lr(run["lrs"], run["losses"])}


def compare_optimizers(problem: Problem, centres: dict[str, float], steps: int, evals: int) -> dict:
    """Experiment 2: each optimizer at centre x 1/3, 1, 3 for ``steps`` steps; the best by validation accuracy."""
    at = tuple(sorted({max(1, round(steps * (k + 1) / evals)) for k in range(evals)}))
    out = {}
    for optimizer, centre in centres.items():
        runs = []
        for factor in (1 / 3, 1.0, 3.0):
            lr = round_lr(centre * factor)
            run = train(problem, optimizer, lambda s, lr=lr: lr, steps, evaluate_at=at)
            final = run["evals"][-1] if run["evals"] else {"val_loss": float("nan"), "val_accuracy": 0.0}
            runs.append({"lr": lr, "losses": run["losses"], "evals": run["evals"], **final})
            print(f"  {optimizer:13s} lr {lr:<8g} validation {100 * final['val_accuracy']:5.1f}% "
                  f"loss {final['val_loss']:.3f}")
        best = max(runs, key=lambda r: r["val_accuracy"])
        out[optimizer] = {"best_lr": best["lr"], "val_accuracy": best["val_accuracy"], "val_loss": best["val_loss"],
                          "grid": runs}
    return out


def warmup_experiment(problem: Problem, optimizer: str, lr: float, steps: int, ramp: int) -> dict:
    """Experiment 3: the same high rate from step 0, and after a linear ramp of ``ramp`` steps."""
    out = {"optimizer": optimizer, "lr": lr, "steps": steps, "ramp_steps": ramp}
    for name, lr_at in (("no_warmup", lambda s: lr), ("warmup", lambda s: lr * min(1.0, (s + 1) / ramp))):
        run = train(problem, optimizer, lr_at, steps)
        losses = run["losses"]
        finite = [v for v in losses if math.isfinite(v)]
        early = losses[:2 * ramp]
        out[name] = {"losses": losses, "diverged": len(finite) < len(losses) or len(losses) < steps,
                     "early_max_loss": max(early) if all(math.isfinite(v) for v in early) else float("inf"),
                     "final_loss": sum(losses[-10:]) / len(losses[-10:]) if len(finite) == steps else float("inf")}
    return out


SPIKE = 10.0              # a stable run never goes above 10x its first loss


def is_stable(losses: list[float], steps: int) -> bool:
    """Stable: all ``steps`` losses finite, none above ``SPIKE`` x the first, the mean of the last 5 below the first."""
    if len(losses) < steps or not all(math.isfinite(v) for v in losses):
        return False
    tail = losses[-5:]
    return max(losses) <= SPIKE * losses[0] and sum(tail) / len(tail) < losses[0]


def batchnorm_experiment(problem: Problem, lrs: tuple[float, ...], steps: int, optimizer: str = "sgd_momentum",
                         grad_norm_lr: float = GRAD_NORM_LR) -> dict:
    """Experiment 4: a short run at every rate of ``lrs``, with and without BatchNorm; gradient norms at one rate."""
    out = {"optimizer": optimizer, "steps": steps, "lrs": list(lrs), "grad_norm_lr": grad_norm_lr,
           "no_batchnorm_init": "He (kaiming_normal_, fan_in, relu), zero bias",
           "stable_rule": f"all {steps} losses finite, none above {SPIKE:g}x the first, and the mean of the last 5 "
                          "below the first"}
    for name, bn in (("batchnorm", True), ("no_batchnorm", False)):
        sweep = []
        for lr in sorted(set(lrs) | {grad_norm_lr}):
            run = train(problem, optimizer, lambda s, lr=lr: lr, steps, batchnorm=bn, grad_norms=True)
            stable = is_stable(run["losses"], steps)
            finite = [v for v in run["losses"] if math.isfinite(v)]
            sweep.append({"lr": lr, "stable": stable, "losses": run["losses"], "max_loss": max(finite, default=None),
                          "grad_norms": run["grad_norms"] if lr == grad_norm_lr else None})
        stable_lrs = [r["lr"] for r in sweep if r["stable"]]
        norms = next(r["grad_norms"] for r in sweep if r["lr"] == grad_norm_lr)
        out[name] = {"largest_stable_lr": max(stable_lrs) if stable_lrs else None,
                     "sweep": [{k: v for k, v in r.items() if k != "grad_norms"} for r in sweep],
                     "grad_norms": {layer: [n[layer] for n in norms] for layer in LAYERS}}
        ends = ", ".join(f"{r['lr']:g}: " + (f"{sum(r['losses'][-5:]) / 5:.2f} (max {r['max_loss']:.3g})"
                                               if len(r["losses"]) == steps and
                                               all(math.isfinite(v) for v in r["losses"]) else "diverged")
                         for r in sweep)
        print(f"  {name:12s} mean of the last 5 losses at each lr (highest loss): {ends}")
        print(f"  {name:12s} stable at {stable_lrs}: largest {out[name]['largest_stable_lr']}")
    return out


# --------------------------------------------------------------------------- pictures


def plot_lr_range(tests: dict, path) -> None:
    from common.plots import plt, save

    fig, axes = plt.subplots(1, len(tests), figsize=(5 * len(tests), 4))
    for ax, (name, t) in zip(axes, tests.items()):
        ax.plot(t["lrs"], t["losses"], alpha=0.3, label="loss per step")
        ax.plot(t["lrs"], smoothed(t["losses"]), label="smoothed")
        ax.axvline(t["min_loss_lr"], color="grey", ls=":", label=f"minimum {t['min_loss_lr']:.2g}")
        ax.axvline(t["suggested"], color="green", ls="--", label=f"suggested {t['suggested']:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title=f"LR range test: {name}",
               ylim=(0, max(4.0, 1.2 * min(t["losses"]))))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    save(fig, path)


def plot_optimizers(results: dict, steps_per_epoch: int, path) -> None:
    from common.plots import plt, save

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        best = next(g for g in r["grid"] if g["lr"] == r["best_lr"])
        ax_loss.plot([i / steps_per_epoch for i in range(len(best["losses"]))], smoothed(best["losses"], 0.95),
                     label=f"{name} lr {r['best_lr']:g}")
        ax_acc.plot([e["step"] / steps_per_epoch for e in best["evals"]],
                    [100 * e["val_accuracy"] for e in best["evals"]], "-o", label=f"{name} lr {r['best_lr']:g}")
    ax_loss.set(xlabel="epoch", ylabel="training loss (smoothed)", title="training loss, best lr of each")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path)


def plot_warmup(result: dict, path) -> None:
    from common.plots import plt, save

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in ("no_warmup", "warmup"):
        losses = [v if math.isfinite(v) else float("nan") for v in result[name]["losses"]]
        ax.plot(range(len(losses)), losses, label=name.replace("_", " "))
    ax.axvline(result["ramp_steps"], color="grey", ls=":", label="end of the ramp")
    ax.set(xlabel="step", ylabel="training loss", yscale="log",
           title=f"{result['optimizer']} at lr {result['lr']:g}: warm-up on and off")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def plot_batchnorm(result: dict, path) -> None:
    from common.plots import plt, save

    fig, (ax_sweep, ax_norm) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, marker) in enumerate((("batchnorm", "o"), ("no_batchnorm", "s"))):
        sweep = result[name]["sweep"]
        finals = [sum(r["losses"][-5:]) / len(r["losses"][-5:]) if r["stable"] else float("nan") for r in sweep]
        ax_sweep.plot([r["lr"] for r in sweep], finals, f"-{marker}", color=f"C{k}", label=name.replace("_", " "))
        unstable = [r["lr"] for r in sweep if not r["stable"]]
        ax_sweep.plot(unstable, [2.45 + 0.05 * k] * len(unstable), "x", color=f"C{k}", markersize=9)
        for i, layer in enumerate(LAYERS):
            ax_norm.plot(result[name]["grad_norms"][layer], "-" if name == "batchnorm" else "--", color=f"C{i}",
                         label=f"{layer} ({'BN' if name == 'batchnorm' else 'no BN'})")
    ax_sweep.set(xscale="log", xlabel="learning rate", ylabel="mean of the last 5 losses",
                 title=f"{result['steps']} steps per rate (x: unstable, drawn at the top)")
    ax_norm.set(yscale="log", xlabel="step", ylabel="gradient norm of the layer's weight",
                title=f"per-layer gradient norms at lr {result['grad_norm_lr']:g}")
    ax_sweep.legend()
    ax_norm.legend(fontsize=6, ncol=2)
    for ax in (ax_sweep, ax_norm):
        ax.grid(alpha=0.3)
    save(fig, path)


# --------------------------------------------------------------------------- the script


def cifar_problem(splits, size: dict, seed: int) -> Problem:
    """The narrow CNN on the training subset (no augmentation: these are optimisation effects)."""
    train_loader, val_loader, _ = splits.loaders(size["batch"], augment=None, seed=seed)
    widths = WIDTHS[size["widths"]] if isinstance(size["widths"], str) else tuple(size["widths"])

    def model(batchnorm: bool) -> nn.Module:
        torch.manual_seed(seed)
        net = FiveLayerCNN(widths, num_classes=len(splits.classes), dropout=0.0, pool_first=True)
        if not batchnorm:
            torch.manual_seed(seed)
            net = without_batchnorm(net)
        return net

    def batches() -> Iterator:
        epoch = 0
        while True:
            train_loader.set_epoch(epoch)
            yield from train_loader
            epoch += 1

    return Problem(model, batches, val_loader)


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(NAME, __doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    add_dataset_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = start_run(NAME, args)
    size = SIZES["quick" if args.quick else "full"]
    print(__doc__.split("\n\n")[0])
    start = time.perf_counter()
    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset,
                          subset=(size["train"], size["val"], 1))
    problem = cifar_problem(splits, size, args.seed)
    steps_per_epoch = len(splits.train) // size["batch"]
    print(f"[data] {len(splits.train):,} training images ({steps_per_epoch} steps of {size['batch']} per pass), "
          f"{len(splits.val):,} validation images; torch threads {torch.get_num_threads()}")
    timings = {}

    print("\n-- 0. An ill-conditioned quadratic (curvatures 1 and 0.001), 100 steps --")
    t = time.perf_counter()
    quad = ill_conditioned()
    timings["ill_conditioned"] = time.perf_counter() - t
    print(f"  gradient descent: best lr {quad['gd']['best_lr']:.3g}, loss {quad['gd']['loss']:.2e}; "
          f"Adam: best lr {quad['adam']['best_lr']:.3g}, loss {quad['adam']['loss']:.2e} (start {quad['start_loss']})")

    print(f"\n-- 1. LR range tests: one pass of {size['range_steps']} steps, lr raised exponentially --")
    t = time.perf_counter()
    ranges = {}
    for optimizer, (lo, hi) in RANGES.items():
        ranges[optimizer] = lr_range_test(problem, optimizer, size["range_steps"], lo, hi)
        r = ranges[optimizer]
        print(f"  {optimizer:13s} smoothed loss lowest {r['min_loss']:.3f} at lr {r['min_loss_lr']:.3g} -> "
              f"suggested {r['suggested']:.3g} (steepest descent at {r['steepest']:.3g}; {r['steps_run']} steps run)")
    timings["lr_range"] = time.perf_counter() - t
    plot_lr_range(ranges, run_dir / "lr_range.png")

    print(f"\n-- 2. SGD vs SGD+momentum vs Adam: {size['grid_steps']} steps each, lr grid x 1/3, 1, 3 --")
    t = time.perf_counter()
    momentum_lr = ranges["sgd_momentum"]["suggested"]
    centres = {"sgd": 10 * momentum_lr, "sgd_momentum": momentum_lr, "adam": ranges["adam"]["suggested"]}
    optimizers = compare_optimizers(problem, centres, size["grid_steps"], size["evals"])
    timings["optimizers"] = time.perf_counter() - t
    plot_optimizers(optimizers, steps_per_epoch, run_dir / "optimizers.png")

    print(f"\n-- 3. Warm-up on and off: {HIGH_LR['optimizer']} at lr {HIGH_LR['lr']}, {size['warmup_steps']} steps, "
          f"ramp {size['warmup_ramp']} steps --")
    t = time.perf_counter()
    warm = warmup_experiment(problem, HIGH_LR["optimizer"], HIGH_LR["lr"], size["warmup_steps"], size["warmup_ramp"])
    timings["warmup"] = time.perf_counter() - t
    for name in ("no_warmup", "warmup"):
        w = warm[name]
        print(f"  {name:10s} highest loss in the first {2 * size['warmup_ramp']} steps {w['early_max_loss']:.3g}, "
              f"mean of the last 10 {w['final_loss']:.3f}{' (diverged)' if w['diverged'] else ''}")
    plot_warmup(warm, run_dir / "warmup.png")

    print(f"\n-- 4. BatchNorm on and off: {size['bn_steps']} steps at each lr of {list(size['bn_lrs'])} --")
    t = time.perf_counter()
    bn = batchnorm_experiment(problem, size["bn_lrs"], size["bn_steps"])
    timings["batchnorm"] = time.perf_counter() - t
    plot_batchnorm(bn, run_dir / "batchnorm.png")
    first = {name: {layer: bn[name]["grad_norms"][layer][0] for layer in LAYERS}
             for name in ("batchnorm", "no_batchnorm")}
    for name in first:
        print(f"  {name:12s} first-step gradient norms: " +
              ", ".join(f"{layer} {v:.2g}" for layer, v in first[name].items()))

    minutes = (time.perf_counter() - start) / 60
    label = "" if splits.dataset.real else " (stand-in data)"
    summary = {
        "ill_conditioned_loss": {"gd": quad["gd"]["loss"], "adam": quad["adam"]["loss"]},
        "suggested_lr": {k: r["suggested"] for k, r in ranges.items()},
        "best_val_accuracy": {k: r["val_accuracy"] for k, r in optimizers.items()},
        "best_lr": {k: r["best_lr"] for k, r in optimizers.items()},
        "warmup_early_max_loss": {k: warm[k]["early_max_loss"] for k in ("no_warmup", "warmup")},
        "largest_stable_lr": {k: bn[k]["largest_stable_lr"] for k in ("batchnorm", "no_batchnorm")},
    }
    print(f"\nSummary{label}: range-test suggestions {summary['suggested_lr']}; validation accuracy at the best lr "
          f"{ {k: round(100 * v, 1) for k, v in summary['best_val_accuracy'].items()} }; warm-up early max loss "
          f"{summary['warmup_early_max_loss']}; largest stable lr {summary['largest_stable_lr']}; "
          f"{minutes:.1f} minutes.")
    best = max(summary["best_val_accuracy"], key=summary["best_val_accuracy"].get)
    return finish_run(
        run_dir, NAME, args,
        key_figure={"name": "largest_stable_lr_batchnorm",
                    "value": summary["largest_stable_lr"]["batchnorm"],
                    "display": f"best optimizer {best} at {100 * summary['best_val_accuracy'][best]:.1f}% validation; "
                               f"largest stable lr with/without BatchNorm {summary['largest_stable_lr']['batchnorm']}"
                               f"/{summary['largest_stable_lr']['no_batchnorm']}{label}"},
        data=splits.dataset.provenance() | {"train_used": len(splits.train), "val_used": len(splits.val)},
        sizes=size, torch_threads=torch.get_num_threads(), minutes=minutes, seconds_per_experiment=timings,
        summary=summary, ill_conditioned=quad, lr_range=ranges, optimizers=optimizers, warmup=warm, batchnorm=bn,
        pictures=["lr_range.png", "optimizers.png", "warmup.png", "batchnorm.png"])


if __name__ == "__main__":
    main()
