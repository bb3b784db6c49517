"""The served model: verified first, then loaded, then described by its own metadata.

Order matters.  The sha256 is checked against ``manifest.json`` before ONNX
Runtime parses a byte of the file, so a damaged or swapped model never
answers a request; the service refuses to start instead, with a message that
names the file.  Everything a client needs to know - class names, input size,
normalisation - comes from the model's own metadata, written at export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phase3_production.manifest import SIDE_FILES, sha256_of, verify_sha256
from phase3_production.runtime import onnx_session


class ModelLoadError(RuntimeError):
    """The model directory cannot be served; the message says why."""


@dataclass
class ServedModel:
    path: Path
    sha256: str
    classes: list[str]
    input_shape: tuple[int, int, int]      # C, H, W
    mean: np.ndarray                        # per channel, shaped (C, 1, 1)
    std: np.ndarray
    metadata: dict[str, str]
    session: object
    reference_path: Path | None = None     # drift reference statistics, verified like the model
    samples_path: Path | None = None       # a few labelled test images for the demo page, verified too
    card_path: Path | None = None          # the model card's figures (model_card.json), verified too
    card_markdown_path: Path | None = None  # the same card for people (MODEL_CARD.md)

    @property
    def version(self) -> str:
        """A short, content-derived version: the first 12 hex digits of the file's sha256."""
        return self.sha256[:12]

    @classmethod
    def load(cls, model_dir: Path, model_file: str = "model.onnx", intra_op_threads: int = 1) -> "ServedModel":
        path = Path(model_dir) / model_file
        try:
            manifest, entry = verify_sha256(path)
        except (FileNotFoundError, ValueError) as exc:
            raise ModelLoadError(f"refusing to serve: {exc}") from exc
        side_files = {}
        for key in SIDE_FILES:
            if key in manifest:   # read_manifest checked it names a plain file beside the manifest
                side = Path(model_dir) / manifest[key]["file"]
                if not side.is_file() or sha256_of(side) != manifest[key]["sha256"]:
                    raise ModelLoadError(f"refusing to serve: {side}: missing or its sha256 does not "
                                         "match the manifest")
                side_files[key] = side
        try:
            # Not spinning: busy-waiting pool threads would steal the CPU from the HTTP side of the process.
            session = onnx_session(path, intra_op_threads)
        except Exception as exc:  # ONNX Runtime raises its own exception types for unreadable models
            raise ModelLoadError(f"refusing to serve: {path}: ONNX Runtime cannot load it ({exc})") from exc
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        try:
            classes = json.loads(metadata["class_names"])
            shape = tuple(json.loads(metadata["input_shape"]))
            mean = np.asarray(json.loads(metadata["normalize_mean"]), np.float32).reshape(-1, 1, 1)
            std = np.asarray(json.loads(metadata["normalize_std"]), np.float32).reshape(-1, 1, 1)
        except (KeyError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"refusing to serve: {path}: metadata incomplete ({exc}); "
                                 "export it with `make p3-onnx`") from exc
        if len(shape) != 3 or shape[0] != len(mean) or len(mean) != len(std):
            raise ModelLoadError(f"refusing to serve: {path}: input shape {shape} does not match "
                                 f"{len(mean)} normalisation channels")
        return cls(path=path, sha256=entry["sha256"], classes=classes, input_shape=shape, mean=mean, std=std,
                   metadata=metadata, session=session, reference_path=side_files.get("reference"),
                   samples_path=side_files.get("samples"), card_path=side_files.get("model_card"),
                   card_markdown_path=side_files.get("model_card_markdown"))

    def predict_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities for a float32 batch already normalised, shape (N, C, H, W)."""
        logits = self.session.run(None, {self.session.get_inputs()[0].name: batch})[0]
        shifted = logits - logits.max(axis=1, keepdims=True)   # stable softmax
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    def describe(self) -> dict:
        return {"version": self.version, "sha256": self.sha256, "file": self.path.name,
                "classes": self.classes, "input_shape": list(self.input_shape),
                "normalize_mean": self.mean.ravel().tolist(), "normalize_std": self.std.ravel().tolist(),
                "quantization": self.metadata.get("quantization", "none (fp32)"),
                "test_accuracy": json.loads(self.metadata.get("test_accuracy", "null"))}
