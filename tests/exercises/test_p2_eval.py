"""Checks for p2-eval's exercises (``make check M=p2-eval``), and the mistakes they must catch.

Every expected value here is computed independently of the code under test:
by a copy of the model put in eval mode by hand, by scikit-learn's
``confusion_matrix``, ``precision_recall_fscore_support`` and
``precision_recall_curve``, by a small binning loop, or by trying every
threshold, written in this file.  The code under test may be a learner's,
or a stub.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_curve as sk_precision_recall_curve
from sklearn.metrics import precision_recall_fscore_support
from torch import nn

from common.augment import flip_averaged_logits
from common.data import Split
from ml60.grading import exercise, expect, wrong_answer
from phase2_depth import evaluation, imbalance, p2_eval

# --------------------------------------------------------------------------- p2-eval.1 honest predictions

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def trained_looking_model(seed: int = 0) -> nn.Module:
    """A tiny CNN with BatchNorm and Dropout, left in train mode as a training loop leaves it.

    Its BatchNorm running statistics are far from any batch's own, so a
    forward pass in train mode gives visibly different answers from eval mode.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    with torch.no_grad():
        model[1].running_mean.uniform_(-1.0, 1.0)
        model[1].running_var.uniform_(0.3, 3.0)
    return model.train()


def small_split(seed: int = 0, n: int = 12) -> Split:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return Split(images, torch.zeros(n, dtype=torch.long))


