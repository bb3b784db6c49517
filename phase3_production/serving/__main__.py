"""The container's command: ``python -m phase3_production.serving [serve]``.

Reads ``HOST`` (default 0.0.0.0) and the port (``PORT``, default 8000; see
:func:`~phase3_production.serving.cloud.listen_port` for SageMaker's and
Vertex AI's), builds the app with :func:`~phase3_production.serving.app.create_app`
and runs it under uvicorn with the limits that bound what one client can
hold (:func:`server_options`).  SageMaker starts a container as
``docker run IMAGE serve``: the ``serve`` argument means "listen on 8080, as
SageMaker expects", so the same image runs there, on Vertex AI, on Kubernetes
and on a laptop (``serving/cloud.py`` has both providers' contracts).

SIGTERM makes uvicorn stop accepting connections, finish the requests in
flight (up to ``GRACEFUL_SHUTDOWN_S``, 20 s), then run the app's shutdown,
which drains the batcher.  :class:`NotifyingServer` also tells the app the
moment the signal arrives, so that a request whose body is still trickling
in ends at once with a 503 instead of holding the shutdown for the whole
grace period (and then being cancelled with a traceback).
"""

from __future__ import annotations

import os
import sys

import uvicorn

from phase3_production.serving.cloud import listen_port
from phase3_production.serving.config import Settings

STARTUP_FAILURE = 3   # uvicorn's own exit status when the app does not start


def server_options(settings: Settings) -> dict:
    """uvicorn's limits, from the settings; what they cannot bound is said in ``serving/limits.py``.

    * ``limit_concurrency``: connections plus requests in progress; beyond it
      uvicorn answers 503 itself, before the app (plain text, not our JSON);
    * ``timeout_keep_alive``: an idle keep-alive connection is closed after it;
    * ``h11_max_incomplete_event_size``: headers still incomplete after this
      many bytes are refused with a 400 (h11 checks while it waits for the
      end of the headers, so a complete block that arrives in one read may be
      larger); h11, the pure-Python HTTP parser, is chosen explicitly, as
      this limit is its own;
    * ``timeout_graceful_shutdown``: how long SIGTERM waits for requests in
      flight before cancelling them.

    There is no deadline for receiving the headers in uvicorn: that one
    belongs to the proxy or ingress in front of the service.
    """
    return {"http": "h11", "limit_concurrency": settings.limit_concurrency,
            "timeout_keep_alive": settings.keep_alive_s,
            "h11_max_incomplete_event_size": settings.max_header_bytes,
            "timeout_graceful_shutdown": settings.graceful_shutdown_s}


class NotifyingServer(uvicorn.Server):
    """uvicorn's server, which also calls ``on_exit()`` when SIGTERM or Ctrl-C arrives.

    uvicorn's ``handle_exit`` runs as the signal handler; ``on_exit`` must be
    safe there (``ShutdownNotice.set`` only schedules a call on the loop).
    """

    def __init__(self, config: uvicorn.Config, on_exit):
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        self.on_exit()
        super().handle_exit(sig, frame)


def main(argv: list[str]) -> None:
    extra = [a for a in argv if a != "serve"]
    if extra:
        sys.exit(f"unexpected arguments {extra}; configure the service with environment variables "
                 "(MODEL_DIR, PORT, BATCHING, MAX_BATCH, ...; see phase3_production/serving/config.py)")
    try:
        settings = Settings.from_env()
        port = listen_port(argv, os.environ)
    except ValueError as exc:          # settings that cannot work: say which, start nothing
        sys.exit(str(exc))
    from phase3_production.serving.app import create_app

    try:
        app = create_app(settings)
    except ValueError as exc:          # routes that cannot work together (serving/cloud.py)
        sys.exit(str(exc))
    # bandit B104: a container must listen on every interface; HOST narrows it
    config = uvicorn.Config(app, host=os.environ.get("HOST", "0.0.0.0"), port=port,  # nosec B104
                            access_log=False, log_level=os.environ.get("LOG_LEVEL", "info"),
                            **server_options(settings))
    server = NotifyingServer(config, on_exit=app.state.service.stopping.set)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:             # the start-up failed (a model that does not verify): the log says why
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main(sys.argv[1:])
