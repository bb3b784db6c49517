"""INT8 quantization with ONNX Runtime: static (calibrated) versus dynamic.

Quantization stores weights, and optionally activations, as 8-bit integers
with a float *scale* and integer *zero point* per tensor (or per output
channel): ``real = scale * (int8 - zero_point)``.  A 4-byte float becomes one
byte, so the file shrinks about 4x, and CPUs with integer dot-product
instructions (AVX-512 VNNI, AVX-VNNI, Arm's dot product) multiply 8-bit values
several times faster than floats.

Two ways to choose the activation scales:

* **static**: run a few hundred *training* images through the float model
  once (calibration), record each activation's range, and bake the scales into
  the graph.  At inference every convolution runs in integers end to end.
  The graph is written in **QDQ** form - QuantizeLinear/DequantizeLinear pairs
  around float ops - which ONNX Runtime fuses into integer kernels and which
  other runtimes (TensorRT, OpenVINO) also read.  **Per-channel** weights give
  each output channel its own scale, which matters for convolutions whose
  channels differ in range by orders of magnitude.
* **dynamic**: weights are quantized ahead of time but activation ranges are
  measured on every call.  It was designed for layers dominated by loading
  weights (the MatMuls of LSTMs and transformers at small batch).  For a CNN
  it is the wrong tool: ONNX Runtime runs the convolutions as ``ConvInteger``
  plus a float rescale per call, and p3-onnx measures the result.

Never calibrate on test images: the scales are fitted parameters, and the
test set must stay unseen by everything that is fitted.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

CALIBRATION_BATCH = 64


def _require_onnx(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX model not found (run `make p3-onnx` first)")
    return path


class ArrayCalibrationReader:
    """Feeds calibration batches to ``quantize_static``, as ONNX Runtime's CalibrationDataReader does."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = CALIBRATION_BATCH):
        if images.ndim != 4 or images.dtype != np.float32:
            raise ValueError(f"calibration images must be float32 N x C x H x W, got {images.dtype} {images.shape}")
        self.batches = [{input_name: images[i:i + batch_size]} for i in range(0, len(images), batch_size)]
        self.position = 0

    def get_next(self) -> dict | None:
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return self.batches[self.position - 1]

    def rewind(self) -> None:
        self.position = 0


def copy_metadata(source: Path, target: Path, extra: dict[str, str]) -> None:
    """Copy ``metadata_props`` from the float model (class names, normalisation...) and add ``extra``."""
    import onnx

    src, dst = onnx.load(str(source)), onnx.load(str(target))
    values = {p.key: p.value for p in src.metadata_props} | {p.key: p.value for p in dst.metadata_props} | extra
    del dst.metadata_props[:]
    for key, value in values.items():
        entry = dst.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(dst)
    onnx.save(dst, str(target))


def quantize_static_int8(source: Path, target: Path, calibration_images: np.ndarray,
                         input_name: str = "images") -> dict:
    """Static INT8, QDQ format, per-channel weights, MinMax calibration; returns what was done."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = _require_onnx(source)
    with tempfile.TemporaryDirectory() as tmp:
        # Pre-processing: shape inference and graph clean-up so that every tensor
        # has a known shape and BatchNorm-style patterns are folded before quantizing.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(target), ArrayCalibrationReader(calibration_images, input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    info = {"method": "static", "format": "QDQ", "per_channel": True, "weights": "int8", "activations": "int8",
            "calibration": "MinMax", "calibration_images": int(len(calibration_images)),
            "calibration_source": "training split"}
    copy_metadata(source, target, {"quantization": "static int8 QDQ per-channel, "
                                   f"calibrated on {len(calibration_images)} training images"})
    return info


def quantize_dynamic_int8(source: Path, target: Path) -> dict:
    """Dynamic INT8: int8 weights, activation ranges measured on every call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = _require_onnx(source)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    copy_metadata(source, target, {"quantization": "dynamic int8 (weights only ahead of time)"})
    return {"method": "dynamic", "weights": "int8", "activations": "int8, ranges measured per call"}
