"""Export a trained CNN to ONNX, with its metadata inside and a manifest beside it.

The export traces the model with ``torch.export`` (PyTorch's default ONNX
exporter since 2.9; it needs the ``onnxscript`` package) and declares the
batch dimension dynamic, so one file serves any batch size.

An ONNX file is a self-contained description of the computation graph and
its weights that runtimes other than PyTorch (ONNX Runtime, TensorRT, ...)
can execute.  What the graph cannot tell a service is *how to use it*: the
class names, the input size, the normalisation.  We store those in the
model's ``metadata_props``, and write ``manifest.json`` with the file's
sha256 so that a service can refuse a file that is not the one exported.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np
import torch

from common.runs import write_json
from phase3_production.manifest import sha256_of, verify_sha256

OPSET = 18  # the torch.export-based exporter emits opset 18 and newer
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_onnx(model: torch.nn.Module, blob: dict, checkpoint: Path, out_dir: Path, *, opset: int = OPSET) -> dict:
    """Write ``model.onnx`` (dynamic batch axis, checked) and ``manifest.json``; return the manifest."""
    import onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    model = model.eval().cpu()
    # An example batch of 2, not 1: torch.export treats a size-1 dimension as a constant.
    export_graph(model, torch.zeros(2, *blob["input_shape"]), onnx_path, opset=opset)
    proto = onnx.load(str(onnx_path))
    metadata = {
        "class_names": json.dumps(list(blob["classes"])),
        "input_shape": json.dumps(list(blob["input_shape"])),
        "normalize_mean": json.dumps(list(blob["mean"])),
        "normalize_std": json.dumps(list(blob["std"])),
        "test_accuracy": json.dumps(blob.get("test_accuracy")),
        "val_accuracy": json.dumps(blob.get("val_accuracy")),
        "source_checkpoint_sha256": sha256_of(checkpoint),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "ml60"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(onnx_path))
    manifest = {
        "onnx_file": onnx_path.name,
        "sha256": sha256_of(onnx_path),
        "bytes": onnx_path.stat().st_size,
        "opset": opset,
        "input": {"name": INPUT_NAME, "shape": ["batch", *blob["input_shape"]], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(blob["classes"])]},
        "classes": list(blob["classes"]),
        "mean": list(blob["mean"]),
        "std": list(blob["std"]),
        "source_checkpoint": str(checkpoint),
        "source_checkpoint_sha256": metadata["source_checkpoint_sha256"],
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def export_graph(model: torch.nn.Module, example: torch.Tensor, onnx_path: Path, *, opset: int = OPSET) -> None:
    """Trace ``model`` on ``example`` and write its ONNX graph to ``onnx_path``, any batch size accepted.

    Tracing records the operations that one example batch goes through, with
    that batch's shapes.  Unless a dimension is declared *dynamic*, its size
    is baked into the graph: a model traced on 2 images then refuses 1 or 64
    ("Got invalid dimensions for input ... Got: 3 Expected: 2").  Declare
    dimension 0 of the input dynamic: with the ``torch.export``-based
    exporter (``dynamo=True``) that is ``dynamic_shapes=({0: torch.export.Dim("batch")},)``;
    the older TorchScript exporter spells it ``dynamic_axes``.

    Name the graph's input ``INPUT_NAME`` ("images") and its output
    ``OUTPUT_NAME`` ("logits"): ONNX Runtime is fed by name, and the service,
    the parity check and the benchmark all use these two.  ``opset`` is the
    version of the ONNX operator set the graph may use.

    See https://docs.pytorch.org/docs/stable/onnx_export.html
    """
    # EXERCISE p3-onnx.1: export with a dynamic batch axis
    # hint: torch.onnx.export(..., dynamo=True) with dimension 0 of the input declared dynamic (a torch.export.Dim
    # hint: in dynamic_shapes) and the input and output named; it returns a program whose .save() writes the file
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True)
    program.save(str(onnx_path))
    # END EXERCISE


def add_variant(manifest_path: Path, key: str, onnx_path: Path, **details) -> dict:
    """Record a derived model (the INT8 one, say) with its own sha256 in the manifest; return the manifest."""
    manifest = json.loads(Path(manifest_path).read_text())
    manifest.setdefault("variants", {})[key] = {"onnx_file": onnx_path.name, "sha256": sha256_of(onnx_path),
                                                "bytes": onnx_path.stat().st_size, **details}
    write_json(Path(manifest_path), manifest)
    return manifest


def add_reference(manifest_path: Path, reference_path: Path) -> dict:
    """Record the drift reference statistics file and its sha256 in the manifest; return the manifest."""
    return add_side_file(manifest_path, "reference", reference_path)


def add_side_file(manifest_path: Path, key: str, path: Path) -> dict:
    """Record a file that travels with the model (``manifest.SIDE_FILES``) and its sha256; return the manifest."""
    manifest = json.loads(Path(manifest_path).read_text())
    manifest[key] = {"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
    write_json(Path(manifest_path), manifest)
    return manifest


def verify_onnx(onnx_path: Path, manifest_path: Path | None = None) -> dict:
    """Check an ONNX file against its manifest's sha256 and the ONNX checker; return the manifest.

    Every failure names the file and what is wrong with it.
    """
    import onnx

    manifest, _ = verify_sha256(onnx_path, manifest_path)
    try:
        onnx.checker.check_model(onnx.load(str(onnx_path)))
    except Exception as exc:  # onnx raises several types for damaged files
        raise ValueError(f"{onnx_path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    return manifest


def parity(model: torch.nn.Module, session, images: np.ndarray, batch_size: int = 250) -> dict:
    """Do PyTorch and ONNX Runtime compute the same thing?  ``{"images", "max_abs_diff", "same_class"}``.

    Run the same float32 batches through both and compare the **logits**:
    ``max_abs_diff`` is the largest absolute difference over every image and
    class, ``same_class`` how many images get the same predicted class
    (argmax) from both.  The caller judges them (p3-onnx demands 1e-4 and
    every class).  Three things make the comparison honest:

    * the PyTorch model in **eval mode**: in train mode Dropout zeroes random
      units and BatchNorm normalises with the batch's own statistics, so the
      two sides differ although the export is perfect;
    * **logits, not probabilities**: softmax squashes differences (raising
      the winning logit of an image classified with probability 0.9998 by 0.5
      moves that probability by less than 1e-4), so a check on probabilities
      passes a broken export;
    * the worst case over **every** batch, not the last one's.

    ``session`` is an ONNX Runtime ``InferenceSession`` (or anything with its
    ``run(output_names, {input_name: array})``); its input is ``INPUT_NAME``.
    """
    # EXERCISE p3-onnx.2: the parity check
    # hint: the model in eval mode; batch by batch, the largest |PyTorch logits - session logits| so far,
    # hint: and how many rows have the same argmax
    model = model.eval().cpu()
    worst, same = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].astype(np.float32)
            a = model(torch.from_numpy(x)).numpy()
            b = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
            worst = max(worst, float(np.abs(a - b).max()))
            same += int((a.argmax(1) == b.argmax(1)).sum())
    return {"images": len(images), "max_abs_diff": worst, "same_class": same}
    # END EXERCISE
