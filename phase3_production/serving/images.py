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
    """Open and fully decode ``data`` as one of the ``allowed`` formats, within the limits."""
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
    try:
        image = Image.open(io.BytesIO(data), formats=[kind])   # reads the header only
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, "too_many_pixels", f"image declares too many pixels ({exc})") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected(400, "corrupt_image", f"cannot read the {kind} header: the data is damaged "
                                                  f"({type(exc).__name__})") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected(400, "corrupt_image", f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(413, "too_many_pixels",
                            f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")
    try:
        image.load()                                            # decodes; truncated data fails here
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, "too_many_pixels", f"image declares too many pixels ({exc})") from exc
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageRejected(400, "corrupt_image", f"the {kind} data is damaged or truncated: {exc}") from exc
    return image


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


def to_pixels(image: Image.Image, input_shape: tuple[int, int, int]) -> np.ndarray:
    """RGB image -> float32 (C, H, W) in 0..1, resized to the model's input."""
    channels, height, width = input_shape
    image = to_rgb(image)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=None)
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
    if pixels.shape[0] != channels:
        raise ImageRejected(400, "wrong_channels", f"model expects {channels} channels, image has {pixels.shape[0]}")
    return pixels


def normalize_pixels(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The training normalisation, ``(pixels - mean) / std`` per channel."""
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


def preprocess(image: Image.Image, input_shape: tuple[int, int, int], mean: np.ndarray,
               std: np.ndarray) -> np.ndarray:
    """RGB image -> float32 (C, H, W), resized and normalised exactly as in training."""
    return normalize_pixels(to_pixels(image, input_shape), mean, std)
