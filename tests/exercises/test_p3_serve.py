"""Checks for p3-serve's exercises (``make check M=p3-serve``), and the mistakes they must catch.

The expected answers are written here, independently of the code under test:
the status and error code of each hostile upload from the API's table, the
model input by torch's own permute and arithmetic, and the batches by
counting what a queue holds.  The micro-batcher's checks run on a fresh
event loop (``asyncio.run``) with waits of milliseconds.  The raw JPEG's
path to the model input (p3-serve.5) is held against both sides it must
agree with: training's own decoder and normalisation (``common/formats.py``,
``common/augment.py``), and the service's own resizing (``images.prepare``,
plain code, never a stub) followed by the arithmetic written out here.
"""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib

import numpy as np
import torch
from PIL import Image

from common import augment, formats
from ml60.grading import exercise, expect, wrong_answer
from phase3_production import model_input
from phase3_production.serving import batcher, images

ALLOWED = ("PNG", "JPEG", "WEBP", "BMP")


def encoded(fmt: str, size=(16, 12), mode="RGB", seed: int = 0) -> bytes:
    """A small image of random pixels (noise does not compress: sizes are predictable)."""
    rng = np.random.default_rng(seed)
    width, height = size
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buffer, fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header that declares ``width x height`` RGB pixels, followed by almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def admit(name: str, data: bytes, *, max_pixels: int = 1_000_000, max_bytes: int = 1_000_000):
    """``(status, code)`` when open_checked refuses the upload, else the image it returned.

    Any other exception is what the route would turn into a 500: the check fails on it.
    """
    try:
        return images.open_checked(data, allowed=ALLOWED, max_pixels=max_pixels, max_bytes=max_bytes)
    except images.ImageRejected as exc:
        return exc.status, exc.code
    except NotImplementedError:
        raise
    except Exception as exc:   # noqa: BLE001 - anything but ImageRejected is the service's failure
        expect(False, f"{name}: open_checked let {type(exc).__name__} ({exc}) escape, and the service answers "
                      "500 (its own fault) to a hostile upload: every failure must be an ImageRejected with its "
                      "4xx; is Pillow's decoding done with decode() (inside a try), not a bare image.load()?")


def expect_refused(name: str, data: bytes, status: int, code: str, advice: str, **limits) -> None:
    got = admit(name, data, **limits)
    if isinstance(got, Image.Image):
        expect(False, f"{name}: accepted (a {got.format} image of {got.size[0]}x{got.size[1]}), expected a {status} "
                      f"{code}: {advice}")
    expect(got == (status, code), f"{name}: refused with {got[0]} {got[1]}, expected {status} {code}: {advice}")


# --------------------------------------------------------------------------- p3-serve.1 refuse a hostile upload


@exercise("p3-serve.1")
def test_open_checked_accepts_the_allowed_formats_and_decodes_them():
    for fmt in ("PNG", "JPEG", "BMP"):
        image = admit(f"a 16x12 {fmt}", encoded(fmt))
        expect(isinstance(image, Image.Image), f"a valid 16x12 {fmt} was refused with {image}: {fmt} is allowed")
        expect(image.size == (16, 12), f"a 16x12 {fmt} came back as {image.size}: return the image as decoded")
    grey = admit("a 16x12 greyscale PNG", encoded("PNG", mode="L"))
    expect(isinstance(grey, Image.Image), f"a greyscale PNG was refused with {grey}: any mode is fine here "
                                          "(to_rgb converts it later)")


@exercise("p3-serve.1")
def test_open_checked_sniffs_the_format_from_the_bytes():
    expect_refused("a GIF", encoded("GIF"), 415, "unsupported_format",
                   "GIF is not in the allowed list; was the format left to Pillow's guess? Sniff it from the first "
                   "bytes (sniff_format) and answer 415 unsupported_format for a known format outside `allowed`")
    expect_refused("a TIFF", encoded("TIFF"), 415, "unsupported_format",
                   "TIFF is a known format outside `allowed`: 415 unsupported_format")
    expect_refused("plain text", b"hello, this is text, not pixels" * 4, 400, "not_an_image",
                   "no image signature in the first bytes: 400 not_an_image")
    expect_refused("an empty upload", b"", 400, "empty_image", "no bytes at all: 400 empty_image, checked first")


@exercise("p3-serve.1")
def test_open_checked_enforces_the_limits_before_decoding():
    big = encoded("PNG", size=(64, 64))
    expect_refused(f"a {len(big):,}-byte PNG with max_bytes=2,000", big, 413, "image_too_large",
                   "the file is over max_bytes: 413 image_too_large", max_bytes=2_000)
    expect_refused("a complete 1,200 x 1,000 PNG with max_pixels=1,000,000", encoded("PNG", (1200, 1000), "L"),
                   413, "too_many_pixels", "width x height is over max_pixels: 413 too_many_pixels",
                   max_bytes=4_000_000)
    expect_refused("a PNG header declaring 3,000 x 3,000 pixels with almost no data", png_declaring(3000, 3000),
                   413, "too_many_pixels",
                   "count the pixels from the header, before decode(): decoding first spends the memory a "
                   "decompression bomb asks for (here it fails on the missing data, so the answer is wrong too)")


