"""Prometheus metrics of the service: what a dashboard and an alert need.

Counters only go up (requests, predictions per class, rejected images);
histograms keep counts per bucket, from which Prometheus computes p50/p95/p99
over any window (``histogram_quantile``); a gauge goes up and down (requests
in flight).  Each app gets its own registry, so tests can run several.

A figure that does not exist yet is ``NaN``, not 0: ``ml60_live_accuracy``
reads ``NaN`` until the first label arrives, as PromQL's own ``0 / 0`` does.
Any comparison with ``NaN`` is false, so an alert such as
``ml60_live_accuracy < 0.8`` stays quiet on a fresh start instead of firing
on an accuracy of "0.0" that nobody measured; the series is still there, so
``absent()`` keeps meaning "the service is not being scraped".
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from phase3_production.serving.live import LiveStats

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.live = LiveStats()   # the same events, second by second, for /dashboard (GET /v1/stats)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ml60_requests", "HTTP requests by route template and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("ml60_request_latency_seconds", "Request latency, body read to last byte",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("ml60_requests_in_flight", "Requests being handled now", registry=r)
        self.batch_size = Histogram("ml60_model_batch_size", "Images per ONNX Runtime call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.predictions = Counter("ml60_predictions", "Predictions by predicted class", ["predicted_class"],
                                   registry=r)
        self.rejected = Counter("ml60_images_rejected", "Uploads refused, by error code", ["code"], registry=r)
        self.drift_alarm = Gauge("ml60_drift_alarm", "1 while the last drift check failed", registry=r)
        self.drift_p_value = Gauge("ml60_drift_p_value", "p-value of the last drift check, per test", ["test"],
                                   registry=r)
        self.drift_psi = Gauge("ml60_drift_psi", "population stability index of the last window", ["feature"],
                               registry=r)
        self.live_accuracy = Gauge("ml60_live_accuracy", "accuracy over the most recent labelled predictions "
                                   "(NaN until the first label arrives)", registry=r)
        self.live_accuracy.set(float("nan"))
        self.drift_monitor = Gauge("ml60_drift_monitor_enabled", "1 when the drift monitor runs, 0 when it is off; "
                                   "the reason label says why", ["reason"], registry=r)
        self.decode_bytes = Gauge("ml60_decode_bytes_reserved", "memory reserved by the image decodes in flight",
                                  registry=r)
        self.feedback = Counter("ml60_feedback", "labels received for predictions", ["outcome"], registry=r)
        self.ready = Gauge("ml60_ready", "1 while the service accepts predictions (what /readyz answers)", registry=r)
        self.model_info = Gauge("ml60_model_info", "The model being served (value 1)", ["version", "file"],
                                registry=r)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)
        self.live.record_request(route, status, seconds)

    def observe_batch(self, size: int) -> None:
        """One model call of ``size`` images (the batcher calls this from the model's thread)."""
        self.batch_size.observe(size)
        self.live.record_batch(size)

    def observe_feedback(self, correct: bool, live_accuracy: float) -> None:
        self.feedback.labels(outcome="correct" if correct else "wrong").inc()
        self.live_accuracy.set(live_accuracy)
        self.live.record_feedback(correct, live_accuracy)

    def render(self) -> bytes:
        return generate_latest(self.registry)
