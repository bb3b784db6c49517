"""p3-load: how many requests per second the service sustains, with micro-batching on and off.

Three measurements, each in a server process of its own, started exactly as
the container starts it:

1. **Throughput**, batching on and off, at each concurrency (default 1, 16
   and 64).  The modes alternate over rounds, so a noisy minute on the
   machine hits both.  Per run: requests/s, p50/p95/p99 latency, errors (any
   status other than 200, any broken connection), and the CPU both sides used.
2. **What one model call costs** at each batch size, in this process, with
   the service's thread setting: the figure that says how much batching can
   save at all (on a CPU, little: a compute-bound CNN costs about the same
   per image at batch 1 as at batch 32; what a batch saves is the fixed cost
   of each call, and the hand-overs between the event loop and the model's
   thread).
3. **``/healthz`` under a stream of image bombs**: while a few clients send
   small PNGs that decode to tens of megabytes (a 1 x 16,777,216 line, a
   flat 4096 x 4096 square, and both shapes again at the service's own
   ``MAX_PIXELS``; built here with zlib, tens of KB each), another client
   polls ``/healthz``.  Its median and p95 latency say whether the event loop
   stays free: decoding on the loop freezes every connection, the liveness
   probe included (its timeout is 2 s).  The replies are counted per bomb:
   a 413 is a bomb refused from its header, a 200 one decoded in full.

A load generator must cost far less than the server it measures, or it
measures itself.  This one is raw ``asyncio`` streams: ``C`` connections kept
alive, each sending a pre-built HTTP request (the bytes are built once) and
reading the reply's status line, headers and ``Content-Length`` body - no
HTTP library, no per-request allocation beyond the reply.  It reports its own
CPU time next to the server's, read from ``/proc``, so you can see who used
the cores.

Run: ``make p3-load`` (after ``make p3-onnx``).  Writes
``runs/p3-load/metrics.json`` and ``benchmarks/results/p3_load.json``.
``ARGS=--bombs-only`` runs the third measurement alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import struct
import sys
import time
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchmark import usable_cores  # noqa: E402
from common.runs import describe_run, runs_root, upstream_run, write_json  # noqa: E402
from phase3_production.http_client import free_port, png_bytes, wait_until_ready  # noqa: E402
from phase3_production.p3_serve import start_server, stop_server  # noqa: E402

READ_TIMEOUT_S = 60.0   # one reply; a server that takes longer is stuck, and the run says so


def build_request(port: int, body: bytes) -> bytes:
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def read_reply(reader: asyncio.StreamReader) -> int:
    """Status code of one HTTP/1.1 reply; the body is read (and dropped) by its Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    await reader.readexactly(length)
    return status


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of an already sorted list; NaN for an empty one."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(round(q / 100 * (len(sorted_values) - 1))))]


async def run_load(port: int, requests: list[bytes], concurrency: int, total: int) -> dict:
    """``total`` requests over ``concurrency`` keep-alive connections; latencies and failures."""
    latencies: list[float] = []
    failures: dict[str, int] = {}
    counter = iter(range(total))

    async def worker():
        reader = writer = None
        for i in counter:
            payload = requests[i % len(requests)]
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                start = time.perf_counter()
                writer.write(payload)
                status = await read_reply(reader)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    failures[str(status)] = failures.get(str(status), 0) + 1
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    cpu_start, wall_start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    ms = sorted(1000 * t for t in latencies)
    return {"requests": total, "concurrency": concurrency, "seconds": wall, "requests_per_s": total / wall,
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
            "errors": sum(failures.values()), "error_kinds": failures, "load_generator_cpu_s": cpu}


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(model_dir: Path, images: np.ndarray, *, batching: bool, concurrency: int, total: int,
            extra_env: dict | None = None, log_path: Path | None = None) -> dict:
    """Start a server in the given mode, warm it up, run the load, stop it."""
    port = free_port()
    env = {"BATCHING": "on" if batching else "off", "MAX_QUEUE": str(max(256, 4 * concurrency)),
           **(extra_env or {})}
    process = start_server(model_dir, port, env, log_path)
    try:
        wait_until_ready(port, process=process)
        requests = [build_request(port, png_bytes(image)) for image in images]
        asyncio.run(run_load(port, requests, concurrency, min(total, 200)))          # warm-up, not counted
        server_cpu = process_cpu_seconds(process.pid)
        result = asyncio.run(run_load(port, requests, concurrency, total))
        result["server_cpu_s"] = process_cpu_seconds(process.pid) - server_cpu
    finally:
        stop_server(process)
    result["batching"] = batching
    return result