def expected_probs(model: nn.Module, split: Split, mean=MEAN, std=STD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain, flip-averaged, and probability-averaged (the mistake) answers of an eval-mode copy."""
    reference = copy.deepcopy(model).eval()
    x = (split.images.double() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        reference = reference.double()
        logits, mirrored = reference(x), reference(x.flip(3))
    plain = torch.softmax(logits, 1)
    return (plain.numpy(), torch.softmax((logits + mirrored) / 2, 1).numpy(),
            ((plain + torch.softmax(mirrored, 1)) / 2).numpy())


@exercise("p2-eval.1")
def test_predict_probs_evaluates_like_eval_mode():
    model, split = trained_looking_model(), small_split()
    plain_expected, flipped_expected, probability_average = expected_probs(model, split)
    unnormalised, _, _ = expected_probs(model, split, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    result = p2_eval.predict_probs(model, split, MEAN, STD, "cpu", batch_size=5)
    expect(isinstance(result, tuple) and len(result) == 2,
           "predict_probs returns two arrays: the plain probabilities and the flip-averaged ones")
    plain, flipped = (np.asarray(r, dtype=np.float64) for r in result)
    for name, array in (("plain", plain), ("flip-averaged", flipped)):
        expect(array.shape == (12, 5), f"the {name} probabilities for 12 images and 5 classes should be (12, 5), "
                                       f"got {array.shape}: one row per image, in order, every batch concatenated")
        sums = array.sum(axis=1)
        expect(np.allclose(sums, 1.0, atol=1e-4),
               f"the {name} rows sum to {sums.min():.3g}..{sums.max():.3g}, not 1: these are logits, not "
               "probabilities; apply torch.softmax(logits, dim=1)")
    error = float(np.abs(plain - plain_expected).max())
    if error > 1e-4 and model.training:
        expect(False, f"the probabilities differ from eval mode's by up to {error:.3f} and the model is still in "
                      "training mode afterwards: is the model left in train mode? Call model.eval() first: BatchNorm "
                      "then uses its running statistics and Dropout stops dropping units")
    if error > 1e-4 and np.abs(plain - unnormalised).max() < 1e-4:
        expect(False, "the images reach the model unnormalised (x / 255 only): pass the training mean and std "
                      "to the TensorLoader, so the model sees inputs like the ones it was trained on")
    expect(error < 1e-4, f"the plain probabilities differ from an eval-mode model's by up to {error:.3f}: "
                         "model.eval(), images in order (shuffle=False), normalised with the training mean and std, "
                         "softmax over the class axis")
    flip_error = float(np.abs(flipped - flipped_expected).max())
    if flip_error > 1e-4 and np.abs(flipped - probability_average).max() < 1e-4:
        expect(False, f"the flip-averaged probabilities are off by up to {flip_error:.2g}: they average the two "
                      "softmaxes; average the logits (flip_averaged_logits), then take one softmax")
    if flip_error > 1e-4 and np.abs(flipped - plain_expected).max() < 1e-6:
        expect(False, "the flip-averaged probabilities equal the plain ones: the mirror's logits "
                      "(model(x.flip(3))) are not averaged in")
    expect(flip_error < 1e-4, f"the flip-averaged probabilities differ from softmax of the mean of the image's and "
                              f"its mirror's logits by up to {flip_error:.3g}")


@wrong_answer("p2-eval.1", diagnosis="is the model left in train mode")
@torch.inference_mode()
def predict_in_train_mode(model, split, mean, std, device, batch_size: int = 1000):
    """No model.eval(): BatchNorm normalises with each test batch's statistics and Dropout stays on."""
    from common.loaders import TensorLoader

    plain, flipped = [], []
    for x, _ in TensorLoader(split, batch_size, device=device, mean=mean, std=std, shuffle=False):
        logits = model(x).float()
        plain.append(torch.softmax(logits, dim=1))
        flipped.append(torch.softmax(flip_averaged_logits(model, x, logits), dim=1))
    return torch.cat(plain).numpy(), torch.cat(flipped).numpy()


@wrong_answer("p2-eval.1", diagnosis="average the logits")
@torch.inference_mode()
def predict_averaging_probabilities(model, split, mean, std, device, batch_size: int = 1000):
    """The flipped view averages the two softmaxes instead of the two sets of logits."""
    from common.loaders import TensorLoader

    model.eval()
    plain, flipped = [], []
    for x, _ in TensorLoader(split, batch_size, device=device, mean=mean, std=std, shuffle=False):
        probs = torch.softmax(model(x).float(), dim=1)
        plain.append(probs)
        flipped.append((probs + torch.softmax(model(x.flip(3)).float(), dim=1)) / 2)
    return torch.cat(plain).numpy(), torch.cat(flipped).numpy()


@wrong_answer("p2-eval.1", diagnosis="pass the training mean and std")
@torch.inference_mode()
def predict_unnormalised(model, split, mean, std, device, batch_size: int = 1000):
    """The loader is built without the training mean and std: the model sees 0..1 pixels it never trained on."""
    from common.loaders import TensorLoader

    model.eval()
    plain, flipped = [], []
    for x, _ in TensorLoader(split, batch_size, device=device, mean=(0.0,) * 3, std=(1.0,) * 3, shuffle=False):
        logits = model(x).float()
        plain.append(torch.softmax(logits, dim=1))
        flipped.append(torch.softmax(flip_averaged_logits(model, x, logits), dim=1))
    return torch.cat(plain).numpy(), torch.cat(flipped).numpy()


# --------------------------------------------------------------------------- p2-eval.2 the confusion matrix


def call_confusion_matrix(labels, predictions, num_classes):
    """The learner's matrix as an array; a crash on an absent class becomes a diagnosis."""
    try:
        matrix = evaluation.confusion_matrix(labels, predictions, num_classes)
    except (ValueError, IndexError) as exc:
        raise AssertionError(f"confusion_matrix crashed ({type(exc).__name__}: {exc}) on {num_classes} classes where "
                             f"class {num_classes - 1} never occurs: a class that never occurs still gets its row "
                             "and column (np.bincount needs minlength)") from exc
    return np.asarray(matrix)


@exercise("p2-eval.2")
def test_confusion_matrix_rows_are_the_truth():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predictions = np.array([0, 1, 2, 1, 1, 2, 0, 0, 2])
    # rows: true class, columns: predicted; class 3 never occurs
    expected = np.array([[1, 1, 1, 0], [0, 2, 0, 0], [2, 0, 2, 0], [0, 0, 0, 0]])
    matrix = call_confusion_matrix(labels, predictions, 4)
    expect(matrix.shape == (4, 4), f"with 4 classes the matrix should be (4, 4), got {matrix.shape}: a class that "
                                   "never occurs still gets its row and column (size it from num_classes, "
                                   "not from the largest label seen)")
    expect(np.issubdtype(matrix.dtype, np.integer), f"the matrix holds {matrix.dtype} values: it counts samples, "
                                                    "so make it integer (np.zeros(..., dtype=np.int64))")
    if not np.array_equal(matrix, expected) and np.array_equal(matrix.T, expected):
        expect(False, f"the matrix is transposed: got {matrix.tolist()}, expected {expected.tolist()}; rows are the "
                      "true class, columns the prediction: matrix[true, predicted] += 1")
    expect(np.array_equal(matrix, expected), f"got {matrix.tolist()}, expected {expected.tolist()}: each "
                                             "(true, predicted) pair adds one to matrix[true, predicted]")


@exercise("p2-eval.2")
def test_confusion_matrix_matches_sklearn_on_many_samples():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, 2000)
    predictions = np.where(rng.random(2000) < 0.6, labels, rng.integers(0, 10, 2000))
    matrix = call_confusion_matrix(labels, predictions, 10)
    expected = sk_confusion_matrix(labels, predictions, labels=list(range(10)))
    expect(matrix.shape == (10, 10), f"10 classes should give a (10, 10) matrix, got {matrix.shape}")
    expect(int(matrix.sum()) == 2000, f"the matrix counts {matrix.sum()} samples, not 2000: every sample is "
                                      "counted exactly once")
    expect(np.array_equal(matrix, expected), "the counts differ from sklearn.metrics.confusion_matrix's "
                                             f"(first row {matrix[0].tolist()} vs {expected[0].tolist()}): "
                                             "rows are the true class, columns the prediction")


@wrong_answer("p2-eval.2", diagnosis="rows are the true class")
def confusion_matrix_transposed(labels, predictions, num_classes):
    """Counts land in matrix[predicted, true]: rows and columns swapped."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for true, predicted in zip(labels, predictions):
        matrix[predicted, true] += 1
    return matrix


@wrong_answer("p2-eval.2", diagnosis="a class that never occurs still gets its row and column")
def confusion_matrix_sized_from_data(labels, predictions, num_classes):
    """np.bincount without minlength, sized by the largest class seen: an absent last class loses its row."""
    k = int(max(np.max(labels), np.max(predictions))) + 1
    return np.bincount(np.asarray(labels) * k + np.asarray(predictions)).reshape(k, k)


# --------------------------------------------------------------------------- p2-eval.3 precision, recall, F1


def samples_from(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions that produce ``matrix``, for scikit-learn's answer key."""
    pairs = [(t, p) for t in range(len(matrix)) for p in range(len(matrix)) for _ in range(int(matrix[t, p]))]
    labels, predictions = zip(*pairs)
    return np.array(labels), np.array(predictions)


