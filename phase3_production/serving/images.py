"""Untrusted bytes in, a normalised float32 tensor out - or a 4xx error that says what was wrong.

Every upload is hostile until proven otherwise:

1. **Sniff the format from the first bytes**, not from the file name or the
   Content-Type the client claims.  Only PNG, JPEG, WebP and BMP are opened,
   and Pillow is told to try only the detected one, so no other decoder
   (some of which call out to external programs) ever sees the bytes.
2. **Check the pixel count from the header before decoding.**  A 40 KB PNG
   can declare 50,000 x 50,000 pixels and expand to 7.5 GB: a decompression
   bomb.  Opening an image reads only its header; ``load()`` decodes.
3. **Price the decode from the header** (:func:`decode_cost`): pixels times
   the bytes each pixel will occupy, so that the service can admit it into a
   memory budget shared by the decodes in flight (``serving/decoding.py``)
   before a byte of pixel data is expanded.  A small file that decodes to
   64 MB is a bomb too, even under the pixel limit.
4. **Decode fully, inside a try.**  A truncated JPEG fails here, as a 400.
5. **Shrink first, convert after** (:func:`prepare`): a big image is reduced
   by whole factors (a box filter, cheap) before any mode conversion, so a
   conversion never copies millions of pixels; EXIF orientation is applied;
   16-bit greyscale is scaled to 8 bits (not clipped); grayscale, palette and
   RGBA (alpha composited on black, as training images had no alpha) all
   become RGB.
6. **Resize** to the model's input with the same antialiased filter for every
   image, then scale to 0..1 and apply the training mean and std.

Nothing here runs on the event loop: the service calls it from a small
thread pool (Pillow releases the GIL while it decodes and resizes).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

SIGNATURES = (  # (format, test on the first bytes)
    ("PNG", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
    ("JPEG", lambda b: b.startswith(b"\xff\xd8\xff")),
    ("WEBP", lambda b: len(b) >= 12 and b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("BMP", lambda b: b.startswith(b"BM")),
    ("GIF", lambda b: b.startswith((b"GIF87a", b"GIF89a"))),
    ("TIFF", lambda b: b.startswith((b"II*\x00", b"MM\x00*"))),
    ("ICO", lambda b: b.startswith(b"\x00\x00\x01\x00")),
    ("PDF", lambda b: b.startswith(b"%PDF")),
)


class ImageRejected(Exception):
    """An upload the service will not process; ``status`` and ``code`` go into the JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def sniff_format(data: bytes) -> str | None:
    return next((name for name, test in SIGNATURES if test(data[:16])), None)


def open_checked(data: bytes, *, allowed=("PNG", "JPEG", "WEBP", "BMP"), max_pixels: int = 4096 * 4096,
                 max_bytes: int = 4 * 1024 * 1024) -> Image.Image:
    """Open and fully decode ``data`` as one of the ``allowed`` formats, within the limits; else refuse it.

    Each refusal is an :class:`ImageRejected` whose status and code the route
    sends back as JSON (the client branches on the code), checked in this order,
    cheapest first:

    ===========================================  ======  ====================
    the upload                                   status  code
    ===========================================  ======  ====================
    no bytes at all                              400     ``empty_image``
    more than ``max_bytes`` bytes                413     ``image_too_large``
    no known signature (:func:`sniff_format`)    400     ``not_an_image``
    a known format outside ``allowed``           415     ``unsupported_format``
    a header Pillow cannot read                  400     ``corrupt_image``
    width x height over ``max_pixels``           413     ``too_many_pixels``
    pixel data that does not decode              400     ``corrupt_image``
    ===========================================  ======  ====================

    The pixel count comes from the header (:func:`read_header` reads nothing
    else), so a decompression bomb is refused before a byte of it is
    decoded; :func:`decode` then decodes, turning Pillow's errors into a 400.
    Anything else that escapes becomes a 500, the server's fault: a hostile
    upload must never get that far.  Returns the decoded image (any mode).
    """
    # EXERCISE p3-serve.1: refuse a hostile upload with a 4xx
    # hint: cheapest checks first, each failure an ImageRejected from the table; count the header's pixels before decode()
    if not data:
        raise ImageRejected(400, "empty_image", "the uploaded file is empty")
    if len(data) > max_bytes:
        raise ImageRejected(413, "image_too_large", f"image file is {len(data):,} bytes; the limit is {max_bytes:,}")
    kind = sniff_format(data)
    if kind is None:
        raise ImageRejected(400, "not_an_image", "the bytes are not a PNG, JPEG, WebP or BMP image")
    if kind not in allowed:
        raise ImageRejected(415, "unsupported_format",
                            f"{kind} images are not accepted; send one of {', '.join(allowed)}")
    image = read_header(data, kind)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(413, "too_many_pixels",
                            f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")
    decode(image, kind)
    return image
    # END EXERCISE


def read_header(data: bytes, kind: str) -> Image.Image:
    """Open ``data`` as ``kind`` only (no other decoder sees the bytes), reading the header and no pixel."""
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, "too_many_pixels", f"image declares too many pixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected(400, "corrupt_image", f"cannot read the {kind} header: the data is damaged "
                                                  f"({type(exc).__name__})") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(400, "corrupt_image", f"image has no pixels ({width}x{height})")
    return image


