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


# --------------------------------------------------------------------------- one class as a detection problem


def precision_recall_curve(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of the rule "flag a sample when its score >= t", for every distinct score t.

    One class seen as a detection problem (one-vs-rest): ``is_positive``
    says which samples belong to it, ``scores`` how strongly the model
    believes each one does (its softmax probability of that class).  A
    threshold ``t`` flags every sample scoring ``t`` or more; of the flagged,
    the true positives are the real members, the false positives the rest:

    * **precision** ``tp / (tp + fp)``: of the flagged, the share that are real;
    * **recall** ``tp / positives``: of the real ones, the share flagged.

    Sort the samples by score, highest first, and walk down the list: after
    the k-th sample, the cumulative sums of positives and of negatives are
    the ``tp`` and ``fp`` of the threshold at that sample's score.  Samples
    with equal scores cannot be told apart by any threshold (they are flagged
    together or not at all), so each distinct score gives one point: the
    one after the last of its tied samples.

    Returns ``(precision, recall, thresholds)``, three float arrays with one
    entry per distinct score: thresholds decreasing, recall rising to 1.
    scikit-learn's ``precision_recall_curve`` gives the same points in the
    opposite order, plus a last point (precision 1, recall 0) that belongs
    to no threshold.  ``is_positive`` must hold at least one positive.

    Example: positives ``[1, 0, 1]``, scores ``[0.9, 0.5, 0.5]`` -> thresholds
    ``[0.9, 0.5]``, precision ``[1, 2/3]``, recall ``[0.5, 1]``.
    """
    # EXERCISE p2-eval.5: the precision-recall curve, by hand
    # hint: sort by score, highest first (np.argsort(-scores)); cumulative sums of the positives and of the negatives
    # hint: along that order are tp and fp; keep only the last position of each run of equal scores
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], is_positive[order]
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp = np.cumsum(hits)[last_of_run].astype(np.float64)
    fp = np.cumsum(~hits)[last_of_run].astype(np.float64)
    return tp / (tp + fp), tp / hits.sum(), sorted_scores[last_of_run]
    # END EXERCISE


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """The area under a precision-recall curve as a sum of steps: ``sum over points of (R_n - R_(n-1)) * P_n``.

    The points in the order :func:`precision_recall_curve` returns them
    (recall rising), starting from recall 0.  Each rise in recall is paid
    for at the precision reached there: no interpolation between points
    (which would flatter the curve).  This is scikit-learn's
    ``average_precision_score``.  A detector that ranks every positive above
    every negative scores 1; one that ranks at random scores about the
    positives' share of the samples (0.1 for one CIFAR-10 class).
    """
    precision, recall = np.asarray(precision, dtype=np.float64), np.asarray(recall, dtype=np.float64)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def threshold_for_cost(is_positive: np.ndarray, scores: np.ndarray, cost_miss: float,
                       cost_false_alarm: float) -> float:
    """The threshold ``t`` whose rule "flag when score >= t" costs least on these samples.

    A rule's cost: ``cost_miss`` for every positive it does not flag (a
    miss) plus ``cost_false_alarm`` for every negative it flags (a false
    alarm).  Only the distinct scores need trying, plus ``inf`` (flag
    nothing: every positive missed, no alarm): between two neighbouring
    scores every threshold flags the same samples and costs the same.

    **Ties**: when several thresholds cost the same least amount, the
    highest wins: the fewest flags for the same cost.

    Returns the threshold as a float, ``inf`` when flagging nothing is
    cheapest.  Choose it on the validation split; the test split then says
    once what it costs on new data.
    """
    # EXERCISE p2-eval.6: the threshold for a cost
    # hint: for each distinct score t (highest first) misses = positives - tp(t) and false alarms = fp(t), the
    # hint: counts of the precision-recall curve; try inf (flag nothing) too; on a tie keep the highest threshold
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], is_positive[order]
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tp = np.r_[0, np.cumsum(hits)[last_of_run]]
    fp = np.r_[0, np.cumsum(~hits)[last_of_run]]
    thresholds = np.r_[np.inf, sorted_scores[last_of_run]]     # decreasing
    costs = cost_miss * (hits.sum() - tp) + cost_false_alarm * fp
    return float(thresholds[np.argmin(costs)])                  # argmin takes the first least: the highest
    # END EXERCISE


def detection_scores(is_positive: np.ndarray, flagged: np.ndarray, cost_miss: float,
                     cost_false_alarm: float) -> dict:
    """What one decision rule did: counts, precision, recall and cost (total and per sample)."""
    is_positive, flagged = np.asarray(is_positive, dtype=bool), np.asarray(flagged, dtype=bool)
    tp, fp = int(np.sum(flagged & is_positive)), int(np.sum(flagged & ~is_positive))
    misses = int(np.sum(is_positive)) - tp
    cost = cost_miss * misses + cost_false_alarm * fp
    return {"flagged": tp + fp, "true_positives": tp, "false_alarms": fp, "misses": misses,
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / max(1, tp + misses),
            "cost": float(cost), "cost_per_image": float(cost / max(1, len(is_positive)))}


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
