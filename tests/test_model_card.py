"""The model card: its figures checked against independent computations, and the card the export writes.

``per_class`` against scikit-learn's precision and recall, the expected
calibration error on a case worked by hand, the confused pairs on a small
confusion matrix; then the quick p3-onnx run's card: every figure present,
the Markdown saying the same, both listed in the manifest, and the service
serving both (``/v1/model`` and ``/v1/model/card``) after verifying them.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import precision_score, recall_score

from phase3_production import model_card

pytestmark = getattr(pytest.mark, "p3-onnx")
CLASSES = ["cat", "dog", "frog"]


def test_per_class_precision_and_recall_match_scikit_learn():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    rows = model_card.per_class(predicted, labels, CLASSES)
    precision = precision_score(labels, predicted, average=None, labels=[0, 1, 2])
    recall = recall_score(labels, predicted, average=None, labels=[0, 1, 2])
    for k, name in enumerate(CLASSES):
        assert rows[name]["precision"] == pytest.approx(precision[k])
        assert rows[name]["recall"] == pytest.approx(recall[k])
        assert rows[name]["images"] == int((labels == k).sum())


def test_a_class_never_answered_has_no_precision_rather_than_zero():
    rows = model_card.per_class(np.array([0, 0, 0]), np.array([0, 1, 1]), CLASSES)
    assert rows["dog"]["precision"] is None and rows["dog"]["recall"] == 0.0
    assert rows["frog"] == {"images": 0, "precision": None, "recall": None}


def test_expected_calibration_error_by_hand():
    """Two bins' worth of answers: 4 at 0.9 confidence (3 right), 4 at 0.6 (2 right).

    ECE = 4/8 * |0.75 - 0.9| + 4/8 * |0.5 - 0.6| = 0.075 + 0.05 = 0.125.
    """
    probabilities = np.array([[0.9, 0.05, 0.05]] * 4 + [[0.6, 0.3, 0.1]] * 4)
    labels = np.array([0, 0, 0, 1, 0, 0, 1, 1])
    result = model_card.expected_calibration_error(probabilities, labels, bins=10)
    assert result["ece"] == pytest.approx(0.125)
    assert result["accuracy"] == pytest.approx(5 / 8) and result["mean_confidence"] == pytest.approx(0.75)
    perfect = model_card.expected_calibration_error(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2]))
    assert perfect["ece"] == 0.0


def test_confused_pairs_are_the_largest_off_diagonal_cells():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 10)
    predicted = np.array([0] * 6 + [1] * 4 + [1] * 9 + [2] * 1 + [2] * 8 + [0] * 2)
    pairs = model_card.confused_pairs(predicted, labels, CLASSES, top=5)
    assert [(p["true"], p["answered"], p["images"]) for p in pairs] == [("cat", "dog", 4), ("frog", "cat", 2),
                                                                        ("dog", "frog", 1)]
    assert pairs[0]["share_of_true_class"] == pytest.approx(0.4)


@pytest.fixture
def quick_export(quick_p3_onnx_export):
    """The session's quick p3-onnx export (stand-in data): ``(its folder, its metrics)``."""
    runs, metrics = quick_p3_onnx_export
    return runs / "p3-onnx" / "quick", metrics


def test_the_export_writes_a_card_of_measured_figures(quick_export):
    folder, metrics = quick_export
    card = json.loads((folder / "model_card.json").read_text())
    e = card["evaluation"]
    assert e["images"] == 1000 and 0 <= e["accuracy"] <= 1
    assert e["accuracy"] == pytest.approx(metrics["test_accuracy"]["ort_fp32"])   # the served file's own figure
    assert set(e["per_class"]) == set(card["training_data"]["classes"])
    assert set(e["under_shift"]) == {"clean", "brightness", "gaussian_noise", "blur"}
    assert e["under_shift"]["clean"] == pytest.approx(e["accuracy"])
    assert 0 <= e["calibration"]["ece"] <= 1 and e["confused_pairs"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert card["model"]["sha256"] == manifest["sha256"]
    assert {"model_card", "model_card_markdown"} <= set(manifest)
    text = (folder / "MODEL_CARD.md").read_text()
    # a card never passes stand-in figures off as CIFAR-10 (the quick run uses the stand-in without DATA_DIR)
    assert ("OFFLINE STAND-IN" in text) == (not card["training_data"]["real_data"])
    assert card["training_data"]["real_data"] == metrics["data"]["real_data"]
    assert f"{100 * e['accuracy']:.1f}%" in text and "## Known weaknesses" in text
    for pair in e["confused_pairs"]:
        assert f"{pair['true']} answered as {pair['answered']}: {pair['images']} images" in text


def test_the_service_serves_the_card_it_verified(quick_export, tmp_path):
    from fastapi.testclient import TestClient

    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings
    from phase3_production.serving.model import ModelLoadError

    folder, _ = quick_export
    with TestClient(create_app(Settings(model_dir=folder))) as client:
        info = client.get("/v1/model").json()
        assert info["card"] == json.loads((folder / "model_card.json").read_text())
        assert info["card_url"] == "/v1/model/card"
        reply = client.get("/v1/model/card")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/markdown")
        assert reply.text == (folder / "MODEL_CARD.md").read_text()
    copy = tmp_path / "export"
    shutil.copytree(folder, copy)
    (copy / "MODEL_CARD.md").write_text((copy / "MODEL_CARD.md").read_text().replace("Known", "Few"))
    with pytest.raises(ModelLoadError, match="MODEL_CARD.md: missing or its sha256 does not match"):
        with TestClient(create_app(Settings(model_dir=copy))):
            pass


def test_without_a_card_the_api_says_so(model_dir):
    from fastapi.testclient import TestClient

    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    with TestClient(create_app(Settings(model_dir=model_dir)), raise_server_exceptions=False) as client:
        info = client.get("/v1/model").json()
        assert info["card"] is None and info["card_url"] is None
        reply = client.get("/v1/model/card")
        assert reply.status_code == 404 and "make p3-onnx" in reply.json()["error"]["message"]


def test_an_int8_model_that_loses_accuracy_is_named_among_the_weaknesses(quick_export):
    folder, _ = quick_export
    card = json.loads((folder / "model_card.json").read_text())
    card["evaluation"].update(accuracy=0.8685, int8_accuracy=0.6546)
    assert "static INT8 (`model.int8.onnx`) loses 21.4 points" in model_card.card_markdown(card)
    card["evaluation"].update(int8_accuracy=0.8684)
    assert "static INT8 (`model.int8.onnx`) loses" not in model_card.card_markdown(card)
