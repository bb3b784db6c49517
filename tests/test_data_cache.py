"""The data cache under concurrency: processes that fill the same empty cache at once all succeed.

``make p2-cnn NPROC=2`` starts two ranks that each load the data; from the
CIFAR-10 archive both extract it into an empty cache at the same moment.
These tests start real processes (forked, so no second import of torch),
hold them at a barrier, and let them go together, a few rounds over.  The
cache must also be filled once, not once per process: the others wait.
"""

from __future__ import annotations

import multiprocessing
import tarfile
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import data
from tests.conftest import write_mnist_folder

pytestmark = pytest.mark.foundation

# A racy cache fails only when the processes meet inside a short window. Three processes a round, six rounds,
# make that near certain: a cache that removed and replaced folders crashed in 6-8 of 10 such rounds.
ROUNDS = 6
PROCESSES = 3


def _worker(barrier, results, work) -> None:
    """Run ``work()`` in a child the moment every child is ready; report what it returned or raised."""
    messages: list[str] = []
    barrier.wait(timeout=30)
    try:
        results.put(("ok", str(work(messages.append)), messages))
    except BaseException as exc:  # the report is the point: the parent asserts on it
        results.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", messages))


def race(work, processes: int = PROCESSES) -> list[tuple[str, str, list[str]]]:
    """Run ``work(announce)`` in ``processes`` forked processes released together; return their reports."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    children = [ctx.Process(target=_worker, args=(barrier, results, work)) for _ in range(processes)]
    for child in children:
        child.start()
    reports = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
    return reports


def write_archive(folder: Path, images_per_class: int = 20) -> Path:
    """A small ``cifar10-jpeg.tar.gz`` in the published layout: ``cifar10-jpeg/{train,test}/<class>/``."""
    tree = folder / "src" / "cifar10-jpeg"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tree / split / name).mkdir(parents=True)
            for i in range(images_per_class):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tree / split / name / f"{i}.png")
    archive = folder / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    return archive


def test_processes_extracting_one_archive_into_an_empty_cache_all_succeed(tmp_path, monkeypatch):
    archive = write_archive(tmp_path)
    for round_ in range(ROUNDS):
        monkeypatch.setenv("ML60_CACHE_DIR", str(tmp_path / f"cache-{round_}"))   # empty every round
        reports = race(lambda announce: data.extract_archive(archive, announce=announce))
        errors = [detail for status, detail, _ in reports if status != "ok"]
        assert not errors, f"round {round_}: " + "\n".join(errors)
        roots = {detail for _, detail, _ in reports}
        assert len(roots) == 1, roots
        root = Path(roots.pop())
        assert len(list((root / "train" / "cat").iterdir())) == 20
        extractions = [m for _, _, messages in reports for m in messages if m.startswith("[data] extracting")]
        assert len(extractions) == 1, f"round {round_}: the archive was extracted {len(extractions)} times"


def test_processes_decompressing_mnist_for_torchvision_all_succeed(tmp_path, monkeypatch):
    write_mnist_folder(tmp_path / "data")
    for round_ in range(ROUNDS):
        monkeypatch.setenv("ML60_CACHE_DIR", str(tmp_path / f"cache-{round_}"))
        reports = race(lambda announce: data.torchvision_mnist_root("mnist", tmp_path / "data"))
        errors = [detail for status, detail, _ in reports if status != "ok"]
        assert not errors, f"round {round_}: " + "\n".join(errors)
        roots = {detail for _, detail, _ in reports}
        assert len(roots) == 1, roots
        raw = Path(roots.pop()) / "MNIST" / "raw"
        assert sorted(p.name for p in raw.iterdir() if not p.name.startswith(".")) == sorted(
            stem for pair in data.MNIST_FILES.values() for stem in pair)


def test_a_failed_fill_leaves_neither_a_folder_nor_a_temporary_copy(tmp_path):
    target = tmp_path / "cache" / "thing"

    def broken(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"x")
        raise data.DatasetCorruptError("cut short")

    with pytest.raises(data.DatasetCorruptError, match="cut short"):
        data.fill_cache_folder(target, broken)
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == []
    data.fill_cache_folder(target, lambda tmp: (tmp / "whole.bin").write_bytes(b"y"))
    assert (target / "whole.bin").read_bytes() == b"y" and (target / ".complete").is_file()
