"""Untrusted bytes in, a normalised float32 tensor out - or a 4xx error that says what was wrong.

Every upload is hostile until proven otherwise:

1. **Sniff the format from the first bytes**, not from the file name or the
   Content-Type the client claims.  Only PNG, JPEG, WebP and BMP are opened,
   and Pillow is told to try only the detected one, so no other decoder
   (some of which call out to external programs) ever sees the bytes.
2. **Check the pixel count from the header before decoding.**  A 40 KB PNG
   can declare 50,000 x 50,000 pixels and expand to 7.5 GB: a decompression
   bomb.  Opening an image reads only its header; ``load()`` decodes.
3. **Decode fully, inside a try.**  A truncated JPEG fails here, as a 400.
4. **Normalise the mode**: grayscale, palette, RGBA (alpha composited on
   black, as training images had no alpha) all become RGB.
5. **Resize** to the model's input with the same antialiased filter for every
   image, then scale to 0..1 and apply the training mean and std.
"""

from __future__ import annotations

import io

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


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to RGB; transparent pixels become black, as in no training image."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (0, 0, 0))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
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
    """Any image -> float32 (C, H, W), resized and normalised exactly as in training."""
    return to_model_input(rgb_array(image, input_shape), mean, std)
