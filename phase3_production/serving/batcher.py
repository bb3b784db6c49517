"""Micro-batching: many concurrent requests, one model call.

A model call has a fixed cost (entering ONNX Runtime, setting up each
layer) plus a cost per image.  Under load, requests arrive while the model is
busy; instead of running them one at a time, the batcher waits for the
current call to finish, takes everything that queued up meanwhile (up to
``max_batch``), and runs it as one batch.  Optionally the first request of a
batch waits up to ``max_wait_ms`` for company.  The default is 0 - batch only
what queued while the model was busy - because on a CPU this CNN costs
almost the same per image at batch 1 as at batch 64 (it is compute-bound:
see p3-onnx's table), so waiting buys little throughput and adds its full
length to every lone request's latency (``make p3-load ARGS='--max-wait-ms 2'``
shows it).  On a GPU, where batch 64 costs little more than batch 1, a wait pays.

::

    request --> submit() --> queue --> worker: take 1, then up to max_batch-1 more
                   ^                      (waiting <= max_wait_ms), np.stack,
                   |                      one model call in a thread,
                   +-- result future <--- split the rows back to their requests

The queue is bounded: when ``max_queue`` images are waiting or in flight,
``submit`` raises :class:`Saturated` at once and the route answers 503 with
``Retry-After``.  Queueing without bound only turns overload into timeouts
and memory growth.  ``close()`` drains: work already accepted is finished.

With batching off, each request runs its own model call (in the same thread
pool), under the same bound - the baseline the load test compares against.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]


class Saturated(Exception):
    """Too much work in flight; the client should retry later."""


async def gather_batch(queue: asyncio.Queue, max_batch: int, max_wait_s: float) -> list:
    """The next micro-batch from ``queue``: 1 to ``max_batch`` items, oldest first.

    1. Wait (as long as it takes) for the first item: an idle service sleeps here.
    2. Take whatever else is already queued, without waiting, up to ``max_batch``:
       the requests that arrived while the model was busy with the last batch.
    3. While the batch is not full, wait for more, but only until
       ``max_wait_s`` after the first item was taken: one deadline for the
       whole batch, not a fresh wait per arrival (a steady trickle would
       otherwise hold a batch open until it fills).  ``max_wait_s = 0``: no
       waiting at all, step 2 only.

    Return as soon as the batch is full or the deadline passes, whichever is
    first: a full batch waiting out its window only adds latency.  Each item
    is taken once, in queue order; the rest stay queued for the next batch.
    """
    # EXERCISE p3-serve.3: gather a micro-batch
    # hint: block for the first item; take what is queued; then asyncio.wait_for(queue.get(), time left) until one deadline
    batch = [await queue.get()]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait_s
    while len(batch) < max_batch:
        if not queue.empty():
            batch.append(queue.get_nowait())
            continue
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except asyncio.TimeoutError:
            break
    return batch
    # END EXERCISE


class MicroBatcher:
    def __init__(self, predict: Predict, *, enabled: bool = True, max_batch: int = 32, max_wait_ms: float = 0.0,
                 max_queue: int = 256, on_batch: Callable[[int], None] | None = None):
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.predict, self.enabled = predict, enabled
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.on_batch = on_batch or (lambda size: None)
        # One thread runs the model: ONNX Runtime uses its own intra-op threads inside a call.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.pending = 0          # images accepted and not yet answered
        self.closing = False
        self.failure: Exception | None = None   # why the worker stopped, if it did

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        if self.enabled:
            self.worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for ``images`` (N, C, H, W); N may be more than one (the batch route)."""
        if self.closing:
            raise Saturated("the service is shutting down")
        if self.pending + len(images) > self.max_queue:
            raise Saturated(f"{self.pending} images already in flight (limit {self.max_queue})")
        self.pending += len(images)
        try:
            if not self.enabled:
                self.on_batch(len(images))
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor, self.predict, images)
            if self.failure is not None:
                raise self.failure
            loop = asyncio.get_running_loop()
            futures = []
            for row in images:
                future = loop.create_future()
                self.queue.put_nowait((row, future))
                futures.append(future)
            if len(futures) == 1:
                return (await futures[0])[None]
            return np.stack(await asyncio.gather(*futures))
        finally:
            self.pending -= len(images)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                batch = await gather_batch(self.queue, self.max_batch, self.max_wait_s)
            except Exception as exc:   # the worker cannot go on: fail what waits, and what comes, at once
                self.failure = exc
                self._fail_queued(exc)
                return
            rows = np.stack([row for row, _ in batch])
            self.on_batch(len(batch))
            try:
                probabilities = await loop.run_in_executor(self.executor, self.predict, rows)
            except Exception as exc:  # a model failure fails the requests of this batch, not the worker
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), p in zip(batch, probabilities):
                if not future.done():   # the client may have gone away
                    future.set_result(p)

    def _fail_queued(self, exc: Exception) -> None:
        while not self.queue.empty():
            _, future = self.queue.get_nowait()
            if not future.done():
                future.set_exception(exc)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop accepting, finish what was accepted, stop the worker."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending and loop.time() < deadline:
            await asyncio.sleep(0.005)
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)
