"""bench-tta's code path in quick mode: a race runs, stops at its target, and records its clock per epoch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_tta  # noqa: E402

pytestmark = getattr(pytest.mark, "p1-refactor")


def test_quick_race_reaches_its_target_and_writes_a_stamped_result(tmp_path):
    summary = bench_tta.main(["--quick", "--device", "cpu", "--results-dir", str(tmp_path)])
    run = summary["runs"][0]
    assert run["reached"] and summary["best_seconds"] == pytest.approx(run["seconds"])
    assert run["trace"][-1]["test_accuracy"] >= summary["target_accuracy"] == 0.90
    assert all(t["test_accuracy"] < 0.90 for t in run["trace"][:-1])   # it stopped at the first epoch there
    saved = json.loads((tmp_path / "bench_tta_mnist-mlp_cpu_quick.json").read_text())
    assert saved["environment"]["torch"] and saved["result"]["device"] == "cpu"
    picture = tmp_path / "bench_tta_mnist-mlp_cpu_quick.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture.unlink()
    bench_tta.main(["--plot", str(tmp_path / "bench_tta_mnist-mlp_cpu_quick.json")])   # redrawn from the file
    assert picture.stat().st_size > 10_000


def test_a_recipe_counts_only_if_every_seed_reached_and_reports_the_median():
    fast_but_flaky = {"batch_size": 4096}
    steady = {"batch_size": 1024}

    def run(recipe, seed, reached, seconds, epochs=5):
        return {"recipe": recipe, "seed": seed, "reached": reached, "seconds": seconds, "epochs": epochs,
                "best_accuracy": 0.981 if reached else 0.979, "trace": []}

    runs = [run(fast_but_flaky, 0, True, 0.2), run(fast_but_flaky, 1, False, 0.3), run(fast_but_flaky, 2, True, 0.2),
            run(steady, 0, True, 0.9), run(steady, 1, True, 0.5, 6), run(steady, 2, True, 0.7, 7)]
    summary = bench_tta.summarise("mnist-mlp", 0.98, "cuda", runs, warmup_seconds=0.8)
    flaky, kept = summary["recipes"]
    assert flaky["reached"] == 2 and flaky["median_seconds"] is None        # 2 of 3 seeds is not a result
    assert kept["median_seconds"] == 0.7 and kept["median_epochs"] == 6
    assert summary["best_recipe"] == steady and summary["best_seconds"] == 0.7
    assert summary["warmup_seconds"] == 0.8 and "warm-up" in summary["clock"]


def test_a_diverging_recipe_loses_the_race_without_stopping_the_others():
    class DivergesInEpochOne:
        def fit(self, loader, on_epoch_end):
            raise FloatingPointError("epoch 1: training loss is nan")

    result = bench_tta.race(DivergesInEpochOne(), [], [], 0.98)
    assert result["reached"] is False and "nan" in result["diverged"]
    assert result["epochs"] == 0 and result["best_accuracy"] == 0.0


def test_recipes_must_be_at_least_one():
    with pytest.raises(SystemExit):
        bench_tta.main(["--quick", "--device", "cpu", "--recipes", "0"])