def decode(image: Image.Image, kind: str) -> None:
    """Decode the pixels of an image opened by :func:`read_header`; truncated or damaged data is a 400."""
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, "too_many_pixels", f"image declares too many pixels ({exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageRejected(400, "corrupt_image", f"the {kind} data is damaged or truncated: {exc}") from exc


# --------------------------------------------------------------------------- pricing a decode from the header

# Bytes a pixel occupies while one image is decoded and shrunk, by the mode Pillow opens it in: the image
# as Pillow stores it (1 byte for L and P, 2 for 16-bit greyscale, 4 for RGB, RGBA, CMYK: Pillow pads RGB
# to 4), plus the full-size copies :func:`prepare` makes before its reduction (a palette becomes RGB, or
# RGBA when a colour is transparent, priced as "PA"; RGBA is premultiplied for the box filter; 16-bit goes
# through NumPy to be scaled).  A mode not listed is priced as the dearest.  tests/test_p3_serve_decoding.py
# measures real peaks against these prices.
PIPELINE_BYTES = {"1": 2, "L": 1, "P": 5, "PA": 9, "LA": 8, "RGB": 4, "RGBX": 4, "RGBA": 8, "CMYK": 4,
                  "YCbCr": 4, "I;16": 10, "I;16L": 10, "I;16B": 10, "I;16N": 10, "I": 20}
DEAREST_BYTES = 20
# Pillow's WebP plugin decodes through libwebp's animation decoder, which holds two canvases of 4 bytes a
# pixel from the moment the file is opened (and hands Pillow 4 bytes a pixel, alpha or not: see webp_header).
DECODER_BYTES = {"WEBP": 8}
ROW_BYTES = 8                   # Pillow keeps a pointer per row: a 1 x 4,000,000 strip costs 32 MB of pointers
FIXED_BYTES = 2 * 1024 * 1024  # decoder buffers, the zlib window, the small images after the reduction


@dataclass(frozen=True)
class DecodeCost:
    """What decoding one upload will hold in memory, priced from its header before any pixel is decoded."""
    kind: str
    width: int
    height: int
    mode: str
    frames: int
    nbytes: int


