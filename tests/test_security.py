"""Files from outside are data, never code: CIFAR pickles and dataset archives that try to be more.

A pickle can name any importable function and call it; a tar member can be a
link or a path that leads out of the folder it is extracted into.  These
tests hand the readers such files and check that they are refused by name,
and that nothing ran and nothing was written.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from common import data, formats
from common.formats import DatasetCorruptError

pytestmark = pytest.mark.foundation


# --------------------------------------------------------------------------- CIFAR pickles


class RunsACommand:
    """Pickles as "call os.system(command)": what a crafted ``data_batch_1`` would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_crafted_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "the-payload-ran"
    batch = tmp_path / "data_batch_1"
    with open(batch, "wb") as fh:
        pickle.dump({"data": RunsACommand(f"touch {marker}"), "labels": [0]}, fh, protocol=2)
    with pytest.raises(DatasetCorruptError, match=r"data_batch_1: refusing to load (os|posix)\.system") as err:
        formats.read_cifar_batch(batch)
    assert not marker.exists(), "unpickling the batch ran its command"
    assert "tampered" in str(err.value)


def published_layout_batch(images: np.ndarray, labels: list[int], protocol: int) -> bytes:
    """A batch laid out as the published ones: bytes keys, a (N, 3072) uint8 array, labels and file names."""
    entry = {b"batch_label": b"training batch 1 of 5", b"labels": labels,
             b"data": images.reshape(len(images), -1), b"filenames": [f"img_{i}.png".encode() for i in labels]}
    return pickle.dumps(entry, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_batch_in_the_published_layout_still_loads(tmp_path, protocol):
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "data_batch_1").write_bytes(published_layout_batch(images, [3, 1, 4, 1, 5, 9], protocol))
    x, y = formats.read_cifar_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [3, 1, 4, 1, 5, 9]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane", b"automobile"]}, protocol=2))
    assert formats.read_cifar_meta(tmp_path / "batches.meta") == ["airplane", "automobile"]


# --------------------------------------------------------------------------- archives


def archive_with(tmp_path: Path, member: tarfile.TarInfo) -> Path:
    """``cifar10-jpeg.tar.gz`` holding one harmless file, then ``member``."""
    path = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        image = tarfile.TarInfo("cifar10-jpeg/train/cat/0.png")
        image.size = 3
        tar.addfile(image, io.BytesIO(b"png"))
        tar.addfile(member, io.BytesIO(b"evil") if member.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = kind, linkname
    member.size = 4 if kind == tarfile.REGTYPE else 0
    return member


UNSAFE_MEMBERS = {
    "symlink": (_member("cifar10-jpeg/train/dog", tarfile.SYMTYPE, "/tmp"), "symbolic link"),
    "hard link": (_member("cifar10-jpeg/passwd", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
    "device": (_member("cifar10-jpeg/null", tarfile.CHRTYPE), "special file"),
    "absolute": (_member("/tmp/ml60-absolute-member"), "absolute path"),
    "climbs out": (_member("cifar10-jpeg/../../ml60-escaped"), "climbs out"),
}


@pytest.mark.parametrize("kind", sorted(UNSAFE_MEMBERS))
def test_extraction_refuses_links_devices_and_escapes_without_data_filter(tmp_path, monkeypatch, kind):
    """The branch for Pythons older than 3.11.4 (no ``tarfile.data_filter``) refuses what that filter would."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.setenv("ML60_CACHE_DIR", str(tmp_path / "cache"))
    member, why = UNSAFE_MEMBERS[kind]
    archive = archive_with(tmp_path, member)
    with pytest.raises(DatasetCorruptError, match=f"refusing to extract .*{why}"):
        data.extract_archive(archive, announce=lambda message: None)
    extracted = tmp_path / "cache" / "extracted"
    leftovers = [p for p in extracted.rglob("*") if not p.name.endswith(".lock")] if extracted.exists() else []
    assert leftovers == [], f"a refused archive left {leftovers} in the cache"


def test_extraction_without_data_filter_still_extracts_a_plain_archive(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    monkeypatch.setenv("ML60_CACHE_DIR", str(tmp_path / "cache"))
    root = data.extract_archive(archive_with(tmp_path, _member("cifar10-jpeg/test/cat/1.png")),
                                announce=lambda message: None)
    assert (root / "train" / "cat" / "0.png").read_bytes() == b"png"
    assert (root / "test" / "cat" / "1.png").read_bytes() == b"evil"


# --------------------------------------------------------------------------- bandit over the code


SCANNED = ("common", "ml60", "phase1_foundation", "phase2_depth", "phase3_production")


@pytest.mark.slow
def test_bandit_finds_nothing_unreviewed():
    """bandit, the Python security linter, over every package: each finding is fixed or marked where it is.

    A finding that is accepted carries ``# nosec <id>`` on its line and a
    ``# bandit <id>: <reason>`` comment above it, so a reviewer reads why.
    """
    import json
    import subprocess
    import sys

    bandit = Path(sys.executable).parent / "bandit"
    assert bandit.exists(), "bandit is not installed: `make test` installs the project's [test] extra"
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([str(bandit), "-r", *SCANNED, "-q", "-f", "json"], cwd=root, capture_output=True, text=True)
    report = json.loads(out.stdout)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not findings, "bandit findings to fix or mark with a reason:\n" + "\n".join(findings)
    assert not report["errors"], report["errors"]
