"""The micro-batcher's behaviour around the model thread: few requests in flight get their own model call and
many are batched; cancelled requests cost no model call; the next batch is handed to the model thread before
the running one ends (so the model never waits for the event loop).

Every scenario uses a fake model that records the rows it was called with (each row holds its request's
number) and that can be held inside its first call by a ``threading.Event``: requests submitted meanwhile
queue up, exactly as they do behind a busy model in the service.  Waits are tens of milliseconds.  The
scenarios about batches set ``BATCH_THRESHOLD=0`` (batch whatever is in flight), so that a handful of
requests makes a batch.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from phase3_production.serving.batcher import MicroBatcher

pytestmark = getattr(pytest.mark, "p3-serve")


class HeldModel:
    """A model whose first call waits until ``release()``; it records which request numbers each call saw."""

    def __init__(self):
        self.calls: list[list[int]] = []
        self.started: list[float] = []       # perf_counter when each call began, in the model thread
        self.inside = threading.Event()      # set once the first call has begun
        self.gate = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.started.append(time.perf_counter())
        self.calls.append([int(r) for r in rows[:, 0, 0, 0]])
        if len(self.calls) == 1:
            self.inside.set()
            self.gate.wait(5)
        return rows.reshape(len(rows), -1)[:, :1] * 10.0

    def release(self) -> None:
        self.gate.set()

    def rows_seen(self) -> set[int]:
        return {r for call in self.calls for r in call}


def row(number: int) -> np.ndarray:
    return np.full((1, 1, 2, 2), number, np.float32)


async def model_busy_with_request_0(batcher: MicroBatcher, model: HeldModel) -> asyncio.Task:
    """Submit request 0 and return once the model thread is inside its call (held there)."""
    first = asyncio.ensure_future(batcher.submit(row(0)))
    while not model.inside.is_set():
        await asyncio.sleep(0.001)
    return first


@pytest.fixture
def always_batch(monkeypatch):
    monkeypatch.setenv("BATCH_THRESHOLD", "0")


def test_few_requests_in_flight_get_their_own_call_and_many_are_batched(monkeypatch):
    """max_batch 4, so batching starts at 4 images in flight: requests 1-3 arrive behind request 0 and each gets
    its own call, as with batching off; 4-8 find 4 or more in flight and are batched."""
    monkeypatch.delenv("BATCH_THRESHOLD", raising=False)
    model = HeldModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=4)
        await batcher.start()
        first = await model_busy_with_request_0(batcher, model)
        later = [asyncio.ensure_future(batcher.submit(row(n))) for n in range(1, 9)]
        await asyncio.sleep(0.01)
        model.release()
        answers = [await first] + [await task for task in later]
        await batcher.close()
        return answers

    answers = asyncio.run(scenario())
    assert [float(a[0][0]) for a in answers] == [10.0 * n for n in range(9)]
    assert model.calls[:4] == [[0], [1], [2], [3]], f"calls: {model.calls}"
    assert sorted(r for call in model.calls[4:] for r in call) == [4, 5, 6, 7, 8]
    assert max(len(call) for call in model.calls[4:]) > 1 and max(len(call) for call in model.calls) <= 4, (
        f"calls: {model.calls}")


@pytest.mark.parametrize("enabled", [True, False], ids=["batching on", "batching off"])
def test_requests_cancelled_before_the_model_takes_them_up_cost_no_model_call(enabled, always_batch):
    """Request 1 is cancelled while it waits for the model thread (its batch handed over, or still queued);
    request 2 is cancelled in the queue; request 3 stays.  Only 0 and 3 may reach the model."""
    model = HeldModel()

    async def scenario():
        batcher = MicroBatcher(model, enabled=enabled, max_batch=8)
        await batcher.start()
        first = await model_busy_with_request_0(batcher, model)
        later = {1: asyncio.ensure_future(batcher.submit(row(1)))}
        for _ in range(5):                  # let the worker gather request 1 and hand it over, if it will
            await asyncio.sleep(0)
        later.update({n: asyncio.ensure_future(batcher.submit(row(n))) for n in (2, 3)})
        await asyncio.sleep(0)
        later[1].cancel()
        later[2].cancel()
        await asyncio.sleep(0.01)
        model.release()
        answers = [await first, await later[3]]
        for n in (1, 2):
            with pytest.raises(asyncio.CancelledError):
                await later[n]
        assert batcher.pending == 0, "a cancelled request still counts against max_queue"
        await batcher.close()
        return answers

    answers = asyncio.run(scenario())
    assert [float(a[0][0]) for a in answers] == [0.0, 30.0]
    assert model.rows_seen() == {0, 3}, f"the model was called with {model.calls}: cancelled requests ran"


def test_a_batch_whose_requesters_all_left_is_not_run(always_batch):
    """Every request of the waiting batch is cancelled: no model call at all after the first."""
    model = HeldModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=8)
        await batcher.start()
        first = await model_busy_with_request_0(batcher, model)
        later = [asyncio.ensure_future(batcher.submit(row(n))) for n in (1, 2)]
        for _ in range(5):
            await asyncio.sleep(0)
        for task in later:
            task.cancel()
        await asyncio.sleep(0.01)
        model.release()
        await first
        await asyncio.sleep(0.05)           # time for a (wrong) call of the abandoned batch to happen
        await batcher.close()

    asyncio.run(scenario())
    assert model.calls == [[0]], f"the model was called with {model.calls}"


def test_the_next_batch_waits_in_the_model_thread_not_on_the_event_loop(always_batch):
    """Request 1 arrives while request 0 runs.  The moment call 0 ends, the model thread must start request 1
    by itself - even while the event loop is busy (here: blocked for 0.2 s) and cannot gather a batch."""
    model = HeldModel()

    async def scenario():
        batcher = MicroBatcher(model, max_batch=8)
        await batcher.start()
        first = await model_busy_with_request_0(batcher, model)
        second = asyncio.ensure_future(batcher.submit(row(1)))
        for _ in range(5):
            await asyncio.sleep(0)
        model.release()
        time.sleep(0.2)                     # the event loop is busy: parsing, decoding, writing replies...
        loop_free_at = time.perf_counter()
        answers = [await first, await second]
        await batcher.close()
        return answers, loop_free_at

    answers, loop_free_at = asyncio.run(scenario())
    assert [float(a[0][0]) for a in answers] == [0.0, 10.0]
    assert model.calls == [[0], [1]]
    assert model.started[1] < loop_free_at, (
        f"call 1 began {1000 * (model.started[1] - loop_free_at):.1f} ms after the event loop was free again: "
        "the model thread sat idle, waiting for the event loop to hand it the next batch")


def test_the_tuning_settings_come_from_the_environment_through_settings(monkeypatch):
    """Settings reads BATCH_THRESHOLD and BATCHES_IN_FLIGHT (checked, named in the error); the batcher takes them."""
    from phase3_production.serving.config import Settings

    for name in ("BATCHES_IN_FLIGHT", "BATCH_THRESHOLD", "MAX_BATCH"):
        monkeypatch.delenv(name, raising=False)
    default = MicroBatcher(lambda x: x, max_batch=8)
    assert (default.batches_in_flight, default.batch_threshold) == (2, 8)
    monkeypatch.setenv("BATCHES_IN_FLIGHT", "1")
    monkeypatch.setenv("BATCH_THRESHOLD", "0")
    settings = Settings.from_env()
    assert (settings.batches_in_flight, settings.batch_threshold) == (1, 0)
    monkeypatch.setenv("BATCHES_IN_FLIGHT", "5")
    monkeypatch.setenv("BATCH_THRESHOLD", "7")
    assert (Settings.from_env().batches_in_flight, Settings.from_env().batch_threshold) == (5, 7)
    for name, bad in (("BATCHES_IN_FLIGHT", "0"), ("BATCHES_IN_FLIGHT", "two"), ("BATCH_THRESHOLD", "-1"),
                      ("BATCH_THRESHOLD", "1.5")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            Settings.from_env()
        monkeypatch.setenv(name, "1")
    with pytest.raises(ValueError, match="batches_in_flight"):
        MicroBatcher(lambda x: x, batches_in_flight=0, batch_threshold=0)
    with pytest.raises(ValueError, match="batch_threshold"):
        MicroBatcher(lambda x: x, batch_threshold=-1)
