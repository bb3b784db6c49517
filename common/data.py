"""Datasets by name: ``mnist``, ``fashion-mnist``, ``cifar10`` and ``imagefolder:PATH``.

:func:`load_dataset` looks in three places, in this order, and says which one it used:

1. **A local folder** (``./data`` unless ``DATA_DIR`` / ``ML60_DATA_DIR`` says
   otherwise) in torchvision's layouts: ``MNIST/raw/*-ubyte[.gz]``,
   ``FashionMNIST/raw/...``, ``cifar-10-batches-py/``; also Debian's
   ``dataset-fashion-mnist`` folder, and for CIFAR-10 an image-folder tree
   ``cifar10-jpeg/{train,test}/<class>/`` or its ``cifar10-jpeg.tar.gz``.
2. **torchvision's download**, which verifies each file's checksum.
3. **An offline stand-in**, only in quick/demo mode, announced loudly
   (see :mod:`common.standins`).

Outside quick mode a missing dataset is an error that says where to put which
files.  The data folder is only ever read: anything that must be written (an
extracted archive, decoded JPEGs) goes to a cache of our own
(``~/.cache/ml60`` unless ``ML60_CACHE_DIR`` says otherwise).

Everything comes back as uint8 tensors ``(N, C, H, W)``, the form the fast
loader keeps in memory (or on the GPU), plus int64 labels.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from common import formats, standins
from common.runs import atomic_torch_save
from common.formats import DatasetCorruptError, DatasetError, DatasetNotFoundError

try:
    import fcntl  # POSIX file locks; Windows has none, see cache_lock
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "DatasetError", "DatasetNotFoundError", "DatasetCorruptError",
    "Split", "ImageDataset", "load_dataset", "default_data_dir", "cache_dir",
    "DATASET_NAMES", "DEBIAN_FASHION_MNIST_DIR", "torchvision_mnist_root",
]

DATA_DIR_ENV = "ML60_DATA_DIR"
CACHE_DIR_ENV = "ML60_CACHE_DIR"
OFFLINE_ENV = "ML60_OFFLINE"  # set to 1 to skip the download attempt
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

DATASET_NAMES = ("mnist", "fashion-mnist", "cifar10", "imagefolder:PATH")

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
# The per-channel mean and std everyone quotes (0..1 scale), computed on the training split.
PUBLISHED_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]

Announce = Callable[[str], None]


# --------------------------------------------------------------------------- containers


@dataclass
class Split:
    """One split: ``images`` uint8 ``(N, C, H, W)`` and ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> "Split":
        """A seeded random subset of ``n`` examples (all of them if ``n >= len``)."""
        if n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return Split(self.images[idx], self.labels[idx])

    def class_counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass
