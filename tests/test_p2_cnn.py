"""p2-cnn: the 5-layer CNN's shape and cost, its model file, and a CI-sized run on real images."""

from __future__ import annotations

import pytest
import torch

from phase2_depth import p2_cnn
from phase2_depth.models import WIDTHS, FiveLayerCNN, multiply_adds, parameter_count

pytestmark = getattr(pytest.mark, "p2-cnn")


def test_five_convolutions_with_batchnorm_dropout_and_pooling():
    model = FiveLayerCNN(WIDTHS["narrow"])
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 5
    assert any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_multiply_adds_match_a_hand_count():
    model = FiveLayerCNN((1, 1, 1, 1, 1), num_classes=2, in_channels=1)
    # 3x3 convs with one channel: 9 multiply-adds per output value
    # conv1 32x32, conv2 32x32, conv3 16x16, conv4 16x16, conv5 8x8; linear 1x2
    expected = 9 * (32 * 32 + 32 * 32 + 16 * 16 + 16 * 16 + 8 * 8) + 2
    assert multiply_adds(model, (1, 1, 32, 32)) == expected
    pooled_early = FiveLayerCNN((1, 1, 1, 1, 1), num_classes=2, in_channels=1, pool_first=True)
    assert multiply_adds(pooled_early, (1, 1, 32, 32)) == 9 * (32 * 32 + 16 * 16 + 8 * 8 + 8 * 8 + 4 * 4) + 2
    assert parameter_count(model) == 5 * (9 + 2) + 2 + 2  # conv weights, BN gamma/beta, linear w+b


def test_quick_run_writes_a_loadable_model(quick_p2_cnn_run):
    """The session's quick run (conftest), which the later milestones' tests also start from."""
    from common.runs import read_metrics

    metrics = read_metrics(quick_p2_cnn_run)
    assert p2_cnn.check(metrics) == []
    model, blob = p2_cnn.load_model(quick_p2_cnn_run / "model.pt")
    assert blob["classes"] and len(blob["mean"]) == 3 and blob["test_accuracy"] == metrics["test_accuracy"]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    shares = metrics["step_breakdown"]
    assert shares["convolution_share"] + shares["rest_of_model_share"] + shares["data_share"] == pytest.approx(1)


def test_model_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="make p2-cnn"):
        p2_cnn.load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        p2_cnn.load_model(tmp_path / "junk.pt")
    recipe = dict(p2_cnn.RECIPES["quick"])
    model = p2_cnn.build_model(recipe)
    splits = type("S", (), {"classes": ["a"] * 10, "mean": (0.5,) * 3, "std": (0.2,) * 3})()
    p2_cnn.save_model(tmp_path / "ok.pt", model, splits, recipe)
    blob = torch.load(tmp_path / "ok.pt", weights_only=True)
    blob["arch"]["widths"] = [8, 8, 8, 8, 8]
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="do not match the architecture"):
        p2_cnn.load_model(tmp_path / "mismatch.pt")


@pytest.mark.real_data
@pytest.mark.slow
def test_ci_sized_run_on_real_cifar10(real_data_dir, tmp_path):
    """3 epochs of the narrow CNN on the real JPEG images (~2 minutes): far above 10% chance."""
    metrics = p2_cnn.main(["--recipe", "ci", "--run-dir", str(tmp_path), "--data-dir", str(real_data_dir),
                           "--device", "cpu"])
    assert metrics["data"]["real_data"] and metrics["data"]["train_used"] == 45_000
    assert metrics["test_accuracy"] >= p2_cnn.TARGETS["ci"], metrics["test_accuracy"]



def test_the_cpu_step_profile_leaves_the_model_and_optimiser_as_built():
    """Profiling trains a copy: afterwards the weights, BatchNorm statistics and optimiser are as they were.

    main() profiles ``trainer.raw_model`` with ``trainer.optimizer`` just before fit(): whatever this
    function changes, fit() would start from.  A tiny CNN, four 16x16 images a batch and one step keep it fast.
    """
    torch.manual_seed(0)
    model = FiveLayerCNN((2, 2, 2, 2, 2), dropout=0.1, pool_first=True)
    optimizer = torch.optim.SGD(p2_cnn.weight_decay_groups(model, 5e-4), lr=0.1, momentum=0.9, nesterov=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))) for _ in range(2)]
    shares = p2_cnn.step_breakdown(model, batches, optimizer, steps=1)   # one warm-up pass, one profiled step
    assert shares["convolution_share"] + shares["rest_of_model_share"] + shares["data_share"] == pytest.approx(1)
    changed = [k for k, v in before.items() if not torch.equal(v, model.state_dict()[k])]
    assert changed == [], f"profiling changed {changed} before fit()"
    assert optimizer.state_dict()["state"] == {}, "profiling left momentum buffers in the optimiser"
    assert all(p.grad is None for p in model.parameters()), "profiling left gradients on the model"
