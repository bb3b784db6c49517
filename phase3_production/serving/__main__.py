"""The container's command: ``python -m phase3_production.serving [serve]``.

Reads ``HOST`` (default 0.0.0.0) and ``PORT`` (default 8000; SageMaker sets
8080) and runs uvicorn with the app factory.  SageMaker starts a container as
``docker run IMAGE serve``; the optional ``serve`` argument is accepted and
ignored, so the same image runs there, on Kubernetes and on a laptop.
SIGTERM makes uvicorn stop accepting connections, finish the requests in
flight (up to 20 s), then run the app's shutdown, which drains the batcher.
"""

from __future__ import annotations

import os
import sys

import uvicorn


def main(argv: list[str]) -> None:
    extra = [a for a in argv if a != "serve"]
    if extra:
        sys.exit(f"unexpected arguments {extra}; configure the service with environment variables "
                 "(MODEL_DIR, PORT, BATCHING, MAX_BATCH, ...; see phase3_production/serving/config.py)")
    uvicorn.run("phase3_production.serving.app:create_app", factory=True,
                host=os.environ.get("HOST", "0.0.0.0"), port=int(os.environ.get("PORT", "8000")),
                timeout_graceful_shutdown=20, access_log=False, log_level=os.environ.get("LOG_LEVEL", "info"))


if __name__ == "__main__":
    main(sys.argv[1:])
