"""p1-manual: SimpleNet and its raw-tensor twin are the same function with the same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.data import Split
from common.loaders import TensorLoader
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


@pytest.mark.slow
def test_quick_run_passes_its_check(tmp_path, torch_threads):
    metrics = p1_manual.main(["--quick", "--run-dir", str(tmp_path), "--device", "cpu"])
    assert metrics["torch_threads"] == torch_threads
    assert p1_manual.check(metrics) == []
    assert metrics["float64"]["steps"] == metrics["steps"] > 0
    assert (tmp_path / "twin_curves.png").is_file()


def _agreeing_metrics(**changes) -> dict:
    metrics = {"first_batch": {"outputs": 1e-7, "gradients": {"W1": 1e-8}}, "worst_weight_gap": 2e-3,
               "float64": {"steps": 10, "worst_weight_gap": 1e-15, "test_accuracy": 0.9, "test_accuracy_raw": 0.9},
               "test_accuracy": 0.9, "test_accuracy_raw": 0.9, "quick": True}
    return metrics | changes


def test_check_judges_float64_and_only_reports_float32_drift():
    assert p1_manual.check(_agreeing_metrics()) == []          # 2e-3 of float32 drift is no verdict
    assert p1_manual.check(_agreeing_metrics(first_batch={"outputs": 0.3, "gradients": {"W1": 0.0}})) == [
        "outputs differ by 0.3"]
    drifting = _agreeing_metrics(float64=_agreeing_metrics()["float64"] | {"worst_weight_gap": 1e-6})
    assert [p for p in p1_manual.check(drifting) if "float64" in p]
    apart = _agreeing_metrics(float64=_agreeing_metrics()["float64"] | {"test_accuracy_raw": 0.8})
    assert "the twins reach different test accuracies" in p1_manual.check(apart)


def test_check_asks_for_a_new_run_when_the_float64_block_is_missing():
    old = _agreeing_metrics()
    del old["float64"]
    assert any("run make p1-manual again" in p for p in p1_manual.check(old))


def _random_loader(n=640, seed=0) -> TensorLoader:
    generator = torch.Generator().manual_seed(seed)
    split = Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=generator),
                  torch.randint(0, 10, (n,), generator=generator))
    return TensorLoader(split, 64, mean=(0.5,), std=(0.25,), seed=seed)


def _float64_twins():
    torch.manual_seed(0)
    net = SimpleNet().to(torch.float64)
    return net, RawTwoLayerNet.from_simple_net(net)


def test_float64_twins_agree_far_inside_the_tolerance_at_any_thread_count(torch_threads):
    net, raw = _float64_twins()
    result = p1_manual.train_twins(net, raw, _random_loader(), epochs=2, lr=0.1, dtype=torch.float64)
    assert result["steps"] == 20
    assert result["worst_weight_gap"] < p1_manual.DRIFT_TOLERANCE / 1000


@pytest.mark.parametrize("wrong_step", ["lr off by 0.1%", "gradients never cleared"])
@pytest.mark.slow
def test_float64_drift_catches_a_slightly_wrong_step_at_any_thread_count(torch_threads, wrong_step):
    def step(self, lr):
        with torch.no_grad():
            for p in self.params:
                p -= (lr * 1.001 if wrong_step == "lr off by 0.1%" else lr) * p.grad
                if wrong_step != "gradients never cleared":
                    p.grad = None

    net, raw = _float64_twins()
    raw.sgd_step = step.__get__(raw)
    result = p1_manual.train_twins(net, raw, _random_loader(), epochs=2, lr=0.1, dtype=torch.float64)
    assert result["worst_weight_gap"] > 100 * p1_manual.DRIFT_TOLERANCE


@pytest.mark.real_data
def test_one_epoch_on_real_mnist(real_data_dir, tmp_path, torch_threads):
    metrics = p1_manual.main(["--data-dir", str(real_data_dir), "--run-dir", str(tmp_path), "--device", "cpu"])
    assert metrics["data"]["real_data"] and metrics["test_accuracy"] >= p1_manual.TARGET_ACCURACY
    assert metrics["float64"]["worst_weight_gap"] < p1_manual.DRIFT_TOLERANCE / 1000
    assert p1_manual.check(metrics) == []
