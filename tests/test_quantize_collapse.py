"""Static INT8's two integer overflows (phase3_production/quantize.py's docstring), shown and ruled out.

1. The int32 bias: a channel with near-zero weights and a normal bias (BatchNorm's scale ~0, folded into the
   convolution) gets a tiny per-channel weight scale; ONNX Runtime raises it just enough for the int32 bias
   to fit, so the accumulator wraps around once the products add 0.01% of the bias.  Measured in ONNX
   Runtime itself on a two-convolution model built that way.
2. The int16 pairs: x86 CPUs without VNNI sum two u8 x s8 products in int16 (VPMADDUBSW).  This machine may
   have VNNI, so the test checks the bound that rules the clipping out: ``2 * 255 * max|w_q| <= 32767``.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

pytestmark = getattr(pytest.mark, "p3-onnx")

SWITCHED_OFF_SCALE = 2e-5   # BatchNorm scale of the switched-off channel: inside the window where ONNX Runtime
                            # raises the weight scale (below ~3e-5 with 7-bit weights) and the products still
                            # add more than 0.01% of the bias (above ~1.5e-5)
BIAS = 0.5                  # its BatchNorm shift: the channel outputs a constant 0.5 after ReLU


def _switched_off_channel_model():
    """conv(3->64)+BN+ReLU, conv(64->16)+BN+ReLU, 1x1 head, mean over positions; channel 0 of the second conv
    is switched off: positive weights (so the products add up with the bias' sign), BN scale ~0, shift 0.5,
    and the head leans on it."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = torch.nn.Conv2d(3, 64, 3, padding=1, bias=False), torch.nn.BatchNorm2d(64)
            self.conv2, self.bn2 = torch.nn.Conv2d(64, 16, 3, padding=1, bias=False), torch.nn.BatchNorm2d(16)
            self.head = torch.nn.Conv2d(16, 10, 1)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            return self.head(torch.relu(self.bn2(self.conv2(x)))).mean((2, 3))

    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.conv2.weight[0] = model.conv2.weight[0].abs()
        model.bn2.weight[0], model.bn2.bias[0] = SWITCHED_OFF_SCALE, BIAS
        model.head.weight[:, 0] = torch.linspace(-4, 4, 10)[:, None, None]
    return model


@pytest.fixture(scope="module")
def constructed(tmp_path_factory):
    """The model exported as p3-onnx exports (``export_graph``), its calibration images and test inputs."""
    import torch

    from phase3_production.onnx_export import export_graph

    out = tmp_path_factory.mktemp("collapse")
    with contextlib.redirect_stdout(io.StringIO()):      # the exporter's progress lines
        export_graph(_switched_off_channel_model(), torch.zeros(2, 3, 16, 16), out / "model.onnx")
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((64, 3, 16, 16)).astype(np.float32)
    inputs = rng.standard_normal((256, 3, 16, 16)).astype(np.float32)
    return out, calibration, inputs


INT32_MAX, INT16_MAX = 2**31 - 1, 2**15 - 1


def _integers(path) -> dict[str, dict]:
    """Per Conv/Gemm weight of a QDQ model, read with onnx alone: its int32 bias and its int8 weights."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    found = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) == 3:
            weight, bias = producer[node.input[1]], producer[node.input[2]]
            found[weight.input[0].removesuffix("_quantized")] = {
                "bias_q": values[bias.input[0]].astype(np.int64), "weight_q": values[weight.input[0]].astype(np.int64)}
    return found


@pytest.fixture(scope="module")
def old(constructed):
    """The constructed model through the recipe before the fix."""
    out, calibration, _ = constructed
    _old_recipe(out / "model.onnx", out / "old.int8.onnx", calibration)
    return out / "old.int8.onnx"


@pytest.fixture(scope="module")
def fixed(constructed):
    """The constructed model through ``quantize_static_int8``: ``(path, info)``."""
    from phase3_production.quantize import quantize_static_int8

    out, calibration, _ = constructed
    return out / "fixed.int8.onnx", quantize_static_int8(out / "model.onnx", out / "fixed.int8.onnx", calibration)


def _outputs(path, inputs):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": inputs})[0]


def _old_recipe(source, target, calibration):
    """The recipe before the fix: 8-bit per-channel weights, nothing checked after ONNX Runtime's quantize_static."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from phase3_production.quantize import ArrayCalibrationReader

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared))
    quantize_static(str(prepared), str(target), ArrayCalibrationReader(calibration, "images"),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def test_the_old_recipe_wraps_the_int32_accumulator_of_a_switched_off_channel(constructed, old):
    out, _, inputs = constructed
    bias_q = _integers(old)["conv2.weight"]["bias_q"]
    # ONNX Runtime's own guard raised channel 0's weight scale just enough: its bias sits 0.01% under the
    # int32 limit, and the products it is added to push the sum over the edge.
    assert INT32_MAX / 1.0002 < abs(bias_q[0]) <= INT32_MAX and np.abs(bias_q[1:]).max() < 10**7
    error = np.abs(_outputs(old, inputs) - _outputs(out / "model.onnx", inputs)).max()
    assert error > 0.5, f"the wrapped channel should move the logits by about its bias x head weight, got {error:.3f}"


def test_the_fixed_recipe_floors_that_weight_scale_and_stays_close_to_fp32(constructed, fixed):
    out, _, inputs = constructed
    path, info = fixed
    error = np.abs(_outputs(path, inputs) - _outputs(out / "model.onnx", inputs)).max()
    assert error < 0.05, f"INT8 should stay within a few output steps of fp32, got {error:.3f}"
    from phase3_production.quantize import int32_bias_headroom

    layer = next(layer for layer in int32_bias_headroom(path) if layer["weight"] == "conv2.weight")
    k = 64 * 3 * 3
    assert abs(_integers(path)["conv2.weight"]["bias_q"][0]) + k * 255 * 64 <= INT32_MAX
    assert layer["overflowing_channels"] == [] and layer["limit"] == INT32_MAX - k * 255 * 64
    assert info["weight_scale_floors"] == {"conv2.weight": [0]} and info["quantize_passes"] == 2


def test_the_fixed_recipe_keeps_every_u8_s8_pair_inside_int16(old, fixed):
    """VPMADDUBSW (x86 without VNNI) clips u8 x s8 + u8 x s8 at 32767: 7-bit weights make that impossible."""
    assert max(np.abs(t["weight_q"]).max() for t in _integers(old).values()) == 127   # 2 x 255 x 127 = 64,770
    assert all(2 * 255 * np.abs(t["weight_q"]).max() <= INT16_MAX for t in _integers(fixed[0]).values())
    assert fixed[1]["reduce_range"]