# 4 classes: class 2 is never predicted (column of zeros), class 3 has no samples (row of zeros) but is predicted.
AWKWARD = np.array([[50, 6, 0, 4], [10, 20, 0, 0], [3, 2, 0, 1], [0, 0, 0, 0]])


def sklearn_scores(matrix: np.ndarray) -> dict:
    labels, predictions = samples_from(matrix)
    k = list(range(len(matrix)))
    p, r, f, s = precision_recall_fscore_support(labels, predictions, labels=k, zero_division=0)
    out = {"precision": p, "recall": r, "f1": f, "support": s}
    for average in ("macro", "weighted", "micro"):
        ap, ar, af, _ = precision_recall_fscore_support(labels, predictions, labels=k, average=average,
                                                        zero_division=0)
        out[average] = {"precision": ap, "recall": ar, "f1": af}
    return out


def call_class_scores(matrix):
    result = evaluation.class_scores(matrix.copy())
    expect(isinstance(result, dict), f"class_scores returns a dict, got {type(result).__name__}")
    missing = [k for k in ("precision", "recall", "f1", "support", "macro", "weighted") if k not in result]
    expect(not missing, f"the result has no {missing}: return precision, recall, f1, support (per class) "
                        "and the macro and weighted averages")
    for key in ("precision", "recall", "f1", "support"):
        shape = np.shape(result[key])
        expect(shape == (len(matrix),), f"{key} should hold one value per class, shape ({len(matrix)},), got {shape}")
    for average in ("macro", "weighted"):
        expect(isinstance(result[average], dict) and {"precision", "recall", "f1"} <= set(result[average]),
               f"result[{average!r}] should be a dict with 'precision', 'recall' and 'f1'")
    return result


@exercise("p2-eval.3")
def test_class_scores_per_class_match_sklearn():
    expected = sklearn_scores(AWKWARD)
    with np.errstate(all="ignore"):
        result = call_class_scores(AWKWARD)
    precision, recall, f1 = (np.asarray(result[k], dtype=np.float64) for k in ("precision", "recall", "f1"))
    nan_classes = sorted({int(i) for a in (precision, recall, f1) for i in np.flatnonzero(np.isnan(a))})
    expect(not nan_classes, f"classes {nan_classes} get nan: class 2 is never predicted, so its precision is 0/0, "
                            "and class 3 has no samples, so its recall is 0/0; report 0 there (sklearn's "
                            "zero_division=0), not nan, which would poison every average")
    if not np.allclose(precision, expected["precision"]) and np.allclose(precision, expected["recall"]):
        expect(False, f"precision is {np.round(precision, 3).tolist()}, which is the recall: precision divides the "
                      "diagonal by the column sum (all the times the model said k), recall by the row sum "
                      "(all the samples that are k)")
    expect(np.allclose(precision, expected["precision"]),
           f"precision {np.round(precision, 3).tolist()}, expected {np.round(expected['precision'], 3).tolist()}: "
           "the diagonal over the column sums")
    expect(np.allclose(recall, expected["recall"]),
           f"recall {np.round(recall, 3).tolist()}, expected {np.round(expected['recall'], 3).tolist()}: "
           "the diagonal over the row sums")
    expect(np.allclose(f1, expected["f1"]),
           f"F1 {np.round(f1, 3).tolist()}, expected {np.round(expected['f1'], 3).tolist()}: the harmonic mean "
           "2 P R / (P + R), 0 where P + R is 0")
    expect(np.array_equal(np.asarray(result["support"]), expected["support"]),
           f"support {np.asarray(result['support']).tolist()}, expected {expected['support'].tolist()}: "
           "the number of samples of each class, the row sums")


@exercise("p2-eval.3")
def test_class_scores_macro_and_weighted_averages():
    expected = sklearn_scores(AWKWARD)
    with np.errstate(all="ignore"):
        result = call_class_scores(AWKWARD)
    macro = {k: float(result["macro"][k]) for k in ("precision", "recall", "f1")}
    weighted = {k: float(result["weighted"][k]) for k in ("precision", "recall", "f1")}
    expect(not any(np.isnan(v) for v in (*macro.values(), *weighted.values())),
           f"an average is nan (macro {macro}, weighted {weighted}): a class that is never predicted has "
           "precision 0, not nan")
    micro = expected["micro"]
    if all(abs(macro[k] - micro[k]) < 1e-9 for k in macro) and abs(micro["f1"] - expected["macro"]["f1"]) > 1e-3:
        expect(False, f"the macro averages all equal the accuracy ({micro['f1']:.4f}): that is the micro average "
                      "(the counts pooled first). The macro average is the plain mean of the per-class figures, "
                      "so every class, rare or common, counts the same")
    for name, got, want in (("macro", macro, expected["macro"]), ("weighted", weighted, expected["weighted"])):
        for key in ("precision", "recall", "f1"):
            rule = ("the plain mean over classes" if name == "macro" else
                    "the per-class figures weighted by support (the row sums), over the total")
            expect(abs(got[key] - want[key]) < 1e-9, f"{name} {key} is {got[key]:.4f}, expected {want[key]:.4f}: "
                                                     f"{rule}")