class ImageDataset:
    """A dataset with a train and a test split, and a record of where it came from."""

    name: str
    train: Split
    test: Split
    classes: list[str]
    source: str
    real: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training images, on the 0..1 scale."""
        x = self.train.images.to(torch.float64) / 255.0
        return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).tolist()

    def describe(self) -> str:
        kind = "real data" if self.real else "OFFLINE STAND-IN, not the real dataset"
        c, h, w = self.image_shape
        return (f"{self.name}: {len(self.train):,} train / {len(self.test):,} test images of "
                f"{c}x{h}x{w}, {self.num_classes} classes [{kind}] from {self.source}")

    def provenance(self) -> dict:
        """What a run records in ``metrics.json`` about its data."""
        return {"dataset": self.name, "real_data": self.real, "source": self.source,
                "train_size": len(self.train), "test_size": len(self.test),
                "classes": list(self.classes)}


# --------------------------------------------------------------------------- folders


def default_data_dir() -> Path:
    """``$ML60_DATA_DIR``, else ``$DATA_DIR``, else ``./data``."""
    value = os.environ.get(DATA_DIR_ENV) or os.environ.get("DATA_DIR")
    return Path(value).expanduser() if value else Path("data")


def cache_dir() -> Path:
    """Where derived files go: ``$ML60_CACHE_DIR``, else ``~/.cache/ml60``. Created on demand."""
    value = os.environ.get(CACHE_DIR_ENV)
    path = Path(value).expanduser() if value else Path.home() / ".cache" / "ml60"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- the entry point


def load_dataset(name: str, *, data_dir: str | Path | None = None, quick: bool = False,
                 download: bool | None = None, image_size: tuple[int, int] | None = None,
                 announce: Announce = print) -> ImageDataset:
    """Load a dataset by name; see the module docstring for where it looks.

    Args:
        name: ``mnist``, ``fashion-mnist``, ``cifar10`` or ``imagefolder:PATH``.
        data_dir: the local data folder (default: :func:`default_data_dir`).
        quick: allow the offline stand-in when the real data is absent.
        download: try torchvision's download (default: yes, unless ``ML60_OFFLINE=1``).
        image_size: ``(H, W)`` to resize image-folder images to; ``None`` requires one size.
        announce: where messages for the learner go (``print`` by default).
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if download is None:
        download = os.environ.get(OFFLINE_ENV, "0") not in ("1", "true", "yes")

    if name.startswith("imagefolder:"):
        root = Path(name.split(":", 1)[1]).expanduser()
        dataset = load_image_folder(root, image_size=image_size, announce=announce)
        announce(f"[data] {dataset.describe()}")
        return dataset

    loaders = {"mnist": _mnist_family, "fashion-mnist": _mnist_family, "cifar10": _cifar10}
    if name not in loaders:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")

    dataset, looked = loaders[name](name, data_dir, announce)
    if dataset is None and download:
        dataset, why = _download(name, data_dir, announce)
        looked.append(why)
    if dataset is None:
        if not quick:
            raise DatasetNotFoundError(_where_to_put(name, data_dir, looked))
        dataset = _stand_in(name)
        announce(f"[data] real {name} not found; " + "; ".join(looked))
        announce(f"[data] QUICK MODE: using an offline stand-in. {dataset.source}. "
                 "Figures from this run are NOT figures for the real dataset.")
    announce(f"[data] {dataset.describe()}")
    return dataset


# --------------------------------------------------------------------------- MNIST family


def _mnist_candidates(name: str, data_dir: Path) -> list[Path]:
    if name == "mnist":
        return [data_dir / "MNIST" / "raw", data_dir / "MNIST", data_dir / "mnist", data_dir]
    return [data_dir / "FashionMNIST" / "raw", data_dir / "FashionMNIST", data_dir / "fashion-mnist",
            DEBIAN_FASHION_MNIST_DIR]


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_mnist_files(name: str, data_dir: Path) -> dict[str, tuple[Path, Path]] | None:
    """The four IDX files of ``mnist`` / ``fashion-mnist`` under ``data_dir``, or None.

    A folder holding some but not all four files is an error, not a miss:
    a half-copied dataset deserves a message, not a silent fallback.
    """
    for folder in _mnist_candidates(name, data_dir):
        if not folder.is_dir():
            continue
        found = {split: tuple(_find_idx_file(folder, stem) for stem in stems)
                 for split, stems in MNIST_FILES.items()}
        present = [p for pair in found.values() for p in pair if p is not None]
        if len(present) == 4:
            return found  # type: ignore[return-value]
        if present:
            missing = [stem for split, stems in MNIST_FILES.items()
                       for stem, p in zip(stems, found[split]) if p is None]
            raise DatasetNotFoundError(
                f"{folder}: {name} is incomplete; missing {', '.join(missing)} (plain or .gz)"
            )
    return None


def _mnist_family(name: str, data_dir: Path, announce: Announce):
    files = find_mnist_files(name, data_dir)
    if files is None:
        return None, [f"no {name} IDX files under {data_dir}"]
    splits = {split: Split(*map(torch.from_numpy, formats.read_idx_pair(*pair)))
              for split, pair in files.items()}
    classes = [str(d) for d in range(10)] if name == "mnist" else list(FASHION_CLASSES)
    _check_labels(splits, classes, files["train"][1])
    return ImageDataset(name, splits["train"], splits["test"], classes,
                        source=f"IDX files in {files['train'][0].parent}"), []


