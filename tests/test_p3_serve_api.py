"""p3-serve, in process: who may write, what a hostile JSON body gets, what a 500 still carries, settings and
manifests that cannot work are refused, what an image's metadata and bit depth mean, and the decode budget."""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

pytestmark = getattr(pytest.mark, "p3-serve")
TOKEN = "correct horse battery staple"


def make_app(model_dir, **environment):
    """The app as the container builds it: every setting read from the environment (``API_TOKEN=...``)."""
    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    with pytest.MonkeyPatch.context() as env:
        env.delenv("API_TOKEN", raising=False)     # unset unless this test sets it
        env.setenv("MODEL_DIR", str(model_dir))
        for name, value in environment.items():
            env.setenv(name, str(value))
        return create_app(Settings.from_env())


@pytest.fixture(scope="module")
def client(model_dir):
    from fastapi.testclient import TestClient

    with TestClient(make_app(model_dir, API_TOKEN=TOKEN), raise_server_exceptions=False) as c:
        yield c


def png(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def predict(client, data: bytes) -> dict:
    reply = client.post("/v1/predict", content=data, headers={"content-type": "image/png"})
    assert reply.status_code == 200, reply.text
    return reply.json()


def is_json_error(reply, status: int, code: str) -> dict:
    """The reply is the service's JSON error with this status and code, its request id in body and header."""
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == code and error["request_id"] == reply.headers["x-request-id"], reply.text
    return error


# --------------------------------------------------------------------------- item 3: writes need the token


def test_feedback_without_a_configured_token_is_refused_and_says_how_to_configure_it(model_dir):
    from fastapi.testclient import TestClient

    with TestClient(make_app(model_dir)) as c:
        answer = predict(c, png(Image.new("RGB", (32, 32))))
        reply = c.post("/v1/feedback", json={"prediction_id": answer["prediction_id"], "label": 0},
                       headers={"authorization": "Bearer anything"})
    error = is_json_error(reply, 403, "auth_not_configured")
    assert "API_TOKEN" in error["message"] and "ml60-api-token" in error["message"]


def test_feedback_needs_the_bearer_token_compared_in_constant_time(client, monkeypatch):
    answer = predict(client, png(Image.new("RGB", (32, 32), (9, 9, 9))))
    body = {"prediction_id": answer["prediction_id"], "label": answer["class"]}
    missing = client.post("/v1/feedback", json=body)
    assert is_json_error(missing, 401, "unauthorized") and missing.headers["www-authenticate"].startswith("Bearer")
    other_scheme = client.post("/v1/feedback", json=body, headers={"authorization": f"Basic {TOKEN}"})
    is_json_error(other_scheme, 401, "unauthorized")
    from phase3_production.serving import auth

    compared = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    wrong = client.post("/v1/feedback", json=body, headers={"authorization": "Bearer not-the-token"})
    assert is_json_error(wrong, 401, "unauthorized") and 'error="invalid_token"' in wrong.headers["www-authenticate"]
    right = client.post("/v1/feedback", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200 and right.json()["correct"] is True
    assert len(compared) == 2, "the token must be compared with hmac.compare_digest"


def test_the_token_never_prints(model_dir):
    from phase3_production.serving.config import Settings

    settings = Settings(model_dir=model_dir, api_token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(vars(settings))
    assert settings.api_token.reveal() == TOKEN


# --------------------------------------------------------------------------- item 4: nested JSON, 500s


def test_deeply_nested_json_is_a_400_with_the_request_id_and_logs_at_most_one_line(client, caplog):
    caplog.set_level(logging.DEBUG)
    reply = client.post("/v1/feedback", content=b"[" * 100_000 + b"]" * 100_000,
                        headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    assert "nested" in is_json_error(reply, 400, "invalid_json")["message"]
    server_lines = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]   # not the client's
    assert len(server_lines) <= 1, [r.getMessage()[:80] for r in server_lines]


def test_an_unexpected_failure_is_a_500_with_the_request_id_and_one_log_record(client, monkeypatch, caplog):
    state = client.app.state.service

    def broken(batch):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(state.batcher, "predict", broken)
    caplog.set_level(logging.DEBUG)
    reply = client.post("/v1/predict", content=png(Image.new("RGB", (32, 32))), headers={"content-type": "image/png",
                                                                                         "x-request-id": "req-500"})
    error = is_json_error(reply, 500, "internal_error")
    assert error["request_id"] == "req-500" and "Traceback" not in reply.text and "broke" not in reply.text
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(logged) == 1 and "req-500" in logged[0].getMessage() and logged[0].exc_info


# --------------------------------------------------------------------------- item 6: the smaller ones


def test_live_accuracy_is_nan_until_the_first_label(model_dir):
    from fastapi.testclient import TestClient

    with TestClient(make_app(model_dir, API_TOKEN=TOKEN)) as c:
        line = next(l for l in c.get("/metrics").text.splitlines() if l.startswith("ml60_live_accuracy "))
        assert math.isnan(float(line.split()[1])), line          # not 0.0: nothing was measured yet
        answer = predict(c, png(Image.new("RGB", (32, 32))))
        c.post("/v1/feedback", json={"prediction_id": answer["prediction_id"], "label": answer["class_index"]},
               headers={"authorization": f"Bearer {TOKEN}"})
        assert "ml60_live_accuracy 1.0" in c.get("/metrics").text


def test_a_batch_limit_above_the_queue_is_refused_at_start_up(model_dir, monkeypatch):
    from phase3_production.serving.config import Settings

    with pytest.raises(ValueError, match=r"MAX_BATCH_FILES=64 is above MAX_QUEUE=32"):
        Settings(model_dir=model_dir, max_batch_files=64, max_queue=32)
    monkeypatch.setenv("MAX_BATCH_FILES", "300")
    with pytest.raises(ValueError, match=r"MAX_BATCH_FILES=300 is above MAX_QUEUE=256"):
        Settings.from_env()


def test_the_batchers_tuning_comes_from_the_settings(model_dir, monkeypatch):
    """BATCH_THRESHOLD and BATCHES_IN_FLIGHT reach the batcher the app builds, and nonsense is refused."""
    from fastapi.testclient import TestClient

    from phase3_production.serving.config import Settings

    with TestClient(make_app(model_dir, BATCH_THRESHOLD=0, BATCHES_IN_FLIGHT=3)) as c:
        batcher = c.app.state.service.batcher
        assert (batcher.batch_threshold, batcher.batches_in_flight) == (0, 3)
    with TestClient(make_app(model_dir)) as c:
        batcher = c.app.state.service.batcher
        assert (batcher.batch_threshold, batcher.batches_in_flight) == (batcher.max_batch, 2)
    for name, value, message in (("BATCH_THRESHOLD", "-1", "BATCH_THRESHOLD must be >= 0"),
                                 ("BATCHES_IN_FLIGHT", "0", "BATCHES_IN_FLIGHT must be > 0")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(ValueError, match=message):
                Settings.from_env()


def test_the_server_options_are_uvicorns_own(model_dir):
    """Each limit reaches uvicorn under a name its Config accepts (a misspelt option would be a TypeError)."""
    import uvicorn

    from phase3_production.serving.__main__ import server_options
    from phase3_production.serving.config import Settings

    settings = Settings(model_dir=model_dir, limit_concurrency=7, keep_alive_s=3, max_header_bytes=8192)
    config = uvicorn.Config(make_app(model_dir), **server_options(settings))
    assert (config.limit_concurrency, config.timeout_keep_alive, config.h11_max_incomplete_event_size,
            config.timeout_graceful_shutdown, config.http) == (7, 3, 8192, 20.0, "h11")


def test_a_trailing_slash_is_not_redirected_to_the_clients_host(client):
    reply = client.post("/v1/predict/", content=png(Image.new("RGB", (8, 8))),
                        headers={"content-type": "image/png", "host": "evil.example"}, follow_redirects=False)
    assert "location" not in reply.headers
    is_json_error(reply, 404, "not_found")


def asymmetric(size=(48, 32)) -> Image.Image:
    """Red on the left, a blue band at the top right, noise elsewhere: every rotation and flip looks different."""
    pixels = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:, : size[0] // 4] = (255, 0, 0)
    pixels[: size[1] // 4, size[0] // 2:] = (0, 0, 255)
    return Image.fromarray(pixels)


def test_exif_orientation_is_applied(client):
    upright = asymmetric()
    for orientation, stored in ((6, upright.transpose(Image.Transpose.ROTATE_90)),
                                (3, upright.transpose(Image.Transpose.ROTATE_180)),
                                (2, upright.transpose(Image.Transpose.FLIP_LEFT_RIGHT))):
        exif = Image.Exif()
        exif[0x0112] = orientation      # what a camera held sideways writes
        tagged = predict(client, png(stored, exif=exif.tobytes()))["probabilities"]
        assert tagged == predict(client, png(upright))["probabilities"], orientation
        assert tagged != predict(client, png(stored))["probabilities"], orientation   # the tag made the difference


def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped(client):
    levels = np.random.default_rng(5).integers(0, 256, (32, 32)).astype(np.uint16)
    sixteen = Image.fromarray(levels * 257)                 # 0..255 -> 0..65535: the same picture in 16 bits
    eight = Image.fromarray(levels.astype(np.uint8))
    assert sixteen.mode == "I;16"
    assert predict(client, png(sixteen))["probabilities"] == predict(client, png(eight))["probabilities"]


# --------------------------------------------------------------------------- item 6: the manifest


def copy_model(model_dir, target, edit=None):
    for name in ("model.onnx", "manifest.json", "reference.json", "samples.json"):
        shutil.copy(model_dir / name, target / name)
    if edit is not None:
        manifest = json.loads((target / "manifest.json").read_text())
        edit(manifest)
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("edit, says", [
    (lambda m: m["reference"].update(file="/etc/hostname"), r"'reference.file' must be a plain file name"),
    (lambda m: m["reference"].update(file="../model0/reference.json"), r"'reference.file' must be a plain file name"),
    (lambda m: m.update(variants=["int8"]), r"'variants' must be an object"),
    (lambda m: m.update(sha256=12345), r"'sha256' must be 64 lowercase hex digits"),
    (lambda m: m.update(reference="reference.json"), r"'reference' must be an object"),
], ids=["absolute reference", "reference outside the folder", "variants not an object", "sha256 not a string",
        "reference not an object"])
def test_a_manifest_that_points_outside_or_has_wrong_types_is_refused(model_dir, tmp_path, edit, says):
    from phase3_production.serving.model import ModelLoadError, ServedModel

    copy_model(model_dir, tmp_path, edit)
    with pytest.raises(ModelLoadError, match=r"^refusing to serve: .*manifest.json: " + says):
        ServedModel.load(tmp_path)


def test_without_a_reference_drift_monitoring_is_off_and_says_why(model_dir, tmp_path, caplog):
    from fastapi.testclient import TestClient

    copy_model(model_dir, tmp_path, lambda m: m.pop("reference"))
    caplog.set_level(logging.WARNING)
    with TestClient(make_app(tmp_path)) as c:
        drift, metrics = c.get("/v1/drift").json(), c.get("/metrics").text
    assert drift["enabled"] is False and "no 'reference' entry" in drift["reason"]
    assert any("drift monitoring is off" in r.getMessage() for r in caplog.records)
    line = next(l for l in metrics.splitlines() if l.startswith("ml60_drift_monitor_enabled{"))
    assert "no 'reference' entry" in line and line.endswith(" 0.0")


# --------------------------------------------------------------------------- items 1-2: the decode budget


def test_the_decode_budget_refuses_or_queues_the_decode_that_does_not_fit(model_dir, monkeypatch):
    """Room for one image's decode: a second one waits its turn, or gets 503 when it may not wait."""
    import asyncio

    import httpx

    from phase3_production.serving import decoding, images

    data = png(Image.new("RGB", (64, 64), (1, 2, 3)))
    price = images.decode_cost(data).nbytes
    release, entered = threading.Event(), threading.Event()
    real = decoding.decode_upload

    def held_decode(*args):          # the first decode holds its budget until the test lets it go
        entered.set()
        release.wait(10)
        return real(*args)

    monkeypatch.setattr(decoding, "decode_upload", held_decode)

    async def scenario(wait_s: float):
        app = make_app(model_dir, DECODE_MEMORY_BYTES=max(price, 4 * 2048 * 2048), DECODE_WAIT_S=wait_s,
                       INLINE_DECODE_BYTES=0)   # every decode through the pool and its budget
        budget_bytes = app.state.service.settings.decode_memory_bytes
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            app.state.service.decoder.budget.reserved = budget_bytes - price   # others hold all but one image
            send = lambda: c.post("/v1/predict", content=data, headers={"content-type": "image/png"})  # noqa: E731
            release.clear(), entered.clear()
            first = asyncio.ensure_future(send())
            while not entered.is_set():
                await asyncio.sleep(0.01)
            second = asyncio.ensure_future(send())
            await asyncio.sleep(0.1)
            release.set()
            replies = await asyncio.gather(first, second)
            app.state.service.decoder.budget.reserved -= budget_bytes - price
            return replies

    first, second = asyncio.run(scenario(wait_s=0.0))
    assert first.status_code == 200
    assert second.status_code == 503 and second.json()["error"]["code"] == "decode_busy"
    assert second.headers["retry-after"] == "1"
    first, second = asyncio.run(scenario(wait_s=10.0))
    assert first.status_code == second.status_code == 200    # the second waited for the first to finish