# --------------------------------------------------------------------------- what one model call costs

def model_cost_by_batch(model_dir: Path, sizes: tuple[int, ...], rounds: int) -> list[dict]:
    """Milliseconds per call and per image at each batch size, for the model the service loads.

    The same file and thread setting as the service (``ORT_THREADS``, default
    1), called directly: no HTTP, no batcher.  The sizes are interleaved in
    rounds and the medians kept.  ``cpu_ms_per_image`` is the calling
    thread's CPU time, which other programs on a shared machine disturb far
    less than the wall clock.
    """
    from phase3_production.serving.model import ServedModel

    model = ServedModel.load(model_dir, intra_op_threads=int(os.environ.get("ORT_THREADS", "1")))
    rng = np.random.default_rng(0)
    batches = {b: rng.standard_normal((b, *model.input_shape)).astype(np.float32) for b in sizes}
    wall: dict[int, list[float]] = {b: [] for b in sizes}
    cpu: dict[int, list[float]] = {b: [] for b in sizes}
    for b in sizes:
        model.predict_probabilities(batches[b])             # warm-up: ONNX Runtime plans each new shape once
    for _ in range(rounds):
        for b in sizes:
            calls = max(1, 32 // b)                          # about the same images per timing at every size
            cpu_start, wall_start = time.thread_time(), time.perf_counter()
            for _ in range(calls):
                model.predict_probabilities(batches[b])
            wall[b].append((time.perf_counter() - wall_start) / calls)
            cpu[b].append((time.thread_time() - cpu_start) / calls)
    return [{"batch": b, "ms_per_call": 1000 * statistics.median(wall[b]),
             "ms_per_image": 1000 * statistics.median(wall[b]) / b,
             "cpu_ms_per_image": 1000 * statistics.median(cpu[b]) / b} for b in sizes]


# --------------------------------------------------------------------------- /healthz under image bombs

def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@lru_cache(maxsize=None)
def png_bomb(width: int, height: int, channels: int) -> bytes:
    """A valid PNG of ``width x height`` black pixels: tens of KB on the wire, megabytes once decoded.

    Each row is a filter byte (0: none) and ``width * channels`` zero bytes;
    deflate squeezes such runs about 1,000 to 1, so 16.7 million RGBA pixels
    (64 MiB decoded) fit in about 65 KB - under every byte limit, within the
    pixel limit, and a full decode to pay for.  Built row by row, so the
    4096-line image never needs its 48 MiB at once.
    """
    color_type = {1: 0, 3: 2, 4: 6}[channels]     # grey, RGB, RGBA
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    compressor, row = zlib.compressobj(9), bytes(1 + width * channels)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


ISSUE_BOMBS = {   # name: (width, height, channels): 16,777,216 pixels each, shapes that froze the loop once
    "png_1x16777216_rgba": (16_777_216, 1, 4),
    "png_4096x4096_rgb": (4096, 4096, 3),
}


def bomb_shapes(max_pixels: int) -> dict[str, tuple[int, int, int]]:
    """The bombs to send: the issue's two shapes, and the same two at the service's own pixel limit.

    A service that refuses the big ones from their header (413) must still
    decode those at its limit: those are the ones that test whether the
    decoding happens off the event loop.
    """
    side = math.isqrt(max_pixels)
    return {**ISSUE_BOMBS, f"png_1x{max_pixels}_rgba": (max_pixels, 1, 4), f"png_{side}x{side}_rgb": (side, side, 3)}


def service_max_pixels() -> int:
    """MAX_PIXELS as the server started by this script will read it (its environment is this one's)."""
    from phase3_production.serving.config import Settings

    return Settings.from_env().max_pixels


async def poll_healthz(port: int, until: float, every_s: float) -> tuple[list[float], int]:
    """GET /healthz on one keep-alive connection every ``every_s`` until the loop's clock reaches ``until``.

    Returns (latencies in ms, failures).  A reply slower than READ_TIMEOUT_S counts as a failure.
    """
    loop = asyncio.get_running_loop()
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    latencies, failures = [], 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while loop.time() < until:
            start = time.perf_counter()
            writer.write(request)
            try:
                status = await asyncio.wait_for(read_reply(reader), READ_TIMEOUT_S)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
                failures += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            latencies.append(1000 * (time.perf_counter() - start))
            failures += status != 200
            await asyncio.sleep(every_s)
    finally:
        writer.close()
    return latencies, failures


async def send_bombs(port: int, bombs: list[tuple[str, bytes]], until: float, replies: dict) -> None:
    """Send the bombs in turn on one keep-alive connection until ``until``; count the replies per bomb and status."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        while loop.time() < until:
            name, body = bombs[sent % len(bombs)]
            writer.write(build_request(port, body))
            sent += 1
            try:
                key = str(await asyncio.wait_for(read_reply(reader), READ_TIMEOUT_S))
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                key = type(exc).__name__
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            counts = replies.setdefault(name, {})
            counts[key] = counts.get(key, 0) + 1
    finally:
        writer.close()


def latency_summary(latencies_ms: list[float], failures: int) -> dict:
    """Polls, failures, p50, p95 and max of one series of /healthz latencies."""
    ms = sorted(latencies_ms)
    return {"polls": len(ms), "failures": failures, "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "max_ms": ms[-1] if ms else float("nan")}


async def healthz_while_bombing(port: int, bombs: dict[str, bytes], clients: int, seconds: float,
                                poll_every_s: float) -> dict:
    """``/healthz`` latency alone (for a quarter of ``seconds``, at most one second), then for ``seconds`` while
    ``clients`` send bombs nonstop, each client starting at a different bomb."""
    loop = asyncio.get_running_loop()
    quiet = latency_summary(*await poll_healthz(port, loop.time() + min(1.0, seconds / 4), poll_every_s))
    named = list(bombs.items())
    rotations = [named[i % len(named):] + named[:i % len(named)] for i in range(clients)]
    replies: dict[str, dict[str, int]] = {}
    until = loop.time() + seconds
    polled, *_ = await asyncio.gather(poll_healthz(port, until, poll_every_s),
                                      *(send_bombs(port, rotation, until, replies) for rotation in rotations))
    return {"quiet": quiet, "under_bombs": latency_summary(*polled), "bomb_replies": replies,
            "bombs_sent": sum(sum(counts.values()) for counts in replies.values())}


def measure_healthz_under_bombs(model_dir: Path, *, clients: int, seconds: float, poll_every_s: float = 0.02,
                                log_path: Path | None = None) -> dict:
    """Start a server with its default settings, then :func:`healthz_while_bombing`; stop it."""
    shapes = bomb_shapes(service_max_pixels())
    bombs = {name: png_bomb(*shape) for name, shape in shapes.items()}
    port = free_port()
    process = start_server(model_dir, port, {}, log_path)
    try:
        wait_until_ready(port, process=process)
        result = asyncio.run(healthz_while_bombing(port, bombs, clients, seconds, poll_every_s))
    finally:
        stop_server(process)
    result.update(clients=clients, seconds=seconds, poll_every_ms=1000 * poll_every_s,
                  bombs={name: {"shape": list(shape), "bytes": len(bombs[name])} for name, shape in shapes.items()})
    return result


def bombs_text(report: dict) -> str:
    """The /healthz-under-bombs report in two lines: the latencies, then what each bomb got back."""
    quiet, loaded = report["quiet"], report["under_bombs"]
    sent = "; ".join(f"{name} ({report['bombs'][name]['bytes'] / 1024:.0f} KB): {counts}"
                     for name, counts in report["bomb_replies"].items())
    return (f"/healthz while {report['clients']} clients sent {report['bombs_sent']} image bombs in "
            f"{report['seconds']:g} s: p50 {loaded['p50_ms']:.1f} ms, p95 {loaded['p95_ms']:.1f} ms, "
            f"max {loaded['max_ms']:.1f} ms over {loaded['polls']} polls ({loaded['failures']} failed); "
            f"without bombs: p50 {quiet['p50_ms']:.1f} ms, p95 {quiet['p95_ms']:.1f} ms\n  replies by bomb: {sent}")


# --------------------------------------------------------------------------- the run

def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="default: runs/p3-onnx")
    parser.add_argument("--requests", type=int, default=None, help="per run (default 4,000; quick 300)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None,
                        help="levels to test (default 1 16 64; quick 1 16)")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per level (default 3; quick 1)")
    parser.add_argument("--endurance", type=int, default=None,
                        help="one batched run of this many requests at concurrency 64 (default 10,000; quick 0)")
    parser.add_argument("--max-wait-ms", type=float, default=None,
                        help="the batched server's MAX_WAIT_MS (default: the service's own, 0)")
    parser.add_argument("--batch-threshold", type=int, default=None,
                        help="the batched server's BATCH_THRESHOLD: images in flight from which it batches "
                             "(default: the service's own, MAX_BATCH; 0: batch always)")
    parser.add_argument("--batches-in-flight", type=int, default=None,
                        help="the batched server's BATCHES_IN_FLIGHT (default: the service's own, 2)")
    parser.add_argument("--bomb-clients", type=int, default=None,
                        help="clients sending image bombs while /healthz is polled (default 4; quick 2; 0: skip)")
    parser.add_argument("--bomb-seconds", type=float, default=None, help="how long they send (default 10; quick 0.5)")
    parser.add_argument("--bombs-only", action="store_true", help="only the /healthz-under-bombs measurement")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else upstream_run("p3-onnx")
    if not args.model_dir:
        print(f"  the model: {describe_run(model_dir)}")
    bomb_clients = args.bomb_clients if args.bomb_clients is not None else (2 if args.quick else 4)
    bomb_seconds = args.bomb_seconds or (0.5 if args.quick else 10.0)
    run_dir = runs_root() / "p3-load"
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.bombs_only:
        report = measure_healthz_under_bombs(model_dir, clients=max(1, bomb_clients), seconds=bomb_seconds,
                                             log_path=run_dir / "server-bombs.log")
        print(bombs_text(report))
        write_json(run_dir / "healthz_under_bombs.json", report)
        return {"healthz_under_bombs": report}

    summary = measure_throughput(args, model_dir, run_dir)
    summary["model"] = model_identity(model_dir)
    summary["model_cost_by_batch"] = cost = model_cost_by_batch(
        model_dir, (1, 2, 4, 8, 16, 32), rounds=3 if args.quick else 15)
    print("\n" + cost_markdown(cost))
    summary["healthz_under_bombs"] = None
    if bomb_clients:
        summary["healthz_under_bombs"] = report = measure_healthz_under_bombs(
            model_dir, clients=bomb_clients, seconds=bomb_seconds, log_path=run_dir / "server-bombs.log")
        print("\n" + bombs_text(report))
    write_json(run_dir / "metrics.json", summary)
    if not args.quick and summary["real_data"] and not batcher_env(args):   # the service's own settings only
        from common.benchmark import save_result

        save_result("p3_load", summary, directory=args.results_dir)
    return summary


def model_identity(model_dir: Path) -> dict:
    """Which model file the servers loaded: its manifest's sha256, size and source checkpoint."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return {"dir": str(model_dir), "file": manifest.get("onnx_file"), "sha256": manifest.get("sha256"),
            "bytes": manifest.get("bytes"), "source_checkpoint": manifest.get("source_checkpoint")}


