"""p1-manual: SimpleNet and its raw-tensor twin are the same function with the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from phase1_foundation import p1_manual
from phase1_foundation.models import RawTwoLayerNet, SimpleNet

pytestmark = getattr(pytest.mark, "p1-manual")


def test_same_weights_give_same_outputs_gradients_and_updates():
    torch.manual_seed(0)
    net = SimpleNet()
    raw = RawTwoLayerNet.from_simple_net(net)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    first = p1_manual.compare_once(net, raw, x, y)
    assert first["outputs"] < p1_manual.SAME_TOLERANCE
    assert max(first["gradients"].values()) < p1_manual.SAME_TOLERANCE
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
        F.cross_entropy(raw(x), y).backward()
        raw.sgd_step(0.1)
    for a, b in zip(net.parameters(), raw.params):
        assert torch.allclose(a, b, atol=1e-6)


def test_raw_twin_does_not_share_storage_with_the_module():
    net = SimpleNet()
    raw = RawTwoLayerNet.from_simple_net(net)
    with torch.no_grad():
        net.fc1.weight.zero_()
    assert raw.params[0].abs().sum() > 0


def test_quick_run_passes_its_check(tmp_path):
    metrics = p1_manual.main(["--quick", "--run-dir", str(tmp_path), "--device", "cpu"])
    assert p1_manual.check(metrics) == []
    assert (tmp_path / "twin_curves.png").is_file()


def test_check_catches_twins_that_disagree():
    metrics = {"first_batch": {"outputs": 0.3, "gradients": {"W1": 0.0}}, "worst_weight_gap": 0.0,
               "test_accuracy": 0.9, "test_accuracy_raw": 0.9, "quick": True}
    assert p1_manual.check(metrics) == ["outputs differ by 0.3"]


@pytest.mark.real_data
def test_one_epoch_on_real_mnist(real_data_dir, tmp_path):
    metrics = p1_manual.main(["--data-dir", str(real_data_dir), "--run-dir", str(tmp_path), "--device", "cpu"])
    assert metrics["data"]["real_data"] and metrics["test_accuracy"] >= p1_manual.TARGET_ACCURACY
    assert p1_manual.check(metrics) == []