@wrong_answer("p2-eval.3", diagnosis="which is the recall")
def class_scores_precision_recall_swapped(matrix):
    """Precision divides by the row sums and recall by the column sums."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp, rows, cols = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(tp, rows, out=np.zeros_like(tp), where=rows > 0)
    recall = np.divide(tp, cols, out=np.zeros_like(tp), where=cols > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": rows.astype(int),
            "macro": {"precision": precision.mean(), "recall": recall.mean(), "f1": f1.mean()},
            "weighted": {k: float(np.average(v, weights=rows)) for k, v in
                         (("precision", precision), ("recall", recall), ("f1", f1))}}


@wrong_answer("p2-eval.3", diagnosis="not nan")
def class_scores_dividing_by_zero(matrix):
    """Plain division: a class never predicted gets precision 0/0 = nan, and nan spreads to the averages."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp, rows, cols = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision, recall = tp / cols, tp / rows
    f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": rows.astype(int),
            "macro": {"precision": precision.mean(), "recall": recall.mean(), "f1": f1.mean()},
            "weighted": {k: float(np.average(v, weights=rows)) for k, v in
                         (("precision", precision), ("recall", recall), ("f1", f1))}}


@wrong_answer("p2-eval.3", diagnosis="that is the micro average")
def class_scores_micro_called_macro(matrix):
    """The 'macro' average pools every class's counts first: that is the micro average, the accuracy."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp, rows, cols = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision = np.divide(tp, cols, out=np.zeros_like(tp), where=cols > 0)
    recall = np.divide(tp, rows, out=np.zeros_like(tp), where=rows > 0)
    f1 = np.divide(2 * tp, rows + cols, out=np.zeros_like(tp), where=rows + cols > 0)
    pooled = tp.sum() / matrix.sum()
    return {"precision": precision, "recall": recall, "f1": f1, "support": rows.astype(int),
            "macro": {"precision": pooled, "recall": pooled, "f1": pooled},
            "weighted": {k: float(np.average(v, weights=rows)) for k, v in
                         (("precision", precision), ("recall", recall), ("f1", f1))}}


# --------------------------------------------------------------------------- p2-eval.4 expected calibration error

BINS = 10


def calibration_data(seed: int = 3, n: int = 3000, k: int = 4):
    """Predictions under-confident below 70% and over-confident above, more of them at high confidence.

    No confidence lies within 1e-6 of a bin edge, so every binning convention
    ((lo, hi] or [lo, hi)) puts each prediction in the same bin.
    """
    rng = np.random.default_rng(seed)
    confidence = 0.4 + 0.6 * np.sqrt(rng.random(n))
    near_edge = np.abs(confidence * BINS - np.round(confidence * BINS)) < 1e-5
    confidence[near_edge] += 2e-5
    chance_right = np.where(confidence < 0.7, confidence + 0.15, confidence - 0.2)
    predicted = rng.integers(0, k, n)
    right = rng.random(n) < chance_right
    labels = np.where(right, predicted, (predicted + rng.integers(1, k, n)) % k)
    probs = np.repeat(((1 - confidence) / (k - 1))[:, None], k, axis=1)
    probs[np.arange(n), predicted] = confidence
    return labels, probs


def reference_calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> dict:
    """Bin b holds confidences in (b/bins, (b+1)/bins]; returns weighted, unweighted and signed ECE, and the bins."""
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    weighted = unweighted = signed = 0.0
    table, used = [], 0
    for b in range(bins):
        members = index == b
        if not members.any():
            table.append(None)
            continue
        gap = correct[members].mean() - confidence[members].mean()
        weighted += members.mean() * abs(gap)
        signed += members.mean() * gap
        unweighted += abs(gap)
        used += 1
        table.append((int(members.sum()), confidence[members].mean(), correct[members].mean()))
    return {"ece": weighted, "unweighted": unweighted / used, "signed": abs(signed), "bins": table}


def call_ece(labels, probs, bins=BINS) -> dict:
    result = evaluation.expected_calibration_error(labels, probs, bins=bins)
    expect(isinstance(result, dict) and "ece" in result,
           "expected_calibration_error returns a dict with 'ece', 'bins', 'mean_confidence' and 'accuracy'")
    return result


@exercise("p2-eval.4")
def test_ece_matches_its_definition():
    labels, probs = calibration_data()
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    expected = reference_calibration(confidence, correct)
    ece = float(call_ece(labels, probs)["ece"])
    if abs(ece - expected["ece"]) > 1e-9:
        true_class = reference_calibration(probs[np.arange(len(labels)), labels], correct)["ece"]
        if abs(ece - expected["unweighted"]) < 1e-9:
            expect(False, f"ECE {ece:.4f} is the plain mean of the bins' gaps; expected {expected['ece']:.4f}: each "
                          "bin's gap is weighted by the share of predictions in the bin (count / N), so a bin "
                          "with three predictions barely counts")
        if abs(ece - true_class) < 1e-9:
            expect(False, f"ECE {ece:.4f}, expected {expected['ece']:.4f}: the confidence is the top probability "
                          "(probs.max(axis=1)), the model's belief in its own answer, not the probability it gave "
                          "the true class")
        if abs(ece - expected["signed"]) < 1e-9:
            expect(False, f"ECE {ece:.4f}, expected {expected['ece']:.4f}: over- and under-confident bins cancel "
                          "out; sum the absolute gap |accuracy - confidence| of each bin")
    expect(abs(ece - expected["ece"]) < 1e-9,
           f"ECE {ece:.6f}, expected {expected['ece']:.6f}: {BINS} equal-width bins of the top probability; "
           "the sum over bins of count / N * |accuracy in bin - mean confidence in bin|")


@exercise("p2-eval.4")
def test_ece_bins_table():
    labels, probs = calibration_data(seed=4)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    expected = reference_calibration(confidence, correct)
    result = call_ece(labels, probs)
    table = result.get("bins")
    expect(isinstance(table, list) and len(table) == BINS,
           f"result['bins'] should list all {BINS} bins in order (empty ones too), got "
           f"{len(table) if isinstance(table, list) else type(table).__name__}")
    for b, (row, want) in enumerate(zip(table, expected["bins"])):
        count = int(row.get("count", -1))
        expect(count == (want[0] if want else 0), f"bin {b} ({b / BINS:.1f}-{(b + 1) / BINS:.1f}) counts {count} "
                                                  f"predictions, expected {want[0] if want else 0}: bin by the top "
                                                  "probability")
        expect(abs(row.get("low", -1) - b / BINS) < 1e-9 and abs(row.get("high", -1) - (b + 1) / BINS) < 1e-9,
               f"bin {b} spans {row.get('low')}..{row.get('high')}, expected {b / BINS:.1f}..{(b + 1) / BINS:.1f}")
        if want:
            expect(abs(row["confidence"] - want[1]) < 1e-9 and abs(row["accuracy"] - want[2]) < 1e-9,
                   f"bin {b}: confidence {row['confidence']:.4f} and accuracy {row['accuracy']:.4f}, expected "
                   f"{want[1]:.4f} and {want[2]:.4f}: the mean top probability and the share right in the bin")
    expect(abs(result.get("mean_confidence", -1) - confidence.mean()) < 1e-9
           and abs(result.get("accuracy", -1) - correct.mean()) < 1e-9,
           "mean_confidence and accuracy should be the mean top probability and the share of right predictions "
           "over all samples")


@exercise("p2-eval.4")
def test_ece_of_certain_and_right_predictions_is_zero():
    labels = np.arange(40) % 4
    probs = np.eye(4)[labels]                     # confidence exactly 1.0, always right
    try:
        result = call_ece(labels, probs)
    except IndexError as exc:
        raise AssertionError(f"a confidence of exactly 1.0 crashed the binning ({exc}): 1.0 belongs in the last "
                             "bin, (0.9, 1.0]; an index int(confidence * bins) needs clipping") from exc
    counted = sum(int(row["count"]) for row in result["bins"])
    expect(counted == 40, f"the bins count {counted} of 40 predictions: a confidence of 1.0 belongs in the last bin")
    expect(abs(result["ece"]) < 1e-12, f"ECE {result['ece']} for predictions that are certain and always right; "
                                       "expected 0")


@wrong_answer("p2-eval.4", diagnosis="weighted by the share of predictions")
def ece_unweighted(labels, probs, bins: int = 15):
    """The gaps of the non-empty bins are averaged plainly, as if every bin held as many predictions."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, gaps = [], []
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (confidence > lo) & (confidence <= hi)
        n = int(in_bin.sum())
        if n == 0:
            table.append({"low": lo, "high": hi, "count": 0, "confidence": None, "accuracy": None})
            continue
        conf, acc = float(confidence[in_bin].mean()), float(correct[in_bin].mean())
        gaps.append(abs(conf - acc))
        table.append({"low": lo, "high": hi, "count": n, "confidence": conf, "accuracy": acc})
    return {"ece": float(np.mean(gaps)), "bins": table, "mean_confidence": float(confidence.mean()),
            "accuracy": float(correct.mean())}


