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

**Two integer overflows, and the recipe that avoids both.**  An integer
convolution multiplies 8-bit activations by 8-bit weights and sums in wider
integers; two of those sums can overflow, and neither shows on every CPU.

1. *int16 pairs.*  On x86, ONNX Runtime runs the convolutions as unsigned
   8-bit activations (0..255) times signed 8-bit weights.  CPUs without VNNI
   (AVX2, or AVX-512 without VNNI: AMD EPYC before Zen 4, older Xeons) use
   the VPMADDUBSW instruction, which adds *pairs* of products into int16 and
   clips at 32,767; ``2 * 255 * 127 = 64,770`` does not fit.  Per-channel
   weights put every channel's largest weight at +-127, so a pair of large
   weights meeting a pair of large activations clips.  A VNNI CPU sums in
   int32 and never clips, which is why the same file can be fine on one
   machine and broken on another.  Emulating the instruction on three quick
   p2-cnn models (500 test images) changed 15-18% of their answers: accuracy
   -5.0, -0.0 and -2.8 points (per-tensor weights: -1.0 on the first); with
   7-bit weights nothing changed.  The collapse in phase3_production/README.md
   (`make distill`: the teacher 86.85% -> 65.46% and both students 16-19
   points down, all in one run on a 2-core AMD EPYC whose INT8 ran only 1.68x
   fp32, against 2.73x on the VNNI machine where the earlier model lost 0.01;
   per-tensor weights 81.7%) has that signature; it was not re-run on such a
   CPU.  The fix is ``reduce_range=True``: weights in -64..64 (7 bits),
   ``2 * 255 * 64 = 32,640`` fits, on every CPU.  On a VNNI CPU it moved the
   three quick models by -0.23 to +0.17 points (10,000 test images).
2. *the int32 bias.*  A bias is stored as int32 with scale ``input_scale *
   weight_scale[c]`` and added to the int32 accumulator.  A channel whose
   weights are almost zero but whose bias is not (BatchNorm's scale near 0,
   folded into the convolution by ``quant_pre_process``) gets a tiny weight
   scale, so its bias is billions of integer units.  ONNX Runtime raises that
   scale just enough for the bias to fit (``|bias_q|`` 2,147,268,949, 0.01%
   below the int32 limit), which leaves the accumulator no room: once the
   products add 0.01% of the bias with the same sign, the sum wraps around and
   the channel's output jumps by twice its bias (in a 2-conv model built so,
   tests/test_quantize_collapse.py: max |logit error| 1.32, against 0.018
   once the weight scale is floored).
   The recipe checks every bias against the most the products can add
   (``K * 255 * 64`` for ``K`` inputs per output) and, for the channels that
   do not fit, floors the weight scale and quantizes again: such a channel's
   weights are near zero, so a coarser scale costs nothing.  No quick-trained
   p2-cnn model has such a channel (largest ``|bias_q|`` 0.2 million).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