@exercise("p3-serve.1")
def test_open_checked_turns_damaged_data_into_a_400():
    png = encoded("PNG", size=(32, 32))
    expect_refused("a PNG cut at 60%", png[: len(png) * 3 // 5], 400, "corrupt_image",
                   "the header is fine but the pixel data stops early: decode() fully, and it is a "
                   "400 corrupt_image (an image that is only opened, never decoded, fails later, as a 500)")
    expect_refused("a PNG signature followed by zeros", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 400, "corrupt_image",
                   "read_header cannot parse it: 400 corrupt_image")


@wrong_answer("p3-serve.1", diagnosis="count the pixels from the header, before decode()")
def open_checked_decodes_before_counting_pixels(data, *, allowed=ALLOWED, max_pixels=4096 * 4096,
                                                max_bytes=4 * 1024 * 1024):
    """The image is decoded first and its size checked after: a decompression bomb is expanded in memory."""
    if not data:
        raise images.ImageRejected(400, "empty_image", "empty")
    if len(data) > max_bytes:
        raise images.ImageRejected(413, "image_too_large", "too large")
    kind = images.sniff_format(data)
    if kind is None:
        raise images.ImageRejected(400, "not_an_image", "not an image")
    if kind not in allowed:
        raise images.ImageRejected(415, "unsupported_format", "format")
    image = images.read_header(data, kind)
    images.decode(image, kind)
    if image.size[0] * image.size[1] > max_pixels:
        raise images.ImageRejected(413, "too_many_pixels", "pixels")
    return image


@wrong_answer("p3-serve.1", diagnosis="was the format left to Pillow's guess?")
def open_checked_trusts_pillow(data, *, allowed=ALLOWED, max_pixels=4096 * 4096, max_bytes=4 * 1024 * 1024):
    """Pillow is asked to open whatever the bytes are: every decoder it has sees them, GIF and TIFF included."""
    if not data:
        raise images.ImageRejected(400, "empty_image", "empty")
    if len(data) > max_bytes:
        raise images.ImageRejected(413, "image_too_large", "too large")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:   # noqa: BLE001
        raise images.ImageRejected(400, "not_an_image", "not an image") from exc
    if image.size[0] * image.size[1] > max_pixels:
        raise images.ImageRejected(413, "too_many_pixels", "pixels")
    images.decode(image, image.format)
    return image


@wrong_answer("p3-serve.1", diagnosis="not a bare image.load()")
def open_checked_loads_outside_a_try(data, *, allowed=ALLOWED, max_pixels=4096 * 4096, max_bytes=4 * 1024 * 1024):
    """The pixels are decoded with a bare image.load(): a truncated upload raises OSError, a 500."""
    if not data:
        raise images.ImageRejected(400, "empty_image", "empty")
    if len(data) > max_bytes:
        raise images.ImageRejected(413, "image_too_large", "too large")
    kind = images.sniff_format(data)
    if kind is None:
        raise images.ImageRejected(400, "not_an_image", "not an image")
    if kind not in allowed:
        raise images.ImageRejected(415, "unsupported_format", "format")
    image = images.read_header(data, kind)
    if image.size[0] * image.size[1] > max_pixels:
        raise images.ImageRejected(413, "too_many_pixels", "pixels")
    image.load()
    return image


# --------------------------------------------------------------------------- p3-serve.2 preprocessing as in training

MEAN = np.array([0.49, 0.48, 0.45], np.float32).reshape(3, 1, 1)
STD = np.array([0.25, 0.24, 0.26], np.float32).reshape(3, 1, 1)


def torch_reference(rgb: np.ndarray) -> np.ndarray:
    """What training fed the network: a channels-first float tensor in 0..1, normalised per channel."""
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    return ((x - torch.from_numpy(MEAN)) / torch.from_numpy(STD)).numpy()


@exercise("p3-serve.2")
def test_to_model_input_matches_the_training_preprocessing():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)     # H=4, W=5, C=3: every axis its own size
    try:
        x = images.to_model_input(rgb, MEAN, STD)
    except NotImplementedError:
        raise
    except Exception as exc:   # noqa: BLE001 - a shape error is the diagnosis, not a crash of the check
        expect(False, f"to_model_input raised {type(exc).__name__} ({exc}) on a (4, 5, 3) image with mean and "
                      "std shaped (3, 1, 1): move the channel axis first before subtracting the mean")
    expected = torch_reference(rgb)
    x = np.asarray(x)
    if x.shape == (4, 5, 3):
        expect(False, "the output is still (H, W, C) = (4, 5, 3): the model takes channels first, (C, H, W); "
                      "transpose(2, 0, 1)")
    expect(x.shape == (3, 4, 5), f"a (4, 5, 3) image should become (3, 4, 5), got {x.shape}")
    expect(x.dtype == np.float32, f"dtype {x.dtype}: ONNX Runtime's input is float32")
    error = float(np.abs(x - expected).max())
    if error < 1e-5:
        return
    chw = rgb.transpose(2, 0, 1).astype(np.float64)
    scrambled = rgb.reshape(3, 4, 5).astype(np.float64) / 255
    candidates = {
        "the pixels were not divided by 255: training scaled them to 0..1 first":
            (chw - MEAN) / STD,
        "the pixels are scrambled: reshape(C, H, W) keeps the bytes in H, W, C order; transpose moves the axis":
            (scrambled - MEAN) / STD,
        "mean and std are swapped: (x - mean) / std, not (x - std) / mean":
            (chw / 255 - STD) / MEAN,
        "this is the inverse of the normalisation, x * std + mean: it is (x - mean) / std":
            chw / 255 * STD + MEAN,
    }
    for diagnosis, wrong in candidates.items():
        expect(np.abs(x - wrong).max() > 1e-4, diagnosis)
    expect(False, f"the model input differs from training's preprocessing by up to {error:.3g}: "
                  "x = (pixels / 255 - mean) / std, channels first")