@wrong_answer("p2-eval.4", diagnosis="not the probability it gave the true class")
def ece_true_class_confidence(labels, probs, bins: int = 15):
    """The confidence is taken as the probability of the true class instead of the top probability."""
    confidence, correct = probs[np.arange(len(labels)), labels], probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (confidence > lo) & (confidence <= hi) if b else (confidence >= lo) & (confidence <= hi)
        n = int(in_bin.sum())
        if n == 0:
            table.append({"low": lo, "high": hi, "count": 0, "confidence": None, "accuracy": None})
            continue
        conf, acc = float(confidence[in_bin].mean()), float(correct[in_bin].mean())
        ece += n / len(labels) * abs(conf - acc)
        table.append({"low": lo, "high": hi, "count": n, "confidence": conf, "accuracy": acc})
    return {"ece": ece, "bins": table, "mean_confidence": float(confidence.mean()), "accuracy": float(correct.mean())}


@wrong_answer("p2-eval.4", diagnosis="sum the absolute gap")
def ece_signed_gaps(labels, probs, bins: int = 15):
    """The bins' gaps keep their sign, so over-confident bins cancel under-confident ones."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    table, ece = [], 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (confidence > lo) & (confidence <= hi)
        n = int(in_bin.sum())
        if n == 0:
            table.append({"low": lo, "high": hi, "count": 0, "confidence": None, "accuracy": None})
            continue
        conf, acc = float(confidence[in_bin].mean()), float(correct[in_bin].mean())
        ece += n / len(labels) * (acc - conf)
        table.append({"low": lo, "high": hi, "count": n, "confidence": conf, "accuracy": acc})
    return {"ece": abs(ece), "bins": table, "mean_confidence": float(confidence.mean()),
            "accuracy": float(correct.mean())}


@wrong_answer("p2-eval.4", diagnosis="1.0 belongs in the last")
def ece_index_overflows_at_one(labels, probs, bins: int = 15):
    """Each prediction goes to bin int(confidence * bins): a confidence of exactly 1.0 lands past the last bin."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = (confidence * bins).astype(int)
    counts, conf_sum, right = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for i, c, r in zip(index, confidence, correct):
        counts[i] += 1
        conf_sum[i] += c
        right[i] += r
    table, ece = [], 0.0
    for b in range(bins):
        n = int(counts[b])
        conf, acc = (conf_sum[b] / n, right[b] / n) if n else (None, None)
        if n:
            ece += n / len(labels) * abs(conf - acc)
        table.append({"low": b / bins, "high": (b + 1) / bins, "count": n, "confidence": conf, "accuracy": acc})
    return {"ece": ece, "bins": table, "mean_confidence": float(confidence.mean()), "accuracy": float(correct.mean())}


