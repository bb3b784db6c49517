"""Classical baselines, and when not to use machine learning (p1-train, section 4).

Before a network earns its place, ask what the simplest thing would score,
and what it would cost.  This module fits three classical models on the raw
pixels (scaled to 0..1) and measures, for each of them and for the two
networks p1-train has already trained, four figures:

* **test accuracy**, on the same test images;
* **fit time**: seconds spent learning from the training set (for the
  networks, their training budget);
* **prediction time per image**: the median over a few repeats of predicting
  one fixed batch, on one CPU thread, divided by the batch size;
* **size**: the bytes a saved model takes (``pickle`` for scikit-learn's
  models and for k-nearest neighbours, which keeps the whole training set;
  the parameter bytes for the networks).

Then :func:`cheapest_meeting` answers the question a product asks: *which is
the cheapest model that meets this requirement?*  Often it is not a network:
when a logistic regression meets the requirement, it is the better answer,
a few kilobytes that answer in microseconds.  A network earns its place
only where the requirement is one a classical model cannot meet.
"""

from __future__ import annotations

import copy
import math
# bandit B403: pickle only writes (pickle.dump to a byte counter, to measure a model's size); nothing is loaded
import pickle  # nosec B403
import statistics
import time
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

CHANCE = 0.10                 # ten balanced classes
TIMING_BATCH = 500            # the fixed batch every model predicts when it is timed
TIMING_REPEATS = 5
QUICK_TIMING_BATCH = 200
QUICK_TIMING_REPEATS = 3


def pixels(split) -> tuple[np.ndarray, np.ndarray]:
    """A :class:`common.data.Split` as the classical models want it: ``(N, 784)`` float32 in 0..1, and the labels.

    A classical model sees an image as one long row of numbers: the 28x28
    grid is flattened, so "the pixel above" means nothing to it.  Dividing by
    255 puts every pixel in 0..1, which is all the scaling these models need.
    """
    x = split.images.reshape(len(split), -1).numpy().astype(np.float32) / 255.0
    return x, split.labels.numpy().astype(np.int64)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int,
                batch_size: int = 1000) -> np.ndarray:
    """k-nearest neighbours by hand: for each test row, the majority label among its ``k`` closest training rows.

    Distances are squared Euclidean, computed for a whole batch of test rows
    at once with the expansion

        ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2

    where ``a.b`` for every pair is one matrix product ``test @ train.T``: no
    Python loop over pairs.  Batches keep the distance matrix small: 1,000
    test rows against 60,000 training rows is 240 MB in float32, the whole
    test set at once would be 2.4 GB.  Rounding can make a distance slightly
    negative; it is clipped at 0.

    The vote: each of the ``k`` neighbours adds one to its label's count, and
    the label with most votes wins.  **Ties go to the smallest label**
    (``argmax`` returns the first of equal counts), the rule scikit-learn's
    ``KNeighborsClassifier`` follows too.  Labels are class indices 0, 1, ...

    Returns the predicted labels, shape ``(len(test_x),)``, int64.
    """
    # EXERCISE p1-train.4: k-nearest neighbours in NumPy
    # hint: per batch d = ||a||^2 - 2 a @ train_x.T + ||b||^2; the k smallest per row (np.argpartition); argmax of the vote counts picks the smallest label of a tie
    dtype = np.result_type(train_x, test_x, np.float32)    # float32 stays float32; integers become floats
    train_x, test_x = np.asarray(train_x, dtype=dtype), np.asarray(test_x, dtype=dtype)
    train_y = np.asarray(train_y, dtype=np.int64)
    train_sq = (train_x * train_x).sum(axis=1)
    num_classes = int(train_y.max()) + 1
    predictions = np.empty(len(test_x), dtype=np.int64)
    for start in range(0, len(test_x), batch_size):
        a = test_x[start:start + batch_size]
        distances = a @ train_x.T                    # a.b for every (test, train) pair: one matrix product
        distances *= -2.0                            # in place: one batch-sized matrix, no temporary copies
        distances += (a * a).sum(axis=1)[:, None]    # + ||a||^2, one per test row
        distances += train_sq[None, :]               # + ||b||^2, one per training row
        np.maximum(distances, 0.0, out=distances)
        nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(a), num_classes), dtype=np.int64)
        rows = np.arange(len(a))
        for column in range(k):
            votes[rows, train_y[nearest[:, column]]] += 1
        predictions[start:start + len(a)] = votes.argmax(axis=1)
    return predictions
    # END EXERCISE


