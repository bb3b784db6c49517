"""p3-serve's decoding: priced from the header, the price covering what a decode really holds, admitted into a
shared memory budget, and run beside the event loop, never on it."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phase3_production import bad_inputs
from phase3_production.serving import decoding, images

pytestmark = getattr(pytest.mark, "p3-serve")
MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


# --------------------------------------------------------------------------- the price


def test_the_header_gives_size_mode_and_frames_without_decoding():
    frames = [Image.new("RGB", (40, 30), (10 * i, 0, 0)) for i in range(5)]
    animated = encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    for data, size, frames_expected in ((encoded(frames[0], "WEBP", quality=50), (40, 30), 1),
                                        (encoded(frames[0], "WEBP", lossless=True), (40, 30), 1),
                                        (animated, (40, 30), 5)):
        size_read, mode, frame_count = images.webp_header(data)
        assert (size_read, frame_count) == (size, frames_expected) and mode == "RGBA"
    apng = encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    cost = images.decode_cost(apng)
    assert (cost.width, cost.height, cost.frames, cost.mode) == (40, 30, 5, "RGB")
    one = images.decode_cost(encoded(frames[0], "PNG"))
    assert cost.nbytes == one.nbytes, "only the first frame is decoded: frames must not multiply the price"
    sixteen = images.decode_cost(bad_inputs.png_of_rows(64, 64, b"\x80\x00" * 64, bit_depth=16))
    eight = images.decode_cost(bad_inputs.png_of_rows(64, 64, b"\x80" * 64))
    assert sixteen.mode == "I;16" and sixteen.nbytes > eight.nbytes


def test_what_open_checked_refuses_from_the_header_has_no_price():
    assert images.decode_cost(b"") is None and images.decode_cost(b"hello, not pixels" * 8) is None
    assert images.decode_cost(encoded(Image.new("RGB", (8, 8)), "GIF")) is None                  # not allowed
    assert images.decode_cost(bad_inputs.png_bomb(50_000, 50_000)) is None                      # too many pixels
    assert images.decode_cost(b"\x89PNG\r\n\x1a\n" + b"\0" * 50) is None                        # damaged header


# Run in a small process of its own: resetting and reading the high-water mark of a large pytest process
# (torch loaded, many tests' garbage) costs seconds; a process with Pillow and NumPy only costs milliseconds.
MEASURE = r"""
import ctypes, gc, io, json, re, sys
from pathlib import Path
from PIL import Image
from phase3_production import bad_inputs
from phase3_production.serving import images

def resident(field):
    return int(re.search(field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024

def encoded(image, fmt, **params):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()

side = 1024
uploads = {
    "1 x 1,048,576 strip (a pointer per row)": bad_inputs.png_of_rows(1, side * side, b"\x80"),
    "16-bit RGBA PNG": bad_inputs.png_of_rows(side, side, b"\x80\x00" * 4 * side, bit_depth=16, colour_type=6),
    "16-bit greyscale PNG": bad_inputs.png_of_rows(side, side, b"\x80\x00" * side, bit_depth=16),
    "palette PNG with a transparent colour": encoded(Image.new("P", (side, side)), "PNG", transparency=0),
    "lossless WebP": encoded(Image.new("RGB", (side, side), (1, 2, 3)), "WEBP", lossless=True, method=0),
    "JPEG": encoded(Image.new("RGB", (side, side), (1, 2, 3)), "JPEG"),
}
found = {}
for name, data in uploads.items():
    price = images.decode_cost(data, max_pixels=side * side).nbytes
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)           # give freed heap back, so the start is honest
    Path("/proc/self/clear_refs").write_text("5")     # reset the high-water mark (VmHWM) to the current RSS
    before = resident("VmRSS")
    images.prepare(images.open_checked(data, max_pixels=side * side, max_bytes=len(data)), (3, 32, 32))
    found[name] = (price, resident("VmHWM") - before)
print(json.dumps(found))
"""


def test_the_price_covers_what_a_decode_really_holds():
    """Decode real bombs and compare the resident-memory peak (Linux /proc) with the price read from the header."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the memory high-water mark here ({exc}); this measurement needs Linux /proc")
    run = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    for name, (price, peak) in json.loads(run.stdout).items():
        assert peak <= 1.1 * price, f"{name}: the decode held {peak / MIB:.1f} MiB, priced {price / MIB:.1f} MiB"
        assert price <= 3 * peak + 4 * MIB, f"{name}: priced {price / MIB:.1f} MiB for a {peak / MIB:.1f} MiB peak"


def test_a_big_image_is_reduced_before_it_is_converted():
    strip = images.shrink(Image.new("L", (1, 102_400)), (32, 32))
    assert strip.size == (1, 256)                       # boxes of 102,400 // (8 x 32) = 400 rows: 256 left
    assert images.shrink(Image.new("RGB", (500, 300)), (32, 32)).size == (500, 300)   # under 8x: untouched
    rgb = images.prepare(Image.new("RGBA", (3000, 2000), (200, 100, 50, 128)), (3, 32, 32))
    assert rgb.shape == (32, 32, 3) and np.abs(rgb.astype(int) - (100, 50, 25)).max() <= 1   # composited on black


# --------------------------------------------------------------------------- the budget