@exercise("p3-serve.2")
def test_to_model_input_keeps_each_channel_with_its_own_statistics():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 128, 0        # pure colours: red 1.0, green ~0.5, blue 0
    try:
        x = np.asarray(images.to_model_input(rgb, MEAN, STD))
    except NotImplementedError:
        raise
    except Exception as exc:   # noqa: BLE001
        expect(False, f"to_model_input raised {type(exc).__name__} ({exc}) on a (2, 3, 3) image: "
                      "move the channel axis first before subtracting the mean")
    expect(x.shape == (3, 2, 3), f"a (2, 3, 3) image should become (3, 2, 3), got {x.shape}: channels first")
    for c, level in enumerate((255, 128, 0)):
        want = (level / 255 - MEAN[c, 0, 0]) / STD[c, 0, 0]
        expect(np.allclose(x[c], want, atol=1e-5),
               f"channel {c} should be ({level}/255 - {MEAN[c, 0, 0]:.2f}) / {STD[c, 0, 0]:.2f} = {want:.4f} "
               f"everywhere, got {np.unique(x[c].round(4)).tolist()}: is each channel normalised with its own "
               "mean and std, after moving the channel axis first?")


@wrong_answer("p3-serve.2", diagnosis="were not divided by 255")
def to_model_input_without_scaling(rgb, mean, std):
    """The 0..255 pixels are normalised directly: the model sees values 255 times too large."""
    return np.ascontiguousarray((rgb.astype(np.float32).transpose(2, 0, 1) - mean) / std, dtype=np.float32)


@wrong_answer("p3-serve.2", diagnosis="reshape(C, H, W) keeps the bytes")
def to_model_input_reshaped(rgb, mean, std):
    """reshape instead of transpose: the shape is right, the pixels are scrambled across channels."""
    pixels = rgb.astype(np.float32).reshape(rgb.shape[2], rgb.shape[0], rgb.shape[1]) / 255.0
    return np.ascontiguousarray((pixels - mean) / std, dtype=np.float32)


@wrong_answer("p3-serve.2", diagnosis="mean and std are swapped")
def to_model_input_mean_std_swapped(rgb, mean, std):
    """The statistics are used the wrong way round: (x - std) / mean."""
    pixels = rgb.astype(np.float32).transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray((pixels - std) / mean, dtype=np.float32)


@wrong_answer("p3-serve.2", diagnosis="still (H, W, C)")
def to_model_input_channels_last(rgb, mean, std):
    """The channel axis stays last, as Pillow delivers it, and the statistics are broadcast along it."""
    return np.ascontiguousarray((rgb.astype(np.float32) / 255.0 - mean.reshape(-1)) / std.reshape(-1),
                                dtype=np.float32)


# --------------------------------------------------------------------------- p3-serve.3 gather a micro-batch


def run_gather(queue_items, max_batch: int, max_wait_s: float, producer=None, limit_s: float = 2.0):
    """Run gather_batch once on a fresh event loop: (batch, seconds taken, items left in the queue).

    ``producer(queue)`` is a coroutine started beside it, to add items later.
    A call that has not returned after ``limit_s`` fails the check.
    """
    async def scenario():
        queue = asyncio.Queue()
        for item in queue_items:
            queue.put_nowait(item)
        feeder = asyncio.ensure_future(producer(queue)) if producer else None
        start = time.perf_counter()
        try:
            batch = await asyncio.wait_for(batcher.gather_batch(queue, max_batch, max_wait_s), limit_s)
        except asyncio.TimeoutError:
            batch = None
        taken = time.perf_counter() - start
        if feeder:
            feeder.cancel()
        return batch, taken, queue.qsize()

    batch, taken, left = asyncio.run(scenario())
    expect(batch is not None, f"gather_batch(max_batch={max_batch}, max_wait_s={max_wait_s}) had not returned after "
                              f"{limit_s} s with {len(queue_items)} items queued: does it wait for a full batch? "
                              "Return when the batch is full or the deadline passes, whichever comes first")
    expect(isinstance(batch, list), f"gather_batch returned a {type(batch).__name__}: return the items as a list")
    return batch, taken, left


