"""p3-load: how many requests per second the service sustains, with micro-batching on and off.

A load generator must cost far less than the server it measures, or it
measures itself.  This one is raw ``asyncio`` streams: ``C`` connections kept
alive, each sending a pre-built HTTP request (the bytes are built once) and
reading the reply's status line, headers and ``Content-Length`` body - no
HTTP library, no per-request allocation beyond the reply.  It reports its own
CPU time next to the server's, read from ``/proc``, so you can see who used
the cores.

Each mode runs in its own server process (the container's command with
``BATCHING=on`` or ``off``), and the modes alternate over rounds, so a noisy
minute on the machine hits both.  Per run: requests/s, p50/p95/p99 latency,
errors (any status other than 200, any broken connection).

Run: ``make p3-load`` (after ``make p3-onnx``).  Writes
``runs/p3-load/metrics.json`` and ``benchmarks/results/p3_load.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.benchmark import usable_cores  # noqa: E402
from common.runs import runs_root, write_json  # noqa: E402
from phase3_production.http_client import free_port, png_bytes, wait_until_ready  # noqa: E402
from phase3_production.p3_serve import start_server, stop_server  # noqa: E402


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

    def pct(q):
        return ms[min(len(ms) - 1, int(round(q / 100 * (len(ms) - 1))))] if ms else float("nan")

    return {"requests": total, "concurrency": concurrency, "seconds": wall, "requests_per_s": total / wall,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "errors": sum(failures.values()),
            "error_kinds": failures, "load_generator_cpu_s": cpu}


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
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", default=None)
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else runs_root() / "p3-onnx"
    total = args.requests or (300 if args.quick else 4000)
    levels = args.concurrency or ([1, 16] if args.quick else [1, 16, 64])
    rounds = args.rounds or (1 if args.quick else 3)
    endurance = args.endurance if args.endurance is not None else (0 if args.quick else 10_000)

    from phase2_depth.data import cifar_splits

    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, subset=(200, 100, 256) if args.quick else None)
    images = splits.test.subset(256, seed=0).images.numpy()
    run_dir = runs_root() / "p3-load"
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"[p3-load] {model_dir}, {len(images)} real test images as PNG, {total:,} requests per run, "
          f"concurrency {levels}, {rounds} rounds alternating batching on/off, {usable_cores()} cores")

    wait_env = {} if args.max_wait_ms is None else {"MAX_WAIT_MS": str(args.max_wait_ms)}
    runs: list[dict] = []
    for concurrency in levels:
        for r in range(rounds):
            for batching in ((True, False) if r % 2 == 0 else (False, True)):
                result = measure(model_dir, images, batching=batching, concurrency=concurrency, total=total,
                                 extra_env=wait_env)
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
                                extra_env=wait_env, log_path=run_dir / "server-endurance.log")
        print(f"  {endurance_run['requests_per_s']:.0f} req/s, p99 {endurance_run['p99_ms']:.1f} ms, "
              f"errors {endurance_run['errors']}")
    print("\n" + markdown(table))
    top = max(levels)
    summary = {"table": table, "runs": runs, "endurance": endurance_run, "requests_per_run": total,
               "max_wait_ms": args.max_wait_ms if args.max_wait_ms is not None else "service default (0)",
               "rounds": rounds, "quick": args.quick, "real_data": splits.dataset.real,
               "batching_speedup_at_top_concurrency": table[str(top)]["speedup"],
               "saturation_requests_per_s_batched": table[str(top)]["on"]["requests_per_s"],
               "p50_added_by_batching_at_c1_ms": table["1"]["on"]["p50_ms"] - table["1"]["off"]["p50_ms"]
               if "1" in table else None}
    write_json(run_dir / "metrics.json", summary)
    if not args.quick and splits.dataset.real and args.max_wait_ms is None:
        from common.benchmark import save_result

        save_result("p3_load", summary, directory=args.results_dir)
    (run_dir / "table.md").write_text(markdown(table) + "\n")
    return summary


def summarise(runs: list[dict], levels: list[int]) -> dict:
    """Medians over rounds per (concurrency, mode), and the batched/unbatched throughput ratio per round."""
    table = {}
    for c in levels:
        row = {}
        for mode, flag in (("on", True), ("off", False)):
            chosen = [r for r in runs if r["concurrency"] == c and r["batching"] == flag]
            row[mode] = {k: statistics.median(r[k] for r in chosen)
                         for k in ("requests_per_s", "p50_ms", "p95_ms", "p99_ms", "server_cpu_s",
                                   "load_generator_cpu_s")}
            row[mode]["errors"] = sum(r["errors"] for r in chosen)
        on = [r["requests_per_s"] for r in runs if r["concurrency"] == c and r["batching"]]
        off = [r["requests_per_s"] for r in runs if r["concurrency"] == c and not r["batching"]]
        ratios = [a / b for a, b in zip(on, off)]
        row["speedup"], row["speedup_range"] = statistics.median(ratios), [min(ratios), max(ratios)]
        table[str(c)] = row
    return table


def markdown(table: dict) -> str:
    lines = ["| concurrency | batching | requests/s | p50 ms | p95 ms | p99 ms | errors | server CPU s | "
             "load-generator CPU s |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c, row in table.items():
        for mode in ("on", "off"):
            r = row[mode]
            lines.append(f"| {c} | {mode} | {r['requests_per_s']:,.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['errors']} | {r['server_cpu_s']:.1f} | "
                         f"{r['load_generator_cpu_s']:.1f} |")
    lines.append("")
    lines.append("Batched / unbatched throughput (median of per-round ratios): " + ", ".join(
        f"c={c}: {row['speedup']:.2f}x ({row['speedup_range'][0]:.2f}-{row['speedup_range'][1]:.2f})"
        for c, row in table.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