def batcher_env(args) -> dict:
    """The batcher settings given on the command line, as the server's environment variables."""
    chosen = {"MAX_WAIT_MS": args.max_wait_ms, "BATCH_THRESHOLD": args.batch_threshold,
              "BATCHES_IN_FLIGHT": args.batches_in_flight}
    return {name: str(value) for name, value in chosen.items() if value is not None}


def measure_throughput(args, model_dir: Path, run_dir: Path) -> dict:
    """Measurement 1 (and the endurance run): the table of batching on / off per concurrency."""
    total = args.requests or (300 if args.quick else 4000)
    levels = args.concurrency or ([1, 16] if args.quick else [1, 16, 64])
    rounds = args.rounds or (1 if args.quick else 3)
    endurance = args.endurance if args.endurance is not None else (0 if args.quick else 10_000)

    from phase2_depth.data import cifar_splits

    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, subset=(200, 100, 256) if args.quick else None)
    images = splits.test.subset(256, seed=0).images.numpy()
    print(f"[p3-load] {model_dir}, {len(images)} real test images as PNG, {total:,} requests per run, "
          f"concurrency {levels}, {rounds} rounds alternating batching on/off, {usable_cores()} cores")

    settings_env = batcher_env(args)
    runs: list[dict] = []
    for concurrency in levels:
        for r in range(rounds):
            for batching in ((True, False) if r % 2 == 0 else (False, True)):
                result = measure(model_dir, images, batching=batching, concurrency=concurrency, total=total,
                                 extra_env=settings_env)
                runs.append(result)
                print(f"  c={concurrency:>3} batching {'on ' if batching else 'off'} round {r + 1}: "
                      f"{result['requests_per_s']:7.0f} req/s  p50 {result['p50_ms']:6.2f}  p95 {result['p95_ms']:6.2f}"
                      f"  p99 {result['p99_ms']:7.2f} ms  errors {result['errors']}  cpu: server "
                      f"{result['server_cpu_s']:.1f}s, load generator {result['load_generator_cpu_s']:.1f}s",
                      flush=True)

    table = summarise(runs, levels)
    endurance_run = None
    if endurance:
        print(f"\n  endurance: {endurance:,} requests at concurrency 64, batching on")
        endurance_run = measure(model_dir, images, batching=True, concurrency=64, total=endurance,
                                extra_env=settings_env, log_path=run_dir / "server-endurance.log")
        print(f"  {endurance_run['requests_per_s']:.0f} req/s, p99 {endurance_run['p99_ms']:.1f} ms, "
              f"errors {endurance_run['errors']}")
    print("\n" + markdown(table))
    (run_dir / "table.md").write_text(markdown(table) + "\n")
    top = max(levels)
    return {"table": table, "runs": runs, "endurance": endurance_run, "requests_per_run": total,
            "max_wait_ms": args.max_wait_ms if args.max_wait_ms is not None else "service default (0)",
            "batch_threshold": args.batch_threshold if args.batch_threshold is not None
            else "service default (MAX_BATCH, 32)",
            "batches_in_flight": args.batches_in_flight if args.batches_in_flight is not None
            else "service default (2)",
            "rounds": rounds, "quick": args.quick, "real_data": splits.dataset.real,
            "batching_speedup_by_concurrency": {c: row["speedup"] for c, row in table.items()},
            "batching_speedup_at_top_concurrency": table[str(top)]["speedup"],
            "saturation_requests_per_s_batched": table[str(top)]["on"]["requests_per_s"],
            "p50_added_by_batching_at_c1_ms": table["1"]["on"]["p50_ms"] - table["1"]["off"]["p50_ms"]
            if "1" in table else None}