def trickle(items, every_s: float, first_after_s: float = 0.0):
    async def producer(queue):
        await asyncio.sleep(first_after_s)
        for item in items:
            queue.put_nowait(item)
            await asyncio.sleep(every_s)
    return producer


@exercise("p3-serve.3")
def test_gather_batch_takes_what_is_queued_up_to_max_batch():
    batch, taken, left = run_gather(range(10), max_batch=4, max_wait_s=0.0)
    expect(len(batch) <= 4, f"10 queued items and max_batch=4 gave a batch of {len(batch)}: stop at max_batch; "
                            "the rest stay queued for the next batch")
    expect(batch == [0, 1, 2, 3] and left == 6,
           f"10 queued items, max_batch=4: expected [0, 1, 2, 3] with 6 left in the queue, got {batch} with "
           f"{left} left: take the oldest first, each once")
    batch, taken, left = run_gather(range(3), max_batch=8, max_wait_s=0.0)
    expect(batch == [0, 1, 2], f"3 queued items, max_batch=8, max_wait_s=0: expected all 3 at once, got {batch}: "
                               "with max_wait_s = 0 take what is queued now and return")
    expect(taken < 0.2, f"3 queued items with max_wait_s=0 took {1000 * taken:.0f} ms: with no wait allowed, "
                        "return as soon as the queue is empty")


@exercise("p3-serve.3")
def test_gather_batch_waits_for_the_first_item():
    batch, taken, _ = run_gather([], max_batch=8, max_wait_s=0.0, producer=trickle(["a"], 1.0, first_after_s=0.03))
    expect(batch == ["a"], f"an empty queue, then one item after 30 ms: expected ['a'], got {batch}: block on "
                           "`await queue.get()` for the first item (an idle worker sleeps there; it never returns "
                           "an empty batch)")
    expect(taken >= 0.02, f"returned after {1000 * taken:.0f} ms, before the first item arrived at 30 ms")


@exercise("p3-serve.3")
def test_gather_batch_returns_a_full_batch_at_once():
    batch, taken, left = run_gather(range(6), max_batch=4, max_wait_s=0.5)
    expect(batch == [0, 1, 2, 3] and left == 2, f"6 queued, max_batch=4: expected [0, 1, 2, 3] and 2 left, got "
                                                f"{batch} and {left} left")
    expect(taken < 0.25, f"a batch that was full at once still took {1000 * taken:.0f} ms (max_wait_s = 500 ms): "
                         "the batch waited out its window though it was full; the wait is for company, "
                         "so stop as soon as len(batch) == max_batch")


@exercise("p3-serve.3")
def test_gather_batch_waits_up_to_max_wait_for_company():
    batch, taken, _ = run_gather(["a"], max_batch=8, max_wait_s=0.15,
                                 producer=trickle(["b", "c"], 0.02, first_after_s=0.02))
    expect(batch == ["a", "b", "c"],
           f"one item queued, two more arriving at 20 and 40 ms, max_wait_s = 150 ms: expected ['a', 'b', 'c'], got "
           f"{batch}: it never waits for company; after taking what is queued, await more "
           "(asyncio.wait_for(queue.get(), time left)) until the deadline")
    expect(0.1 <= taken < 0.6, f"took {1000 * taken:.0f} ms: with the batch not full, it should return at the "
                               "deadline, 150 ms after the first item")


@exercise("p3-serve.3")
def test_gather_batch_has_one_deadline_per_batch():
    batch, taken, _ = run_gather(["first"], max_batch=100, max_wait_s=0.1,
                                 producer=trickle(range(40), 0.025, first_after_s=0.025))
    expect(taken < 0.45, f"one item every 25 ms with max_wait_s = 100 ms: the batch closed after "
                         f"{1000 * taken:.0f} ms with {len(batch)} items, expected about 100 ms and 4 or 5 items: "
                         "the wait restarts with every arrival, so a steady trickle holds the batch open; "
                         "set one deadline, max_wait_s after the first item, and wait only for the time left")
    expect(2 <= len(batch) <= 10, f"one item every 25 ms for 100 ms gave a batch of {len(batch)}, expected about 5")


@wrong_answer("p3-serve.3", diagnosis="the batch waited out its window though it was full")
async def gather_waits_out_the_window(queue, max_batch, max_wait_s):
    """Every batch sleeps max_wait_s before it looks at the queue, full or not."""
    batch = [await queue.get()]
    await asyncio.sleep(max_wait_s)
    while len(batch) < max_batch and not queue.empty():
        batch.append(queue.get_nowait())
    return batch


@wrong_answer("p3-serve.3", diagnosis="it never waits for company")
async def gather_never_waits(queue, max_batch, max_wait_s):
    """Only what is queued already is taken: max_wait_s is ignored."""
    batch = [await queue.get()]
    while len(batch) < max_batch and not queue.empty():
        batch.append(queue.get_nowait())
    return batch


