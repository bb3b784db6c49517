"""p3-monitor (days 56-60): watch the live service for latency, throughput, accuracy and drift.

What to take from it:

1. **Metrics a dashboard needs** come from the service itself (``/metrics``):
   requests by route and status, a latency histogram, batch sizes, requests
   in flight, predictions per class, drift p-values and PSI, live accuracy.
2. **Live accuracy needs labels**, which arrive late: ``POST /v1/feedback``
   takes the true label of an earlier prediction id.
3. **Drift is visible before the labels are**: the service compares a sliding
   window of recent inputs and outputs with reference statistics stored at
   export (``serving/drift.py``: KS tests with Holm's correction,
   chi-square on the predicted classes, PSI).

This script runs the real service and plays it a day of traffic made of real
CIFAR-10 test images: 5,000 clean requests, then four shifts of 500 requests
each - brightness, Gaussian noise, blur, a changed class mix - with 300 clean
requests between them.  Half the predictions get their true label back.

Run: ``make p3-monitor`` (after ``make p3-onnx``).  Writes ``runs/p3-monitor/``:
``drift.png`` (drift scores and live accuracy over the requests),
``timeline.json`` and ``metrics.json`` (when each shift was detected), and
``dashboard.png``: the live view (``/dashboard``) at the end of the day, photographed by a headless
Chromium when one is installed.
"""

from __future__ import annotations

import http.client
import json
import math
import secrets
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from common.runs import describe_run, upstream_run, write_json
from common.script import finish_run, is_full_real_run, milestone_parser, start_run
from phase2_depth.data import add_dataset_argument, cifar_splits
from phase3_production.http_client import free_port, png_bytes, wait_until_ready
from phase3_production.p3_serve import start_server, stop_server
from phase3_production.serving.drift import FEATURES

MILESTONE = "p3-monitor"
DETECT_WITHIN = 500          # requests after a shift starts
SHIFT_CLASSES = ("airplane", "automobile", "ship")


# --------------------------------------------------------------------------- the shifts


def brighten(image: np.ndarray, rng) -> np.ndarray:
    return np.clip(image.astype(np.float32) * 1.35 + 20, 0, 255).astype(np.uint8)


def add_noise(image: np.ndarray, rng) -> np.ndarray:
    return np.clip(image.astype(np.float32) + rng.normal(0, 18, image.shape), 0, 255).astype(np.uint8)


def blur(image: np.ndarray, rng) -> np.ndarray:
    pil = Image.fromarray(image.transpose(1, 2, 0)).filter(ImageFilter.GaussianBlur(radius=1.0))
    return np.asarray(pil).transpose(2, 0, 1).copy()


SHIFTS = {"brightness": brighten, "gaussian_noise": add_noise, "blur": blur, "class_mix": None}


def traffic_plan(n_clean: int, n_shift: int, n_flush: int) -> list[tuple[str, int]]:
    """Segments of (name, requests): clean, then each shift followed by clean traffic."""
    plan = [("clean", n_clean)]
    for name in SHIFTS:
        plan += [(name, n_shift), ("clean", n_flush)]
    return plan


# --------------------------------------------------------------------------- the client


class Client:
    """One keep-alive connection: what a single upstream caller looks like."""

    def __init__(self, port: int, token: str | None = None):
        self.port, self.token = port, token   # the API token: POST /v1/feedback needs it
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> dict:
        headers = {"content-type": content_type} if content_type else {}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        data = response.read()
        if response.status == 501:   # an exercise not written yet, named in the message
            raise NotImplementedError(json.loads(data)["error"]["message"])
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status}: {data[:200]!r}")
        return json.loads(data)


def play(port: int, images: np.ndarray, labels: np.ndarray, classes: list[str], plan, *, seed: int,
         poll_every: int, label_every: int = 2, token: str | None = None) -> list[dict]:
    """Send the traffic (labels with the API ``token``); poll ``/v1/drift`` every ``poll_every`` requests."""
    rng = np.random.default_rng(seed)
    client = Client(port, token)
    chosen = [classes.index(c) for c in SHIFT_CLASSES if c in classes] or [0, 1, 2]   # stand-in data: 3 classes
    mix = np.flatnonzero(np.isin(labels, chosen))
    timeline, sent, live_accuracy = [], 0, None
    for segment, count in plan:
        for _ in range(count):
            index = int(rng.choice(mix)) if segment == "class_mix" else int(rng.integers(len(images)))
            image = images[index]
            if SHIFTS.get(segment) is not None:
                image = SHIFTS[segment](image, rng)
            answer = client.call("POST", "/v1/predict", png_bytes(image), "image/png")
            sent += 1
            if sent % label_every == 0:   # the true label comes back for half the predictions
                live_accuracy = client.call("POST", "/v1/feedback", json.dumps(
                    {"prediction_id": answer["prediction_id"], "label": int(labels[index])}).encode(),
                    "application/json")["live_accuracy"]
            if sent % poll_every == 0:
                state = client.call("GET", "/v1/drift")
                stop_if_monitor_failed(state)
                last = state.get("last_check") or {}
                timeline.append({"request": sent, "segment": segment, "alarm": bool(state.get("alarm")),
                                 "min_ks_p": _min_p(last), "class_mix_p": last.get("class_mix", {}).get("p_value"),
                                 "most_shifted": last.get("most_shifted_feature"), "live_accuracy": live_accuracy})
    return timeline