# --------------------------------------------------------------------------- p2-eval.5 the precision-recall curve

# Sorted by score: 0.9 cat, 0.8 not, 0.7 cat, 0.7 not (a tie), 0.2 cat.
TINY_POSITIVE = np.array([False, True, False, True, True])
TINY_SCORES = np.array([0.8, 0.9, 0.7, 0.7, 0.2])
TINY_CURVE = {"thresholds": [0.9, 0.8, 0.7, 0.2], "precision": [1.0, 0.5, 0.5, 0.6],
              "recall": [1 / 3, 1 / 3, 2 / 3, 1.0]}


def detection_data(seed: int, n: int = 400, share: float = 0.15):
    """A rare class and scores that favour it, rounded to 2 decimals so that many samples tie."""
    rng = np.random.default_rng(seed)
    is_positive = rng.random(n) < share
    scores = np.round(np.clip(rng.normal(0.3 + 0.25 * is_positive, 0.15), 0.0, 1.0), 2)
    return is_positive, scores


def call_pr_curve(is_positive, scores):
    result = evaluation.precision_recall_curve(is_positive.copy(), scores.copy())
    expect(isinstance(result, tuple) and len(result) == 3,
           "precision_recall_curve returns three arrays: (precision, recall, thresholds)")
    precision, recall, thresholds = (np.asarray(r, dtype=np.float64).ravel() for r in result)
    expect(len(precision) == len(recall) == len(thresholds),
           f"precision, recall and thresholds have {len(precision)}, {len(recall)} and {len(thresholds)} entries: "
           "one of each per threshold")
    return precision, recall, thresholds


def diagnose_curve(precision, recall, thresholds, expected: dict, distinct: int) -> None:
    """The likely mistake, when the curve differs from ``expected`` (thresholds, precision, recall, highest first)."""
    want_t, want_p, want_r = (np.asarray(expected[k]) for k in ("thresholds", "precision", "recall"))
    if len(thresholds) > distinct:
        expect(False, f"{len(thresholds)} points for {distinct} distinct scores: samples with the same score are "
                      "flagged together by any threshold, so they make one point, not one each; keep only the last "
                      "position of each run of equal scores (counted after all of them)")
    if len(thresholds) > 1 and np.all(np.diff(thresholds) > 0):
        expect(False, f"the thresholds increase ({thresholds[0]:g}, {thresholds[1]:g}, ...): sort the scores highest "
                      "first (np.argsort(-scores)); a threshold flags every sample at or above it, so the counts "
                      "accumulate from the top score down")
    if len(thresholds) == len(want_t) and np.allclose(precision, want_r) and np.allclose(recall, want_p):
        expect(False, "precision and recall are swapped: precision is tp / (tp + fp), over the flagged samples; "
                      "recall is tp / positives, over the real ones")
    expect(len(thresholds) == len(want_t) and np.allclose(thresholds, want_t),
           f"thresholds {np.round(thresholds, 3).tolist()[:8]}, expected {np.round(want_t, 3).tolist()[:8]}: "
           "the distinct scores, highest first")
    expect(np.allclose(precision, want_p),
           f"precision {np.round(precision, 3).tolist()[:8]}, expected {np.round(want_p, 3).tolist()[:8]}: "
           "tp / (tp + fp) of the samples scoring at or above each threshold")
    expect(np.allclose(recall, want_r),
           f"recall {np.round(recall, 3).tolist()[:8]}, expected {np.round(want_r, 3).tolist()[:8]}: tp over the "
           "number of positives, rising to 1 at the lowest threshold")


@exercise("p2-eval.5")
def test_pr_curve_on_five_samples():
    precision, recall, thresholds = call_pr_curve(TINY_POSITIVE, TINY_SCORES)
    diagnose_curve(precision, recall, thresholds, TINY_CURVE, distinct=4)


@exercise("p2-eval.5")
def test_pr_curve_matches_sklearn_with_many_ties():
    for seed in (5, 6):
        is_positive, scores = detection_data(seed)
        sk_precision, sk_recall, sk_thresholds = sk_precision_recall_curve(is_positive, scores)
        # scikit-learn: thresholds increasing, plus a last point (precision 1, recall 0) for no threshold
        expected = {"thresholds": sk_thresholds[::-1], "precision": sk_precision[:-1][::-1],
                    "recall": sk_recall[:-1][::-1]}
        precision, recall, thresholds = call_pr_curve(is_positive, scores)
        diagnose_curve(precision, recall, thresholds, expected, distinct=len(np.unique(scores)))


