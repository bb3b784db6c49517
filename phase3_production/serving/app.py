"""The HTTP service: ``create_app(settings)`` wires the routes to the verified model, the batcher and the metrics.

Run it as the container does (``serving/__main__.py`` adds the deadlines and
the shutdown notice)::

    MODEL_DIR=runs/p3-onnx python -m phase3_production.serving

or with uvicorn's own command line, the app built by this factory::

    MODEL_DIR=runs/p3-onnx uvicorn phase3_production.serving.app:create_app --factory --port 8000

The routes live in ``serving/routes.py``, each a function that reads what it
shares from ``request.app.state.service`` (a :class:`ServiceState`).  Here:
the state, the start-up and shutdown order (:func:`lifespan`), and the error
handlers that turn every failure into one JSON shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from phase3_production.manifest import MANIFEST_NAME
from phase3_production.serving.batcher import MicroBatcher, Saturated
from phase3_production.serving.config import Settings
from phase3_production.serving.decoding import DecodeBudget, DecodePool
from phase3_production.serving.drift import DriftMonitor
from phase3_production.serving.errors import ApiError, error_response
from phase3_production.serving.images import ImageRejected
from phase3_production.serving.limits import RequestLimits, ShutdownNotice
from phase3_production.serving.metrics import ServiceMetrics
from phase3_production.serving.model import ModelLoadError, ServedModel
from phase3_production.serving.pages import pages
from phase3_production.serving.routes import _ERRORS, readyz, router, vertex_predict
from phase3_production.serving.samples import read_samples

log = logging.getLogger("ml60.serve")


class ServiceState:
    """What the routes share: the model, the batcher, the decode pool, the metrics, recent predictions."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings, self.metrics = settings, metrics
        self.model: ServedModel | None = None
        self.batcher: MicroBatcher | None = None
        self.decoder: DecodePool | None = None
        self.ready = False
        self.stopping = ShutdownNotice()   # set on SIGTERM: body reads still in progress end with a 503
        self.recent: OrderedDict[str, dict] = OrderedDict()
        self.drift: DriftMonitor | None = None
        self.drift_off_reason: str | None = None
        self.drift_reported: int | None = None   # the check whose results /metrics shows
        self.outcomes: deque = deque(maxlen=settings.feedback_window)   # 1 correct, 0 wrong
        self.samples: list[dict] = []        # labelled test images for the demo page (GET /v1/samples)
        self.card: dict | None = None        # the model card's figures (GET /v1/model), None without one
        self.card_markdown: str | None = None  # the card for people (GET /v1/model/card)
        self.started = time.time()

    def live_accuracy(self) -> float | None:
        """The share of correct answers among the last ``feedback_window`` labelled ones; None before any label."""
        return sum(self.outcomes) / len(self.outcomes) if self.outcomes else None

    def remember(self, prediction_id: str, record: dict) -> None:
        self.recent[prediction_id] = record
        while len(self.recent) > self.settings.recent_predictions:
            self.recent.popitem(last=False)


@asynccontextmanager
async def lifespan(app: FastAPI):
    """Start-up in the order that keeps a bad model away from traffic; shutdown in the order that loses nothing."""
    state: ServiceState = app.state.service
    settings, metrics = state.settings, state.metrics
    state.stopping.bind(asyncio.get_running_loop())
    # Verification happens before the server accepts a connection: a bad model means no service.
    state.model = ServedModel.load(settings.model_dir, settings.model_file, settings.intra_op_threads)
    metrics.model_info.labels(version=state.model.version, file=state.model.path.name).set(1)
    state.drift, state.drift_off_reason = start_drift_monitor(state.model, settings)
    state.samples = load_samples(state.model)
    state.card, state.card_markdown = load_card(state.model)
    metrics.drift_monitor.labels(reason=state.drift_off_reason or "reference statistics loaded").set(
        int(state.drift is not None))
    state.decoder = DecodePool(settings.decode_threads, DecodeBudget(
        settings.decode_memory_bytes, settings.decode_wait_s, settings.retry_after_s))
    metrics.decode_bytes.set_function(lambda: state.decoder.budget.reserved)
    state.batcher = MicroBatcher(state.model.predict_probabilities, enabled=settings.batching,
                                 max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                 max_queue=settings.max_queue, batch_threshold=settings.batch_threshold,
                                 batches_in_flight=settings.batches_in_flight, on_batch=metrics.observe_batch)
    await state.batcher.start()
    state.ready = True
    metrics.ready.set(1)
    log.info("serving %s (version %s), batching %s", state.model.path, state.model.version,
             "on" if settings.batching else "off")
    try:
        yield
    finally:
        state.ready = False          # readiness drops first: the load balancer stops sending
        metrics.ready.set(0)
        await state.batcher.close()  # then the work already accepted is finished
        state.decoder.close()


