"""p3-load in quick mode: both modes run against the real server process with zero errors, and the report
carries both sides' CPU, the model's cost per batch size and /healthz latency under image bombs.  Throughput
and latency themselves are measured by `make p3-load`, never asserted here."""

from __future__ import annotations

import pytest

from phase3_production import load_test

pytestmark = getattr(pytest.mark, "p3-serve")


@pytest.mark.slow
def test_quick_load_test_runs_both_modes_without_errors(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ML60_RUNS_DIR", str(tmp_path))
    summary = load_test.main(["--quick", "--model-dir", str(model_dir), "--requests", "120"])
    assert set(summary["table"]) == {"1", "16"}
    for row in summary["table"].values():
        for mode in ("on", "off"):
            assert row[mode]["errors"] == 0 and row[mode]["requests_per_s"] > 0
            assert row[mode]["p50_ms"] <= row[mode]["p95_ms"] <= row[mode]["p99_ms"]
            assert row[mode]["server_cpu_s"] > 0
    assert (tmp_path / "p3-load" / "table.md").read_text().startswith("| concurrency |")
    assert [row["batch"] for row in summary["model_cost_by_batch"]] == [1, 2, 4, 8, 16, 32]
    assert all(row["ms_per_call"] > 0 and row["cpu_ms_per_image"] > 0 for row in summary["model_cost_by_batch"])
    bombs = summary["healthz_under_bombs"]
    assert bombs["bombs_sent"] > 0
    assert sum(sum(counts.values()) for counts in bombs["bomb_replies"].values()) == bombs["bombs_sent"]
    for phase in ("quiet", "under_bombs"):
        figures = bombs[phase]
        assert figures["polls"] > 0 and figures["failures"] == 0
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["max_ms"]


def test_bombs_are_small_valid_pngs_of_the_pixels_they_claim():
    """What the /healthz measurement sends: tens of KB on the wire, the issue's two 16,777,216-pixel shapes and
    the same shapes at a service's own limit, each a PNG that Pillow reads back as what it claims to be."""
    import io

    from PIL import Image

    shapes = load_test.bomb_shapes(2048 * 2048)
    assert len(shapes) == 4 and len(load_test.bomb_shapes(4096 * 4096)) == 2
    for name, (width, height, channels) in shapes.items():
        data = load_test.png_bomb(width, height, channels)
        assert len(data) < 100_000, (name, len(data))
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (width, height) and width * height in (4096 * 4096, 2048 * 2048)
            assert len(image.getbands()) == channels


def test_reply_parser_reads_status_and_skips_the_body():
    import asyncio

    async def parse():
        reader = asyncio.StreamReader()
        reader.feed_data(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nx: y\r\n\r\nhelloHTTP/1.1 200 OK\r\n"
                         b"Content-Length: 2\r\n\r\nok")
        return [await load_test.read_reply(reader), await load_test.read_reply(reader)]

    assert asyncio.run(parse()) == [413, 200]