@wrong_answer("p3-serve.3", diagnosis="the wait restarts with every arrival")
async def gather_restarts_the_wait(queue, max_batch, max_wait_s):
    """Each new item gets a fresh max_wait_s: the deadline moves with every arrival."""
    batch = [await queue.get()]
    while len(batch) < max_batch:
        try:
            batch.append(await asyncio.wait_for(queue.get(), max_wait_s) if queue.empty() else queue.get_nowait())
        except asyncio.TimeoutError:
            break
    return batch


@wrong_answer("p3-serve.3", diagnosis="stop at max_batch")
async def gather_ignores_max_batch(queue, max_batch, max_wait_s):
    """Everything queued is taken, however many: the model gets batches larger than it was sized for."""
    batch = [await queue.get()]
    while not queue.empty():
        batch.append(queue.get_nowait())
    return batch


# --------------------------------------------------------------------------- p3-serve.4 small enough for the loop


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with(width: int, height: int, extra_chunks: bytes = b"", noise: bool = False) -> bytes:
    """A complete 8-bit RGB PNG, flat or noisy, with ``extra_chunks`` between IHDR and IDAT."""
    rng = np.random.default_rng(0)
    rows = [b"\x00" + (rng.integers(0, 256, 3 * width, dtype=np.uint8).tobytes() if noise else bytes(3 * width))
            for _ in range(height)]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra_chunks
            + png_chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + png_chunk(b"IEND", b""))


def inline(name: str, data: bytes, inline_bytes: int = 8192):
    from phase3_production.serving import decoding
    try:
        answer = decoding.cheap_enough_for_the_loop(data, inline_bytes)
    except NotImplementedError:
        raise
    except Exception as exc:   # noqa: BLE001 - the answer for damaged bytes is False, never an exception
        expect(False, f"{name}: cheap_enough_for_the_loop raised {type(exc).__name__} ({exc}); damaged or short "
                      "bytes are simply not cheap: return False and let the pool's checked decode say why")
    expect(isinstance(answer, bool), f"{name}: returned {answer!r}, expected True or False")
    return answer


@exercise("p3-serve.4")
def test_a_cifar_sized_png_decodes_on_the_loop():
    for size in ((32, 32), (64, 64), (1, 1)):
        data = png_with(*size, noise=size == (32, 32))
        expect(inline(f"a plain {size[0]}x{size[1]} PNG of {len(data):,} bytes", data),
               f"a plain {size[0]}x{size[1]} PNG of {len(data):,} bytes (limit 8,192, at most 64x64 pixels, "
               "IHDR, IDAT, IEND) was sent to the pool: it is the service's everyday upload, and the trip to a "
               "thread costs more than its decode")
    with_metadata = png_with(32, 32, png_chunk(b"gAMA", struct.pack(">I", 45455)) + png_chunk(b"pHYs", bytes(9)))
    expect(inline("a 32x32 PNG with gAMA and pHYs chunks", with_metadata),
           "a 32x32 PNG with gAMA and pHYs chunks was sent to the pool: those are small, uncompressed "
           "chunks of the image itself, allowed by PLAIN_PNG_CHUNKS")


@exercise("p3-serve.4")
def test_other_formats_and_damaged_bytes_go_to_the_pool():
    expect(not inline("a 16x12 JPEG", encoded("JPEG")), "a JPEG was judged cheap: only a PNG's bytes are read here")
    expect(not inline("8 bytes of PNG signature", b"\x89PNG\r\n\x1a\n"), "a bare PNG signature was judged cheap")
    plain = png_with(32, 32)
    expect(not inline("a PNG cut before IEND", plain[:-12]),
           "a PNG whose chunks stop before IEND was judged cheap: walk the chunks to IEND; running out of bytes "
           "first means damaged, so False")
    expect(not inline("text", b"not a png at all" * 10), "plain text was judged cheap")


@exercise("p3-serve.4")
def test_the_size_and_the_pixels_are_both_bounded():
    noisy = png_with(64, 64, noise=True)
    expect(not inline(f"a noisy 64x64 PNG of {len(noisy):,} bytes", noisy),
           f"a {len(noisy):,}-byte PNG was judged cheap with inline_bytes=8,192: check the size first")
    expect(not inline("a 32x32 PNG with inline_bytes=0", png_with(32, 32), inline_bytes=0),
           "inline_bytes=0 must send everything to the pool")
    flat = png_with(1000, 1000)
    expect(not inline(f"a flat 1000x1000 PNG of only {len(flat):,} bytes", flat),
           f"a 1000x1000 PNG of {len(flat):,} bytes was judged cheap: a flat image compresses to almost nothing, "
           "so a small file can hold a million pixels; read width and height from IHDR (bytes 16-24) and "
           "compare width x height with INLINE_PIXELS")


