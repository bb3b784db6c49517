"""Benchmark statistics on callables of known duration, and the interleaving of comparisons."""

from __future__ import annotations

import json
import math
import time

import pytest

from common.benchmark import (LatencyStats, compare, environment_stamp, measure_latency, measure_throughput,
                              percentile, save_result, torch_threads)

pytestmark = pytest.mark.foundation


class FakeClock:
    """A clock that the timed callable advances by an exact, scripted amount."""

    def __init__(self, durations_s):
        self.now, self.durations = 0.0, list(durations_s)

    def __call__(self):
        return self.now

    def work(self):
        self.now += self.durations.pop(0)


def test_statistics_are_exact_on_a_scripted_clock():
    durations = [i / 1000 for i in range(1, 101)]  # 1 ms, 2 ms, ... 100 ms
    clock = FakeClock([0.5] * 3 + durations)       # three warm-up calls of 500 ms, discarded
    stats = measure_latency(clock.work, warmup=3, repeats=100, clock=clock)
    assert stats.n == 100 and stats.min_ms == pytest.approx(1) and stats.max_ms == pytest.approx(100)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p95_ms == pytest.approx(95.05)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.std_ms == pytest.approx(math.sqrt(100 * 101 / 12))   # sample std of 1..100: sqrt(n(n+1)/12)
    assert stats.items_per_s(8) == pytest.approx(8 * 1000 / 50.5)


def test_percentile_matches_numpy():
    import numpy as np

    values = sorted(np.random.default_rng(0).exponential(size=333).tolist())
    for q in (0, 50, 90, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_real_callable_of_known_duration():
    def busy_2ms():
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass

    # A call can never take less than its 2 ms; on a busy machine (two test workers on two cores) it can
    # take several times longer, so the upper bounds only rule out a wrong unit (seconds, microseconds)
    # or calls counted as items.
    stats = measure_latency(busy_2ms, warmup=2, repeats=30)
    assert 2.0 <= stats.p50_ms < 20.0, stats
    assert stats.min_ms <= stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    throughput = measure_throughput(busy_2ms, items_per_call=10, warmup=1, repeats=10)
    assert 500 < throughput["items_per_s"] <= 5000   # 10 items per call of >= 2 ms; 500 would be calls per second


def test_compare_interleaves_rounds_and_reports_ratios():
    calls = []
    durations = {"slow": 0.004, "fast": 0.001}
    clock = FakeClock([])

    def make(name):
        def run():
            calls.append(name)
            clock.now += durations[name]
        return run

    result = compare({"slow": make("slow"), "fast": make("fast")}, rounds=4, repeats=3, warmup=1, clock=clock)
    assert result.order == ["slow", "fast", "fast", "slow", "slow", "fast", "fast", "slow"]
    assert calls[:2] == ["slow", "fast"]  # warm-up of each, then the rounds
    assert result.baseline == "slow"
    assert result.speedup_vs_baseline["fast"] == pytest.approx(4.0)
    assert result.speedup_vs_baseline["slow"] == pytest.approx(1.0)
    assert result.stats["fast"].n == 12 and result.stats["fast"].p50_ms == pytest.approx(1.0)
    assert "| fast |" in result.table()


def test_speedup_on_mean_and_tail_is_computed_per_round_then_medianed():
    """A candidate that is fast at the median but has a slow tail: p50 and p95 ratios must differ."""
    clock = FakeClock([])
    spiky_calls = iter(range(10_000))

    def steady():
        clock.now += 0.002

    def spiky():  # 1 ms, except every third call takes 10 ms
        clock.now += 0.010 if next(spiky_calls) % 3 == 2 else 0.001

    result = compare({"steady": steady, "spiky": spiky}, rounds=3, repeats=3, warmup=0, clock=clock)
    assert result.speedup("steady", "spiky", "p50_ms") == pytest.approx(2.0)
    assert result.speedup("steady", "spiky", "mean_ms") == pytest.approx(0.5)   # 2 / (12/3)
    assert result.speedup("steady", "spiky", "p95_ms") == pytest.approx(2.0 / 9.1)
    assert result.ratios("steady", "spiky") == pytest.approx([2.0, 2.0, 2.0])
    assert result.to_dict()["round_stats"]["spiky"]["p50_ms"] == pytest.approx([1.0, 1.0, 1.0])


def test_thread_count_is_restored():
    import torch

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_environment_stamp_and_saved_result(tmp_path):
    stamp = environment_stamp()
    for key in ("cpu", "logical_cores", "torch", "onnxruntime", "numpy", "python", "cuda_available",
                "torch_threads", "timestamp_utc"):
        assert key in stamp, key
    assert stamp["logical_cores"] >= 1 and stamp["cpu"]
    path = save_result("unit", {"stats": LatencyStats.from_seconds([0.001, 0.002]).to_dict()}, directory=tmp_path)
    saved = json.loads(path.read_text())
    assert path.name == "unit.json" and saved["environment"]["torch"] == stamp["torch"]
    assert saved["result"]["stats"]["mean_ms"] == pytest.approx(1.5)


def test_stamp_says_when_the_code_differs_from_its_commit(tmp_path):
    import subprocess

    from common.benchmark import _git_dirty

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "model.py").write_text("a = 1\n")
    git("add", "model.py")
    git("commit", "-q", "-m", "first")
    assert _git_dirty(tmp_path) is False
    (tmp_path / "model.py").write_text("a = 2\n")
    assert _git_dirty(tmp_path) is True
    assert "git_uncommitted_changes" in environment_stamp()
