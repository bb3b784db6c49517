"""p3-onnx: export, self-describing metadata, manifest hashes, parity, INT8, the benchmark's output, clear errors."""

from __future__ import annotations

import json

import pytest

from phase3_production import p3_onnx
from phase3_production.onnx_export import sha256_of, verify_onnx

pytestmark = getattr(pytest.mark, "p3-onnx")


@pytest.fixture
def exported(quick_p3_onnx_export):
    """The session's quick p3-onnx export (conftest.py): ``(runs folder, metrics)``; tests copy before changing."""
    return quick_p3_onnx_export


def test_export_passes_parity_and_its_check(exported):
    runs, metrics = exported
    assert p3_onnx.check(metrics) == []
    assert metrics["parity_max_abs_diff"] <= 1e-4 and metrics["parity_same_class"] == metrics["parity_images"] == 1000
    manifest = json.loads((runs / "p3-onnx" / "quick" / "manifest.json").read_text())
    assert manifest["sha256"] == sha256_of(runs / "p3-onnx" / "quick" / "model.onnx")
    assert manifest["input"]["shape"] == ["batch", 3, 32, 32] and manifest["opset"] >= 17


def test_model_carries_its_metadata_and_a_dynamic_batch(exported):
    import numpy as np
    import onnx
    import onnxruntime as ort

    runs, _ = exported
    path = runs / "p3-onnx" / "quick" / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert len(json.loads(meta["class_names"])) == 10 and len(json.loads(meta["normalize_mean"])) == 3
    assert meta["source_checkpoint_sha256"] == sha256_of(runs / "p2-cnn" / "quick" / "model.pt")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 8, 64):
        assert session.run(None, {"images": np.zeros((batch, 3, 32, 32), np.float32)})[0].shape == (batch, 10)


