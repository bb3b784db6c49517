"""p1-numpy (days 1-3): NumPy fundamentals, up to a neural network with no framework at all.

What to take from it:

1. **Broadcasting**: NumPy lines shapes up from the right; a dimension of 1
   stretches to match.  It is how ``x - x.mean(axis=0)`` works without a loop.
2. **Matrix multiplication** three ways - a triple loop, a row-by-column loop,
   and ``@`` - give the same numbers, and ``@`` (BLAS) is thousands of times
   faster.  Every layer you will ever train is mostly this operation.
3. **A 784-128-10 network by hand** (:mod:`phase1_foundation.numpy_net`):
   forward, softmax cross-entropy, and a backward pass you can read line by
   line.  Its gradients agree with a float64 centred difference and with
   torch autograd: you can trust a hand-derived gradient only after checking it.
4. **Training it on MNIST** with minibatch SGD + momentum, in NumPy alone,
   to at least 95% test accuracy.

Run: ``make p1-numpy`` (full) or ``make p1-numpy QUICK=1`` (seconds).
Writes ``runs/p1-numpy/``: ``metrics.json``, ``curves.png``,
``matmul_timings.png``, ``first_layer_weights.png``.
"""

from __future__ import annotations

import time

import numpy as np

from common.benchmark import compare
from common.data import load_dataset
from common.loaders import numpy_batches
from common.plots import image_grid, plot_history, save
from common.script import finish_run, is_full_real_run, milestone_parser, start_run
from phase1_foundation import numpy_net

MILESTONE = "p1-numpy"
GRADCHECK_TOLERANCE = 1e-6     # float64 centred difference
AUTOGRAD_TOLERANCE = 1e-10     # same float64 maths in torch
TARGET_ACCURACY = 0.95         # full run on real MNIST
QUICK_TARGET_ACCURACY = 0.80   # quick run: a few thousand images, two epochs


# --------------------------------------------------------------------------- 1. broadcasting


def broadcasting_lesson() -> dict:
    print("\n-- 1. Broadcasting: shapes line up from the right; a 1 stretches --")
    column = np.arange(3).reshape(3, 1)   # (3, 1)
    row = np.arange(4)                    # (4,)  -> treated as (1, 4)
    table = column * 10 + row             # (3, 4)
    print(f"column {column.shape} * 10 + row {row.shape} -> {table.shape}:\n{table}")

    data = np.array([[1.0, 200.0], [3.0, 400.0], [5.0, 600.0]])   # (3 samples, 2 features)
    standardised = (data - data.mean(axis=0)) / data.std(axis=0)   # (3,2) - (2,) -> per feature
    print(f"standardise features with no loop: mean {standardised.mean(axis=0)}, std {standardised.std(axis=0)}")

    try:
        np.ones((3, 2)) + np.ones(3)
        mismatch = None
    except ValueError as exc:
        mismatch = str(exc)
    print(f"(3, 2) + (3,) fails, because 2 != 3 when lined up from the right:\n  ValueError: {mismatch}")
    return {"table_shape": list(table.shape), "standardised_mean": standardised.mean(axis=0).tolist(),
            "standardised_std": standardised.std(axis=0).tolist(), "mismatch_error": mismatch}


# --------------------------------------------------------------------------- 2. matmul three ways