def stop_if_monitor_failed(state: dict, what: str = "the drift monitor") -> None:
    """The service keeps answering when a monitor fails, and ``/v1/drift`` (or ``/v1/stats``) says so: a run
    that measures the monitor stops there, rather than report that nothing drifted."""
    failure = state.get("failure")
    if failure:
        print(f"  {what} failed (server.log has the traceback)")
        if failure["type"] == "NotImplementedError":
            raise NotImplementedError(failure["message"])
        raise RuntimeError(f"{what} failed: {failure['type']}: {failure['message']}")


def _min_p(last: dict) -> float | None:
    features = last.get("features") or {}
    return min((t["p_value"] for t in features.values()), default=None)


# --------------------------------------------------------------------------- analysis


def detections(timeline: list[dict], plan) -> tuple[dict, list[int]]:
    """Per shift: requests from its start to the first alarm; and every alarm seen during the first clean phase."""
    starts, position = {}, 0
    for name, count in plan:
        if name != "clean":
            starts[name] = (position, position + count)
        position += count
    clean_end = plan[0][1]
    false_alarms = [t["request"] for t in timeline if t["request"] <= clean_end and t["alarm"]]
    found = {}
    for name, (start, end) in starts.items():
        hit = next((t["request"] for t in timeline if start < t["request"] <= end + 200 and t["alarm"]), None)
        found[name] = {"start": start, "detected_at": hit, "requests_to_detect": None if hit is None else hit - start}
    return found, false_alarms


def plot(timeline: list[dict], plan, alpha: float, n_tests: int, path: Path) -> Path:
    from common.plots import plt, save

    x = [t["request"] for t in timeline]
    ks = [-math.log10(max(t["min_ks_p"], 1e-300)) if t["min_ks_p"] is not None else np.nan for t in timeline]
    chi = [-math.log10(max(t["class_mix_p"], 1e-300)) if t["class_mix_p"] is not None else np.nan for t in timeline]
    acc = [100 * t["live_accuracy"] if t.get("live_accuracy") is not None else np.nan for t in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, height_ratios=(2, 1))
    position = 0
    colours = {"brightness": "#f5c542", "gaussian_noise": "#b0b0b0", "blur": "#7fb3d5", "class_mix": "#c39bd3"}
    for name, count in plan:
        if name != "clean":
            for ax in (top, bottom):
                ax.axvspan(position, position + count, color=colours[name], alpha=0.35, lw=0)
            top.text(position + count / 2, 0.98, name.replace("_", " "), transform=top.get_xaxis_transform(),
                     ha="center", va="top", fontsize=9)
        position += count
    top.plot(x, ks, label="inputs & confidence: -log10 of the smallest KS p-value")
    top.plot(x, chi, label="predicted-class mix: -log10 of the chi-square p-value")
    top.axhline(-math.log10(alpha / n_tests), color="C0", ls="--", lw=1, label=f"KS alarm (alpha/{n_tests}: Holm's first step)")
    top.axhline(-math.log10(alpha), color="C1", ls=":", lw=1, label="chi-square alarm (alpha)")
    top.set_yscale("symlog", linthresh=10)
    top.set_ylabel("drift score (-log10 p)")
    top.legend(loc="upper left", fontsize=8)
    top.set_title("Drift monitor on live traffic: clean CIFAR-10 test images, then four shifts")
    bottom.plot(x, acc, color="C2")
    bottom.set_ylabel("live accuracy (%)")
    bottom.set_xlabel("requests")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return save(fig, path)


def dashboard_screenshot(port: int, run_dir: Path) -> str | None:
    """``dashboard.png``: the live view at the end of the day's traffic, when a headless Chromium is installed."""
    from phase3_production.screenshots import take_pages

    taken = take_pages({"dashboard.png": (f"http://127.0.0.1:{port}/dashboard", 1400)}, run_dir)["files"]
    return taken[0] if taken else None


