"""Measuring speed honestly: latency percentiles, throughput, interleaved comparisons.

A single timing means little on a shared machine.  The rules here:

* **warm up first** - the first calls pay for lazy initialisation, caches,
  allocator growth; they are run and thrown away;
* **report the distribution** - mean, p50, p95, p99 and spread, not a best
  case; a service is judged by its tail;
* **interleave what you compare** - run A, B, A, B... in rounds (rotating who
  goes first) so that a slow minute on the machine hits both, then report the
  median of the per-round ratios;
* **control threads** - on a 2-core CPU, one thread per process is often
  faster and always steadier; say which you used;
* **stamp the environment** - CPU, cores, device, library versions, stored
  with every result as JSON under ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
# bandit B404: git runs with a fixed argv for the environment stamp, never through a shell
import subprocess  # nosec B404
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"

Clock = Callable[[], float]


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (NumPy's default) of an already sorted list."""
    if not sorted_values:
        raise ValueError("no samples")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class LatencyStats:
    """Summary of latency samples, in milliseconds."""

    n: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    samples_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_seconds(cls, samples: list[float]) -> "LatencyStats":
        ms = [s * 1000.0 for s in samples]
        ordered = sorted(ms)
        return cls(n=len(ms), mean_ms=statistics.fmean(ms),
                   std_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0,
                   p50_ms=percentile(ordered, 50), p95_ms=percentile(ordered, 95),
                   p99_ms=percentile(ordered, 99), min_ms=ordered[0], max_ms=ordered[-1], samples_ms=ms)

    def items_per_s(self, items_per_call: int = 1) -> float:
        """Throughput implied by the mean latency."""
        return items_per_call * 1000.0 / self.mean_ms if self.mean_ms > 0 else float("inf")

    def to_dict(self, with_samples: bool = False) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples_ms")
        return d


def time_calls(fn: Callable[[], object], repeats: int, clock: Clock = time.perf_counter) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``fn``."""
    samples = []
    for _ in range(repeats):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


def measure_latency(fn: Callable[[], object], *, warmup: int = 10, repeats: int = 100,
                    clock: Clock = time.perf_counter) -> LatencyStats:
    """Call ``fn`` ``warmup`` times (discarded), then time ``repeats`` calls."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for _ in range(warmup):
        fn()
    return LatencyStats.from_seconds(time_calls(fn, repeats, clock))


def measure_throughput(fn: Callable[[], object], items_per_call: int, *, warmup: int = 3,
                       repeats: int = 20, clock: Clock = time.perf_counter) -> dict:
    """Items per second over ``repeats`` calls, with the latency summary beside it."""
    stats = measure_latency(fn, warmup=warmup, repeats=repeats, clock=clock)
    total_s = sum(stats.samples_ms) / 1000.0
    return {"items_per_s": items_per_call * repeats / total_s if total_s > 0 else float("inf"),
            "items_per_call": items_per_call, "latency": stats.to_dict()}


ROUND_STATISTICS = ("mean_ms", "p50_ms", "p95_ms")


