"""The outermost layer: a request id for everything, the body read under limits, and the last-resort 500.

Written as a plain ASGI middleware (a function of ``scope, receive, send``),
so it costs a few microseconds and sees the raw byte stream:

* a **request id**: the client's ``X-Request-ID`` if it is short and plain,
  otherwise a fresh one; echoed in the response header and in every error;
* the **body limit**: a ``Content-Length`` over the limit is refused before a
  byte is read; a chunked upload (no length announced) is counted as it
  arrives and refused the moment it crosses the limit.  Either way the
  answer is a 413 JSON error, sent with a **staged close** (below);
* a **body deadline**: the whole body must arrive within ``body_timeout_s``,
  or the answer is 408 and the connection is closed: a client trickling a
  byte a minute cannot hold a connection and its memory for ever;
* **shutdown**: when the server starts to stop (SIGTERM), a body still
  being read ends at once with 503 and the connection closes, so one slow
  uploader cannot hold the whole shutdown for its grace period;
* a **client that leaves**: once the body is in, the connection is watched
  for the client hanging up; if it does before the answer is sent, the route
  is cancelled (its images leave the batcher's queue unrun) and the request
  is counted with status 499, nginx's "client closed request";
* the **last resort**: an exception no handler answered becomes one log
  record with its traceback and a 500 JSON error that still carries the
  request id, in the body and in ``X-Request-ID``;
* **metrics** per route template (``/v1/predict``, not one series per URL):
  requests by status, latency, requests in flight.

The staged close (RFC 9112, section 9.6; nginx calls it a lingering close).
Many clients, Python's ``http.client`` among them, send the whole body before
reading any reply.  A server that answers 413 and closes at once has unread
bytes in its socket, so its kernel resets the connection, and the reset
destroys the 413 before the client reads it: the client sees "connection
reset".  So after a 413 the server keeps reading, and dropping, what the
client still sends, up to ``linger_bytes`` or ``linger_s``, and only then
ends the response and closes.  A client that said ``Expect: 100-continue``
is waiting for permission to send and sends nothing: no lingering needed.

What uvicorn cannot bound, the deployment must: there is no deadline for the
request line and headers in uvicorn (h11), so a client sending headers a byte
at a time holds its connection until ``LIMIT_CONCURRENCY`` is reached.  The
answer is in front of the service: a proxy or ingress with a header timeout
(nginx ``client_header_timeout``, Envoy ``request_headers_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from dataclasses import dataclass

from phase3_production.serving.errors import error_body

log = logging.getLogger("ml60.serve")
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
BODY_METHODS = {"POST", "PUT", "PATCH"}
CLIENT_CLOSED_REQUEST = 499   # nginx's status for a client that hung up before its answer; never sent


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if SAFE_REQUEST_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def header(scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", []) if key == name), None)


class ShutdownNotice:
    """Set once, when the server starts to stop; safe to set from a signal handler or any thread.

    ``bind(loop)`` at start-up (the app's lifespan); ``set()`` hands the news
    to that loop with ``call_soon_threadsafe``, the one asyncio call that is
    safe from outside it.  Before ``bind`` there is nothing in flight to tell.
    """

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.event = loop, asyncio.Event()

    def set(self) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.event.set)

    def watch(self) -> asyncio.Future:
        """A future that completes when the notice is set (never, on a loop it was not bound to)."""
        loop = asyncio.get_running_loop()
        if self.event is None or loop is not self.loop:
            return loop.create_future()
        return asyncio.ensure_future(self.event.wait())


@dataclass
class Body:
    """How reading a request body ended: ``complete`` with its bytes, or why not."""
    outcome: str               # complete | too_large | timeout | stopping | disconnected
    data: bytes = b""
    reading_started: bool = False
    more_to_come: bool = True  # the client has more of the body to send


class RequestLimits:
    """ASGI middleware around the whole app: request id, body limits and deadline, the last-resort 500, metrics."""

    def __init__(self, app, *, max_body_bytes: int, body_timeout_s: float = 15.0, linger_s: float = 2.0,
                 linger_bytes: int = 64 * 1024 * 1024, stopping: ShutdownNotice | None = None, metrics=None,
                 known_paths: frozenset[str] = frozenset()):
        self.app, self.max_body_bytes, self.metrics = app, max_body_bytes, metrics
        self.body_timeout_s, self.linger_s, self.linger_bytes = body_timeout_s, linger_s, linger_bytes
        self.stopping = stopping or ShutdownNotice()
        self.known_paths = known_paths   # label requests answered before routing (413) by their path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = request_id_from(scope.get("headers", []))
        scope.setdefault("state", {})["request_id"] = request_id
        response = {"status": 500, "started": False}
        start = time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                response.update(status=message["status"], started=True)
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            if scope["method"] in BODY_METHODS:
                body = await self.read_body(scope, receive)
                if body.outcome != "complete":
                    await self.refuse(body, scope, receive, send_with_id, request_id)
                    return
                if await self.run_unless_client_leaves(scope, _replay(body.data, receive), receive, send_with_id):
                    response["status"] = CLIENT_CLOSED_REQUEST
                return
            await self.app(scope, receive, send_with_id)
        except Exception:   # noqa: BLE001 - the last resort: one log record, a JSON 500, the request id
            log.exception("request %s failed", request_id)
            if not response["started"]:
                await _send_error(send_with_id, 500, "internal_error", "the server failed; quote the request id",
                                  request_id)
        finally:
            if self.metrics is not None:
                self.metrics.in_flight.dec()
                route = scope.get("route")
                path = getattr(route, "path", None) or (
                    scope["path"] if scope["path"] in self.known_paths else "unmatched")
                self.metrics.observe_request(path, response["status"], time.perf_counter() - start)

    async def run_unless_client_leaves(self, scope, replayed, receive, send) -> bool:
        """Run the app; if the client hangs up first, cancel it.  True when the client left.

        The body has been read, so the next message the server can give is
        ``http.disconnect``: when the client closes its connection (and, in
        uvicorn, when the response is complete).  Waiting for it beside the app
        turns a client that gave up into a cancelled route, so the work queued
        for it (the batcher's rows) is dropped rather than done for nobody.
        """
        answering = asyncio.ensure_future(self.app(scope, replayed, send))
        leaving = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait({answering, leaving}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:      # the server itself cancelled us: take the route down too
            answering.cancel()
            raise
        finally:
            leaving.cancel()
        if not answering.done():
            answering.cancel()
            try:
                await answering
            except asyncio.CancelledError:
                pass
            return True
        answering.result()                  # re-raise what the route raised (the last resort answers it)
        return False

    async def read_body(self, scope, receive) -> Body:
        """The whole body, or why not: over the limit, past the deadline, the server stopping, the client gone."""
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return Body("too_large")      # refused before a byte is read (a malformed length: the server's job)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        stopping = self.stopping.watch()
        chunks, size = [], 0
        try:
            while True:
                message = await self._next_message(receive, stopping, deadline - loop.time())
                if isinstance(message, str):
                    return Body(message, reading_started=True)
                if message["type"] == "http.disconnect":
                    return Body("disconnected", reading_started=True)
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body_bytes:
                    return Body("too_large", reading_started=True, more_to_come=message.get("more_body", False))
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return Body("complete", b"".join(chunks), reading_started=True)
        finally:
            stopping.cancel()

    @staticmethod
    async def _next_message(receive, stopping: asyncio.Future, seconds_left: float):
        """The next ASGI message, or ``"timeout"`` / ``"stopping"`` if the deadline or a shutdown comes first.

        Bytes already received win over a shutdown: a request whose body is
        in the server's buffer is served (that is the graceful drain); only a
        read that would have to wait for the client is ended.
        """
        if seconds_left <= 0:
            return "timeout"
        arriving = asyncio.ensure_future(receive())     # runs before wait() looks: a buffered body is ready
        done, _ = await asyncio.wait({arriving, stopping}, timeout=seconds_left,
                                     return_when=asyncio.FIRST_COMPLETED)
        if arriving in done:
            return arriving.result()
        arriving.cancel()
        return "stopping" if stopping in done else "timeout"

    async def refuse(self, body: Body, scope, receive, send, request_id: str) -> None:
        """Answer a body that did not arrive complete; the connection closes after each of these answers."""
        if body.outcome == "disconnected":
            return                        # nobody is listening
        if body.outcome == "timeout":
            await _send_error(send, 408, "body_timeout",
                              f"the request body did not arrive within {self.body_timeout_s:g} s", request_id)
        elif body.outcome == "stopping":
            await _send_error(send, 503, "shutting_down", "the server is shutting down; retry on another "
                              "connection", request_id, [(b"retry-after", b"1")])
        else:
            # A client that said "Expect: 100-continue" waits for permission and sends nothing: no lingering.
            expecting = (header(scope, b"expect") or b"").lower() == b"100-continue" and not body.reading_started
            lingering = body.more_to_come and not expecting
            await _send_error(send, 413, "body_too_large",
                              f"request body is over the {self.max_body_bytes:,}-byte limit", request_id,
                              more_body=lingering)
            if lingering:
                await self.linger(receive)
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def linger(self, receive) -> int:
        """Read and drop what the client is still sending, up to ``linger_bytes`` or ``linger_s``; bytes dropped."""
        loop = asyncio.get_running_loop()
        deadline, dropped = loop.time() + self.linger_s, 0
        while dropped <= self.linger_bytes:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                break
            if message["type"] == "http.disconnect":
                break
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        return dropped


async def _send_error(send, status: int, code: str, message: str, request_id: str,
                      headers: list[tuple[bytes, bytes]] | None = None, more_body: bool = False) -> None:
    """One JSON error; ``Connection: close`` unless it is the route's ordinary error (500 keeps the connection)."""
    body = error_body(status, code, message, request_id)
    closing = [] if status == 500 else [(b"connection", b"close")]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *closing, *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": more_body})


async def _disconnect(receive) -> None:
    """Return when ``receive`` says the client is gone; anything else it hands out is dropped."""
    while (await receive())["type"] != "http.disconnect":
        pass


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
