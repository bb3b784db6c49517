"""p3-serve (days 46-50): the exported model behind a hardened FastAPI service.

What to take from it:

1. **The service imports no torch**: ONNX Runtime, NumPy, Pillow, FastAPI,
   uvicorn, prometheus-client.  The container stays small and starts fast.
2. **It refuses to serve a model it cannot vouch for**: the ONNX file's
   sha256 must match ``manifest.json``; ``/readyz`` turns ready only after.
3. **Hostile input gets a 4xx JSON error with a request id, never a 500**:
   empty bodies, wrong content types, non-images, truncated JPEGs, formats
   outside the list, bodies over the limit (chunked ones too), decompression
   bombs, oversized batches.  Saturation answers 503 with ``Retry-After``.
4. **Micro-batching** gathers concurrent requests into one ONNX Runtime call.
5. **Shutdown drains**: readiness drops, accepted work finishes, then exit.

``make p3-serve`` serves ``runs/p3-onnx`` (or ``MODEL_DIR``) on
127.0.0.1:``PORT`` (8000) until Ctrl-C.  ``make p3-serve ARGS=--self-test``
(and ``QUICK=1``, and ``make phase3``) instead starts the service exactly as
the container does, sends it real test images and every hostile upload in
``bad_inputs.py``, a concurrent burst, and a shutdown under load, and writes
``runs/p3-serve/metrics.json``, with ``demo.png`` and ``dashboard.png``: the
pages, photographed by a headless Chromium when one is installed.
"""

from __future__ import annotations

import http.client
import os
import signal
import statistics
# bandit B404: the service starts from its own fixed command, never through a shell
import subprocess  # nosec B404
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.runs import describe_run, upstream_run
from common.script import finish_run, milestone_parser, start_run
from phase3_production import bad_inputs
from phase3_production.http_client import free_port, multipart, png_bytes, request, wait_until_ready
from phase3_production.serving.config import Settings

MILESTONE = "p3-serve"
# The container's command (the Dockerfile's ENTRYPOINT); HOST, PORT and MODEL_DIR come from the environment.
SERVE_COMMAND = ["python", "-m", "phase3_production.serving"]


def serve_command() -> list[str]:
    return [sys.executable, *SERVE_COMMAND[1:]]


def start_server(model_dir: Path, port: int, extra_env: dict | None = None, log_path: Path | None = None,
                 args: tuple[str, ...] = ()):
    """Start the service as a child process, exactly as the container runs it, on loopback.

    ``args`` are the container's arguments: ``("serve",)`` is how SageMaker starts it.
    """
    env = {**os.environ, "MODEL_DIR": str(model_dir), "HOST": "127.0.0.1", "PORT": str(port),
           **(extra_env or {})}
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    # bandit B603: serve_command() is this Python and the service module; no shell
    return subprocess.Popen([*serve_command(), *args], env=env, stdout=out, stderr=subprocess.STDOUT,  # nosec B603
                            cwd=Path(__file__).resolve().parent.parent)


def stop_server(process, timeout_s: float = 30.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def offline_classes(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """What the model says about ``images`` called directly, without HTTP: the reference."""
    from phase3_production.serving.model import ServedModel

    model = ServedModel.load(model_dir)
    x = ((images.astype(np.float32) / 255.0) - model.mean) / model.std
    return model.predict_probabilities(x.astype(np.float32)).argmax(1)


def raise_if_unwritten(reply) -> None:
    """A 501 means the request reached an exercise not written yet: raise its NotImplementedError here."""
    if reply.status == 501:
        raise NotImplementedError(reply.json()["error"]["message"])


def classify_over_http(port: int, images: np.ndarray) -> tuple[list[int], list[float], list[str]]:
    """One request per image, alternating raw PNG bodies and multipart uploads; classes and latencies."""
    classes, latencies, versions = [], [], []
    for i, image in enumerate(images):
        data = png_bytes(image)
        if i % 2:
            body, ctype = multipart([("file", f"{i}.png", data, "image/png")])
        else:
            body, ctype = data, "image/png"
        start = time.perf_counter()
        reply = request(port, "POST", "/v1/predict", body, {"content-type": ctype})
        latencies.append(time.perf_counter() - start)
        raise_if_unwritten(reply)
        if reply.status != 200:
            raise RuntimeError(f"image {i}: HTTP {reply.status}: {reply.body[:200]!r}")
        answer = reply.json()
        classes.append(answer["class_index"])
        versions.append(answer["model_version"])
    return classes, latencies, versions


def hostile_uploads(port: int, settings: Settings) -> list[dict]:
    results = []
    for case in bad_inputs.cases(settings.max_body_bytes, settings.max_batch_files, settings.max_pixels):
        reply = bad_inputs.send(port, case)
        try:
            error = reply.json().get("error", {})
        except ValueError:
            error = {}
        ok = (reply.status == case.status and (not case.code or error.get("code") == case.code)
              and bool(error.get("request_id")) and "Traceback" not in reply.body.decode("utf-8", "replace"))
        results.append({"case": case.name, "expected": f"{case.status} {case.code}".strip(),
                        "got": f"{reply.status} {error.get('code', '')}".strip(), "ok": ok})
    return results


def burst(port: int, images: np.ndarray, concurrency: int) -> list[int]:
    """``len(images)`` requests from ``concurrency`` threads at once; their status codes."""
    bodies = [png_bytes(image) for image in images]

    def send(body):
        return request(port, "POST", "/v1/predict", body, {"content-type": "image/png"}).status

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(send, bodies))


def batch_sizes_seen(port: int) -> dict:
    """Model calls and images from the service's own Prometheus histogram."""
    text = request(port, "GET", "/metrics").body.decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith(("ml60_model_batch_size_count", "ml60_model_batch_size_sum"))}
    calls, images = values.get("ml60_model_batch_size_count", 0), values.get("ml60_model_batch_size_sum", 0)
    return {"model_calls": int(calls), "images": int(images), "mean_batch": images / calls if calls else 0.0}