def torchvision_mnist_root(name: str = "mnist", data_dir: str | Path | None = None) -> Path:
    """A ``root`` that ``torchvision.datasets.MNIST(root, download=False)`` accepts.

    torchvision only reads the decompressed files, and would extract ``.gz``
    files next to themselves (impossible on a read-only folder).  We validate
    the files, decompress them into our cache and return that root instead.
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    files = find_mnist_files(name, data_dir)
    if files is None:
        raise DatasetNotFoundError(_where_to_put(name, data_dir, [f"no {name} IDX files under {data_dir}"]))
    sub = "MNIST" if name == "mnist" else "FashionMNIST"
    paths = [p for pair in files.values() for p in pair]
    root = cache_dir() / "torchvision" / f"{name}-{_fingerprint(paths)}"

    def decompress(tmp: Path) -> None:
        for pair in files.values():
            formats.read_idx_pair(*pair)  # validates before we trust it
        (tmp / sub / "raw").mkdir(parents=True)
        for path in paths:
            stem = path.name[:-3] if path.suffix == ".gz" else path.name
            (tmp / sub / "raw" / stem).write_bytes(formats.read_maybe_gzipped(path))

    fill_cache_folder(root, decompress)
    return root


# --------------------------------------------------------------------------- CIFAR-10


def _cifar10(name: str, data_dir: Path, announce: Announce):
    looked = []
    batches = data_dir / "cifar-10-batches-py"
    if batches.is_dir():
        return _read_cifar_batches(batches), []
    looked.append(f"no {batches}")
    for folder in (data_dir / "cifar10-jpeg", data_dir / "cifar10"):
        if (folder / "train").is_dir():
            return load_image_folder(folder, name="cifar10", announce=announce), []
    looked.append(f"no image folder {data_dir / 'cifar10-jpeg'}/train")
    archive = data_dir / "cifar10-jpeg.tar.gz"
    if archive.is_file():
        folder = extract_archive(archive, announce=announce)
        return load_image_folder(folder, name="cifar10", announce=announce), []
    looked.append(f"no {archive}")
    return None, looked


def _read_cifar_batches(folder: Path) -> ImageDataset:
    missing = [n for n in (*formats.CIFAR10_TRAIN_BATCHES, formats.CIFAR10_TEST_BATCH) if not (folder / n).is_file()]
    if missing:
        raise DatasetNotFoundError(f"{folder}: CIFAR-10 is incomplete; missing {', '.join(missing)}")
    parts = [formats.read_cifar_batch(folder / n) for n in formats.CIFAR10_TRAIN_BATCHES]
    train = Split(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                  torch.from_numpy(np.concatenate([p[1] for p in parts])))
    test = Split(*map(torch.from_numpy, formats.read_cifar_batch(folder / formats.CIFAR10_TEST_BATCH)))
    meta = folder / formats.CIFAR10_META
    classes = formats.read_cifar_meta(meta) if meta.is_file() else list(CIFAR10_CLASSES)
    _check_labels({"train": train, "test": test}, classes, folder / formats.CIFAR10_TRAIN_BATCHES[0])
    return ImageDataset("cifar10", train, test, classes, source=f"CIFAR python batches in {folder}")


def extract_archive(archive: Path, announce: Announce = print) -> Path:
    """Extract a ``.tar.gz`` image-folder archive into the cache (once) and return the tree's root.

    The root is the single top-level folder of the archive if there is one.
    :func:`fill_cache_folder` makes the extraction safe to interrupt and safe
    to run from several processes at once (``make p2-cnn NPROC=2`` loads the
    data on every rank); :func:`safe_extract` refuses members that could
    write outside the cache.
    """
    target = cache_dir() / "extracted" / f"{archive.name.split('.')[0]}-{_fingerprint([archive])}"

    def extract(tmp: Path) -> None:
        announce(f"[data] extracting {archive} into {target} (once)")
        try:
            with tarfile.open(archive, "r:*") as tar:
                safe_extract(tar, tmp, archive)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetCorruptError(f"{archive}: cannot extract ({exc})") from exc

    fill_cache_folder(target, extract, announce=announce)
    tops = [p for p in target.iterdir() if p.is_dir()]
    return tops[0] if len(tops) == 1 and not (target / "train").is_dir() else target


def safe_extract(tar: tarfile.TarFile, destination: Path, archive: Path) -> None:
    """Extract ``tar`` into ``destination``, refusing any member that could reach outside it.

    A tar member can be an absolute path (``/etc/cron.d/x``), climb out with
    ``../``, or be a symbolic or hard link to somewhere else that a later
    member then writes *through*; it can also be a device file.  Python 3.12
    (and 3.11.4, 3.10.12) has ``tarfile.data_filter``, which refuses all of
    that.  On an older Python we check every member before extracting any:
    only regular files and folders with relative names that stay inside,
    which is all an image-folder archive holds.
    """
    if hasattr(tarfile, "data_filter"):
        tar.extractall(destination, filter="data")
        return
    members = tar.getmembers()
    for member in members:
        problem = unsafe_member_problem(member)
        if problem:
            raise DatasetCorruptError(f"{archive}: refusing to extract {member.name!r}: {problem}")
    # bandit B202: every member was checked just above
    tar.extractall(destination, members=members)  # nosec B202


def unsafe_member_problem(member: tarfile.TarInfo) -> str | None:
    """Why extracting this tar member could write outside the target folder, or None when it cannot."""
    if member.name.startswith("/"):
        return "an absolute path"
    if ".." in Path(member.name).parts:
        return "a path that climbs out with '..'"
    if member.issym() or member.islnk():
        return f"a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})"
    if not (member.isfile() or member.isdir()):
        return "a device, FIFO or other special file"
    return None


# --------------------------------------------------------------------------- the cache, safe for several processes


def fill_cache_folder(target: Path, fill: Callable[[Path], None], *, announce: Announce = print) -> Path:
    """Make ``target`` (a cache folder) exist and be complete, filling it with ``fill(tmp)`` at most once.

    Three rules keep the cache right when a run is killed half-way, or when
    several processes (the ranks of ``torchrun``) ask for the same folder at
    the same moment:

    1. **Complete or absent.** ``fill`` writes into a temporary folder beside
       the target; a ``.complete`` marker is written last, then one
       ``os.rename`` puts the folder in place.  A rename within one file
       system is atomic: other processes see no folder or a whole one.
    2. **One filler at a time.** The filling happens under an exclusive lock
       (:func:`cache_lock`), so a second process waits, with a message, and
       then finds the folder complete instead of extracting it again.
    3. **The loser keeps the winner's copy.** Should a complete folder appear
       anyway (a process that took no lock), the rename fails and our copy is
       thrown away; a complete folder is never deleted or replaced.
    """
    if _complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(target, announce):
        if _complete(target):  # another process filled it while we waited
            return target
        if target.exists():    # left half-made by an older version or by hand: nobody is using it
            shutil.rmtree(target)
        if fcntl is not None:  # under a real lock, any temporary folder is a killed filler's leftover
            for stale in target.parent.glob(f".{target.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            fill(tmp)
            (tmp / ".complete").touch()
            _publish(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename succeeded
    return target


def _complete(folder: Path) -> bool:
    return (folder / ".complete").is_file()


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; if a complete ``target`` beat us to it, keep that one."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not _complete(target):
            raise
        # Lost the race to a complete copy: the caller deletes ours.


@contextmanager
def cache_lock(target: Path, announce: Announce = print):
    """Hold an exclusive lock on ``target`` for the ``with`` block, waiting (with a message) if it is taken.

    The lock is ``fcntl.flock`` on a small file beside the target
    (``.<name>.lock``).  The operating system releases it when the process
    exits, however it exits, so a killed run never leaves the cache locked.
    Windows has no ``fcntl``: there the block runs unlocked, and rule 3 of
    :func:`fill_cache_folder` still keeps the cache right (two processes may
    then both fill it, and one copy is thrown away).
    """
    if fcntl is None:
        yield
        return
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+b") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            announce(f"[data] another process is filling {target}; waiting for it to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_tensors(path: Path, compute: Callable[[], dict], *, announce: Announce = print) -> dict:
    """``torch.load(path)`` if the cache file exists, else ``compute()``, saved there for the next time.

    The file is written atomically (:func:`~common.runs.atomic_torch_save`),
    so a reader never sees half of it, and computed under :func:`cache_lock`,
    so that of several processes asking at once one computes and the others
    wait, then read its file.
    """
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with cache_lock(path, announce):
            if not path.is_file():  # nobody wrote it while we waited
                blob = compute()
                atomic_torch_save(blob, path)
                return blob
    return torch.load(path, weights_only=True)


# --------------------------------------------------------------------------- image folders


def load_image_folder(root: Path, *, name: str | None = None, image_size: tuple[int, int] | None = None,
                      announce: Announce = print) -> ImageDataset:
    """Read ``root/{train,test}/<class>/<image>`` into uint8 tensors.

    Decoding tens of thousands of JPEGs takes a while, so the decoded tensors
    are cached (keyed on every file's path, size and modification time) and a
    second load takes a fraction of a second.
    """
    root = Path(root).expanduser()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetNotFoundError(
                f"{root}: an image-folder dataset needs {root}/train/<class>/<image> and "
                f"{root}/test/<class>/<image>; {root / split} is missing"
            )
    train_paths, train_targets, classes = formats.list_image_folder(root / "train")
    test_paths, test_targets, _ = formats.list_image_folder(root / "test", classes)
    key = _fingerprint(train_paths + test_paths, extra=repr(image_size))
    cached = cache_dir() / "decoded" / f"{root.name}-{key}.pt"
    name = name or f"imagefolder:{root}"

    def decode() -> dict:
        announce(f"[data] decoding {len(train_paths) + len(test_paths):,} images from {root} (cached afterwards)")
        from tqdm.auto import tqdm

        def bar(items):
            return tqdm(items, desc="decode", unit="img", mininterval=1.0, leave=False, disable=None)

        size = tuple(image_size) if image_size is not None else None
        first = formats.decode_images(train_paths, size=size, progress=bar)
        size = size or first.shape[2:]
        return {"train_images": torch.from_numpy(first),
                "test_images": torch.from_numpy(formats.decode_images(test_paths, size=size, progress=bar))}

    blob = cached_tensors(cached, decode, announce=announce)
    train_x, test_x = blob["train_images"], blob["test_images"]
    train = Split(train_x, torch.tensor(train_targets, dtype=torch.int64))
    test = Split(test_x, torch.tensor(test_targets, dtype=torch.int64))
    return ImageDataset(name, train, test, classes, source=f"image folder {root}")


# --------------------------------------------------------------------------- download


def _download(name: str, data_dir: Path, announce: Announce):
    """Try torchvision's download (which checks each file's MD5). Returns (dataset|None, reason).

    A failed download leaves the folder as it found it: the folders it made and the partial files it
    wrote are removed, so an empty ``MNIST/raw/`` never looks like data that is half there.  The reason
    names every mirror tried and what each answered, not only the file that failed.
    """
    from torchvision import datasets as tvd

    target = data_dir if _writable(data_dir) else cache_dir() / "downloads"
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    announce(f"[data] {name} not found locally; trying torchvision's download into {target}")
    owned = ([target / "cifar-10-python.tar.gz", target / "cifar-10-batches-py"] if name == "cifar10"
             else [target / ("MNIST" if name == "mnist" else "FashionMNIST")])
    target_existed, before = target.exists(), _snapshot(owned)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        target.mkdir(parents=True, exist_ok=True)
        cls(str(target), train=True, download=True)
        cls(str(target), train=False, download=True)
    except Exception as exc:  # no network, a mirror down, a checksum mismatch...
        _remove_what_was_added(before)
        if not target_existed and target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        cause = " ".join(str(exc).split()) or type(exc).__name__
        return None, f"download into {target} failed ({type(exc).__name__}: {cause[:600]})"
    finally:
        socket.setdefaulttimeout(previous)
    loader = _cifar10 if name == "cifar10" else _mnist_family
    dataset, _ = loader(name, target, announce)
    return dataset, f"downloaded into {target}"


def _snapshot(paths: list[Path]) -> dict[Path, set[Path] | None]:
    """For each path: None when it does not exist yet, else what is under it now (a file: empty)."""
    return {path: (set(path.rglob("*")) if path.is_dir() else set()) if path.exists() else None for path in paths}


def _remove_what_was_added(before: dict[Path, set[Path] | None]) -> None:
    """Undo a failed download: what did not exist before goes; what did stays untouched."""
    for path, existed in before.items():
        if existed is None:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        elif path.is_dir():
            for added in sorted(set(path.rglob("*")) - existed, reverse=True):   # children before parents
                if added.is_dir():
                    shutil.rmtree(added, ignore_errors=True)
                else:
                    added.unlink(missing_ok=True)


def _writable(path: Path) -> bool:
    probe = path if path.exists() else path.parent
    return os.access(probe, os.W_OK)


# --------------------------------------------------------------------------- stand-ins


def _stand_in(name: str) -> ImageDataset:
    if name in ("mnist", "fashion-mnist"):
        tx, ty, vx, vy = standins.digits_as_mnist()
        source = ("scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) "
                  "upscaled into 28x28 MNIST-style frames")
        classes = [str(d) for d in range(10)]
    else:
        tx, ty, vx, vy = standins.synthetic_cifar()
        source = "a generated 10-class set of 32x32 colour patterns"
        classes = [f"pattern-{k}" for k in range(10)]
    return ImageDataset(f"{name} (stand-in)", Split(torch.from_numpy(tx), torch.from_numpy(ty)),
                        Split(torch.from_numpy(vx), torch.from_numpy(vy)), classes, source=source, real=False)


def _where_to_put(name: str, data_dir: Path, looked: list[str]) -> str:
    how = {
        "mnist": (f"put the four MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
                  f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; plain or .gz) in {data_dir}/MNIST/raw/"),
        "fashion-mnist": (f"put the four Fashion-MNIST IDX files in {data_dir}/FashionMNIST/raw/, "
                          f"or install Debian's package: apt-get install dataset-fashion-mnist "
                          f"(it installs them in {DEBIAN_FASHION_MNIST_DIR})"),
        "cifar10": (f"put the python batches in {data_dir}/cifar-10-batches-py/ "
                    f"(data_batch_1..5, test_batch, batches.meta), or an image-folder tree in "
                    f"{data_dir}/cifar10-jpeg/{{train,test}}/<class>/, or cifar10-jpeg.tar.gz in {data_dir}/"),
    }[name]
    return (f"{name} is not available: {'; '.join(looked)}.\nTo fix: {how}, or point DATA_DIR= "
            f"(env {DATA_DIR_ENV}) at the folder that holds it. Quick mode (--quick / QUICK=1) "
            "runs on an offline stand-in instead.")


# --------------------------------------------------------------------------- helpers


def _check_labels(splits: dict[str, Split], classes: list[str], source: Path) -> None:
    for split, data in splits.items():
        if len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= len(classes)):
            raise DatasetCorruptError(
                f"{source}: {split} labels run from {int(data.labels.min())} to {int(data.labels.max())}, "
                f"outside 0..{len(classes) - 1}"
            )


def _fingerprint(paths: list[Path], extra: str = "") -> str:
    """A short hash of the files' absolute paths, sizes and modification times."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
