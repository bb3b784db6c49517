"""bench-p2's code path in quick mode: both input pipelines train the same CNN, the JSON says where time goes.

Speed is never asserted here (shared, noisy machines); `make bench-p2` measures it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = getattr(pytest.mark, "p2-cnn")


@pytest.mark.slow
def test_quick_benchmark_times_both_pipelines_and_their_parts(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_p2.py"), "--quick", "--device", "cpu",
                          "--results-dir", str(tmp_path)], check=True, cwd=ROOT, capture_output=True, text=True)
    saved = json.loads((tmp_path / "bench_p2_cpu_quick.json").read_text())
    result = saved["result"]
    assert saved["environment"]["cpu"] and result["device"] == "cpu"
    assert set(result["images_per_s_median"]) == {"classic", "fast", "classic_data_only", "fast_data_only",
                                                  "model_only"}
    assert all(v > 0 for v in result["images_per_s_median"].values())
    assert result["fast_vs_classic_median_of_rounds"] > 0 and len(result["fast_vs_classic_per_round"]) == 1
    # The classic path really read image files from disk (PNG stand-ins offline, the JPEG tree with real data).
    assert "image folder" in result["classic_source"] or "PNG files" in result["classic_source"]
    assert "fast / classic" in out.stdout
