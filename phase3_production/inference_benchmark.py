"""A fair inference benchmark: the same images through several engines, interleaved in rounds.

The engines (each a function from a float32 NumPy batch to NumPy logits, so
every one pays the same conversions):

* ``pytorch_eager``: the trained ``nn.Module`` under ``torch.inference_mode``;
  Python runs every layer, one dispatch at a time.
* ``pytorch_torchscript``: the model scripted, frozen (weights become
  constants) and ``optimize_for_inference`` (BatchNorm folded into the
  convolutions); the faster PyTorch we can build on a CPU in a second.
* ``ort_fp32``: ONNX Runtime, graph optimisation ``ORT_ENABLE_ALL`` (node
  fusions, the blocked NCHWc layout its convolution kernels like), its
  thread pool told not to spin (see :func:`runtime.onnx_session`).
* ``ort_int8``: the static INT8 QDQ model.  ``ort_int8_dynamic``: the
  dynamic one, kept in the table to show why it is the wrong choice here.
* With CUDA present: ``pytorch_cuda_fp32`` and ``pytorch_cuda_fp16``
  (including the copies to and from the GPU, as a service would pay), and
  ``ort_cuda_fp32`` when the installed ONNX Runtime has the CUDA provider.
  Without CUDA those rows are absent, not estimated.

Threads: torch's and each ONNX Runtime session's intra-op pool are set to the
same count, once with one thread and once with all usable cores.  Each
(threads, batch size) cell is one :func:`compare_engines` call (the same
interleaving as :func:`common.benchmark.compare`), so engines alternate within
rounds and the speedups are medians of per-round ratios.  Each engine's calls
are timed one by one after a warm-up (:func:`time_engine_calls`) and
summarised by their mean and percentiles (:func:`latency_summary`).
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common.benchmark import Clock, Comparison, LatencyStats, torch_threads, usable_cores
from phase3_production.runtime import onnx_session

Runner = Callable[[np.ndarray], np.ndarray]
BASELINE = "pytorch_eager"


@dataclass
class Engine:
    name: str
    description: str
    model_bytes: int
    make_runner: Callable[[int], Runner]   # threads -> run(batch) -> logits
    uses_cuda: bool = False


def ort_runner(path: Path, threads: int, providers=("CPUExecutionProvider",), spinning: bool = False) -> Runner:
    session = onnx_session(path, threads, providers=tuple(providers), spinning=spinning)
    input_name = session.get_inputs()[0].name
    return lambda x: session.run(None, {input_name: x})[0]


def torch_runner(module: torch.nn.Module | torch.jit.ScriptModule, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> Runner:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(x).to(device=device, dtype=dtype, non_blocking=False)
            return module(batch).float().cpu().numpy()   # .cpu() waits for the GPU: the timing is honest
    return run


def torchscript_frozen(model: torch.nn.Module) -> torch.jit.ScriptModule:
    """Script, freeze and optimise for inference (folds BatchNorm into the preceding convolution)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript announces its own deprecation
        scripted = torch.jit.script(model.eval())
        return torch.jit.optimize_for_inference(torch.jit.freeze(scripted))


