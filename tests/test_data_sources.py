"""Dataset sources on small files written in the real formats: IDX, CIFAR batches, image folders."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import formats
from common.data import (DatasetCorruptError, DatasetNotFoundError, load_dataset, torchvision_mnist_root)
from tests.conftest import make_mnist_arrays, write_mnist_folder

pytestmark = pytest.mark.foundation


def quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------- IDX / MNIST family


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_mnist_idx_round_trip(tmp_path, gz):
    arrays = make_mnist_arrays()
    write_mnist_folder(tmp_path, gz=gz, arrays=arrays)
    ds = load_dataset("mnist", data_dir=tmp_path, announce=quiet)
    assert ds.real and ds.image_shape == (1, 28, 28)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.train.images[:, 0].numpy(), arrays[0])
    np.testing.assert_array_equal(ds.test.labels.numpy(), arrays[3])
    assert ds.classes == [str(d) for d in range(10)]


def _snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_read_only_folder_is_never_written(mnist_folder):
    before = _snapshot(mnist_folder)
    for p in [mnist_folder, *mnist_folder.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        load_dataset("mnist", data_dir=mnist_folder, announce=quiet)
        root = torchvision_mnist_root("mnist", mnist_folder)  # decompresses into the cache
    finally:
        for p in [mnist_folder, *mnist_folder.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert _snapshot(mnist_folder) == before, "the data folder must never be written to"
    assert not str(root).startswith(str(mnist_folder))


def test_torchvision_reads_our_decompressed_root(mnist_folder):
    from torchvision.datasets import MNIST

    root = torchvision_mnist_root("mnist", mnist_folder)
    tv = MNIST(str(root), train=True, download=False)
    ours = load_dataset("mnist", data_dir=mnist_folder, announce=quiet)
    assert len(tv) == len(ours.train)
    assert torch.equal(tv.data, ours.train.images[:, 0])


def test_truncated_gzip_names_the_file(mnist_folder):
    path = mnist_folder / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DatasetCorruptError, match="train-images-idx3-ubyte.gz"):
        load_dataset("mnist", data_dir=mnist_folder, announce=quiet)


def test_truncated_idx_payload_is_an_error_not_a_short_dataset(tmp_path):
    write_mnist_folder(tmp_path, gz=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-28 * 28 * 3])  # three images short
    with pytest.raises(DatasetCorruptError, match=r"t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", data_dir=tmp_path, announce=quiet)


def test_wrong_magic_is_reported(tmp_path):
    write_mnist_folder(tmp_path, gz=False)
    path = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    path.write_bytes(b"<html>" + path.read_bytes())
    with pytest.raises(DatasetCorruptError, match="not an IDX file"):
        load_dataset("mnist", data_dir=tmp_path, announce=quiet)


def test_images_and_labels_must_agree_in_count(tmp_path):
    tx, ty, vx, vy = make_mnist_arrays()
    write_mnist_folder(tmp_path, arrays=(tx, ty[:-1], vx, vy))
    with pytest.raises(DatasetCorruptError, match="labels"):
        load_dataset("mnist", data_dir=tmp_path, announce=quiet)


def test_incomplete_folder_names_the_missing_file(mnist_folder):
    (mnist_folder / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=mnist_folder, announce=quiet)


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", data_dir=tmp_path / "nowhere", announce=quiet)
    message = str(err.value)
    assert "MNIST/raw" in message and "train-images-idx3-ubyte.gz" in message and "DATA_DIR" in message


def test_download_failure_is_reported_then_stand_in_in_quick_mode(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    class Unreachable:
        def __init__(self, *a, **k):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(tvd, "MNIST", Unreachable)
    messages: list[str] = []
    with pytest.raises(DatasetNotFoundError, match="download into .* failed"):
        load_dataset("mnist", data_dir=tmp_path, download=True, announce=messages.append)
    ds = load_dataset("mnist", data_dir=tmp_path, download=True, quick=True, announce=messages.append)
    assert not ds.real
    assert any("no network" in m for m in messages)


def closed_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused at once."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("had_a_folder", [False, True])
def test_a_failed_download_names_its_cause_and_leaves_the_folder_as_it_was(tmp_path, monkeypatch, had_a_folder):
    """torchvision's real download, pointed at a mirror that refuses: the message carries the mirror and its
    answer (not only "Error downloading ...:"), and nothing the attempt made is left behind. A file the
    learner had put there stays."""
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.MNIST, "mirrors", [f"http://127.0.0.1:{closed_port()}/mnist/"])
    data = tmp_path / "data"
    mine = data / "MNIST" / "raw" / "notes.txt"
    if had_a_folder:
        mine.parent.mkdir(parents=True)
        mine.write_text("the learner's own file")
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("mnist", data_dir=data, download=True, announce=quiet)
    message = str(err.value)
    assert "Error downloading train-images-idx3-ubyte.gz" in message, message
    assert "Tried http://127.0.0.1:" in message and "refused" in message.lower(), message
    if had_a_folder:
        assert sorted(p.relative_to(data) for p in data.rglob("*")) == [Path("MNIST"), Path("MNIST/raw"),
                                                                        Path("MNIST/raw/notes.txt")]
    else:
        assert not data.exists(), sorted(data.rglob("*"))


def test_quick_mode_stand_ins_are_announced_and_flagged(tmp_path):
    messages: list[str] = []
    mnist = load_dataset("mnist", data_dir=tmp_path, quick=True, announce=messages.append)
    assert not mnist.real and mnist.image_shape == (1, 28, 28) and len(mnist.train) + len(mnist.test) == 1797
    assert mnist.provenance()["real_data"] is False
    assert any("stand-in" in m and "NOT" in m for m in messages)
    cifar = load_dataset("cifar10", data_dir=tmp_path, quick=True, announce=messages.append)
    assert not cifar.real and cifar.image_shape == (3, 32, 32) and cifar.num_classes == 10
    assert sorted(cifar.train.class_counts(10)) == [500] * 10


def test_fashion_mnist_from_debian_folder(tmp_path, monkeypatch):
    import common.data as data

    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    debian.mkdir()
    for stem, array in zip(("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                            "t10k-labels-idx1-ubyte"), make_mnist_arrays()):
        formats.write_idx(debian / f"{stem}.gz", array)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path / "empty", announce=quiet)
    assert ds.real and ds.classes[0] == "T-shirt/top" and len(ds.train) == 60


# --------------------------------------------------------------------------- CIFAR python batches


def write_cifar_folder(root: Path, per_batch: int = 20) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    all_x, all_y = [], []
    for name in (*formats.CIFAR10_TRAIN_BATCHES, formats.CIFAR10_TEST_BATCH):
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, per_batch)
        formats.write_cifar_batch(folder / name, x, y)
        all_x.append(x)
        all_y.append(y)
    import pickle

    with open(folder / formats.CIFAR10_META, "wb") as fh:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, fh)
    return np.concatenate(all_x), np.concatenate(all_y)


def test_cifar_python_batches(tmp_path):
    x, y = write_cifar_folder(tmp_path)
    ds = load_dataset("cifar10", data_dir=tmp_path, announce=quiet)
    assert ds.real and ds.image_shape == (3, 32, 32) and len(ds.train) == 100 and len(ds.test) == 20
    np.testing.assert_array_equal(ds.train.images.numpy(), x[:100])
    np.testing.assert_array_equal(ds.test.labels.numpy(), y[100:])
    assert ds.classes[0] == "airplane"


def test_truncated_cifar_batch_names_the_file(tmp_path):
    write_cifar_folder(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetCorruptError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=tmp_path, announce=quiet)


# --------------------------------------------------------------------------- image folders


def write_image_folder(root: Path, per_class: int = 3, classes=("cat", "dog", "ship"), size=(32, 32),
                       ext=".png") -> Path:
    rng = np.random.default_rng(2)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:04d}{ext}")
    return root


def test_image_folder_tree(tmp_path):
    root = write_image_folder(tmp_path / "pets")
    ds = load_dataset(f"imagefolder:{root}", announce=quiet)
    assert ds.classes == ["cat", "dog", "ship"] and len(ds.train) == 9 and ds.image_shape == (3, 32, 32)
    first = np.asarray(Image.open(root / "train" / "cat" / "0000.png")).transpose(2, 0, 1)
    np.testing.assert_array_equal(ds.train.images[0].numpy(), first)
    again = load_dataset(f"imagefolder:{root}", announce=quiet)  # from the decode cache
    assert torch.equal(again.train.images, ds.train.images)


def test_image_folder_grayscale_and_odd_sizes(tmp_path):
    root = write_image_folder(tmp_path / "mixed", size=(32, 32))
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8), mode="L").save(root / "train" / "dog" / "big.png")
    with pytest.raises(DatasetCorruptError, match=r"big.png.*image_size"):
        load_dataset(f"imagefolder:{root}", announce=quiet)
    ds = load_dataset(f"imagefolder:{root}", image_size=(32, 32), announce=quiet)
    assert ds.image_shape == (3, 32, 32) and len(ds.train) == 10


def test_image_folder_corrupt_image_names_the_file(tmp_path):
    root = write_image_folder(tmp_path / "broken", ext=".jpg")
    bad = root / "test" / "dog" / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DatasetCorruptError, match="0001.jpg"):
        load_dataset(f"imagefolder:{root}", announce=quiet)


def test_image_folder_refuses_stray_files_instead_of_skipping(tmp_path):
    root = write_image_folder(tmp_path / "stray")
    (root / "train" / "cat" / "notes.txt").write_text("hello")
    with pytest.raises(DatasetCorruptError, match="notes.txt"):
        load_dataset(f"imagefolder:{root}", announce=quiet)


def test_image_folder_missing_split(tmp_path):
    root = write_image_folder(tmp_path / "half")
    import shutil

    shutil.rmtree(root / "test")
    with pytest.raises(DatasetNotFoundError, match="test"):
        load_dataset(f"imagefolder:{root}", announce=quiet)


def test_cifar10_from_image_folder_archive(tmp_path):
    import tarfile

    tree = write_image_folder(tmp_path / "src" / "cifar10-jpeg", classes=("airplane", "automobile"), ext=".png")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar10-jpeg.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    ds = load_dataset("cifar10", data_dir=data_dir, announce=quiet)
    assert ds.classes == ["airplane", "automobile"] and len(ds.train) == 6
    assert sorted(p.name for p in data_dir.iterdir()) == ["cifar10-jpeg.tar.gz"]  # nothing extracted beside it


def test_unknown_dataset_name():
    with pytest.raises(Exception, match="unknown dataset"):
        load_dataset("imagenet", announce=quiet)


def test_decoding_an_empty_list_of_images_is_a_clear_error():
    with pytest.raises(DatasetNotFoundError, match="no image files to decode"):
        formats.decode_images([])
