"""The model card: what the model is for, what it was trained on, how it scores, where it fails.

A model is handed over with a card (Mitchell et al., "Model Cards for Model
Reporting", 2019, https://arxiv.org/abs/1810.03993): intended use, training
data, evaluation, and the known weaknesses, so that whoever deploys it knows
what it was measured to do, and what it was not.  Every figure on this card
is measured by p3-onnx on the exported file itself, the one the service
serves, never copied from elsewhere:

* **per class**: precision and recall on the test images, because a 10-class
  average hides the class the model gets wrong most;
* **most-confused pairs**: the largest off-diagonal cells of the confusion
  matrix (cat taken for dog, and so on);
* **calibration**: the expected calibration error (ECE, below), because the
  service reports a confidence with every answer;
* **under drift**: accuracy on the same test images under the shifts
  p3-monitor plays to the live service (brightness, Gaussian noise, blur);
* **latency**: the batch-1, one-thread figures, with the machine they came from.

``model_card.json`` holds the figures (``GET /v1/model`` returns them);
``MODEL_CARD.md`` is the same card for people (``GET /v1/model/card``, linked
from the demo page).  Both are listed in the manifest with their sha256.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CARD_JSON = "model_card.json"
CARD_MARKDOWN = "MODEL_CARD.md"
CALIBRATION_BINS = 15
INT8_WARNING_POINTS = 1.0   # an INT8 model that loses more than this is named among the weaknesses


def per_class(predicted: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, dict]:
    """Precision (of the answers "c", how many were c) and recall (of the images of c, how many were found)."""
    rows = {}
    for k, name in enumerate(classes):
        answered, actual = predicted == k, labels == k
        hits = int((answered & actual).sum())
        rows[name] = {"images": int(actual.sum()),
                      "precision": hits / int(answered.sum()) if answered.any() else None,
                      "recall": hits / int(actual.sum()) if actual.any() else None}
    return rows


def confused_pairs(predicted: np.ndarray, labels: np.ndarray, classes: list[str], top: int = 5) -> list[dict]:
    """The ``top`` largest off-diagonal cells of the confusion matrix: (true class, answered class, count)."""
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(matrix, (labels, predicted), 1)
    np.fill_diagonal(matrix, 0)
    order = np.argsort(matrix, axis=None)[::-1][:top]
    pairs = []
    for flat in order:
        true, answered = np.unravel_index(flat, matrix.shape)
        if matrix[true, answered] == 0:
            break
        pairs.append({"true": classes[true], "answered": classes[answered], "images": int(matrix[true, answered]),
                      "share_of_true_class": float(matrix[true, answered] / max(1, (labels == true).sum()))})
    return pairs


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """ECE: sort the answers into ``bins`` equal-width bins of confidence, then average |accuracy - confidence|.

    A calibrated model that says "80%" is right 80% of the time in that bin.
    Each bin's gap is weighted by its share of the answers; 0 is perfect.
    Guo et al., "On Calibration of Modern Neural Networks" (2017), equation 3,
    https://arxiv.org/abs/1706.04599.
    """
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return {"ece": float(ece), "bins": bins, "mean_confidence": float(confidence.mean()),
            "accuracy": float(correct.mean())}


def shifted_accuracy(predict, images_uint8: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Accuracy on ``images`` as they are and under each of p3-monitor's image shifts (same images, same seed)."""
    from phase3_production.p3_monitor import SHIFTS

    rng = np.random.default_rng(seed)
    result = {"clean": float((predict(images_uint8) == labels).mean())}
    for name, shift in SHIFTS.items():
        if shift is None:          # the class-mix shift changes which images arrive, not the images
            continue
        shifted = np.stack([shift(image, rng) for image in images_uint8])
        result[name] = float((predict(shifted) == labels).mean())
    return result