def main(argv: list[str] | None = None) -> dict:
    parser = milestone_parser(MILESTONE, __doc__)
    parser.add_argument("--model-dir", default=None, help="default: runs/p3-onnx")
    add_dataset_argument(parser)
    args = parser.parse_args(argv)
    run_dir = start_run(MILESTONE, args)
    print(__doc__.split("\n\n")[0])
    model_dir = Path(args.model_dir) if args.model_dir else upstream_run("p3-onnx")
    if not args.model_dir:
        print(f"  the model: {describe_run(model_dir)}")
    n_clean, n_shift, n_flush = (600, 300, 250) if args.quick else (5000, 500, 300)
    plan = traffic_plan(n_clean, n_shift, n_flush)
    splits = cifar_splits(data_dir=args.data_dir, quick=args.quick, seed=args.seed, dataset=args.dataset,
                          subset=(300, 100, 1000) if args.quick else None)
    images, labels = splits.test.images.numpy(), splits.test.labels.numpy()

    port = free_port()
    token = secrets.token_urlsafe(24)          # this run's own API token: the labels it sends need one
    process = start_server(model_dir, port, {"API_TOKEN": token}, log_path=run_dir / "server.log")
    try:
        wait_until_ready(port, process=process)
        drift = Client(port).call("GET", "/v1/drift")
        if not drift.get("enabled"):
            raise SystemExit(f"the service has no drift reference: {drift.get('reason')}")
        print(f"\n-- Traffic: {' -> '.join(f'{name} {count}' for name, count in plan)} "
              f"({sum(c for _, c in plan):,} requests, window {drift['window']}, check every "
              f"{drift['check_every']}, alpha {drift['alpha']:g}) --")
        start = time.perf_counter()
        timeline = play(port, images, labels, list(splits.classes), plan, seed=args.seed,
                        poll_every=drift["check_every"], token=token)
        seconds = time.perf_counter() - start
        live = Client(port).call("GET", "/v1/drift")
        stats = Client(port).call("GET", "/v1/stats")
        stop_if_monitor_failed(stats, "the dashboard's latency sampling")
        picture = dashboard_screenshot(port, run_dir)
    finally:
        stop_server(process)

    found, false_alarms = detections(timeline, plan)
    print(f"  {sum(c for _, c in plan):,} requests in {seconds:.0f} s")
    held = "" if not args.quick else " (a full run is held to it; a quick run, on small data, is not)"
    print(f"\n-- Detection (target: within {DETECT_WITHIN} requests; no alarm in the first {n_clean:,} clean){held} --")
    print(f"  false alarms during the clean phase: {len(false_alarms)}")
    for name, d in found.items():
        took = "NOT detected" if d["detected_at"] is None else f"detected after {d['requests_to_detect']} requests"
        print(f"  {name:<15} starts at request {d['start']:>5}: {took}")
    write_json(run_dir / "timeline.json", {"plan": plan, "timeline": timeline})
    plot(timeline, plan, live["alpha"], len(FEATURES), run_dir / "drift.png")
    detected = sum(d["requests_to_detect"] is not None and d["requests_to_detect"] <= DETECT_WITHIN
                   for d in found.values())
    label = "" if splits.dataset.real else " (stand-in data)"
    w = stats["window"]
    print(f"  the dashboard's last minute: {w['requests_per_s']:.0f} requests/s, latency p50 {w['p50_ms']} ms, "
          f"p95 {w['p95_ms']} ms, p99 {w['p99_ms']} ms" + (f"; {picture} in the run folder" if picture else ""))
    print(f"\nResult: {detected}/{len(found)} shifts detected within {DETECT_WITHIN} requests, "
          f"{len(false_alarms)} false alarms in {n_clean:,} clean requests.{label}")
    return finish_run(run_dir, MILESTONE, args,
                      key_figure={"name": "shifts_detected", "value": detected,
                                  "display": f"{detected}/{len(found)} shifts detected, {len(false_alarms)} "
                                             f"false alarms{label}"},
                      data=splits.dataset.provenance(), plan=plan, detections=found, false_alarms=false_alarms,
                      clean_requests=n_clean, detect_within=DETECT_WITHIN, seconds=seconds,
                      drift_settings={k: live[k] for k in ("window", "check_every", "alpha")},
                      final_live_accuracy=timeline[-1].get("live_accuracy") if timeline else None,
                      last_minute=stats["window"], dashboard_screenshot=picture)


def check(metrics: dict) -> list[str]:
    problems = []
    missed = [n for n, d in metrics.get("detections", {}).items()
              if d["requests_to_detect"] is None or d["requests_to_detect"] > metrics.get("detect_within", 500)]
    if not metrics.get("detections"):
        problems.append("no shifts were played")
    if is_full_real_run(metrics) or metrics.get("quick") is False:
        if missed:
            problems.append(f"not detected within {metrics.get('detect_within')} requests: {', '.join(missed)}")
        if metrics.get("false_alarms"):
            problems.append(f"{len(metrics['false_alarms'])} false alarms during {metrics.get('clean_requests')} "
                            "clean requests")
    return problems


if __name__ == "__main__":
    main()
