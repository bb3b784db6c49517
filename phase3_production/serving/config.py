"""Every setting of the service, read once from the environment, and checked before it starts.

The same image runs on a laptop, in Kubernetes and on SageMaker; only the
environment differs.  Defaults suit a 2-core machine with a container memory
limit well under a gigabyte.  Settings that cannot work together (a batch
larger than the queue that must admit it, a decode budget too small for one
image) stop the service at start-up with a message that names them, rather
than answer 503 forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from phase3_production.serving.cloud import vertex_routes

MIB = 1024 * 1024


def _env(name: str, default, cast=str):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return cast(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r}: expected {cast.__name__}") from exc


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


class Secret:
    """A string that never prints itself: ``repr``, ``str`` and logs show only that it is set.

    Settings are logged and written to ``metrics.json``; the API token must
    not travel with them.  ``reveal()`` is the one way to read the value.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if not isinstance(value, str) or not value:
            raise ValueError("a secret must be a non-empty string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<hidden>')"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path("runs/p3-onnx")
    model_file: str = "model.onnx"          # or model.int8.onnx: any file the manifest lists
    batching: bool = True                   # gather concurrent requests into one model call
    max_batch: int = 32                     # images per model call
    max_wait_ms: float = 0.0                # extra wait for company; 0: batch what queued while the model ran
    batch_threshold: int | None = None      # images in flight from which requests are batched (None: max_batch; 0: always)
    batches_in_flight: int = 2              # batches handed to the model thread at once
    max_queue: int = 256                    # images waiting or in flight; beyond that: 503 + Retry-After
    max_body_bytes: int = 8 * MIB           # whole request body, counted as it streams in
    max_image_bytes: int = 4 * MIB          # one image file
    # A 32x32 classifier reads 1,024 pixels: 4 Mpx (2048 x 2048) is already 4,000 times that, and
    # anything larger only costs memory and time. Checked from the header, before decoding.
    max_pixels: int = 2048 * 2048
    max_batch_files: int = 32               # images in one /v1/predict/batch request (<= max_queue)
    intra_op_threads: int = 1               # ONNX Runtime threads per model call
    retry_after_s: int = 1
    recent_predictions: int = 10_000        # prediction ids remembered for /v1/feedback
    feedback_window: int = 500              # live accuracy over the last N labelled predictions
    drift_window: int = 200                 # requests compared with the reference
    drift_check_every: int = 25
    drift_alpha: float = 1e-4               # per check, family-wise (Holm inside the KS family)
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
    # Decoding: off the event loop (but for small plain PNGs), at most this many at once, within one budget.
    inline_decode_bytes: int = 8 * 1024     # a plain PNG this small, of <= 64x64 pixels, decodes on the loop (0: never)
    decode_threads: int = 2                 # worker threads that decode images
    decode_memory_bytes: int = 256 * MIB    # decoded pixels held at once, shared by every decode in flight
    decode_wait_s: float = 2.0              # how long a decode may wait for budget before a 503
    # Who may write: POST /v1/feedback needs `Authorization: Bearer <API_TOKEN>`; unset, it is refused.
    api_token: Secret | None = None
    # What one client may hold: deadlines and caps (uvicorn's options are in serving/__main__.py).
    body_timeout_s: float = 15.0            # the whole body must arrive within this, else 408
    linger_s: float = 2.0                   # after a 413, keep reading (and dropping) the upload this long...
    linger_bytes: int = 64 * MIB            # ...or this many bytes, so the client gets to read the 413
    limit_concurrency: int = 128            # connections + requests; beyond it uvicorn answers 503
    keep_alive_s: float = 5.0               # an idle keep-alive connection is closed after this
    max_header_bytes: int = 16 * 1024       # headers still incomplete past this many bytes: 400
    graceful_shutdown_s: float = 20.0       # SIGTERM: finish the requests in flight for at most this
    # Vertex AI names its health and prediction routes when the container starts (serving/cloud.py).
    vertex_routes: tuple[str, str] | None = None

    def __post_init__(self):
        if isinstance(self.api_token, str):   # Settings(api_token="...") in tests and notebooks
            object.__setattr__(self, "api_token", Secret(self.api_token) if self.api_token else None)
        problems = settings_problems(self)
        if problems:
            raise ValueError("refusing to start, the settings cannot work: " + "; ".join(problems))

    @classmethod
    def from_env(cls) -> "Settings":
        token = os.environ.get("API_TOKEN", "").strip()
        return cls(
            model_dir=Path(_env("MODEL_DIR", "runs/p3-onnx")),
            model_file=_env("MODEL_FILE", "model.onnx"),
            batching=_env("BATCHING", True, _flag),
            max_batch=_env("MAX_BATCH", 32, int),
            max_wait_ms=_env("MAX_WAIT_MS", 0.0, float),
            batch_threshold=_env("BATCH_THRESHOLD", None, int),
            batches_in_flight=_env("BATCHES_IN_FLIGHT", 2, int),
            max_queue=_env("MAX_QUEUE", 256, int),
            max_body_bytes=_env("MAX_BODY_BYTES", 8 * MIB, int),
            max_image_bytes=_env("MAX_IMAGE_BYTES", 4 * MIB, int),
            max_pixels=_env("MAX_PIXELS", 2048 * 2048, int),
            max_batch_files=_env("MAX_BATCH_FILES", 32, int),
            intra_op_threads=_env("ORT_THREADS", 1, int),
            retry_after_s=_env("RETRY_AFTER_S", 1, int),
            feedback_window=_env("FEEDBACK_WINDOW", 500, int),
            drift_window=_env("DRIFT_WINDOW", 200, int),
            drift_check_every=_env("DRIFT_CHECK_EVERY", 25, int),
            drift_alpha=_env("DRIFT_ALPHA", 1e-4, float),
            inline_decode_bytes=_env("INLINE_DECODE_BYTES", 8 * 1024, int),
            decode_threads=_env("DECODE_THREADS", 2, int),
            decode_memory_bytes=_env("DECODE_MEMORY_BYTES", 256 * MIB, int),
            decode_wait_s=_env("DECODE_WAIT_S", 2.0, float),
            api_token=Secret(token) if token else None,
            body_timeout_s=_env("BODY_TIMEOUT_S", 15.0, float),
            linger_s=_env("LINGER_S", 2.0, float),
            linger_bytes=_env("LINGER_BYTES", 64 * MIB, int),
            limit_concurrency=_env("LIMIT_CONCURRENCY", 128, int),
            keep_alive_s=_env("KEEP_ALIVE_S", 5.0, float),
            max_header_bytes=_env("MAX_HEADER_BYTES", 16 * 1024, int),
            graceful_shutdown_s=_env("GRACEFUL_SHUTDOWN_S", 20.0, float),
            vertex_routes=vertex_routes(os.environ),
        )


POSITIVE = ("max_batch", "max_queue", "max_body_bytes", "max_image_bytes", "max_pixels", "max_batch_files",
            "intra_op_threads", "recent_predictions", "feedback_window", "drift_window", "drift_check_every",
            "decode_threads", "decode_memory_bytes", "body_timeout_s", "limit_concurrency", "max_header_bytes",
            "batches_in_flight")
NOT_NEGATIVE = ("max_wait_ms", "inline_decode_bytes", "retry_after_s", "decode_wait_s", "linger_s", "linger_bytes", "keep_alive_s",
                "graceful_shutdown_s")


def settings_problems(settings: Settings) -> list[str]:
    """What makes these settings unworkable, each naming its environment variable; empty when none."""
    names = {f.name for f in fields(settings)}
    problems = [f"{name.upper()} must be > 0 (got {getattr(settings, name)})"
                for name in POSITIVE if name in names and not getattr(settings, name) > 0]
    problems += [f"{name.upper()} must be >= 0 (got {getattr(settings, name)})"
                 for name in NOT_NEGATIVE if name in names and not getattr(settings, name) >= 0]
    if settings.batch_threshold is not None and settings.batch_threshold < 0:
        problems.append(f"BATCH_THRESHOLD must be >= 0 (got {settings.batch_threshold})")
    if settings.max_batch_files > settings.max_queue:
        problems.append(f"MAX_BATCH_FILES={settings.max_batch_files} is above MAX_QUEUE={settings.max_queue}: "
                        "a batch that large could never be admitted and would get 503 forever; lower "
                        "MAX_BATCH_FILES or raise MAX_QUEUE")
    if settings.decode_memory_bytes < 4 * settings.max_pixels:
        problems.append(f"DECODE_MEMORY_BYTES={settings.decode_memory_bytes:,} cannot hold one RGB image at the "
                        f"pixel limit (MAX_PIXELS={settings.max_pixels:,} x 4 bytes, as Pillow stores RGB): "
                        "raise DECODE_MEMORY_BYTES or lower MAX_PIXELS")
    return problems
