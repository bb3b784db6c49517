"""p3-load in quick mode: both modes run against the real server process with zero errors, and the report
carries both sides' CPU. Throughput itself is measured by `make p3-load`, never asserted here."""

from __future__ import annotations

import pytest

from phase3_production import load_test

pytestmark = getattr(pytest.mark, "p3-serve")


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


def test_reply_parser_reads_status_and_skips_the_body():
    import asyncio

    async def parse():
        reader = asyncio.StreamReader()
        reader.feed_data(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\nx: y\r\n\r\nhelloHTTP/1.1 200 OK\r\n"
                         b"Content-Length: 2\r\n\r\nok")
        return [await load_test.read_reply(reader), await load_test.read_reply(reader)]

    assert asyncio.run(parse()) == [413, 200]
