"""bench-p1's code path in quick mode: both contestants train, the JSON has its stamp and figures.

Speed itself is never asserted here (shared, noisy machines); `make bench-p1`
measures it and the README records the result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = getattr(pytest.mark, "p1-refactor")


def test_quick_benchmark_writes_a_stamped_result(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_p1.py"), "--quick", "--results-dir",
                    str(tmp_path)], check=True, cwd=ROOT, capture_output=True, text=True)
    saved = json.loads((tmp_path / "bench_p1_quick.json").read_text())
    result = saved["result"]
    assert saved["environment"]["cpu"] and saved["environment"]["torch"]
    assert set(result["median_seconds"]) == {"classic", "fast"}
    assert result["all_reached_target"], result["runs"]
    assert len(result["speedup_per_round"]) == result["rounds"] == 1