def decode_cost(data: bytes, *, allowed=("PNG", "JPEG", "WEBP", "BMP"),
                max_pixels: int = 4096 * 4096) -> DecodeCost | None:
    """Price decoding ``data`` from its header alone; ``None`` when there is nothing to decode.

    ``None`` means :func:`open_checked` refuses the upload before it decodes a
    pixel (no known signature, a format outside ``allowed``, a header that
    does not parse, more than ``max_pixels``), so it needs no memory budget;
    the refusal itself, with its status and code, stays open_checked's.

    The price is pixels x bytes per pixel (:data:`PIPELINE_BYTES`, by the
    mode the header announces: bit depth and channels), plus what the
    decoder itself holds (:data:`DECODER_BYTES`), a pointer per row and a
    fixed allowance for buffers.  Only the first frame of an animated PNG or
    WebP is ever decoded (Pillow decodes a frame when asked for it), so an
    animation costs one canvas, whatever its frame count: ``frames`` is
    reported, not multiplied.  A WebP is priced from its RIFF header
    (:func:`webp_header`), not opened: opening it with Pillow already
    allocates libwebp's canvases.
    """
    kind = sniff_format(data)
    if kind is None or kind not in allowed:
        return None
    if kind == "WEBP":
        header = webp_header(data)
        if header is None:
            return None
        (width, height), mode, frames = header
    else:
        try:
            image = Image.open(io.BytesIO(data), formats=[kind])
        except (Image.DecompressionBombError, UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return None
        (width, height), mode, frames = image.size, image.mode, getattr(image, "n_frames", 1)
        if mode == "P" and "transparency" in image.info:
            mode = "PA"               # it will be expanded to RGBA, not RGB
    if width < 1 or height < 1 or width * height > max_pixels:
        return None
    per_pixel = PIPELINE_BYTES.get(mode, DEAREST_BYTES) + DECODER_BYTES.get(kind, 0)
    nbytes = width * height * per_pixel + height * ROW_BYTES + FIXED_BYTES
    return DecodeCost(kind, width, height, mode, frames, nbytes)


def webp_header(data: bytes) -> tuple[tuple[int, int], str, int] | None:
    """``((width, height), mode, frames)`` of a WebP, read from its RIFF chunks; None if they do not parse.

    A WebP file is ``RIFF <size> WEBP`` then chunks (four-letter name, 32-bit
    little-endian length, data padded to an even length).  The first chunk
    says which kind it is: ``VP8 `` (lossy: the frame header holds 14-bit
    sizes), ``VP8L`` (lossless: sizes minus one, packed in 14 bits each) or
    ``VP8X`` (extended: a 24-bit canvas size minus one, and flags, 0x02 for
    an animation, which has one ``ANMF`` chunk per frame).  The mode is
    always ``RGBA``: libwebp hands every frame over as 4 bytes a pixel, and
    the measured peak of a lossy RGB WebP is that of an RGBA one.
    """
    kind = data[12:16]
    if kind == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return (width & 0x3FFF, height & 0x3FFF), "RGBA", 1
    if kind == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1), "RGBA", 1
    if kind == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        frames = count_webp_chunks(data, b"ANMF") if data[20] & 0x02 else 1
        return (width, height), "RGBA", max(frames, 1)
    return None


def count_webp_chunks(data: bytes, name: bytes) -> int:
    """How many top-level chunks of a WebP are called ``name`` (an animation has one ``ANMF`` per frame)."""
    count, position = 0, 12
    while position + 8 <= len(data):
        size = struct.unpack("<I", data[position + 4:position + 8])[0]
        count += data[position:position + 4] == name
        position += 8 + size + (size & 1)
    return count


# --------------------------------------------------------------------------- from a decoded image to model pixels

