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


def png_of_rows(width: int, height: int, row: bytes, *, bit_depth: int = 8, colour_type: int = 0) -> bytes:
    """A valid PNG of ``height`` identical rows (``row`` is one row's raw bytes), built without the pixels in memory.

    Identical rows compress about a thousandfold, which is what makes a
    small file a bomb: the decoder must still expand every one of them.
    ``colour_type``: 0 grey, 2 RGB, 4 grey + alpha, 6 RGBA (the PNG spec's numbers).
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    line = b"\x00" + row                                       # filter byte 0 ("none"), then the row
    per_block = max(1, (1 << 20) // len(line))                 # about 1 MB of rows compressed at a time
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", repeated_deflate(line * per_block, height // per_block, line * (height % per_block)))
            + chunk(b"IEND", b""))


def repeated_deflate(block: bytes, times: int, tail: bytes) -> bytes:
    """``zlib.compress(block * times + tail)``, compressing ``block`` only once.

    After a full flush a deflate stream refers to nothing before it, so
    compressing the same block again gives the same bytes: compress it
    twice, repeat the second copy.  zlib's trailer is the Adler-32 checksum
    of all the data, computed here block by block.
    """
    packer = zlib.compressobj(9)
    first = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(block) + packer.flush(zlib.Z_FULL_FLUSH)
    body = (first + again * (times - 1)) if times else first[:2]   # first[:2]: the zlib header alone
    checksum = 1
    for _ in range(times):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(tail, checksum)
    finisher = zlib.compressobj(9, zlib.DEFLATED, -15)          # a raw deflate stream: no header, no trailer
    return body + finisher.compress(tail) + finisher.flush() + struct.pack(">I", checksum)


def small_bombs(max_pixels: int) -> dict[str, bytes]:
    """Small files that decode to much more, each within ``max_pixels``: what the decode pool must absorb.

    * a strip, 1 pixel wide: Pillow pays per row, so it is the slowest to decode;
    * a flat square greyscale PNG: a few kilobytes for ``max_pixels`` bytes;
    * a flat square 16-bit RGBA PNG: the dearest PNG per pixel (8 bytes of source, 4 decoded, 4 more to filter).
    """
    side = int(max_pixels ** 0.5)
    return {f"1 x {max_pixels:,} PNG strip": png_of_rows(1, max_pixels, b"\x80"),
            f"flat {side}x{side} greyscale PNG": png_of_rows(side, side, b"\x80" * side),
            f"flat {side}x{side} 16-bit RGBA PNG": png_of_rows(side, side, b"\x80\x00" * 4 * side, bit_depth=16,
                                                               colour_type=6)}


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
        Case("a trailing slash with a foreign Host (no redirect that echoes it)", "/v1/predict/", png,
             {**raw, "host": "evil.example"}, 404, "not_found"),
    ]


def send(port: int, case: Case, timeout: float = 30.0):
    """Send one case; chunked cases stream the body without a Content-Length."""
    return request(port, "POST", case.path, case.body, case.headers, timeout=timeout, chunked=case.chunked)
