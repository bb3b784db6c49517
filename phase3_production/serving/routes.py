"""The routes: each a module-level function that finds what it shares in ``request.app.state.service``.

``create_app`` (``serving/app.py``) builds the :class:`ServiceState` once,
hangs it on ``app.state.service`` and includes this router; a route reads the
model, the batcher, the decode pool and the metrics from there, so each one
can be read (and tested) on its own.

==============================  =================================================================
route                           what it does
==============================  =================================================================
``POST /v1/predict``            one image: multipart field ``file``, or the raw bytes (``image/*``)
``POST /v1/predict/batch``      several images: multipart, repeated field ``files``
``POST /invocations``           SageMaker's name for ``/v1/predict`` (JSON only: another Accept is a 406)
``POST $AIP_PREDICT_ROUTE``     Vertex AI's: ``{"instances": [{"b64": ...}]}`` (added when Vertex names it)
``POST /v1/feedback``           the true label of an earlier prediction (needs the API token)
``GET /v1/drift``               the drift monitor's last comparison, or why it is off
``GET /v1/model``               the served model: version, sha256, classes, preprocessing, its card's figures
``GET /v1/model/card``          the model card, for people (Markdown)
``GET /v1/samples``             a few labelled test images for the demo page
``GET /v1/stats``               the last minutes second by second, drift and live accuracy (``/dashboard``)
``GET /healthz``                liveness: the process answers
``GET /readyz``, ``GET /ping``  readiness: the model is verified, loaded and accepting work
``GET $AIP_HEALTH_ROUTE``       the same, where Vertex AI names the route
``GET /metrics``                Prometheus
==============================  =================================================================
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from phase3_production.serving import decoding
from phase3_production.serving.auth import require_token
from phase3_production.serving.cloud import InstanceError, vertex_instances
from phase3_production.serving.errors import ApiError
from phase3_production.serving.images import ImageRejected

log = logging.getLogger("ml60.serve")
router = APIRouter()
RAW_IMAGE_TYPES = ("image/", "application/octet-stream", "application/x-image")

_IMAGE_BODY = {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
}, "required": True}
_BATCH_BODY = {"content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"],
                                       "properties": {"files": {"type": "array",
                                                                "items": {"type": "string", "format": "binary"}}}}},
}, "required": True}
_FEEDBACK_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["prediction_id", "label"],
    "properties": {"prediction_id": {"type": "string"},
                   "label": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}}}}
_ERRORS = {code: {"description": text} for code, text in (
    (400, "not an image, damaged image, malformed request"), (413, "body, file or pixel count over the limit"),
    (415, "unsupported media type or image format"), (503, "saturated or not ready; see Retry-After"))}
_AUTH_ERRORS = {401: {"description": "no bearer token, or not the right one (WWW-Authenticate says the scheme)"},
                403: {"description": "the service has no API_TOKEN configured: writes are refused"}}


def service(request: Request):
    """The :class:`~phase3_production.serving.app.ServiceState` this app was created with."""
    return request.app.state.service


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


# --------------------------------------------------------------------------- predictions


@router.post("/v1/predict", openapi_extra={"requestBody": _IMAGE_BODY}, responses=_ERRORS,
             summary="Classify one image")
async def predict(request: Request):
    data = await one_image(request)
    return (await classify(request, [await decode(request, data)]))[0]


@router.post("/v1/predict/batch", openapi_extra={"requestBody": _BATCH_BODY}, responses=_ERRORS,
             summary="Classify several images in one request")
async def predict_batch(request: Request):
    content_type = request.headers.get("content-type", "").lower()
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", "send multipart/form-data with repeated 'files' fields")
    form = await parse_form(request, max_files=service(request).settings.max_batch_files)
    uploads = [u for u in form.getlist("files") if not isinstance(u, str)]
    if not uploads:
        raise ApiError(400, "missing_file", "multipart body has no file fields named 'files'")
    images = [await decode(request, await upload.read()) for upload in uploads]   # one at a time: fair to others
    return {"predictions": await classify(request, images)}


@router.post("/invocations", openapi_extra={"requestBody": _IMAGE_BODY}, responses={**_ERRORS, 406: {
             "description": "the Accept header asks for something other than JSON"}},
             summary="SageMaker's prediction route: the image bytes with their Content-Type, JSON back")
async def invocations(request: Request):
    """SageMaker passes the caller's ``ContentType`` and ``Accept`` through: the answer is JSON, so an
    ``Accept`` that rules JSON out gets a 406 that says so, rather than JSON the caller cannot read."""
    accept = request.headers.get("accept", "").lower()
    if accept and not any(kind.split(";")[0].strip() in ("application/json", "application/*", "*/*")
                          for kind in accept.split(",")):
        raise ApiError(406, "not_acceptable", f"the answer is application/json; Accept: {accept} rules it out")
    return await predict(request)


async def vertex_predict(request: Request):
    """Vertex AI's prediction route (its path comes from ``AIP_PREDICT_ROUTE``, see ``serving/cloud.py``).

    ``{"instances": [{"b64": "<base64 image>"}, ...]}`` in, ``{"predictions": [...]}`` out, one answer per
    instance in order, each the answer ``/v1/predict`` gives; every image passes the same checks.
    """
    payload = await json_body(request)
    try:
        images = vertex_instances(payload, service(request).settings.max_batch_files)
    except InstanceError as exc:
        raise ApiError(400, "invalid_instances", str(exc)) from exc
    decoded = [await decode(request, data) for data in images]   # one at a time: fair to others
    return {"predictions": await classify(request, decoded)}


async def one_image(request: Request) -> bytes:
    """The image bytes of a single-image request: a multipart ``file`` field, or the raw body."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        form = await parse_form(request, max_files=1)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "missing_file", "multipart body has no file field named 'file'")
        return await upload.read()
    if content_type.startswith(RAW_IMAGE_TYPES):
        body = await request.body()
        if not body:
            raise ApiError(400, "empty_body", "the request body is empty")
        return body
    if not content_type and not await request.body():
        raise ApiError(400, "empty_body", "the request body is empty")
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {content_type or '(none)'} is not accepted; send multipart/form-data "
                   "with a 'file' field, or the image bytes with an image/* Content-Type")