def matmul_triple_loop(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C[i, j] = sum over k of A[i, k] * B[k, j], one multiply at a time."""
    # EXERCISE p1-numpy.1: matrix multiplication by hand
    # hint: three nested loops over i (rows of A), j (columns of B) and k (the shared dimension)
    n, m = a.shape
    _, p = b.shape
    c = np.zeros((n, p))
    for i in range(n):
        for j in range(p):
            total = 0.0
            for k in range(m):
                total += a[i, k] * b[k, j]
            c[i, j] = total
    return c
    # END EXERCISE


def matmul_row_by_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C[i, j] = (row i of A) . (column j of B): the inner loop handed to NumPy."""
    c = np.zeros((a.shape[0], b.shape[1]))
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            c[i, j] = a[i, :] @ b[:, j]
    return c


def matmul_lesson(n: int, rng: np.random.Generator, rounds: int) -> dict:
    print(f"\n-- 2. Matrix multiplication three ways, {n}x{n} @ {n}x{n} --")
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    reference = a @ b
    errors = {"triple_loop": float(np.abs(matmul_triple_loop(a, b) - reference).max()),
              "row_by_column": float(np.abs(matmul_row_by_column(a, b) - reference).max())}
    print(f"same result: max |difference| to a @ b = {max(errors.values()):.1e}")
    result = compare({"triple_loop": lambda: matmul_triple_loop(a, b),
                      "row_by_column": lambda: matmul_row_by_column(a, b),
                      "numpy_at": lambda: a @ b}, rounds=rounds, repeats=2, warmup=1)
    timings = {name: s.p50_ms for name, s in result.stats.items()}
    for name, ms in timings.items():
        print(f"  {name:<14} {ms:10.3f} ms (median)   {result.speedup_vs_baseline[name]:>9.0f}x the triple loop")
    return {"n": n, "max_abs_error": errors, "median_ms": timings,
            "speedup_vs_triple_loop": result.speedup_vs_baseline}


# --------------------------------------------------------------------------- 3. gradient checks


def gradient_check_lesson(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, dtype: str = "float64") -> dict:
    print(f"\n-- 3. The hand-written backward pass, checked two ways (the centred difference in {dtype}) --")
    params = numpy_net.init_params(rng=rng, dtype=np.float64)
    numeric = numpy_net.numerical_gradient_check(params, x, y, rng=rng, dtype=np.dtype(dtype).type)
    autograd = numpy_net.torch_gradient_check(params, x, y)
    for name in numpy_net.PARAM_NAMES:
        print(f"  d loss / d {name:<3} relative error vs centred difference {numeric[name]:.1e} "
              f"(< {GRADCHECK_TOLERANCE:g}), vs torch autograd {autograd[name]:.1e} (< {AUTOGRAD_TOLERANCE:g})")
    return {"vs_centred_difference": numeric, "vs_torch_autograd": autograd,
            "tolerance_centred_difference": GRADCHECK_TOLERANCE, "tolerance_autograd": AUTOGRAD_TOLERANCE,
            "batch_size": len(y), "dtype": dtype}


# --------------------------------------------------------------------------- 4. training


def train(train_x, train_y, test_x, test_y, *, epochs: int, batch_size: int, lr: float, momentum: float,
          rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """Minibatch SGD with momentum: v = momentum * v - lr * g;  w = w + v."""
    print(f"\n-- 4. Training in NumPy alone: {epochs} epochs, batch {batch_size}, lr {lr}, momentum {momentum} --")
    params = numpy_net.init_params(rng=rng)
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    history = []
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        losses, correct = [], 0
        for xb, yb in numpy_batches(train_x, train_y, batch_size, rng):
            logits, cache = numpy_net.forward(params, xb)
            loss, dlogits = numpy_net.softmax_cross_entropy(logits, yb)
            correct += int((logits.argmax(axis=1) == yb).sum())
            grads = numpy_net.backward(params, cache, dlogits)
            numpy_net.momentum_step(params, grads, velocity, lr=lr, momentum=momentum)
            losses.append(loss * len(yb))
        test_logits, _ = numpy_net.forward(params, test_x)
        test_loss, _ = numpy_net.softmax_cross_entropy(test_logits, test_y)
        record = {"epoch": epoch, "train_loss": sum(losses) / len(train_y), "train_accuracy": correct / len(train_y),
                  "val_loss": test_loss, "val_accuracy": float((test_logits.argmax(1) == test_y).mean()),
                  "seconds": time.perf_counter() - start}
        history.append(record)
        print(f"  epoch {epoch}/{epochs}: train loss {record['train_loss']:.4f}, "
              f"test accuracy {100 * record['val_accuracy']:.2f}%  ({record['seconds']:.1f}s)")
    return params, history


def flat_normalised(images, mean: float, std: float) -> np.ndarray:
    return ((images.numpy().reshape(len(images), -1).astype(np.float32) / 255.0) - mean) / std


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 8; quick: 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--gradcheck-dtype", choices=("float64", "float32"), default="float64",
                        help="precision of the centred-difference check (float32 shows why it is float64)")
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    rng = np.random.default_rng(args.seed)
    epochs = args.epochs or (2 if args.quick else 8)

    print(__doc__.split("\n\n")[0])
    broadcasting = broadcasting_lesson()
    matmul = matmul_lesson(24 if args.quick else 64, rng, rounds=2 if args.quick else 3)

    data = load_dataset("mnist", data_dir=args.data_dir, quick=args.quick)
    mean, std = data.channel_stats()
    train_split = data.train.subset(5000, seed=args.seed) if args.quick else data.train
    test_split = data.test.subset(2000, seed=args.seed) if args.quick else data.test
    train_x, train_y = flat_normalised(train_split.images, mean[0], std[0]), train_split.labels.numpy()
    test_x, test_y = flat_normalised(test_split.images, mean[0], std[0]), test_split.labels.numpy()

    gradients = gradient_check_lesson(train_x[:16], train_y[:16], rng, args.gradcheck_dtype)
    params, history = train(train_x, train_y, test_x, test_y, epochs=epochs, batch_size=args.batch_size,
                            lr=args.lr, momentum=args.momentum, rng=rng)
    accuracy = history[-1]["val_accuracy"]
    train_seconds = sum(h["seconds"] for h in history)

    plot_history(history, run_dir / "curves.png", title="NumPy 784-128-10 network (val = test set)")
    _plot_matmul(matmul, run_dir / "matmul_timings.png")
    w1 = params["W1"].T[:32].reshape(32, 28, 28)
    scaled = (255 * (w1 - w1.min(axis=(1, 2), keepdims=True)) / np.ptp(w1, axis=(1, 2), keepdims=True))
    image_grid(scaled.astype(np.uint8)[:, None], [f"unit {i}" for i in range(32)],
               run_dir / "first_layer_weights.png", title="What 32 hidden units look for (columns of W1)")

    label = "test accuracy" + ("" if data.real else " (stand-in data)")
    print(f"\nResult: {100 * accuracy:.2f}% {label} after {epochs} epochs, {train_seconds:.0f}s of NumPy.")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "test_accuracy", "value": accuracy,
                                  "display": f"{100 * accuracy:.2f}% {label}"},
                      data=data.provenance() | {"train_used": len(train_y), "test_used": len(test_y)},
                      broadcasting=broadcasting, matmul=matmul, gradient_check=gradients,
                      training={"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr,
                                "momentum": args.momentum, "seconds": train_seconds},
                      history=history, test_accuracy=accuracy)


