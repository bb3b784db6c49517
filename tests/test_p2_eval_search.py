"""p2-eval and p2-search: evaluation figures on known predictions, quick runs, resumable studies."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phase2_depth import evaluation, imbalance, p2_eval, p2_search

eval_mark = getattr(pytest.mark, "p2-eval")
search_mark = getattr(pytest.mark, "p2-search")


@eval_mark
def test_scores_on_known_predictions():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 0, 1, 1, 1, 0]] * 0.8 + 0.2 / 3
    result = evaluation.scores(labels, probs, ["a", "b", "c"])
    assert result["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    assert result["per_class_accuracy"] == {"a": pytest.approx(2 / 3), "b": 1.0, "c": 0.0}
    report = result["classification_report"]
    assert report["b"]["precision"] == pytest.approx(2 / 3) and report["c"]["f1-score"] == 0.0
    assert result["most_confused"][0]["count"] == 1


@eval_mark
def test_calibration_error_is_zero_when_confidence_matches_accuracy():
    rng = np.random.default_rng(0)
    labels = np.zeros(10000, dtype=int)
    probs = np.tile([0.7, 0.3], (10000, 1))
    labels[rng.random(10000) < 0.3] = 1  # right 70% of the time at 70% confidence
    assert evaluation.expected_calibration_error(labels, probs)["ece"] < 0.01
    overconfident = np.tile([0.99, 0.01], (10000, 1))
    assert evaluation.expected_calibration_error(labels, overconfident)["ece"] == pytest.approx(0.99 - 0.7, abs=0.01)


@eval_mark
def test_quick_eval_after_quick_cnn(with_quick_p2_cnn):
    tmp_path = with_quick_p2_cnn
    metrics = p2_eval.main(["--quick", "--device", "cpu"])
    assert p2_eval.check(metrics) == []
    for name in ("confusion_matrix.png", "reliability.png", "misclassified.png", "report.txt", "metrics.json"):
        assert (tmp_path / "p2-eval" / "quick" / name).is_file(), name
    saved = json.loads((tmp_path / "p2-eval" / "quick" / "metrics.json").read_text())
    assert {"macro avg", "weighted avg"} <= set(saved["classification_report"])
    assert 0.0 <= saved["flip_tta"]["accuracy"] <= 1.0 and 0.0 <= saved["flip_tta"]["ece"] <= 1.0
    # Section 7, accuracy alone is a lie: its pictures, three models, the rare class cut to 5% of its images
    for name in ("imbalance.png", "pr_curve.png"):
        assert (tmp_path / "p2-eval" / "quick" / name).is_file(), name
    lesson = saved["imbalance"]
    assert set(lesson["models"]) == set(lesson["detection"]) == {"balanced", "plain", "resampled"}
    rare = saved["classification_report"]
    rare_index = list(lesson["models"]["plain"]["recall"]).index(lesson["rare_class"])
    assert lesson["train_counts"][rare_index] == round(0.05 * lesson["balanced_train_counts"][rare_index])
    assert all(0.0 <= m["rare_recall"] <= 1.0 and 0.0 <= m["average_precision"] <= 1.0
               for m in lesson["models"].values())
    assert lesson["models"]["plain"]["rare_test_images"] == rare[lesson["rare_class"]]["support"]


@eval_mark
def test_average_precision_matches_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    is_positive = rng.random(500) < 0.1
    scores = np.round(rng.random(500) * 0.7 + 0.3 * is_positive, 2)     # rounded: ties
    precision, recall, _ = evaluation.precision_recall_curve(is_positive, scores)
    expected = average_precision_score(is_positive, scores)
    assert evaluation.average_precision(precision, recall) == pytest.approx(expected)
    perfect = evaluation.precision_recall_curve(is_positive, is_positive.astype(float))
    assert evaluation.average_precision(*perfect[:2]) == pytest.approx(1.0)


@eval_mark
def test_make_rare_keeps_a_seeded_share_of_one_class_and_oversample_restores_the_balance():
    import torch

    from common.data import Split

    index = torch.arange(1000)
    images = torch.zeros(1000, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 1, 0, 0] = index // 100, index % 100     # each image knows its index
    split = Split(images, index % 10)
    rare = imbalance.make_rare(split, 3, 0.05, seed=0)
    assert rare.class_counts(10) == [100, 100, 100, 5, 100, 100, 100, 100, 100, 100]
    assert torch.equal(imbalance.make_rare(split, 3, 0.05, seed=0).images, rare.images)
    assert not torch.equal(imbalance.make_rare(split, 3, 0.05, seed=1).images, rare.images)
    kept = 100 * rare.images[:, 0, 0, 0].long() + rare.images[:, 1, 0, 0].long()
    assert torch.equal(split.labels[kept], rare.labels) and bool((kept[1:] > kept[:-1]).all())   # order kept
    resampled = imbalance.oversample(rare, imbalance.class_weights(rare.class_counts(10)))
    assert resampled.class_counts(10) == [100] * 10                 # each of the 5 kept images 20 times
    assert torch.equal(resampled.images[:len(rare)], rare.images)   # the originals first, in order


@eval_mark
def test_the_threshold_is_chosen_on_validation_and_tested_once():
    """Validation and test want different thresholds: the lesson takes validation's and only reports test's."""
    val_labels, test_labels = np.array([3, 3, 0, 0, 1]), np.array([3, 3, 0, 0, 1])
    val_probs, test_probs = np.full((5, 4), 0.1), np.full((5, 4), 0.1)
    val_probs[:, 3] = [0.9, 0.8, 0.2, 0.1, 0.1]      # on validation, 0.8 catches both at no false alarm
    test_probs[:, 3] = [0.9, 0.3, 0.5, 0.1, 0.1]      # on test, 0.3 would be the cheapest
    found = imbalance.detection(val_labels, val_probs, test_labels, test_probs, rare=3)
    assert found["threshold"] == 0.8 and found["validation"]["cost"] == 0.0
    assert found["test"]["true_positives"] == 1 and found["test"]["misses"] == 1 and found["test"]["cost"] == 5.0
    assert found["test_argmax"]["flagged"] == 3        # argmax says cat wherever P(cat) beats the 0.1s


def test_a_rule_that_flags_nothing_is_said_in_words():
    """When no threshold pays for its false alarms on validation, the cheapest rule flags nothing (threshold
    inf): the table says so instead of printing "probability >= inf"."""
    labels = np.array([3, 0, 0, 0, 0, 0])
    probs = np.full((6, 4), 0.1)
    probs[:, 3] = [0.2, 0.9, 0.8, 0.7, 0.6, 0.5]        # the one cat scores below every other image
    found = imbalance.detection(labels, probs, labels, probs, rare=3, cost_miss=1.0, cost_false_alarm=1.0)
    assert found["threshold"] == float("inf") and found["test"]["flagged"] == 0
    text = imbalance.detection_text({"plain": {**found, "test_argmax": found["test"]}})
    assert "inf" not in text and "flag nothing" in text
    assert imbalance.threshold_rule(0.25) == "probability >= 0.250"


def lesson_metrics(balanced: float, plain: float, resampled: float, real: bool = True) -> dict:
    """The figures check() reads from section 7, with the rare class's recall of each model."""
    models = {name: {"rare_recall": r, "rare_test_images": 1000}
              for name, r in (("balanced", balanced), ("plain", plain), ("resampled", resampled))}
    detection = {name: {"average_precision": 0.5, "threshold": 0.2, "test": {"true_positives": 600, "misses": 400}}
                 for name in models}
    return {"quick": False, "data": {"real_data": real},
            "imbalance": {"rare_class": "cat", "models": models, "detection": detection}}


