"""The demo page, the dashboard and what they read (``/v1/samples``, ``/v1/stats``), in process.

The browser itself is in ``tests/test_p3_browser.py``; here: the pages are
served with their security headers, load nothing from another site, and the
numbers ``/v1/stats`` gives are the traffic that really happened.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from phase3_production.serving.live import PREDICTION_ROUTES, LiveStats, percentiles
from phase3_production.serving.pages import STATIC_DIR, STATIC_TYPES
from phase3_production.serving.samples import read_samples

pytestmark = getattr(pytest.mark, "p3-serve")
TOKEN = "pages-test-token"


def make_client(model_dir, **environment):
    from fastapi.testclient import TestClient

    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    settings = Settings(model_dir=model_dir, api_token=TOKEN, **environment)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def png(seed: int = 0, size: int = 32) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- the pages


@pytest.mark.parametrize("path", ["/", "/dashboard"])
def test_pages_are_served_with_a_strict_content_security_policy(model_dir, path):
    with make_client(model_dir) as client:
        reply = client.get(path)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
        policy = reply.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert reply.headers["x-content-type-options"] == "nosniff"
        # every script and stylesheet the page names is served by the service itself
        for name in re.findall(r'(?:src|href)="/static/([^"]+)"', reply.text):
            asset = client.get(f"/static/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"].startswith(STATIC_TYPES[name])


def test_no_shipped_file_loads_anything_from_another_site():
    """Offline and in a cluster without internet the pages still work: no CDN, no web font, no analytics."""
    files = sorted(STATIC_DIR.iterdir())
    assert {f.name for f in files} == {*STATIC_TYPES, "demo.html", "dashboard.html"}
    for path in files:
        text = path.read_text()
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"{path.name} names another site"


@pytest.mark.parametrize("name", ["../pages.py", "..%2Fpages.py", "demo.html", "nope.js", "%2e%2e/app.py"])
def test_only_the_listed_static_files_are_served(model_dir, name):
    with make_client(model_dir) as client:
        reply = client.get(f"/static/{name}")
        assert reply.status_code == 404 and "def " not in reply.text


def test_the_pages_are_not_part_of_the_api_schema(model_dir):
    with make_client(model_dir) as client:
        paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/stats" in paths and "/v1/samples" in paths
    assert not {"/", "/dashboard", "/static/{name}"} & set(paths)


# --------------------------------------------------------------------------- samples


def test_samples_come_from_the_model_folder_one_per_class(model_dir):
    with make_client(model_dir) as client:
        samples = client.get("/v1/samples").json()["samples"]
        classes = client.get("/v1/model").json()["classes"]
        assert [s["label"] for s in samples] == classes
        first = base64.b64decode(samples[0]["png_base64"])
        assert Image.open(io.BytesIO(first)).size == (32, 32)
        # a sample is an ordinary image to the API
        assert client.post("/v1/predict", content=first, headers={"content-type": "image/png"}).status_code == 200


def test_without_samples_the_page_is_told_why(model_dir, tmp_path):
    for name in ("model.onnx", "reference.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest.pop("samples")
    manifest.pop("variants")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with make_client(tmp_path) as client:
        answer = client.get("/v1/samples").json()
    assert answer["samples"] == [] and "make p3-onnx" in answer["reason"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["samples"][0].update(label="unicorn"), "'label' must be one of"),
    (lambda d: d["samples"][0].update(png_base64="not base64!"), "not base64"),
    (lambda d: d["samples"][0].update(png_base64=base64.b64encode(b"GIF89a...").decode()), "not a PNG"),
    (lambda d: d.update(samples=d["samples"] * 6), "at most 50"),
])
def test_damaged_samples_are_refused_with_the_reason(model_dir, tmp_path, damage, message):
    data = json.loads((model_dir / "samples.json").read_text())
    damage(data)
    (tmp_path / "samples.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        read_samples(tmp_path / "samples.json", json.loads((model_dir / "reference.json").read_text())["classes"])


def test_a_samples_file_changed_after_export_stops_the_service(model_dir, tmp_path):
    from phase3_production.serving.model import ModelLoadError, ServedModel

    for name in ("model.onnx", "manifest.json", "reference.json", "samples.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    data = json.loads((tmp_path / "samples.json").read_text())
    data["samples"].reverse()
    (tmp_path / "samples.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="samples.json: missing or its sha256 does not match"):
        ServedModel.load(tmp_path)


# --------------------------------------------------------------------------- /v1/stats


def test_stats_count_the_prediction_traffic_and_nothing_else(model_dir):
    with make_client(model_dir, batching=False) as client:
        answers = [client.post("/v1/predict", content=png(i), headers={"content-type": "image/png"}).json()
                   for i in range(5)]
        assert client.post("/v1/predict", content=b"not an image", headers={"content-type": "image/png"}).status_code == 400
        client.get("/metrics")
        client.get("/healthz")
        client.post("/v1/feedback", json={"prediction_id": answers[0]["prediction_id"], "label": answers[0]["class"]},
                    headers={"authorization": f"Bearer {TOKEN}"})
        client.get("/v1/stats")
        stats = client.get("/v1/stats").json()
    window = stats["window"]
    assert window["requests"] == 6 and window["2xx"] == 5 and window["4xx"] == 1 and window["503"] == 0
    assert window["p50_ms"] > 0 and window["p50_ms"] <= window["p95_ms"] <= window["p99_ms"]
    assert stats["batch_sizes"] == {"1": 5}               # batching off: one model call per image
    assert sum(row["requests"] for row in stats["series"]) == 6
    assert stats["live_accuracy"] == {"labelled": 1, "window": 500, "value": 1.0}
    assert [row["live_accuracy"] for row in stats["series"] if row["labelled"]] == [1.0]
    assert stats["drift"]["enabled"] and stats["drift"]["requests_seen"] == 5 and not stats["drift"]["alarm"]
    assert stats["ready"] and len(stats["model_version"]) == 12


def test_stats_show_the_drift_checks_as_they_happen(model_dir):
    with make_client(model_dir, drift_window=20, drift_check_every=5) as client:
        for i in range(30):
            client.post("/v1/predict", content=png(i), headers={"content-type": "image/png"})
        drift = client.get("/v1/stats").json()["drift"]
    assert [h["request"] for h in drift["history"]] == [20, 25, 30]
    assert set(drift["p_values"]) == {"mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "sharpness",
                                      "confidence", "class_mix"}
    assert drift["threshold"] == pytest.approx(1e-4 / 8)


# --------------------------------------------------------------------------- LiveStats on its own


def test_percentiles_are_numpy_s_linear_interpolation():
    values = list(np.random.default_rng(0).exponential(0.01, 999))
    ours = percentiles(values)
    for q in (50, 95, 99):
        assert ours[f"p{q}_ms"] == pytest.approx(round(np.percentile(values, q) * 1000, 3), abs=1e-9)   # to the µs
    assert percentiles([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None}


def test_each_second_keeps_a_fair_bounded_sample_of_its_latencies():
    """Algorithm R: 20,000 latencies 0..19,999 ms in one second, 512 kept, spread over the whole range."""
    clock = [1000.0]
    live = LiveStats(sample_size=512, clock=lambda: clock[0])
    for i in range(20_000):
        live.record_request("/v1/predict", 200, i / 1000)
    kept = np.asarray(live.ring[-1].latencies) * 1000
    assert len(kept) == 512
    assert 8_000 < np.median(kept) < 12_000                 # keeping the first 512 would give a median of ~256
    assert kept.max() > 15_000
    row = live.snapshot()["window"]
    assert row["requests"] == 20_000 and 8_000 < row["p50_ms"] < 12_000


def test_old_seconds_fall_off_and_quiet_seconds_read_zero():
    clock = [1000.2]
    live = LiveStats(seconds=5, clock=lambda: clock[0])
    for t in (1000.2, 1001.5, 1003.1, 1007.9):
        clock[0] = t
        live.record_request("/v1/predict", 503 if t > 1007 else 200, 0.004)
        live.record_request("/metrics", 200, 0.001)          # not a prediction route: not traffic
    snapshot = live.snapshot(window_s=3)
    assert [row["t"] for row in snapshot["series"]] == [1003, 1004, 1005, 1006, 1007]
    assert [row["requests"] for row in snapshot["series"]] == [1, 0, 0, 0, 1]
    assert snapshot["series"][1]["p50_ms"] is None            # no traffic is no latency, not 0 ms
    assert snapshot["window"]["requests"] == 1 and snapshot["window"]["503"] == 1
    assert snapshot["window"]["p50_ms"] is None               # a 503 is counted, not timed
    assert snapshot["totals"] == {"2xx": 3, "503": 1}
    assert "/metrics" not in PREDICTION_ROUTES and "/v1/predict" in PREDICTION_ROUTES


def test_a_body_refused_before_routing_is_counted_on_its_route(model_dir):
    """A 413 is answered by the body limit before FastAPI routes the request: it is still /v1/predict's."""
    with make_client(model_dir, max_body_bytes=1024, max_image_bytes=1024) as client:
        reply = client.post("/v1/predict", content=b"x" * 5000, headers={"content-type": "image/png"})
        assert reply.status_code == 413
        metrics = client.get("/metrics").text
        stats = client.get("/v1/stats").json()
    assert 'ml60_requests_total{route="/v1/predict",status="413"} 1.0' in metrics
    assert stats["window"]["4xx"] == 1 and stats["window"]["requests"] == 1