async def parse_form(request: Request, max_files: int):
    """The multipart form, with malformed bodies and too many files as 400s."""
    try:
        return await request.form(max_files=max_files, max_fields=4)
    except StarletteHTTPException as exc:   # malformed multipart, too many files
        code = "too_many_files" if "Too many files" in str(exc.detail) else "malformed_multipart"
        raise ApiError(400, code, str(exc.detail)) from exc
    except (ValueError, KeyError, AssertionError) as exc:
        raise ApiError(400, "malformed_multipart", f"cannot parse the multipart body ({exc})") from exc


async def decode(request: Request, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(normalised model input, drift features of the same pixels), decoded off the event loop."""
    state = service(request)
    if not state.ready:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
    try:
        return await decoding.decode(state.decoder, data, state.settings, state.model)
    except (ImageRejected, ApiError) as exc:
        state.metrics.rejected.labels(code=exc.code).inc()
        raise


async def classify(request: Request, decoded: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Run the model on decoded images (through the batcher); one answer per image, each remembered."""
    state = service(request)
    if not state.ready:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
    probabilities = await state.batcher.submit(np.stack([x for x, _ in decoded]))
    answers = [answer(state, p, features, request_id(request)) for p, (_, features) in zip(probabilities, decoded)]
    publish_drift_check(state)
    return answers


def answer(state, p: np.ndarray, features: np.ndarray, rid: str) -> dict:
    """The reply for one image; it also feeds the drift monitor and is remembered for feedback."""
    model, index = state.model, int(p.argmax())
    if state.drift is not None:
        try:
            state.drift.observe(features, float(p[index]), index)
        except Exception:   # monitoring must never fail a prediction (GET /v1/drift shows the failure)
            log.exception("drift monitor failed; predictions continue")
    prediction_id = uuid.uuid4().hex
    state.metrics.predictions.labels(predicted_class=model.classes[index]).inc()
    state.remember(prediction_id, {"class_index": index, "confidence": float(p[index])})
    return {"prediction_id": prediction_id, "class": model.classes[index], "class_index": index,
            "confidence": float(p[index]),
            "probabilities": {c: round(float(v), 6) for c, v in zip(model.classes, p)},
            "model_version": model.version, "request_id": rid}


def publish_drift_check(state) -> None:
    """Copy a drift check that happened since the last publication into the Prometheus gauges, once."""
    if state.drift is None or not state.drift.last or state.drift.last["request"] == state.drift_reported:
        return
    last, metrics = state.drift.last, state.metrics
    state.drift_reported = last["request"]
    metrics.drift_alarm.set(int(last["alarm"]))
    metrics.drift_p_value.labels(test="class_mix").set(last["class_mix"]["p_value"])
    for name, test in last["features"].items():
        metrics.drift_p_value.labels(test=name).set(test["p_value"])
        metrics.drift_psi.labels(feature=name).set(test["psi"])


# --------------------------------------------------------------------------- feedback and drift


@router.post("/v1/feedback", summary="The true label of an earlier prediction (feeds live accuracy; needs the token)",
             openapi_extra={"requestBody": _FEEDBACK_BODY}, responses={**_ERRORS, **_AUTH_ERRORS})
async def feedback(request: Request):
    state = service(request)
    require_token(request.headers.get("authorization"), state.settings.api_token)
    payload = await json_body(request)
    if not isinstance(payload, dict) or not isinstance(payload.get("prediction_id"), str):
        raise ApiError(400, "invalid_request", "send {\"prediction_id\": \"...\", \"label\": \"cat\" or 3}")
    record = state.recent.get(payload["prediction_id"])
    if record is None:
        raise ApiError(404, "unknown_prediction", "no recent prediction has this id (too old, or never made)")
    label, classes = payload.get("label"), state.model.classes
    if isinstance(label, str) and label in classes:
        label = classes.index(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(classes):
        raise ApiError(400, "invalid_label", f"label must be one of {classes} or an index 0-{len(classes) - 1}")
    if record.get("label") is not None:
        raise ApiError(409, "already_labelled", "this prediction already has a label")
    record["label"] = label
    correct = int(label == record["class_index"])
    state.outcomes.append(correct)
    live = state.live_accuracy()
    state.metrics.observe_feedback(bool(correct), live)
    return {"correct": bool(correct), "live_accuracy": live, "labelled": len(state.outcomes)}


async def json_body(request: Request):
    """The body parsed as JSON; malformed or absurdly nested JSON is a 400, never a 500.

    Python's parser recurses once per ``[`` or ``{``: a few kilobytes of
    ``[[[[...`` exhaust the interpreter's recursion limit and raise
    ``RecursionError``, which is not a ``ValueError`` and would escape as a 500.
    """
    body = await request.body()
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the JSON is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON ({exc})") from exc


@router.get("/v1/drift", summary="Drift monitor: the last comparison of recent traffic with the reference")
async def drift_state(request: Request):
    state = service(request)
    return drift_off(state) if state.drift is None else state.drift.state()


def drift_off(state) -> dict:
    """What ``/v1/drift`` and ``/v1/stats`` say while there is no drift monitor, and why."""
    return {"enabled": False, "reason": state.drift_off_reason or "the model is not loaded yet"}


# --------------------------------------------------------------------------- health, metrics, metadata


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz():
    return {"status": "alive"}


@router.get("/readyz", summary="Readiness: the model is verified, loaded and accepting work")
async def readyz(request: Request):
    state = service(request)
    if not state.ready:
        return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "1"})
    return {"status": "ready", "model_version": state.model.version}


