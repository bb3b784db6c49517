"""Evaluation figures from predictions: confusion matrix, per-class scores, calibration.

Everything here takes plain arrays (true labels, predicted probabilities), so
it works for any classifier.  Each figure is written out from its definition
(a loop over the samples, sums over a matrix, a loop over confidence bins)
because the idea is the point; scikit-learn's ``confusion_matrix`` and
``classification_report`` give the same numbers, and the checks compare
against them.
"""

from __future__ import annotations

import numpy as np


def scores(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, confusion matrix, per-class precision/recall/F1 and accuracy, confused pairs."""
    predictions = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, len(classes))
    per_class = class_scores(matrix)
    row_totals = matrix.sum(axis=1)
    per_class_accuracy = {c: float(matrix[i, i] / row_totals[i]) if row_totals[i] else None
                          for i, c in enumerate(classes)}
    return {"accuracy": float((predictions == labels).mean()), "confusion_matrix": matrix.tolist(),
            "classification_report": classification_report(per_class, matrix, classes),
            "classification_report_text": classification_report_text(per_class, matrix, classes),
            "per_class_accuracy": per_class_accuracy, "most_confused": most_confused(matrix, classes)}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Count how often each true class was predicted as each class.

    ``matrix[t, p]`` is the number of samples whose true class is ``t`` and
    whose predicted class is ``p``: rows are the truth, columns the model's
    answer, so the diagonal holds the correct predictions, row ``t`` sums to
    the number of samples of class ``t`` and column ``p`` to the number of
    times the model said ``p``.  The matrix is ``num_classes x num_classes``
    even when some class never occurs in ``labels`` or ``predictions``, and
    holds integer counts.

    Example: labels ``[0, 0, 1]``, predictions ``[0, 1, 1]``, 2 classes ->
    ``[[1, 1], [0, 1]]``.
    """
    # EXERCISE p2-eval.2: the confusion matrix
    # hint: start from a num_classes x num_classes array of integer zeros (not sized from the data);
    # hint: each (true, predicted) pair adds one to the cell in the true class's row
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for true, predicted in zip(labels, predictions):
        matrix[true, predicted] += 1
    return matrix
    # END EXERCISE


def class_scores(matrix: np.ndarray) -> dict:
    """Precision, recall and F1 of every class, and their macro and weighted averages.

    From the confusion matrix (rows: true class, columns: predicted class):

    * **precision** of class ``k``: of the samples the model *called* ``k``,
      the share that are ``k``: the diagonal entry over the column sum;
    * **recall** of class ``k``: of the samples that *are* ``k``, the share
      the model found: the diagonal entry over the row sum (the per-class
      accuracy);
    * **F1**: their harmonic mean ``2 P R / (P + R)``, which is also
      ``2 tp / (row sum + column sum)``;
    * **support**: the row sum, the number of samples of class ``k``.

    A class that is never predicted has precision 0/0, and a class with no
    samples has recall 0/0: report 0 for them (scikit-learn's
    ``zero_division=0``), never ``nan``, which would poison every average.

    The **macro** average is the plain mean over classes (every class counts
    the same, so a weak rare class shows); the **weighted** average weights
    each class by its support.  Pooling all the counts first (the *micro*
    average) gives the overall accuracy instead, which is neither.

    Returns ``{"precision", "recall", "f1", "support"}`` (arrays, one value
    per class) plus ``"macro"`` and ``"weighted"``, each
    ``{"precision", "recall", "f1"}`` (floats).
    """
    # EXERCISE p2-eval.3: precision, recall, F1 and their averages
    # hint: true positives are the diagonal; precision divides them by the column sums, recall by the row sums,
    # hint: with 0 wherever a sum is 0; macro is the plain mean over classes, weighted uses the supports
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positives = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)

    def ratio(numerator, denominator):
        return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)

    precision, recall = ratio(true_positives, predicted), ratio(true_positives, support)
    f1 = ratio(2 * true_positives, support + predicted)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64),
            "macro": {"precision": float(np.mean(precision)), "recall": float(np.mean(recall)),
                      "f1": float(np.mean(f1))},
            "weighted": {"precision": float(np.average(precision, weights=support)),
                         "recall": float(np.average(recall, weights=support)),
                         "f1": float(np.average(f1, weights=support))}}
    # END EXERCISE