class NearestNeighbours:
    """k-nearest neighbours as a model object: ``fit`` only remembers, ``predict`` does all the work.

    That is the whole trade of kNN: no training at all, and a model as big
    as the training set, searched in full for every prediction.
    """

    def __init__(self, k: int = 3):
        self.k = k

    def fit(self, x: np.ndarray, y: np.ndarray) -> "NearestNeighbours":
        self.train_x, self.train_y = np.ascontiguousarray(x), np.asarray(y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return knn_predict(self.train_x, self.train_y, x, self.k)


def classical_models(quick: bool, seed: int) -> dict:
    """The three classical baselines, unfitted: a linear model, a memory, and an ensemble of trees.

    * ``LogisticRegression``: one weight per pixel per class (7,850 numbers)
      and a softmax, the multinomial model (what scikit-learn fits for more
      than two classes with its default ``lbfgs`` solver);
    * k-nearest neighbours with k=3 on the raw pixels: :func:`knn_predict`;
    * ``RandomForestClassifier``: 100 deep trees (20 in a quick run), each
      grown on a bootstrap sample of the images and trying a random subset
      of the pixels at each split; they vote.  Gradient boosting
      (``HistGradientBoostingClassifier``) was measured too: it had not
      finished fitting after five and a half minutes on the two-core
      reference machine (busy with other jobs at the time), where the
      forest took 39 s.
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    return {
        "logistic regression": LogisticRegression(max_iter=100),
        "3-nearest neighbours": NearestNeighbours(k=3),
        "random forest": RandomForestClassifier(n_estimators=20 if quick else 100, n_jobs=-1, random_state=seed),
    }


def fit_timed(model, x: np.ndarray, y: np.ndarray) -> float:
    """Fit ``model`` on ``(x, y)``, with NumPy's and SciPy's matrix libraries on one thread; the seconds it took.

    Why one thread: logistic regression's solver multiplies a 60,000 x 784
    matrix by a 784 x 10 one, over and over.  A second thread saves little on
    products that small, and costs a great deal when the other core is busy:
    on the shared two-core reference machine the fit took 19 s on one thread
    and 161 s on two, for the same 92.6%.  The random forest builds its trees
    in parallel with its own workers (``n_jobs=-1``), which this limit does
    not touch.

    A ``ConvergenceWarning`` (logistic regression stopping at its iteration
    limit) is silenced here: the test accuracy says what the stop cost.
    """
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(x, y)
        return time.perf_counter() - start


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """The share of predictions equal to the labels."""
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


def ms_per_image(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, repeats: int) -> dict:
    """Prediction time per image, in ms: the median over ``repeats`` of predicting ``batch``, divided by its size.

    One call first, untimed, so that one-off costs (allocating buffers,
    loading code) are not counted.  Then ``repeats`` timed calls; the median
    ignores the one that another process on the machine happened to slow down.
    Everything runs on **one CPU thread** (``threadpoolctl`` for NumPy's and
    scikit-learn's thread pools, ``torch.set_num_threads`` for PyTorch), so
    that models are compared on the same footing, and because it was measured
    to be steadier: on the shared two-core reference machine, 500 images
    through logistic regression took 0.98-1.27 microseconds per image on one
    thread and 16-32 on two; through 3-nearest neighbours 1.45-1.52 ms on
    one thread and 1.57-1.87 ms on two.

    Returns ``{"ms_per_image": median, "ms_per_image_min": ..., "ms_per_image_max": ...}``.
    """
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            predict(batch)
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                predict(batch)
                seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    per_image = [1000 * s / len(batch) for s in seconds]
    return {"ms_per_image": statistics.median(per_image), "ms_per_image_min": min(per_image),
            "ms_per_image_max": max(per_image)}


class _ByteCounter:
    """A file that only counts what is written to it."""

    def __init__(self):
        self.bytes = 0

    def write(self, data) -> int:
        size = memoryview(data).nbytes   # bytes, or a buffer pickle hands over without copying
        self.bytes += size
        return size


def pickle_bytes(model) -> int:
    """The size of ``model`` saved with ``pickle``: counted as it is written, never held in memory at once."""
    counter = _ByteCounter()
    pickle.dump(model, counter, protocol=pickle.HIGHEST_PROTOCOL)
    return counter.bytes


def parameter_bytes(model: nn.Module) -> int:
    """The bytes of a network's parameters: the numbers a saved ``state_dict`` is made of (4 bytes each in float32)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def torch_predictor(model: nn.Module, mean: float, std: float) -> Callable[[np.ndarray], np.ndarray]:
    """A network as a ``predict(x)`` on the same 0..1 pixel rows as the classical models, on the CPU.

    The timed work is what serving it would do: rows to a tensor, the
    normalisation the network was trained with, the forward pass, the argmax.
    The network is copied to the CPU so that every model is timed on the same
    hardware.
    """
    cpu_model = copy.deepcopy(model).cpu().eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            images = (torch.from_numpy(x).view(-1, 1, 28, 28) - mean) / std
            return cpu_model(images).argmax(1).numpy()

    return predict


def cheapest_meeting(results: dict, *, min_accuracy: float, max_ms_per_image: float = math.inf) -> str | None:
    """The cheapest model that meets a requirement; None when none does.

    ``results`` maps a model's name to its measured figures, at least
    ``{"test_accuracy": 0.92, "ms_per_image": 0.003, "size_bytes": 63_000}``.
    A model *meets* the requirement when its accuracy is at least
    ``min_accuracy`` and its prediction time at most ``max_ms_per_image``
    (both limits included).  Among those, the cheapest is the smallest;
    of equal sizes, the faster.  Not the most accurate: once a requirement is
    met, more accuracy is not what was asked for, and every byte and
    millisecond is paid on every device and every request.
    """
    # EXERCISE p1-train.5: the cheapest model that meets a requirement
    # hint: keep the models within both limits (>= and <=); min() of those by (size_bytes, ms_per_image); None when none is left
    meeting = [name for name, r in results.items()
               if r["test_accuracy"] >= min_accuracy and r["ms_per_image"] <= max_ms_per_image]
    if not meeting:
        return None
    return min(meeting, key=lambda name: (results[name]["size_bytes"], results[name]["ms_per_image"]))
    # END EXERCISE


# --------------------------------------------------------------------------- the lesson: measure, then choose

REQUIREMENTS = (   # what a product might ask for; the run answers each with the cheapest model that meets it
    {"requirement": ">= 92% at <= 0.05 ms/image", "min_accuracy": 0.92, "max_ms_per_image": 0.05},
    {"requirement": ">= 97%", "min_accuracy": 0.97},
    {"requirement": ">= 99%", "min_accuracy": 0.99},
)


def measure_classical(name: str, model, train: tuple, test: tuple, batch: np.ndarray, repeats: int) -> dict:
    """Fit one classical model, then measure its four figures: accuracy, fit time, time per image, size."""
    fit_seconds = fit_timed(model, *train)
    row = {"kind": "classical", "test_accuracy": accuracy(model.predict(test[0]), test[1]),
           "fit_seconds": fit_seconds}
    row |= ms_per_image(model.predict, batch, repeats)
    row |= {"size_bytes": pickle_bytes(model), "size_of": "pickle"}
    print(f"  {name:<27} fitted in {fit_seconds:6.1f}s, test accuracy {100 * row['test_accuracy']:.2f}%")
    return row


def measure_network(model: nn.Module, figures: dict, batch: np.ndarray, repeats: int, mean: float,
                    std: float) -> dict:
    """A network p1-train has already trained: its accuracy and training time as measured then, its time and size now.

    ``figures`` is the network's entry in the run's ``comparison``; nothing
    is trained again.
    """
    row = {"kind": "network", "test_accuracy": figures["test_accuracy"], "fit_seconds": figures["seconds"]}
    row |= ms_per_image(torch_predictor(model, mean, std), batch, repeats)
    row |= {"size_bytes": parameter_bytes(model), "size_of": "parameters"}
    return row


def answer_requirements(models: dict, requirements=REQUIREMENTS) -> list[dict]:
    """Each requirement with its answer: the name of the cheapest model that meets it, or None."""
    answers = []
    for requirement in requirements:
        limit = requirement.get("max_ms_per_image", math.inf)
        answer = cheapest_meeting(models, min_accuracy=requirement["min_accuracy"], max_ms_per_image=limit)
        answers.append({**requirement, "max_ms_per_image": None if math.isinf(limit) else limit, "answer": answer})
    return answers


def run_baselines(train_split, test_split, networks: dict, *, quick: bool, seed: int, mean: float,
                  std: float) -> dict:
    """The section: the classical models beside the trained networks, measured alike, and the requirements answered.

    ``networks`` maps a name to ``(trained model, its comparison figures)``.
    Returns what the run records under ``"baselines"``.
    """
    start = time.perf_counter()
    train, test = pixels(train_split), pixels(test_split)
    batch_size, repeats = (QUICK_TIMING_BATCH, QUICK_TIMING_REPEATS) if quick else (TIMING_BATCH, TIMING_REPEATS)
    batch = np.ascontiguousarray(test[0][:batch_size])
    models = {name: measure_classical(name, model, train, test, batch, repeats)
              for name, model in classical_models(quick, seed).items()}
    for name, (model, figures) in networks.items():
        models[name] = measure_network(model, figures, batch, repeats, mean, std)
    return {"models": models, "requirements": answer_requirements(models), "train_used": len(train[1]),
            "test_used": len(test[1]), "timing": {"batch": len(batch), "repeats": repeats, "threads": 1,
                                                  "device": "cpu"},
            "seconds": time.perf_counter() - start}


def size_text(size_bytes: float) -> str:
    """1234567 -> '1.2 MB': sizes in powers of 1000, as disks and downloads count them."""
    for unit in ("B", "kB", "MB", "GB"):
        if size_bytes < 1000 or unit == "GB":
            return f"{size_bytes:.0f} {unit}" if unit == "B" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1000
    return ""


def table_lines(models: dict) -> list[str]:
    """The measured table, one line per model, as the run prints it."""
    lines = [f"  {'model':<27} {'accuracy':>8} {'fit s':>7} {'ms/image':>9} {'size':>9}"]
    for name, r in models.items():
        lines.append(f"  {name:<27} {100 * r['test_accuracy']:7.2f}% {r['fit_seconds']:7.1f} "
                     f"{r['ms_per_image']:9.4f} {size_text(r['size_bytes']):>9}")
    return lines


def answer_lines(models: dict, answers: list[dict]) -> list[str]:
    """One line per requirement: the cheapest model that meets it, with its size and speed, or that none does."""
    lines = []
    for a in answers:
        if a["answer"] is None:
            lines.append(f"  {a['requirement']:<28} no model here meets it")
            continue
        r = models[a["answer"]]
        lines.append(f"  {a['requirement']:<28} {a['answer']} ({100 * r['test_accuracy']:.2f}%, "
                     f"{r['ms_per_image']:.4f} ms/image, {size_text(r['size_bytes'])})")
    return lines


def plot_baselines(models: dict, path, title: str) -> None:
    """Accuracy against prediction time per image (log scale), one labelled point per model, area growing with size.

    Sizes span four orders of magnitude (kilobytes to hundreds of megabytes),
    so the marker's area grows with the *logarithm* of the size; the label
    gives the size itself.
    """
    import matplotlib.pyplot as plt

    from common.plots import save

    names = list(models)
    sizes = np.log10([max(models[n]["size_bytes"], 1) for n in names])
    low, high = sizes.min(), max(sizes.max(), sizes.min() + 1e-9)
    areas = 40 + 900 * (sizes - low) / (high - low)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for name, area in zip(names, areas):
        r = models[name]
        color = "#2a6fb0" if r["kind"] == "network" else "#d9822b"
        ax.scatter(r["ms_per_image"], 100 * r["test_accuracy"], s=area, color=color, alpha=0.6, edgecolor="#333")
        ax.annotate(f"{name}\n{size_text(r['size_bytes'])}", (r["ms_per_image"], 100 * r["test_accuracy"]),
                    textcoords="offset points", xytext=(math.sqrt(area) / 2 + 4, -6), fontsize=8)
    ax.set_xscale("log")
    lowest = min(100 * models[n]["test_accuracy"] for n in names)
    ax.set_ylim(max(0.0, lowest - 0.1 * (100 - lowest) - 1), 100.5)
    ax.set_xlim(min(models[n]["ms_per_image"] for n in names) / 3, max(models[n]["ms_per_image"] for n in names) * 8)
    ax.scatter([], [], color="#d9822b", label="classical (scikit-learn, NumPy)")
    ax.scatter([], [], color="#2a6fb0", label="network (PyTorch)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.set(xlabel="prediction time per image (ms, one CPU thread; log scale)", ylabel="test accuracy (%)",
           title=title)
    save(fig, path)