def start_drift_monitor(model: ServedModel, settings: Settings) -> tuple[DriftMonitor | None, str | None]:
    """The drift monitor, or ``(None, why it is off)``: said once in the log, and on /v1/drift and /metrics."""
    if model.reference_path is None:
        reason = (f"{model.path.parent / MANIFEST_NAME} has no 'reference' entry, so there are no reference "
                  "statistics to compare traffic with (export the model with `make p3-onnx` to write them)")
        log.warning("drift monitoring is off: %s", reason)
        return None, reason
    try:
        return DriftMonitor.from_file(model.reference_path, window=settings.drift_window,
                                      check_every=settings.drift_check_every, alpha=settings.drift_alpha), None
    except (ValueError, KeyError, TypeError) as exc:   # verified by sha256, yet not drift statistics
        raise ModelLoadError(f"refusing to serve: {model.reference_path}: not drift reference statistics "
                             f"({type(exc).__name__}: {exc})") from exc


def load_card(model: ServedModel) -> tuple[dict | None, str | None]:
    """The model card written by p3-onnx (``model_card.py``), or ``(None, None)`` for an export without one."""
    if model.card_path is None or model.card_markdown_path is None:
        log.info("no model card: %s has no 'model_card' entry (export with `make p3-onnx` to write one)",
                 model.path.parent / MANIFEST_NAME)
        return None, None
    try:
        card = json.loads(model.card_path.read_text())
        markdown = model.card_markdown_path.read_text(encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as exc:   # verified by sha256, yet not a card
        raise ModelLoadError(f"refusing to serve: {model.card_path}: not a model card ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != "ml60-model-card-v1":
        raise ModelLoadError(f"refusing to serve: {model.card_path}: not an ML60 model card (no format "
                             "'ml60-model-card-v1')")
    return card, markdown


def load_samples(model: ServedModel) -> list[dict]:
    """The demo page's sample images, or none when the export has no ``samples`` entry (said once in the log)."""
    if model.samples_path is None:
        log.info("no demo samples: %s has no 'samples' entry (export with `make p3-onnx` to write them)",
                 model.path.parent / MANIFEST_NAME)
        return []
    try:
        return read_samples(model.samples_path, model.classes)
    except (ValueError, KeyError, TypeError) as exc:   # verified by sha256, yet not what the page can show
        raise ModelLoadError(f"refusing to serve: {model.samples_path}: not demo samples ({exc})") from exc


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app, built and wired; nothing is loaded until the server starts it (see :func:`lifespan`)."""
    settings = settings or Settings.from_env()
    app = FastAPI(title="ML60 CIFAR-10 classifier", version="1.0",
                  description="Phase 3 of ML60: the phase 2 CNN, exported to ONNX, verified, served.",
                  lifespan=lifespan,
                  # No redirect from /v1/predict/ to /v1/predict: Starlette builds that Location from the
                  # client's own Host header, so any client could make the service point elsewhere.
                  redirect_slashes=False)
    app.state.service = ServiceState(settings, ServiceMetrics())
    app.include_router(router)
    app.include_router(pages)
    if settings.vertex_routes:
        add_vertex_routes(app, *settings.vertex_routes)
    install_error_handlers(app)
    # The request-id / body-limit / last-resort layer goes around the routes and their error handlers.
    app.add_middleware(RequestLimits, max_body_bytes=settings.max_body_bytes, body_timeout_s=settings.body_timeout_s,
                       linger_s=settings.linger_s, linger_bytes=settings.linger_bytes,
                       stopping=app.state.service.stopping, metrics=app.state.service.metrics,
                       known_paths=route_paths(app.routes))
    return app


def route_paths(routes) -> frozenset[str]:
    """Every path the app answers, included routers too.

    FastAPI 0.16x keeps an included router as one entry of ``app.routes``
    (its routes stay in ``original_router.routes``); older versions copied
    each route into ``app.routes``.  Reading both ways gives the same set on
    either, which the body-limit layer needs to label a 413 sent before routing.
    """
    paths = set()
    for route in routes:
        if getattr(route, "path", None):
            paths.add(route.path)
        included = getattr(route, "original_router", None)
        if included is not None:
            paths |= route_paths(included.routes)
    return frozenset(paths)


def add_vertex_routes(app: FastAPI, health: str, predict: str) -> None:
    """Vertex AI's health and prediction routes, at the paths it named (``serving/cloud.py``)."""
    taken = route_paths(app.routes) & {health, predict}
    if taken:
        raise ValueError(f"refusing to start: AIP_HEALTH_ROUTE / AIP_PREDICT_ROUTE {sorted(taken)} would hide "
                         "a route the service already has")
    app.add_api_route(health, readyz, methods=["GET"], summary="Vertex AI readiness (AIP_HEALTH_ROUTE)")
    app.add_api_route(predict, vertex_predict, methods=["POST"], responses=_ERRORS,
                      summary="Vertex AI prediction (AIP_PREDICT_ROUTE): instances in, predictions out")


def install_error_handlers(app: FastAPI) -> None:
    """Every failure a route raises becomes ``{"error": {...}}`` with its status (``errors.py``).

    Exceptions no handler here answers reach :class:`RequestLimits`, the
    outermost layer, which logs them once and answers 500 with the request id.
    """
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