@exercise("p3-serve.4")
def test_compressed_or_many_chunks_go_to_the_pool():
    ztxt = png_with(32, 32, png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(bytes(1 << 20), 9)))
    expect(not inline(f"a 32x32 PNG of {len(ztxt):,} bytes with a zTXt chunk", ztxt),
           f"a {len(ztxt):,}-byte PNG with a zTXt chunk that inflates to 1 MiB was judged cheap: opening it "
           "inflates the text (10 ms on the loop per 3 KB); a compressed text chunk must send it to the pool: "
           "allow only the kinds in PLAIN_PNG_CHUNKS")
    many = png_with(32, 32, png_chunk(b"tIME", bytes(7)) * 40)
    expect(not inline(f"a 32x32 PNG with {40 + 3} chunks", many),
           "a PNG of 43 chunks was judged cheap: walk at most INLINE_CHUNKS chunks (a file of thousands of tiny "
           "chunks costs the loop a step each)")


@wrong_answer("p3-serve.4", diagnosis="check the size first")
def cheap_ignores_the_size(data, inline_bytes):
    """Only the header and the chunk kinds are read: a large file of allowed chunks is decoded on the loop."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR" or len(data) < 24:
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width * height <= 64 * 64 and walks_to_iend(data, 16)


@wrong_answer("p3-serve.4", diagnosis="compare width x height with INLINE_PIXELS")
def cheap_ignores_the_pixels(data, inline_bytes):
    """The file's size is taken as the cost: a flat image of a million pixels is decoded on the loop."""
    return len(data) <= inline_bytes and data.startswith(b"\x89PNG\r\n\x1a\n") and walks_to_iend(data, 16)


@wrong_answer("p3-serve.4", diagnosis="allow only the kinds in PLAIN_PNG_CHUNKS")
def cheap_ignores_chunk_kinds(data, inline_bytes):
    """Size and pixels are checked, but a zTXt chunk (inflated while the file opens) passes."""
    if len(data) > inline_bytes or not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 24:
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width * height <= 64 * 64 and walks_to_iend(data, 16, any_kind=True)


@wrong_answer("p3-serve.4", diagnosis="walk at most INLINE_CHUNKS chunks")
def cheap_walks_every_chunk(data, inline_bytes):
    """The chunk walk has no bound: a file of thousands of tiny chunks costs the loop a step each."""
    if len(data) > inline_bytes or not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 24:
        return False
    width, height = struct.unpack(">II", data[16:24])
    return width * height <= 64 * 64 and walks_to_iend(data, 10_000)


def walks_to_iend(data: bytes, max_chunks: int, any_kind: bool = False) -> bool:
    """Helper of the wrong answers: True when the chunk walk reaches IEND within ``max_chunks`` steps."""
    plain = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"pHYs", b"bKGD",
             b"tIME"}
    offset = 8
    for _ in range(max_chunks):
        if offset + 8 > len(data):
            return False
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if not any_kind and kind not in plain:
            return False
        if kind == b"IEND":
            return True
        offset += 12 + length
    return False


# --------------------------------------------------------------------------- p3-serve.5 the raw JPEG to the model input

# The statistics of an image folder of one's own: neither CIFAR-10's published values nor ImageNet's, so only an
# answer that reads the manifest's can match.
OWN_MEAN, OWN_STD = (0.52, 0.41, 0.33), (0.21, 0.27, 0.19)
CIFAR10_PUBLISHED = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OTHER_FILTERS = {"NEAREST": Image.Resampling.NEAREST, "BICUBIC": Image.Resampling.BICUBIC,
                 "LANCZOS": Image.Resampling.LANCZOS, "BOX": Image.Resampling.BOX,
                 "HAMMING": Image.Resampling.HAMMING}


def manifest_for(shape=(3, 32, 32), mean=OWN_MEAN, std=OWN_STD) -> dict:
    """A manifest.json as export_onnx writes it, with the given input shape (C, H, W) and statistics."""
    return {"onnx_file": "model.onnx", "sha256": "0" * 64, "opset": 18,
            "input": {"name": "images", "shape": ["batch", *shape], "dtype": "float32"},
            "output": {"name": "logits", "shape": ["batch", 10]},
            "classes": [f"class-{k}" for k in range(10)], "mean": list(mean), "std": list(std)}