REDUCE_MARGIN = 8   # reduce by whole factors while the image stays at least 8x the model input on each side
# The EXIF orientation tag (0x0112) says how the camera was held; what undoes it (as ImageOps.exif_transpose).
EXIF_ORIENTATION = 0x0112
UNDO_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def prepare(image: Image.Image, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A decoded image -> uint8 RGB (H, W, C) at the model's input size: shrink first, convert after.

    1. read the EXIF orientation (the reduction below drops the metadata);
    2. :func:`to_8_bits`: 16-bit greyscale scaled, 1-bit and palette images expanded;
    3. :func:`shrink`: reduce by whole factors (a box filter) while the image
       stays at least ``REDUCE_MARGIN`` times the input, so every later copy is small;
    4. undo the orientation, as ``ImageOps.exif_transpose`` would (on the small image);
    5. :func:`rgb_array`: RGB, resized to the input with one antialiased filter.
    """
    channels, height, width = input_shape
    orientation = exif_orientation(image)
    image = shrink(to_8_bits(image), (width, height))
    if orientation in UNDO_ORIENTATION:
        image = image.transpose(UNDO_ORIENTATION[orientation])
    return rgb_array(image, input_shape)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1-8; 1 = as stored), or 1 when the image has none.

    A damaged EXIF block is treated as no orientation: the pixels decoded
    fine, and metadata is not worth refusing an image for.
    """
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, struct.error, TypeError, KeyError, IndexError):
        return 1
    return value if isinstance(value, int) else 1


def to_8_bits(image: Image.Image) -> Image.Image:
    """Modes the box filter and :func:`to_rgb` handle: 8 bits a channel, no palette.

    16-bit greyscale (``I;16``, or ``I`` holding 0..65535) is *scaled*, the
    top 8 bits of each value kept: Pillow's own ``convert("L")`` clips every
    value above 255 to white, so a dark 16-bit photograph would arrive as a
    white square.  A palette becomes RGB, or RGBA when it has a transparent
    colour (averaging palette indices would mix unrelated colours).
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image)
        return Image.fromarray(np.clip(values >> 8, 0, 255).astype(np.uint8))
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    return image


def shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Reduce by whole factors, each side on its own, while it stays ``REDUCE_MARGIN`` x ``size`` or more.

    ``Image.reduce`` averages each k x k box: exact, cheap, and what
    ``resize(..., reducing_gap=...)`` does first inside Pillow.  A 1 x 4,000,000
    strip becomes 1 x 256 here, before any copy of it is made.
    """
    factors = (max(1, image.width // (REDUCE_MARGIN * size[0])), max(1, image.height // (REDUCE_MARGIN * size[1])))
    return image if factors == (1, 1) else image.reduce(factors)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become black, as in no training image."""
    if image.mode == "RGB":
        return image
    image = to_8_bits(image)
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def rgb_array(image: Image.Image, input_shape: tuple[int, int, int]) -> np.ndarray:
    """Any image -> uint8 RGB array (H, W, C) at the model's input size, as Pillow lays pixels out."""
    channels, height, width = input_shape
    image = to_rgb(image)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    rgb = np.asarray(image)
    if rgb.shape[2] != channels:
        raise ImageRejected(400, "wrong_channels", f"model expects {channels} channels, image has {rgb.shape[2]}")
    return rgb


def to_model_input(rgb: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) pixels -> the float32 (C, H, W) array the model was trained on.

    Training (phase 2) fed the network CIFAR-10 tensors laid out channels
    first, scaled from 0..255 to 0..1, then normalised per channel with the
    training split's mean and std.  The service must do exactly the same to
    an upload, or the model sees inputs it never learned from and answers
    with confidence anyway: nothing crashes, accuracy just falls.

    * Pillow (like every image library) gives height x width x channel; the
      model wants channel x height x width: move the axis (a transpose, not a
      reshape, which would keep the bytes in place and scramble the image).
    * ``mean`` and ``std`` hold one value per channel, shaped (C, 1, 1) so
      that they broadcast over height and width.
    * ONNX Runtime takes float32, contiguous in memory.
    """
    # EXERCISE p3-serve.2: preprocess exactly as in training
    # hint: Pillow gives (H, W, C) uint8; training saw (C, H, W) float32 in 0..1, then (x - mean) / std per channel
    pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)
    # END EXERCISE


def preprocess(image: Image.Image, input_shape: tuple[int, int, int], mean: np.ndarray,
               std: np.ndarray) -> np.ndarray:
    """Any decoded image -> float32 (C, H, W), oriented, resized and normalised exactly as the service does."""
    return to_model_input(prepare(image, input_shape), mean, std)
