"""Decoding off the event loop: a small thread pool, and a memory budget shared by the decodes in flight.

One event loop answers every connection of the process.  While it runs
Pillow, nothing else moves: a 65 KB PNG of 1 x 16,777,216 pixels held it for
more than a second, so ``/healthz`` missed its probe and SIGTERM waited.  So
the loop never touches pixels.  Each upload goes through three steps:

1. **price** it: :func:`~images.decode_cost` reads the header only (size,
   mode, bit depth) and says how many bytes decoding it will hold;
2. **admit** it: :class:`DecodeBudget` reserves those bytes from a budget
   shared by every decode in flight.  If they do not fit, the decode waits
   its turn (first come, first served) for at most ``wait_s``, then gets
   503 + ``Retry-After``; one image that could never fit gets 413 at once;
3. **decode** it (:func:`decode_upload`): the checked decode the course
   writes (``open_checked``), then :func:`~images.prepare` and the model's
   normalisation.  The bytes go back to the budget when the thread is done,
   not when the request is: a client that hangs up does not free memory
   that a thread is still filling.

All three happen on a worker thread, in one trip (:func:`price_and_decode`)
when the budget has room; only when it is full does the loop wait for room
(a coroutine waiting costs nothing) and send the decode on a second trip.
Each trip to a thread and back costs about 0.2 ms, so the common case makes
one.

The pool has a few threads (``DECODE_THREADS``, 2 by default): Pillow
releases the GIL while it decodes, so they run beside the loop and the
model's thread, and the budget, not the thread count, bounds the memory.

**The one exception: a small, plain PNG decodes on the loop.**  A trip to
a thread is not free.  Besides the hand-over, the threads take turns at
Python's GIL: the event loop, the decode threads and the model's thread
each wait for it after every system call.  A CIFAR-10 upload is a 2-3 KB
PNG of 32 x 32 pixels that decodes in about 0.1 ms; sending each one to a
thread made the service 35% slower at 64 concurrent clients (`make p3-load`:
about 450 against 700 requests per second, 2.9 against 2.3 ms of CPU per
request).  So :func:`cheap_enough_for_the_loop` lets an upload decode
inline when its bytes *prove* the work is small, read without decoding:
a PNG of at most ``inline_bytes`` (``INLINE_DECODE_BYTES``, 8 KiB), at
most :data:`INLINE_PIXELS` pixels in its header, at most
:data:`INLINE_CHUNKS` chunks and none compressed but the pixels
themselves (a 3 KB ``zTXt`` chunk inflates to a megabyte: 10 ms on the
loop).  Its worst case is a fraction of a millisecond; everything else,
every JPEG and WebP included, goes to the pool.  ``INLINE_DECODE_BYTES=0``
sends every upload to the pool.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from phase3_production.serving import images
from phase3_production.serving.drift import rgb_features
from phase3_production.serving.errors import ApiError
from phase3_production.serving.images import DecodeCost, ImageRejected

MIB = 1024 * 1024
INLINE_PIXELS = 64 * 64      # at most this many pixels decode on the event loop...
INLINE_CHUNKS = 16           # ...in a PNG of at most this many chunks, of these kinds only:
# the image's own chunks, none of them compressed except IDAT, whose inflated size the pixels bound.
PLAIN_PNG_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"sBIT",
                    b"pHYs", b"bKGD", b"tIME"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DecodeBudget:
    """Bytes of decoded pixels the process may hold at once, shared by every decode in flight.

    A counting semaphore measured in bytes, with a first-come-first-served
    queue: a large decode at the head of the queue is not overtaken forever
    by small ones.  Worker threads take bytes with :meth:`try_reserve` and
    give them back with :meth:`release`; only a decode that has to *wait*
    does so on the event loop (:meth:`acquire`).  A lock guards the count
    and the queue, because both sides touch them.
    """

    def __init__(self, total_bytes: int, wait_s: float, retry_after_s: int = 1):
        self.total_bytes, self.wait_s, self.retry_after_s = total_bytes, wait_s, retry_after_s
        self.reserved = 0
        self.waiting: deque[tuple[int, asyncio.Future]] = deque()
        self.loop: asyncio.AbstractEventLoop | None = None     # where the waiters wait
        self.lock = threading.Lock()

    def try_reserve(self, nbytes: int) -> bool:
        """Any thread: take ``nbytes`` now if they fit and no decode is queued before; never waits."""
        with self.lock:
            if self.waiting or self.reserved + nbytes > self.total_bytes:
                return False
            self.reserved += nbytes
            return True

    async def acquire(self, nbytes: int) -> None:
        """On the loop: reserve ``nbytes``, waiting up to ``wait_s``; 413 if they can never fit, 503 if not in time."""
        if nbytes > self.total_bytes:
            raise ImageRejected(413, "image_too_costly",
                                f"decoding this image would hold {nbytes / MIB:,.0f} MiB; the service decodes "
                                f"within {self.total_bytes / MIB:,.0f} MiB: send a smaller image")
        if self.try_reserve(nbytes):
            return
        self.loop = asyncio.get_running_loop()
        turn = self.loop.create_future()
        with self.lock:
            self.waiting.append((nbytes, turn))
        self._wake()                          # bytes may have come back since try_reserve looked
        try:
            await asyncio.wait_for(turn, self.wait_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            if turn.done() and not turn.cancelled():
                self.release(nbytes)          # granted just as we gave up: hand it back
            else:
                self._forget(turn)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise ApiError(503, "decode_busy",
                           f"the service is decoding {self.reserved / MIB:,.0f} MiB of images already and this one "
                           f"needs {nbytes / MIB:,.0f} MiB more; retry shortly",
                           {"Retry-After": str(self.retry_after_s)}) from None

    def release(self, nbytes: int) -> None:
        """Any thread: give ``nbytes`` back; the waiting decodes that now fit are let in, on the loop."""
        with self.lock:
            self.reserved -= nbytes
            someone_waits = bool(self.waiting)
        if someone_waits and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake)

    def _forget(self, turn: asyncio.Future) -> None:
        with self.lock:
            self.waiting = deque(entry for entry in self.waiting if entry[1] is not turn)
        self._wake()                          # the one that left may have been blocking the head

    def _wake(self) -> None:
        """On the loop: grant the waiting decodes that fit, in their order."""
        granted = []
        with self.lock:
            while self.waiting:
                nbytes, turn = self.waiting[0]
                if turn.done():               # gave up already
                    self.waiting.popleft()
                    continue
                if self.reserved + nbytes > self.total_bytes:
                    break
                self.waiting.popleft()
                self.reserved += nbytes
                granted.append(turn)
        for turn in granted:
            turn.set_result(None)


class DecodePool:
    """Image work on a few worker threads, within a :class:`DecodeBudget`."""

    def __init__(self, threads: int, budget: DecodeBudget):
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        self.budget = budget

    async def run(self, function, *args, **kwargs):
        """``function(*args, **kwargs)`` on a worker thread; the loop serves other requests meanwhile."""
        return await asyncio.wrap_future(self.executor.submit(function, *args, **kwargs))

    async def run_within_budget(self, nbytes: int, function, *args, **kwargs):
        """Like :meth:`run`, once ``nbytes`` of the budget are reserved; they return when the thread is done."""
        await self.budget.acquire(nbytes)
        try:
            job = self.executor.submit(function, *args, **kwargs)
        except BaseException:
            self.budget.release(nbytes)
            raise
        job.add_done_callback(lambda _: self.budget.release(nbytes))
        return await asyncio.wrap_future(job)

    def close(self) -> None:
        """Start no more work; decodes already running finish on their threads."""
        self.executor.shutdown(wait=False, cancel_futures=True)


def decode_upload(data: bytes, settings, model) -> tuple[np.ndarray, np.ndarray]:
    """Thread side: the checked decode, then (model input, drift features) of the same pixels."""
    image = images.open_checked(data, allowed=settings.allowed_formats, max_pixels=settings.max_pixels,
                                max_bytes=settings.max_image_bytes)
    rgb = images.prepare(image, model.input_shape)
    return images.to_model_input(rgb, model.mean, model.std), rgb_features(rgb)


def price_and_decode(data: bytes, settings, model, budget: DecodeBudget):
    """Thread side, in one trip: price the upload, and decode it at once if the budget has room now.

    Returns what :func:`decode_upload` returns, or the :class:`~images.DecodeCost`
    when the budget is full: the loop then waits for room and decodes it.
    No price means open_checked refuses the upload from its header (not an
    image, too many pixels...) without decoding a pixel: no budget needed.
    """
    cost = images.decode_cost(data, allowed=settings.allowed_formats, max_pixels=settings.max_pixels)
    if cost is None:
        return decode_upload(data, settings, model)
    if not budget.try_reserve(cost.nbytes):
        return cost
    try:
        return decode_upload(data, settings, model)
    finally:
        budget.release(cost.nbytes)


def cheap_enough_for_the_loop(data: bytes, inline_bytes: int) -> bool:
    """True when ``data`` is a PNG whose decoding its own bytes prove small: it may decode on the loop.

    A PNG is an 8-byte signature, then chunks: a 4-byte length, a 4-byte
    kind, the data, a 4-byte checksum.  The first is ``IHDR`` (width and
    height, 4 bytes each).  Walking the chunk headers costs at most
    :data:`INLINE_CHUNKS` steps, and nothing is decoded.  The answer is True
    only for at most ``inline_bytes`` bytes, at most :data:`INLINE_PIXELS`
    pixels and at most :data:`INLINE_CHUNKS` chunks, all of the kinds in
    :data:`PLAIN_PNG_CHUNKS`: no text, colour profile or EXIF chunk, which
    Pillow would inflate or parse while it opens the file.  Anything else,
    damaged files included, is False: the pool's checked decode will say
    what is wrong with it.
    """
    # EXERCISE p3-serve.4: decide from the bytes alone whether a decode is small enough for the loop
    # hint: size first; PNG signature; IHDR first with width x height <= INLINE_PIXELS; walk <= INLINE_CHUNKS chunk headers
    if len(data) > inline_bytes or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 24:
        return False
    width, height = struct.unpack(">II", data[16:24])
    if width * height > INLINE_PIXELS:
        return False
    offset = len(PNG_SIGNATURE)
    for _ in range(INLINE_CHUNKS):
        if offset + 8 > len(data):
            return False
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind not in PLAIN_PNG_CHUNKS:
            return False
        if kind == b"IEND":
            return True
        offset += 12 + length
    return False
    # END EXERCISE


async def decode(pool: DecodePool, data: bytes, settings, model) -> tuple[np.ndarray, np.ndarray]:
    """Loop side: price, admit and decode the upload off the loop; wait on the loop only for room.

    A small, plain PNG (:func:`cheap_enough_for_the_loop`) is decoded here,
    at once: the trip to a thread would cost more than the decode.
    """
    if cheap_enough_for_the_loop(data, settings.inline_decode_bytes):
        return decode_upload(data, settings, model)
    result = await pool.run(price_and_decode, data, settings, model, pool.budget)
    if isinstance(result, DecodeCost):    # the budget was full: wait for room, then decode on a second trip
        return await pool.run_within_budget(result.nbytes, decode_upload, data, settings, model)
    return result