def build_card(*, model: dict, data: dict, training: dict, evaluation: dict, latency: dict) -> dict:
    """The card's figures, one dictionary: what ``model_card.json`` holds."""
    return {"format": "ml60-model-card-v1",
            "intended_use": ("Teaching: classify small photographs (32 x 32 pixels) into the ten CIFAR-10 "
                             "classes, to learn how a model is trained, exported, served and monitored."),
            "not_for": ("Any decision about people, safety or money; photographs of things outside the ten "
                        "classes (the model always answers one of the ten); images far from CIFAR-10's "
                        "small, centred objects."),
            "model": model, "training_data": data, "training": training, "evaluation": evaluation,
            "latency": latency}


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def card_markdown(card: dict) -> str:
    """``MODEL_CARD.md``: the card's figures written out for a person."""
    e, m, d = card["evaluation"], card["model"], card["training_data"]
    lines = [f"# Model card: {m['name']}", "",
             f"Version `{m['version']}` (sha256 `{m['sha256']}`), file `{m['file']}`, {m['parameters']:,} parameters, "
             f"exported {m['exported_utc']}. Every figure below was measured by `make p3-onnx` on this file.", "",
             "## Intended use", "", card["intended_use"], "", f"**Not for:** {card['not_for']}", "",
             "## Training data", "",
             f"{d['dataset']} ({'real data' if d['real_data'] else 'OFFLINE STAND-IN, not the real dataset'}), "
             f"from {d['source']}. Split: {d['split']}.", "",
             "## Training", "", "; ".join(f"{k}: {v}" for k, v in card["training"].items()), "",
             "## Evaluation", "",
             f"On {e['images']:,} test images: accuracy {percent(e['accuracy'])} (fp32), "
             f"{percent(e.get('int8_accuracy'))} (static INT8).", "",
             "| class | test images | precision | recall |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {row['images']:,} | {percent(row['precision'])} | {percent(row['recall'])} |"
              for name, row in e["per_class"].items()]
    c = e["calibration"]
    lines += ["", f"**Calibration:** expected calibration error {c['ece']:.3f} over {c['bins']} bins: mean "
                  f"confidence {percent(c['mean_confidence'])} against accuracy {percent(c['accuracy'])} "
                  f"({'over' if c['mean_confidence'] > c['accuracy'] else 'under'}-confident on average).", "",
              "## Known weaknesses", "", "Most-confused pairs (true class taken for another):", ""]
    lines += [f"- {p['true']} answered as {p['answered']}: {p['images']} images "
              f"({percent(p['share_of_true_class'])} of the {p['true']} images)" for p in e["confused_pairs"]]
    if e.get("int8_accuracy") is not None and e["accuracy"] - e["int8_accuracy"] > INT8_WARNING_POINTS / 100:
        lines += [f"- static INT8 (`model.int8.onnx`) loses {100 * (e['accuracy'] - e['int8_accuracy']):.1f} points "
                  "on the same test images: serve the fp32 model (`MODEL_FILE=model.onnx`, the default) until a "
                  "calibration that keeps the accuracy is found"]
    shifts = e["under_shift"]
    lines += ["", "Accuracy under the shifts p3-monitor plays to the live service (same test images): "
              + ", ".join(f"{name} {percent(value)}" for name, value in shifts.items()) + ". The drift monitor "
              "raises its alarm on each of these shifts (`make p3-monitor`); these figures say what the alarm "
              "means for the answers.", "",
              "## Latency", "",
              f"Batch 1, one thread: {card['latency']['summary']}. Measured on {card['latency']['machine']}; "
              "another machine gives other figures (`benchmark.md` beside this card has the whole grid).", ""]
    return "\n".join(lines)


def write_card(run_dir: Path, card: dict) -> tuple[Path, Path]:
    """``model_card.json`` and ``MODEL_CARD.md`` in ``run_dir``."""
    json_path, markdown_path = Path(run_dir) / CARD_JSON, Path(run_dir) / CARD_MARKDOWN
    json_path.write_text(json.dumps(card, indent=2))
    markdown_path.write_text(card_markdown(card))
    return json_path, markdown_path