@wrong_answer("p2-eval.5", diagnosis="sort the scores highest first")
def pr_curve_sorted_ascending(is_positive, scores):
    """The scores are sorted lowest first, so the counts accumulate from the bottom."""
    is_positive, scores = np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    s, hits = scores[order], is_positive[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(hits)[last].astype(float), np.cumsum(~hits)[last].astype(float)
    return tp / (tp + fp), tp / hits.sum(), s[last]


@wrong_answer("p2-eval.5", diagnosis="they make one point, not one each")
def pr_curve_one_point_per_sample(is_positive, scores):
    """Every sample is a point of its own, even when its score ties with the next one."""
    is_positive, scores = np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    hits = is_positive[order]
    tp, fp = np.cumsum(hits).astype(float), np.cumsum(~hits).astype(float)
    return tp / (tp + fp), tp / hits.sum(), scores[order]


@wrong_answer("p2-eval.5", diagnosis="precision and recall are swapped")
def pr_curve_swapped(is_positive, scores):
    """Returns (recall, precision, thresholds): the two figures in each other's place."""
    is_positive, scores = np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], is_positive[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(hits)[last].astype(float), np.cumsum(~hits)[last].astype(float)
    return tp / hits.sum(), tp / (tp + fp), s[last]


# --------------------------------------------------------------------------- p2-eval.6 the threshold for a cost


def cheapest_thresholds(is_positive, scores, cost_miss, cost_false_alarm) -> tuple[list[float], dict]:
    """Every threshold of least cost (by trying each distinct score and inf), and the cost of each threshold."""
    is_positive, scores = np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    costs = {}
    for t in [np.inf, *np.unique(scores)]:
        flagged = scores >= t
        costs[float(t)] = cost_miss * np.sum(is_positive & ~flagged) + cost_false_alarm * np.sum(~is_positive & flagged)
    least = min(costs.values())
    return sorted((t for t, c in costs.items() if c == least), reverse=True), costs


def call_threshold(is_positive, scores, cost_miss, cost_false_alarm) -> float:
    result = evaluation.threshold_for_cost(is_positive.copy(), scores.copy(), cost_miss, cost_false_alarm)
    expect(np.ndim(result) == 0, f"threshold_for_cost returns one threshold (a float), got {type(result).__name__}")
    return float(result)


def diagnose_threshold(is_positive, scores, cost_miss, cost_false_alarm) -> None:
    got = call_threshold(is_positive, scores, cost_miss, cost_false_alarm)
    best, costs = cheapest_thresholds(is_positive, scores, cost_miss, cost_false_alarm)
    if got == best[0]:
        return
    swapped, _ = cheapest_thresholds(is_positive, scores, cost_false_alarm, cost_miss)
    if got in swapped and got not in best:
        expect(False, f"threshold {got:g} is the cheapest with the two costs swapped: a miss (a positive scored "
                      f"below the threshold) costs cost_miss={cost_miss:g}, a false alarm (a negative at or above it) "
                      f"costs cost_false_alarm={cost_false_alarm:g}")
    if best[0] == np.inf and got != np.inf:
        expect(False, f"threshold {got:g} costs {costs.get(got, float('nan')):g}, but flagging nothing (threshold "
                      f"inf: every positive missed, no false alarm) costs {costs[np.inf]:g}, the least here; try inf "
                      "as well as every score")
    if got in best:
        expect(False, f"thresholds {', '.join(f'{t:g}' for t in best)} all cost {costs[best[0]]:g}, the least, and "
                      f"you chose {got:g}: on a tie the docstring's rule takes the highest threshold (the fewest "
                      "flags for the same cost)")
    expect(False, f"threshold {got:g} costs {costs.get(got, 'something other than any score')}, but {best[0]:g} "
                  f"costs {costs[best[0]]:g}: cost = cost_miss x positives scored below the threshold + "
                  "cost_false_alarm x negatives scored at or above it (flag when score >= threshold)")


@exercise("p2-eval.6")
def test_threshold_on_a_small_example():
    # Highest first: 0.9 pos, 0.8 neg, 0.7 pos, 0.6 neg, 0.5 neg, 0.4 pos, 0.3 neg, 0.2 neg, 0.1 neg.
    is_positive = np.array([0, 1, 0, 0, 1, 0, 1, 0, 0], dtype=bool)
    scores = np.array([0.2, 0.4, 0.6, 0.8, 0.9, 0.1, 0.7, 0.5, 0.3])
    diagnose_threshold(is_positive, scores, 5.0, 1.0)     # 0.4: every positive, 3 false alarms, cost 3
    diagnose_threshold(is_positive, scores, 1.0, 5.0)     # 0.9: no false alarm, 2 misses, cost 2


@exercise("p2-eval.6")
def test_threshold_ties_take_the_highest():
    # 0.95 pos, five negatives, 0.45 pos, negatives: at 5:1, stopping at 0.95 or at 0.45 both cost 5.
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.3, 0.2])
    is_positive = np.array([1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=bool)
    diagnose_threshold(is_positive[::-1], scores[::-1], 5.0, 1.0)


@exercise("p2-eval.6")
def test_threshold_when_flagging_nothing_is_cheapest():
    # The top score is a negative: any flag costs a false alarm (10), more than missing both positives (2).
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    is_positive = np.array([0, 1, 0, 1, 0], dtype=bool)
    diagnose_threshold(is_positive, scores, 1.0, 10.0)


@exercise("p2-eval.6")
def test_threshold_against_every_candidate():
    for seed, (cost_miss, cost_false_alarm) in zip((11, 12, 13), ((5.0, 1.0), (1.0, 1.0), (20.0, 1.0))):
        is_positive, scores = detection_data(seed, n=300)
        diagnose_threshold(is_positive, scores, cost_miss, cost_false_alarm)


def _threshold_candidates(is_positive, scores, with_inf: bool = True):
    is_positive, scores = np.asarray(is_positive, dtype=bool), np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], is_positive[order]
    last = np.r_[s[1:] != s[:-1], True]
    tp, fp = np.cumsum(hits)[last], np.cumsum(~hits)[last]
    if with_inf:
        return np.r_[np.inf, s[last]], np.r_[0, tp], np.r_[0, fp], hits.sum()
    return s[last], tp, fp, hits.sum()


