"""Every setting of the service, read once from the environment.

The same image runs on a laptop, in Kubernetes and on SageMaker; only the
environment differs.  Defaults suit a 2-core machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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


@dataclass(frozen=True)
class Settings:
    model_dir: Path = Path("runs/p3-onnx")
    model_file: str = "model.onnx"          # or model.int8.onnx: any file the manifest lists
    batching: bool = True                   # gather concurrent requests into one model call
    max_batch: int = 32                     # images per model call
    max_wait_ms: float = 0.0                # extra wait for company; 0: batch what queued while the model ran
    max_queue: int = 256                    # images waiting or in flight; beyond that: 503 + Retry-After
    max_body_bytes: int = 8 * 1024 * 1024   # whole request body, counted as it streams in
    max_image_bytes: int = 4 * 1024 * 1024  # one image file
    max_pixels: int = 4096 * 4096           # width x height after the header is read, before decoding
    max_batch_files: int = 32               # images in one /v1/predict/batch request
    intra_op_threads: int = 1               # ONNX Runtime threads per model call
    retry_after_s: int = 1
    recent_predictions: int = 10_000        # prediction ids remembered for /v1/feedback
    feedback_window: int = 500              # live accuracy over the last N labelled predictions
    drift_window: int = 200                 # requests compared with the reference
    drift_check_every: int = 25
    drift_alpha: float = 1e-4               # per check, family-wise (Holm inside the KS family)
    allowed_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")

    @classmethod
    def from_env(cls) -> "Settings":
        return cls(
            model_dir=Path(_env("MODEL_DIR", "runs/p3-onnx")),
            model_file=_env("MODEL_FILE", "model.onnx"),
            batching=_env("BATCHING", True, _flag),
            max_batch=_env("MAX_BATCH", 32, int),
            max_wait_ms=_env("MAX_WAIT_MS", 0.0, float),
            max_queue=_env("MAX_QUEUE", 256, int),
            max_body_bytes=_env("MAX_BODY_BYTES", 8 * 1024 * 1024, int),
            max_image_bytes=_env("MAX_IMAGE_BYTES", 4 * 1024 * 1024, int),
            max_pixels=_env("MAX_PIXELS", 4096 * 4096, int),
            max_batch_files=_env("MAX_BATCH_FILES", 32, int),
            intra_op_threads=_env("ORT_THREADS", 1, int),
            retry_after_s=_env("RETRY_AFTER_S", 1, int),
            feedback_window=_env("FEEDBACK_WINDOW", 500, int),
            drift_window=_env("DRIFT_WINDOW", 200, int),
            drift_check_every=_env("DRIFT_CHECK_EVERY", 25, int),
            drift_alpha=_env("DRIFT_ALPHA", 1e-4, float),
        )