def summarise(runs: list[dict], levels: list[int]) -> dict:
    """Per (concurrency, mode): medians over rounds, and the range of requests/s; the batched/unbatched
    throughput ratio per round (the rounds alternate, so each ratio compares neighbours in time)."""
    table = {}
    for c in levels:
        row = {}
        for mode, flag in (("on", True), ("off", False)):
            chosen = [r for r in runs if r["concurrency"] == c and r["batching"] == flag]
            row[mode] = {k: statistics.median(r[k] for r in chosen)
                         for k in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_s",
                                   "load_generator_cpu_s")}
            row[mode]["requests_per_s_range"] = [min(r["requests_per_s"] for r in chosen),
                                                 max(r["requests_per_s"] for r in chosen)]
            # CPU per request: what the other programs on a shared machine disturb least
            row[mode]["server_cpu_ms_per_request"] = statistics.median(1000 * r["server_cpu_s"] / r["requests"]
                                                                       for r in chosen)
            row[mode]["errors"] = sum(r["errors"] for r in chosen)
        on = [r["requests_per_s"] for r in runs if r["concurrency"] == c and r["batching"]]
        off = [r["requests_per_s"] for r in runs if r["concurrency"] == c and not r["batching"]]
        ratios = [a / b for a, b in zip(on, off)]
        row["speedup"], row["speedup_range"] = statistics.median(ratios), [min(ratios), max(ratios)]
        table[str(c)] = row
    return table


