"""The HTTP service: routes, wired to the verified model, the batcher and the metrics.

Run it as the container does::

    MODEL_DIR=runs/p3-onnx uvicorn phase3_production.serving.app:create_app --factory --port 8000

Routes: ``POST /v1/predict`` (one image: multipart field ``file``, or the raw
image bytes with an ``image/*`` Content-Type), ``POST /v1/predict/batch``
(multipart, repeated field ``files``), ``POST /v1/feedback`` (the true label
of an earlier prediction: live accuracy), ``GET /v1/drift`` (the drift
monitor's state), ``GET /healthz`` (the process is alive), ``GET /readyz``
(the model is loaded, verified and accepting work), ``GET /metrics``
(Prometheus), ``GET /v1/model`` (metadata and sha256), ``/docs`` (OpenAPI),
and SageMaker's ``GET /ping`` and ``POST /invocations``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict, deque
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from phase3_production.serving.batcher import MicroBatcher, Saturated
from phase3_production.serving.config import Settings
from phase3_production.serving.drift import DriftMonitor, rgb_features
from phase3_production.serving.errors import ApiError, error_response
from phase3_production.serving.images import ImageRejected, open_checked, rgb_array, to_model_input
from phase3_production.serving.limits import RequestLimits
from phase3_production.serving.metrics import ServiceMetrics
from phase3_production.serving.model import ServedModel

log = logging.getLogger("ml60.serve")
RAW_IMAGE_TYPES = ("image/", "application/octet-stream", "application/x-image")
DECODE_INLINE_BYTES = 256 * 1024   # bigger uploads are decoded in a worker thread, off the event loop

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
_ERRORS = {code: {"description": text} for code, text in (
    (400, "not an image, damaged image, malformed request"), (413, "body, file or pixel count over the limit"),
    (415, "unsupported media type or image format"), (503, "saturated or not ready; see Retry-After"))}


class ServiceState:
    """What the routes share: the model, the batcher, the metrics, recent predictions."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings, self.metrics = settings, metrics
        self.model: ServedModel | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.recent: OrderedDict[str, dict] = OrderedDict()
        self.drift: DriftMonitor | None = None
        self.drift_reported: int | None = None   # the check whose results /metrics shows
        self.outcomes: deque = deque(maxlen=settings.feedback_window)   # 1 correct, 0 wrong

    def remember(self, prediction_id: str, record: dict) -> None:
        self.recent[prediction_id] = record
        while len(self.recent) > self.settings.recent_predictions:
            self.recent.popitem(last=False)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    metrics = ServiceMetrics()
    state = ServiceState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Verification happens before the server accepts a connection: a bad model means no service.
        state.model = ServedModel.load(settings.model_dir, settings.model_file, settings.intra_op_threads)
        metrics.model_info.labels(version=state.model.version, file=state.model.path.name).set(1)
        if state.model.reference_path is not None:
            state.drift = DriftMonitor.from_file(state.model.reference_path, window=settings.drift_window,
                                                 check_every=settings.drift_check_every, alpha=settings.drift_alpha)
        state.batcher = MicroBatcher(state.model.predict_probabilities, enabled=settings.batching,
                                     max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                     max_queue=settings.max_queue, on_batch=metrics.batch_size.observe)
        await state.batcher.start()
        state.ready = True
        log.info("serving %s (version %s), batching %s", state.model.path, state.model.version,
                 "on" if settings.batching else "off")
        try:
            yield
        finally:
            state.ready = False          # readiness drops first: the load balancer stops sending
            await state.batcher.close()  # then the work already accepted is finished

    app = FastAPI(title="ML60 CIFAR-10 classifier", version="1.0",
                  description="Phase 3 of ML60: the phase 2 CNN, exported to ONNX, verified, served.",
                  lifespan=lifespan)
    app.state.service = state
    _install_error_handlers(app)

    def request_id(request: Request) -> str:
        return request.scope.get("state", {}).get("request_id", "")

    async def decode(data: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(normalised model input, drift features of the same pixels)."""
        def work():
            image = open_checked(data, allowed=settings.allowed_formats, max_pixels=settings.max_pixels,
                                 max_bytes=settings.max_image_bytes)
            rgb = rgb_array(image, state.model.input_shape)
            return to_model_input(rgb, state.model.mean, state.model.std), rgb_features(rgb)
        try:
            return work() if len(data) <= DECODE_INLINE_BYTES else await asyncio.to_thread(work)
        except ImageRejected as exc:
            metrics.rejected.labels(code=exc.code).inc()
            raise

    async def classify(decoded: list[tuple[np.ndarray, np.ndarray]], rid: str) -> list[dict]:
        if not state.ready:
            raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
        probabilities = await state.batcher.submit(np.stack([x for x, _ in decoded]))
        model, out = state.model, []
        for p, (_, features) in zip(probabilities, decoded):
            index = int(p.argmax())
            if state.drift is not None:
                try:
                    state.drift.observe(features, float(p[index]), index)
                except Exception:   # monitoring must never fail a prediction (GET /v1/drift shows the failure)
                    log.exception("drift monitor failed; predictions continue")
            prediction_id = uuid.uuid4().hex
            record = {"prediction_id": prediction_id, "class": model.classes[index], "class_index": index,
                      "confidence": float(p[index]),
                      "probabilities": {c: round(float(v), 6) for c, v in zip(model.classes, p)},
                      "model_version": model.version, "request_id": rid}
            metrics.predictions.labels(predicted_class=model.classes[index]).inc()
            state.remember(prediction_id, {"class_index": index, "confidence": float(p[index])})
            out.append(record)
        if state.drift is not None and state.drift.last and state.drift.last["request"] != state.drift_reported:
            last = state.drift.last          # a new check happened: publish it once
            state.drift_reported = last["request"]
            metrics.drift_alarm.set(int(last["alarm"]))
            metrics.drift_p_value.labels(test="class_mix").set(last["class_mix"]["p_value"])
            for name, test in last["features"].items():
                metrics.drift_p_value.labels(test=name).set(test["p_value"])
                metrics.drift_psi.labels(feature=name).set(test["psi"])
        return out

    async def one_image(request: Request) -> bytes:
        content_type = request.headers.get("content-type", "").lower()
        if content_type.startswith("multipart/form-data"):
            form = await _form(request, max_files=1)
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

    async def _form(request: Request, max_files: int):
        try:
            return await request.form(max_files=max_files, max_fields=4)
        except StarletteHTTPException as exc:   # malformed multipart, too many files
            code = "too_many_files" if "Too many files" in str(exc.detail) else "malformed_multipart"
            raise ApiError(400, code, str(exc.detail)) from exc
        except (ValueError, KeyError, AssertionError) as exc:
            raise ApiError(400, "malformed_multipart", f"cannot parse the multipart body ({exc})") from exc

    @app.post("/v1/predict", openapi_extra={"requestBody": _IMAGE_BODY}, responses=_ERRORS,
              summary="Classify one image")
    async def predict(request: Request):
        data = await one_image(request)
        return (await classify([await decode(data)], request_id(request)))[0]

    @app.post("/v1/predict/batch", openapi_extra={"requestBody": _BATCH_BODY}, responses=_ERRORS,
              summary="Classify several images in one request")
    async def predict_batch(request: Request):
        content_type = request.headers.get("content-type", "").lower()
        if not content_type.startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type", "send multipart/form-data with repeated 'files' fields")
        limit = settings.max_batch_files
        form = await _form(request, max_files=limit)
        uploads = [u for u in form.getlist("files") if not isinstance(u, str)]
        if not uploads:
            raise ApiError(400, "missing_file", "multipart body has no file fields named 'files'")
        images = [await decode(await u.read()) for u in uploads]
        return {"predictions": await classify(images, request_id(request))}

    @app.post("/invocations", openapi_extra={"requestBody": _IMAGE_BODY}, responses=_ERRORS,
              summary="SageMaker-compatible alias of /v1/predict")
    async def invocations(request: Request):
        return await predict(request)

    @app.post("/v1/feedback", summary="The true label of an earlier prediction (feeds live accuracy)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["prediction_id", "label"],
                  "properties": {"prediction_id": {"type": "string"},
                                 "label": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}}}}},
              responses=_ERRORS)
    async def feedback(request: Request):
        try:
            payload = await request.json()
        except ValueError as exc:
            raise ApiError(400, "invalid_json", f"the body is not JSON ({exc})") from exc
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
        live = sum(state.outcomes) / len(state.outcomes)
        metrics.feedback.labels(outcome="correct" if correct else "wrong").inc()
        metrics.live_accuracy.set(live)
        return {"correct": bool(correct), "live_accuracy": live, "labelled": len(state.outcomes)}

    @app.get("/v1/drift", summary="Drift monitor: the last comparison of recent traffic with the reference")
    async def drift_state():
        if state.drift is None:
            return {"enabled": False, "reason": "no reference.json beside the model (export with make p3-onnx)"}
        return state.drift.state()

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz", summary="Readiness: the model is verified, loaded and accepting work")
    async def readyz():
        if not state.ready:
            return JSONResponse({"status": "not ready"}, status_code=503, headers={"Retry-After": "1"})
        return {"status": "ready", "model_version": state.model.version}

    @app.get("/ping", summary="SageMaker-compatible readiness")
    async def ping():
        return await readyz()

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/model", summary="The served model: version, sha256, classes, preprocessing")
    async def model_info():
        if state.model is None:
            raise ApiError(503, "not_ready", "the model is not loaded yet", {"Retry-After": "1"})
        return state.model.describe()

    # The request-id / body-limit / metrics layer goes around the routes and their error handlers.
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes, metrics=metrics,
                       known_paths=frozenset(getattr(r, "path", "") for r in app.routes))
    return app


def _install_error_handlers(app: FastAPI) -> None:
    def rid(request: Request) -> str:
        return request.scope.get("state", {}).get("request_id", "")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message, rid(request), exc.headers)

    @app.exception_handler(ImageRejected)
    async def image_rejected(request: Request, exc: ImageRejected):
        return error_response(exc.status, exc.code, exc.message, rid(request))

    @app.exception_handler(Saturated)
    async def saturated(request: Request, exc: Saturated):
        retry = str(app.state.service.settings.retry_after_s)
        return error_response(503, "saturated", f"the service is at capacity: {exc}", rid(request),
                              {"Retry-After": retry})

    @app.exception_handler(NotImplementedError)
    async def not_implemented(request: Request, exc: NotImplementedError):
        # An exercise not written yet (make exercise): 501 names it, so the self-test can say which.
        log.error("request %s reached unwritten code: %s", rid(request), exc)
        return error_response(501, "not_implemented", str(exc), rid(request))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error_response(400, "invalid_request", "the request does not match the API", rid(request))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), rid(request), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("request %s failed", rid(request))   # the traceback goes to the log, not the client
        return error_response(500, "internal_error", "the server failed; quote the request id", rid(request))
