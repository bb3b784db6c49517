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
    with TestClient(create_app(Settings(model_dir=model_dir, drift_window=20, drift_check_every=5))) as c:
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


def test_milestone_plays_the_traffic_and_writes_its_picture(model_dir, tmp_path, monkeypatch):
    from phase3_production import p3_monitor

    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(p3_monitor, "traffic_plan", lambda *_: [("clean", 250), ("brightness", 100),
                                                                ("clean", 50), ("gaussian_noise", 50),
                                                                ("blur", 50), ("class_mix", 50)])
    metrics = p3_monitor.main(["--quick", "--model-dir", str(model_dir)])
    assert set(metrics["detections"]) == {"brightness", "gaussian_noise", "blur", "class_mix"}
    assert (tmp_path / "p3-monitor" / "drift.png").read_bytes()[:4] == b"\x89PNG"
    timeline = json.loads((tmp_path / "p3-monitor" / "timeline.json").read_text())["timeline"]
    assert timeline[-1]["request"] == 550 and timeline[-1]["live_accuracy"] is not None