def test_the_budget_admits_what_fits_queues_in_order_and_refuses_what_cannot_fit():
    from phase3_production.serving.errors import ApiError
    from phase3_production.serving.images import ImageRejected

    async def scenario():
        budget = decoding.DecodeBudget(100, wait_s=0.05)
        await budget.acquire(60)
        with pytest.raises(ApiError) as busy:                      # 60 + 60 > 100: waits 50 ms, then 503
            await budget.acquire(60)
        assert busy.value.status == 503 and busy.value.code == "decode_busy" and budget.reserved == 60
        with pytest.raises(ImageRejected) as never:                # could never fit: 413 at once
            await budget.acquire(101)
        assert never.value.status == 413 and never.value.code == "image_too_costly"
        budget.wait_s = 5.0
        big = asyncio.ensure_future(budget.acquire(70))            # waits for the 60 to come back
        await asyncio.sleep(0.01)
        small = asyncio.ensure_future(budget.acquire(10))          # would fit now, but waits behind the big one
        await asyncio.sleep(0.01)
        assert not big.done() and not small.done() and budget.reserved == 60
        budget.release(60)
        await asyncio.gather(big, small)
        assert budget.reserved == 80 and not budget.waiting
        cancelled = asyncio.ensure_future(budget.acquire(50))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert budget.reserved == 80 and not budget.waiting       # a request that went away leaves nothing behind

    asyncio.run(scenario())


def test_the_budget_is_returned_when_the_thread_finishes_not_when_the_request_gives_up():
    async def scenario():
        pool = decoding.DecodePool(1, decoding.DecodeBudget(100, wait_s=1.0))
        job = asyncio.ensure_future(pool.run_within_budget(40, time.sleep, 0.2))
        await asyncio.sleep(0.05)
        job.cancel()                                   # the client hung up; the thread is still decoding
        await asyncio.sleep(0.01)
        held_while_running = pool.budget.reserved
        await asyncio.sleep(0.3)
        pool.close()
        return held_while_running, pool.budget.reserved

    assert asyncio.run(scenario()) == (40, 0)


def test_a_bomb_decodes_beside_the_event_loop_not_on_it(model_dir):
    """While a 1 x 4,194,304 PNG decodes, the loop keeps ticking every few milliseconds."""
    from phase3_production.serving.config import Settings
    from phase3_production.serving.model import ServedModel

    settings = Settings(model_dir=model_dir)
    model = ServedModel.load(model_dir)
    bomb = bad_inputs.png_of_rows(1, settings.max_pixels, b"\x80")

    async def scenario():
        pool = decoding.DecodePool(1, decoding.DecodeBudget(settings.decode_memory_bytes, 1.0))
        gaps, done = [], asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.ensure_future(ticker())
        start = time.perf_counter()
        x, _ = await decoding.decode(pool, bomb, settings, model)
        took = time.perf_counter() - start
        done.set()
        await ticking
        pool.close()
        return x, took, max(gaps)

    x, took, worst_gap = asyncio.run(scenario())
    assert x.shape == (3, 32, 32)
    assert worst_gap < took / 3, f"the loop stalled for {worst_gap * 1000:.0f} ms of a {took * 1000:.0f} ms decode"


class CountingPool(decoding.DecodePool):
    """A real pool that counts the uploads sent to its threads."""

    def __init__(self):
        super().__init__(1, decoding.DecodeBudget(256 * MIB, 1.0))
        self.trips = 0

    async def run(self, function, *args, **kwargs):
        self.trips += 1
        return await super().run(function, *args, **kwargs)


def test_a_small_plain_png_decodes_on_the_loop_and_everything_else_in_the_pool(model_dir):
    """The everyday 32x32 upload skips the trip to a thread (same answer); a zTXt chunk, a JPEG, a large file,
    or INLINE_DECODE_BYTES=0 sends it to the pool."""
    import zlib

    from phase3_production.serving.config import Settings
    from phase3_production.serving.model import ServedModel

    model = ServedModel.load(model_dir)
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    png = encoded(Image.fromarray(rgb), "PNG")
    comment = b"c\x00\x00" + zlib.compress(bytes(1 << 20), 9)     # keyword, NUL, method 0, 1 MiB of deflated zeros
    ztxt = len(comment).to_bytes(4, "big") + b"zTXt" + comment + zlib.crc32(b"zTXt" + comment).to_bytes(4, "big")
    with_ztxt = png[:33] + ztxt + png[33:]                           # right after IHDR (8 + 25 bytes)
    uploads = {"plain png": png, "png with zTXt": with_ztxt, "jpeg": encoded(Image.fromarray(rgb), "JPEG"),
               "png over the size limit": encoded(Image.fromarray(
                   np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")}

    async def trips(data: bytes, settings: Settings):
        pool = CountingPool()
        try:
            x, features = await decoding.decode(pool, data, settings, model)
        finally:
            pool.close()
        return pool.trips, x

    default = Settings(model_dir=model_dir)
    found = {name: asyncio.run(trips(data, default)) for name, data in uploads.items()}
    assert {name: count for name, (count, _) in found.items()} == {
        "plain png": 0, "png with zTXt": 1, "jpeg": 1, "png over the size limit": 1}
    assert images.open_checked(with_ztxt).size == (32, 32), "the zTXt test file must be a valid PNG"
    expected, _ = decoding.decode_upload(png, default, model)
    np.testing.assert_array_equal(found["plain png"][1], expected)
    assert asyncio.run(trips(png, Settings(model_dir=model_dir, inline_decode_bytes=0)))[0] == 1
    with pytest.raises(ValueError, match="INLINE_DECODE_BYTES"):
        Settings(model_dir=model_dir, inline_decode_bytes=-1)