def photo_like(height: int, width: int, seed: int, grey: bool = False) -> bytes:
    """A JPEG with what photographs have: smooth colour gradients, an object with edges, and grain.

    Every channel has its own levels, so swapped channels show; JPEG's own rounding is in the bytes, as in the
    CIFAR-10 archive.
    """
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(30, 226, (3, 4, 3), dtype=np.uint8))
    picture = np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64).copy()
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    picture[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = rng.integers(0, 256, 3)
    picture = np.clip(picture + rng.normal(0, 6, picture.shape), 0, 255).round().astype(np.uint8)
    image = Image.fromarray(picture.mean(axis=2).round().astype(np.uint8)) if grey else Image.fromarray(picture)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def normalised(hwc: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (H, W, C) pixels -> (C, H, W) float32, (x / 255 - mean) / std: torch's permute and arithmetic."""
    x = torch.from_numpy(np.array(hwc)).permute(2, 0, 1).float() / 255
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return ((x - m) / s).numpy()


def served_like_training(name: str, data: bytes, manifest: dict) -> np.ndarray:
    """The exercise's answer, with anything it raises (but the stub's NotImplementedError) turned into a diagnosis."""
    try:
        return np.asarray(model_input.serve_like_training(data, manifest))
    except NotImplementedError:
        raise
    except Exception as exc:   # noqa: BLE001 - a crash is the diagnosis, not a crash of the check
        expect(False, f"{name}: serve_like_training raised {type(exc).__name__} ({exc}): the shape is "
                      "manifest['input']['shape'], ['batch', C, H, W]; mean and std are manifest['mean'] and "
                      "manifest['std'], one value per channel, shaped (C, 1, 1) to broadcast over (C, H, W)")


def expect_model_input(name: str, x: np.ndarray, expected: np.ndarray, data: bytes, manifest: dict,
                       against: str) -> None:
    """``x`` must equal ``expected``; when it does not, name the mistake that gives exactly ``x``."""
    c, h, w = manifest["input"]["shape"][1:]
    mean, std = manifest["mean"], manifest["std"]
    if x.shape == (h, w, c):
        expect(False, f"{name}: the output is (H, W, C) = {x.shape}, channels-last as Pillow lays pixels out: the "
                      f"model takes channels first, (C, H, W) = {(c, h, w)}: transpose(2, 0, 1)")
    if x.shape == (c, w, h) and w != h:
        expect(False, f"{name}: the output is {x.shape}, the manifest's input is (C, H, W) = {(c, h, w)}: width "
                      "and height are swapped; Pillow's resize takes (width, height), the manifest's shape is "
                      "(C, H, W)")
    expect(x.shape == (c, h, w), f"{name}: expected the manifest's input shape (C, H, W) = {(c, h, w)}, got "
                                 f"{x.shape}")
    expect(x.dtype == np.float32, f"{name}: dtype {x.dtype}: ONNX Runtime's input is float32")
    error = float(np.abs(x - expected).max())
    if error < 1e-5:
        return
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
    resized = rgb if rgb.size == (w, h) else rgb.resize((w, h), Image.Resampling.BILINEAR)
    hwc = np.asarray(resized)
    chw = hwc.transpose(2, 0, 1).astype(np.float64)
    m, s = np.asarray(mean).reshape(-1, 1, 1), np.asarray(std).reshape(-1, 1, 1)
    candidates = {
        "the pixels were not divided by 255: training scaled them to 0..1 before subtracting the mean":
            (chw - m) / s,
        "these are ImageNet's statistics (0.485, 0.456, 0.406 / 0.229, 0.224, 0.225), not the model's: read "
        "mean and std from the manifest, which carries the training split's own":
            normalised(hwc, *IMAGENET),
        "these are CIFAR-10's published statistics, written into the code: read mean and std from the manifest "
        "(a model trained on other data carries other values, and the code's copy would silently go stale)":
            normalised(hwc, *CIFAR10_PUBLISHED),
        "mean and std are swapped: (x - mean) / std, not (x - std) / mean":
            (chw / 255 - s) / m,
        "the channels are in BGR order (OpenCV's): Pillow decodes RGB, as training did":
            (chw[::-1] / 255 - m) / s,
    }
    if rgb.size != (w, h):
        for filter_name, resample in OTHER_FILTERS.items():
            candidates[f"resized with Pillow's {filter_name} filter: training's decode_images and the service's "
                       "rgb_array both resize with BILINEAR, and another filter gives other pixels (BICUBIC is "
                       "what resize uses when it is given no filter)"] = \
                normalised(np.asarray(rgb.resize((w, h), resample)), mean, std)
    for diagnosis, wrong in candidates.items():
        expect(np.abs(x - wrong).max() > 1e-4, f"{name}: {diagnosis}")
    expect(False, f"{name}: the model input differs from {against} by up to {error:.3g}: decode to RGB, resize to "
                  "(W, H) with BILINEAR if the size differs, channels first, / 255, then (x - mean) / std with the "
                  "manifest's values")


@exercise("p3-serve.5")
def test_serve_like_training_gives_what_training_gave_a_cifar_jpeg(tmp_path):
    manifest = manifest_for()
    uploads = [photo_like(32, 32, seed) for seed in range(5)] + [photo_like(32, 32, 5, grey=True)]
    answers = [served_like_training(f"32x32 JPEG #{i}", data, manifest) for i, data in enumerate(uploads)]
    paths = []
    for i, data in enumerate(uploads):   # training's own decoder reads files from an image folder
        paths.append(tmp_path / f"{i:04d}.jpg")
        paths[-1].write_bytes(data)
    trained_on = augment.normalize(torch.from_numpy(formats.decode_images(paths)), OWN_MEAN, OWN_STD).numpy()
    for i, (x, data) in enumerate(zip(answers, uploads)):
        kind = "greyscale " if i == 5 else ""
        expect_model_input(f"a 32x32 {kind}JPEG", x, trained_on[i], data, manifest,
                           "what training fed the network (decode_images, then normalize)")


@exercise("p3-serve.5")
def test_serve_like_training_gives_what_the_service_gives_any_size():
    manifest = manifest_for(shape=(3, 24, 40))     # H=24, W=40: every axis its own size
    for height, width, grey in ((40, 48, False), (28, 20, False), (90, 150, False), (24, 40, False), (60, 50, True)):
        data = photo_like(height, width, seed=height + width, grey=grey)
        name = f"a {width}x{height} {'greyscale ' if grey else ''}JPEG for a 40x24 model"
        x = served_like_training(name, data, manifest)
        with Image.open(io.BytesIO(data)) as upload:
            upload.load()
            service_pixels = images.prepare(upload, (3, 24, 40))   # the service's own decode-side steps
        expect_model_input(name, x, normalised(service_pixels, OWN_MEAN, OWN_STD), data, manifest,
                           "what the service computes (images.prepare, then (x / 255 - mean) / std)")


@exercise("p3-serve.5")
def test_serve_like_training_takes_its_statistics_from_the_manifest():
    data = photo_like(32, 32, seed=11)
    plain = served_like_training("mean 0, std 1", data, manifest_for(mean=(0, 0, 0), std=(1, 1, 1)))
    expect(plain.shape == (3, 32, 32) and 0 <= plain.min() and plain.max() <= 1,
           f"with mean 0 and std 1 in the manifest the output should be the pixels / 255, in 0..1, shaped "
           f"(3, 32, 32); got {plain.shape} from {plain.min():.3g} to {plain.max():.3g}")
    for mean, std in ((OWN_MEAN, OWN_STD), ((0.3, 0.5, 0.7), (0.1, 0.2, 0.4))):
        x = served_like_training(f"mean {mean}, std {std}", data, manifest_for(mean=mean, std=std))
        want = (plain - np.reshape(mean, (3, 1, 1))) / np.reshape(std, (3, 1, 1))
        expect(np.abs(x - want).max() < 1e-5,
               f"with mean {mean} and std {std} in the manifest the output is not (pixels / 255 - mean) / std, "
               f"channel by channel: changing the manifest's statistics must change the output exactly so (are "
               "the statistics the manifest's, each channel with its own?)")


@wrong_answer("p3-serve.5", diagnosis="were not divided by 255")
def serve_without_scaling(jpeg_bytes, manifest):
    """The 0..255 pixels are normalised directly: the model sees values 255 times too large."""
    c, h, w = manifest["input"]["shape"][1:]
    rgb = Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")
    rgb = rgb if rgb.size == (w, h) else rgb.resize((w, h), Image.Resampling.BILINEAR)
    x = np.asarray(rgb, np.float32).transpose(2, 0, 1)
    return ((x - np.reshape(manifest["mean"], (c, 1, 1))) / np.reshape(manifest["std"], (c, 1, 1))).astype(np.float32)


@wrong_answer("p3-serve.5", diagnosis="channels-last as Pillow lays pixels out")
def serve_channels_last(jpeg_bytes, manifest):
    """The array stays (H, W, C), as Pillow gives it, with the statistics broadcast along the last axis."""
    c, h, w = manifest["input"]["shape"][1:]
    rgb = Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")
    rgb = rgb if rgb.size == (w, h) else rgb.resize((w, h), Image.Resampling.BILINEAR)
    x = np.asarray(rgb, np.float32) / 255
    return ((x - np.asarray(manifest["mean"])) / np.asarray(manifest["std"])).astype(np.float32)


@wrong_answer("p3-serve.5", diagnosis="these are ImageNet's statistics")
def serve_with_imagenet_statistics(jpeg_bytes, manifest):
    """The statistics every ImageNet tutorial prints, instead of the manifest's."""
    c, h, w = manifest["input"]["shape"][1:]
    rgb = Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")
    rgb = rgb if rgb.size == (w, h) else rgb.resize((w, h), Image.Resampling.BILINEAR)
    x = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255
    mean, std = (np.reshape(v, (3, 1, 1)) for v in IMAGENET)
    return ((x - mean) / std).astype(np.float32)


@wrong_answer("p3-serve.5", diagnosis="resized with Pillow's BICUBIC filter")
def serve_with_pillows_default_filter(jpeg_bytes, manifest):
    """resize((W, H)) with no filter named: Pillow's default, BICUBIC, not the BILINEAR of training and service."""
    c, h, w = manifest["input"]["shape"][1:]
    rgb = Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")
    rgb = rgb if rgb.size == (w, h) else rgb.resize((w, h))
    x = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255
    return ((x - np.reshape(manifest["mean"], (c, 1, 1))) / np.reshape(manifest["std"], (c, 1, 1))).astype(np.float32)


@wrong_answer("p3-serve.5", diagnosis="width and height are swapped")
def serve_with_height_and_width_swapped(jpeg_bytes, manifest):
    """The manifest's (C, H, W) handed to resize as if it were (width, height): a square model hides it."""
    c, h, w = manifest["input"]["shape"][1:]
    rgb = Image.open(io.BytesIO(jpeg_bytes)).convert("RGB")
    rgb = rgb if rgb.size == (h, w) else rgb.resize((h, w), Image.Resampling.BILINEAR)
    x = np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255
    return ((x - np.reshape(manifest["mean"], (c, 1, 1))) / np.reshape(manifest["std"], (c, 1, 1))).astype(np.float32)
