"""Evaluation figures from predictions: confusion matrix, per-class scores, calibration.

Everything here takes plain arrays (true labels, predicted probabilities), so
it works for any classifier.  scikit-learn computes the standard scores; the
calibration error is written out as a loop because the idea is the point.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix


def scores(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, confusion matrix, per-class precision/recall/F1 and accuracy, confused pairs."""
    predictions = probs.argmax(axis=1)
    k = len(classes)
    matrix = confusion_matrix(labels, predictions, labels=list(range(k)))
    report = classification_report(labels, predictions, labels=list(range(k)), target_names=classes,
                                   output_dict=True, zero_division=0)
    report_text = classification_report(labels, predictions, labels=list(range(k)), target_names=classes,
                                        digits=4, zero_division=0)
    row_totals = matrix.sum(axis=1)
    per_class_accuracy = {c: float(matrix[i, i] / row_totals[i]) if row_totals[i] else None
                          for i, c in enumerate(classes)}
    return {"accuracy": float((predictions == labels).mean()), "confusion_matrix": matrix.tolist(),
            "classification_report": report, "classification_report_text": report_text,
            "per_class_accuracy": per_class_accuracy, "most_confused": most_confused(matrix, classes)}


def most_confused(matrix: np.ndarray, classes: list[str], top: int = 5) -> list[dict]:
    """The largest off-diagonal cells: which true class is most often taken for which."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0][:top]
    return [{"true": classes[i], "predicted": classes[j], "count": int(off[i, j]),
             "share_of_true_class": float(off[i, j] / max(1, matrix[i].sum()))} for i, j in order if off[i, j] > 0]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict:
    """ECE: how far confidence is from accuracy, averaged over confidence bins.

    Sort predictions into ``bins`` equal-width bins by their confidence (the
    top probability).  In each bin compare the mean confidence with the
    accuracy; ECE is the average gap, weighted by how many predictions fall
    in each bin.  A perfectly calibrated model that says "90% sure" is right
    90% of the time, and has ECE 0.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (confidence > lo) & (confidence <= hi) if b else (confidence >= lo) & (confidence <= hi)
        n = int(in_bin.sum())
        if n == 0:
            table.append({"low": lo, "high": hi, "count": 0, "confidence": None, "accuracy": None})
            continue
        mean_conf, acc = float(confidence[in_bin].mean()), float(correct[in_bin].mean())
        ece += n / len(labels) * abs(mean_conf - acc)
        table.append({"low": lo, "high": hi, "count": n, "confidence": mean_conf, "accuracy": acc})
    return {"ece": float(ece), "bins": table, "mean_confidence": float(confidence.mean()),
            "accuracy": float(correct.mean())}


# --------------------------------------------------------------------------- pictures


def plot_confusion(matrix: np.ndarray, classes: list[str], path) -> None:
    import matplotlib.pyplot as plt

    from common.plots import save

    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    shares = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (counts; colour = share of the true class)")
    fig.colorbar(image, ax=ax, fraction=0.046)
    save(fig, path)


def plot_reliability(calibration: dict, path) -> None:
    import matplotlib.pyplot as plt

    from common.plots import save

    bins = [b for b in calibration["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(5, 5))
    width = calibration["bins"][0]["high"] - calibration["bins"][0]["low"]
    ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
           edgecolor="#335", color="#8ab", label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability diagram, ECE = {100 * calibration['ece']:.2f}%")
    ax.legend(loc="upper left")
    save(fig, path)
