"""bench-p1: the quick run's JSON, and the pieces of the fast path checked against what they replace.

Speed itself is never asserted here (shared, noisy machines); `make bench-p1`
measures it and the README records the result.  What is asserted: the fast
path computes what autograd and the TensorLoader would, and the FLOP count
the JSON's "fraction of peak" rests on is the one PyTorch's own counter gives.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_p1  # noqa: E402

from common.augment import normalize  # noqa: E402
from common.data import Split  # noqa: E402
from phase1_foundation.models import SimpleNet  # noqa: E402

pytestmark = getattr(pytest.mark, "p1-refactor")


def test_quick_benchmark_writes_a_stamped_result_with_flops_beside_the_peak(tmp_path):
    bench_p1.main(["--quick", "--device", "cpu", "--threads", "1", "--results-dir", str(tmp_path)])
    saved = json.loads((tmp_path / "bench_p1_quick.json").read_text())
    result = saved["result"]
    assert saved["environment"]["cpu"] and saved["environment"]["torch"]
    assert saved["environment"]["torch_threads"] == result["threads"] == 1   # the stamp says what the runs used
    assert set(result["median_seconds"]) == {"classic", "fast"}
    assert result["all_reached_target"], result["runs"]
    assert len(result["speedup_per_round"]) == result["rounds"] == 1

    flops = result["flops"]
    assert flops["per_training_image"] == 409_088
    for name in ("classic", "fast"):   # achieved = FLOPs x images / training seconds, from the runs themselves
        (run,) = result["runs"][name]
        assert flops["achieved_gflops"][name] == pytest.approx(409_088 * run["images"] / run["seconds"] / 1e9)
    (peak,) = flops["matmul_peak_gflops_per_round"]
    assert math.isfinite(peak) and peak > 0 and flops["matmul_best_block_gflops_per_round"][0] >= peak
    assert flops["fast_fraction_of_peak"] == pytest.approx(flops["achieved_gflops"]["fast"] / peak)
    assert flops["fast_fraction_of_peak"] > 0


def test_the_written_out_backward_pass_gives_autograds_gradients():
    torch.manual_seed(0)
    model = SimpleNet()
    x = torch.randn(64, 784) * 3       # wide inputs: some hidden units are cut off by the ReLU, some not
    y = torch.randint(0, 10, (64,))
    F.cross_entropy(model(x), y).backward()
    expected = [p.grad.clone() for p in model.parameters()]

    bench_p1.SimpleNetStep(model, 64)(x, y)
    for (name, p), want in zip(model.named_parameters(), expected):
        torch.testing.assert_close(p.grad, want, rtol=1e-5, atol=1e-6, msg=f"gradient of {name}")
    with pytest.raises(ValueError, match="batches of 64"):
        bench_p1.SimpleNetStep(model, 64)(x[:10], y[:10])


def test_the_flop_count_is_what_pytorchs_counter_counts_for_a_training_step():
    from torch.utils.flop_counter import FlopCounterMode

    model, x, y = SimpleNet(), torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    assert counter.get_total_flops() == 32 * bench_p1.train_flops_per_image(model) == 32 * 409_088
    pairs = bench_p1.step_matmul_operands(32, model, "cpu")   # what matmul_peak times is that same work
    assert sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs) == counter.get_total_flops()


def test_flat_batches_are_the_normalised_images_each_once_an_epoch():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (70, 1, 28, 28), generator=g, dtype=torch.uint8), torch.arange(70))
    batches = bench_p1.FlatBatches(split, 16, seed=3)
    assert len(batches) == 4                                   # 70 // 16: the partial batch is dropped
    seen = []
    for x, y in batches.epoch(0):
        assert x.shape == (16, 784) and x.dtype == torch.float32
        torch.testing.assert_close(x, normalize(split.images[y], bench_p1.MEAN, bench_p1.STD).view(16, -1))
        seen += y.tolist()
    assert len(set(seen)) == 64                                # no image twice in an epoch
    again = [y.tolist() for _, y in batches.epoch(0)]
    assert sum(again, []) == seen                              # the shuffle depends on (seed, epoch) only
    assert [y.tolist() for _, y in batches.epoch(1)] != again
    with pytest.raises(ValueError, match="between 1 and the 70"):
        bench_p1.FlatBatches(split, 71)


def test_matmul_peak_reports_a_rate_and_refuses_an_empty_measurement():
    peak = bench_p1.matmul_peak(8, SimpleNet(), "cpu", blocks=2, steps=1)
    assert 0 < peak["gflops"] <= peak["best_block_gflops"]
    with pytest.raises(ValueError, match="at least 1"):
        bench_p1.matmul_peak(8, SimpleNet(), "cpu", blocks=0)
