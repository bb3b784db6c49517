"""p3-serve's outermost layer, on a bare ASGI scope: how a body read ends (complete, over the limit, too slow,
the server stopping), and what each ending answers. Milliseconds each; the real process is in
test_p3_serve_process.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from phase3_production.serving.limits import RequestLimits, ShutdownNotice

pytestmark = getattr(pytest.mark, "p3-serve")


def body_of(*chunks: bytes, then_wait: bool = False):
    """An ASGI ``receive`` that hands out ``chunks``, then (``then_wait``) never sends the rest."""
    queue = list(chunks)

    async def receive():
        if queue:
            chunk = queue.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue) or then_wait}
        await asyncio.sleep(3600)

    return receive


async def app_echoing_the_body(scope, receive, send):
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


def call(limits: RequestLimits, receive, headers=()) -> list[dict]:
    """Run one POST through ``limits``; the messages it sent."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/predict", "headers": list(headers)}
    asyncio.run(asyncio.wait_for(limits(scope, receive, send), 5))
    return sent


def answer(sent: list[dict]) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of the messages a middleware sent."""
    headers = dict(sent[0]["headers"])
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], headers, json.loads(body) if body.startswith(b"{") else body


def test_a_complete_body_reaches_the_app_and_a_stalled_one_gets_408():
    limits = RequestLimits(app_echoing_the_body, max_body_bytes=100, body_timeout_s=0.05)
    status, headers, body = answer(call(limits, body_of(b"ab", b"cd")))
    assert status == 200 and body == b"abcd" and b"x-request-id" in headers
    status, headers, error = answer(call(limits, body_of(b"ab", then_wait=True)))
    assert status == 408 and error["error"]["code"] == "body_timeout" and headers[b"connection"] == b"close"


def test_a_shutdown_ends_only_the_reads_that_would_have_to_wait():
    async def scenario():
        notice = ShutdownNotice()
        notice.bind(asyncio.get_running_loop())
        notice.set()
        await asyncio.sleep(0)                       # set() hands the news to the loop
        limits = RequestLimits(app_echoing_the_body, max_body_bytes=100, stopping=notice)
        buffered = await limits.read_body({"headers": []}, body_of(b"all of it"))
        trickling = await limits.read_body({"headers": []}, body_of(b"part", then_wait=True))
        return buffered, trickling

    buffered, trickling = asyncio.run(scenario())
    assert buffered.outcome == "complete" and buffered.data == b"all of it"   # the drain serves it
    assert trickling.outcome == "stopping"


def test_a_413_drains_what_the_client_still_sends_then_ends_the_response():
    limits = RequestLimits(app_echoing_the_body, max_body_bytes=10, linger_s=1.0)
    sent = call(limits, body_of(b"x" * 8, b"x" * 8, b"x" * 8, b"x" * 8))      # over the limit at the 2nd chunk
    status, headers, error = answer(sent)
    assert status == 413 and error["error"]["code"] == "body_too_large" and headers[b"connection"] == b"close"
    assert sent[1]["more_body"] is True and sent[-1] == {"type": "http.response.body", "body": b"",
                                                         "more_body": False}
    expecting = call(limits, body_of(), [(b"content-length", b"99"), (b"expect", b"100-continue")])
    assert answer(expecting)[0] == 413 and expecting[-1]["more_body"] is False   # nothing to drain: it waits


def test_an_exception_no_handler_answered_is_a_500_with_the_request_id():
    async def broken(scope, receive, send):
        raise RuntimeError("a bug")

    status, headers, error = answer(call(RequestLimits(broken, max_body_bytes=100), body_of(b"{}"),
                                         [(b"x-request-id", b"abc-1")]))
    assert status == 500 and headers[b"x-request-id"] == b"abc-1" and error["error"]["request_id"] == "abc-1"


def test_a_client_that_hangs_up_cancels_its_route_and_is_counted_as_499():
    """The body is in, the route is still working, the client leaves: the route is cancelled, nothing is sent."""
    route = {"cancelled": False}

    async def slow_route(scope, receive, send):
        await receive()                   # the body
        try:
            await asyncio.sleep(3600)     # waiting on the batcher, say
        except asyncio.CancelledError:
            route["cancelled"] = True
            raise

    messages = [{"type": "http.request", "body": b"img", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0.05)         # the client gives up after 50 ms
        return {"type": "http.disconnect"}

    class Metrics:
        def __init__(self):
            from unittest.mock import MagicMock
            self.in_flight, self.seen = MagicMock(), []

        def observe_request(self, path, status, seconds):
            self.seen.append(status)

    metrics = Metrics()
    sent = call(RequestLimits(slow_route, max_body_bytes=100, metrics=metrics), receive)
    assert route["cancelled"] and sent == [] and metrics.seen == [499]
