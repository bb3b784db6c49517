"""p3-serve: a multipart body the parser refuses gets a 400 with a code a client can branch on.

Starlette's form parser raises one generic HTTP error for every multipart
problem; the service turns it into ``malformed_multipart`` or
``too_many_files`` (not the catch-all ``http_error``), with the request id in
the body and in ``X-Request-ID``.  Only HTTP is looked at: the status, the
JSON error and its headers.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from phase3_production.http_client import multipart

pytestmark = getattr(pytest.mark, "p3-serve")
MAX_FILES = 2          # a small batch limit, so that "one file too many" costs three tiny images


@pytest.fixture(scope="module")
def client(model_dir):
    from fastapi.testclient import TestClient

    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    with TestClient(create_app(Settings(model_dir=model_dir, max_batch_files=MAX_FILES))) as c:
        yield c


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def refused(reply, code: str) -> str:
    """Assert a 400 JSON error with ``code`` and a request id matching the header; return its message."""
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    error = reply.json()["error"]
    assert error["code"] == code, error
    assert error["status"] == 400 and error["request_id"] == reply.headers["x-request-id"] != ""
    return error["message"]


@pytest.mark.parametrize("route", ["/v1/predict", "/v1/predict/batch"])
def test_a_multipart_body_without_a_boundary_is_malformed(client, route):
    reply = client.post(route, content=b"--x\r\n\r\n--x--\r\n", headers={"content-type": "multipart/form-data"})
    assert "boundary" in refused(reply, "malformed_multipart")


def test_a_body_that_does_not_follow_its_boundary_is_malformed(client):
    reply = client.post("/v1/predict", content=b"no boundary line anywhere in here",
                        headers={"content-type": "multipart/form-data; boundary=abc"})
    refused(reply, "malformed_multipart")
    unnamed = (b'--abc\r\nContent-Disposition: form-data; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
               + png() + b"\r\n--abc--\r\n")
    reply = client.post("/v1/predict", content=unnamed, headers={"content-type": "multipart/form-data; boundary=abc"})
    assert "name" in refused(reply, "malformed_multipart")


def test_one_file_more_than_the_batch_limit_is_too_many_files(client):
    body, content_type = multipart([("files", f"{i}.png", png(), "image/png") for i in range(MAX_FILES + 1)])
    reply = client.post("/v1/predict/batch", content=body, headers={"content-type": content_type})
    assert f"Maximum number of files is {MAX_FILES}" in refused(reply, "too_many_files")
    body, content_type = multipart([("files", f"{i}.png", png(), "image/png") for i in range(MAX_FILES)])
    at_limit = client.post("/v1/predict/batch", content=body, headers={"content-type": content_type})
    assert at_limit.status_code == 200 and len(at_limit.json()["predictions"]) == MAX_FILES


def test_two_files_sent_to_the_one_image_route_are_too_many(client):
    body, content_type = multipart([("file", f"{i}.png", png(), "image/png") for i in range(2)])
    reply = client.post("/v1/predict", content=body, headers={"content-type": content_type})
    assert "Maximum number of files is 1" in refused(reply, "too_many_files")


def test_too_many_text_fields_are_malformed_not_too_many_files(client):
    fields = {f"note{i}": "x" for i in range(6)}
    reply = client.post("/v1/predict", data=fields, files={"file": ("a.png", png(), "image/png")})
    assert "Too many fields" in refused(reply, "malformed_multipart")
