"""Fuzzing the service: schemathesis generates requests from the app's own OpenAPI schema, and hypothesis
generates damaged image bytes. Whatever arrives, the answer is never a server error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

pytestmark = getattr(pytest.mark, "p3-serve")


TOKEN = "fuzz-token"
AUTHORIZED = {"authorization": f"Bearer {TOKEN}"}   # so that generated feedback bodies get past the token check


@pytest.fixture(scope="module")
def app(model_dir):
    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    return create_app(Settings(model_dir=model_dir, api_token=TOKEN))


@pytest.mark.slow
def test_no_request_the_schema_allows_causes_a_server_error(app):
    """Every operation of /openapi.json, 25 generated requests each (with the API token), sent to the app in process."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {("POST", "/v1/predict"), ("POST", "/v1/feedback"),
                                                                   ("POST", "/v1/predict/batch"), ("GET", "/metrics")}
    statuses = []
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case):
            response = case.call(headers=AUTHORIZED)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])

        call()
    assert len(statuses) >= 100 and any(400 <= s < 500 for s in statuses)


@st.composite
def damaged_images(draw):
    """A real PNG/JPEG/WebP/BMP of random size and mode, then truncated, bit-flipped or left whole."""
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "BMP"]))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P"] if fmt != "JPEG" else ["RGB", "L"]))
    width, height = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if fmt == "BMP" and mode == "RGBA":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    data = bytearray(buffer.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "flip", "garbage-tail"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= draw(st.integers(1, 255))
    elif damage == "garbage-tail":
        data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def test_damaged_images_get_answers_or_4xx_errors_never_5xx(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        @given(data=damaged_images())
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        def check(data):
            reply = client.post("/v1/predict", content=data, headers={"content-type": "image/png"})
            assert reply.status_code in (200, 400, 413, 415), (reply.status_code, reply.text[:300])
            if reply.status_code != 200:
                error = reply.json()["error"]
                assert error["request_id"] and error["code"] and "Traceback" not in reply.text

        check()
        assert client.get("/healthz").status_code == 200
