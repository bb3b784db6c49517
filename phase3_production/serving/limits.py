"""The outermost layer: a request id for everything, and the body-size limit counted on the stream.

Written as a plain ASGI middleware (a function of ``scope, receive, send``),
so it costs a few microseconds and sees the raw byte stream:

* a **request id**: the client's ``X-Request-ID`` if it is short and plain,
  otherwise a fresh one; echoed in the response header and in every error;
* the **body limit**: a ``Content-Length`` over the limit is refused before a
  byte is read; a chunked upload (no length announced) is counted as it
  arrives and refused the moment it crosses the limit.  Either way the answer
  is a 413 JSON error and the server reads no further;
* **metrics** per route template (``/v1/predict``, not one series per URL):
  requests by status, latency, requests in flight.
"""

from __future__ import annotations

import re
import time
import uuid

from phase3_production.serving.errors import error_body

SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
BODY_METHODS = {"POST", "PUT", "PATCH"}


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if SAFE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class RequestLimits:
    def __init__(self, app, *, max_body_bytes: int, metrics=None, known_paths: frozenset[str] = frozenset()):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.known_paths = known_paths   # label requests answered before routing (413) by their path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = request_id_from(scope.get("headers", []))
        scope.setdefault("state", {})["request_id"] = request_id
        status_seen = {"status": 500}
        start = time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status_seen["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            if scope["method"] in BODY_METHODS:
                body = await self._read_body(scope, receive)
                if body is None:           # over the limit: answered already
                    await self._too_large(send_with_id, request_id)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_with_id)
        finally:
            if self.metrics is not None:
                self.metrics.in_flight.dec()
                route = scope.get("route")
                path = getattr(route, "path", None) or (
                    scope["path"] if scope["path"] in self.known_paths else "unmatched")
                self.metrics.observe_request(path, status_seen["status"], time.perf_counter() - start)

    async def _read_body(self, scope, receive) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    pass            # the server rejects malformed lengths itself
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _too_large(self, send, request_id: str) -> None:
        body = error_body(413, "body_too_large",
                          f"request body is over the {self.max_body_bytes:,}-byte limit", request_id)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive):
    """A ``receive`` that hands the app the body already read, then defers to the real one."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