def build_engines(model: torch.nn.Module, checkpoint: Path, onnx_paths: dict[str, Path],
                  cuda: bool | None = None, ort_spinning: bool = False) -> list[Engine]:
    """The engines to compare; ``onnx_paths`` maps ``fp32``/``int8``/``int8_dynamic`` to files."""
    import onnxruntime as ort

    model = model.eval().cpu()
    script = torchscript_frozen(model)
    pt_bytes = Path(checkpoint).stat().st_size
    engines = [
        Engine(BASELINE, "PyTorch eager, inference_mode", pt_bytes, lambda t: torch_runner(model)),
        Engine("pytorch_torchscript", "TorchScript frozen + optimize_for_inference", pt_bytes,
               lambda t: torch_runner(script)),
    ]
    described = {"fp32": "ONNX Runtime fp32, ORT_ENABLE_ALL", "int8": "ONNX Runtime static INT8 (QDQ, per-channel)",
                 "int8_dynamic": "ONNX Runtime dynamic INT8"}
    for key, path in onnx_paths.items():
        engines.append(Engine(f"ort_{key}", described[key], Path(path).stat().st_size,
                              lambda t, p=path: ort_runner(p, t, spinning=ort_spinning)))
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        model32 = copy.deepcopy(model).cuda().eval()
        model16 = copy.deepcopy(model).cuda().half().eval()
        engines += [
            Engine("pytorch_cuda_fp32", "PyTorch eager on CUDA, fp32, copies included", pt_bytes,
                   lambda t: torch_runner(model32, "cuda"), uses_cuda=True),
            Engine("pytorch_cuda_fp16", "PyTorch eager on CUDA, fp16 weights and inputs, copies included",
                   pt_bytes // 2, lambda t: torch_runner(model16, "cuda", torch.float16), uses_cuda=True),
        ]
        if "CUDAExecutionProvider" in ort.get_available_providers() and "fp32" in onnx_paths:
            engines.append(Engine("ort_cuda_fp32", "ONNX Runtime CUDA execution provider, fp32",
                                  Path(onnx_paths["fp32"]).stat().st_size,
                                  lambda t: ort_runner(onnx_paths["fp32"], t,
                                                       ("CUDAExecutionProvider", "CPUExecutionProvider")),
                                  uses_cuda=True))
    return engines


def accuracy(run: Runner, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of one engine on ``images`` (already normalised)."""
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = run(images[start:start + batch_size])
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / len(images)


def time_engine_calls(run: Runner, batch: np.ndarray, *, warmup: int, repeats: int,
                      clock: Clock = time.perf_counter) -> list[float]:
    """Seconds taken by each of ``repeats`` calls of ``run(batch)``, after ``warmup`` calls that are not timed.

    The first calls of an engine pay for things later calls do not: memory
    pools growing, kernels chosen and cached, weights paged in, ONNX Runtime
    laying out its buffers.  Run ``warmup`` calls first and throw their times
    away.  Then read ``clock`` (seconds, like ``time.perf_counter``) just
    before and just after **each** call: one sample per call, so the tail of
    the distribution (p95, p99: what the slowest users see) survives.
    Timing the whole loop and dividing by ``repeats`` gives one average and
    hides the tail.

    See https://docs.python.org/3/library/time.html#time.perf_counter
    """
    # EXERCISE p3-onnx.3: time calls after a warm-up
    # hint: warmup untimed calls, then per call: start = clock(); run(batch); append clock() - start
    for _ in range(warmup):
        run(batch)
    samples = []
    for _ in range(repeats):
        start = clock()
        run(batch)
        samples.append(clock() - start)
    return samples
    # END EXERCISE


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    """Mean, median (p50), p95 and p99 of latency samples: ``{"mean_ms", "p50_ms", "p95_ms", "p99_ms"}``.

    Latencies are skewed: most calls are fast, a few are slow (a page fault,
    the OS scheduling another process, a garbage collection).  The mean is
    pulled up by those few; the median (p50) is the typical call; p95 and p99
    say how slow the slowest 5% and 1% are.  The q-th percentile of n sorted
    samples sits at position ``(n - 1) * q / 100``, interpolated linearly
    between the two samples around it when that is not a whole number
    (NumPy's default: ``np.percentile(samples, q)``).  So p0 is the
    smallest sample, p100 the largest and, with 5 samples, p50 is the third.

    See https://numpy.org/doc/stable/reference/generated/numpy.percentile.html
    """
    # EXERCISE p3-onnx.4: mean, median and percentiles
    # hint: sort once; percentile q sits at position (n - 1) * q / 100, between two samples: interpolate
    ordered = sorted(samples_ms)

    def percentile(q: float) -> float:
        position = (len(ordered) - 1) * q / 100
        lower = int(position)
        upper = min(lower + 1, len(ordered) - 1)
        return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)

    return {"mean_ms": sum(ordered) / len(ordered), "p50_ms": percentile(50), "p95_ms": percentile(95),
            "p99_ms": percentile(99)}
    # END EXERCISE


def latency_stats(samples_s: list[float]) -> LatencyStats:
    """The summary the tables and plots read, from per-call seconds."""
    ms = [s * 1000.0 for s in samples_s]
    if not ms:
        raise ValueError("no samples")
    return LatencyStats(n=len(ms), std_ms=statistics.stdev(ms) if len(ms) > 1 else 0.0, min_ms=min(ms),
                        max_ms=max(ms), samples_ms=ms, **latency_summary(ms))


def compare_engines(runners: dict[str, Runner], batch: np.ndarray, *, rounds: int, repeats: int, warmup: int,
                    clock: Clock = time.perf_counter) -> Comparison:
    """Time every engine on ``batch``, interleaved: each round runs each engine's ``repeats`` calls in turn.

    The first engine is the baseline, and the one that starts a round
    rotates.  Every engine is warmed up before the first round.  A slow minute
    on a shared machine then lands on every engine instead of the one that
    happened to run during it, and a speedup is the median of the per-round
    ratios (:meth:`Comparison.speedup`).
    """
    names = list(runners)
    if not names:
        raise ValueError("nothing to compare")
    for name in names:
        time_engine_calls(runners[name], batch, warmup=warmup, repeats=0, clock=clock)
    samples: dict[str, list[float]] = {n: [] for n in names}
    round_stats: dict[str, list[LatencyStats]] = {n: [] for n in names}
    order: list[str] = []
    for r in range(rounds):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            order.append(name)
            taken = time_engine_calls(runners[name], batch, warmup=0, repeats=repeats, clock=clock)
            samples[name].extend(taken)
            round_stats[name].append(latency_stats(taken))
    return Comparison(baseline=names[0], rounds=rounds, stats={n: latency_stats(samples[n]) for n in names},
                      round_stats=round_stats, order=order)


@dataclass
class Grid:
    """Every (threads, batch) cell's comparison, plus what each engine is."""

    engines: list[Engine]
    cells: dict[tuple[int, int], Comparison]

    def rows(self) -> list[dict]:
        """One flat row per (threads, batch, engine): the figures the README table shows."""
        out = []
        for (threads, batch), comparison in self.cells.items():
            for name, stats in comparison.stats.items():
                mean_ratios = comparison.ratios(BASELINE, name, "mean_ms")
                out.append({
                    "threads": threads, "batch": batch, "engine": name,
                    "mean_ms": stats.mean_ms, "p50_ms": stats.p50_ms, "p95_ms": stats.p95_ms,
                    "p99_ms": stats.p99_ms, "std_ms": stats.std_ms, "samples": stats.n,
                    "images_per_s": stats.items_per_s(batch),
                    "speedup_vs_eager": comparison.speedup(BASELINE, name, "mean_ms"),
                    "speedup_vs_eager_range": [min(mean_ratios), max(mean_ratios)],
                    "speedup_vs_eager_p50": comparison.speedup(BASELINE, name, "p50_ms"),
                    "speedup_vs_eager_p95": comparison.speedup(BASELINE, name, "p95_ms"),
                })
        return out


def run_grid(engines: list[Engine], images: np.ndarray, *, batch_sizes=(1, 8, 64), thread_counts=(1, None),
             rounds: int = 5, repeats: dict[int, int] | None = None, warmup: int = 5,
             progress: Callable[[str], None] = print) -> Grid:
    """Time every engine at every batch size and thread count (``None`` = all usable cores).

    ``repeats`` maps batch size to timed calls per engine per round; by default
    about the same wall time per cell whatever the batch.
    """
    repeats = repeats or {b: max(5, 100 // b) for b in batch_sizes}
    if any(b > len(images) for b in batch_sizes):
        raise ValueError(f"need at least {max(batch_sizes)} images for the largest batch, have {len(images)}")
    cells: dict[tuple[int, int], Comparison] = {}
    for threads in thread_counts:
        threads = threads or usable_cores()
        with torch_threads(threads):
            runners = {e.name: e.make_runner(threads) for e in engines
                       if not e.uses_cuda or threads == usable_cores()}
            for batch in batch_sizes:
                x = np.ascontiguousarray(images[:batch])
                progress(f"  {threads} thread{'s' if threads > 1 else ''}, batch {batch:>3}: "
                         f"{len(runners)} engines x {rounds} rounds x {repeats[batch]} calls")
                cells[(threads, batch)] = compare_engines(runners, x, rounds=rounds, repeats=repeats[batch],
                                                          warmup=warmup)
    return Grid(engines=engines, cells=cells)


def markdown_table(rows: list[dict]) -> str:
    """The README's table: latency percentiles, throughput, speedup with its spread, accuracy, size.

    Each row needs ``test_accuracy`` (or None) and ``model_bytes`` beside :meth:`Grid.rows`' figures.
    """
    lines = ["| threads | batch | engine | mean ms | p50 ms | p95 ms | p99 ms | images/s | "
             "speedup vs eager (mean; p95) | test acc. | size MB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["speedup_vs_eager_range"]
        acc = r.get("test_accuracy")
        lines.append(
            f"| {r['threads']} | {r['batch']} | {r['engine']} | {r['mean_ms']:.3f} | {r['p50_ms']:.3f} | "
            f"{r['p95_ms']:.3f} | {r['p99_ms']:.3f} | {r['images_per_s']:,.0f} | "
            f"{r['speedup_vs_eager']:.2f}x ({lo:.2f}-{hi:.2f}); {r['speedup_vs_eager_p95']:.2f}x | "
            f"{'' if acc is None else f'{100 * acc:.2f}%'} | {r['model_bytes'] / 1e6:.2f} |")
    return "\n".join(lines)


def plot_latencies(grid: Grid, path: Path) -> Path:
    """Box plots of every latency sample: one panel per (threads, batch), log scale, one box per engine."""
    from matplotlib.ticker import FuncFormatter

    from common.plots import plt, save

    keys = list(grid.cells)
    thread_rows = sorted({t for t, _ in keys})
    batches = sorted({b for _, b in keys})
    fig, axes = plt.subplots(len(thread_rows), len(batches), figsize=(4.6 * len(batches), 3.8 * len(thread_rows)),
                             squeeze=False)
    for i, threads in enumerate(thread_rows):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            stats = grid.cells[(threads, batch)].stats
            names = list(stats)
            ax.boxplot([stats[n].samples_ms for n in names], whis=(5, 95), showfliers=True,
                       flierprops={"markersize": 2, "alpha": 0.4})
            ax.set_xticks(range(1, len(names) + 1), [n.replace("pytorch_", "pt_") for n in names],
                          rotation=35, ha="right", fontsize=8)
            ax.set_yscale("log")
            for axis in (ax.yaxis,):
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "1235" else ""))
            ax.set_title(f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}", fontsize=10)
            ax.grid(alpha=0.3, axis="y")
            if j == 0:
                ax.set_ylabel("latency per call (ms, log)")
    fig.suptitle("Inference latency per call (box: p25-p75, whiskers: p5-p95, dots: beyond)")
    return save(fig, path)