CALIBRATION_BATCH = 64
INT32_MAX = 2**31 - 1
ACTIVATION_STEPS = 255      # |x_q - zero_point| for an 8-bit activation
INT16_MAX = 2**15 - 1       # what VPMADDUBSW clips a pair of u8 x s8 products to


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
    """Static INT8, QDQ format, per-channel weights, MinMax calibration; returns what was done.

    Both overflows of the module docstring are ruled out: ``reduce_range``
    keeps weights in -64..64 so that two u8 x s8 products fit int16, and every
    int32 bias must leave the accumulator room: the first pass is checked with
    :func:`int32_bias_headroom`; channels that overflow get a floor on their
    weight scale (``TensorQuantOverrides``) and the model is quantized again.
    ``info["weight_scale_floors"]`` names them.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source = _require_onnx(source)
    options = dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                   activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    with tempfile.TemporaryDirectory() as tmp:
        # Pre-processing: shape inference and graph clean-up so that every tensor
        # has a known shape and BatchNorm-style patterns are folded before quantizing.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_static(str(prepared), str(target), ArrayCalibrationReader(calibration_images, input_name), **options)
        overflowing = [layer for layer in int32_bias_headroom(target) if layer["overflowing_channels"]]
        floors = {}
        if overflowing:
            overrides, floors = weight_scale_floors(overflowing, prepared)
            quantize_static(str(prepared), str(target), ArrayCalibrationReader(calibration_images, input_name),
                            extra_options={"TensorQuantOverrides": overrides}, **options)
        layers = int32_bias_headroom(target)
        still = [layer["node"] for layer in layers if layer["overflowing_channels"]]
        if still:
            raise RuntimeError(f"{target}: the int32 bias of {still} still leaves the accumulator no room")
        wide = [layer["node"] for layer in layers if 2 * ACTIVATION_STEPS * layer["max_abs_weight_q"] > INT16_MAX]
        if wide:
            raise RuntimeError(f"{target}: weights of {wide} outside -64..64: u8 x s8 pairs clip on non-VNNI CPUs")
    info = {"method": "static", "format": "QDQ", "per_channel": True, "activations": "int8",
            "weights": "int8 holding 7-bit values, -64..64 (reduce_range)", "reduce_range": True,
            "calibration": "MinMax", "calibration_images": int(len(calibration_images)),
            "calibration_source": "training split",
            "int16_pair_check": "2*255*max|w_q| <= 32767 for every layer (no VPMADDUBSW clipping)",
            "int32_bias_check": "|bias_q| + K*255*max|w_q| <= 2^31-1 for every output channel",
            "weight_scale_floors": floors, "quantize_passes": 2 if overflowing else 1}
    copy_metadata(source, target, {"quantization": "static int8 QDQ per-channel, 7-bit weights, "
                                   f"calibrated on {len(calibration_images)} training images"})
    return info


def int32_bias_headroom(qdq_model: Path) -> list[dict]:
    """For each Conv/Gemm of a QDQ model with an int32 bias: does the bias leave the accumulator room?

    The integer kernel computes ``acc = bias_q[c] + sum_k (x_q - x_zero) * w_q[c, k]`` in int32.  With
    ``K`` inputs per output channel the sum is at most ``K * 255 * max|w_q|`` in magnitude (``max|w_q|``
    is 64 for 7-bit weights, 127 for 8-bit ones), so a channel is safe when
    ``|bias_q[c]| <= 2^31 - 1 - K * 255 * max|w_q|`` (``limit``).
    Returns one record per layer: node, weight and bias names (as in the float model), ``input_scale``,
    ``K``, ``limit``, ``max_abs_bias_q``, ``overflowing_channels`` (the channels over the limit) and
    ``max_abs_weight_q`` (at most 64 keeps VPMADDUBSW's int16 pair sums exact).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(qdq_model)).graph
    values = {t.name: t for t in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    layers = []
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        dq = [producer.get(name) for name in node.input[:3]]
        if any(d is None or d.op_type != "DequantizeLinear" for d in dq):
            continue                                    # a float layer: nothing in int32
        x_dq, w_dq, b_dq = dq
        bias_q = numpy_helper.to_array(values[b_dq.input[0]]).astype(np.int64)
        weight_q = numpy_helper.to_array(values[w_dq.input[0]]).astype(np.int64)
        k = weight_q.size // max(1, bias_q.size)
        steps = max(1, int(np.abs(weight_q).max()))    # the weights' qmax: 64 (7-bit) or 127 (8-bit)
        limit = INT32_MAX - k * ACTIVATION_STEPS * steps
        axis = next((a.i for a in w_dq.attribute if a.name == "axis"), 1)
        layers.append({"node": node.name, "weight": w_dq.input[0].removesuffix("_quantized"), "weight_axis": axis,
                       "bias": b_dq.output[0], "input_scale": float(numpy_helper.to_array(values[x_dq.input[1]])),
                       "K": k, "limit": limit, "max_abs_bias_q": int(np.abs(bias_q).max()),
                       "overflowing_channels": [int(c) for c in np.flatnonzero(np.abs(bias_q) > limit)],
                       "max_abs_weight_q": steps})
    return layers


def weight_scale_floors(layers: list[dict], float_model: Path) -> tuple[dict, dict]:
    """Per-channel weight ranges for ONNX Runtime's ``TensorQuantOverrides`` that make each bias fit.

    For channel ``c``: ``weight_scale >= |bias[c]| / (input_scale * limit)`` keeps ``|bias_q[c]|`` at
    most ``limit`` (:func:`int32_bias_headroom`).  A symmetric scale is ``max|w| / qmax`` (``qmax`` 64
    for 7-bit weights), so the channel's range becomes ``[-r, r]`` with ``r = max(max|w[c]|, qmax *
    floor)``; the other channels keep their own ranges.  Returns the overrides and, for ``info``, the
    floored channels per weight.
    """
    import onnx
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(float_model)).graph.initializer}
    overrides, floors = {}, {}
    for layer in layers:
        weight = np.moveaxis(values[layer["weight"]].astype(np.float64), layer["weight_axis"], 0)
        bias = values[layer["bias"]].astype(np.float64)
        # ONNX Runtime wants a range for every channel once one has one: the others keep their own.
        channels = [{"rmin": float(w.min()), "rmax": float(w.max())} for w in weight]
        channels[0]["axis"] = layer["weight_axis"]
        for c in layer["overflowing_channels"]:
            floor = abs(bias[c]) / (layer["input_scale"] * layer["limit"]) * (1 + 1e-6)  # float32 rounding
            r = max(float(np.abs(weight[c]).max()), layer["max_abs_weight_q"] * floor)
            channels[c].update(rmin=-r, rmax=r)
        overrides[layer["weight"]] = channels
        floors[layer["weight"]] = list(layer["overflowing_channels"])
    return overrides, floors


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