@eval_mark
def test_check_reads_the_imbalance_section():
    assert p2_eval.imbalance_problems(lesson_metrics(0.45, 0.05, 0.40)) == []
    assert p2_eval.imbalance_problems({"quick": True}) == [
        "the imbalance section (balanced, plain and resampled models) is missing"]
    not_rare = p2_eval.imbalance_problems(lesson_metrics(0.45, 0.30, 0.60))
    assert len(not_rare) == 1 and "was the class made rare" in not_rare[0]
    unfixed = p2_eval.imbalance_problems(lesson_metrics(0.45, 0.05, 0.10))
    assert len(unfixed) == 1 and "are the rare images repeated" in unfixed[0]
    assert p2_eval.imbalance_problems(lesson_metrics(0.45, 0.40, 0.10, real=False)) == []   # stand-in data
    broken = lesson_metrics(0.45, 0.05, 0.40)
    broken["imbalance"]["detection"]["plain"]["test"]["misses"] = 0
    assert any("do not count every test image" in p for p in p2_eval.imbalance_problems(broken))


@eval_mark
def test_flip_averaging_mirrors_left_right_only():
    """Images equal to their own left-right mirror get exactly the plain answer; others do not."""
    import torch

    from common.data import Split
    from phase2_depth.models import FiveLayerCNN, WIDTHS

    torch.manual_seed(0)
    model = FiveLayerCNN(WIDTHS["narrow"], num_classes=10, dropout=0.0, pool_first=True)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    symmetric = torch.cat([images[..., :16], images[..., :16].flip(3)], dim=3)   # each row a palindrome
    args = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device="cpu")
    for split, same in ((Split(symmetric, torch.zeros(8, dtype=torch.long)), True),
                        (Split(images, torch.zeros(8, dtype=torch.long)), False)):
        plain, flipped = p2_eval.predict_probs(model, split, **args)
        assert np.allclose(plain, flipped, atol=1e-6) == same
        assert np.allclose(flipped.sum(axis=1), 1.0, atol=1e-5)


