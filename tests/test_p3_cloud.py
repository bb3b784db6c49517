"""SageMaker's and Vertex AI's container contracts, against the real process with the providers' request shapes.

No cloud account is needed to hold the service to a provider's terms: the
terms are an HTTP contract (``serving/cloud.py`` has both, with their
sources).  Each test starts ``python -m phase3_production.serving`` as the
provider starts the container (SageMaker: with the ``serve`` argument;
Vertex AI: with its ``AIP_*`` variables) and sends what the provider sends.
"""

from __future__ import annotations

import base64
import io
import json
import socket

import numpy as np
import pytest
from PIL import Image

from phase3_production.http_client import free_port, request, wait_until_ready
from phase3_production.p3_serve import start_server, stop_server
from phase3_production.serving.cloud import (InstanceError, listen_port, vertex_instances, vertex_routes)

pytestmark = [getattr(pytest.mark, "p3-serve"), pytest.mark.slow]
HEALTH = "/v1/endpoints/4242/deployedModels/77"
PREDICT = "/v1/endpoints/4242/deployedModels/77:predict"


def image_bytes(seed: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def plain_answer(port: int, data: bytes) -> tuple[str, dict]:
    """The class and probabilities /v1/predict gives for ``data``: what each contract's answer must equal."""
    reply = request(port, "POST", "/v1/predict", data, {"content-type": "application/octet-stream"})
    assert reply.status == 200, reply.body[:200]
    return reply.json()["class"], reply.json()["probabilities"]


def answer_of(reply: dict) -> tuple[str, dict]:
    return reply["class"], reply["probabilities"]


# --------------------------------------------------------------------------- the rules, in process


@pytest.mark.parametrize("argv, env, port", [
    ([], {}, 8000),
    ([], {"PORT": "9001"}, 9001),
    (["serve"], {"PORT": "8000"}, 8080),                          # the image's PORT does not move SageMaker
    (["serve"], {"PORT": "8000", "SAGEMAKER_BIND_TO_PORT": "9002"}, 9002),
    ([], {"PORT": "8000", "AIP_HTTP_PORT": "9003"}, 9003),        # Vertex AI says where it sends
    ([], {"SAGEMAKER_BIND_TO_PORT": "9004"}, 8000),               # only under `serve`
])
def test_the_port_is_where_the_platform_sends(argv, env, port):
    assert listen_port(argv, env) == port


@pytest.mark.parametrize("env, message", [
    ({"AIP_HTTP_PORT": "eighty"}, "AIP_HTTP_PORT='eighty' is not a port number"),
    ({"PORT": "70000"}, "PORT=70000 is not a port number"),
])
def test_a_port_that_is_not_one_is_refused_by_name(env, message):
    with pytest.raises(ValueError, match=message):
        listen_port([], env)


def test_vertex_routes_come_from_the_environment_and_are_checked():
    assert vertex_routes({}) is None
    assert vertex_routes({"AIP_HEALTH_ROUTE": HEALTH, "AIP_PREDICT_ROUTE": PREDICT}) == (HEALTH, PREDICT)
    with pytest.raises(ValueError, match="AIP_PREDICT_ROUTE='predict' must be a path"):
        vertex_routes({"AIP_HEALTH_ROUTE": HEALTH, "AIP_PREDICT_ROUTE": "predict"})
    with pytest.raises(ValueError, match="are the same path"):
        vertex_routes({"AIP_HEALTH_ROUTE": PREDICT, "AIP_PREDICT_ROUTE": PREDICT})


def test_a_vertex_route_may_not_hide_one_the_service_has(model_dir):
    from phase3_production.serving.app import create_app
    from phase3_production.serving.config import Settings

    with pytest.raises(ValueError, match=r"would hide a route the service already has"):
        create_app(Settings(model_dir=model_dir, vertex_routes=(HEALTH, "/v1/predict")))


@pytest.mark.parametrize("payload, message", [
    ({"inputs": []}, 'send {"instances"'),
    ({"instances": []}, "'instances' is empty"),
    ({"instances": [{"b64": "aGk="}, {"bytes": 3}]}, "instance 1: expected"),
    ({"instances": [{"b64": "not base64!"}]}, "instance 0: 'b64' is not base64"),
    ({"instances": [{"b64": "aGk="}] * 33}, "33 instances in one request; at most 32"),
])
def test_a_malformed_vertex_request_names_what_is_wrong(payload, message):
    with pytest.raises(InstanceError, match=message):
        vertex_instances(payload, max_instances=32)


def test_vertex_instances_accept_both_shapes_of_binary_data():
    hello = base64.b64encode(b"hello").decode()
    assert vertex_instances({"instances": [{"b64": hello}, {"image": {"b64": hello}}], "parameters": {}}, 8) == [
        b"hello", b"hello"]


# --------------------------------------------------------------------------- the real process


def test_sagemaker_contract_serve_ping_invocations(model_dir, tmp_path):
    """``docker run IMAGE serve``: /ping, then /invocations with the Content-Types SageMaker passes on."""
    port = free_port()
    # PORT (set by start_server to another free port) must be ignored: `serve` listens where SageMaker sends.
    process = start_server(model_dir, free_port(), {"SAGEMAKER_BIND_TO_PORT": str(port)}, tmp_path / "server.log",
                           args=("serve",))
    try:
        wait_until_ready(port, process=process)
        ping = request(port, "GET", "/ping")
        assert ping.status == 200 and ping.json()["status"] == "ready"
        cases = [("application/x-image", "JPEG"), ("image/jpeg", "JPEG"), ("image/png", "PNG"),
                 ("application/octet-stream", "PNG")]
        for k, (content_type, fmt) in enumerate(cases):
            data = image_bytes(k, fmt)
            reply = request(port, "POST", "/invocations", data,
                            {"content-type": content_type, "accept": "application/json"})
            assert reply.status == 200, (content_type, reply.body[:200])
            assert reply.headers["content-type"] == "application/json"
            assert answer_of(reply.json()) == plain_answer(port, data), content_type
        data = image_bytes(9, "PNG")
        assert request(port, "POST", "/invocations", data, {"content-type": "image/png", "accept": "*/*"}).status == 200
        refused = request(port, "POST", "/invocations", data, {"content-type": "image/png", "accept": "text/csv"})
        assert refused.status == 406 and refused.json()["error"]["code"] == "not_acceptable"
    finally:
        stop_server(process)


def test_serve_listens_on_8080_without_being_told(model_dir, tmp_path):
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8080)) == 0:
            pytest.skip("something else listens on 127.0.0.1:8080 here")
    process = start_server(model_dir, free_port(), {}, tmp_path / "server.log", args=("serve",))
    try:
        wait_until_ready(8080, process=process)
        assert request(8080, "GET", "/ping").status == 200
    finally:
        stop_server(process)


