"""p1-manual (days 8-12): the two-layer network as an nn.Module, and again from raw tensors.

What to take from it:

1. ``SimpleNet`` (:mod:`phase1_foundation.models`) is two ``nn.Linear`` layers
   and a ReLU; ``nn.Module`` only keeps track of the parameters for you.
2. ``RawTwoLayerNet`` is the same function from four tensors with
   ``requires_grad=True`` and an SGD step you write yourself:
   ``w -= lr * w.grad`` under ``torch.no_grad()``, then clear the gradient.
3. Started from the same weights and fed the same batches, the two give the
   same outputs, the same gradients and the same weights after every step.
   An optimiser is a loop over parameters; there is no magic in between.
   (Not bit for bit: ``w -= lr * g`` rounds twice in float32, while
   ``torch.optim.SGD`` computes ``w + (-lr) * g`` in one fused step.  Over a
   thousand steps those last-bit differences grow to about 1e-5 - a lesson
   in floating point, measured and bounded below.)

Run: ``make p1-manual``.  Writes ``runs/p1-manual/``: ``metrics.json``, ``twin_curves.png``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.data import load_dataset
from common.device import resolve_device
from common.loaders import TensorLoader
from common.plots import save
from common.script import finish_run, is_full_real_run, milestone_parser, start_run
from phase1_foundation.models import RawTwoLayerNet, SimpleNet

MILESTONE = "p1-manual"
SAME_TOLERANCE = 1e-5          # float32 outputs / gradients of two implementations of one function
QUICK_TARGET_ACCURACY = 0.80
TARGET_ACCURACY = 0.95          # one epoch of plain SGD on real MNIST
DRIFT_TOLERANCE = 1e-3          # weights after an epoch of float32 rounding differences
ACCURACY_GAP_TOLERANCE = 0.002  # at most 0.2 points (20 test images) apart


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def compare_once(net: SimpleNet, raw: RawTwoLayerNet, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Outputs and gradients of both implementations on one batch."""
    net.zero_grad()
    out_module, out_raw = net(x), raw(x)
    F.cross_entropy(out_module, y).backward()
    F.cross_entropy(out_raw, y).backward()
    module_grads = [net.fc1.weight.grad, net.fc1.bias.grad, net.fc2.weight.grad, net.fc2.bias.grad]
    grads = {name: max_abs_diff(g, p.grad) for name, g, p in zip(("W1", "b1", "W2", "b2"), module_grads, raw.params)}
    for p in raw.params:
        p.grad = None
    net.zero_grad()
    return {"outputs": max_abs_diff(out_module, out_raw), "gradients": grads}


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--lr", type=float, default=0.1, help="plain SGD learning rate for both twins")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=None, help="default 1; quick: 3 (its data is small)")
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    device = resolve_device(args.device)
    print(__doc__.split("\n\n")[0])

    data = load_dataset("mnist", data_dir=args.data_dir, quick=args.quick)
    mean, std = data.channel_stats()
    train = data.train.subset(6000, seed=args.seed) if args.quick else data.train
    loader = TensorLoader(train, args.batch_size, device=device, mean=mean, std=std, seed=args.seed)
    test_loader = TensorLoader(data.test, 1000, device=device, mean=mean, std=std, shuffle=False)

    torch.manual_seed(args.seed)
    net = SimpleNet().to(device)
    raw = RawTwoLayerNet.from_simple_net(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr)

    print("\n-- 1. Same weights, same batch: outputs and gradients --")
    x0, y0 = next(iter(loader))
    first = compare_once(net, raw, x0, y0)
    print(f"  max |output difference| {first['outputs']:.1e}; max |gradient difference| "
          + ", ".join(f"{k} {v:.1e}" for k, v in first["gradients"].items()))

    epochs = args.epochs or (3 if args.quick else 1)
    print(f"\n-- 2. {epochs} epoch(s) of SGD (lr {args.lr}), the optimiser against the hand-written step --")
    curves = {"module": [], "raw": []}
    worst_weight_gap = 0.0
    steps = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for step, (x, y) in enumerate(loader):
            loss_module = F.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss_module.backward()
            optimizer.step()
            loss_raw = F.cross_entropy(raw(x), y)
            loss_raw.backward()
            raw.sgd_step(args.lr)
            curves["module"].append(loss_module.item())
            curves["raw"].append(loss_raw.item())
            steps += 1
            if step % 50 == 0 or step == len(loader) - 1:  # comparing weights costs time: sample it
                gap = max(max_abs_diff(a, b) for a, b in zip(net.parameters(), raw.params))
                worst_weight_gap = max(worst_weight_gap, gap)
    print(f"  {steps} steps; largest weight difference seen: {worst_weight_gap:.1e}")

    accuracies = {}
    with torch.no_grad():
        for name, model in (("module", net), ("raw", raw)):
            correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test_loader)
            accuracies[name] = correct / test_loader.dataset_size
    print(f"  test accuracy: nn.Module {100 * accuracies['module']:.2f}%, raw tensors {100 * accuracies['raw']:.2f}%")

    _plot(curves, run_dir / "twin_curves.png")
    accuracy = accuracies["module"]
    label = "test accuracy" + ("" if data.real else " (stand-in data)")
    print(f"\nResult: the twins agree to {max(first['outputs'], worst_weight_gap):.0e}; "
          f"{100 * accuracy:.2f}% {label} after {epochs} epoch(s).")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "test_accuracy", "value": accuracy,
                                  "display": f"twins agree; {100 * accuracy:.2f}% {label}"},
                      data=data.provenance() | {"train_used": len(train)},
                      first_batch=first, worst_weight_gap=worst_weight_gap, steps=steps, epochs=epochs,
                      test_accuracy=accuracy, test_accuracy_raw=accuracies["raw"],
                      final_loss={k: v[-1] for k, v in curves.items()})


def _plot(curves: dict, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(curves["module"], label="SimpleNet + torch.optim.SGD", linewidth=2.5, alpha=0.6)
    ax.plot(curves["raw"], "--", label="raw tensors + w -= lr * grad", linewidth=1)
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="Two implementations, one curve")
    ax.legend()
    save(fig, path)


def check(metrics: dict) -> list[str]:
    problems = []
    first = metrics.get("first_batch", {})
    if not first.get("outputs", 1.0) < SAME_TOLERANCE:
        problems.append(f"outputs differ by {first.get('outputs')}")
    for name, diff in first.get("gradients", {"all": 1.0}).items():
        if not diff < SAME_TOLERANCE:
            problems.append(f"gradient {name} differs by {diff}")
    if not metrics.get("worst_weight_gap", 1.0) < DRIFT_TOLERANCE:
        problems.append(f"weights drift apart during training ({metrics.get('worst_weight_gap')})")
    if not abs(metrics.get("test_accuracy", 0.0) - metrics.get("test_accuracy_raw", 1.0)) <= ACCURACY_GAP_TOLERANCE:
        problems.append("the twins reach different test accuracies")
    full_real = is_full_real_run(metrics)
    target = TARGET_ACCURACY if full_real else QUICK_TARGET_ACCURACY
    if not metrics.get("test_accuracy", 0.0) >= target:
        problems.append(f"test accuracy {metrics.get('test_accuracy')} below {target}")
    return problems


if __name__ == "__main__":
    main()