def classification_report(per_class: dict, matrix: np.ndarray, classes: list[str]) -> dict:
    """The scores as scikit-learn's ``classification_report(..., output_dict=True)`` lays them out."""
    headers = ("precision", "recall", "f1-score", "support")
    report = {c: dict(zip(headers, (float(per_class["precision"][i]), float(per_class["recall"][i]),
                                     float(per_class["f1"][i]), float(per_class["support"][i]))))
              for i, c in enumerate(classes)}
    total = float(np.sum(matrix))
    report["accuracy"] = float(np.trace(matrix) / total)
    for average in ("macro", "weighted"):
        figures = per_class[average]
        report[f"{average} avg"] = dict(zip(headers, (figures["precision"], figures["recall"], figures["f1"], total)))
    return report


def classification_report_text(per_class: dict, matrix: np.ndarray, classes: list[str], digits: int = 4) -> str:
    """The scores as a table, in the layout of scikit-learn's ``classification_report``."""
    width = max(max(len(c) for c in classes), len("weighted avg"), digits)
    row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    text = ("{:>{width}s} " + " {:>9}" * 4).format("", "precision", "recall", "f1-score", "support", width=width)
    text += "\n\n"
    for i, c in enumerate(classes):
        text += row.format(c, per_class["precision"][i], per_class["recall"][i], per_class["f1"][i],
                           int(per_class["support"][i]), width=width, digits=digits)
    total = int(np.sum(matrix))
    text += "\n" + ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
        "accuracy", "", "", np.trace(matrix) / total, total, width=width, digits=digits)
    for average in ("macro", "weighted"):
        figures = per_class[average]
        text += row.format(f"{average} avg", figures["precision"], figures["recall"], figures["f1"], total,
                           width=width, digits=digits)
    return text


def most_confused(matrix: np.ndarray, classes: list[str], top: int = 5) -> list[dict]:
    """The largest off-diagonal cells: which true class is most often taken for which."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0][:top]
    return [{"true": classes[i], "predicted": classes[j], "count": int(off[i, j]),
             "share_of_true_class": float(off[i, j] / max(1, matrix[i].sum()))} for i, j in order if off[i, j] > 0]


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 15) -> dict:
    """ECE: how far confidence is from accuracy, averaged over confidence bins.

    A prediction's confidence is its top probability (the probability of the
    class it predicts, right or wrong).  Sort predictions into ``bins``
    equal-width bins of confidence over [0, 1] (bin ``b`` holds confidences in
    ``(b / bins, (b + 1) / bins]``; the first bin also takes 0).  In each bin
    compare the mean confidence with the accuracy (the share of its
    predictions that are right); ECE is the absolute gap, averaged over the
    bins weighted by the share of all predictions that fall in each:
    ``sum over bins of n_b / N * |accuracy_b - confidence_b|``.  A perfectly
    calibrated model that says "90% sure" is right 90% of the time, and has
    ECE 0.  (Guo et al., "On Calibration of Modern Neural Networks", 2017.)

    Returns ``{"ece", "bins", "mean_confidence", "accuracy"}``: ``bins`` is one
    ``{"low", "high", "count", "confidence", "accuracy"}`` per bin, in order,
    with ``None`` for the confidence and accuracy of an empty bin (the
    reliability diagram is drawn from it).
    """
    # EXERCISE p2-eval.4: the expected calibration error
    # hint: confidence is probs.max(axis=1), whatever the label; each bin's |accuracy - confidence| counts
    # hint: in proportion to how many predictions fall in it, so a nearly empty bin barely counts
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
    # END EXERCISE


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