@eval_mark
def test_eval_refuses_a_model_for_other_classes(with_quick_p2_cnn):
    import torch

    tmp_path = with_quick_p2_cnn
    path = tmp_path / "p2-cnn" / "quick" / "model.pt"
    blob = torch.load(path, weights_only=True)
    blob["classes"] = [f"other-{i}" for i in range(10)]
    torch.save(blob, path)
    with pytest.raises(ValueError, match="trained on classes"):
        p2_eval.main(["--quick", "--device", "cpu"])


@search_mark
@pytest.mark.slow
def test_a_full_search_never_resumes_quick_trials(tmp_path):
    """Quick and full searches (and real versus stand-in data) keep separate studies in one study.db."""
    import optuna

    names = {p2_search.study_name(quick=q, real_data=r, dataset="cifar10") for q in (True, False) for r in (True, False)}
    assert len(names) == 4
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    quick = optuna.create_study(study_name=p2_search.study_name(quick=True, real_data=False, dataset="cifar10"),
                                storage=storage, direction="maximize")
    quick.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.3))
    full = p2_search.run_study(tmp_path, None, trials=0, epochs=1, device="cpu", seed=0,
                               name=p2_search.study_name(quick=False, real_data=True, dataset="cifar10"))
    assert full.trials == [] and len(optuna.load_study(study_name=quick.study_name, storage=storage).trials) == 1


@search_mark
@pytest.mark.slow
def test_quick_search_chooses_on_validation_and_resumes(tmp_path):
    metrics = p2_search.main(["--quick", "--run-dir", str(tmp_path), "--device", "cpu", "--trials", "3"])
    assert p2_search.check(metrics) == []
    assert metrics["trial_count"] == 3 and metrics["test_evaluations"] == 1
    # the loader's own record: one pass, over every test image
    assert metrics["test_set_passes"] == [{"pass": 1, "images": metrics["final"]["test_size"]}]
    for name in ("study.db", "results.csv", "results.md", "trials.png"):
        assert (tmp_path / name).is_file(), name
    again = p2_search.main(["--quick", "--run-dir", str(tmp_path), "--device", "cpu", "--trials", "2"])
    assert again["trial_count"] == 5  # the SQLite study was resumed, not restarted
    import optuna

    trials = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'study.db'}").trials  # its only study
    first, resumed = [t.params for t in trials[:2]], [t.params for t in trials[3:]]
    assert resumed != first, "the resumed search drew the first run's trials again"
    assert p2_search.check(again) == []


def searched_run(passes: list[dict], **changes) -> dict:
    """The figures ``check`` reads from a quick search that recorded ``passes`` over its 1,000 test images."""
    metrics = {"quick": True, "trials": [{"trial": 0, "state": "complete", "val_accuracy": 0.41},
                                         {"trial": 1, "state": "complete", "val_accuracy": 0.38}],
               "best_val_accuracy": 0.41, "final": {"test_size": 1000}, "test_accuracy": 0.4,
               "test_set_passes": passes, "test_evaluations": 1}
    return metrics | changes


@search_mark
def test_check_counts_the_passes_over_the_test_set_that_the_run_recorded():
    """``check`` believes the loader's record, not a count the script claims ("test_evaluations": 1 in each)."""
    once = [{"pass": 1, "images": 1000}]
    assert p2_search.check(searched_run(once)) == []
    twice = p2_search.check(searched_run(once + [{"pass": 2, "images": 1000}]))
    assert twice == ["the test set was read 2 times (test_set_passes): it must judge once, the retrained winner "
                     "alone; every further look lets the test set help choose"]
    assert any("read 200 images of 1000" in p for p in p2_search.check(searched_run([{"pass": 1, "images": 200}])))
    unrecorded = searched_run(once)
    del unrecorded["test_set_passes"]
    assert any("no record of its passes over the test set" in p for p in p2_search.check(unrecorded))


@search_mark
def test_recorded_loader_logs_every_pass_and_the_images_it_read():
    batches = [(np.zeros((4, 3)), np.arange(4)), (np.zeros((2, 3)), np.arange(2))]
    passes: list[dict] = []
    loader = p2_search.RecordedLoader(batches, passes)
    assert len(loader) == 2 and sum(len(y) for _, y in loader) == 6
    for _ in loader:        # a peek: one batch, then stop
        break
    assert passes == [{"pass": 1, "images": 6}, {"pass": 2, "images": 4}]