def markdown(table: dict) -> str:
    lines = ["| concurrency | batching | requests/s (range) | p50 ms | p95 ms | p99 ms | errors | server CPU s | "
             "server CPU ms per request | load-generator CPU s |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c, row in table.items():
        for mode in ("on", "off"):
            r = row[mode]
            low, high = r["requests_per_s_range"]
            lines.append(f"| {c} | {mode} | {r['requests_per_s']:,.0f} ({low:,.0f}-{high:,.0f}) | {r['p50_ms']:.2f} | "
                         f"{r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} | {r['server_cpu_s']:.1f} | "
                         f"{r['server_cpu_ms_per_request']:.2f} | {r['load_generator_cpu_s']:.1f} |")
    lines.append("")
    lines.append("Batched / unbatched throughput (median of per-round ratios): " + ", ".join(
        f"c={c}: {row['speedup']:.2f}x ({row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f})"
        for c, row in table.items()))
    return "\n".join(lines)


def cost_markdown(cost: list[dict]) -> str:
    """The model's cost per batch size as a Markdown table."""
    lines = ["| batch | ms per call | ms per image | CPU ms per image |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['ms_per_call']:.2f} | {r['ms_per_image']:.3f} | {r['cpu_ms_per_image']:.3f} |"
              for r in cost]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