def _plot_matmul(matmul: dict, path) -> None:
    import matplotlib.pyplot as plt

    names = list(matmul["median_ms"])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(names, [matmul["median_ms"][n] for n in names], color=["#c44", "#e93", "#3a7"])
    ax.set_xscale("log")
    ax.set_xlabel("median milliseconds (log scale)")
    ax.set_title(f"{matmul['n']}x{matmul['n']} matrix product, three ways")
    save(fig, path)


def check(metrics: dict) -> list[str]:
    """Problems with a p1-numpy run; empty when it meets its targets."""
    problems = []
    grads = metrics.get("gradient_check", {})
    for name, err in grads.get("vs_centred_difference", {}).items():
        if not err < GRADCHECK_TOLERANCE:
            problems.append(f"gradient of {name} off by {err:.1e} vs centred difference")
    for name, err in grads.get("vs_torch_autograd", {}).items():
        if not err < AUTOGRAD_TOLERANCE:
            problems.append(f"gradient of {name} off by {err:.1e} vs torch autograd")
    if not grads:
        problems.append("no gradient check recorded")
    if max(metrics.get("matmul", {}).get("max_abs_error", {"": 1.0}).values()) > 1e-9:
        problems.append("the loop matmuls disagree with @")
    accuracy = metrics.get("test_accuracy", 0.0)
    full_real = is_full_real_run(metrics)
    target = TARGET_ACCURACY if full_real else QUICK_TARGET_ACCURACY
    if not accuracy >= target:
        problems.append(f"test accuracy {100 * accuracy:.2f}% below the {100 * target:.0f}% target")
    return problems


if __name__ == "__main__":
    main()