def test_vertex_contract_health_and_predict_routes(model_dir, tmp_path):
    """Vertex AI's variables in, its routes answered; instances of base64 images in, predictions out, in order."""
    port = free_port()
    env = {"AIP_HTTP_PORT": str(port), "AIP_HEALTH_ROUTE": HEALTH, "AIP_PREDICT_ROUTE": PREDICT,
           "AIP_MODE": "PREDICTION", "AIP_DEPLOYED_MODEL_ID": "77"}
    process = start_server(model_dir, free_port(), env, tmp_path / "server.log")
    try:
        wait_until_ready(port, process=process, path=HEALTH)   # Vertex AI's own health route
        images = [image_bytes(20, "PNG"), image_bytes(21, "JPEG"), image_bytes(22, "PNG")]
        body = {"instances": [{"b64": base64.b64encode(images[0]).decode()},
                              {"image": {"b64": base64.b64encode(images[1]).decode()}},
                              {"b64": base64.b64encode(images[2]).decode()}],
                "parameters": {}}
        reply = request(port, "POST", PREDICT, json.dumps(body).encode(), {"content-type": "application/json"})
        assert reply.status == 200, reply.body[:300]
        predictions = reply.json()["predictions"]
        # one answer per instance, in order: the same class and probabilities /v1/predict gives each image
        assert [answer_of(p) for p in predictions] == [plain_answer(port, data) for data in images]
        assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in predictions)

        broken = {"instances": [{"b64": base64.b64encode(b"not an image").decode()}]}
        refused = request(port, "POST", PREDICT, json.dumps(broken).encode(), {"content-type": "application/json"})
        assert refused.status == 400 and refused.json()["error"]["code"] == "not_an_image"
        malformed = request(port, "POST", PREDICT, b'{"inputs": 1}', {"content-type": "application/json"})
        assert malformed.status == 400 and malformed.json()["error"]["code"] == "invalid_instances"
        assert request(port, "GET", PREDICT).status == 405
    finally:
        stop_server(process)