def shutdown_under_load(model_dir: Path, images: np.ndarray, log_path: Path) -> dict:
    """Send a burst, SIGTERM the server while it is busy: every accepted request must still succeed."""
    port = free_port()
    process = start_server(model_dir, port, {"MAX_WAIT_MS": "20"}, log_path)
    try:
        wait_until_ready(port, process=process)
        with ThreadPoolExecutor(len(images)) as pool:
            bodies = [png_bytes(image) for image in images]
            futures = [pool.submit(request, port, "POST", "/v1/predict", b, {"content-type": "image/png"})
                       for b in bodies]
            time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            statuses = []
            for future in futures:
                try:
                    statuses.append(future.result().status)
                except (OSError, http.client.HTTPException):
                    # refused, or reset before the server read the request: it arrived after the listener closed
                    statuses.append(0)
        code = process.wait(timeout=30)
    finally:
        stop_server(process)
    # uvicorn finishes the requests in flight, runs the app's shutdown (the batcher drains), logs
    # "Application shutdown complete", then re-raises SIGTERM: exit status -15 is the normal ending.
    log = log_path.read_text(errors="replace")
    return {"requests": len(statuses), "ok": statuses.count(200), "refused_after_close": statuses.count(0),
            "other": len(statuses) - statuses.count(200) - statuses.count(0), "exit_code": code,
            "graceful": "Application shutdown complete" in log and code in (0, -signal.SIGTERM)}


def main(argv: list[str] | None = None) -> dict | None:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--model-dir", default=os.environ.get("MODEL_DIR"),
                        help="folder with model.onnx and manifest.json (default: runs/p3-onnx)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--self-test", action="store_true", help="start, check, stop (quick mode implies it)")
    parser.add_argument("--images", type=int, default=None, help="real test images to send (default 500; quick 50)")
    from phase2_depth.data import add_dataset_argument

    add_dataset_argument(parser)
    args = parser.parse_args(argv)
    model_dir = Path(args.model_dir) if args.model_dir else upstream_run("p3-onnx")
    if not args.model_dir:
        print(f"  the model: {describe_run(model_dir)}")
    if not (args.self_test or args.quick):
        return serve_forever(model_dir, args.port)

    run_dir = start_run(MILESTONE, args)
    print(__doc__.split("\n\n")[0])
    settings = Settings.from_env()
    from phase2_depth.data import cifar_splits

    n = args.images or (50 if args.quick else 500)
    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset,
                          subset=(500, 100, n) if args.quick else None)
    test = splits.test.subset(n, seed=args.seed)
    images, labels = test.images.numpy(), test.labels.numpy()

    port = free_port()
    print(f"\n-- 1. Start the service as the container does: HOST=127.0.0.1 PORT={port} MODEL_DIR={model_dir} "
          f"{' '.join(SERVE_COMMAND)} --")
    process = start_server(model_dir, port, log_path=run_dir / "server.log")
    try:
        startup_s = wait_until_ready(port, process=process)
        model = request(port, "GET", "/v1/model").json()
        print(f"  ready in {startup_s:.2f} s; model {model['file']} version {model['version']} "
              f"(sha256 checked against the manifest)")

        print(f"\n-- 2. {n} real test images, one request each (raw PNG and multipart, alternating) --")
        served, latencies, versions = classify_over_http(port, images)
        reference = offline_classes(model_dir, images)
        agree = int((np.asarray(served) == reference).sum())
        accuracy = float((np.asarray(served) == labels).mean())
        ms = sorted(1000 * t for t in latencies)
        p50, p95 = statistics.median(ms), ms[int(0.95 * (len(ms) - 1))]
        print(f"  {agree}/{n} answers equal the model called directly; accuracy {100 * accuracy:.2f}%; "
              f"sequential latency p50 {p50:.2f} ms, p95 {p95:.2f} ms (client, server and model on one machine)")

        print("\n-- 3. Hostile uploads: each must get its 4xx JSON error with a request id --")
        hostile = hostile_uploads(port, settings)
        for r in hostile:
            print(f"  {'ok ' if r['ok'] else 'BAD'} {r['case']:<52} expected {r['expected']:<28} got {r['got']}")
        alive = request(port, "GET", "/healthz").status == 200

        print("\n-- 4. A burst of 64 requests from 16 threads (batched only from BATCH_THRESHOLD in flight) --")
        before = batch_sizes_seen(port)
        statuses = burst(port, images[:64] if len(images) >= 64 else np.resize(images, (64, *images.shape[1:])), 16)
        after = batch_sizes_seen(port)
        calls, seen = after["model_calls"] - before["model_calls"], after["images"] - before["images"]
        print(f"  {statuses.count(200)}/64 answered 200 in {calls} model calls (mean batch {seen / max(1, calls):.1f})")

        print(f"\n-- 5. The pages: http://127.0.0.1:{port}/ (the demo) and /dashboard (the live view) --")
        pictures = page_screenshots(port, run_dir)
    finally:
        exit_code = stop_server(process)

    print("\n-- 6. Shutdown under load: SIGTERM while 32 requests are in flight --")
    drain = shutdown_under_load(model_dir, images[:32] if len(images) >= 32 else np.resize(
        images, (32, *images.shape[1:])), run_dir / "server-drain.log")
    print(f"  {drain['ok']} answered 200, {drain['refused_after_close']} arrived after the listener closed, "
          f"{drain['other']} other; {'graceful' if drain['graceful'] else 'NOT graceful'} "
          f"(exit status {drain['exit_code']}: SIGTERM re-raised after the drain)")

    passed = sum(r["ok"] for r in hostile)
    label = "" if splits.dataset.real else " (stand-in data)"
    print(f"\nResult: {agree}/{n} served answers equal the direct model; {passed}/{len(hostile)} hostile uploads "
          f"answered as specified; server {'alive' if alive else 'DOWN'} after them.{label}")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "hostile_uploads_handled", "value": passed,
                                  "display": f"{agree}/{n} answers match; {passed}/{len(hostile)} hostile "
                                             f"uploads refused correctly{label}"},
                      data=splits.dataset.provenance() | {"images": n},
                      model=model, startup_seconds=startup_s, served_images=n, agree_with_direct_model=agree,
                      served_accuracy=accuracy, sequential_latency_ms={"p50": p50, "p95": p95},
                      hostile_uploads=hostile, alive_after_hostile_uploads=alive,
                      burst={"requests": 64, "ok": statuses.count(200), "model_calls": calls,
                             "mean_batch": seen / max(1, calls)},
                      drain=drain, server_exit_code=exit_code, screenshots=pictures, settings={
                          k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()})