def test_tampered_or_corrupt_onnx_is_refused_with_the_file_named(exported, tmp_path):
    runs, _ = exported
    source = runs / "p3-onnx" / "quick"
    (tmp_path / "model.onnx").write_bytes((source / "model.onnx").read_bytes())
    (tmp_path / "manifest.json").write_text((source / "manifest.json").read_text())
    data = bytearray((tmp_path / "model.onnx").read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.onnx.*does not match the manifest"):
        verify_onnx(tmp_path / "model.onnx")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07garbage")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["sha256"] = sha256_of(tmp_path / "model.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"model.onnx: not a valid ONNX model"):
        verify_onnx(tmp_path / "model.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        verify_onnx(tmp_path / "missing.onnx")


def test_missing_or_mismatched_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        p3_onnx.main(["--quick", "--checkpoint", str(tmp_path / "nothing.pt"), "--run-dir", str(tmp_path / "o")])
    (tmp_path / "bad.pt").write_bytes(b"definitely not torch")
    with pytest.raises(ValueError, match="bad.pt"):
        p3_onnx.main(["--quick", "--checkpoint", str(tmp_path / "bad.pt"), "--run-dir", str(tmp_path / "o")])


def test_int8_models_are_smaller_hashed_and_within_the_accuracy_bound(exported):
    runs, metrics = exported
    manifest = json.loads((runs / "p3-onnx" / "quick" / "manifest.json").read_text())
    for key in ("int8", "int8_dynamic"):
        entry = manifest["variants"][key]
        assert entry["sha256"] == sha256_of(runs / "p3-onnx" / "quick" / entry["onnx_file"])
        assert verify_onnx(runs / "p3-onnx" / "quick" / entry["onnx_file"])["sha256"] == manifest["sha256"]
    q = metrics["quantization"]
    assert q["static"]["calibration_source"] == "training split" and q["static"]["per_channel"]
    assert q["int8_size_ratio"] >= 3.5
    accuracy = metrics["test_accuracy"]
    assert accuracy["ort_fp32"] == accuracy["pytorch_eager"] > 0.15   # above chance (10%): the quick model learned
    assert 100 * (accuracy["ort_fp32"] - accuracy["ort_int8"]) <= p3_onnx.QUICK_INT8_ACCURACY_LOSS_POINTS
    assert q["int8_accuracy_loss_points"] == pytest.approx(100 * (accuracy["ort_fp32"] - accuracy["ort_int8"]))


def test_int8_model_keeps_the_metadata_a_service_needs(exported):
    import onnx

    runs, _ = exported
    meta = {p.key: p.value for p in onnx.load(str(runs / "p3-onnx" / "quick" / "model.int8.onnx")).metadata_props}
    assert "class_names" in meta and "normalize_std" in meta and "calibrated on 128 training images" in meta["quantization"]


def test_benchmark_writes_every_engine_batch_and_thread_count(exported):
    runs, metrics = exported
    rows = metrics["benchmark"]["rows"]
    engines = {"pytorch_eager", "pytorch_torchscript", "ort_fp32", "ort_int8", "ort_int8_dynamic"}
    cells = {(r["threads"], r["batch"]) for r in rows}
    assert {b for _, b in cells} == {1, 8, 64} and 1 in {t for t, _ in cells}
    for cell in cells:
        assert {r["engine"] for r in rows if (r["threads"], r["batch"]) == cell} >= engines
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["mean_ms"] > 0 and r["images_per_s"] > 0
        assert r["speedup_vs_eager"] > 0 and r["model_bytes"] > 0
        if r["engine"] == "pytorch_eager":
            assert r["speedup_vs_eager"] == 1.0
    assert not any(r["engine"].startswith(("pytorch_cuda", "ort_cuda")) for r in rows) or _cuda()
    targets = metrics["benchmark"]["targets_batch1_one_thread"]
    assert set(targets) >= {"ort_fp32_vs_eager_mean", "ort_fp32_vs_eager_p95", "int8_vs_fp32_mean"}
    out = runs / "p3-onnx" / "quick"
    stored = json.loads((out / "benchmark.json").read_text())
    assert stored["environment"]["cpu"] and len(stored["rows"]) == len(rows)
    table = (out / "benchmark.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == len(rows) + 1 and "| 1 | 1 | ort_int8 |" in table
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_check_fails_a_full_run_that_misses_a_target(exported):
    _, metrics = exported
    full = json.loads(json.dumps(metrics))
    full["quick"], full["data"]["real_data"] = False, True
    full["benchmark"]["targets_batch1_one_thread"].update(ort_fp32_vs_eager_mean=2.0, int8_vs_fp32_mean=1.5,
                                                          ort_fp32_vs_eager_p95=3.0)
    full["quantization"]["int8_accuracy_loss_points"] = 0.7
    problems = p3_onnx.check(full)
    assert problems == ["static INT8 loses 0.70 accuracy points (limit 0.5)"], (
        "accuracy is a check; the latency ratios are the machine's, reported by speed(), never a failure")
    speeds = {figure["name"].split()[0]: figure for figure in p3_onnx.speed(full)}
    assert not speeds["ort_fp32_vs_eager_mean"]["met"] and speeds["ort_fp32_vs_eager_mean"]["measured"] == 2.0
    assert speeds["ort_fp32_vs_eager_p95"]["met"] and speeds["int8_vs_fp32_mean"]["met"]
    assert speeds["ort_fp32_vs_eager_mean"]["reference"] == p3_onnx.REFERENCE_MACHINE["ort_fp32_vs_eager_mean"]
    assert p3_onnx.speed(metrics) == [], "a quick run times a handful of calls: no speed figures"


def test_a_variant_missing_from_the_manifest_is_refused(exported, tmp_path):
    runs, _ = exported
    (tmp_path / "other.onnx").write_bytes((runs / "p3-onnx" / "quick" / "model.int8.onnx").read_bytes())
    (tmp_path / "manifest.json").write_text((runs / "p3-onnx" / "quick" / "manifest.json").read_text())
    with pytest.raises(ValueError, match=r"other.onnx: not listed in .*manifest.json"):
        verify_onnx(tmp_path / "other.onnx")


def test_quantize_refuses_a_missing_model_and_malformed_calibration_images(tmp_path):
    import numpy as np

    from phase3_production.quantize import ArrayCalibrationReader, quantize_static_int8

    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        quantize_static_int8(tmp_path / "absent.onnx", tmp_path / "out.onnx", np.zeros((4, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="float32 N x C x H x W"):
        ArrayCalibrationReader(np.zeros((4, 32, 32), np.float32), "images")


def test_a_model_for_other_classes_fails_before_overwriting_the_previous_export(exported, tmp_path):
    import shutil

    import torch

    runs, _ = exported
    shutil.copytree(runs / "p3-onnx" / "quick", tmp_path / "export")
    before = (tmp_path / "export" / "model.onnx").read_bytes()
    blob = torch.load(runs / "p2-cnn" / "quick" / "model.pt", weights_only=True)
    blob["classes"] = [f"other-{i}" for i in range(len(blob["classes"]))]
    torch.save(blob, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match=r"other\.pt was trained on .*classes \['other-0'.*run `make p3-onnx QUICK=1"):
        p3_onnx.main(["--quick", "--checkpoint", str(tmp_path / "other.pt"), "--run-dir", str(tmp_path / "export")])
    assert (tmp_path / "export" / "model.onnx").read_bytes() == before


def test_a_model_trained_on_other_data_is_refused_in_one_line_that_names_the_command(with_quick_p2_cnn, tmp_path):
    """A run that loads other classes than the model's says which data the model wants, in one line.

    The session's quick model was trained on the stand-in, or on real CIFAR-10 when the real-data
    switch is on (CI): the advice follows what its run recorded.
    """
    import json

    import torch

    run = with_quick_p2_cnn / "p2-cnn" / "quick"
    blob = torch.load(run / "model.pt", weights_only=True)
    with pytest.raises(SystemExit) as stop:
        p3_onnx.require_model_fits_data(run / "model.pt", blob, [f"other-{i}" for i in range(10)], quick=True)
    message = str(stop.value)
    assert "\n" not in message and "'other-0'" in message
    if json.loads((run / "metrics.json").read_text())["data"]["real_data"]:
        assert "trained on real data" in message and "`make p3-onnx QUICK=1 DATA_DIR=" in message
    else:
        assert "stand-in" in message and "`make p3-onnx QUICK=1` without DATA_DIR" in message
    p3_onnx.require_model_fits_data(with_quick_p2_cnn / "p2-cnn" / "quick" / "model.pt", blob,
                                    list(blob["classes"]), quick=True)   # the same classes: no complaint


@pytest.mark.parametrize("present", ["nothing", "a quick run"])
def test_a_full_export_without_a_full_p2_cnn_model_names_the_command_to_run_first(present, tmp_path, monkeypatch,
                                                                                  quick_p2_cnn_run):
    import shutil

    runs = tmp_path / "runs"
    if present == "a quick run":
        shutil.copytree(quick_p2_cnn_run, runs / "p2-cnn" / "quick")
    monkeypatch.setenv("ML60_RUNS_DIR", str(runs))
    with pytest.raises(SystemExit, match="run `make p2-cnn` first") as stop:
        p3_onnx.main([])
    assert ("only a quick run" in str(stop.value)) == (present == "a quick run")
    assert not (runs / "p3-onnx").exists(), "the refused run left a folder behind"
    if present == "nothing":
        with pytest.raises(SystemExit, match=r"run `make p2-cnn QUICK=1` first"):
            p3_onnx.main(["--quick"])
    else:
        assert p3_onnx.p2_cnn_model(quick=True) == runs / "p2-cnn" / "quick" / "model.pt"


def test_parity_reports_a_pytorch_model_that_differs_from_the_onnx_file(model_dir):
    """parity() must compare two computations: a changed PyTorch model is reported, not just a figure passed on.

    The shared ``model_dir`` holds an exported CNN and the weights it came
    from.  Loaded back, the two agree; with a small change to one bias, the
    logits differ by that much and the classes hardly move; with the
    classifier's rows reversed, every image gets another class.  A parity
    that ran PyTorch (or ONNX Runtime) on both sides would report agreement
    in all three cases.
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    from phase2_depth.p2_cnn import RECIPES, build_model
    from phase3_production.onnx_export import parity

    model = build_model(RECIPES["quick"], num_classes=10)
    model.load_state_dict(torch.load(model_dir / "source.pt", weights_only=True)["weights"])
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)

    agree = parity(model, session, images, batch_size=4)
    assert agree["images"] == 6 and agree["max_abs_diff"] <= 1e-4 and agree["same_class"] == 6

    with torch.no_grad():
        model.classifier.bias[3] += 0.01                        # 100x the p3-onnx tolerance, in one class's logit
    nudged = parity(model, session, images, batch_size=4)
    assert nudged["max_abs_diff"] == pytest.approx(0.01, rel=0.01)

    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight.flip(0))
        model.classifier.bias.copy_(model.classifier.bias.flip(0))   # class c now scores as class 9 - c
    reversed_rows = parity(model, session, images, batch_size=4)
    assert reversed_rows["max_abs_diff"] > 0.01 and reversed_rows["same_class"] == 0
