"""Micro-batching: many concurrent requests, one model call - when the queue is deep enough to pay.

A model call has a fixed cost (handing the work to the model's thread and
back, entering ONNX Runtime) plus a cost per image.  On a CPU this CNN costs
about the same per image at batch 1 as at batch 32 (it is compute-bound:
``make p3-load`` prints the model's own cost at each batch size), so a batch
saves only the fixed costs: a tenth or so of what a request costs the server.

A batch also costs something: smoothness.  The server is a pipeline of two
workers, the event loop (reading requests, writing replies) and the model thread, and it
is fast only while both are busy at once.  A batch answers its requests all
together, so the clients come back together: the event loop has a wave of
work while the model thread idles, then the other way round.  Measured on 2
cores: batching every request made the service *slower* at 16 concurrent
clients (0.82x; the event loop slept 9-26% of the time, against 1% with one
call per request, and no CPU was saved per request), and faster at 64
(1.16x; 10-16% less CPU per request).  So the batcher adapts to the queue:

- Fewer than ``batch_threshold`` images in flight (default: ``max_batch``):
  a request gets its own model call at once, exactly as with batching off.
  The model thread takes the calls one after another and answers go out one
  by one, so neither side waits for the other.
- ``batch_threshold`` or more: the request joins the queue, and the worker
  takes what queued while the model ran (up to ``max_batch``) as one batch.
  Optionally the first request of a batch waits up to ``max_wait_ms`` for
  company; the default, 0, adds no wait (on a CPU a wait buys little and adds
  its whole length to a lone request's latency; on a GPU, where batch 64 costs
  little more than batch 1, a wait pays, and so does a threshold of 0).

::

    request --> submit() --+-- few in flight: its own model call ------------------+
                           |                                                       |
                           +-- many: queue --> worker: take 1, then up to          |
                                               max_batch-1 more, drop the          |
                                               cancelled, np.stack, hand to   --> model thread
                                               the model thread, go back at once   |
    answer <------ result future <--- split the rows back to their requests <-----+

**Two batches in flight.**  If the worker handed over one batch and waited
for it, the model thread would finish, then sit idle until the event loop -
busy with the next requests' HTTP - got round to the worker.  So the worker
hands over up to ``batches_in_flight`` batches (default 2): while one runs,
the next waits in the model thread's queue and starts the moment the first
ends.

**Cancelled requests cost nothing.**  A request whose task is cancelled (the
client went away, a timeout fired) leaves a cancelled future behind.  The
worker drops it before the model call; a batch, or a request's own call,
still waiting for the model thread when all its requesters are gone is
withdrawn from the thread's queue.

The queue is bounded: when ``max_queue`` images are waiting or in flight,
``submit`` raises :class:`Saturated` at once and the route answers 503 with
``Retry-After``.  Queueing without bound only turns overload into timeouts
and memory growth.  ``close()`` drains: work already accepted is finished.

With batching off (``enabled=False``), every request gets its own model call
(in the same thread), under the same bound - the baseline the load test
compares against.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]
BATCHES_IN_FLIGHT = 2    # the default: one batch running, the next one waiting behind it


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


def still_awaited(batch: list) -> list:
    """The ``(row, future)`` items of ``batch`` whose requester still waits for the answer.

    ``asyncio.Queue`` cannot take an item out of its middle, so a request
    cancelled while queued stays there with its future cancelled (done, and
    never to be answered).  Dropping it here, before ``np.stack``, is what
    keeps it from costing a model call.
    """
    return [(row, future) for row, future in batch if not future.done()]


def withdraw_when_abandoned(call: asyncio.Future, futures: list) -> None:
    """Cancel the model call ``call`` as soon as every request future in ``futures`` is cancelled.

    A batch can wait in the model thread's queue while the batch before it
    runs.  If all its requesters go away meanwhile, cancelling ``call`` (a
    ``run_in_executor`` future) withdraws the job before the thread takes it
    up, so it costs nothing - what happens to a request's own call too.  Once
    the thread has started a call, it runs to the end and its answers are
    dropped.
    """
    def on_done(_):
        if all(future.cancelled() for future in futures):
            call.cancel()

    for future in futures:
        future.add_done_callback(on_done)


class MicroBatcher:
    def __init__(self, predict: Predict, *, enabled: bool = True, max_batch: int = 32, max_wait_ms: float = 0.0,
                 max_queue: int = 256, batch_threshold: int | None = None,
                 batches_in_flight: int = BATCHES_IN_FLIGHT, on_batch: Callable[[int], None] | None = None):
        """``batch_threshold``: images in flight from which requests are batched (None: ``max_batch``;
        0 batches always).  ``batches_in_flight``: batches handed to the model thread at once.  The service
        passes its :class:`~config.Settings` (``BATCH_THRESHOLD``, ``BATCHES_IN_FLIGHT``, ...): the settings
        are the one reader of the environment."""
        if batch_threshold is None:
            batch_threshold = max_batch
        if max_batch < 1 or max_queue < 1 or batches_in_flight < 1 or max_wait_ms < 0 or batch_threshold < 0:
            raise ValueError(f"max_batch ({max_batch}), max_queue ({max_queue}) and batches_in_flight "
                             f"({batches_in_flight}) must be >= 1; max_wait_ms ({max_wait_ms}) and "
                             f"batch_threshold ({batch_threshold}) >= 0")
        self.predict, self.enabled = predict, enabled
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.batch_threshold, self.batches_in_flight = batch_threshold, batches_in_flight
        self.on_batch = on_batch or (lambda size: None)
        # One thread runs the model: ONNX Runtime uses its own intra-op threads inside a call.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.calls: set[asyncio.Task] = set()   # batches handed to the model thread, not yet answered
        self.pending = 0          # images accepted and not yet answered
        self.closing = False
        self.failure: Exception | None = None   # why the worker stopped, if it did

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        if self.enabled:
            self.worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Probabilities for ``images`` (N, C, H, W); N may be more than one (the batch route).

        If the caller's task is cancelled while it waits, its rows are
        dropped before they reach the model (see :func:`still_awaited`,
        :func:`withdraw_when_abandoned`).
        """
        if self.closing:
            raise Saturated("the service is shutting down")
        if self.pending + len(images) > self.max_queue:
            raise Saturated(f"{self.pending} images already in flight (limit {self.max_queue})")
        already_in_flight = self.pending
        self.pending += len(images)
        try:
            if not self.enabled or already_in_flight < self.batch_threshold:
                return await self._call_alone(images)
            if self.failure is not None:
                raise self.failure
            return await self._queue_and_wait(images)
        finally:
            self.pending -= len(images)

    async def _call_alone(self, images: np.ndarray) -> np.ndarray:
        """One model call for this request's images, queued straight to the model thread.

        Cancelled before the thread takes it up, the call is withdrawn from
        the thread's queue (``run_in_executor`` cancels its job)."""
        self.on_batch(len(images))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.predict, images)

    async def _queue_and_wait(self, images: np.ndarray) -> np.ndarray:
        """One queue item (row, future) per image, for the worker to batch; wait for every future."""
        loop = asyncio.get_running_loop()
        futures = []
        for row in images:
            future = loop.create_future()
            self.queue.put_nowait((row, future))
            futures.append(future)
        try:
            if len(futures) == 1:
                return (await futures[0])[None]
            return np.stack(await asyncio.gather(*futures))
        except asyncio.CancelledError:
            for future in futures:    # said outright, though awaiting already cancels: the worker skips them
                future.cancel()
            raise

    async def _run(self) -> None:
        """The worker: gather a batch, hand it to the model thread, go straight back for the next one.

        A semaphore of ``batches_in_flight`` slots bounds the batches handed
        over and not yet answered; a slot frees when its batch's answers are
        out.  Only the requests still awaited go to the model.
        """
        slots = asyncio.Semaphore(self.batches_in_flight)
        while True:
            await slots.acquire()
            try:
                batch = await gather_batch(self.queue, self.max_batch, self.max_wait_s)
            except Exception as exc:   # the worker cannot go on: fail what waits, and what comes, at once
                self.failure = exc
                self._fail_queued(exc)
                return
            batch = still_awaited(batch)
            if not batch:              # every requester of this batch went away: no model call
                slots.release()
                continue
            call = asyncio.create_task(self._call_model(batch))
            self.calls.add(call)
            call.add_done_callback(self.calls.discard)
            call.add_done_callback(lambda _: slots.release())

    async def _call_model(self, batch: list) -> None:
        """One model call, in the model thread, for ``batch``; each request gets its own row (or the error)."""
        rows = np.stack([row for row, _ in batch])
        self.on_batch(len(batch))
        call = asyncio.get_running_loop().run_in_executor(self.executor, self.predict, rows)
        withdraw_when_abandoned(call, [future for _, future in batch])
        try:
            probabilities = await call
        except asyncio.CancelledError:
            if call.cancelled() and all(future.cancelled() for _, future in batch):
                return                # withdrawn: every requester went away before the model thread took it up
            raise
        except Exception as exc:  # a model failure fails the requests of this batch, not the worker
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), p in zip(batch, probabilities):
            if not future.done():   # the client may have gone away during the call
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
        await asyncio.gather(*self.calls, return_exceptions=True)   # batches already with the model
        self.executor.shutdown(wait=True)