@dataclass
class Comparison:
    """Result of :func:`compare`: per-candidate stats and speed ratios against the baseline."""

    baseline: str
    rounds: int
    stats: dict[str, LatencyStats]
    round_stats: dict[str, list[LatencyStats]]  # one summary per candidate per round
    order: list[str]

    @property
    def round_medians_ms(self) -> dict[str, list[float]]:
        return {n: [s.p50_ms for s in per_round] for n, per_round in self.round_stats.items()}

    def ratios(self, slower: str, faster: str, statistic: str = "p50_ms") -> list[float]:
        """Per-round ``statistic(slower) / statistic(faster)``: above 1 means ``faster`` is faster."""
        return [getattr(s, statistic) / getattr(f, statistic) if getattr(f, statistic) > 0 else float("inf")
                for s, f in zip(self.round_stats[slower], self.round_stats[faster])]

    def speedup(self, slower: str, faster: str, statistic: str = "p50_ms") -> float:
        """Median over rounds of :meth:`ratios`: robust to one noisy round."""
        return statistics.median(self.ratios(slower, faster, statistic))

    @property
    def speedup_vs_baseline(self) -> dict[str, float]:
        """Median over rounds of the baseline's median latency over each candidate's."""
        return {n: self.speedup(self.baseline, n) for n in self.stats}

    @property
    def speedup_spread(self) -> dict[str, tuple[float, float]]:
        """Smallest and largest per-round ratio behind :attr:`speedup_vs_baseline`."""
        return {n: (min(r), max(r)) for n in self.stats for r in [self.ratios(self.baseline, n)]}

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "rounds": self.rounds, "order": self.order,
                "stats": {k: v.to_dict() for k, v in self.stats.items()},
                "round_stats": {n: {stat: [getattr(s, stat) for s in per_round] for stat in ROUND_STATISTICS}
                                for n, per_round in self.round_stats.items()},
                "speedup_vs_baseline": self.speedup_vs_baseline,
                "speedup_spread": {k: list(v) for k, v in self.speedup_spread.items()}}

    def table(self) -> str:
        """A markdown table: one row per candidate."""
        lines = ["| candidate | mean ms | p50 ms | p95 ms | p99 ms | speedup (median of rounds) |",
                 "|---|---:|---:|---:|---:|---:|"]
        speedup, spread = self.speedup_vs_baseline, self.speedup_spread   # computed once, not per row
        for name, s in self.stats.items():
            lo, hi = spread[name]
            lines.append(f"| {name} | {s.mean_ms:.3f} | {s.p50_ms:.3f} | {s.p95_ms:.3f} | {s.p99_ms:.3f} | "
                         f"{speedup[name]:.2f}x ({lo:.2f}-{hi:.2f}) |")
        return "\n".join(lines)


def compare(candidates: dict[str, Callable[[], object]], *, rounds: int = 5, repeats: int = 20,
            warmup: int = 5, clock: Clock = time.perf_counter) -> Comparison:
    """Time several callables side by side, interleaved in rounds.

    Each round times ``repeats`` calls of every candidate, one candidate after
    another, with the starting candidate rotating from round to round.  The
    first candidate is the baseline; ``speedup_vs_baseline[name]`` is the median
    over rounds of ``median(baseline) / median(name)`` in that round, and
    :meth:`Comparison.speedup` gives the same for any pair and any of the mean,
    p50 or p95 (``round_stats`` keeps every round's summary).
    """
    names = list(candidates)
    if not names:
        raise ValueError("nothing to compare")
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    round_stats: dict[str, list[LatencyStats]] = {n: [] for n in names}
    order: list[str] = []
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            order.append(name)
            taken = time_calls(candidates[name], repeats, clock)
            samples[name].extend(taken)
            round_stats[name].append(LatencyStats.from_seconds(taken))
    return Comparison(baseline=names[0], rounds=rounds,
                      stats={n: LatencyStats.from_seconds(samples[n]) for n in names},
                      round_stats=round_stats, order=order)


@contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)``; restore afterwards. ``None``: leave as is."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- environment stamp


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), which can be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _git(*args: str, directory: Path | None = None) -> str | None:
    """Output of a read-only git command in this checkout; None where git or the repository is missing.

    ``--no-optional-locks`` keeps these reads from taking git's index lock
    from under a learner's own git command.
    """
    try:
        # bandit B603 B607: a fixed git argv, no shell; git from PATH, as a developer runs it
        out = subprocess.run(["git", "--no-optional-locks", *args], capture_output=True, text=True, timeout=5,  # nosec B603 B607
                             cwd=directory or Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _git_dirty(directory: Path | None = None) -> bool | None:
    """True when tracked files differ from the commit: the figure then comes from code not yet committed.

    The results folder does not count: a benchmark rewrites its own result file as it goes.
    """
    out = _git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
               ":(top,exclude)benchmarks/results", directory=directory)
    return None if out is None else bool(out.strip())


def _git_commit() -> str | None:
    out = _git("rev-parse", "--short", "HEAD")
    return (out or "").strip() or None


def environment_stamp() -> dict:
    """What produced a figure: hardware, threads, device, library versions, time, commit."""
    import torch

    stamp = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "numpy": _version("numpy"),
        "onnxruntime": _version("onnxruntime"),
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": _git_commit(),
        "git_uncommitted_changes": _git_dirty(),
    }
    return stamp


def save_result(name: str, result: dict, directory: str | Path | None = None) -> Path:
    """Write ``{"name", "environment", "result"}`` to ``<directory>/<name>.json``."""
    from common.runs import write_json

    directory = Path(directory) if directory is not None else RESULTS_DIR
    path = directory / f"{name}.json"
    write_json(path, {"name": name, "environment": environment_stamp(), "result": result})
    return path
