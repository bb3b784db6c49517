"""A few labelled test images that travel with the model, for the demo page's "try one of these".

p3-onnx writes ``samples.json`` beside the ONNX file (one test image per
class, as PNG bytes in base64, with its true label) and lists it in the
manifest with its sha256, like the drift reference: the service verifies it
before serving it.  Test images, not training images: a demo that shows the
model on pictures it learned from would flatter it.

``GET /v1/samples`` returns them; the page shows each one and, on a click,
posts its bytes to ``/v1/predict`` like any uploaded file.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

SAMPLES_NAME = "samples.json"
MAX_SAMPLES = 50                  # a demo strip, not a dataset
MAX_SAMPLE_BYTES = 64 * 1024      # one encoded image


def png_base64(image_hwc) -> str:
    """A uint8 (H, W, 3) array as base64 PNG text."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image_hwc).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_samples(path: Path, images_uint8, labels, classes: list[str], per_class: int = 1) -> list[dict]:
    """The first ``per_class`` images of each class from uint8 (N, 3, H, W) ``images``, written to ``path``."""
    chosen, taken = [], {}
    for image, label in zip(images_uint8, labels):
        label = int(label)
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            chosen.append({"label": classes[label], "png_base64": png_base64(image.transpose(1, 2, 0))})
        if len(taken) == len(classes) and all(n >= per_class for n in taken.values()):
            break
    chosen.sort(key=lambda s: classes.index(s["label"]))
    Path(path).write_text(json.dumps({"source": "the test split", "samples": chosen}))
    return chosen


def read_samples(path: Path, classes: list[str]) -> list[dict]:
    """The samples in ``path``, checked: each a known class and base64 PNG bytes of a bounded size.

    The file's sha256 was checked against the manifest already; this checks
    that what it holds is what the page expects, so a sample the page cannot
    show is a refusal at start-up, not a broken page later.
    """
    data = json.loads(Path(path).read_text())
    samples = data.get("samples") if isinstance(data, dict) else None
    if not isinstance(samples, list) or len(samples) > MAX_SAMPLES:
        raise ValueError(f"'samples' must be a list of at most {MAX_SAMPLES} entries")
    for i, sample in enumerate(samples):
        if not isinstance(sample, dict) or sample.get("label") not in classes:
            raise ValueError(f"sample {i}: 'label' must be one of the model's classes")
        try:
            raw = base64.b64decode(sample.get("png_base64", ""), validate=True)
        except (binascii.Error, TypeError) as exc:
            raise ValueError(f"sample {i}: 'png_base64' is not base64 ({exc})") from exc
        if not raw.startswith(b"\x89PNG\r\n\x1a\n") or len(raw) > MAX_SAMPLE_BYTES:
            raise ValueError(f"sample {i}: not a PNG of at most {MAX_SAMPLE_BYTES:,} bytes")
    return [{"label": s["label"], "png_base64": s["png_base64"]} for s in samples]