@router.get("/ping", summary="SageMaker-compatible readiness")
async def ping(request: Request):
    return await readyz(request)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(request: Request):
    metrics = service(request).metrics
    return Response(metrics.render(), media_type=metrics.content_type)


@router.get("/v1/model", summary="The served model: version, sha256, classes, preprocessing, its model card")
async def model_info(request: Request):
    state = service(request)
    if state.model is None:
        raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
    return {**state.model.describe(), "card": state.card,
            "card_url": "/v1/model/card" if state.card_markdown else None}


@router.get("/v1/model/card", summary="The model card (intended use, data, evaluation, weaknesses), as Markdown",
            response_class=Response)
async def model_card(request: Request):
    state = service(request)
    if state.card_markdown is None:
        raise ApiError(404, "no_model_card", "this model was exported without a model card (`make p3-onnx` "
                                             "writes one)")
    return Response(state.card_markdown, media_type="text/markdown; charset=utf-8")


@router.get("/v1/samples", summary="A few labelled test images that came with the model (the demo page's)")
async def samples(request: Request):
    state = service(request)
    if not state.samples:
        return {"samples": [], "reason": "this model was exported without demo samples (`make p3-onnx` writes them)"}
    return {"samples": state.samples}


@router.get("/v1/stats", summary="The last minutes of traffic second by second, drift and live accuracy")
async def stats(request: Request):
    """What ``/dashboard`` draws; ``/metrics`` stays the Prometheus format for Prometheus.

    The drift monitor is read here, on the event loop that also updates it
    (so it never changes half-way through a copy); the traffic summary, which
    sorts latencies, runs in a worker thread under its own lock.
    """
    state = service(request)
    drift = drift_off(state) if state.drift is None else state.drift.dashboard()
    accuracy = {"labelled": len(state.outcomes), "window": state.outcomes.maxlen, "value": state.live_accuracy()}
    traffic = await run_in_threadpool(state.metrics.live.snapshot)
    return {"ready": state.ready, "model_version": state.model.version if state.model else None,
            "uptime_s": round(time.time() - state.started, 1), **traffic, "drift": drift, "live_accuracy": accuracy}
