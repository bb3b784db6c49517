"""p3-monitor: the drift statistics agree with SciPy, the monitor alarms on shifts and not on clean
traffic, feedback feeds live accuracy, and the milestone plays its traffic end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phase3_production.serving.drift import FEATURES, INPUT_FEATURES, DriftMonitor
from phase3_production.serving.stats import chi2_sf, chi_square, ks_2samp, psi

pytestmark = getattr(pytest.mark, "p3-monitor")


def test_ks_and_chi_square_match_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    for shift in (0.0, 0.1, 0.3):
        a, b = rng.normal(0, 1, 2000), rng.normal(shift, 1, 200)
        d, p = ks_2samp(a, b)
        assert d == pytest.approx(stats.ks_2samp(a, b).statistic)
        assert p == pytest.approx(stats.kstwobign.sf(np.sqrt(2000 * 200 / 2200) * d), rel=1e-6, abs=1e-12)
    for x, df in ((0.5, 1), (3.0, 2), (5.0, 9), (20.0, 9), (40.0, 9), (150.0, 9)):
        assert chi2_sf(x, df) == pytest.approx(stats.chi2.sf(x, df), rel=1e-9, abs=1e-300)
    observed = np.array([30, 10, 20, 40])
    statistic, p = chi_square(observed, np.full(4, 0.25))
    reference = stats.chisquare(observed)
    assert statistic == pytest.approx(reference.statistic) and p == pytest.approx(reference.pvalue)


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, 5000)
    assert psi(reference, rng.normal(0, 1, 5000)) < 0.02
    assert psi(reference, rng.normal(1.0, 1, 5000)) > 0.25


def make_reference(rng, n=2000):
    return {"features": {name: rng.normal(0.5, 0.1, n).tolist() for name in INPUT_FEATURES},
            "confidence": rng.uniform(0.3, 1.0, n).tolist(), "class_shares": [0.1] * 10,
            "classes": [str(i) for i in range(10)], "source": {}}


def feed(monitor, rng, n, mean=0.5, classes=10):
    for _ in range(n):
        monitor.observe(rng.normal(mean, 0.1, len(INPUT_FEATURES)), float(rng.uniform(0.3, 1.0)),
                        int(rng.integers(classes)))


def test_monitor_stays_quiet_on_clean_traffic_and_alarms_on_a_shift():
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(make_reference(rng), window=200, check_every=25, alpha=1e-4)
    feed(monitor, rng, 3000)
    assert not any(alarm for *_, alarm in monitor.history)            # 113 checks, no false alarm
    feed(monitor, rng, 100, mean=0.56)                                 # a shift of 0.6 standard deviations
    assert monitor.alarm and "KS" in monitor.last["reasons"][0]
    assert len(monitor.last["features"]) == len(FEATURES)
    feed(monitor, rng, 300)                                            # clean again: the alarm clears
    assert not monitor.alarm
    feed(monitor, rng, 200, classes=3)                                 # only 3 classes predicted
    assert monitor.alarm and any("class mix" in r for r in monitor.last["reasons"])


def test_feedback_feeds_live_accuracy_and_refuses_bad_labels(model_dir):
    from fastapi.testclient import TestClient
    from PIL import Image
    import io

    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (40, 90, 200)).save(buffer, "PNG")
    settings = Settings(model_dir=model_dir, drift_window=20, drift_check_every=5, api_token="feedback-token")
    with TestClient(create_app(settings), headers={"authorization": "Bearer feedback-token"}) as c:
        answers = [c.post("/v1/predict", content=buffer.getvalue(), headers={"content-type": "image/png"}).json()
                   for _ in range(25)]
        right = c.post("/v1/feedback", json={"prediction_id": answers[0]["prediction_id"],
                                              "label": answers[0]["class"]}).json()
        wrong_label = (answers[1]["class_index"] + 1) % 10
        wrong = c.post("/v1/feedback", json={"prediction_id": answers[1]["prediction_id"], "label": wrong_label})
        assert right["correct"] and not wrong.json()["correct"] and wrong.json()["live_accuracy"] == 0.5
        again = c.post("/v1/feedback", json={"prediction_id": answers[0]["prediction_id"], "label": 0})
        unknown = c.post("/v1/feedback", json={"prediction_id": "0" * 32, "label": 0})
        bad = c.post("/v1/feedback", json={"prediction_id": answers[2]["prediction_id"], "label": "unicorn"})
        not_json = c.post("/v1/feedback", content=b"{oops", headers={"content-type": "application/json"})
        assert [r.status_code for r in (again, unknown, bad, not_json)] == [409, 404, 400, 400]
        drift = c.get("/v1/drift").json()
        assert drift["enabled"] and drift["requests_seen"] == 25 and drift["last_check"]["request"] == 25
        text = c.get("/metrics").text
        assert "ml60_live_accuracy 0.5" in text and "ml60_drift_alarm" in text and "ml60_drift_psi" in text


def test_a_reference_file_that_does_not_match_the_manifest_is_refused(model_dir, tmp_path):
    from phase3_production.serving.model import ModelLoadError, ServedModel

    for name in ("model.onnx", "manifest.json", "reference.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    reference = json.loads((tmp_path / "reference.json").read_text())
    reference["class_shares"][0] += 0.5
    (tmp_path / "reference.json").write_text(json.dumps(reference))
    with pytest.raises(ModelLoadError, match="reference.json: missing or its sha256 does not match"):
        ServedModel.load(tmp_path)


@pytest.mark.slow
def test_milestone_plays_the_traffic_and_writes_its_picture(model_dir, tmp_path, monkeypatch):
    from phase3_production import p3_monitor

    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(p3_monitor, "traffic_plan", lambda *_: [("clean", 250), ("brightness", 100),
                                                                ("clean", 50), ("gaussian_noise", 50),
                                                                ("blur", 50), ("class_mix", 50)])
    metrics = p3_monitor.main(["--quick", "--model-dir", str(model_dir)])
    assert set(metrics["detections"]) == {"brightness", "gaussian_noise", "blur", "class_mix"}
    assert (tmp_path / "p3-monitor" / "quick" / "drift.png").read_bytes()[:4] == b"\x89PNG"
    timeline = json.loads((tmp_path / "p3-monitor" / "quick" / "timeline.json").read_text())["timeline"]
    assert timeline[-1]["request"] == 550 and timeline[-1]["live_accuracy"] is not None


# --------------------------------------------------------------------------- the multiple-testing correction
# Eight KS tests per check: without a correction, a clean window would alarm up to 8 times as often as alpha says.
# These tests pin Holm's thresholds (alpha / 8 for the smallest p-value, then alpha / 7, ...) and the strict "<".

ALPHA = 1e-4
NAMES = [f"f{i}" for i in range(8)]


def below(x: float) -> float:
    """The largest float below ``x``: a p-value that must pass a strict ``p < x``."""
    return float(np.nextafter(x, 0.0))


def test_p_values_under_alpha_but_over_alpha_over_m_do_not_alarm():
    from phase3_production.serving.drift import drifted_features

    assert drifted_features(dict.fromkeys(NAMES, 0.9 * ALPHA), ALPHA) == []        # each test alone would reject
    assert drifted_features({**dict.fromkeys(NAMES, 0.5), "f3": 2 * ALPHA / 8}, ALPHA) == []


def test_holm_flags_the_second_feature_that_bonferroni_alone_would_keep():
    from phase3_production.serving.drift import drifted_features

    # f1 is above alpha / 8 (Bonferroni keeps it) but below alpha / 7, its threshold once f0 is flagged.
    p = {**dict.fromkeys(NAMES, 0.5), "f0": 1e-9, "f1": 1.3e-5}
    assert sorted(drifted_features(p, ALPHA)) == ["f0", "f1"]
    # Holm stops at the first p-value over its threshold: f1 fails alpha / 7, so f2 (below alpha / 6) is kept.
    p = {**dict.fromkeys(NAMES, 0.5), "f0": 1e-9, "f1": 1.5e-5, "f2": 1.6e-5}
    assert drifted_features(p, ALPHA) == ["f0"]
    # Every threshold met: alpha / 8, alpha / 7, ..., alpha / 1 for the largest.
    p = {name: below(ALPHA / (8 - k)) for k, name in enumerate(NAMES)}
    assert sorted(drifted_features(p, ALPHA)) == NAMES


def test_a_p_value_equal_to_its_threshold_is_not_a_rejection():
    from phase3_production.serving.drift import drifted_features

    rest = dict.fromkeys(NAMES[1:], 0.5)
    assert drifted_features({"f0": ALPHA / 8, **rest}, ALPHA) == []
    assert drifted_features({"f0": below(ALPHA / 8), **rest}, ALPHA) == ["f0"]
    assert drifted_features({"f0": 1e-9, "f1": ALPHA / 7, **dict.fromkeys(NAMES[2:], 0.5)}, ALPHA) == ["f0"]


def staged_monitor(monkeypatch, feature_p: dict[str, float], class_p: float, alpha: float = ALPHA) -> DriftMonitor:
    """A monitor with a full window whose tests return the given p-values (by feature name), checked once."""
    from phase3_production.serving import drift

    rng = np.random.default_rng(3)
    monitor = DriftMonitor(make_reference(rng, n=50), window=10, check_every=10_000, alpha=alpha)
    feed(monitor, rng, 10)
    name_of = {id(monitor.ref[name]): name for name in FEATURES}
    monkeypatch.setattr(drift, "ks_2samp", lambda reference, current: (0.5, feature_p[name_of[id(reference)]]))
    monkeypatch.setattr(drift, "chi_square", lambda counts, shares: (12.0, class_p))
    monitor.check()
    return monitor


def test_the_monitor_alarms_on_holms_thresholds_and_the_class_mix_at_alpha(monkeypatch):
    clean = dict.fromkeys(FEATURES, 0.5)
    quiet = staged_monitor(monkeypatch, dict.fromkeys(FEATURES, 0.9 * ALPHA), class_p=0.5)
    assert not quiet.alarm and quiet.last["drifted_features"] == [] and quiet.last["reasons"] == []
    assert quiet.last["ks_threshold_bonferroni"] == pytest.approx(ALPHA / 8)

    at_threshold = staged_monitor(monkeypatch, {**clean, "sharpness": ALPHA / 8}, class_p=ALPHA)
    assert not at_threshold.alarm and at_threshold.last["most_shifted_feature"] == "sharpness"

    two = staged_monitor(monkeypatch, {**clean, "sharpness": 1e-9, "mean_g": 1.3e-5}, class_p=0.5)
    assert two.alarm and two.last["drifted_features"] == ["sharpness", "mean_g"]      # smallest p-value first
    assert two.last["reasons"] == ["sharpness (KS p=1.0e-09)", "mean_g (KS p=1.3e-05)"]
    assert two.history[-1] == (10, 1e-9, 0.5, True)

    classes = staged_monitor(monkeypatch, clean, class_p=below(ALPHA))
    assert classes.alarm and classes.last["drifted_features"] == []
    assert classes.last["reasons"] == [f"predicted-class mix (chi-square p={below(ALPHA):.1e})"]
    assert classes.last["class_mix"]["threshold"] == ALPHA and classes.history[-1][1:] == (0.5, below(ALPHA), True)
