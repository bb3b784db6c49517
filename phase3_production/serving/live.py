"""The last few minutes of traffic, second by second: what ``/dashboard`` draws (via ``GET /v1/stats``).

Prometheus keeps the long history (``/metrics``, scraped every few seconds);
this is the short one a person watches live, kept in the process itself:

* one :class:`Second` per wall-clock second: prediction requests, answers by
  status (2xx, 4xx, 5xx, and 503 on its own: the service shedding load),
  model calls and their batch sizes, and a sample of the latencies;
* a ring of the last ``seconds`` of them (a ``deque`` with ``maxlen``: the
  oldest second falls off as a new one starts), so memory stays bounded
  however long the service runs.

Latency percentiles need the latencies themselves, and a busy second can hold
thousands.  Each second keeps a **reservoir sample** of at most ``sample_size``
of them (:meth:`Second.add_latency`): every latency of that second had the same
chance of being kept, so the percentiles of the sample estimate those of the
second.  At 600 requests a second and a sample of 512, the p95 of the sample
is within a few percent of the true one.

Only the prediction routes count as traffic: the dashboard polling
``/v1/stats`` once a second, or Prometheus scraping ``/metrics``, would
otherwise show up as the load being watched.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

log = logging.getLogger("ml60.serve")
PREDICTION_ROUTES = frozenset({"/v1/predict", "/v1/predict/batch", "/invocations"})
PERCENTILES = (50, 95, 99)


def status_class(status: int) -> str:
    """``"503"`` on its own (load shed: the client should retry), else ``"2xx"``, ``"4xx"``, ``"5xx"``."""
    return "503" if status == 503 else f"{status // 100}xx"


def percentiles(values: list[float]) -> dict[str, float | None]:
    """``{"p50_ms": ..., "p95_ms": ..., "p99_ms": ...}`` of latencies in seconds, in milliseconds.

    Linear interpolation between the two nearest ranks, as NumPy's default
    (``np.percentile``): sort once, then read each rank.  ``None`` for no
    values: a second without traffic has no latency, not a latency of 0.
    """
    ordered = sorted(values)
    result = {}
    for q in PERCENTILES:
        if not ordered:
            result[f"p{q}_ms"] = None
            continue
        rank = (len(ordered) - 1) * q / 100
        low, high = math.floor(rank), math.ceil(rank)
        value = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
        result[f"p{q}_ms"] = round(value * 1000, 3)
    return result


def quiet_second(t: int) -> dict:
    """The row of a second in which nothing happened."""
    return {"t": t, "requests": 0, "batches": 0, "mean_batch": None, "largest_batch": None, "labelled": 0,
            "live_accuracy": None, "2xx": 0, "4xx": 0, "5xx": 0, "503": 0, **percentiles([])}


@dataclass
class Second:
    """Everything that happened in one wall-clock second ``t`` (Unix time, whole seconds)."""

    t: int
    sample_size: int = 512
    requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    latencies: list = field(default_factory=list)      # a reservoir sample, at most sample_size
    timed: int = 0                                     # latencies offered to the sample
    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    labelled: int = 0                                  # feedback received (true labels)
    live_accuracy: float | None = None                 # the service's live accuracy after this second's last label
    # bandit B311: picks which latencies a dashboard sample keeps; nothing secret depends on it
    rng: random.Random = field(default_factory=lambda: random.Random(0), repr=False)  # nosec B311
    closed: dict | None = field(default=None, repr=False)   # the summary, once the second is over

    def add_latency(self, seconds: float) -> None:
        """Reservoir sampling (Vitter's algorithm R): the n-th latency replaces a random kept one with chance k/n.

        The first ``k`` latencies are kept as they come.  After that the n-th
        is kept with probability k/n, in place of one kept latency chosen at
        random.  By induction every latency seen so far is in the sample with
        probability k/n: a fair sample of the whole second, in bounded memory,
        without knowing in advance how many requests the second will bring.
        """
        # EXERCISE p3-monitor.4: keep a fair sample of at most sample_size latencies (reservoir sampling)
        # hint: count the latency (self.timed); keep it while there is room; else draw slot = self.rng.randrange(self.timed) and replace that one if slot < sample_size
        self.timed += 1
        if len(self.latencies) < self.sample_size:
            self.latencies.append(seconds)
            return
        slot = self.rng.randrange(self.timed)
        if slot < self.sample_size:
            self.latencies[slot] = seconds
        # END EXERCISE

    def summary(self) -> dict:
        row = {"t": self.t, "requests": self.requests, "batches": self.batches,
               "mean_batch": self.images / self.batches if self.batches else None,
               "largest_batch": self.largest_batch or None, "labelled": self.labelled,
               "live_accuracy": self.live_accuracy}
        for name in ("2xx", "4xx", "5xx", "503"):
            row[name] = self.statuses.get(name, 0)
        return {**row, **percentiles(self.latencies)}


class LiveStats:
    """The ring of the last ``seconds`` seconds, fed by the request middleware and the batcher.

    ``record_request`` runs on the event loop and ``record_batch`` on the
    model's thread, so a lock guards the ring; each call holds it for a few
    microseconds.  ``clock`` is there for the tests (a fake clock makes a
    second end on demand).
    """

    def __init__(self, seconds: int = 300, sample_size: int = 512, clock=time.time):
        self.seconds, self.sample_size, self.clock = seconds, sample_size, clock
        self.ring: deque[Second] = deque(maxlen=seconds)
        self.batch_sizes: Counter = Counter()          # since start: model calls per batch size
        self.totals: Counter = Counter()               # since start: prediction answers per status class
        self.started = clock()
        self.lock = threading.Lock()
        self.failure: dict | None = None               # the error of the last failed sample, shown on /v1/stats

    def _second(self) -> Second:
        """The current second's bucket, starting a new one (and dropping the oldest) when the clock moved on."""
        now = int(self.clock())
        if not self.ring or self.ring[-1].t != now:
            self.ring.append(Second(now, self.sample_size, rng=random.Random(now)))  # nosec B311 (sampling, as above)
        return self.ring[-1]

    def record_request(self, route: str, status: int, seconds: float) -> None:
        if route not in PREDICTION_ROUTES:
            return
        with self.lock:
            second = self._second()
            second.requests += 1
            second.statuses[status_class(status)] += 1
            self.totals[status_class(status)] += 1
            if status == 200:      # the latency of an answer; refusals are counted, not timed
                try:
                    second.add_latency(seconds)
                except Exception as exc:   # the dashboard must never fail a request: /v1/stats says what broke
                    if self.failure is None:
                        log.exception("live statistics failed; requests continue")
                    self.failure = {"type": type(exc).__name__, "message": str(exc)}

    def record_batch(self, size: int) -> None:
        with self.lock:
            second = self._second()
            second.batches += 1
            second.images += size
            second.largest_batch = max(second.largest_batch, size)
            self.batch_sizes[size] += 1

    def record_feedback(self, correct: bool, live_accuracy: float) -> None:
        with self.lock:
            second = self._second()
            second.labelled += 1
            second.live_accuracy = live_accuracy

    def snapshot(self, window_s: int = 60) -> dict:
        """``series``: one row per second of the last ``self.seconds`` (quiet seconds as zeros);
        ``window``: the last ``window_s`` seconds together (rate, percentiles, answers by status).

        A second that is over never changes again, so its row is computed
        once and kept; only the current second is summarised afresh.
        """
        with self.lock:
            now = int(self.clock())
            rows = {}
            for s in self.ring:
                if s.t < now and s.closed is None:
                    s.closed = s.summary()
                rows[s.t] = s.closed or s.summary()
            latest = [s for s in self.ring if s.t > now - window_s]
            window_latencies = [x for s in latest for x in s.latencies]
            window_statuses = sum((s.statuses for s in latest), Counter())
            window_requests = sum(s.requests for s in latest)
            batch_sizes = {str(k): v for k, v in sorted(self.batch_sizes.items())}
            totals = dict(self.totals)
        first = max(now - self.seconds + 1, int(self.started))
        series = [rows.get(t) or quiet_second(t) for t in range(first, now + 1)]
        span = max(1, min(window_s, now - int(self.started) + 1))
        window = {"seconds": span, "requests": window_requests, "requests_per_s": round(window_requests / span, 3),
                  **{name: window_statuses.get(name, 0) for name in ("2xx", "4xx", "5xx", "503")},
                  **percentiles(window_latencies)}
        return {"now": now, "series": series, "window": window, "batch_sizes": batch_sizes, "totals": totals,
                "failure": self.failure}
