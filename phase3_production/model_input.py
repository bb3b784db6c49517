"""From a raw JPEG's bytes to the model's input, knowing nothing but the manifest.

Training and the service prepare the same picture in two places, written at
different times by different code:

* training (phase 2) decoded each CIFAR-10 JPEG of the archive with
  ``common/formats.py``'s ``decode_images`` (Pillow, RGB, uint8, channels
  first) and normalised whole batches with ``common/augment.py``'s
  ``normalize``: ``(x / 255 - mean) / std`` with the training split's
  statistics;
* the service decodes an upload with ``serving/images.py`` (``open_checked``,
  ``prepare``, ``to_model_input``), with the statistics read from the ONNX
  file's metadata.

:func:`serve_like_training` is the whole path in one function, written from
the one document that travels with the model: ``manifest.json``, which
records the input shape ``["batch", C, H, W]`` and the per-channel ``mean``
and ``std`` (``onnx_export.export_onnx`` writes it).  If it agrees with both
sides, the two sides agree with each other.  ``PIPELINE.md`` beside this file
names every step from the archive to the answer; this is the one step where a
silent mistake costs accuracy and raises no error.

Pillow, NumPy and the manifest only: no torch, no service code.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def serve_like_training(jpeg_bytes: bytes, manifest: dict) -> np.ndarray:
    """The float32 ``(C, H, W)`` array the service feeds the model for ``jpeg_bytes``, from ``manifest`` alone.

    ``manifest`` is ``manifest.json`` as a dict: ``manifest["input"]["shape"]``
    is ``["batch", C, H, W]``, ``manifest["mean"]`` and ``manifest["std"]``
    hold one value per channel, on the 0..1 scale.  The steps, as training
    and the service both take them:

    1. decode the bytes with Pillow and convert to RGB (a greyscale JPEG
       becomes three equal channels);
    2. if the image is not ``W x H`` already, resize it to that size with
       Pillow's bilinear filter, the one filter both ``decode_images`` and
       the service's ``rgb_array`` use (Pillow's ``resize`` takes
       ``(width, height)``; the manifest's shape is ``C, H, W``);
    3. channels first: ``(H, W, C)`` as Pillow lays pixels out becomes
       ``(C, H, W)`` by a transpose;
    4. scale to 0..1 (divide by 255), then subtract each channel's mean and
       divide by its std, the manifest's values shaped ``(C, 1, 1)``;
    5. float32, contiguous: what ONNX Runtime takes.

    Exact for any JPEG up to ``REDUCE_MARGIN`` (8) times the model's input on
    each side (256 x 256 for 32 x 32), without an EXIF orientation: every
    CIFAR-10 image is one.  Larger uploads the service first reduces by whole
    factors, and it turns photos as the camera was held
    (``serving/images.py``'s ``prepare``).
    """
    # EXERCISE p3-serve.5: from the raw JPEG to the model input, from the manifest alone
    # hint: Pillow: open, convert("RGB"), resize((W, H), BILINEAR) only when the size differs; then channels
    # hint: first by a transpose, / 255, and (x - mean) / std with the manifest's lists shaped (C, 1, 1)
    channels, height, width = (int(n) for n in manifest["input"]["shape"][1:])
    with Image.open(io.BytesIO(jpeg_bytes)) as image:
        rgb = image.convert("RGB")
    if rgb.size != (width, height):
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    mean = np.asarray(manifest["mean"], dtype=np.float32).reshape(channels, 1, 1)
    std = np.asarray(manifest["std"], dtype=np.float32).reshape(channels, 1, 1)
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)
    # END EXERCISE
