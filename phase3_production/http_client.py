"""A tiny HTTP client on the standard library: what the self-test, the tests and the load test send.

No client library is needed to talk to the service, and writing a multipart
body by hand shows what ``curl -F file=@cat.png`` actually sends::

    --BOUNDARY\\r\\n
    Content-Disposition: form-data; name="file"; filename="cat.png"\\r\\n
    Content-Type: image/png\\r\\n
    \\r\\n
    <the PNG bytes>\\r\\n
    --BOUNDARY--\\r\\n
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import time
import uuid
from dataclasses import dataclass

import numpy as np


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def multipart(files: list[tuple[str, str, bytes, str]]) -> tuple[bytes, str]:
    """Encode ``[(field, filename, data, content_type), ...]``; return (body, Content-Type header)."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for field, filename, data, content_type in files:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
                  f"Content-Type: {content_type}\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, *,
            host: str = "127.0.0.1", timeout: float = 30.0, chunked: bool = False) -> Reply:
    """One request on a fresh connection. ``chunked``: stream the body without a Content-Length."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def reply() -> Reply:
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())

    try:
        if chunked:
            pieces = [body[i:i + 65536] for i in range(0, len(body or b""), 65536)]
            connection.request(method, path, body=iter(pieces), headers=headers or {}, encode_chunked=True)
        else:
            connection.request(method, path, body=body, headers=headers or {})
        return reply()
    except (BrokenPipeError, ConnectionResetError):
        # The server may answer (413, say) and close while we are still sending; read what it said.
        return reply()
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(port: int, timeout_s: float = 60.0, process=None, path: str = "/readyz") -> float:
    """Poll ``path`` (readiness: ``/readyz``, or a platform's own health route) until it answers 200; return
    the seconds waited. Fails if the server process exits."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        try:
            if request(port, "GET", path, timeout=2).status == 200:
                return time.perf_counter() - start
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the server on port {port} was not ready within {timeout_s:.0f} s")


def png_bytes(image_chw: np.ndarray) -> bytes:
    """A uint8 (C, H, W) image as PNG bytes (lossless: the server sees exactly these pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_chw.transpose(1, 2, 0))).save(buffer, "PNG")
    return buffer.getvalue()
