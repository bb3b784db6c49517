"""The hostile uploads every version of the service must survive, each with the answer it must give.

Used by p3-serve's self-test (against the real uvicorn process) and by the
tests.  Each case is a request and the status and error code it must get.
The service must answer every one with a JSON error carrying a request id,
and still be healthy afterwards.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

from PIL import Image

from phase3_production.http_client import multipart, request


@dataclass
class Case:
    name: str
    path: str
    body: bytes | None
    headers: dict = field(default_factory=dict)
    status: int = 400
    code: str = ""
    chunked: bool = False


def _image(fmt: str, size=(64, 48), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (90, 160, 30) if mode == "RGB" else 100).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header declaring ``width x height`` pixels, followed by almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def cases(max_body_bytes: int, max_batch_files: int, max_pixels: int) -> list[Case]:
    png, jpeg = _image("PNG"), _image("JPEG", size=(256, 256))
    side = int(max_pixels ** 0.5) + 16
    too_many_pixels = _image("PNG", size=(side, side), mode="L")
    raw = {"content-type": "image/png"}
    body, ctype = multipart([("other", "a.png", png, "image/png")])
    many, many_type = multipart([("files", f"{i}.png", png, "image/png") for i in range(max_batch_files + 1)])
    gif_body, gif_type = multipart([("file", "a.gif", _image("GIF"), "image/gif")])
    return [
        Case("empty body", "/v1/predict", b"", raw, 400, "empty_body"),
        Case("missing file field", "/v1/predict", body, {"content-type": ctype}, 400, "missing_file"),
        Case("wrong content type", "/v1/predict", b'{"image": "cat"}', {"content-type": "application/json"},
             415, "unsupported_media_type"),
        Case("bytes that are not an image", "/v1/predict", b"hello, this is text, not pixels" * 4, raw,
             400, "not_an_image"),
        Case("truncated JPEG", "/v1/predict", jpeg[: len(jpeg) * 3 // 5], {"content-type": "image/jpeg"},
             400, "corrupt_image"),
        Case("GIF (format outside the allowed list)", "/v1/predict", gif_body, {"content-type": gif_type},
             415, "unsupported_format"),
        Case("TIFF with a PNG content type", "/v1/predict", _image("TIFF"), raw, 415, "unsupported_format"),
        Case("body over the limit", "/v1/predict", b"\x89PNG\r\n\x1a\n" + b"\0" * (max_body_bytes + 1), raw,
             413, "body_too_large"),
        Case("chunked body over the limit (no Content-Length)", "/v1/predict",
             b"\x89PNG\r\n\x1a\n" + b"\0" * (max_body_bytes + 1), raw, 413, "body_too_large", chunked=True),
        Case(f"image over the pixel limit ({side}x{side})", "/v1/predict", too_many_pixels, raw, 413,
             "too_many_pixels"),
        Case("decompression bomb (PNG declaring 50,000 x 50,000)", "/v1/predict", png_bomb(), raw, 413,
             "too_many_pixels"),
        Case(f"{max_batch_files + 1} images in one batch", "/v1/predict/batch", many, {"content-type": many_type},
             400, "too_many_files"),
        Case("batch sent as raw bytes", "/v1/predict/batch", png, raw, 415, "unsupported_media_type"),
        Case("multipart with a broken body", "/v1/predict", b"--xyz\r\nContent-Disposition: garbage\r\n\r\n",
             {"content-type": "multipart/form-data; boundary=xyz"}, 400, ""),
    ]


def send(port: int, case: Case, timeout: float = 30.0):
    """Send one case; chunked cases stream the body without a Content-Length."""
    return request(port, "POST", case.path, case.body, case.headers, timeout=timeout, chunked=case.chunked)
