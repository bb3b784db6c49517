"""p3-serve against the real uvicorn process on loopback: a bomb does not freeze the loop, bodies have a
deadline, Python's http.client gets its 413, and a slow uploader does not hold a shutdown."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from phase3_production import bad_inputs
from phase3_production.http_client import free_port, request, wait_until_ready
from phase3_production.p3_serve import start_server, stop_server

pytestmark = getattr(pytest.mark, "p3-serve")
BOMB_PIXELS = 16_777_216          # the 65 KB PNG of 1 x 16,777,216 pixels


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """One service process for the module: a 1 s body deadline, and a pixel limit the bomb fits under."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    port = free_port()
    process = start_server(model_dir, port, {"BODY_TIMEOUT_S": "1", "MAX_PIXELS": str(BOMB_PIXELS)}, log)
    try:
        wait_until_ready(port, process=process)
        yield port
    finally:
        stop_server(process)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a socket timeout fails the test)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def decode_bytes_reserved(metrics) -> float:
    lines = metrics.body.decode().splitlines()
    return next((float(line.split()[1]) for line in lines if line.startswith("ml60_decode_bytes_reserved ")), 0.0)


def test_healthz_answers_while_a_bomb_decodes(server):
    """Every request sent while the bomb decodes (polls of /metrics, then /healthz) is answered at once."""
    bomb = bad_inputs.small_bombs(BOMB_PIXELS)[f"1 x {BOMB_PIXELS:,} PNG strip"]
    waits = []

    def probe(path: str):
        asked = time.perf_counter()
        reply = request(server, "GET", path, timeout=30)
        waits.append(time.perf_counter() - asked)
        return reply, time.perf_counter()

    def send_bomb():
        reply = request(server, "POST", "/v1/predict", bomb, {"content-type": "image/png"}, timeout=60)
        return reply, time.perf_counter()

    with ThreadPoolExecutor(1) as pool:
        start = time.perf_counter()
        bombing = pool.submit(send_bomb)
        while not bombing.done() and time.perf_counter() - start < 5:   # until the decode shows in the metrics
            if decode_bytes_reserved(probe("/metrics")[0]) > 0:
                break
            time.sleep(0.02)
        health, health_answered = probe("/healthz")
        reply, bomb_done = bombing.result()
    assert health.status == 200 and reply.status == 200, reply.body[:200]
    assert max(waits) < (bomb_done - start) / 3, (
        f"a request waited {max(waits):.2f} s while a {bomb_done - start:.2f} s decode ran: the loop was blocked")
    assert health_answered < bomb_done, "/healthz was answered only after the bomb's decode had finished"


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                     b"\x89PNG\r\n\x1a\n")
        start = time.perf_counter()
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_timeout"
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("chunked", [False, True], ids=["Content-Length", "chunked"])
def test_http_client_reads_the_413_of_a_12_mb_upload(server, chunked):
    """http.client sends the whole body before it reads: the server must drain it before closing."""
    body = b"\x89PNG\r\n\x1a\n" + bytes(12 * 1024 * 1024)
    connection = http.client.HTTPConnection("127.0.0.1", server, timeout=30)
    try:
        if chunked:
            pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
            connection.request("POST", "/v1/predict", body=iter(pieces), headers={"content-type": "image/png"},
                               encode_chunked=True)
        else:
            connection.request("POST", "/v1/predict", body=body, headers={"content-type": "image/png"})
        response = connection.getresponse()
        error = json.loads(response.read())["error"]
    finally:
        connection.close()
    assert response.status == 413 and error["code"] == "body_too_large"
    assert response.getheader("x-request-id") == error["request_id"]


def test_a_client_that_expects_100_continue_gets_the_413_without_sending_the_body(server):
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 12582912\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer, answer[:200]


def test_shutdown_ends_a_slow_upload_with_a_503_not_a_traceback(model_dir, tmp_path):
    log = tmp_path / "server.log"
    port = free_port()
    process = start_server(model_dir, port, log_path=log)     # the default deadlines: 15 s body, 20 s grace
    try:
        wait_until_ready(port, process=process)
        with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 100000\r\n\r\n\x89PNG\r\n\x1a\n")
            time.sleep(0.3)                                   # the server is reading the body
            start = time.perf_counter()
            process.send_signal(signal.SIGTERM)
            answer = read_until_closed(sock)
        code = process.wait(timeout=8)
        stopped_in = time.perf_counter() - start
    finally:
        stop_server(process)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "shutting_down"
    assert stopped_in < 5 and code in (0, -signal.SIGTERM)
    text = log.read_text()
    assert "Traceback" not in text and "Application shutdown complete" in text, text[-2000:]