@wrong_answer("p2-eval.6", diagnosis="the cheapest with the two costs swapped")
def threshold_costs_swapped(is_positive, scores, cost_miss, cost_false_alarm):
    """A miss is charged the false alarm's cost and a false alarm the miss's."""
    thresholds, tp, fp, positives = _threshold_candidates(is_positive, scores)
    return float(thresholds[np.argmin(cost_false_alarm * (positives - tp) + cost_miss * fp)])


@wrong_answer("p2-eval.6", diagnosis="on a tie the docstring's rule takes the highest threshold")
def threshold_lowest_on_tie(is_positive, scores, cost_miss, cost_false_alarm):
    """Of the thresholds of least cost, the lowest (the last one np.argmin would not pick)."""
    thresholds, tp, fp, positives = _threshold_candidates(is_positive, scores)
    costs = cost_miss * (positives - tp) + cost_false_alarm * fp
    return float(thresholds[np.flatnonzero(costs == costs.min())[-1]])


@wrong_answer("p2-eval.6", diagnosis="try inf as well as every score")
def threshold_never_flags_nothing(is_positive, scores, cost_miss, cost_false_alarm):
    """Only the scores are tried: 'flag nothing' (threshold inf) is never a candidate."""
    thresholds, tp, fp, positives = _threshold_candidates(is_positive, scores, with_inf=False)
    return float(thresholds[np.argmin(cost_miss * (positives - tp) + cost_false_alarm * fp)])


# --------------------------------------------------------------------------- p2-eval.7 class weights


def call_class_weights(counts) -> np.ndarray:
    weights = np.asarray(imbalance.class_weights(list(counts)), dtype=np.float64)
    expect(weights.shape == (len(counts),), f"{len(counts)} counts should give {len(counts)} weights, one per "
                                            f"class; got shape {weights.shape}")
    return weights


@exercise("p2-eval.7")
def test_class_weights_favour_the_rare_class():
    counts = [100, 100, 25, 100]
    weights = call_class_weights(counts)
    expected = np.array([4 / 7, 4 / 7, 16 / 7, 4 / 7])
    if weights[2] < weights[0]:
        expect(False, f"weights {np.round(weights, 3).tolist()}: the rare class (25 images) gets the smallest "
                      "weight; weights go as 1 / count, so the rarer the class, the larger its weight")
    totals = weights * np.array(counts)
    expect(np.allclose(totals, totals[0]), f"count x weight is {np.round(totals, 2).tolist()} per class: with "
                                           "inverse-frequency weights it is the same for every class (w_k ~ 1 / n_k)")
    if abs(weights.sum() - 1) < 1e-9:
        expect(False, f"the weights sum to 1 ({np.round(weights, 3).tolist()}): scale them so that their mean "
                      "is 1, not their sum (an average class then weighs about 1)")
    expect(abs(weights.mean() - 1) < 1e-9, f"the weights average {weights.mean():.4g}: divide 1 / count by the "
                                           "mean of those values, so that the weights average 1")
    expect(np.allclose(weights, expected), f"weights {np.round(weights, 4).tolist()}, expected "
                                           f"{np.round(expected, 4).tolist()}")


@exercise("p2-eval.7")
def test_class_weights_of_the_lesson_split():
    counts = [4500, 4500, 4500, 225, 4500, 4500, 4500, 4500, 4500, 4500]
    weights = call_class_weights(counts)
    expect(abs(weights.mean() - 1) < 1e-9 and abs(weights[3] / weights[0] - 20) < 1e-6,
           f"weights {np.round(weights, 3).tolist()}: the class with 225 images should weigh 20 times one with "
           "4,500, and the ten weights average 1")


@wrong_answer("p2-eval.7", diagnosis="the rare class (25 images) gets the smallest")
def class_weights_proportional(counts):
    """Weights proportional to the counts (the class frequencies), normalised to mean 1."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts / counts.mean()


@wrong_answer("p2-eval.7", diagnosis="not their sum")
def class_weights_sum_to_one(counts):
    """Inverse frequency, normalised to sum 1 instead of mean 1."""
    inverse = 1.0 / np.asarray(counts, dtype=np.float64)
    return inverse / inverse.sum()


@wrong_answer("p2-eval.7", diagnosis="divide 1 / count by the mean")
def class_weights_unnormalised(counts):
    """Plain 1 / count, never scaled."""
    return 1.0 / np.asarray(counts, dtype=np.float64)
