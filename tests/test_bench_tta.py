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