def page_screenshots(port: int, run_dir: Path) -> dict:
    """``demo.png`` (the page answering its fourth sample) and ``dashboard.png`` (after this run's traffic),
    taken by a headless Chromium when there is one: ``{"files": [...]}`` or ``{"skipped": why}``."""
    from phase3_production.screenshots import take_pages

    return take_pages({"demo.png": (f"http://127.0.0.1:{port}/#sample=3", 900),
                       "dashboard.png": (f"http://127.0.0.1:{port}/dashboard", 1400)}, run_dir)


def serve_forever(model_dir: Path, port: int) -> None:
    print(f"Serving {model_dir} on http://127.0.0.1:{port} (Ctrl-C stops). Try:\n"
          f"  open http://127.0.0.1:{port}/            the demo: drop an image, see the top 3\n"
          f"  open http://127.0.0.1:{port}/dashboard   the live view: rate, latency, errors, drift\n"
          f"  curl -F file=@some.png http://127.0.0.1:{port}/v1/predict\n"
          f"$ HOST=127.0.0.1 PORT={port} MODEL_DIR={model_dir} {' '.join(SERVE_COMMAND)}", flush=True)
    os.environ.update(MODEL_DIR=str(model_dir), HOST="127.0.0.1", PORT=str(port))
    command = serve_command()
    # bandit B606: serve_command() is this Python and the service module
    os.execv(command[0], command)   # nosec B606 # become the server: Ctrl-C and SIGTERM reach uvicorn directly


def check(metrics: dict) -> list[str]:
    problems = []
    if metrics.get("agree_with_direct_model") != metrics.get("served_images") or not metrics.get("served_images"):
        problems.append(f"served answers differ from the direct model for "
                        f"{metrics.get('served_images', 0) - metrics.get('agree_with_direct_model', 0)} images")
    bad = [r["case"] for r in metrics.get("hostile_uploads", []) if not r["ok"]]
    if bad or not metrics.get("hostile_uploads"):
        problems.append(f"hostile uploads not answered as specified: {', '.join(bad) or 'none were sent'}")
    if not metrics.get("alive_after_hostile_uploads"):
        problems.append("the server was not healthy after the hostile uploads")
    if metrics.get("burst", {}).get("ok") != 64:
        problems.append(f"concurrent burst: only {metrics.get('burst', {}).get('ok')}/64 answered 200")
    drain = metrics.get("drain", {})
    if drain.get("other", 1) or not drain.get("graceful"):
        problems.append(f"shutdown under load lost requests or was not graceful: {drain}")
    return problems


if __name__ == "__main__":
    main()
